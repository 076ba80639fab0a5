"""Ring benchmarks (pytest-benchmark, on demand).

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_ring.py --benchmark-enable -q``.
``benchmarks/ring_report.py`` prints the same figures as ns/key with ratios.
"""

from __future__ import annotations

import random
import string
from types import ModuleType
from typing import Any

import pytest
import uhashring

from cachering.ring import _ring_py

try:
    from cachering.ring import _ring_c
except ImportError:  # pragma: no cover - only without a compiler
    _ring_c = None  # type: ignore[assignment]

IMPLS = {"c": _ring_c, "py": _ring_py}
_rnd = random.Random(20240229)
KEYS = ["".join(_rnd.choices(string.ascii_letters + string.digits, k=16)) for _ in range(100_000)]
SMALL_KEYS = KEYS[:10_000]  # for the per-call loops, which are 100x slower


def _impl(name: str) -> ModuleType:
    module = IMPLS[name]
    if module is None:
        pytest.skip("compiled ring not built")
    return module


def _names(count: int) -> list[str]:
    return [f"cache-{i}.example.net:6379" for i in range(count)]


@pytest.mark.parametrize("mode", ["murmur3", "ketama"])
@pytest.mark.parametrize("impl", ["c", "py"])
@pytest.mark.parametrize("nodes", [10, 100])
def test_lookup_many(benchmark: Any, impl: str, mode: str, nodes: int) -> None:
    ring = _impl(impl).Ring(_names(nodes), hash=mode)
    keys = KEYS if impl == "c" else SMALL_KEYS
    result = benchmark(ring.lookup_many, keys)
    assert len(result) == len(keys)


@pytest.mark.parametrize("mode", ["murmur3", "ketama"])
@pytest.mark.parametrize("impl", ["c", "py"])
@pytest.mark.parametrize("nodes", [10, 100])
def test_group_by_node(benchmark: Any, impl: str, mode: str, nodes: int) -> None:
    ring = _impl(impl).Ring(_names(nodes), hash=mode)
    keys = KEYS if impl == "c" else SMALL_KEYS
    result = benchmark(ring.group_by_node, keys)
    assert sum(map(len, result.values())) == len(keys)


@pytest.mark.parametrize("mode", ["murmur3", "ketama"])
@pytest.mark.parametrize("impl", ["c", "py"])
@pytest.mark.parametrize("nodes", [10, 100])
def test_lookup_per_call(benchmark: Any, impl: str, mode: str, nodes: int) -> None:
    ring = _impl(impl).Ring(_names(nodes), hash=mode)
    lookup = ring.lookup

    def run() -> list[str]:
        return [lookup(key) for key in SMALL_KEYS]

    result = benchmark(run)
    assert result == _ring_py.Ring(_names(nodes), hash=mode).lookup_many(SMALL_KEYS)


@pytest.mark.parametrize("mode", ["default", "ketama"])
@pytest.mark.parametrize("nodes", [10, 100])
def test_uhashring_get_node(benchmark: Any, mode: str, nodes: int) -> None:
    kwargs = {"hash_fn": "ketama"} if mode == "ketama" else {}
    get_node = uhashring.HashRing(_names(nodes), **kwargs).get_node

    def run() -> list[str]:
        return [get_node(key) for key in SMALL_KEYS]

    result = benchmark(run)
    if mode == "ketama":  # the placement cachering's ketama mode reproduces
        assert result == _ring_py.Ring(_names(nodes), hash="ketama").lookup_many(SMALL_KEYS)
    else:
        assert len(result) == len(SMALL_KEYS)
        assert set(result) == set(_names(nodes))


@pytest.mark.parametrize("impl", ["c", "py", "uhashring"])
def test_build_1000_nodes(benchmark: Any, impl: str) -> None:
    names = _names(1000)
    if impl == "uhashring":
        ring = benchmark.pedantic(uhashring.HashRing, args=(names,), rounds=3)
        assert len(ring.runtime._keys) == 160_000
    else:
        module = _impl(impl)
        ring = benchmark.pedantic(module.Ring, args=(names,), rounds=3 if impl == "py" else 20)
        assert ring.point_count == 160_000
