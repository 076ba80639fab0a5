"""The leader's duties: topology commits, node state changes, repair, anti-entropy, membership.

:class:`LeaderDuties` holds what only the leader acts on (repairs in flight, nodes that
came back empty, suspicion reports, the epoch whose re-stamped topology was committed).
It works through explicit collaborators that the control plane hands it: a
:class:`PoolProvider` (connections to the nodes), a :class:`TopologyCommitter` (the
current topology and how a committed one is adopted), a :data:`Sender` (the signed
control channel) and the task group background work runs in. Nothing here runs unless
the election says this manager leads; see :mod:`cachering.control.plane` for the rules
each duty follows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from ..config import ClusterConfig
from ..data.keys import hint_keys
from ..errors import CacheringError, NodeUnavailable, NotLeader
from ..events import EventBus, HintsReplayed
from ..messages import MessageKind
from ..metrics import ControlCounters
from ..node import NodeSpec
from ..repair.fence import set_fence
from ..repair.hints import (
    clear_node,
    hint_holders,
    overflowed,
    replay_hints,
    resync_node,
)
from ..repair.sweep import SweepResult, anti_entropy
from ..resp.pool import Pool
from ..resp.script import Script
from ..ring import Ring
from .election import Election, fan_out
from .health import HealthMonitor
from .scripts import (
    TOPOLOGY_CAS_LUA,
    BadControlReply,
    CasReply,
    ControlKeys,
    NodeControlState,
    parse_cas,
    topology_cas_args,
)
from .topology import NodeState, Topology, TopologyNode

__all__ = ["LeaderDuties", "PoolProvider", "Sender", "TopologyCommitter"]

logger = logging.getLogger("cachering.control.leader")

_CAS = Script(TOPOLOGY_CAS_LUA)

Sender = Callable[[MessageKind, int, dict[str, Any]], Awaitable[None]]
"""Publishes one signed control message (kind, epoch, body) to every node."""


@attrs.frozen
class PoolProvider:
    """Connections to the nodes, as the control plane keeps them.

    ``pool(id)`` opens (or returns) the pool of one node; ``watched()`` gives the pools of
    every voter and topology node; ``opened`` is the live mapping of every pool opened so
    far; ``register(spec)`` makes a new node known (and opens its pool); ``learn(node)``
    makes a node of a topology known by its address.
    """

    pool: Callable[[str], Pool]
    watched: Callable[[], dict[str, Pool]]
    opened: dict[str, Pool]
    register: Callable[[NodeSpec], Pool]
    learn: Callable[[TopologyNode], NodeSpec]


@attrs.frozen
class TopologyCommitter:
    """The manager's topology and how topologies are stored on the nodes.

    ``current()`` is the manager's topology; ``adopt(topology, source)`` adopts a
    committed one (True if it was newer); ``read()`` reads every node's control state with
    stored topologies that fail authentication screened out; ``sign(payload)`` is the
    seal stored next to a payload; ``untrusted`` maps nodes to a stored payload that
    failed authentication, which the next write replaces.
    """

    current: Callable[[], Topology]
    adopt: Callable[[Topology, str], bool]
    read: Callable[[], Awaitable[dict[str, NodeControlState | None]]]
    sign: Callable[[bytes], str]
    untrusted: dict[str, bytes]


class LeaderDuties:
    """The leader's work on behalf of one control plane (idle while it does not lead)."""

    def __init__(
        self,
        config: ClusterConfig,
        manager_id: str,
        *,
        keys: ControlKeys,
        election: Election,
        health: HealthMonitor,
        bus: EventBus,
        counters: ControlCounters,
        round_timeout: float,
        nodes: PoolProvider,
        topology: TopologyCommitter,
        send: Sender,
        tasks: Callable[[], TaskGroup | None],
        lagging: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self.config = config
        self.id = manager_id
        self.keys = keys
        self.election = election
        self.voters = election.voters
        self.health = health
        self.bus = bus
        self.counters = counters
        self.round_timeout = round_timeout
        self.nodes = nodes
        self.topo = topology
        self.send = send
        self.tasks = tasks
        """The task group background repairs run in (None: not running)."""
        self.lagging = lagging
        """Nodes that must not serve reads (missed writes, or restarted with old data)."""
        self._commit_lock = anyio.Lock()
        self._restamping = False
        self.restamped = 0
        """The epoch whose re-stamped topology was committed."""
        self.reports: dict[str, dict[str, float]] = {}
        """Node -> manager -> when that manager last reported it suspect."""
        self.repairs: dict[str, str] = {}
        """Node -> "running#n", "done" or "draining"."""
        self._repair_runs = 0
        self.empty: set[str] = set()
        """Nodes that came back without their data."""
        self._ring: tuple[dict[str, float], Ring] | None = None
        self._ticks = 0
        self.sweep_now = anyio.Event()
        """Set to run an anti-entropy sweep before the interval is up."""
        self.last_sweep: SweepResult | None = None
        """The last anti-entropy sweep this manager ran (None: none yet)."""

    @property
    def topology(self) -> Topology:
        """The manager's current topology."""
        return self.topo.current()

    def in_charge(self) -> bool:
        """Whether this manager leads and its re-stamped topology is committed."""
        return self.election.is_leader and self.restamped == self.election.epoch

    def stepped_down(self) -> None:
        """Leadership was lost: repairs in flight no longer count."""
        self.repairs.clear()

    # ------------------------------------------------------------------ commits

    async def cas_all(self, topology: Topology, ids: list[str]) -> dict[str, CasReply | None]:
        """Write ``topology`` with ``TOPOLOGY_CAS`` to the nodes ``ids`` in parallel."""
        sealed = self.topo.sign(topology.to_bytes())
        for tnode in topology.nodes:
            self.nodes.learn(tnode)  # a node it holds that this manager never adopted

        async def cas(node: str) -> CasReply:
            replace = self.topo.untrusted.get(node, b"")
            args = topology_cas_args(topology, self.id, seal=sealed, replace=replace)
            raw = await self.nodes.pool(node).run_script(
                _CAS, [self.keys.topology, self.keys.election], args, timeout=self.round_timeout
            )
            try:
                reply = parse_cas(raw)
            except BadControlReply as exc:
                self.election.note_bad_reply(node, exc)
                raise
            if reply.holds and replace and self.topo.untrusted.get(node) == replace:
                del self.topo.untrusted[node]
            return reply

        return await fan_out(ids, cas, self.round_timeout)

    async def commit(self, change: Callable[[Topology], Topology]) -> Topology | None:
        """Write ``change(current topology)`` everywhere; adopt and announce it once a
        majority holds it. The change is computed under the commit lock, so two changes
        never build on the same version. Returns the committed topology (None: failed)."""
        async with self._commit_lock:
            if not self.election.is_leader:
                return None
            try:
                topology = change(self.topology)
            except ValueError as exc:  # e.g. no version left after an adopted top version
                self.counters.topology_commit_failures += 1
                logger.error("cachering: cannot build the next topology: %s", exc)
                return None
            if topology.epoch != self.election.epoch:
                return None
            ids = list(dict.fromkeys([*self.voters, *topology.ids, *self.topology.ids]))
            replies = await self.cas_all(topology, ids)
            holds = sum(1 for n in self.voters if (r := replies.get(n)) is not None and r.holds)
            newer = 0
            for r in replies.values():
                if r is None:
                    continue
                if r.status in ("STALE_EPOCH", "CONFLICT", "NOTVOTED"):
                    self.counters.topology_writes_refused += 1
                for e in (r.node_epoch, r.stored_epoch):
                    if e is not None and e > topology.epoch:
                        newer = max(newer, e)
            if newer:
                self.election.observe_epoch(newer)  # steps down
                self.counters.topology_commit_failures += 1
                return None
            if holds < self.election.majority or not self.election.is_leader:
                self.counters.topology_commit_failures += 1
                return None
            self.counters.topology_commits += 1
            self.topo.adopt(topology, "commit")
        with anyio.move_on_after(self.round_timeout * 2):
            await self.send("topology", topology.epoch, {"topology": topology.to_dict()})
        return topology

    async def restamp(self, epoch: int) -> None:
        """Commit the newest topology readable, re-stamped with the new leader's ``epoch``."""
        if self._restamping:
            return
        self._restamping = True
        try:
            await self._restamp_now(epoch)
        finally:
            self._restamping = False

    async def _restamp_now(self, epoch: int) -> None:
        states = await self.topo.read()
        newest = self.topology
        for s in states.values():
            if s is not None and s.topology is not None and s.topology.newer_than(newest):
                newest = s.topology
        if newest.epoch > epoch:
            self.election.observe_epoch(newest.epoch)
            return

        def stamp(current: Topology) -> Topology:
            base = newest if newest.newer_than(current) else current
            return Topology(epoch, base.version + 1, base.nodes, self.id)

        if await self.commit(stamp) is not None:
            self.restamped = epoch

    # ------------------------------------------------------------------ node states

    def _down_votes(self, node: str) -> int:
        horizon = anyio.current_time() - self.config.effective_election_timeout
        reports = self.reports.get(node, {})
        for sender, at in list(reports.items()):
            if at < horizon:
                del reports[sender]
        return len(reports) + (1 if node in self.health.suspects() else 0)

    async def lead(self) -> None:
        """One leader tick: at most one node state change, start repairs, drain hints."""
        self._ticks += 1
        topo = self.topology
        epoch = self.election.epoch
        for tnode in topo.nodes:
            rec = self.health.nodes.get(tnode.id)
            if rec is None:
                continue
            node = tnode.id
            if (
                tnode.state in ("up", "joining", "recovering")
                and rec.suspect
                and self._down_votes(node) >= self.config.down_quorum
            ):
                self.repairs.pop(node, None)
                await self._change(node, "down", epoch)
                return
            if tnode.state == "up" and node in self.empty and rec.healthy:
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "joining" and rec.healthy and rec.beats > 0:
                # Filled like a node that came back empty, then up.
                self.empty.add(node)
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "down" and rec.healthy and not rec.suspect:
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "recovering" and rec.healthy:
                if (
                    self.repairs.get(node) is None
                    and not self._repairing()
                    and (tasks := self.tasks()) is not None
                ):
                    self._repair_runs += 1
                    token = self.repairs[node] = f"running#{self._repair_runs}"
                    tasks.start_soon(self._repair, node, epoch, token)
                elif self.repairs.get(node) == "done":
                    self.repairs.pop(node, None)
                    if not await self._vouch(node):
                        return
                    if await self._change(node, "up", epoch):
                        self.sweep_now.set()
                    return
        await self._drain_up_nodes()

    def _repairing(self) -> bool:
        """Whether a repair is under way: one at a time, since a repair may clear its node,
        and two homes cleared at once lose the writes they took since they came back."""
        return any(v.startswith("running") for v in self.repairs.values())

    async def _vouch(self, node: str) -> bool:
        """A repaired node's data is the cluster's again: its fence names its run_id."""
        try:
            await set_fence(
                self.nodes.pool(node), self.config.namespace, timeout=self.round_timeout
            )
        except (NodeUnavailable, OSError, CacheringError):
            return False
        return True

    async def _change(self, node: str, state: NodeState, epoch: int) -> bool:
        def change(current: Topology) -> Topology:
            return current.with_state(node, state, epoch=epoch, leader=self.id)

        try:
            return await self.commit(change) is not None
        except KeyError:  # removed meanwhile
            return False

    def _serving(self) -> list[str]:
        """Nodes that may hold copies: every writable node of the topology. Local suspicion
        does not count here: a repair that skipped a slow node could miss the newest copy,
        so a node that does not answer makes the repair incomplete (it is retried)."""
        return [n.id for n in self.topology.nodes if n.writable]

    async def _overflowed(self, node: str) -> list[str] | None:
        """Holders with an overflow marker for ``node`` (None: could not ask them all)."""
        holders = [n for n in self._serving() if n != node]
        try:
            with anyio.fail_after(self.round_timeout * 4):
                return await overflowed(
                    self.nodes.opened,
                    self.config.namespace,
                    node,
                    holders,
                    self.round_timeout,
                )
        except (NodeUnavailable, OSError, TimeoutError, CacheringError):
            return None

    async def _clear_if_overflowed(self, node: str) -> bool:
        """A recovering node whose hint log overflowed, or that restarted (it may hold a
        snapshot's old copies, and copies of keys deleted since): delete its keys first."""
        marked = await self._overflowed(node)
        if marked is None:
            return False
        if not marked and node not in self.empty:
            return True
        try:
            cleared = await clear_node(
                self.nodes.pool(node),
                self.config.namespace,
                timeout=max(self.config.timeout, 1.0),
            )
            for holder in marked:
                await self.nodes.pool(holder).execute(
                    "DEL", hint_keys(self.config.namespace, node)[1]
                )
        except (NodeUnavailable, OSError, CacheringError):
            return False
        self.empty.add(node)
        self.counters.keys_cleared += cleared
        self.bus.publish(HintsReplayed(node=node, keys=0, cleared=True))
        return True

    def _homes(self, keys: list[bytes], topology: Topology | None = None) -> list[tuple[str, ...]]:
        """Home nodes of each key on a topology's ring (default: the current one)."""
        topo = topology or self.topology
        weights = {n.id: n.weight for n in topo.nodes}
        if self._ring is None or self._ring[0] != weights:
            c = self.config
            self._ring = (weights, Ring(dict(weights), vnodes=c.vnodes, hash=c.hash, seed=c.seed))
        copies = min(self.config.replicas, len(weights))
        return self._ring[1].preference_lists(keys, copies)

    async def _repair(self, node: str, epoch: int, token: str) -> None:
        outcome = "retry"
        try:
            outcome = await self._repair_once(node)
        finally:
            # Whatever happened (an error, a new epoch, leadership lost), the entry must not
            # stay "running": the node would stay recovering for good. The result counts only
            # in the epoch that started it; otherwise the next tick starts a fresh repair.
            if self.repairs.get(node) == token:
                if outcome == "done" and self.election.is_leader and self.election.epoch == epoch:
                    self.repairs[node] = "done"
                else:
                    del self.repairs[node]

    async def _repair_once(self, node: str) -> str:
        timeout = max(self.config.timeout, self.round_timeout)
        if not await self._clear_if_overflowed(node):
            return "retry"
        if node in self.empty:
            synced = await resync_node(
                node,
                self.nodes.opened,
                self.config.namespace,
                sources=[s for s in self._serving() if s != node],
                homes=self._homes,
                hint_limit=self.config.hint_limit,
                timeout=max(timeout, 1.0),
            )
            self.counters.keys_resynced += synced.replayed
            if not synced.complete:
                return "retry"
            self.empty.discard(node)
        holders = [n for n in self.topology.ids if n != node]
        result = await replay_hints(
            node,
            self.nodes.opened,
            self.config.namespace,
            holders=[h for h in holders if h in self._serving()],
            sources=[s for s in self._serving() if s != node],
            homes=self._homes,
            hint_limit=self.config.hint_limit,
            timeout=timeout,
        )
        self.counters.repairs += 1
        self.counters.hints_replayed += result.replayed
        self.counters.stand_in_copies_dropped += result.dropped
        if result.replayed or result.deleted:
            self.bus.publish(HintsReplayed(node=node, keys=result.replayed, cleared=False))
        return "done" if result.complete else "retry"

    async def anti_entropy_loop(self) -> None:
        """Sweep every ``anti_entropy_interval`` (or when asked) while in charge."""
        interval = self.config.anti_entropy_interval
        if interval <= 0:
            return
        while True:
            with anyio.move_on_after(interval):
                await self.sweep_now.wait()
            self.sweep_now = anyio.Event()
            if self.in_charge():
                await self.sweep()

    async def sweep(self) -> SweepResult:
        """One anti-entropy sweep of the current topology, kept in :attr:`last_sweep`."""
        topo = self.topology
        # a lagging node may hold old copies, or copies of keys deleted since: no source
        lagging = self.lagging()
        up = [n.id for n in topo.nodes if n.state == "up" and n.id not in lagging]
        writable = [n.id for n in topo.nodes if n.writable]
        for n in writable:
            self.nodes.pool(n)
        result = await anti_entropy(
            self.nodes.opened,
            self.config.namespace,
            sources=up,
            targets=writable,
            homes=lambda keys: self._homes(keys, topo),
            hint_limit=self.config.hint_limit,
            timeout=max(self.config.timeout, self.round_timeout, 1.0),
        )
        self.counters.anti_entropy_repaired += result.repaired
        self.counters.stand_in_copies_dropped += result.dropped
        if result.complete:
            self.counters.anti_entropy_sweeps += 1
        else:
            self.counters.anti_entropy_incomplete += 1
        self.last_sweep = result
        return result

    async def _drain_up_nodes(self) -> None:
        """Replay hints left for up nodes (writes that routed around a briefly failing node)."""
        serving = self._serving()
        up = [n.id for n in self.topology.nodes if n.state == "up" and n.id in serving]
        garbled = self.health.garbled()
        counts = await hint_holders(
            self.nodes.opened,
            self.config.namespace,
            up,
            [n for n in serving if n not in garbled],
            self.round_timeout,
            self.health.garble,
        )
        for node, count in counts.items():
            if count and node not in self.repairs and (tasks := self.tasks()) is not None:
                self.repairs[node] = "draining"
                tasks.start_soon(self._drain, node)

    async def _drain(self, node: str) -> None:
        try:
            marked = await self._overflowed(node)
            if marked:
                # It missed writes we no longer know: it must stop serving and be rebuilt.
                self.empty.add(node)
                return
            if marked is None:
                return
            serving = [n for n in self._serving() if n != node]
            result = await replay_hints(
                node,
                self.nodes.opened,
                self.config.namespace,
                holders=serving,
                sources=serving,
                homes=self._homes,
                hint_limit=self.config.hint_limit,
                timeout=max(self.config.timeout, self.round_timeout),
            )
            self.counters.hints_replayed += result.replayed
            self.counters.stand_in_copies_dropped += result.dropped
        finally:
            if self.repairs.get(node) == "draining":
                del self.repairs[node]

    # ------------------------------------------------------------------ membership

    def require_leader(self) -> None:
        """Raise :class:`NotLeader` unless this manager leads with a committed topology."""
        if not self.in_charge():
            raise NotLeader(self.election.leader if self.election.leader != self.id else None)

    async def add_node(self, spec: NodeSpec) -> Topology:
        """Add a node (state ``joining``, then ``up`` once it answers); leader only."""
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"add_node() needs a NodeSpec, got {type(spec).__name__}")
        self.require_leader()
        if spec.id in self.topology:
            raise ValueError(f"node {spec.id!r} is already in the topology")
        self.nodes.register(spec)
        await self.election.seed_pass(extra=[spec.id])
        epoch = self.election.epoch
        return await self._apply(
            lambda t: t.with_node(
                TopologyNode.from_spec(spec, "joining"), epoch=epoch, leader=self.id
            )
        )

    async def remove_node(self, node_id: str) -> Topology:
        """Remove a node from the topology (its keys move to the others); leader only."""
        self.require_leader()
        epoch = self.election.epoch
        return await self._move(lambda t: t.without_node(node_id, epoch=epoch, leader=self.id))

    async def _move(self, change: Callable[[Topology], Topology]) -> Topology:
        """Commit a change that moves keys: copy them to their new homes before and after."""
        await self._copy_to_new_homes(change(self.topology))
        committed = await self._apply(change)
        if (tasks := self.tasks()) is not None:
            tasks.start_soon(self._copy_to_new_homes, committed)
        return committed

    async def _copy_to_new_homes(self, new: Topology) -> None:
        """Give every serving node of ``new`` the keys ``new``'s ring places on it."""
        sources = self._serving()
        targets = [n.id for n in new.nodes if n.writable and n.id in sources]
        timeout = max(self.config.timeout, 1.0)
        for node in targets:
            result = await resync_node(
                node,
                self.nodes.opened,
                self.config.namespace,
                sources=sources,
                homes=lambda keys: self._homes(keys, new),
                hint_limit=self.config.hint_limit,
                timeout=timeout,
            )
            self.counters.keys_resynced += result.replayed

    async def set_weight(self, node_id: str, weight: float) -> Topology:
        """Change a node's weight; leader only."""
        self.require_leader()
        epoch = self.election.epoch
        self.topology.with_weight(node_id, weight, epoch=epoch)  # bad input fails here
        return await self._move(
            lambda t: t.with_weight(node_id, weight, epoch=epoch, leader=self.id)
        )

    async def _apply(self, change: Callable[[Topology], Topology]) -> Topology:
        committed = await self.commit(change)
        if committed is None:
            raise (
                NotLeader(None)
                if not self.election.is_leader
                else CacheringError("the topology change did not reach a majority of the nodes")
            )
        return committed
