"""Real ``redis-server`` processes on loopback, for the demo, the tests and local fault drills.

:class:`LocalCluster` starts N servers on free ports in a temporary directory, waits
until each answers ``PING``, and can kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT)
and restart any of them. It always ends every process it started: :meth:`LocalCluster.stop`
on exit, a ``weakref.finalize`` backstop that also runs at interpreter exit, and on Linux
``PR_SET_PDEATHSIG`` so that the servers die with the parent even if the parent is
killed outright. Servers stay in the parent's process group, so Ctrl-C reaches them too.

>>> with LocalCluster(3) as cluster:  # doctest: +SKIP
...     cluster.nodes[0]
NodeSpec(id='n0', host='127.0.0.1', port=..., ...)

Finding the server binary and the rules every server process is started under are in
:mod:`cachering.local.procs`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import anyio

from ..errors import ServerStartError
from ..node import NodeSpec
from .certs import make_certificates
from .procs import (
    HOW_TO_GET,
    MIN_VERSION,
    SPAWNER,
    end_process,
    find_server,
    server_version,
    supports_tls,
)
from .serverio import LineReader, conf_quote, log_tail, resp_command

__all__ = ["LocalCluster", "ServerStartError", "find_server", "server_version"]

HOST = "127.0.0.1"
_LOG_NAME = "server.log"
_CONF_NAME = "server.conf"
_PORT_ATTEMPTS = 8


class _PortInUse(Exception):
    """The port picked for a server was taken before the server bound it."""


class _State:
    """What must be cleaned up, held apart from the cluster so a finalizer can reach it."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.tempdir: Path | None = None

    def cleanup(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in procs:
            end_process(proc)
        if self.tempdir is not None:
            shutil.rmtree(self.tempdir, ignore_errors=True)
            self.tempdir = None


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_credential(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value or "\x00" in value:
        raise ValueError(f"{name} must be a non-empty str without NUL bytes")


class LocalCluster:
    """N real ``redis-server`` processes on free loopback ports.

    Args:
        n: number of servers to start.
        server: the binary (path or name on PATH); see :func:`find_server` for the
            default search.
        password: ``requirepass``, or the ACL user's password when ``username`` is set.
        username: an ACL user with every permission; the ``default`` user is then
            disabled, so clients must ``AUTH username password``.
        tls: serve TLS only, with certificates made on the fly by ``trustme``;
            :attr:`client_ssl_context` trusts their CA.
        tls_client_auth: with ``tls``, the servers also require a client certificate
            (``tls-auth-clients yes``); one is made, :attr:`client_ssl_context` presents
            it and :attr:`client_cert_path`/:attr:`client_key_path` name its files.
        directory: where the per-node directories go. When given it is kept after
            :meth:`stop` (logs for post-mortems); by default a temporary directory is
            used and removed.
        startup_timeout: seconds each server gets to answer ``PING``.
        extra_args: more ``--option value`` arguments for every server.
        id_prefix: node ids are ``f"{id_prefix}{i}"``.

    Use it as a context manager (``with`` or ``async with``) or call :meth:`start` and
    :meth:`stop`. Methods are thread-safe; :meth:`restart` and :meth:`add_node` block
    until the server answers, so async code may prefer ``anyio.to_thread.run_sync``.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        server: str | os.PathLike[str] | None = None,
        password: str | None = None,
        username: str | None = None,
        tls: bool = False,
        tls_client_auth: bool = False,
        directory: str | Path | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        id_prefix: str = "n",
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        _check_credential("password", password)
        _check_credential("username", username)
        if username is not None and password is None:
            raise ValueError("username needs a password")
        if username is not None and any(ch.isspace() for ch in username):
            raise ValueError(f"username must not contain whitespace, got {username!r}")
        if not isinstance(startup_timeout, (int, float)) or not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be a positive number, got {startup_timeout!r}")
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise TypeError("extra_args must be a sequence of str")
        if not isinstance(id_prefix, str) or not id_prefix:
            raise ValueError(f"id_prefix must be a non-empty str, got {id_prefix!r}")

        self.server_path: str = find_server(server)
        """Absolute path of the server binary."""
        self.server_version: tuple[int, int, int] = server_version(self.server_path)
        """The binary's version, e.g. ``(7, 0, 15)``."""
        if self.server_version < MIN_VERSION:
            raise ServerStartError(
                f"{self.server_path} is version {'.'.join(map(str, self.server_version))}; "
                f"cachering needs Redis 6.2 or newer; {HOW_TO_GET}"
            )
        self.password = password
        self.username = username
        self.tls = bool(tls)
        self.tls_client_auth = bool(tls_client_auth)
        if self.tls_client_auth and not self.tls:
            raise ValueError("tls_client_auth needs tls=True")
        self.startup_timeout = float(startup_timeout)
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.id_prefix = id_prefix
        self._n = n
        self._directory = Path(directory) if directory is not None else None
        self._base: Path | None = None
        self.ports: list[int] = []
        """The port of each node (the TLS port with ``tls=True``)."""
        self.nodes: list[NodeSpec] = []
        """One :class:`~cachering.NodeSpec` per server, with credentials and TLS context."""
        self.urls: list[str] = []
        """``redis://`` (``rediss://``) URLs with the password, one per node."""
        self.client_ssl_context: ssl.SSLContext | None = None
        """With ``tls=True``: a client context that trusts the cluster's CA."""
        self.ca_path: Path | None = None
        """With ``tls=True``: the CA certificate (PEM file), e.g. for ``ssl_ca_certs``."""
        self.client_cert_path: Path | None = None
        """With ``tls_client_auth=True``: the client certificate (``ssl_certfile``)."""
        self.client_key_path: Path | None = None
        """With ``tls_client_auth=True``: the client's key (``ssl_keyfile``)."""
        self._paused: set[int] = set()
        self._lock = threading.RLock()
        self._started = False
        self._state = _State()
        self._finalizer = weakref.finalize(self, self._state.cleanup)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> LocalCluster:
        """Start every server and wait until each answers; returns ``self``.

        Raises:
            ServerStartError: a server failed or timed out (message has its log tail);
                every process already started is ended first.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("LocalCluster already started")
            if not self._finalizer.alive:
                raise RuntimeError("a stopped LocalCluster cannot be started again")
            self._started = True
            try:
                self._prepare_directory()
                if self.tls:
                    self._make_certificates()
                pending = []
                for i in range(self._n):
                    port = self._launch(i, _free_port())
                    self.ports.append(port)
                    pending.append(i)
                for i in pending:
                    self._await_with_retry(i)
                for i in range(self._n):
                    self._add_spec(i)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """End every server (SIGKILL, paused ones included) and remove the temp directory.

        Idempotent; a stopped cluster cannot be started again.
        """
        with self._lock:
            self._paused.clear()
            self._finalizer()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalCluster:
        try:
            await anyio.to_thread.run_sync(self.start)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    # ----------------------------------------------------------------- node control

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (no-op if it is not running)."""
        with self._lock:
            proc = self._proc(i)
            self._paused.discard(i)
            end_process(proc)

    def pause(self, i: int) -> None:
        """SIGSTOP server ``i``: its port accepts connections but nothing is answered."""
        with self._lock:
            proc = self._running_proc(i)
            proc.send_signal(signal.SIGSTOP)
            self._paused.add(i)

    def resume(self, i: int) -> None:
        """SIGCONT server ``i`` after :meth:`pause`."""
        with self._lock:
            proc = self._running_proc(i)
            proc.send_signal(signal.SIGCONT)
            self._paused.discard(i)

    def restart(self, i: int, *, keep_data: bool = False) -> None:
        """Kill server ``i`` if needed and start it again on the same port with no data.

        With ``keep_data=True`` its directory is kept, so a snapshot it wrote (``SAVE``
        writes ``dump.rdb`` there) is loaded: a server coming back with old data.
        Returns once it answers ``PING``.
        """
        with self._lock:
            proc = self._proc(i)
            self._paused.discard(i)
            end_process(proc)
            node_dir = self._node_dir(i)
            # Whatever extra_args turned on, a restarted cache node comes back empty.
            for entry in node_dir.iterdir() if not keep_data else ():
                if entry.name not in (_LOG_NAME, _CONF_NAME):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            self._launch(i, self.ports[i])
            self._await_ready(i)

    def is_running(self, i: int) -> bool:
        """Whether server ``i``'s process exists (a paused server counts as running).

        After :meth:`stop` every node reports ``False``.
        """
        with self._lock:
            if self._started and not self._finalizer.alive:
                return False
            return self._proc(i).poll() is None

    def is_paused(self, i: int) -> bool:
        """Whether server ``i`` is paused (SIGSTOPped by :meth:`pause`)."""
        with self._lock:
            self._proc(i)
            return i in self._paused

    def pid(self, i: int) -> int:
        """Process id of server ``i`` (its latest incarnation)."""
        with self._lock:
            return self._proc(i).pid

    def log_path(self, i: int) -> Path:
        """The log file of server ``i`` (stdout and stderr of every incarnation)."""
        with self._lock:
            self._proc(i)
            return self._node_dir(i) / _LOG_NAME

    def add_node(self) -> NodeSpec:
        """Start one more server (index ``len(nodes)``) and return its spec."""
        with self._lock:
            if not self._started or not self._finalizer.alive:
                raise RuntimeError("LocalCluster is not running")
            i = len(self.ports)
            port = self._launch(i, _free_port())
            self.ports.append(port)
            try:
                self._await_with_retry(i)
            except BaseException:
                self.ports.pop()
                proc = self._state.procs.pop(i, None)
                if proc is not None:
                    end_process(proc)
                raise
            return self._add_spec(i)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        state = "running" if self._started and self._finalizer.alive else "stopped"
        return f"<LocalCluster {state} ports={self.ports} server={self.server_path!r}>"

    # ----------------------------------------------------------------- internals

    def _proc(self, i: int) -> subprocess.Popen[bytes]:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"node index must be an int, got {type(i).__name__}")
        if not self._finalizer.alive or not self._started:
            raise RuntimeError("LocalCluster is not running")
        proc = self._state.procs.get(i)
        if proc is None:
            raise IndexError(f"node index {i} out of range 0..{len(self.ports) - 1}")
        return proc

    def _running_proc(self, i: int) -> subprocess.Popen[bytes]:
        proc = self._proc(i)
        if proc.poll() is not None:
            raise RuntimeError(f"node {i} is not running (killed or exited)")
        return proc

    def _prepare_directory(self) -> None:
        if self._directory is None:
            self._base = Path(tempfile.mkdtemp(prefix="cachering-local-"))
            self._state.tempdir = self._base
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._base = self._directory.resolve()

    def _node_dir(self, i: int) -> Path:
        assert self._base is not None
        return self._base / f"{self.id_prefix}{i}"

    def _make_certificates(self) -> None:
        if not supports_tls(self.server_path):
            raise ServerStartError(
                f"{self.server_path} (version {'.'.join(map(str, self.server_version))}) "
                "was built without TLS support; use a build with TLS, e.g. "
                "`apt-get install redis-server` (Debian/Ubuntu build it with TLS)"
            )
        assert self._base is not None
        certs = make_certificates(
            self._base / "tls", (HOST, "localhost"), client=self.tls_client_auth
        )
        self.ca_path = certs.ca
        self.client_cert_path, self.client_key_path = certs.client_cert, certs.client_key
        self.client_ssl_context = certs.client_context

    def _config(self, i: int, port: int) -> str:
        node_dir = self._node_dir(i)
        lines = [
            f"bind {HOST}",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {conf_quote(str(node_dir))}",
            'logfile ""',
            "loglevel notice",
        ]
        if self.tls:
            assert self._base is not None
            tls_dir = self._base / "tls"
            lines += [
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {conf_quote(str(tls_dir / 'server.crt'))}",
                f"tls-key-file {conf_quote(str(tls_dir / 'server.key'))}",
                f"tls-ca-cert-file {conf_quote(str(tls_dir / 'ca.crt'))}",
                f"tls-auth-clients {'yes' if self.tls_client_auth else 'no'}",
            ]
        else:
            lines.append(f"port {port}")
        if self.username is not None:
            assert self.password is not None
            lines += [
                "user default off",
                f"user {conf_quote(self.username)} on {conf_quote('>' + self.password)} "
                "allkeys allchannels allcommands",
            ]
        elif self.password is not None:
            lines.append(f"requirepass {conf_quote(self.password)}")
        return "\n".join(lines) + "\n"

    def _launch(self, i: int, port: int) -> int:
        node_dir = self._node_dir(i)
        node_dir.mkdir(exist_ok=True)
        conf = node_dir / _CONF_NAME
        conf.write_text(self._config(i, port))
        with open(node_dir / _LOG_NAME, "ab") as log:
            log.write(f"--- cachering: starting on port {port}\n".encode())
            log.flush()
            proc = SPAWNER.popen(
                args=[self.server_path, str(conf), *self.extra_args],
                cwd=str(node_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        self._state.procs[i] = proc
        return port

    def _await_with_retry(self, i: int) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._await_ready(i, port_race_ok=attempt < _PORT_ATTEMPTS - 1)
                return
            except _PortInUse:
                self.ports[i] = self._launch(i, _free_port())

    def _await_ready(self, i: int, *, port_race_ok: bool = False) -> None:
        proc = self._state.procs[i]
        port = self.ports[i]
        log = self._node_dir(i) / _LOG_NAME
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        while True:
            if proc.poll() is not None:
                tail = log_tail(log)
                if port_race_ok and "Address already in use" in tail:
                    raise _PortInUse
                raise ServerStartError(
                    f"{self.server_path} for node {i} (port {port}) exited with code "
                    f"{proc.returncode}; log tail ({log}):\n{tail}"
                )
            if self._ping(port, proc.pid):
                return
            if time.monotonic() > deadline:
                end_process(proc)
                raise ServerStartError(
                    f"{self.server_path} for node {i} did not answer PING on port {port} "
                    f"within {self.startup_timeout} s; log tail ({log}):\n{log_tail(log)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _ping(self, port: int, pid: int) -> bool:
        # INFO's process_id proves the answer comes from our process, not from whatever
        # else may have grabbed the port between _free_port() and the server's bind().
        commands = []
        if self.password is not None:
            user = (self.username,) if self.username is not None else ()
            commands.append(resp_command("AUTH", *user, self.password))
        commands += [resp_command("PING"), resp_command("INFO", "server")]
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection((HOST, port), timeout=0.5))
                if self.client_ssl_context is not None:
                    sock = stack.enter_context(
                        self.client_ssl_context.wrap_socket(sock, server_hostname=HOST)
                    )
                sock.sendall(b"".join(commands))
                reader = LineReader(sock)
                if self.password is not None:
                    reply = reader.line()
                    if reply.startswith((b"-WRONGPASS", b"-ERR invalid password")):
                        raise ServerStartError(f"server on port {port} refused AUTH: {reply!r}")
                    if not reply.startswith(b"+"):
                        return False
                if reader.line() != b"+PONG":
                    return False  # e.g. -LOADING
                header = reader.line()
                if not header.startswith(b"$"):
                    return False
                info = reader.exactly(int(header[1:]) + 2)
        except (OSError, ssl.SSLError, ValueError):
            return False
        return f"process_id:{pid}\r\n".encode() in info

    def _add_spec(self, i: int) -> NodeSpec:
        spec = NodeSpec(
            f"{self.id_prefix}{i}",
            HOST,
            self.ports[i],
            username=self.username,
            password=self.password,
            tls=self.client_ssl_context,
        )
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password is not None:
            user = quote(self.username, safe="") if self.username else ""
            auth = f"{user}:{quote(self.password, safe='')}@"
        url = f"{scheme}://{auth}{HOST}:{self.ports[i]}/0?id={quote(spec.id, safe='')}"
        self.nodes.append(spec)
        self.urls.append(url)
        return spec
