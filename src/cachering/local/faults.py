"""A TCP proxy that injects network faults in front of one node, for fault tests.

Clients connect to the proxy (``proxy.host``, ``proxy.port``) instead of the node. While
it runs, the test can blackhole traffic (bytes are swallowed, connections stay open, like
a network partition), add latency, abort every connection, or refuse new ones, per
direction: ``up`` is client to server, ``down`` is server to client.

>>> async with FaultProxy("127.0.0.1", cluster.ports[0]) as proxy:  # doctest: +SKIP
...     proxy.blackhole("up")
...     ...
...     proxy.heal()

The fault switches are plain methods, meant to be called from the event loop thread that
runs the proxy.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from types import TracebackType
from typing import Literal

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["both", "up", "down"]
"""Which way a fault applies: ``up`` is client to server, ``down`` server to client."""

_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


def _directions(direction: object) -> tuple[str, ...]:
    if direction == "both":
        return ("up", "down")
    if direction in ("up", "down"):
        return (str(direction),)
    raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")


def _abort(stream: SocketStream) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    with contextlib.suppress(OSError, AttributeError, anyio.TypedAttributeLookupError):
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Connection:
    def __init__(self, client: SocketStream) -> None:
        self.client = client
        self.upstream: SocketStream | None = None
        self.scope = anyio.CancelScope()

    def abort(self) -> None:
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        self.scope.cancel()


class FaultProxy:
    """An anyio TCP proxy in front of ``target_host:target_port`` that can inject faults.

    Run it with ``await task_group.start(proxy.serve)`` or ``async with proxy:``.
    Each accepted connection opens its own connection to the target.

    Attributes:
        connections: number of client connections currently proxied.
        bytes_up: bytes passed on from clients to the target.
        bytes_down: bytes passed on from the target to clients.
        bytes_dropped: bytes swallowed by a blackhole (both directions).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if not isinstance(target_host, str) or not target_host:
            raise ValueError(f"target_host must be a non-empty str, got {target_host!r}")
        for name, value in (("target_port", target_port), ("listen_port", listen_port)):
            low = 1 if name == "target_port" else 0
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
                raise ValueError(f"{name} must be an int in {low}..65535, got {value!r}")
        if not isinstance(listen_host, str) or not listen_host:
            raise ValueError(f"listen_host must be a non-empty str, got {listen_host!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        """Where clients connect."""
        self._listen_port = listen_port
        self._bound_port: int | None = None
        self._blackholed = {"up": False, "down": False}
        self._delays = {"up": 0.0, "down": 0.0}
        self._refusing = False
        self._conns: set[_Connection] = set()
        self._serve_scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._own_tg: anyio.abc.TaskGroup | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_dropped = 0

    @property
    def port(self) -> int:
        """The port clients connect to (known once :meth:`serve` has started)."""
        if self._bound_port is not None:
            return self._bound_port
        if self._listen_port:
            return self._listen_port
        raise RuntimeError("FaultProxy is not serving yet; its port is picked when it starts")

    @property
    def connections(self) -> int:
        """Number of client connections currently proxied."""
        return len(self._conns)

    # ----------------------------------------------------------------- faults

    def blackhole(self, direction: Direction = "both") -> None:
        """Swallow bytes in ``direction`` silently; connections stay open (a partition)."""
        for d in _directions(direction):
            self._blackholed[d] = True

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Hold every chunk travelling in ``direction`` for ``seconds`` before passing it on.

        ``0`` removes the delay.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ValueError(f"delay must be a finite number >= 0, got {seconds!r}")
        for d in _directions(direction):
            self._delays[d] = float(seconds)

    def reset(self) -> None:
        """Abort every current connection (clients see a reset); keep accepting new ones."""
        for conn in list(self._conns):
            conn.abort()

    def refuse(self, on: bool = True) -> None:
        """While on, new connections are reset as soon as they are accepted."""
        self._refusing = bool(on)

    def heal(self) -> None:
        """Clear every fault: no blackhole, no delay, accept connections."""
        self._blackholed = {"up": False, "down": False}
        self._delays = {"up": 0.0, "down": 0.0}
        self._refusing = False

    def is_blackholed(self, direction: Literal["up", "down"]) -> bool:
        """Whether bytes travelling in ``direction`` are currently swallowed."""
        (d,) = _directions(direction)
        return self._blackholed[d]

    # ----------------------------------------------------------------- running

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and proxy connections until cancelled or :meth:`aclose` is called."""
        if self._serve_scope is not None:
            raise RuntimeError("FaultProxy.serve() runs only once per proxy")
        self._serve_scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        try:
            with self._serve_scope:
                listener = await anyio.create_tcp_listener(
                    local_host=self.host, local_port=self._listen_port
                )
                async with listener, anyio.create_task_group() as tg:
                    self._bound_port = listener.extra(SocketAttribute.local_port)
                    task_status.started()
                    await listener.serve(self._handle, task_group=tg)
        finally:
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting, close every connection, and wait until :meth:`serve` returned."""
        if self._serve_scope is None or self._stopped is None:
            return
        self._serve_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    async def __aenter__(self) -> FaultProxy:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.serve)
        except BaseException as exc:
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._own_tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        tg, self._own_tg = self._own_tg, None
        if tg is not None:
            await tg.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        where = f"{self.host}:{self._bound_port}" if self._bound_port else "not serving"
        return (
            f"<FaultProxy {where} -> {self.target_host}:{self.target_port} "
            f"blackholed={self._blackholed} delays={self._delays} refusing={self._refusing}>"
        )

    # ----------------------------------------------------------------- internals

    async def _handle(self, client: SocketStream) -> None:
        conn = _Connection(client)
        try:
            if self._refusing:
                _abort(client)
                return
            try:
                with anyio.fail_after(_CONNECT_TIMEOUT):
                    conn.upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            except (OSError, TimeoutError):
                # The target is down: mirror that to the client as a reset.
                _abort(client)
                return
            self._conns.add(conn)
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, conn, client, conn.upstream, "up")
                    tg.start_soon(self._pump, conn, conn.upstream, client, "down")
        finally:
            self._conns.discard(conn)
            with anyio.CancelScope(shield=True):
                await client.aclose()
                if conn.upstream is not None:
                    await conn.upstream.aclose()

    async def _pump(
        self, conn: _Connection, src: SocketStream, dst: SocketStream, direction: str
    ) -> None:
        try:
            while True:
                try:
                    data = await src.receive(_CHUNK)
                except anyio.EndOfStream:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError):
                        await dst.send_eof()
                    return
                if self._blackholed[direction]:
                    self.bytes_dropped += len(data)
                    continue
                wait = self._delays[direction]
                if wait > 0:
                    await anyio.sleep(wait)
                    if self._blackholed[direction]:
                        self.bytes_dropped += len(data)
                        continue
                # Counted before the send so that a reader woken by these bytes sees them.
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await dst.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            # One side failed: pass the failure on to the other side as a reset.
            conn.abort()
