"""Cluster events and the bus that fans them out to subscribers without ever blocking.

Every service of the control plane (health, election, topology, repair) publishes what
happens as a small frozen :class:`Event`. The :class:`EventBus` logs each one through the
stdlib :mod:`logging` module (logger ``cachering.events``, with structured ``extra``
fields ``cachering_event`` and ``cachering_<field>``) and hands it to every subscriber.

Each subscriber owns a bounded memory object stream. A subscriber that does not keep up
loses events (the oldest by default, or the newest) and the loss is counted in
:attr:`Subscription.dropped`; :meth:`EventBus.publish` never waits, so a slow consumer
can never stall heartbeats or elections.

>>> bus = EventBus()
>>> async with bus.subscribe() as events:          # doctest: +SKIP
...     async for event in events:
...         print(event)
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, ClassVar, Literal

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "Event",
    "EventBus",
    "HintsReplayed",
    "LeaderChanged",
    "NodeAdded",
    "NodeDown",
    "NodeHealthy",
    "NodeRecovering",
    "NodeRemoved",
    "NodeRestarted",
    "NodeSuspect",
    "NodeUp",
    "NodeWeightChanged",
    "Subscription",
    "TopologyChanged",
]

logger = logging.getLogger("cachering.events")

DropPolicy = Literal["oldest", "newest"]


@attrs.frozen(kw_only=True)
class Event:
    """Base class: ``at`` is a monotonic timestamp (seconds) taken when the event is made."""

    level: ClassVar[int] = logging.INFO
    at: float = attrs.field(factory=time.monotonic)

    @property
    def kind(self) -> str:
        """The event's class name (``"NodeDown"``, ...)."""
        return type(self).__name__

    def fields(self) -> dict[str, Any]:
        """Every field but the timestamp, as a plain dict."""
        out = attrs.asdict(self, recurse=False)
        out.pop("at", None)
        return out

    def describe(self) -> str:
        """A one-line human description."""
        body = " ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"{self.kind} {body}".rstrip()


@attrs.frozen(kw_only=True)
class NodeSuspect(Event):
    """This manager's heartbeats to ``node`` failed ``misses`` times in a row."""

    level: ClassVar[int] = logging.WARNING
    node: str
    misses: int
    reason: str = ""


@attrs.frozen(kw_only=True)
class NodeHealthy(Event):
    """A suspect node answered a heartbeat again."""

    node: str
    latency_ms: float


@attrs.frozen(kw_only=True)
class NodeRestarted(Event):
    """The node's ``run_id`` changed: the server process restarted (and is probably empty)."""

    level: ClassVar[int] = logging.WARNING
    node: str
    old_run_id: str
    new_run_id: str


@attrs.frozen(kw_only=True)
class _TopologyEvent(Event):
    node: str
    epoch: int
    version: int


@attrs.frozen(kw_only=True)
class NodeDown(_TopologyEvent):
    """The topology now says ``node`` is down."""

    level: ClassVar[int] = logging.WARNING


@attrs.frozen(kw_only=True)
class NodeRecovering(_TopologyEvent):
    """The topology now says ``node`` is recovering (writable, not readable)."""


@attrs.frozen(kw_only=True)
class NodeUp(_TopologyEvent):
    """The topology now says ``node`` is up."""


@attrs.frozen(kw_only=True)
class NodeAdded(_TopologyEvent):
    """``node`` joined the topology."""


@attrs.frozen(kw_only=True)
class NodeRemoved(_TopologyEvent):
    """``node`` left the topology."""


@attrs.frozen(kw_only=True)
class NodeWeightChanged(_TopologyEvent):
    """``node``'s weight changed."""

    weight: float


@attrs.frozen(kw_only=True)
class TopologyChanged(Event):
    """This manager adopted a newer topology (``source``: announce, read, commit)."""

    epoch: int
    version: int
    leader: str | None
    source: str


@attrs.frozen(kw_only=True)
class LeaderChanged(Event):
    """The leader this manager knows of changed (``leader`` None: nobody known)."""

    leader: str | None
    epoch: int
    is_self: bool
    reason: str = ""


@attrs.frozen(kw_only=True)
class HintsReplayed(Event):
    """Hints for ``node`` were replayed (``cleared``: its keys were wiped after overflow)."""

    node: str
    keys: int
    cleared: bool


class Subscription:
    """One subscriber's view of the bus: an async iterator of events; close it when done.

    ``dropped`` counts the events this subscriber lost because its buffer was full.
    """

    def __init__(self, bus: EventBus, size: int, policy: DropPolicy) -> None:
        send, receive = anyio.create_memory_object_stream[Event](size)
        self._bus = bus
        self._send: MemoryObjectSendStream[Event] = send
        self._receive: MemoryObjectReceiveStream[Event] = receive
        self._policy = policy
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
            return
        except anyio.WouldBlock:
            pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        self.dropped += 1
        if self._policy == "newest":
            return
        try:
            self._receive.receive_nowait()
            self._send.send_nowait(event)
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        except anyio.BrokenResourceError:
            pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving; iteration ends after the buffered events."""
        self._bus._unsubscribe(self)
        self._send.close()

    def aclose_receive(self) -> None:
        """Drop the buffered events too."""
        self.close()
        self._receive.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.aclose_receive()


class EventBus:
    """Fan-out of :class:`Event` objects to any number of bounded subscriptions.

    ``publish`` is synchronous and never blocks; ``published`` counts every event.
    """

    def __init__(self, *, log: logging.Logger | None = None) -> None:
        self._subs: list[Subscription] = []
        self._log = log if log is not None else logger
        self.published = 0

    def subscribe(self, size: int = 256, *, drop: DropPolicy = "oldest") -> Subscription:
        """A new subscription buffering up to ``size`` events; past that ``drop`` decides."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"subscription size must be an int >= 1, got {size!r}")
        if drop not in ("oldest", "newest"):
            raise ValueError(f"drop must be 'oldest' or 'newest', got {drop!r}")
        sub = Subscription(self, size, drop)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        """Number of open subscriptions."""
        return len(self._subs)

    @property
    def dropped(self) -> int:
        """Events lost by the current subscribers, in total."""
        return sum(s.dropped for s in self._subs)

    def publish(self, event: Event) -> None:
        """Log ``event`` and offer it to every subscriber (never waits)."""
        if not isinstance(event, Event):
            raise TypeError(f"publish() needs an Event, got {type(event).__name__}")
        self.published += 1
        if self._log.isEnabledFor(event.level):
            extra = {f"cachering_{k}": v for k, v in event.fields().items()}
            extra["cachering_event"] = event.kind
            self._log.log(event.level, "%s", event.describe(), extra=extra)
        for sub in list(self._subs):
            sub._offer(event)

    def close(self) -> None:
        """End every subscription (their iterators finish after the buffered events)."""
        for sub in list(self._subs):
            sub.close()
