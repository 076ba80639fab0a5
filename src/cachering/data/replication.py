"""The replica synchronizer: replica writes batched per node, flushed by size or by time.

Writers hand replica writes to :meth:`Synchronizer.submit`; a service in the cluster's
task group groups them per target node and sends each node one pipeline of ``APPLY``
script calls (at most ``sync_batch_size`` keys each) per flush. A flush happens as soon
as one node's batch is full, or ``sync_flush_interval`` after the first pending write.

Memory is bounded: ``submit`` splits work into chunks of at most ``sync_batch_size``
entries and hands each straight to the pending batches (no task switch on the hot path)
while fewer than ``sync_queue_size`` entries are pending or in flight; past that it waits
until a flush completes (backpressure). Nothing is dropped silently: a write whose node is
unreachable is counted as dropped and its key is recorded as a hint on the node that took
the write (its *holder*), for the repair path to replay.

A ``set_many`` writes most replica copies itself, in the script call each node gets
anyway for the keys it is primary for (``sync_inline``); :meth:`Synchronizer.record_inline`
counts those with the rest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus

from ..errors import NodeUnavailable, ResponseError
from ..metrics import SyncCounters
from ..resp.pool import Pool
from ..resp.script import Script
from ._burst import BurstLog
from .fanout import each_node
from .keys import data_prefix, hint_keys
from .scripts import apply_args, apply_argv

__all__ = ["Entry", "Synchronizer"]

logger = logging.getLogger("cachering.data.replication")

Entry = tuple[bytes, bytes, int]
"""(Redis key, stored value, expiry): the expiry is 0 for none, an absolute ``PXAT`` in ms,
or ``-ttl`` in ms, counted from the clock of the server as it applies the write."""


@attrs.define
class _Chunk:
    node: str
    holder: str
    keys: list[bytes]
    values: list[bytes]
    pxat: int | list[int]  # one absolute expiry for every key, or one per key


class Synchronizer:
    """Batched, bounded, backpressured replica writes (a service: start ``run``)."""

    def __init__(
        self,
        pools: Mapping[str, Pool],
        script: Script,
        *,
        namespace: str,
        batch_size: int,
        flush_interval: float,
        queue_size: int,
        hint_limit: int,
        timeout: float,
        on_failure: Callable[[str], None] = lambda node: None,
    ) -> None:
        self._pools = pools
        self._script = script
        self._namespace = namespace
        self._prefix_len = len(data_prefix(namespace))
        self._batch_size = batch_size
        self._interval = flush_interval
        self._queue_size = queue_size
        self._hint_limit = hint_limit
        self._timeout = timeout
        self._on_failure = on_failure
        self.stats = SyncCounters()
        """What this synchronizer counts (declared in :mod:`cachering.metrics`)."""
        self.unexpected = BurstLog(logger, "replica synchronizer")
        """Logs exceptions the synchronizer did not expect (the writes are counted as drops)."""
        self._pending: dict[str, list[_Chunk]] = defaultdict(list)
        self._node_count: dict[str, int] = defaultdict(int)
        self._pending_count = 0  # pending + in flight
        self._space = anyio.Event()
        self._wake = anyio.Event()
        self._full = False
        self._idle = False
        self._closed = False
        self._completed = 0
        self._waiters: list[tuple[int, anyio.Event]] = []
        self.finished = anyio.Event()
        """Set when the service has flushed everything after :meth:`close`."""

    # ---------------------------------------------------------------- producer side

    @property
    def depth(self) -> int:
        """Replica writes accepted and not yet completed (queued, pending or in flight)."""
        return self.stats.submitted - self._completed

    async def submit(self, node: str, entries: Sequence[Entry], *, holder: str) -> None:
        """Queue replica writes for ``node``; waits while the queue is full.

        ``holder`` is a node that took the same writes: hints go there if ``node`` fails.
        """
        await self._submit(
            node, [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries], holder
        )

    async def submit_values(
        self, node: str, keys: list[bytes], values: list[bytes], pxat: int, *, holder: str
    ) -> None:
        """:meth:`submit` for values that share one absolute expiry ``pxat`` (0: none),
        already laid out as the script takes them (what the cluster's hot path builds).

        The lists are kept as they are until the write completes: the caller must not
        change them (the same lists may be handed over for several nodes)."""
        await self._submit(node, keys, values, pxat, holder)

    async def _submit(
        self,
        node: str,
        keys: list[bytes],
        values: list[bytes],
        pxat: int | list[int],
        holder: str,
    ) -> None:
        if self._closed:
            raise RuntimeError("the synchronizer is closed")
        step = self._batch_size
        n = len(keys)
        for start in range(0, n, step):
            while self._pending_count >= self._queue_size:
                if self._space.is_set():
                    self._space = anyio.Event()
                await self._space.wait()
            if n <= step:  # the usual case: keep the caller's lists, copy nothing
                self._accept(_Chunk(node, holder, keys, values, pxat))
                return
            end = start + step
            self._accept(
                _Chunk(
                    node,
                    holder,
                    keys[start:end],
                    values[start:end],
                    pxat if isinstance(pxat, int) else pxat[start:end],
                )
            )

    def _accept(self, chunk: _Chunk) -> None:
        count = len(chunk.keys)
        self.stats.submitted += count
        self._pending[chunk.node].append(chunk)
        self._pending_count += count
        self._node_count[chunk.node] += count
        if self._node_count[chunk.node] >= self._batch_size:
            self._full = True
            self._wake.set()
        elif self._idle:
            self._wake.set()

    def record_inline(self, count: int, stale: int) -> None:
        """Count ``count`` replica writes that a writer sent itself, in the script call it
        made to their node anyway (``stale`` of them found a copy as new or newer)."""
        self.stats.submitted += count
        self.stats.inline += count
        self.stats.applied += count - stale
        self.stats.stale += stale
        self._complete(count)

    def record_refused(self, count: int) -> None:
        """Count ``count`` replica writes that a writer sent itself and their node refused
        (an error reply): dropped, and no hint, since the node is up and took nothing."""
        self.stats.submitted += count
        self.stats.dropped += count
        self._complete(count)

    async def flush(self) -> None:
        """Wait until every write submitted before this call has been completed."""
        target = self.stats.submitted
        if self._completed >= target:
            return
        event = anyio.Event()
        self._waiters.append((target, event))
        self._wake.set()
        await event.wait()

    def close(self) -> None:
        """Accept no more writes; the service flushes what it holds, then sets ``finished``."""
        self._closed = True
        self._wake.set()

    def abandon(self) -> None:
        """Count everything not yet completed as abandoned (shutdown timed out)."""
        self.stats.abandoned += self.depth
        self._complete(self.depth)

    # ---------------------------------------------------------------- service

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush pending batches (by size, by time or on request) until :meth:`close`."""
        try:
            task_status.started()
            await self._flush_loop()
        finally:
            self.finished.set()

    async def _flush_loop(self) -> None:
        while True:
            if not any(self._pending.values()):
                if self._closed:
                    return
                self._wake = anyio.Event()
                self._idle = True
                try:
                    await self._wake.wait()
                finally:
                    self._idle = False
                continue
            # Wait out the interval unless a batch fills up, close() is called or someone
            # waits in flush() (each of those sets _wake).
            with anyio.move_on_after(self._interval):
                while not (self._full or self._closed or self._waiters):
                    self._wake = anyio.Event()
                    await self._wake.wait()
            taken = {node: batch for node, batch in self._pending.items() if batch}
            self._pending.clear()
            count = sum(self._node_count.values())
            self._node_count.clear()
            self._full = False
            self.stats.flushes += 1
            await each_node(self._send_node, taken)
            self._pending_count -= count
            self._space.set()
            self._complete(count)

    def _complete(self, count: int) -> None:
        self._completed += count
        if self._waiters:
            done = self._completed
            keep = []
            for target, event in self._waiters:
                if target <= done:
                    event.set()
                else:
                    keep.append((target, event))
            self._waiters = keep

    def _pieces(self, chunks: list[_Chunk]) -> list[list[_Chunk]]:
        """Pack chunks (each at most a batch) into script calls of at most a batch."""
        pieces: list[list[_Chunk]] = []
        size = self._batch_size + 1
        for chunk in chunks:
            n = len(chunk.keys)
            if size + n > self._batch_size:
                pieces.append([])
                size = 0
            pieces[-1].append(chunk)
            size += n
        return pieces

    def _command(self, piece: list[_Chunk]) -> list[Any]:
        """One ``EVALSHA`` of ``APPLY`` writing every entry of ``piece``."""
        command: list[Any] = ["EVALSHA", self._script.sha, 0]
        for chunk in piece:
            command += chunk.keys
        command[2] = len(command) - 3
        values = (
            piece[0].values
            if len(piece) == 1
            else list(chain.from_iterable(c.values for c in piece))
        )
        # One shared expiry when every chunk has the same one (the set_many hot path);
        # otherwise one per key, which apply_argv still sends shared if they all agree.
        first = piece[0].pxat
        pxats: int | list[int]
        if isinstance(first, int) and all(c.pxat == first for c in piece):
            pxats = first
        else:
            pxats = list(
                chain.from_iterable(
                    [c.pxat] * len(c.keys) if isinstance(c.pxat, int) else c.pxat for c in piece
                )
            )
        # keys may repeat: not distinct
        command += apply_argv(values, pxats, hint_limit=self._hint_limit, distinct=False)
        return command

    async def _send_node(self, node: str, chunks: list[_Chunk]) -> None:
        pieces = self._pieces(chunks)
        commands = [self._command(piece) for piece in pieces]
        self.stats.batches += len(pieces)
        pool = self._pools.get(node)
        if pool is None:  # routed to a node this cluster has no pool for
            await self._record_drops(node, chunks)
            return
        try:
            replies = await pool.pipeline(commands, timeout=self._timeout, raise_on_error=False)
            for i, reply in enumerate(replies):
                if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                    command = commands[i]
                    keys = command[3 : 3 + command[2]]
                    replies[i] = await pool.run_script(
                        self._script, keys, command[3 + command[2] :], timeout=self._timeout
                    )
        except NodeUnavailable:
            self._on_failure(node)
            await self._record_drops(node, chunks)
            return
        except ResponseError:  # a refusal (OOM, ...): counted as drops, with hints
            await self._record_drops(node, chunks)
            return
        except Exception as exc:  # a bug or hostile reply: logged, counted, keep serving
            self.unexpected.exception(exc)
            await self._record_drops(node, chunks)
            return
        for piece, reply in zip(pieces, replies, strict=True):
            if isinstance(reply, bytes):
                stale = reply.count(b"0")
                self.stats.stale += stale
                self.stats.applied += len(reply) - stale
            elif isinstance(reply, ResponseError):
                # refused (OOM, ...): dropped, but the node is up and missed nothing it
                # took, so no hint marks it as lagging; the sweep brings it up to date
                self.stats.dropped += sum(len(c.keys) for c in piece)
            else:
                await self._record_drops(node, piece)

    async def _record_drops(self, node: str, chunks: list[_Chunk]) -> None:
        by_holder: dict[str, list[bytes]] = defaultdict(list)
        cut = self._prefix_len
        for chunk in chunks:
            self.stats.dropped += len(chunk.keys)
            by_holder[chunk.holder].extend(k[cut:] for k in chunk.keys)
        hint_key, overflow_key = hint_keys(self._namespace, node)
        for holder, members in by_holder.items():
            keys, argv = apply_args(
                (), hint_limit=self._hint_limit, hints=[(hint_key, overflow_key, members)]
            )
            pool = self._pools.get(holder)
            try:
                if pool is None:
                    raise NodeUnavailable(holder, "no pool for this node")
                await pool.run_script(self._script, keys, argv, timeout=self._timeout)
            except (NodeUnavailable, ResponseError):
                self.stats.hints_lost += len(members)
            except Exception as exc:  # logged and counted; the service must keep running
                self.unexpected.exception(exc)
                self.stats.hints_lost += len(members)
            else:
                self.stats.hints_recorded += len(members)
