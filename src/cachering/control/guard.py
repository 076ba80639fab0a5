"""Which nodes may serve reads on one manager: lag, restarts, and being cut off.

:class:`ReadGuard` keeps three facts of one manager (its control plane owns one):

- *lagging* nodes missed writes that are not replayed yet: a write recorded hints for
  them (this manager's, or another's announced in a signed ``lagging`` message, which
  every manager sends as soon as its write recorded hints, at most every quarter of a
  heartbeat per node), or a node holds hints for them (read every heartbeat tick);
- *restarted* nodes came back holding data the cluster does not vouch for (a new
  ``run_id`` on a heartbeat, or a fence mismatch on a new data connection, see
  :mod:`cachering.repair.fence`): overflow markers are set for them on every other node,
  so that every manager sees them lagging and the leader clears and resyncs them; they
  stay unreadable here until their fence vouches for their data again;
- *partitioned*: fewer than a majority of the nodes answered this manager's heartbeats
  for longer than the election timeout (the leader lease), so its topology cannot be
  confirmed (the majority may have marked a node down it still reaches); the cluster then
  serves no ``one`` reads unless ``stale_reads_in_partition`` is set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ..config import ClusterConfig
from ..errors import CacheringError, NodeUnavailable
from ..messages import MessageKind
from ..repair.fence import check_fence, mark_restarted
from ..repair.hints import hint_holders
from ..resp.pool import Pool
from .health import HealthMonitor
from .topology import Topology

__all__ = ["ReadGuard"]

logger = logging.getLogger("cachering.control.guard")

Send = Callable[[MessageKind, int, dict[str, Any]], Awaitable[None]]


@attrs.define
class _Restart:
    """What a manager knows of a restarted node's repair."""

    noted: float
    """When the restart was noted (anyio's clock)."""
    handled: bool = False
    """Whether the topology has shown the node out of service since then."""
    marked: bool = False
    """Whether the overflow markers for it are set on the other nodes (or not wanted)."""
    marking: bool = False
    """Whether this manager set out to set them."""


class ReadGuard:
    """Lagging, restarted and partition state of one manager (a service: start ``run``)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        voters: tuple[str, ...],
        majority: int,
        round_timeout: float,
        topology: Callable[[], Topology],
        pool: Callable[[str], Pool],
        pools: Callable[[], Mapping[str, Pool]],
        health: HealthMonitor,
        send: Send,
        epoch: Callable[[], int],
        notify: Callable[[], None],
    ) -> None:
        self.config = config
        self._voters = voters
        self._majority = majority
        self._timeout = round_timeout
        self._topology = topology
        self._pool = pool
        self._pools = pools
        self._health = health
        self._send = send
        self._epoch = epoch
        self._notify = notify
        self._noted: dict[str, float] = {}  # nodes with hints pending -> when first noted
        self._announced: dict[str, float] = {}  # node -> when its lag was last announced
        self._to_announce: set[str] = set()
        self._event = anyio.Event()
        # nodes that restarted -> what is known of their repair (see _Restart)
        self._restarted: dict[str, _Restart] = {}
        self._confirmed_at = 0.0  # last time a majority of the nodes answered heartbeats
        self._partitioned = False
        self._tg: TaskGroup | None = None

    @property
    def lagging(self) -> frozenset[str]:
        """Nodes that missed writes not replayed yet, or restarted with data not repaired
        yet: they must not serve reads."""
        return frozenset(self._noted) | frozenset(self._restarted)

    @property
    def partitioned(self) -> bool:
        """Whether this manager has not reached a majority of the nodes for longer than the
        election timeout (the leader lease): it cannot confirm its topology."""
        return self._partitioned

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send the pending ``lagging`` announcements, many nodes per message, until cancelled."""
        self._confirmed_at = anyio.current_time()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while True:
                await self._event.wait()
                self._event = anyio.Event()
                nodes, self._to_announce = sorted(self._to_announce), set()
                with anyio.move_on_after(self._timeout * 2):
                    await self._send("lagging", self._epoch(), {"nodes": nodes})

    def note(self, nodes: Iterable[str], *, announce: bool = True) -> None:
        """``nodes`` missed writes: no reads from them until the hints were replayed; with
        ``announce`` every other manager is told too."""
        now = anyio.current_time()
        added = False
        again = self.config.heartbeat_interval / 4
        for node in nodes:
            added |= node not in self._noted
            self._noted[node] = now
            if announce and now - self._announced.get(node, -math.inf) >= again:
                self._announced[node] = now
                self._to_announce.add(node)
        if self._to_announce:
            self._event.set()
        if added:
            self._notify()

    def note_restarted(self, node: str, *, mark: bool = True) -> None:
        """``node`` restarted (a new run_id, or data its fence does not vouch for): it
        serves no reads until the leader cleared and resynced it (see
        :mod:`cachering.repair.fence`); with ``mark``, the overflow markers that say so
        are set now (without: another manager already set them, as its fence claim
        shows)."""
        topology = self._topology()
        if node not in topology:
            return
        entry = self._restarted.get(node)
        if entry is None:
            handled = topology.node(node).state != "up"
            entry = self._restarted[node] = _Restart(anyio.current_time(), handled, marked=True)
            self.note([node])
        if mark and not entry.marking:
            entry.marking, entry.marked = True, False
            if self._tg is not None:
                self._tg.start_soon(self._mark, node)

    async def _mark(self, node: str) -> None:
        holders = [n for n in self._topology().ids if n != node]
        pools = {n: self._pool(n) for n in holders}
        marked = await mark_restarted(pools, self.config.namespace, node, holders, self._timeout)
        if marked and (entry := self._restarted.get(node)) is not None:
            entry.marked = True

    async def check(self) -> None:
        """One heartbeat tick: hints still pending, restarted nodes repaired, cut off."""
        await self._check_lagging()
        await self._check_restarted()
        self._check_partition()

    async def _check_lagging(self) -> None:
        """Ask every node which nodes still have hints; forget the replayed ones."""
        started = anyio.current_time()
        topology = self._topology()
        ids = list(topology.ids)
        trusted = [n for n in ids if n not in self._health.garbled()]  # the others lie
        counts = await hint_holders(
            self._pools(), self.config.namespace, ids, trusted, self._timeout, self._health.garble
        )
        before = frozenset(self._noted)
        for node, count in counts.items():
            if count:
                self._noted.setdefault(node, started)
            elif node in self._noted and self._noted[node] < started:
                del self._noted[node]
        for node in list(self._noted):
            if node not in topology:
                del self._noted[node]
        if frozenset(self._noted) != before:
            self._notify()

    async def _check_restarted(self) -> None:
        """Forget restarted nodes once the leader repaired them: their markers are set,
        the topology took them out of service and brought them back up, and their fence
        vouches for their data again; retry failed markers.

        The fence alone does not say that a node was repaired: one that restarted empty
        gets its fence from the first manager that connects to it. So the node must also
        have been seen out of service (``recovering`` or ``down``) since it was noted, or
        have stayed up past :meth:`_patience` (a leader that considers it fine)."""
        now = anyio.current_time()
        for node, entry in list(self._restarted.items()):
            topology = self._topology()
            if node not in topology:
                del self._restarted[node]
                continue
            if not entry.marked:
                await self._mark(node)
                continue
            if topology.node(node).state != "up":
                entry.handled = True  # the leader took it in hand
                continue
            if not entry.handled and now - entry.noted < self._patience():
                continue
            try:
                with anyio.fail_after(self._timeout):
                    fenced = await check_fence(
                        self._pool(node), self.config.namespace, self._timeout
                    )
            except (NodeUnavailable, TimeoutError, OSError, CacheringError):
                continue
            if fenced:
                del self._restarted[node]
                self._notify()

    def _patience(self) -> float:
        """How long a restarted node that the topology keeps up stays unreadable here: long
        enough for a leader to notice the restart and take the node out of service, and
        for this manager to learn of it from a periodic topology read."""
        c = self.config
        return 2 * (c.topology_refresh_interval + c.effective_election_timeout)

    def _check_partition(self) -> None:
        now = anyio.current_time()
        nodes = self._health.nodes
        answered = sum(1 for v in self._voters if (r := nodes.get(v)) is not None and r.healthy)
        if answered >= self._majority:
            self._confirmed_at = now
        cut = now - self._confirmed_at > self.config.effective_election_timeout
        if cut != self._partitioned:
            self._partitioned = cut
            logger.warning(
                "cachering: %s the nodes' majority", "cut off from" if cut else "reconnected to"
            )
            self._notify()
