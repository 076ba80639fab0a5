"""The demo's workload: mixed reads and quorum writes that check themselves as they go.

Each key has exactly one writer task, so the values of a key are written in order and
"the last acknowledged value" is well defined. Every value carries its sequence number;
the workload remembers, per key, the highest sequence a write was acknowledged for.

- A read that starts after the acknowledgement of sequence ``s`` and returns an older
  sequence, or nothing, is a *stale read*.
- A read that raises (no copy answered) is a *failed read*.
- A write that cannot collect its quorum is a *failed write*: it was never acknowledged,
  so it promises nothing (it may or may not be visible later).
- At the end every key is read back; a key whose value is older than its last
  acknowledged write is a *lost acknowledged write*.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import attrs

from ..cluster import Cluster
from ..errors import CacheringError

__all__ = ["Tally", "Workload"]


@attrs.define
class Tally:
    """Counters of the workload (one instance shared by every worker)."""

    reads: int = 0
    hits: int = 0
    misses: int = 0
    writes: int = 0
    failed_reads: int = 0
    failed_writes: int = 0
    stale_reads: int = 0
    examples: list[str] = attrs.Factory(list)
    """A few descriptions of violations, for the summary."""
    phase: str = "before the fault"
    """What the fault schedule is doing; stale and failed reads are counted per phase."""
    by_phase: dict[str, dict[str, int]] = attrs.Factory(dict)

    @property
    def ops(self) -> int:
        """Reads plus writes attempted."""
        return self.reads + self.writes

    def count(self, what: str) -> None:
        """Count one stale or failed read against the current phase."""
        per = self.by_phase.setdefault(self.phase, {})
        per[what] = per.get(what, 0) + 1

    def note(self, text: str) -> None:
        """Remember a violation's description (the first few only)."""
        if len(self.examples) < 5:
            self.examples.append(text)


def _value(seq: int, writer: int) -> bytes:
    return b"%d|w%d|" % (seq, writer) + b"x" * 48


def _seq(value: bytes) -> int:
    head, _, _ = value.partition(b"|")
    return int(head)


class Workload:
    """Reads and quorum writes over ``keys`` keys from several managers, self-checking.

    ``rate`` caps the total operations per second (0: as fast as possible).
    """

    def __init__(
        self,
        clusters: Sequence[Cluster],
        *,
        keys: int,
        workers_per_manager: int,
        write_ratio: float,
        rate: float,
        seed: int,
    ) -> None:
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        self.clusters = list(clusters)
        self.names = [f"demo:{i:06d}" for i in range(keys)]
        self.acked = [0] * keys
        self._next = [0] * keys
        self.workers = len(self.clusters) * workers_per_manager
        self.workers_per_manager = workers_per_manager
        self.write_ratio = write_ratio
        self.rate = rate
        self.seed = seed
        self.tally = Tally()
        self.stopping = anyio.Event()

    async def preload(self) -> None:
        """Write every key once (at quorum) so reads hit from the start."""
        cluster = self.clusters[0]
        chunk = 500
        for start in range(0, len(self.names), chunk):
            idx = range(start, min(start + chunk, len(self.names)))
            for i in idx:
                self._next[i] = 1
            await cluster.set_many(
                [(self.names[i], _value(1, i % self.workers)) for i in idx], consistency="quorum"
            )
            for i in idx:
                self.acked[i] = 1

    async def run(self) -> None:
        """Run every worker until :meth:`stop`."""
        async with anyio.create_task_group() as tg:
            for m, cluster in enumerate(self.clusters):
                for w in range(self.workers_per_manager):
                    tg.start_soon(self._worker, cluster, m * self.workers_per_manager + w)

    def stop(self) -> None:
        """Ask every worker to finish its current operation and return."""
        self.stopping.set()

    async def _worker(self, cluster: Cluster, wid: int) -> None:
        rnd = random.Random(self.seed * 1000 + wid)
        mine = range(wid, len(self.names), self.workers)
        pause = self.workers / self.rate if self.rate > 0 else 0.0
        next_at = anyio.current_time()
        while not self.stopping.is_set():
            if pause:
                next_at += pause
                delay = next_at - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                else:
                    next_at = anyio.current_time()  # fell behind: do not burst to catch up
            if mine and rnd.random() < self.write_ratio:
                await self._write(cluster, wid, rnd.choice(mine))
            else:
                await self._read(cluster, rnd.randrange(len(self.names)))
            if not pause:
                await anyio.lowlevel.checkpoint()

    async def _write(self, cluster: Cluster, wid: int, i: int) -> None:
        t = self.tally
        seq = self._next[i] + 1
        self._next[i] = seq
        t.writes += 1
        try:
            await cluster.set(self.names[i], _value(seq, wid), consistency="quorum")
        except CacheringError:
            t.failed_writes += 1
            return
        if seq > self.acked[i]:
            self.acked[i] = seq

    async def _read(self, cluster: Cluster, i: int) -> None:
        t = self.tally
        floor = self.acked[i]  # acknowledged before this read started
        t.reads += 1
        try:
            value = await cluster.get(self.names[i])
        except CacheringError as exc:
            t.failed_reads += 1
            t.count("failed_reads")
            t.note(f"failed read of {self.names[i]}: {exc}")
            return
        if value is None:
            t.misses += 1
            if floor:
                t.stale_reads += 1
                t.count("stale_reads")
                t.note(f"stale read of {self.names[i]}: nothing, acknowledged seq {floor}")
            return
        t.hits += 1
        got = _seq(value)
        if got < floor:
            t.stale_reads += 1
            t.count("stale_reads")
            t.note(f"stale read of {self.names[i]}: seq {got}, acknowledged seq {floor}")

    async def verify(self, cluster: Cluster) -> tuple[int, int]:
        """Read every key back; (lost acknowledged writes, keys checked)."""
        lost = 0
        chunk = 500
        for start in range(0, len(self.names), chunk):
            names = self.names[start : start + chunk]
            got = await cluster.get_many(names)
            for offset, value in enumerate(got):
                i = start + offset
                floor = self.acked[i]
                seq = _seq(value) if value is not None else 0
                if seq < floor:
                    lost += 1
                    self.tally.note(f"lost write of {names[offset]}: seq {seq} < acked {floor}")
        return lost, len(self.names)
