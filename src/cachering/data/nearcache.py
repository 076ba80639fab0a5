"""The optional per-process near cache and the invalidation messages that keep it honest.

:class:`NearCache` is a bounded LRU of recently read values, each with its own expiry
(the key's remaining TTL, capped by ``near_cache_ttl``). Every write made through a
:class:`~cachering.cluster.Cluster` drops the key locally and is announced, batched, on
the ``{namespace}:inval`` channel of every node (:class:`InvalidationPublisher`); each
process listens on one node (:class:`InvalidationSubscriber`) and drops what others
changed. Pub/sub loses messages while a subscriber is disconnected, so whenever the
subscription breaks or reports a gap the whole near cache is cleared.

Invalidations travel as signed control messages (kind ``invalidate``, see
:mod:`cachering.messages` and :class:`InvalidationCodec`), so a process without the
cluster secret cannot empty other processes' near caches; rejected messages are counted.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..errors import NodeUnavailable, ResponseError, raise_sole_cause
from ..messages import ControlMessage, MessageCodec, MessageRejected
from ..metrics import NearCacheCounters
from ..node import NodeSpec
from ..resp.pool import Pool
from ..wallclock import next_seq, wall_time
from ._burst import BurstLog
from .fanout import each

__all__ = [
    "InvalidationCodec",
    "InvalidationPublisher",
    "InvalidationSubscriber",
    "NearCache",
]

logger = logging.getLogger("cachering.data.nearcache")

_ENVELOPE = 512  # room for the signed header and the JSON around the key list
_MISSING = object()
_WATCH_INTERVAL = 0.05  # how often the subscriber checks that its node is still trusted


class NearCache:
    """Bounded LRU with per-entry expiry. Keys are the raw key bytes."""

    def __init__(self, size: int, ttl: float, *, clock: Callable[[], float]) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._data: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.stats = NearCacheCounters()
        self.generation = 0
        """Bumped by every invalidation and clear; see :meth:`put`."""

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> bytes | None:
        """The cached value, or None on a miss (also when the entry expired)."""
        entry = self._data.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        value, expires = entry
        if expires <= self._clock():
            del self._data[key]
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: bytes, value: bytes, ttl: float | None, generation: int) -> None:
        """Remember ``value`` for at most ``ttl`` seconds (None: ``near_cache_ttl``).

        ``generation`` is :attr:`generation` as it was when the read was sent: if any
        invalidation arrived since, the value may already be stale and is not kept.
        """
        life = self._ttl if ttl is None else min(ttl, self._ttl)
        if life <= 0 or generation != self.generation:
            return
        self._data[key] = (value, self._clock() + life)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def invalidate(self, keys: Iterable[bytes]) -> None:
        """Drop ``keys``."""
        self.generation += 1
        pop = self._data.pop
        for key in keys:
            if pop(key, _MISSING) is not _MISSING:
                self.stats.invalidated += 1

    def clear(self) -> None:
        """Drop everything (a possible lost invalidation)."""
        self.generation += 1
        self._data.clear()
        self.stats.clears += 1


class InvalidationCodec:
    """Invalidation messages as signed control messages (kind ``invalidate``).

    The body is ``{"keys": [base64 key, ...]}`` or ``{"all": true}``; the sender is the
    Cluster instance's id, so a process recognises (and skips) its own announcements.
    Batches are split so every message fits ``max_size``.
    """

    def __init__(self, codec: MessageCodec, sender: str) -> None:
        self._codec = codec
        self.sender = sender
        # per-sender sequence numbers must keep rising across restarts
        self._seq = next_seq(0)

    def _message(self, body: dict[str, Any]) -> bytes:
        self._seq = next_seq(self._seq)
        msg = ControlMessage(
            "invalidate",
            self._codec.namespace,
            self.sender,
            epoch=0,
            seq=self._seq,
            sent_at=wall_time(),
            body=body,
        )
        return self._codec.encode(msg)

    def encode(self, keys: Sequence[bytes], *, clear_all: bool = False) -> list[bytes]:
        """Messages announcing ``keys`` (split to fit), or one clear-everything message."""
        if clear_all:
            return [self._message({"all": True})]
        budget = self._codec.max_size - _ENVELOPE
        messages: list[bytes] = []
        batch: list[str] = []
        size = 0
        for key in keys:
            text = base64.b64encode(key).decode("ascii")
            if len(text) + 3 > budget:
                return [self._message({"all": True})]  # a key too large for any message
            if size + len(text) + 3 > budget:
                messages.append(self._message({"keys": batch}))
                batch, size = [], 0
            batch.append(text)
            size += len(text) + 3
        if batch:
            messages.append(self._message({"keys": batch}))
        return messages

    def decode(self, data: bytes) -> tuple[str, bool, list[bytes]]:
        """(sender, clear_all, keys); ValueError for anything rejected or malformed."""
        try:
            msg = self._codec.decode(data)
        except (MessageRejected, TypeError) as exc:
            raise ValueError(f"invalidation rejected: {exc}") from None
        if msg.kind != "invalidate":
            raise ValueError(f"not an invalidation: {msg.kind}")
        body = msg.body
        if body.get("all") is True:
            return msg.sender, True, []
        raw = body.get("keys")
        if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
            raise ValueError("invalidation body has no key list")
        try:
            keys = [base64.b64decode(k, validate=True) for k in raw]
        except (binascii.Error, ValueError):
            raise ValueError("invalidation key is not base64") from None
        return msg.sender, False, keys


class InvalidationPublisher:
    """Batches written keys and publishes them on every node (a service: start ``run``).

    ``note`` never waits: past ``limit`` pending keys it switches to one clear-all message.
    """

    def __init__(
        self,
        pools: Mapping[str, Pool],
        nodes: Callable[[], Iterable[str]],
        *,
        channel: bytes,
        codec: InvalidationCodec,
        interval: float,
        timeout: float,
        stats: NearCacheCounters,
        limit: int = 100_000,
    ) -> None:
        self._pools = pools
        self._nodes = nodes
        self._channel = channel
        self._codec = codec
        self._interval = interval
        self._timeout = timeout
        self._limit = limit
        self._stats = stats
        self._pending: set[bytes] = set()
        self._clear_all = False
        self._wake = anyio.Event()
        self._closed = False

    def note(self, keys: Iterable[bytes]) -> None:
        """Announce ``keys`` with the next batch."""
        if self._clear_all:
            return
        self._pending.update(keys)
        if len(self._pending) > self._limit:
            self._pending.clear()
            self._clear_all = True
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish batches every ``interval`` while there is something to say."""
        task_status.started()
        while True:
            if not (self._pending or self._clear_all):
                if self._closed:
                    return
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            await anyio.sleep(self._interval)
            await self.flush()

    async def close(self) -> None:
        """Publish what is pending and stop."""
        self._closed = True
        await self.flush()
        self._wake.set()

    async def flush(self) -> None:
        """Publish pending keys now."""
        if not (self._pending or self._clear_all):
            return
        keys, clear_all = list(self._pending), self._clear_all
        self._pending = set()
        self._clear_all = False
        messages = self._codec.encode(keys, clear_all=clear_all)
        commands: list[Sequence[Any]] = [("PUBLISH", self._channel, m) for m in messages]

        async def publish(node: str) -> None:
            pool = self._pools.get(node)
            if pool is None:
                return
            try:
                await pool.pipeline(commands, timeout=self._timeout)
            except (NodeUnavailable, ResponseError):
                pass  # that node's subscribers lose their connection and clear anyway
            else:
                self._stats.messages_sent += len(commands)

        await each(self._nodes(), publish)


class InvalidationSubscriber:
    """Listens on one node and applies invalidations to a near cache (a service)."""

    def __init__(
        self,
        cache: NearCache,
        specs: Sequence[NodeSpec],
        choose: Callable[[Sequence[str]], Sequence[str]],
        *,
        channel: bytes,
        codec: InvalidationCodec,
        retry_delay: float,
        on_failure: Callable[[str], None],
        pubsub_factory: Callable[[NodeSpec], Any],
    ) -> None:
        self._cache = cache
        self._specs = {s.id: s for s in specs}
        self._order = [s.id for s in specs]
        self._choose = choose
        self._channel = channel
        self._codec = codec
        self._retry_delay = retry_delay
        self._on_failure = on_failure
        self._factory = pubsub_factory
        self.node: str | None = None
        """The node listened on right now (None while reconnecting)."""
        self.subscribed = anyio.Event()
        """Set once the first subscription is live."""
        self.connects = 0
        """Subscriptions attempted so far."""
        self.unexpected = BurstLog(logger, "near-cache invalidation subscriber")
        """Logs exceptions the subscriber did not expect (also counted as dropped messages)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, apply messages, and move to another node whenever the current one fails.

        When no node is trusted the subscriber goes round every node in turn, waiting
        ``retry_delay`` before each attempt and twice as long after each failure (up to
        32 times ``retry_delay``), and stays on a node that answers until a trusted one
        is available again."""
        task_status.started()
        attempt = 0
        delay = self._retry_delay
        while True:
            candidates = self._choose(self._order)
            if candidates:
                node, delay = candidates[0], self._retry_delay
            else:
                node = self._order[attempt % len(self._order)]
                await anyio.sleep(delay)  # nobody is trusted: do not spin
            attempt += 1
            self.connects += 1
            try:
                await self._listen(node)
            except (NodeUnavailable, ResponseError, OSError):
                self._on_failure(node)
                delay = min(delay * 2, 32 * self._retry_delay)
                await anyio.sleep(self._retry_delay)
            except Exception as exc:  # a listener must never take the cluster down
                self._cache.stats.messages_dropped += 1
                self.unexpected.exception(exc)
                await anyio.sleep(self._retry_delay)
            finally:
                self.node = None
                # anything may have changed while we were not listening
                self._cache.clear()

    async def _listen(self, node: str) -> None:
        try:
            await self._listen_on(node)
        except BaseException as exc:  # a task group wraps what failed: raise that
            raise_sole_cause(exc)

    async def _listen_on(self, node: str) -> None:
        async with anyio.create_task_group() as tg, self._factory(self._specs[node]) as pubsub:
            await pubsub.subscribe(self._channel)
            self._cache.clear()
            self.node = node
            self.subscribed.set()
            tg.start_soon(self._watch, node, tg.cancel_scope)
            async for message in pubsub:
                if message.kind == "gap":
                    self._cache.clear()
                    continue
                if message.kind != "message":
                    continue
                self._apply(message.data)

    async def _watch(self, node: str, scope: anyio.CancelScope) -> None:
        # The transport reconnects to the same node forever; once the cluster sees that
        # node failing, listen elsewhere instead (messages meanwhile would be lost).
        # A node nobody trusts is still better than none: move only to a trusted one.
        while True:
            trusted = self._choose(self._order)
            if trusted and node not in trusted:
                break
            await anyio.sleep(_WATCH_INTERVAL)
        scope.cancel()

    def _apply(self, data: Any) -> None:
        stats = self._cache.stats
        try:
            sender, clear_all, keys = self._codec.decode(data)
        except ValueError:
            stats.messages_dropped += 1
            return
        stats.messages_received += 1
        if sender == self._codec.sender:
            return
        if clear_all:
            self._cache.clear()
        else:
            self._cache.invalidate(keys)
