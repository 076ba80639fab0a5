"""The fault lab's processes: redis-server nodes and manager processes, in namespaces.

A :class:`NodeProc` is one redis-server bound to its namespace's address (no automatic
persistence: ``save ""``); :meth:`NodeProc.snapshot` makes an RDB file with ``SAVE``,
and :meth:`NodeProc.restart` brings the server back empty or from that snapshot.

A :class:`ManagerProc` is ``lab_manager.py`` in its own process (in a namespace, maybe
under libfaketime), fed JSON-line commands on stdin; a reader thread collects its JSON
lines. Both can be paused (SIGSTOP), resumed and killed (SIGKILL), always by PID.

Every process is started from the thread that builds the lab and asks the kernel to kill
it when that thread dies (PR_SET_PDEATHSIG), so even a hard-killed test leaves nothing
running; teardown kills each by PID as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

LIBFAKETIME = next(
    iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))),
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
)
"""Debian's libfaketime (package ``faketime``; ``make lab`` installs it when root)."""
MANAGER_SCRIPT = Path(__file__).with_name("lab_manager.py")


def _preexec() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with the parent-death signal set (see the module docstring)."""
    return subprocess.Popen(argv, preexec_fn=_preexec, **kwargs)


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; a process already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def end(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL ``proc`` by PID (it may be stopped) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        signal_pid(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class NodeProc:
    """One redis-server inside namespace ``netns`` at ``addr:6379``."""

    PORT = 6379

    def __init__(self, node_id: str, netns_argv: list[str], addr: str, workdir: Path) -> None:
        self.id = node_id
        self.netns_argv = netns_argv
        self.addr = addr
        self.dir = workdir / node_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.PORT
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.client = redis.Redis(
            host=addr, port=self.port, socket_timeout=1, socket_connect_timeout=1
        )

    def start(self, *, snapshot: bool = False) -> None:
        """Start the server: empty, or loading the last :meth:`snapshot`."""
        rdb = self.dir / "dump.rdb"
        if not snapshot:
            rdb.unlink(missing_ok=True)
        argv = [
            *self.netns_argv,
            "redis-server",
            "--bind",
            self.addr,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "log"),
        ]
        self.proc = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.paused = False
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.client.ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {self.id} did not start: {log}")
            time.sleep(0.02)

    def snapshot(self) -> None:
        """Write an RDB snapshot of what the server holds now (``SAVE``)."""
        self.client.save()

    def kill(self) -> None:
        """SIGKILL the server (it keeps no data but a snapshot taken before)."""
        end(self.proc)
        self.proc = None
        self.paused = False

    def restart(self, *, snapshot: bool = False) -> None:
        """Kill and start again, empty or from the last snapshot."""
        self.kill()
        self.start(snapshot=snapshot)

    def pause(self) -> None:
        """SIGSTOP the server."""
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT the server."""
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGCONT)
            self.paused = False

    @property
    def running(self) -> bool:
        """Whether the server process exists (paused or not)."""
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Kill the server and close the observer's client."""
        self.kill()
        self.client.close()


class ManagerProc:
    """``lab_manager.py`` in its own process; JSON lines in, JSON lines collected."""

    def __init__(
        self,
        spec: dict[str, Any],
        netns_argv: list[str],
        workdir: Path,
        *,
        clock_offset: float = 0.0,
    ) -> None:
        self.id: str = spec["id"]
        self.spec = spec
        self.clock_offset = clock_offset
        self.lines: list[dict[str, Any]] = []
        self.stderr_path = workdir / f"{self.id}.stderr"
        self.out_path = workdir / f"{self.id}.out"
        """Every line the manager printed, as printed (kept for a post-mortem)."""
        self._lock = threading.Lock()
        self._next_id = 0
        path = workdir / f"{self.id}.json"
        path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
        env["PYTHONUNBUFFERED"] = "1"
        prefix: list[str] = ["env"]
        if clock_offset and not os.path.exists(LIBFAKETIME):
            raise RuntimeError(
                f"clock offsets need libfaketime ({LIBFAKETIME}): apt-get install faketime"
            )
        if clock_offset:
            # Wall time only: the monotonic clock stays the lab's one clock.
            prefix += [
                f"LD_PRELOAD={LIBFAKETIME}",
                f"FAKETIME={clock_offset:+.0f}s",
                "FAKETIME_DONT_FAKE_MONOTONIC=1",
            ]
        argv = [*netns_argv, *prefix, sys.executable, str(MANAGER_SCRIPT), str(path)]
        with self.stderr_path.open("wb") as err:
            self.proc: subprocess.Popen[bytes] | None = spawn(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env
            )
        self.paused = False
        self.killed = False
        self._reader = threading.Thread(target=self._read, name=f"lab-{self.id}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        with self.out_path.open("ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                self._take(raw)

    def _take(self, raw: bytes) -> None:
        try:
            line = json.loads(raw)
        except ValueError:
            line = {"ev": "junk", "raw": raw[:200].decode(errors="replace")}
        line["manager"] = self.id
        with self._lock:
            self.lines.append(line)

    def snapshot(self) -> list[dict[str, Any]]:
        """A copy of every line so far."""
        with self._lock:
            return list(self.lines)

    def wait_for(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        """The first line that satisfies ``pred``; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            lines = self.snapshot()
            for line in lines[seen:]:
                if line.get("ev") == "crash":
                    raise RuntimeError(f"manager {self.id} crashed: {line['err']}")
                if pred(line):
                    return line
            seen = len(lines)
            if time.monotonic() > deadline:
                tail = self.stderr_path.read_text(errors="replace")[-1500:]
                raise TimeoutError(f"manager {self.id}: no {what} in {timeout} s; stderr: {tail}")
            if self.proc is None or self.proc.poll() is not None:
                tail = self.stderr_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"manager {self.id} exited waiting for {what}: {tail}")
            time.sleep(0.01)

    def send(self, cmd: str, **fields: Any) -> int:
        """Send one command; returns its id."""
        self._next_id += 1
        assert self.proc is not None
        assert self.proc.stdin is not None
        data = json.dumps({"cmd": cmd, "id": self._next_id, **fields}) + "\n"
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(data.encode())
            self.proc.stdin.flush()
        return self._next_id

    def ask(self, cmd: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        rid = self.send(cmd, **fields)
        return self.wait_for(
            lambda line: line.get("ev") == "reply" and line.get("id") == rid, timeout, cmd
        )

    @property
    def alive(self) -> bool:
        """Started, not killed, not exited (paused counts as alive)."""
        return self.proc is not None and self.proc.poll() is None and not self.killed

    def pause(self) -> None:
        """SIGSTOP the manager process."""
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT the manager process."""
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def kill(self) -> None:
        """SIGKILL the manager process (no goodbye, as if its host died)."""
        self.killed = True
        end(self.proc)
        self._close_pipes()

    def _close_pipes(self) -> None:
        self._reader.join(timeout=5)
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()

    def exit(self) -> None:
        """Ask the manager to close cleanly, and kill it if it does not within 10 s."""
        if self.alive:
            self.resume()
            self.send("exit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self.proc is not None
                self.proc.wait(timeout=10)
        end(self.proc)
        self._close_pipes()
