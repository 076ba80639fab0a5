"""Where each key goes right now: the current ring plus this process's view of failing nodes.

The :class:`Router` holds an immutable :class:`~cachering.ring.Ring` of the *routable*
nodes and a map of locally *suspect* nodes (nodes that just failed a call, or that a
health service marked). Swapping the ring is a single attribute assignment, so every
operation sees either the old routing or the new one, never a mix.

- The *home* copies of a key are the first ``copies`` distinct nodes clockwise on the
  ring (:meth:`Router.preference_list`); suspicion does not change them.
- Writes go to the first ``copies`` nodes of the key's full preference list after moving
  suspect nodes to the end: when a home node is suspect, the next node clockwise stands
  in for it, and the home node is reported as *missed* so a hint is recorded for it.
- Reads try the key's readable home copies, suspects last. Never a stand-in: it holds
  only the writes made while it stood in, so it may hold an old copy.

A topology (through :meth:`Router.swap`) can also mark ring nodes *unreadable* (never
read from, e.g. a node replaying hints after a restart) or *unwritable* (down: writes go
to the next node with a hint). Those nodes stay on the ring so their keys do not move.

Only nodes on the ring can be suspect: a node that leaves the ring leaves the suspect set.
Suspicion expires on its own (``node_backoff`` seconds after a failure) unless it was
set without a deadline with :meth:`Router.mark_suspect`, so a node that came back is
used again without anyone having to notice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..config import ClusterConfig
from ..ring import Ring

__all__ = ["Router", "WritePlan"]


Key = Any
WritePlan = tuple[tuple[str, ...], tuple[str, ...]]
"""(targets in write order - the first is the acting primary, home nodes missed)."""


@attrs.frozen
class _Route:
    ring: Ring
    copies: int
    no_read: frozenset[str] = frozenset()
    no_write: frozenset[str] = frozenset()


class Router:
    """Routing state of one :class:`~cachering.cluster.Cluster`: ring, suspicion, back-off.

    ``clock`` returns seconds (monotonic); the cluster passes ``anyio.current_time`` so
    tests can drive back-off with a mock clock.
    """

    def __init__(
        self, config: ClusterConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._suspect_until: dict[str, float] = {}
        self._route = self._make_route({n.id: n.weight for n in config.nodes})
        self.version = 0
        """Bumped on every routing change (ring swap or topology)."""

    def _make_route(
        self,
        weights: Mapping[str, float],
        no_read: Iterable[str] = (),
        no_write: Iterable[str] = (),
    ) -> _Route:
        if not weights:
            raise ValueError("the ring needs at least one node")
        c = self._config
        ring = Ring(dict(weights), vnodes=c.vnodes, hash=c.hash, seed=c.seed)
        copies = min(c.replicas, len(ring.nodes))
        return _Route(ring, copies, frozenset(no_read), frozenset(no_write))

    # ---------------------------------------------------------------- state changes

    @property
    def ring(self) -> Ring:
        """The current ring."""
        return self._route.ring

    @property
    def copies(self) -> int:
        """Copies kept of each key: ``replicas`` capped at the ring's node count."""
        return self._route.copies

    @property
    def unreadable(self) -> frozenset[str]:
        """Nodes on the ring that must not serve reads (per the topology)."""
        return self._route.no_read

    @property
    def unwritable(self) -> frozenset[str]:
        """Nodes on the ring that receive no writes (per the topology)."""
        return self._route.no_write

    def swap(
        self,
        ring_nodes: Iterable[str] | Mapping[str, float],
        weights: Mapping[str, float] | None = None,
        *,
        unreadable: Iterable[str] = (),
        unwritable: Iterable[str] = (),
    ) -> None:
        """Route over ``ring_nodes`` from now on (atomically).

        ``ring_nodes`` is an iterable of node ids (weights default to each configured
        node's weight, else 1, overridden by ``weights``) or a mapping id -> weight.
        ``unreadable`` nodes stay on the ring (their keys do not move) but serve no
        reads; ``unwritable`` nodes get no writes (the next node stands in, with a hint).
        Every id must have a pool in the cluster.
        """
        configured = {n.id: n.weight for n in self._config.nodes}
        if isinstance(ring_nodes, Mapping):
            table = dict(ring_nodes)
        else:
            table = {name: configured.get(name, 1) for name in ring_nodes}
        if weights:
            for name, weight in weights.items():
                if name in table:
                    table[name] = weight
        route = self._make_route(table, unreadable, unwritable)
        self._route = route
        # a node that left the ring while suspect must not keep the fast path off
        for node in [n for n in self._suspect_until if n not in route.ring]:
            del self._suspect_until[node]
        self.version += 1

    def mark_suspect(self, node_id: str, duration: float | None = None) -> None:
        """Route around ``node_id`` for ``duration`` seconds (None: until cleared).

        Nodes that are not on the ring are ignored (nothing is routed to them)."""
        if node_id not in self._route.ring:
            return
        until = math.inf if duration is None else self._clock() + duration
        if self._suspect_until.get(node_id, -math.inf) < until:
            self._suspect_until[node_id] = until

    def clear_suspect(self, node_id: str) -> None:
        """Forget local suspicion of ``node_id``."""
        self._suspect_until.pop(node_id, None)

    def report_failure(self, node_id: str) -> None:
        """A call to ``node_id`` failed: skip it for ``node_backoff`` seconds."""
        if self._config.node_backoff > 0:
            self.mark_suspect(node_id, self._config.node_backoff)

    def suspects(self) -> frozenset[str]:
        """Nodes currently routed around locally."""
        table = self._suspect_until
        if not table:
            return frozenset()
        now = self._clock()
        for node, until in list(table.items()):
            if until <= now:
                del table[node]
        return frozenset(table)

    def is_suspect(self, node_id: str) -> bool:
        """Whether ``node_id`` is routed around right now."""
        return node_id in self.suspects()

    # ---------------------------------------------------------------- lookups

    def preference_list(self, key: Key) -> tuple[str, ...]:
        """The key's home copies on the current ring (primary first)."""
        route = self._route
        return route.ring.preference_list(key, route.copies)

    def node_for(self, key: Key) -> str:
        """The key's primary on the current ring."""
        return self._route.ring.lookup(key)

    @staticmethod
    def _order(
        prefs: tuple[str, ...], suspects: frozenset[str], banned: frozenset[str]
    ) -> tuple[str, ...]:
        good = [n for n in prefs if n not in suspects and n not in banned]
        if len(good) == len(prefs):
            return prefs
        return (*good, *(n for n in prefs if n in suspects and n not in banned))

    def _width(self, route: _Route, avoid: frozenset[str]) -> int:
        return min(len(route.ring.nodes), route.copies + len(avoid))

    @staticmethod
    def _readers(
        prefs: tuple[str, ...],
        copies: int,
        suspects: frozenset[str],
        no_read: frozenset[str],
    ) -> tuple[str, ...]:
        # Only home copies are read. A stand-in holds just the writes made while it stood
        # in, possibly in several separate spells, so it may hold an old copy.
        home = prefs[:copies]
        good = [n for n in home if n not in suspects and n not in no_read]
        return (*good, *(n for n in home if n in suspects and n not in no_read))

    def read_order(self, key: Key) -> tuple[str, ...]:
        """Nodes to read ``key`` from, in order: its readable home copies, suspects last.

        Unreadable nodes and stand-ins are left out entirely (either may hold an old copy).
        """
        route = self._route
        suspects = self.suspects()
        if not suspects and not route.no_read:
            return route.ring.preference_list(key, route.copies)
        return self._readers(
            route.ring.preference_list(key, route.copies), route.copies, suspects, route.no_read
        )

    def read_orders(self, keys: Sequence[Key]) -> list[tuple[str, ...]] | None:
        """Read order of every key, or None when plain ring ownership applies."""
        route = self._route
        suspects = self.suspects()
        if not suspects and not route.no_read:
            return None
        readers = self._readers
        copies, no_read = route.copies, route.no_read
        return [
            readers(p, copies, suspects, no_read) for p in route.ring.preference_lists(keys, copies)
        ]

    def plain(self) -> tuple[Ring, int] | None:
        """(ring, copies) when no node is suspect or unwritable (plain ring placement)."""
        route = self._route
        if route.no_write or self.suspects():
            return None
        return route.ring, route.copies

    def write_plan(self, key: Key) -> WritePlan:
        """Where to write ``key``: (targets, missed home nodes)."""
        route = self._route
        if not route.no_write and not self._suspect_until:
            return route.ring.preference_list(key, route.copies), ()
        return self.write_plans([key])[0]

    def write_plans(self, keys: Sequence[Key]) -> list[WritePlan]:
        """:meth:`write_plan` for many keys, with one batched ring call."""
        route = self._route
        copies = route.copies
        suspects = self.suspects()
        if not suspects and not route.no_write:
            return [(p, ()) for p in route.ring.preference_lists(keys, copies)]
        width = self._width(route, suspects | route.no_write)
        plans: list[WritePlan] = []
        for prefs in route.ring.preference_lists(keys, width):
            targets = self._order(prefs, suspects, route.no_write)[:copies]
            home = prefs[:copies]
            plans.append((targets, tuple(n for n in home if n not in targets)))
        return plans
