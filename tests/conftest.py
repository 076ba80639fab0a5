"""Shared fixtures: the ring implementation switch and the async backends."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from cachering import ServerNotFound
from cachering.local import LocalCluster, ServerStartError, find_server, server_version
from cachering.local.procs import supports_tls
from cachering.ring import _ring_py
from cluster_helpers import Inspector

# Shared CI machines are slow and noisy: no per-example deadline and no "too slow"
# health check, which would fail a correct test because another process ran.
settings.register_profile(
    "cachering",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile(os.environ.get("CACHERING_HYPOTHESIS_PROFILE", "cachering"))

EXTENSIONS_EXPECTED = (
    not os.environ.get("CACHERING_NO_EXTENSIONS") and platform.python_implementation() == "CPython"
)

_IMPLEMENTATIONS: dict[str, ModuleType | None] = {"py": _ring_py}
try:
    # Imported directly (not through the switch) so that a broken build fails loudly
    # in test_ring_guard instead of silently testing the Python twin twice.
    from cachering.ring import _ring_c

    _IMPLEMENTATIONS["c"] = _ring_c
except ImportError:  # pragma: no cover - only without a compiler
    _IMPLEMENTATIONS["c"] = None


@pytest.fixture(params=["c", "py"])
def ring_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The ring module under test: the compiled extension (``c``) or the twin (``py``)."""
    module = _IMPLEMENTATIONS[request.param]
    if module is None:
        if EXTENSIONS_EXPECTED:
            pytest.fail("the compiled ring (cachering.ring._ring_c) should have loaded and did not")
        pytest.skip("compiled ring not built (CACHERING_NO_EXTENSIONS or not CPython)")
    return module


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``pytest.mark.anyio`` test on asyncio and on trio."""
    return str(request.param)


# Modules whose tests need no server; everything else starts real redis-server processes
# and is marked ``redis`` so wheel builds (cibuildwheel) can run the pure part alone.
_PURE_MODULES = (
    "test_ring",
    "test_messages",
    "test_topology",
    "test_values",
    "test_config",
    "test_events",
    "test_resp_encode",
    "test_lab_checker",
)


# Fixtures that start servers: a test using one needs servers even in a pure module.
_SERVER_FIXTURES = {"local", "inspect", "server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs real servers with ``redis``."""
    for item in items:
        name = item.path.stem
        fixtures = set(getattr(item, "fixturenames", ()))
        if not name.startswith(_PURE_MODULES) or fixtures & _SERVER_FIXTURES:
            item.add_marker(pytest.mark.redis)


def pytest_report_header(config: pytest.Config) -> str:
    """Name the server binary the tests start, so a run's log says what it tested."""
    try:
        path = find_server()
        version = ".".join(map(str, server_version(path)))
    except (ServerNotFound, ServerStartError) as exc:
        return f"cache server: none ({exc})"
    tls = "with TLS" if supports_tls(path) else "without TLS"
    return f"cache server: {path} (version {version}, {tls})"


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    """Three real redis-server processes, one set per test module (modules may override)."""
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def inspect(local: LocalCluster) -> Iterator[Inspector]:
    """A plain redis-py view of every server of ``local``, to check what is stored."""
    inspector = Inspector(local)
    yield inspector
    inspector.close()
