"""A pub/sub subscriber for one node that survives reconnects.

Redis pub/sub is fire-and-forget: messages published while a subscriber is disconnected
are lost. This client reconnects by itself (exponential back-off, full jitter),
subscribes again to every channel and pattern, and then yields a ``gap`` message so the
caller knows to catch up by other means. Subscription confirmations are consumed
internally and never yielded.

>>> async with PubSub(spec) as sub:                       # doctest: +SKIP
...     await sub.subscribe("topology")
...     async for message in sub:
...         if message.kind == "gap":
...             await reread_topology()
...         else:
...             handle(message.channel, message.data)
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import anyio
import attrs

from ..errors import NodeUnavailable
from ..node import NodeSpec
from .connection import DEFAULT_LIMITS, Connection, ReplyLimits

__all__ = ["Message", "PubSub"]


@attrs.frozen
class Message:
    """A published message, or a ``gap``: messages may have been lost (reconnect).

    ``pattern`` is the matching pattern for ``pmessage``, ``None`` otherwise. A gap has
    empty ``channel`` and ``data``.
    """

    kind: Literal["message", "pmessage", "gap"]
    channel: bytes
    data: bytes
    pattern: bytes | None = None


_SILENCE = object()
_GAP = Message(kind="gap", channel=b"", data=b"", pattern=None)


def _names(what: str, names: Iterable[object]) -> list[bytes]:
    out = []
    for name in names:
        if isinstance(name, str):
            out.append(name.encode("utf-8"))
        elif isinstance(name, (bytes, bytearray, memoryview)):
            out.append(bytes(name))
        else:
            raise TypeError(f"{what} names must be str or bytes, got {type(name).__name__}")
    return out


class PubSub:
    """Subscriptions on one node; iterate it (or call :meth:`get_message`) for messages.

    Connects lazily on the first subscription. ``gaps`` counts the reconnects, each of
    which is also announced by a ``Message(kind="gap", ...)``. A closed or reset
    connection is noticed at once; to notice a node that silently stopped answering
    (paused, or a network path gone), pass ``health_check_interval``: after that many
    seconds without a byte the reader sends ``PING``, and treats a further interval of
    silence as a lost connection. ``limits`` bounds every message (an oversized one
    closes the connection, which counts as a gap). Meant to be read by one
    task; other tasks may subscribe and unsubscribe concurrently.
    """

    def __init__(
        self,
        spec: NodeSpec,
        *,
        connect_timeout: float = 1.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        health_check_interval: float | None = None,
        limits: ReplyLimits = DEFAULT_LIMITS,
    ) -> None:
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"spec must be a NodeSpec, got {type(spec).__name__}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"PubSub {name} must be a non-negative number, got {value!r}")
        if health_check_interval is not None and (
            isinstance(health_check_interval, bool)
            or not isinstance(health_check_interval, (int, float))
            or not health_check_interval > 0
        ):
            raise ValueError(
                "PubSub health_check_interval must be a positive number or None, "
                f"got {health_check_interval!r}"
            )
        self.health_check_interval = health_check_interval
        self.limits = limits
        self.spec = spec
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        #: Number of reconnects so far (each one yielded a ``gap`` message).
        self.gaps = 0
        #: ``True`` after :meth:`aclose`.
        self.closed = False
        self._conn: Connection | None = None
        self._channels: set[bytes] = set()
        self._patterns: set[bytes] = set()
        self._lock = anyio.Lock()
        self._pending: deque[Message] = deque()
        # Set when subscriptions change or a connection exists, so a reader started
        # before the first subscription waits instead of failing or spinning.
        self._ready = anyio.Event()
        self._lost = False
        self._failures = 0
        # Silence detection: when the last bytes arrived, and when a PING went out.
        self._last_data = 0.0
        self._ping_sent_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<PubSub {self.spec.id} channels={len(self._channels)} "
            f"patterns={len(self._patterns)} gaps={self.gaps}>"
        )

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels currently subscribed to."""
        return frozenset(self._channels)

    @property
    def patterns(self) -> frozenset[bytes]:
        """The patterns currently subscribed to."""
        return frozenset(self._patterns)

    async def __aenter__(self) -> PubSub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; iteration ends and later subscriptions raise."""
        self.closed = True
        self._ready.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(self, *channels: str | bytes) -> None:
        """Subscribe to channels (connecting on first use).

        Raises :class:`~cachering.errors.NodeUnavailable` if the first connection
        fails; the channels stay registered and reading retries the connection.
        """
        names = _names("channel", channels)
        if not names:
            raise ValueError("subscribe() needs at least one channel")
        self._channels.update(names)
        await self._send("SUBSCRIBE", names)

    async def psubscribe(self, *patterns: str | bytes) -> None:
        """Subscribe to glob-style patterns (``pmessage`` messages carry the pattern)."""
        names = _names("pattern", patterns)
        if not names:
            raise ValueError("psubscribe() needs at least one pattern")
        self._patterns.update(names)
        await self._send("PSUBSCRIBE", names)

    async def unsubscribe(self, *channels: str | bytes) -> None:
        """Unsubscribe from channels (from every channel when called without arguments)."""
        names = _names("channel", channels)
        if names:
            self._channels.difference_update(names)
        else:
            self._channels.clear()
        await self._send("UNSUBSCRIBE", names)

    async def punsubscribe(self, *patterns: str | bytes) -> None:
        """Unsubscribe from patterns (from every pattern when called without arguments)."""
        names = _names("pattern", patterns)
        if names:
            self._patterns.difference_update(names)
        else:
            self._patterns.clear()
        await self._send("PUNSUBSCRIBE", names)

    async def _send(self, command: str, names: list[bytes]) -> None:
        if self.closed:
            raise NodeUnavailable(self.spec.id, "pub/sub client is closed")
        async with self._lock:
            try:
                if self._conn is None:
                    if self._lost or not command.startswith(("SUBSCRIBE", "PSUBSCRIBE")):
                        # The reconnect subscribes to the current sets, names included.
                        return
                    await self._connect()
                    return
                try:
                    await self._conn.send_command(command, *names)
                except NodeUnavailable:
                    # The reader notices too, reconnects and resubscribes.
                    self._conn = None
                    self._lost = True
            finally:
                # A reader waiting for the first subscription re-evaluates (and
                # retries the connection itself if this one failed).
                self._ready.set()

    async def _connect(self) -> None:
        """Open a connection and subscribe to everything registered (lock held)."""
        conn = await Connection.open(
            self.spec, connect_timeout=self.connect_timeout, limits=self.limits
        )
        try:
            if self._channels:
                await conn.send_command("SUBSCRIBE", *self._channels)
            if self._patterns:
                await conn.send_command("PSUBSCRIBE", *self._patterns)
        except BaseException:
            await conn.aclose()
            raise
        if self.closed:
            await conn.aclose()
            return
        self._conn = conn
        self._last_data = anyio.current_time()
        self._ping_sent_at = None
        self._ready.set()

    async def _reconnect(self) -> None:
        """Retry with back-off until connected again (or closed); queue a gap."""
        while not self.closed:
            async with self._lock:
                if self._conn is not None:  # a subscriber reconnected meanwhile
                    break
                try:
                    await self._connect()
                except NodeUnavailable:
                    self._failures += 1
                else:
                    break
            cap = min(self.backoff_max, self.backoff_base * 2 ** min(self._failures - 1, 32))
            await anyio.sleep(random.uniform(0, cap))
        if self.closed:
            return
        self._failures = 0
        self._lost = False
        self.gaps += 1
        self._pending.append(_GAP)

    # -- reading -----------------------------------------------------------------------

    def __aiter__(self) -> PubSub:
        return self

    async def __anext__(self) -> Message:
        message = await self._next()
        if message is None:
            raise StopAsyncIteration
        return message

    async def get_message(self, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109
        """The next message, or ``None`` if none arrived within ``timeout`` (or closed)."""
        with anyio.move_on_after(timeout):
            return await self._next()
        return None

    async def _next(self) -> Message | None:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self.closed:
                return None
            conn = self._conn
            if conn is None:
                if self._lost or self._channels or self._patterns:
                    await self._reconnect()
                else:
                    if self._ready.is_set():
                        self._ready = anyio.Event()
                    await self._ready.wait()
                continue
            try:
                if self.health_check_interval is None:
                    reply = await conn.read_reply()
                else:
                    reply = await self._read_watched(conn, self.health_check_interval)
                    if reply is _SILENCE:
                        continue
            except NodeUnavailable:
                if self._conn is conn:
                    self._conn = None
                    self._lost = True
                await conn.aclose()
                continue
            message = self._parse(reply)
            if message is not None:
                return message

    async def _read_watched(self, conn: Connection, interval: float) -> Any:
        """Read, PINGing after ``interval`` of silence; silence after the PING is a loss."""
        since = self._last_data if self._ping_sent_at is None else self._ping_sent_at
        reply: Any = _SILENCE
        with anyio.move_on_after(since + interval - anyio.current_time()):
            reply = await conn.read_reply()
        if reply is not _SILENCE:
            self._last_data = anyio.current_time()
            self._ping_sent_at = None
            return reply
        if self._ping_sent_at is not None:
            await conn.aclose()
            raise NodeUnavailable(self.spec.id, f"no answer to PING within {interval}s")
        self._ping_sent_at = anyio.current_time()
        async with self._lock:
            await conn.send_command("PING")
        return _SILENCE

    def _parse(self, reply: Any) -> Message | None:
        if not isinstance(reply, list) or not reply:
            return None
        kind = reply[0]
        # A message still in flight when its channel or pattern was unsubscribed is not
        # delivered: once unsubscribe() returns, that channel stays quiet.
        if kind == b"message" and len(reply) == 3:
            if reply[1] not in self._channels:
                return None
            return Message(kind="message", channel=reply[1], data=reply[2])
        if kind == b"pmessage" and len(reply) == 4:
            if reply[1] not in self._patterns:
                return None
            return Message(kind="pmessage", channel=reply[2], data=reply[3], pattern=reply[1])
        # Subscription confirmations, PONGs and anything unexpected are not messages.
        return None
