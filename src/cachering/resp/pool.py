"""A bounded pool of connections to one node.

Everything happens inside calls: there is no background task, so a pool needs no task
group and can be used from any task. Connections are opened lazily, reused most
recently used first, checked before reuse, and handed to waiting tasks in FIFO order
when the pool is full. After a failed connect the pool backs off (exponential, full
jitter): during the back-off window calls that need a new connection fail fast with
:class:`~cachering.errors.NodeUnavailable` instead of hammering a node that is down;
the first call after the window tries again.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any

import anyio
import attrs

from ..errors import NodeUnavailable
from ..node import NodeSpec
from ..validators import require_int_at_least, require_positive_number
from .connection import DEFAULT_LIMITS, Arg, Connection, ReplyLimits
from .script import Script

__all__ = ["Pool", "PoolStats"]


@attrs.frozen
class PoolStats:
    """A snapshot of a pool's counters."""

    size: int  #: connections open or being opened
    idle: int  #: open connections waiting in the pool
    in_use: int  #: connections leased to callers (or being opened for them)
    waiting: int  #: tasks waiting for a connection
    created: int  #: connections opened successfully, ever
    discarded: int  #: connections closed because they failed, timed out or went stale
    connect_failures: int  #: failed connection attempts, ever


class _Waiter:
    __slots__ = ("event", "item", "served")

    def __init__(self) -> None:
        self.event = anyio.Event()
        # What the releasing task hands over: a connection, or None meaning
        # "a slot is free, open a new connection".
        self.item: Connection | None = None
        self.served = False


class Pool:
    """A bounded, FIFO-fair pool of :class:`Connection` to one node.

    ``timeout`` is the default per-call timeout, covering write and read of the whole
    call (``None``: no limit); a call's own ``timeout`` overrides it. A connection idle for
    more than ``health_check_interval`` seconds is PINGed before reuse; every reused
    connection is first checked for EOF with a non-blocking peek. ``limits`` bounds every
    reply (see :class:`~cachering.resp.connection.ReplyLimits`).

    >>> pool = Pool(spec)                              # doctest: +SKIP
    >>> await pool.execute("SET", "k", "v")            # doctest: +SKIP
    b'OK'
    """

    def __init__(
        self,
        spec: NodeSpec,
        *,
        max_size: int = 10,
        connect_timeout: float = 1.0,
        timeout: float | None = 1.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        health_check_interval: float = 30.0,
        limits: ReplyLimits = DEFAULT_LIMITS,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"spec must be a NodeSpec, got {type(spec).__name__}")
        require_int_at_least("Pool max_size", max_size, 1)
        require_positive_number("Pool connect_timeout", connect_timeout)
        if timeout is not None:
            require_positive_number("Pool timeout", timeout)
        require_positive_number("Pool backoff_base", backoff_base, allow_zero=True)
        require_positive_number("Pool backoff_max", backoff_max, allow_zero=True)
        require_positive_number(
            "Pool health_check_interval", health_check_interval, allow_zero=True
        )
        self.spec = spec
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.health_check_interval = health_check_interval
        self.limits = limits
        #: Awaited with every new connection before its first use; what it raises
        #: (e.g. NodeUnavailable) fails the call that needed the connection.
        self.on_connect = on_connect
        #: ``True`` after :meth:`aclose`; every later call raises NodeUnavailable.
        self.closed = False
        self._idle: deque[Connection] = deque()
        self._all: set[Connection] = set()
        self._waiters: deque[_Waiter] = deque()
        self._size = 0
        self._created = 0
        self._discarded = 0
        self._connect_failures = 0
        self._consecutive_failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    def __repr__(self) -> str:
        return f"<Pool {self.spec.id} {self.spec.address} size={self._size}/{self.max_size}>"

    @property
    def stats(self) -> PoolStats:
        """Counters: size, idle, in_use, waiting, created, discarded, connect_failures."""
        return PoolStats(
            size=self._size,
            idle=len(self._idle),
            in_use=self._size - len(self._idle),
            waiting=len(self._waiters),
            created=self._created,
            discarded=self._discarded,
            connect_failures=self._connect_failures,
        )

    # -- calls -------------------------------------------------------------------------

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run one command on a pooled connection (see :meth:`Connection.execute`).

        ``timeout=None`` means the pool's default timeout.
        """
        if timeout is None:
            timeout = self.timeout
        conn = self._take_idle() or await self._acquire()
        try:
            return await conn.execute(*args, timeout=timeout)
        finally:
            await self._release(conn)

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Run many commands in one round trip (see :meth:`Connection.pipeline`)."""
        if timeout is None:
            timeout = self.timeout
        conn = self._take_idle() or await self._acquire()
        try:
            return await conn.pipeline(commands, timeout=timeout, raise_on_error=raise_on_error)
        finally:
            await self._release(conn)

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Run a Lua script with EVALSHA, loading it on NOSCRIPT (see :class:`Script`)."""
        if timeout is None:
            timeout = self.timeout
        conn = self._take_idle() or await self._acquire()
        try:
            return await conn.run_script(script, keys, args, timeout=timeout)
        finally:
            await self._release(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Lease one connection for several calls; it returns to the pool on exit.

        A connection that broke while leased is discarded instead.
        """
        conn = self._take_idle() or await self._acquire()
        try:
            yield conn
        finally:
            await self._release(conn)

    # -- leasing -----------------------------------------------------------------------

    def _take_idle(self) -> Connection | None:
        """The synchronous fast path: an idle connection nobody is queued for."""
        if self.closed or self._waiters:
            return None
        idle = self._idle
        if not idle:
            return None
        conn = idle[-1]
        if conn.looks_alive() and monotonic() - conn.last_used < self.health_check_interval:
            return idle.pop()
        # Dead or due for a PING: the slow path handles it.
        return None

    def _check_open(self) -> None:
        if self.closed:
            raise NodeUnavailable(self.spec.id, "pool is closed")

    async def _acquire(self) -> Connection:
        self._check_open()
        if not self._waiters:
            while self._idle:
                conn = self._idle.pop()
                if await self._check(conn):
                    return conn
            if self._size < self.max_size:
                self._size += 1
                return await self._open_in_slot()
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.served:
                # Served while being cancelled: pass the connection or slot on.
                if waiter.item is not None:
                    await self._release(waiter.item)
                else:
                    self._size -= 1
                    if not self.closed:
                        self._hand_slot()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        if self.closed:
            if waiter.served:  # served just before the close: give it back
                if waiter.item is not None:
                    await self._release(waiter.item)
                else:
                    self._size -= 1
            raise NodeUnavailable(self.spec.id, "pool is closed")
        handed = waiter.item
        if handed is not None and await self._check(handed, keep_slot=True):
            return handed
        return await self._open_in_slot()

    async def _check(self, conn: Connection, *, keep_slot: bool = False) -> bool:
        """Health check before reuse; discards a dead connection (freeing its slot)."""
        alive = conn.looks_alive()
        if alive and monotonic() - conn.last_used >= self.health_check_interval:
            try:
                alive = await conn.execute("PING", timeout=self.connect_timeout) == b"PONG"
            except Exception:
                alive = False
            except BaseException:
                # Cancelled mid-PING: the connection is broken and the slot goes back.
                await self._forget(conn)
                self._size -= 1
                if not self.closed:
                    self._hand_slot()
                raise
        if alive:
            return True
        await self._forget(conn)
        if not keep_slot:
            self._size -= 1
            if not self.closed:
                self._hand_slot()
        return False

    async def _open_in_slot(self) -> Connection:
        """Open a connection in a slot already counted in ``_size``."""
        try:
            now = anyio.current_time()
            if now < self._retry_at:
                raise NodeUnavailable(
                    self.spec.id,
                    f"in back-off for {self._retry_at - now:.3f}s after "
                    f"{self._consecutive_failures} failed connect(s): {self._last_error}",
                )
            try:
                conn = await Connection.open(
                    self.spec, connect_timeout=self.connect_timeout, limits=self.limits
                )
            except NodeUnavailable as exc:
                self._connect_failures += 1
                self._consecutive_failures += 1
                self._last_error = exc.reason
                cap = min(
                    self.backoff_max,
                    self.backoff_base * 2 ** min(self._consecutive_failures - 1, 32),
                )
                self._retry_at = anyio.current_time() + random.uniform(0, cap)
                raise
            if self.on_connect is not None:
                try:
                    await self.on_connect(conn)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await conn.aclose()
                    raise
        except BaseException:
            self._size -= 1
            self._hand_slot()
            raise
        self._consecutive_failures = 0
        self._created += 1
        if self.closed:  # closed while we were connecting
            self._size -= 1
            await conn.aclose()
            raise NodeUnavailable(self.spec.id, "pool is closed")
        self._all.add(conn)
        return conn

    def _hand_slot(self) -> None:
        """A slot freed up: let the first waiter open a connection in it."""
        if self._waiters and self._size < self.max_size:
            waiter = self._waiters.popleft()
            waiter.served = True
            waiter.item = None
            self._size += 1
            waiter.event.set()

    async def _release(self, conn: Connection) -> None:
        if conn.broken or self.closed:
            await self._forget(conn)
            self._size -= 1
            if not self.closed:
                self._hand_slot()
            return
        conn.last_used = monotonic()
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.served = True
            waiter.item = conn
            waiter.event.set()
        else:
            self._idle.append(conn)

    async def _forget(self, conn: Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            if not self.closed:
                self._discarded += 1
        await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection (idle or leased) and fail every waiter; idempotent."""
        if self.closed:
            return
        self.closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.event.set()
        conns = list(self._all)
        self._all.clear()
        # Leased connections give their slot back when released.
        self._size -= len(self._idle)
        self._idle.clear()
        with anyio.CancelScope(shield=True):
            for conn in conns:
                await conn.aclose()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
