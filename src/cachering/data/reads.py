"""The read engine of a :class:`~cachering.cluster.Cluster`: get, get_many, exists, ttl.

Reads go to the key's readable home copies (:meth:`~cachering.data.routing.Router.read_order`),
primary first, and fall back to the next copy on a connection error or timeout within
the same call, so with one home copy alive a read does not fail. A near cache, when the
cluster has one, answers first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import NodeUnavailable, ResponseError
from ..resp import Pool
from . import values
from .nearcache import NearCache
from .routing import Router, each_node
from .writes import Key, key_bytes

__all__ = ["Reads"]


def _user_values(replies: list[bytes | None]) -> list[bytes | None]:
    """:func:`values.user_bytes` of every reply, inlined for speed (the get_many hot path)."""
    size, fmt = values.HEADER_SIZE, values.FORMAT
    return [
        r[size:] if r is not None and len(r) >= size and r[0] == fmt and not r[17] & 1 else None
        for r in replies
    ]


class Reads:
    """Reads of one cluster; the cluster sets ``near`` as it starts its near cache."""

    def __init__(
        self,
        namespace: str,
        router: Router,
        pools: dict[str, Pool],
        *,
        on_failure: Callable[[str], None],
        ops: dict[str, int],
        counts: dict[str, int],
    ) -> None:
        self.router = router
        self._pools = pools
        self._prefix = f"{namespace}:k:".encode()
        self._on_failure = on_failure
        self._ops = ops
        self._counts = counts
        self.near: NearCache | None = None
        """This manager's near cache, asked before any node (None: off)."""

    def _who(self, raw: bytes) -> str:
        return ",".join(self.router.preference_list(raw))

    async def get(self, key: Key) -> bytes | None:
        """What :meth:`Cluster.get <cachering.cluster.Cluster.get>` does."""
        raw = key_bytes(key)
        self._ops["get"] += 1
        near = self.near
        if near is not None:
            cached = near.get(raw)
            if cached is not None:
                self._counts["hits"] += 1
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
                self._counts["misses"] += 1
                return None
            self._counts["hits"] += 1
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

    async def get_many(self, keys: Iterable[Key]) -> list[bytes | None]:
        """What :meth:`Cluster.get_many <cachering.cluster.Cluster.get_many>` does."""
        raws = [k.encode() if type(k) is str else key_bytes(k) for k in keys]
        if not raws:
            raise ValueError("get_many needs at least one key")
        self._ops["get_many"] += 1
        found: dict[bytes, bytes | None] = {}
        todo = raws
        near = self.near
        if near is not None:
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
        self._counts["hits"] += len(result) - misses
        self._counts["misses"] += misses
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
                found.update(zip(batch, _user_values(replies), strict=True))
                return
            for raw, reply, pttl in zip(batch, replies, pttls, strict=True):
                value = found[raw] = user(reply)
                if value is not None:
                    near.put(raw, value, pttl / 1000 if pttl > 0 else None, generation)

        await each_node(fetch, groups)
        return failed
