"""The write engine of a :class:`~cachering.cluster.Cluster`: set, set_many and delete.

A write carries a version (the cluster's hybrid clock) and goes through the one
apply-if-newer script on each copy it reaches. At level ``one`` with every node healthy
the primary copy takes it and the synchronizer batches the replica writes (a ``set_many``
sends most of them itself, in the call each node gets for its primary keys); otherwise each
key falls back along its preference list, a copy that stands in for a missed home records
a hint for it, and the call raises :class:`~cachering.errors.ConsistencyError` if a key
got fewer acknowledgements than its level needs (the copies that did take it still get
hints, so a partial write converges).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from ..config import ClusterConfig, Consistency
from ..errors import ConsistencyError, NodeUnavailable, ResponseError
from ..metrics import CallCounters
from ..resp import Pool
from ..ring import Ring
from . import values
from .arguments import MAX_TTL, TTL, Items, Key, Value, key_bytes, ttl_ms
from .calls import (
    Call,
    Plan,
    Segment,
    copies_needed,
    missed_hints,
    new_versions,
    note_hints,
    plan_calls,
    record_reply,
    targets_of,
)
from .fanout import each_node
from .keys import data_prefix, hint_keys
from .nearcache import InvalidationPublisher, NearCache
from .replication import Entry, Synchronizer
from .routing import Router
from .scripts import APPLY, APPLY_ONE, HintGroup, apply_args, apply_argv
from .servertime import ServerTime

__all__ = ["MAX_TTL", "TTL", "Items", "Key", "Value", "Writes", "key_bytes"]

_LEVELS = ("one", "quorum", "all")
_StrSet = set[str]  # the class defines a method named ``set``


class Writes:
    """Writes of one open cluster, built with every collaborator they use."""

    def __init__(
        self,
        config: ClusterConfig,
        router: Router,
        pools: Mapping[str, Pool],
        clock: values.HybridClock,
        sync: Synchronizer,
        server_time: ServerTime,
        *,
        on_failure: Callable[[str], None],
        counters: CallCounters,
        near: NearCache | None = None,
        publisher: InvalidationPublisher | None = None,
        note_hinted: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self._pools = pools
        self._clock = clock
        self._time = server_time
        self._prefix = data_prefix(config.namespace)
        self._on_failure = on_failure
        self._counters = counters
        self._ops = counters.ops
        self._errors = counters.errors
        self.sync = sync
        """Sends replica writes in batches."""
        self.near = near
        """This manager's near cache, invalidated on every write (None: off)."""
        self.publisher = publisher
        """Tells other managers' near caches what was written (None: off)."""
        self.note_hinted = note_hinted
        """Called with the nodes a write recorded hints for (the control plane's)."""

    def set(
        self, key: Key, value: Value, ttl: TTL, consistency: Consistency | None
    ) -> Coroutine[Any, Any, int]:
        """What :meth:`Cluster.set <cachering.cluster.Cluster.set>` does: checks the
        arguments now and returns the write to await (1 if it replaced a live value)."""
        # A plain function returning the coroutine, and the common argument types checked
        # inline: a single write is latency-bound, and each call and coroutine layer shows.
        raw = key.encode() if type(key) is str else key_bytes(key)
        data = value if type(value) is bytes else self.value(value)
        if len(data) > self.config.max_value_size:
            self.value(data)  # raises, naming the limit
        level = self.level(consistency)
        ms = 0 if ttl is None else ttl_ms(ttl)
        self._ops["set"] += 1
        if self._time.stale():
            return self._set_on_time(raw, data, ms, level)
        return self._write_one(raw, self._clock.stamp(data), self._expiry(ms), level)

    async def _set_on_time(self, raw: bytes, data: bytes, ms: int, level: str) -> int:
        await self._measure(raw)
        return await self._write_one(raw, self._clock.stamp(data), self._expiry(ms), level)

    async def _measure(self, raw: bytes) -> None:
        """Read the servers' clock on the node ``raw``'s write goes to first (routed around
        suspects, so a dead primary does not cost a timeout twice; see :class:`ServerTime`)."""
        targets, _ = self.router.write_plan(raw)
        pool = self._pools.get(targets[0]) if targets else None
        if pool is not None:
            await self._time.measure(pool)

    def _expiry(self, ms: int) -> int:
        """The expiry argument of a write with a ttl of ``ms`` (0: none): a ``PXAT`` on the
        servers' clock, the same for every copy; ``-ttl`` (each server counts from its own
        clock) until that clock was measured."""
        if not ms:
            return 0
        return self._time.now_ms() + ms if self._time.known else -ms

    async def set_many(
        self,
        mapping: Items,
        ttl: TTL,
        consistency: Consistency | None,
    ) -> None:
        """What :meth:`Cluster.set_many <cachering.cluster.Cluster.set_many>` does (one version)."""
        if not isinstance(mapping, Mapping):
            try:
                mapping = dict(mapping)
            except (TypeError, ValueError):
                raise TypeError("set_many takes a mapping or (key, value) pairs") from None
        ms = ttl_ms(ttl)
        level = self.level(consistency)
        if self._time.stale() and mapping:
            first = next(iter(mapping))
            await self._measure(first.encode() if type(first) is str else key_bytes(first))
        check = self.value
        # one version for the whole call: versions order writes of the same key only
        head = values.header(self._clock.next())
        table: dict[bytes, bytes] = {}
        for key, value in mapping.items():
            raw = key.encode() if type(key) is str else key_bytes(key)
            data = value if type(value) is bytes else check(value)
            if len(data) > self.config.max_value_size:
                check(data)
            table[raw] = head + data
        if not table:
            return
        self._ops["set_many"] += 1
        await self._write(table, self._expiry(ms), level)

    async def delete(self, key: Key, consistency: Consistency | None) -> bool:
        """What :meth:`Cluster.delete <cachering.cluster.Cluster.delete>` does."""
        raw, level = key_bytes(key), self.level(consistency)
        self._ops["delete"] += 1
        if self._time.stale():
            await self._measure(raw)
        tomb, expiry = self._tombstone()
        return await self._write_one(raw, tomb, expiry, level) == 1

    async def delete_many(self, keys: Iterable[Key], consistency: Consistency | None) -> int:
        """What :meth:`Cluster.delete_many <cachering.cluster.Cluster.delete_many>` does."""
        raws = list(dict.fromkeys(key_bytes(k) for k in keys))
        level = self.level(consistency)  # checked even with no keys
        if not raws:
            return 0
        self._ops["delete_many"] += 1
        if self._time.stale():
            await self._measure(raws[0])
        tomb, expiry = self._tombstone()
        return await self._write(dict.fromkeys(raws, tomb), expiry, level)

    def _announce(self, raws: Iterable[bytes]) -> None:
        """Tell this manager's near cache, and other managers', that ``raws`` were written."""
        if self.near is not None:
            self.near.invalidate(raws)
        if self.publisher is not None:
            self.publisher.note(raws)

    def value(self, value: object) -> bytes:
        """``value`` as bytes; TypeError or ValueError if it cannot be stored."""
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(f"values must be bytes-like or str, got {type(value).__name__}")
        if len(data) > self.config.max_value_size:
            raise ValueError(
                f"value of {len(data)} bytes exceeds max_value_size ({self.config.max_value_size})"
            )
        return data

    def level(self, consistency: object) -> str:
        """The consistency level to use; ValueError for an unknown one."""
        if consistency is None:
            return self.config.consistency
        if consistency not in _LEVELS:
            raise ValueError(f"consistency must be one of {_LEVELS}, got {consistency!r}")
        return str(consistency)

    def _tombstone(self) -> tuple[bytes, int]:
        """A delete marker under a fresh version, and its expiry."""
        tomb = values.header(self._clock.next(), tombstone=True)
        return tomb, self._expiry(math.ceil(self.config.tombstone_ttl * 1000))

    async def _write_one(self, raw: bytes, stored: bytes, expiry: int, level: str) -> int:
        """Write one key (``set``, ``delete``); returns 1 if it replaced a live value."""
        if level == "one":
            # Every home healthy: the primary takes the write, the synchronizer batches the
            # replica writes. Otherwise, or if the primary fails, the general path retries
            # around the failure (writes are idempotent). A refusal (ResponseError) is
            # this call's error: the node is up and took nothing.
            targets, missed = self.router.write_plan(raw)
            if not missed:
                primary, rkey = targets[0], self._prefix + raw
                try:
                    reply = await self._pools[primary].run_script(
                        APPLY_ONE, (rkey,), (stored, expiry)
                    )
                except NodeUnavailable as exc:
                    # the general path starts around the primary: one timeout, not two
                    self._on_failure(primary)
                    flags = await self._write_general(
                        [raw], [stored], expiry, level, failed={primary: exc.reason}
                    )
                    return flags.count(2)
                except ResponseError:
                    self._errors[primary] += 1
                    raise
                else:
                    if len(reply) > 1:  # taken under a new version: replicas get that one
                        stored = values.with_version(stored, reply[1:])
                        self._clock.observe_version(reply[1:])
                    self._announce((raw,))
                    if len(targets) > 1:
                        for node in targets[1:]:
                            await self.sync.submit_values(
                                node, [rkey], [stored], expiry, holder=primary
                            )
                    return 1 if reply[:1] in (b"2", b"4") else 0
        return await self._write({raw: stored}, expiry, level)

    async def _write(self, table: dict[bytes, bytes], expiry: int, level: str) -> int:
        """Write every key (raw key -> stored value) at ``level``; returns how many keys
        replaced a live value somewhere."""
        if level == "one":
            plain = self.router.plain()
            if plain is not None:
                return await self._write_plain(table, expiry, *plain)
        flags = await self._write_general(list(table), list(table.values()), expiry, level)
        return flags.count(2)

    async def _write_plain(
        self, table: dict[bytes, bytes], expiry: int, ring: Ring, copies: int
    ) -> int:
        """Level ``one`` with every node healthy: the hot path of ``set_many``.

        Keys are grouped with the ring's batch calls, and each group's Redis keys and
        values are built once with C-level ``map``, then shared by the primary's script
        call and the replica writes: the per-key Python work is what bounds a client's
        write throughput. A replica write whose node is already called for primary
        copies rides in that call (``sync_inline``); the synchronizer takes the rest."""
        prefix, value_of = self._prefix.__add__, table.__getitem__
        raws = list(table)
        calls, later = plan_calls(ring, raws, copies, prefix, value_of, self.config.sync_inline)
        replaced = 0
        failed: list[bytes] = []
        lost: _StrSet = set()
        gone: dict[str, str] = {}
        retry_later: list[Segment] = []
        refused: list[ResponseError] = []
        restamped: list[tuple[str, bytes, bytes, bytes]] = []  # (node, raw, rkey, stored)
        limit = self.config.hint_limit
        sync = self.sync

        async def send(node: str, call: Call) -> None:
            nonlocal replaced
            own = len(call.members)
            try:
                # distinct: the keys come from a mapping; the node's own keys are first copies
                argv = apply_argv(call.stored, expiry, hint_limit=limit, distinct=True, first=own)
                reply = await self._pools[node].run_script(APPLY, call.rkeys, argv)
            except NodeUnavailable as exc:
                self._on_failure(node)
                gone[node] = exc.reason
                failed.extend(call.members)
                lost.add(node)
                retry_later.extend(call.riders)
                return
            except ResponseError as exc:  # up, and took nothing: this call's error
                self._errors[node] += 1
                refused.append(exc)
                lost.add(node)
                sync.record_refused(len(call.rkeys) - own)
                return
            n = len(call.rkeys)
            replaced += reply.count(b"2", 0, own)
            if len(reply) > n:  # own keys taken under new versions (only they can be)
                replaced += reply.count(b"4", 0, own)
                for i, version in new_versions(reply, n).items():
                    self._clock.observe_version(version)
                    new = values.with_version(call.stored[i], version)
                    restamped.append((node, call.members[i], call.rkeys[i], new))
            if call.riders:
                sync.record_inline(n - own, reply.count(b"0", own, n))

        await each_node(send, calls)
        self._announce(raws)
        for node, raw, rkey, new in restamped:
            for target in ring.preference_list(raw, copies)[1:]:
                await sync.submit_values(target, [rkey], [new], expiry, holder=node)
        if failed:
            # the general path retries these around the failed node, with hints
            retry = await self._write_general(
                failed, list(map(value_of, failed)), expiry, "one", failed=gone
            )
            replaced += retry.count(2)
        if later or retry_later:
            # riders of a failed call join the rest: the synchronizer tries their node
            # again and leaves hints on the primary if it fails
            for segment in (*later, *retry_later):
                if segment.holder in lost:
                    continue  # the general path planned and queued these keys
                await sync.submit_values(
                    segment.target, segment.rkeys, segment.stored, expiry, holder=segment.holder
                )
        if refused:
            raise refused[0]
        return replaced

    async def _write_general(
        self,
        raws: list[bytes],
        stored: list[bytes],
        expiry: int,
        level: str,
        *,
        failed: Mapping[str, str] | None = None,
    ) -> list[int]:
        """Any level, any routing state: fall back along preference lists, record hints.

        ``failed`` maps nodes that already failed during this operation to the reason:
        they are not called again (each unresponsive node costs one timeout at most)."""
        n = len(raws)
        copies = self.router.copies
        required = 1 if level == "one" else (copies // 2 + 1 if level == "quorum" else copies)
        # quorum and all count home copies only: a stand-in holds a hint, not a copy of record
        homes = self.router.ring.preference_lists(raws, copies) if level != "one" else None
        rkeys = [self._prefix + r for r in raws]
        flags = [0] * n
        acked: list[tuple[str, ...]] = [()] * n
        failed = dict(failed or {})
        refused: dict[str, str] = {}  # up, but answered with an error: took nothing
        refused_keys: set[int] = set()
        stamps: dict[int, dict[str, bytes]] = {}  # new versions first copies gave keys
        avoid: _StrSet = set(failed)
        hinted: dict[int, _StrSet] = {}
        plans = self.router.write_plans(raws)
        if avoid:
            self._plan_around(raws, plans, range(n), avoid)
        todo: Sequence[int] = range(n)

        def need(i: int) -> int:
            return copies_needed(level, copies, plans[i])

        while True:
            calls, any_missed = targets_of(todo, plans, avoid, acked, need)
            if not calls:
                break
            newly_failed = False

            async def call(node: str, idx: list[int], any_missed: bool = any_missed) -> None:
                nonlocal newly_failed
                hints = missed_hints(self.config.namespace, idx, plans, raws) if any_missed else []
                keys, part = [rkeys[i] for i in idx], [stored[i] for i in idx]
                try:
                    reply = await self._apply(node, keys, part, expiry, hints)
                except NodeUnavailable as exc:
                    self._on_failure(node)
                    failed[node] = exc.reason
                    avoid.add(node)
                    newly_failed = True
                    return
                except ResponseError as exc:  # reachable but refusing (OOM, ...)
                    self._errors[node] += 1
                    refused[node] = str(exc)
                    refused_keys.update(idx)
                    return
                record_reply(node, idx, reply, acked, stamps, flags)
                if any_missed:
                    note_hints(idx, plans, hinted)

            await each_node(call, calls)
            if not newly_failed:
                break
            # re-plan the keys that still lack acknowledgements, around the failed nodes
            todo = [i for i in range(n) if len(acked[i]) < need(i) and i not in refused_keys]
            if todo:
                self._plan_around(raws, plans, todo, avoid)
        if stamps:
            await self._settle(rkeys, stored, expiry, acked, stamps)
        await self._check_acks(
            raws, plans, acked, homes, avoid, hinted, refused, failed, required, level
        )
        self._counters.hints_recorded += sum(len(h) for h in hinted.values())
        if avoid:
            await self._hint_failed(raws, acked, hinted, avoid)
        await self._after_write(raws, rkeys, stored, expiry, plans, acked, level)
        return flags

    async def _apply(
        self,
        node: str,
        rkeys: list[bytes],
        stored: list[bytes],
        expiry: int,
        hints: list[HintGroup],
    ) -> bytes:
        """One general-path call: ``node`` takes the keys as the writer's own, with the hints."""
        # distinct: raws come from a mapping; every entry is the writer's own
        argv = apply_argv(
            stored,
            expiry,
            hint_limit=self.config.hint_limit,
            distinct=True,
            hints=hints,
            first=len(stored),
        )
        reply: bytes = await self._pools[node].run_script(APPLY, rkeys, argv)
        return reply

    async def _check_acks(
        self,
        raws: list[bytes],
        plans: list[Plan],
        acked: list[tuple[str, ...]],
        homes: list[tuple[str, ...]] | None,
        avoid: _StrSet,
        hinted: dict[int, _StrSet],
        refused: dict[str, str],
        failed: dict[str, str],
        required: int,
        level: str,
    ) -> None:
        """Raise for a refused call or keys short of ``level``'s acknowledgements.

        Reports the missed nodes first; before raising, near caches drop the keys and the
        copies that took the write get hints for the homes that failed."""
        n = len(raws)
        if homes is None:
            counted = [len(a) for a in acked]
        else:
            counted = [sum(1 for t in a if t in h) for a, h in zip(acked, homes, strict=True)]
        short = [i for i in range(n) if counted[i] < required]
        if self.note_hinted is not None:
            missed_nodes = {m for i in range(n) for m in plans[i][1]} | avoid
            if missed_nodes:
                self.note_hinted(missed_nodes)
        if refused:
            # an error of this call, not a missed write: no hint and no lag for the node;
            # other copies may hold the new value, so near caches drop the keys first
            self._announce(raws)
            if avoid:
                await self._hint_failed(raws, acked, hinted, avoid)
            raise ResponseError("refused by " + ", ".join(f"{k} ({v})" for k, v in refused.items()))
        if short:
            # The copies that took the write hold the new value now (and a call that
            # timed out may have landed too): near caches must drop every key first.
            self._announce(raws)
            # Copies that did take the write still get hints for the homes that failed,
            # so a partial write converges once they are back.
            if avoid:
                await self._hint_failed(raws, acked, hinted, avoid)
            got = min(counted[i] for i in short)
            raise ConsistencyError(
                f"{len(short)} of {n} key(s) got {got} acknowledgement(s) of the "
                f"{required} that consistency {level!r} needs; failed: "
                + (", ".join(f"{k} ({v})" for k, v in failed.items()) or "none reachable"),
                failed=dict(failed),
                acknowledged=got,
                required=required,
            )

    def _plan_around(
        self,
        raws: list[bytes],
        plans: list[Plan],
        todo: Sequence[int],
        avoid: _StrSet,
    ) -> None:
        """Re-plan the keys ``todo`` around the nodes that failed (homes among them missed)."""
        fresh = self.router.write_plans([raws[i] for i in todo])
        for i, plan in zip(todo, fresh, strict=True):
            targets, missed = plan
            home = self.router.preference_list(raws[i])
            gone = tuple(h for h in home if h in avoid and h not in missed)
            plans[i] = (tuple(t for t in targets if t not in avoid), missed + gone)

    async def _settle(
        self,
        rkeys: list[bytes],
        stored: list[bytes],
        expiry: int,
        acked: list[tuple[str, ...]],
        stamps: dict[int, dict[str, bytes]],
    ) -> None:
        """Keys that first copies took under new versions (the writer's clock was behind):
        ``stored`` gets each key's highest one, and so do the copies that took another."""
        fix: dict[str, list[int]] = defaultdict(list)
        for i, given in stamps.items():
            final = max(given.values())
            self._clock.observe_version(final)
            stored[i] = values.with_version(stored[i], final)
            for node in acked[i]:
                if given.get(node) != final:
                    fix[node].append(i)
        limit = self.config.hint_limit

        async def send(node: str, idx: list[int]) -> None:
            argv = apply_argv([stored[i] for i in idx], expiry, hint_limit=limit, distinct=True)
            try:
                await self._pools[node].run_script(APPLY, [rkeys[i] for i in idx], argv)
            except NodeUnavailable:
                self._on_failure(node)  # its copy holds this write's data, an older version
            except ResponseError:
                self._errors[node] += 1

        await each_node(send, fix)

    async def _hint_failed(
        self,
        raws: list[bytes],
        acked: list[tuple[str, ...]],
        hinted: dict[int, _StrSet],
        avoid: _StrSet,
    ) -> None:
        # Home nodes that failed during the call and that no later call carried a hint for.
        groups: dict[str, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
        for i, raw in enumerate(raws):
            if not acked[i]:
                continue
            for home in self.router.preference_list(raw):
                if home in avoid:
                    # on two holders (again, if a retry call carried it), so it outlives
                    # either of them
                    for holder in acked[i][:2]:
                        groups[holder][home].append(raw)
        for holder, missed in groups.items():
            hints: list[HintGroup] = [
                (*hint_keys(self.config.namespace, m), members) for m, members in missed.items()
            ]
            keys, argv = apply_args((), hint_limit=self.config.hint_limit, hints=hints)
            try:
                await self._pools[holder].run_script(APPLY, keys, argv)
            except (NodeUnavailable, ResponseError):
                self._counters.hints_lost += sum(len(m) for m in missed.values())
            else:
                self._counters.hints_recorded += sum(len(m) for m in missed.values())

    async def _after_write(
        self,
        raws: list[bytes],
        rkeys: list[bytes],
        stored: list[bytes],
        expiry: int,
        plans: list[Plan],
        acked: list[tuple[str, ...]],
        level: str,
    ) -> None:
        self._announce(raws)
        if level != "one" or self.router.copies < 2:
            return
        out: dict[tuple[str, str], list[Entry]] = defaultdict(list)
        for i, (targets, _) in enumerate(plans):
            holder = acked[i][0]
            entry = (rkeys[i], stored[i], expiry)
            for t in targets:
                if t not in acked[i]:
                    out[(t, holder)].append(entry)
        for (node, holder), entries in out.items():
            await self.sync.submit(node, entries, holder=holder)
