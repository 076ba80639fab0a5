"""The leader's duties: topology commits, node state changes, repair, anti-entropy, membership.

:class:`LeaderDuties` holds what only the leader acts on (repairs in flight, nodes that
came back empty, suspicion reports, the epoch whose re-stamped topology was committed)
and runs on the state of its :class:`ControlHost` (the control plane), which owns the
topology, the connections and the control channel. Nothing here runs unless the host
leads; see :mod:`cachering.control.plane` for the rules each duty follows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
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
from .election import Election, fan_out, read_states
from .health import HealthMonitor
from .scripts import (
    TOPOLOGY_CAS_LUA,
    BadControlReply,
    CasReply,
    ControlKeys,
    parse_cas,
    topology_cas_args,
)
from .topology import NodeState, Topology, TopologyNode

__all__ = ["ControlHost", "LeaderDuties"]

logger = logging.getLogger("cachering.control.leader")

_CAS = Script(TOPOLOGY_CAS_LUA)


class ControlHost(Protocol):
    """What the leader's duties need from the control plane that runs them."""

    config: ClusterConfig
    id: str
    keys: ControlKeys
    voters: tuple[str, ...]
    majority: int
    round_timeout: float
    topology: Topology
    bus: EventBus
    counters: ControlCounters
    health: HealthMonitor
    election: Election
    _pools: dict[str, Pool]
    _specs: dict[str, NodeSpec]
    _tg: TaskGroup | None

    @property
    def is_leader(self) -> bool:
        """Whether the host leads right now."""
        ...

    @property
    def leader(self) -> str | None:
        """The leader the host knows of."""
        ...

    @property
    def epoch(self) -> int:
        """The highest epoch the host has seen."""
        ...

    @property
    def lagging(self) -> frozenset[str]:
        """Nodes that must not serve reads (missed writes, or restarted with old data)."""
        ...

    def _pool(self, node_id: str) -> Pool: ...

    def _watched_pools(self) -> dict[str, Pool]: ...

    def _adopt(self, topology: Topology, source: str) -> bool: ...

    async def _send(self, kind: MessageKind, epoch: int, body: dict[str, Any]) -> None: ...


class LeaderDuties:
    """The leader's work on behalf of one control plane (idle while it does not lead)."""

    def __init__(self, host: ControlHost) -> None:
        self.host = host
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

    def in_charge(self) -> bool:
        """Whether the host leads and its re-stamped topology is committed."""
        return self.host.is_leader and self.restamped == self.host.epoch

    def stepped_down(self) -> None:
        """Leadership was lost: repairs in flight no longer count."""
        self.repairs.clear()

    # ------------------------------------------------------------------ commits

    async def cas_all(self, topology: Topology, ids: list[str]) -> dict[str, CasReply | None]:
        """Write ``topology`` with ``TOPOLOGY_CAS`` to the nodes ``ids`` in parallel."""
        args = topology_cas_args(topology)
        pools = {n: self.host._pool(n) for n in ids}

        async def cas(node: str) -> CasReply:
            reply = await pools[node].run_script(
                _CAS,
                [self.host.keys.topology, self.host.keys.election],
                args,
                timeout=self.host.round_timeout,
            )
            try:
                return parse_cas(reply)
            except BadControlReply as exc:
                self.host.election.note_bad_reply(node, exc)
                raise

        return await fan_out(ids, cas, self.host.round_timeout)

    async def commit(self, change: Callable[[Topology], Topology]) -> Topology | None:
        """Write ``change(current topology)`` everywhere; adopt and announce it once a
        majority holds it. The change is computed under the commit lock, so two changes
        never build on the same version. Returns the committed topology (None: failed)."""
        async with self._commit_lock:
            if not self.host.is_leader:
                return None
            try:
                topology = change(self.host.topology)
            except ValueError as exc:  # e.g. no version left after an adopted top version
                self.host.counters.topology_commit_failures += 1
                logger.error("cachering: cannot build the next topology: %s", exc)
                return None
            if topology.epoch != self.host.epoch:
                return None
            ids = list(dict.fromkeys([*self.host.voters, *topology.ids, *self.host.topology.ids]))
            replies = await self.cas_all(topology, ids)
            holds = sum(
                1 for n in self.host.voters if (r := replies.get(n)) is not None and r.holds
            )
            newer = 0
            for r in replies.values():
                if r is None:
                    continue
                if r.status == "STALE_EPOCH" or r.status == "CONFLICT":
                    self.host.counters.topology_writes_refused += 1
                for e in (r.node_epoch, r.stored_epoch):
                    if e is not None and e > topology.epoch:
                        newer = max(newer, e)
            if newer:
                self.host.election.observe_epoch(newer)  # steps down
                self.host.counters.topology_commit_failures += 1
                return None
            if holds < self.host.majority or not self.host.is_leader:
                self.host.counters.topology_commit_failures += 1
                return None
            self.host.counters.topology_commits += 1
            self.host._adopt(topology, "commit")
        with anyio.move_on_after(self.host.round_timeout * 2):
            await self.host._send("topology", topology.epoch, {"topology": topology.to_dict()})
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
        states = await read_states(
            self.host._watched_pools(),
            self.host._watched_pools(),
            self.host.keys,
            self.host.round_timeout,
            self.host.election.note_bad_reply,
        )
        newest = self.host.topology
        for s in states.values():
            if s is not None and s.topology is not None and s.topology.newer_than(newest):
                newest = s.topology
        if newest.epoch > epoch:
            self.host.election.observe_epoch(newest.epoch)
            return

        def stamp(current: Topology) -> Topology:
            base = newest if newest.newer_than(current) else current
            return Topology(epoch, base.version + 1, base.nodes, self.host.id)

        if await self.commit(stamp) is not None:
            self.restamped = epoch

    # ------------------------------------------------------------------ node states

    def _down_votes(self, node: str) -> int:
        horizon = anyio.current_time() - self.host.config.effective_election_timeout
        reports = self.reports.get(node, {})
        for sender, at in list(reports.items()):
            if at < horizon:
                del reports[sender]
        return len(reports) + (1 if node in self.host.health.suspects() else 0)

    async def lead(self) -> None:
        """One leader tick: at most one node state change, start repairs, drain hints."""
        self._ticks += 1
        topo = self.host.topology
        epoch = self.host.epoch
        for tnode in topo.nodes:
            rec = self.host.health.nodes.get(tnode.id)
            if rec is None:
                continue
            node = tnode.id
            if (
                tnode.state in ("up", "joining", "recovering")
                and rec.suspect
                and self._down_votes(node) >= self.host.config.down_quorum
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
                if self.repairs.get(node) is None and self.host._tg is not None:
                    self._repair_runs += 1
                    token = self.repairs[node] = f"running#{self._repair_runs}"
                    self.host._tg.start_soon(self._repair, node, epoch, token)
                elif self.repairs.get(node) == "done":
                    self.repairs.pop(node, None)
                    if not await self._vouch(node):
                        return
                    if await self._change(node, "up", epoch):
                        self.sweep_now.set()
                    return
        await self._drain_up_nodes()

    async def _vouch(self, node: str) -> bool:
        """A repaired node's data is the cluster's again: its fence names its run_id."""
        try:
            await set_fence(
                self.host._pool(node), self.host.config.namespace, timeout=self.host.round_timeout
            )
        except (NodeUnavailable, OSError, CacheringError):
            return False
        return True

    async def _change(self, node: str, state: NodeState, epoch: int) -> bool:
        def change(current: Topology) -> Topology:
            return current.with_state(node, state, epoch=epoch, leader=self.host.id)

        try:
            return await self.commit(change) is not None
        except KeyError:  # removed meanwhile
            return False

    def _serving(self) -> list[str]:
        """Nodes that may hold copies: every writable node of the topology. Local suspicion
        does not count here: a repair that skipped a slow node could miss the newest copy,
        so a node that does not answer makes the repair incomplete (it is retried)."""
        return [n.id for n in self.host.topology.nodes if n.writable]

    async def _overflowed(self, node: str) -> list[str] | None:
        """Holders with an overflow marker for ``node`` (None: could not ask them all)."""
        holders = [n for n in self._serving() if n != node]
        try:
            with anyio.fail_after(self.host.round_timeout * 4):
                return await overflowed(
                    self.host._pools,
                    self.host.config.namespace,
                    node,
                    holders,
                    self.host.round_timeout,
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
                self.host._pool(node),
                self.host.config.namespace,
                timeout=max(self.host.config.timeout, 1.0),
            )
            for holder in marked:
                await self.host._pool(holder).execute(
                    "DEL", hint_keys(self.host.config.namespace, node)[1]
                )
        except (NodeUnavailable, OSError, CacheringError):
            return False
        self.empty.add(node)
        self.host.counters.keys_cleared += cleared
        self.host.bus.publish(HintsReplayed(node=node, keys=0, cleared=True))
        return True

    def _homes(self, keys: list[bytes], topology: Topology | None = None) -> list[tuple[str, ...]]:
        """Home nodes of each key on a topology's ring (default: the current one)."""
        topo = topology or self.host.topology
        weights = {n.id: n.weight for n in topo.nodes}
        if self._ring is None or self._ring[0] != weights:
            c = self.host.config
            self._ring = (weights, Ring(dict(weights), vnodes=c.vnodes, hash=c.hash, seed=c.seed))
        copies = min(self.host.config.replicas, len(weights))
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
                if outcome == "done" and self.host.is_leader and self.host.epoch == epoch:
                    self.repairs[node] = "done"
                else:
                    del self.repairs[node]

    async def _repair_once(self, node: str) -> str:
        timeout = max(self.host.config.timeout, self.host.round_timeout)
        if not await self._clear_if_overflowed(node):
            return "retry"
        if node in self.empty:
            synced = await resync_node(
                node,
                self.host._pools,
                self.host.config.namespace,
                sources=[s for s in self._serving() if s != node],
                homes=self._homes,
                hint_limit=self.host.config.hint_limit,
                timeout=max(timeout, 1.0),
            )
            self.host.counters.keys_resynced += synced.replayed
            if not synced.complete:
                return "retry"
            self.empty.discard(node)
        holders = [n for n in self.host.topology.ids if n != node]
        result = await replay_hints(
            node,
            self.host._pools,
            self.host.config.namespace,
            holders=[h for h in holders if h in self._serving()],
            sources=[s for s in self._serving() if s != node],
            homes=self._homes,
            hint_limit=self.host.config.hint_limit,
            timeout=timeout,
        )
        self.host.counters.repairs += 1
        self.host.counters.hints_replayed += result.replayed
        self.host.counters.stand_in_copies_dropped += result.dropped
        if result.replayed or result.deleted:
            self.host.bus.publish(HintsReplayed(node=node, keys=result.replayed, cleared=False))
        return "done" if result.complete else "retry"

    async def anti_entropy_loop(self) -> None:
        """Sweep every ``anti_entropy_interval`` (or when asked) while in charge."""
        interval = self.host.config.anti_entropy_interval
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
        topo = self.host.topology
        # a lagging node may hold old copies, or copies of keys deleted since: no source
        lagging = self.host.lagging
        up = [n.id for n in topo.nodes if n.state == "up" and n.id not in lagging]
        writable = [n.id for n in topo.nodes if n.writable]
        for n in writable:
            self.host._pool(n)
        result = await anti_entropy(
            self.host._pools,
            self.host.config.namespace,
            sources=up,
            targets=writable,
            homes=lambda keys: self._homes(keys, topo),
            hint_limit=self.host.config.hint_limit,
            timeout=max(self.host.config.timeout, self.host.round_timeout, 1.0),
        )
        self.host.counters.anti_entropy_repaired += result.repaired
        self.host.counters.stand_in_copies_dropped += result.dropped
        if result.complete:
            self.host.counters.anti_entropy_sweeps += 1
        else:
            self.host.counters.anti_entropy_incomplete += 1
        self.last_sweep = result
        return result

    async def _drain_up_nodes(self) -> None:
        """Replay hints left for up nodes (writes that routed around a briefly failing node)."""
        serving = self._serving()
        up = [n.id for n in self.host.topology.nodes if n.state == "up" and n.id in serving]
        garbled = self.host.health.garbled()
        counts = await hint_holders(
            self.host._pools,
            self.host.config.namespace,
            up,
            [n for n in serving if n not in garbled],
            self.host.round_timeout,
            self.host.health.garble,
        )
        for node, count in counts.items():
            if count and node not in self.repairs and self.host._tg is not None:
                self.repairs[node] = "draining"
                self.host._tg.start_soon(self._drain, node)

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
                self.host._pools,
                self.host.config.namespace,
                holders=serving,
                sources=serving,
                homes=self._homes,
                hint_limit=self.host.config.hint_limit,
                timeout=max(self.host.config.timeout, self.host.round_timeout),
            )
            self.host.counters.hints_replayed += result.replayed
            self.host.counters.stand_in_copies_dropped += result.dropped
        finally:
            if self.repairs.get(node) == "draining":
                del self.repairs[node]

    # ------------------------------------------------------------------ membership

    def require_leader(self) -> None:
        """Raise :class:`NotLeader` unless the host leads with a committed topology."""
        if not self.in_charge():
            raise NotLeader(self.host.leader if self.host.leader != self.host.id else None)

    async def add_node(self, spec: NodeSpec) -> Topology:
        """Add a node (state ``joining``, then ``up`` once it answers); leader only."""
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"add_node() needs a NodeSpec, got {type(spec).__name__}")
        self.require_leader()
        if spec.id in self.host.topology:
            raise ValueError(f"node {spec.id!r} is already in the topology")
        self.host._specs[spec.id] = spec
        self.host._pool(spec.id)
        await self.host.election.seed_pass(extra=[spec.id])
        epoch = self.host.epoch
        return await self._apply(
            lambda t: t.with_node(
                TopologyNode.from_spec(spec, "joining"), epoch=epoch, leader=self.host.id
            )
        )

    async def remove_node(self, node_id: str) -> Topology:
        """Remove a node from the topology (its keys move to the others); leader only."""
        self.require_leader()
        epoch = self.host.epoch
        return await self._move(lambda t: t.without_node(node_id, epoch=epoch, leader=self.host.id))

    async def _move(self, change: Callable[[Topology], Topology]) -> Topology:
        """Commit a change that moves keys: copy them to their new homes before and after."""
        await self._copy_to_new_homes(change(self.host.topology))
        committed = await self._apply(change)
        if self.host._tg is not None:
            self.host._tg.start_soon(self._copy_to_new_homes, committed)
        return committed

    async def _copy_to_new_homes(self, new: Topology) -> None:
        """Give every serving node of ``new`` the keys ``new``'s ring places on it."""
        sources = self._serving()
        targets = [n.id for n in new.nodes if n.writable and n.id in sources]
        timeout = max(self.host.config.timeout, 1.0)
        for node in targets:
            result = await resync_node(
                node,
                self.host._pools,
                self.host.config.namespace,
                sources=sources,
                homes=lambda keys: self._homes(keys, new),
                hint_limit=self.host.config.hint_limit,
                timeout=timeout,
            )
            self.host.counters.keys_resynced += result.replayed

    async def set_weight(self, node_id: str, weight: float) -> Topology:
        """Change a node's weight; leader only."""
        self.require_leader()
        epoch = self.host.epoch
        self.host.topology.with_weight(node_id, weight, epoch=epoch)  # bad input fails here
        return await self._move(
            lambda t: t.with_weight(node_id, weight, epoch=epoch, leader=self.host.id)
        )

    async def _apply(self, change: Callable[[Topology], Topology]) -> Topology:
        committed = await self.commit(change)
        if committed is None:
            raise (
                NotLeader(None)
                if not self.host.is_leader
                else CacheringError("the topology change did not reach a majority of the nodes")
            )
        return committed
