"""The read engine of a :class:`~cachering.cluster.Cluster`: get, get_many, exists, ttl.

Level ``one`` reads the key's readable home copies
(:meth:`~cachering.data.routing.Router.read_order`), primary first, and falls back to the
next copy on a connection error or timeout within the same call, so with one readable
home copy alive a read does not fail. A near cache, when the cluster has one, answers
first.

Levels ``quorum`` and ``all`` read ``copies // 2 + 1`` (or all) of the key's *home*
copies, whatever the routing state says of them (a lagging or recovering home still
answers with a version, and the newest version wins; a stand-in is never asked: it holds
a hint, not a copy of record), healthy homes first and the next home when one fails.
The newest version among the answers is returned (a tombstone reads as None), and every
answering home that holds an older version or none gets the newest copy, with its
absolute expiry, through the apply-if-newer write script before the call returns (read
repair), so a later read at the same level cannot return the older value. The near cache
is neither asked nor filled at these levels. Because quorum writes count home copies
only, a quorum read after an acknowledged quorum write returns it (or something newer)
from any manager.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import Consistency
from ..errors import ConsistencyError, NodeUnavailable, ResponseError
from ..metrics import CallCounters
from ..resp import Pool
from ..ring import Ring
from . import values
from .fanout import each_node
from .keys import data_prefix
from .nearcache import NearCache
from .routing import Router
from .scripts import APPLY, READ_COPIES, apply_args
from .writes import Key, key_bytes

_LEVELS = ("one", "quorum", "all")


def _version(raw: object) -> bytes:
    """The comparable version of a reply; b"" (older than any) for none or a foreign value."""
    return values.version_of(raw) or b""


__all__ = ["Reads"]


class Reads:
    """Reads of one cluster; the cluster sets ``near`` as it starts its near cache."""

    def __init__(
        self,
        namespace: str,
        router: Router,
        pools: dict[str, Pool],
        *,
        on_failure: Callable[[str], None],
        counters: CallCounters,
        default_level: str = "one",
        hint_limit: int = 100_000,
    ) -> None:
        self.router = router
        self._default = default_level
        self._hint_limit = hint_limit
        self._pools = pools
        self._prefix = data_prefix(namespace)
        self._on_failure = on_failure
        self._counters = counters
        self._ops = counters.ops
        self.near: NearCache | None = None
        """This manager's near cache, asked before any node (None: off)."""

    def _who(self, raw: bytes) -> str:
        return ",".join(self.router.preference_list(raw))

    def level(self, consistency: object) -> str:
        """The read level to use; ValueError for an unknown one."""
        if consistency is None:
            return self._default
        if consistency not in _LEVELS:
            raise ValueError(f"consistency must be one of {_LEVELS}, got {consistency!r}")
        return str(consistency)

    async def get(self, key: Key, consistency: Consistency | None = None) -> bytes | None:
        """What :meth:`Cluster.get <cachering.cluster.Cluster.get>` does."""
        raw = key_bytes(key)
        level = self.level(consistency)
        self._ops["get"] += 1
        if level != "one":
            (value,) = await self._read_level([raw], level)
            if value is not None:
                self._counters.hits += 1
            else:
                self._counters.misses += 1
            return value
        near = self.near
        if near is not None:
            cached = near.get(raw)
            if cached is not None:
                self._counters.hits += 1
                return cached
        rkey = self._prefix + raw
        generation = near.generation if near is not None else 0
        for node in self.router.read_order(raw):
            try:
                if near is None:
                    reply = await self._pools[node].execute("GET", rkey)
                else:
                    reply, pttl = await self._pools[node].pipeline([("GET", rkey), ("PTTL", rkey)])
            except NodeUnavailable:
                self._on_failure(node)
                continue
            value = values.user_bytes(reply)
            if value is None:
                self._counters.misses += 1
                return None
            self._counters.hits += 1
            if near is not None:
                near.put(raw, value, pttl / 1000 if pttl > 0 else None, generation)
            return value
        raise NodeUnavailable(self._who(raw), "no copy of the key could be read")

    async def _header(self, raw: bytes) -> tuple[bytes | None, int]:
        rkey = self._prefix + raw
        for node in self.router.read_order(raw):
            try:
                head, pttl = await self._pools[node].pipeline(
                    [("GETRANGE", rkey, 0, values.HEADER_SIZE - 1), ("PTTL", rkey)]
                )
            except NodeUnavailable:
                self._on_failure(node)
                continue
            return head, pttl
        raise NodeUnavailable(self._who(raw), "no copy of the key could be read")

    async def exists(self, key: Key) -> bool:
        """What :meth:`Cluster.exists <cachering.cluster.Cluster.exists>` does."""
        self._ops["exists"] += 1
        head, _ = await self._header(key_bytes(key))
        return values.user_bytes(head) is not None

    async def ttl(self, key: Key) -> float | None:
        """What :meth:`Cluster.ttl <cachering.cluster.Cluster.ttl>` does."""
        self._ops["ttl"] += 1
        head, pttl = await self._header(key_bytes(key))
        if values.user_bytes(head) is None or pttl == -2:
            return None
        return math.inf if pttl < 0 else pttl / 1000

    async def get_many(
        self, keys: Iterable[Key], consistency: Consistency | None = None
    ) -> list[bytes | None]:
        """What :meth:`Cluster.get_many <cachering.cluster.Cluster.get_many>` does."""
        raws = [k.encode() if type(k) is str else key_bytes(k) for k in keys]
        level = self.level(consistency)  # checked even with no keys
        if not raws:
            return []  # as redis-py and Django answer
        self._ops["get_many"] += 1
        found: dict[bytes, bytes | None] = {}
        todo = raws
        near = self.near
        if level != "one":
            distinct = list(dict.fromkeys(raws))
            found = dict(zip(distinct, await self._read_level(distinct, level), strict=True))
            todo = []
        elif near is not None:
            todo = []
            for raw in raws:
                cached = near.get(raw)
                if cached is None:
                    todo.append(raw)
                else:
                    found[raw] = cached
        tried: dict[bytes, set[str]] = {}
        while todo:
            groups = self._groups(todo, tried)
            todo = await self._fetch(groups, tried, found)
        result = [found[r] for r in raws]
        misses = result.count(None)
        self._counters.hits += len(result) - misses
        self._counters.misses += misses
        return result

    def _groups(self, todo: list[bytes], tried: dict[bytes, set[str]]) -> dict[str, list[bytes]]:
        """The node each key is read from next: its first readable home not tried yet."""
        orders = self.router.read_orders(todo)
        if orders is None and not tried:
            return self.router.ring.group_by_node(todo)
        if orders is None:
            orders = [self.router.read_order(r) for r in todo]
        groups: dict[str, list[bytes]] = defaultdict(list)
        for raw, order in zip(todo, orders, strict=True):
            skip = tried.get(raw, ())
            node = next((n for n in order if n not in skip), None)
            if node is None:
                raise NodeUnavailable(self._who(raw), "no copy of the key could be read")
            groups[node].append(raw)
        return groups

    async def _fetch(
        self,
        groups: dict[str, list[bytes]],
        tried: dict[bytes, set[str]],
        found: dict[bytes, bytes | None],
    ) -> list[bytes]:
        """One MGET per node, in parallel; returns the keys whose node failed."""
        near = self.near
        generation = near.generation if near is not None else 0
        failed: list[bytes] = []

        async def fetch(node: str, batch: list[bytes]) -> None:
            prefix = self._prefix
            rkeys = [prefix + r for r in batch]
            try:
                if near is None:
                    replies = await self._pools[node].execute("MGET", *rkeys)
                else:
                    cmds: list[Sequence[Any]] = [("MGET", *rkeys)]
                    cmds.extend(("PTTL", k) for k in rkeys)
                    replies, *pttls = await self._pools[node].pipeline(cmds)
            except (NodeUnavailable, ResponseError) as exc:
                if isinstance(exc, NodeUnavailable):
                    self._on_failure(node)
                for raw in batch:
                    tried.setdefault(raw, set()).add(node)
                failed.extend(batch)
                return
            user = values.user_bytes
            if near is None:
                found.update(zip(batch, values.user_values(replies), strict=True))
                return
            for raw, reply, pttl in zip(batch, replies, pttls, strict=True):
                value = found[raw] = user(reply)
                if value is not None:
                    near.put(raw, value, pttl / 1000 if pttl > 0 else None, generation)

        await each_node(fetch, groups)
        return failed

    # ---------------------------------------------------------------- quorum and all

    def _home_orders(self, raws: list[bytes]) -> list[tuple[str, ...]]:
        """Each key's home copies, the ones not failing nor down first."""
        router = self.router
        homes = router.ring.preference_lists(raws, router.copies)
        bad = router.suspects() | router.unwritable
        if not bad:
            return homes
        return [
            (*(n for n in h if n not in bad), *(n for n in h if n in bad)) if bad & set(h) else h
            for h in homes
        ]

    async def _read_level(self, raws: list[bytes], level: str) -> list[bytes | None]:
        """Read ``raws`` (distinct) at ``quorum`` or ``all``; repairs stale home copies."""
        copies = self.router.copies
        required = copies // 2 + 1 if level == "quorum" else copies
        plain = self.router.plain()
        if plain is not None and len(raws) > 1:
            found = await self._read_plain(raws, plain[0], copies, required)
            if found is not None:
                return found
        orders = self._home_orders(raws)
        answers: list[list[tuple[str, bytes | None]]] = [[] for _ in raws]
        asked = [required] * len(raws)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, order in enumerate(orders):
            for node in order[:required]:
                groups[node].append(i)
        failures: dict[str, str] = {}
        while groups:
            failed = await self._read_homes(raws, groups, answers, failures)
            groups = defaultdict(list)
            for i in failed:
                if asked[i] < len(orders[i]):
                    groups[orders[i][asked[i]]].append(i)
                    asked[i] += 1
        if failures:
            self._check_answers(answers, required, level, failures)
        newest: list[bytes | None] = []
        differ: list[int] = []
        for i, got in enumerate(answers):
            first = got[0][1]
            if all(reply == first for _, reply in got):
                newest.append(first)  # the common case: every copy the same
            else:
                newest.append(max((reply for _, reply in got), key=_version))
                differ.append(i)
        if differ:
            await self._repair(raws, answers, newest, differ)
        return [values.user_bytes(reply) for reply in newest]

    async def _read_plain(
        self, raws: list[bytes], ring: Ring, copies: int, required: int
    ) -> list[bytes | None] | None:
        """Every node healthy: keys grouped by home copies, one MGET per node, and each
        group's replies compared as whole lists (the per-key Python work is what bounds a
        large read). None if a node failed: the caller takes the general path."""
        prefix = self._prefix.__add__
        groups = list(ring.group_by_preference(raws, copies).items())
        calls: dict[str, list[tuple[int, int]]] = defaultdict(list)  # node -> (group, start)
        rkeys: dict[str, list[bytes]] = defaultdict(list)
        for g, (pref, members) in enumerate(groups):
            mapped = list(map(prefix, members))
            for node in pref[:required]:
                calls[node].append((g, len(rkeys[node])))
                rkeys[node] += mapped
        replies: dict[tuple[int, str], list[bytes | None]] = {}
        broken = False

        async def fetch(node: str, spans: list[tuple[int, int]]) -> None:
            nonlocal broken
            try:
                got = await self._pools[node].execute("MGET", *rkeys[node])
            except (NodeUnavailable, ResponseError) as exc:
                if isinstance(exc, NodeUnavailable):
                    self._on_failure(node)
                broken = True
                return
            for g, start in spans:
                replies[(g, node)] = got[start : start + len(groups[g][1])]

        await each_node(fetch, calls)
        if broken:
            return None
        found: dict[bytes, bytes | None] = {}
        same_keys: list[bytes] = []  # keys whose copies all agree, and their replies
        same: list[bytes | None] = []
        answers: list[list[tuple[str, bytes | None]]] = []
        newest: list[bytes | None] = []
        stale: list[bytes] = []
        for g, (pref, members) in enumerate(groups):
            lists = [(node, replies[(g, node)]) for node in pref[:required]]
            first = lists[0][1]
            if all(other == first for _, other in lists[1:]):
                same_keys += members
                same += first
                continue
            for j, raw in enumerate(members):
                got = [(node, rows[j]) for node, rows in lists]
                best = max((reply for _, reply in got), key=_version)
                found[raw] = values.user_bytes(best)
                if any(reply != best for _, reply in got):
                    stale.append(raw)
                    answers.append(got)
                    newest.append(best)
        found.update(zip(same_keys, values.user_values(same), strict=True))
        if stale:
            await self._repair(stale, answers, newest, list(range(len(stale))))
        return [found[r] for r in raws]

    @staticmethod
    def _check_answers(
        answers: list[list[tuple[str, bytes | None]]],
        required: int,
        level: str,
        failures: dict[str, str],
    ) -> None:
        """Raise :class:`ConsistencyError` if a key got fewer answers than ``required``."""
        short = [len(a) for a in answers if len(a) < required]
        if short:
            got = min(short)
            raise ConsistencyError(
                f"{len(short)} of {len(answers)} key(s) got {got} answer(s) of the {required} "
                f"home copies that read consistency {level!r} needs; failed: "
                + ", ".join(f"{k} ({v})" for k, v in failures.items()),
                failed=failures,
                acknowledged=got,
                required=required,
            )

    async def _read_homes(
        self,
        raws: list[bytes],
        groups: dict[str, list[int]],
        answers: list[list[tuple[str, bytes | None]]],
        failures: dict[str, str],
    ) -> list[int]:
        """One MGET per node, in parallel, into ``answers``; returns the keys whose node failed."""
        failed: list[int] = []
        prefix = self._prefix

        async def fetch(node: str, idx: list[int]) -> None:
            try:
                replies = await self._pools[node].execute("MGET", *[prefix + raws[i] for i in idx])
            except (NodeUnavailable, ResponseError) as exc:
                if isinstance(exc, NodeUnavailable):
                    self._on_failure(node)
                failures[node] = str(exc)
                failed.extend(idx)
                return
            for i, reply in zip(idx, replies, strict=True):
                answers[i].append((node, reply))

        await each_node(fetch, groups)
        return failed

    async def _repair(
        self,
        raws: list[bytes],
        answers: list[list[tuple[str, bytes | None]]],
        newest: list[bytes | None],
        differ: list[int],
    ) -> None:
        """Give every answering home that is behind the newest copy (read repair)."""
        behind: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        no_write = self.router.unwritable
        for i in differ:
            top = _version(newest[i])
            if not top:
                continue
            source = next(node for node, reply in answers[i] if reply is newest[i])
            for node, reply in answers[i]:
                if node not in no_write and _version(reply) < top:
                    behind[source][node].append(i)
        prefix = self._prefix
        for source, targets in behind.items():
            idx = sorted({i for group in targets.values() for i in group})
            try:
                flat = await self._pools[source].run_script(
                    READ_COPIES, [prefix + raws[i] for i in idx], []
                )
            except (NodeUnavailable, ResponseError):
                self._counters.read_repairs_failed += len(idx)
                continue
            copy = {i: (flat[2 * j], flat[2 * j + 1]) for j, i in enumerate(idx)}
            for node, group in targets.items():
                entries = [
                    (prefix + raws[i], raw, max(int(exp), 0))
                    for i in group
                    if isinstance(raw := copy[i][0], bytes) and (exp := copy[i][1]) != -2
                ]
                if not entries:
                    continue
                keys, argv = apply_args(entries, hint_limit=self._hint_limit, distinct=True)
                try:
                    await self._pools[node].run_script(APPLY, keys, argv)
                except (NodeUnavailable, ResponseError):
                    self._counters.read_repairs_failed += len(entries)
                else:
                    self._counters.read_repairs += len(entries)
