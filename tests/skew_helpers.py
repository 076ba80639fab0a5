"""A writer in its own OS process whose clock is shifted with libfaketime.

``SkewedWriter`` starts ``python tests/skew_helpers.py`` under ``LD_PRELOAD=libfaketime``
(the monotonic clock is left alone, only wall time moves). The child opens its own
:class:`~cachering.Cluster` on the given nodes and runs one command per line of stdin
(JSON), answering one JSON line each: ``{"ok": ...}`` or ``{"error": "Type: message"}``.
The shift is a file (``FAKETIME_TIMESTAMP_FILE``, re-read on every call), so a test can
step the child's clock while it runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
    glob.glob("/usr/lib/faketime/libfaketime.so.1")
)
LIBFAKETIME = _LIBS[0] if _LIBS else None
"""Path of libfaketime, or None where it is not installed."""


class SkewedWriter:
    """A cachering writer process whose wall clock is ``offset`` seconds off."""

    def __init__(
        self,
        urls: list[str],
        namespace: str,
        offset: float,
        workdir: Path,
        *,
        replicas: int = 2,
    ) -> None:
        assert LIBFAKETIME is not None
        self._file = workdir / f"faketime-{os.getpid()}-{id(self)}"
        self.shift(offset)
        env = dict(os.environ)
        env.update(
            LD_PRELOAD=LIBFAKETIME,
            FAKETIME_TIMESTAMP_FILE=str(self._file),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"),
        )
        setup = {"urls": urls, "namespace": namespace, "replicas": replicas}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(setup)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def shift(self, offset: float) -> None:
        """Set the child's clock to ``offset`` seconds from the real one."""
        self._file.write_text(f"{offset:+.3f}s\n")

    def __enter__(self) -> SkewedWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        """Run one command in the child; returns its result, raises on its error."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the writer did not answer {op!r} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the writer exited (code {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["ok"]

    def close(self) -> None:
        """Stop the child (``quit``, then kill by its pid if it hangs)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError, ValueError):
                self.call("quit", timeout=20.0)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._file.unlink(missing_ok=True)


async def _serve(setup: dict[str, Any]) -> None:
    import anyio

    from cachering import Cluster, ClusterConfig

    config = ClusterConfig.from_urls(
        setup["urls"],
        namespace=setup["namespace"],
        replicas=setup["replicas"],
        control_plane=False,
        timeout=2.0,
        sync_flush_interval=0.002,
    )
    async with Cluster(config) as cluster:
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                result: Any = None
                if op == "quit":
                    print(json.dumps({"ok": None}), flush=True)
                    return
                if op == "time":
                    result = time.time()
                elif op == "set":
                    await cluster.set(
                        cmd["key"],
                        cmd["value"],
                        ttl=cmd.get("ttl"),
                        consistency=cmd.get("consistency"),
                    )
                elif op == "set_many":
                    await cluster.set_many(
                        cmd["items"], ttl=cmd.get("ttl"), consistency=cmd.get("consistency")
                    )
                elif op == "delete":
                    result = await cluster.delete(cmd["key"], consistency=cmd.get("consistency"))
                elif op == "get":
                    value = await cluster.get(cmd["key"])
                    result = None if value is None else value.decode()
                else:
                    raise ValueError(f"unknown op {op!r}")
                await cluster.wait_replicated()
            except Exception as exc:  # reported to the test, which decides
                print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            else:
                print(json.dumps({"ok": result}), flush=True)


if __name__ == "__main__":
    import anyio

    anyio.run(_serve, json.loads(sys.argv[1]))
