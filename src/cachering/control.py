"""The control plane of one manager: health, election, topology and repair, as one service.

Start it with ``await task_group.start(control.run)``; cancelling that task group stops
it (and closes its own connections). Each manager (each ``Cluster``) runs one.

Topology
    At start every node is read (``READ``) and the newest valid topology seen is
    adopted; on a fresh cluster that is ``Topology.initial(config.nodes)``. A topology is
    *committed* once a majority of the configured nodes holds it; a new leader first
    re-stamps the newest topology it can read with its own epoch and commits that, so
    whatever a deposed leader managed to write is either carried over or superseded.
    Announcements arrive on the signed control channel ``{ns}:ctl`` (published to, and
    read from, every node); a ``gap`` (reconnect) triggers an immediate re-read, and every
    ``topology_refresh_interval`` the nodes are read again in case an announcement was lost.

Leader duties (each heartbeat, on the leader only)
    A node whose heartbeats fail (and which ``down_quorum`` managers, this one included,
    reported through signed ``suspect`` messages) is marked ``down``. When it answers
    again its keys are cleared if its hint log overflowed, it is marked ``recovering``
    (writable, not readable), its hints are replayed, and then it is marked ``up``. A
    ``joining`` node becomes ``up`` once it answers heartbeats. Every change is
    ``(epoch = leader's epoch, version + 1)``, written with ``TOPOLOGY_CAS`` to every node
    in parallel, and announced once a majority accepted it. A refusal that shows a newer
    epoch makes the leader step down at once.

Anti-entropy (leader only)
    Every ``anti_entropy_interval`` seconds, and once whenever a node comes back up after
    recovery, the leader sweeps every up node and pushes the newest copy of each key to
    the key's home copies that are behind (:func:`~cachering.repair.anti_entropy`): the
    backstop for what hints cannot cover (a write applied by a node whose reply was lost,
    a hint that could not be recorded, replica writes lost with a crashed manager).

Membership changes
    :meth:`ControlPlane.add_node`, :meth:`~ControlPlane.remove_node` and
    :meth:`~ControlPlane.set_weight` succeed only on the leader (others raise
    :class:`NotLeader`, naming the leader they know): the leader is the one writer of the
    topology, and a caller can retry against ``control.leader``.

This module is longer than most (about 1,000 lines): leader duties, topology commits and
the message handlers all read and write the same few pieces of state (topology,
leadership, health, repairs in flight), and keeping them in one class keeps every
transition of that state in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from .config import ClusterConfig
from .control_scripts import TOPOLOGY_CAS_LUA, CasReply, control_keys, parse_cas, topology_cas_args
from .election import Election, fan_out, read_states
from .errors import CacheringError, NodeUnavailable, NotLeader
from .events import (
    EventBus,
    HintsReplayed,
    NodeAdded,
    NodeDown,
    NodeRecovering,
    NodeRemoved,
    NodeUp,
    NodeWeightChanged,
    TopologyChanged,
)
from .health import HealthMonitor
from .messages import ControlMessage, Keyring, MessageCodec, MessageKind, MessageRejected
from .node import NodeSpec
from .repair import (
    SweepResult,
    anti_entropy,
    clear_node,
    overflowed,
    pending_hints,
    replay_hints,
    resync_node,
)
from .resp.pool import Pool
from .resp.pubsub import PubSub
from .resp.script import Script
from .ring import Ring
from .topology import NodeState, Topology, TopologyNode

__all__ = ["ControlPlane", "NotLeader"]  # NotLeader lives in errors; re-exported here

logger = logging.getLogger("cachering.control")

_CAS = Script(TOPOLOGY_CAS_LUA)
_DRAIN_EVERY = 1  # leader ticks between checks for hints left on up nodes


def keyring_of(config: ClusterConfig) -> Keyring | None:
    """The keyring described by ``config.secret`` (first entry signs), or None."""
    if not config.secret:
        return None
    return Keyring(dict(config.secret), active=config.secret[0][0])


OnChange = Callable[[Topology, frozenset[str]], None]


class ControlPlane:
    """One manager's health monitor, election, topology watcher, leader duties and repair."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        manager_id: str | None = None,
        bus: EventBus | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        if not isinstance(config, ClusterConfig):
            raise TypeError(f"config must be a ClusterConfig, got {type(config).__name__}")
        self.config = config
        self.id = manager_id or config.manager_id or os.urandom(8).hex()
        self.bus = bus if bus is not None else EventBus()
        self._on_change = on_change
        self.keys = control_keys(config.namespace)
        self.codec = MessageCodec(keyring_of(config), config.namespace, config.max_message_size)
        if not self.codec.signed:
            logger.warning(
                "cachering: no secret configured; control messages are not authenticated"
            )
        self.voters = tuple(n.id for n in config.nodes)
        self.majority = len(self.voters) // 2 + 1
        interval = config.heartbeat_interval
        self.round_timeout = min(config.timeout, interval)
        self.topology: Topology = Topology.initial(config.nodes)
        self._specs: dict[str, NodeSpec] = {n.id: n for n in config.nodes}
        self._pools: dict[str, Pool] = {}
        self.health = HealthMonitor(
            self._watched_pools,
            interval=interval,
            threshold=config.failure_threshold,
            timeout=self.round_timeout,
            bus=self.bus,
            on_suspect=self._health_changed,
            on_healthy=self._health_changed,
            on_restart=self._restarted,
        )
        self.election = Election(
            self.id,
            self.voters,
            self._watched_pools,
            self.keys,
            interval=interval,
            election_timeout=config.effective_election_timeout,
            round_timeout=self.round_timeout,
            failure_threshold=config.failure_threshold,
            bus=self.bus,
            announce=self._announce_leader,
            on_elected=self._elected,
            on_stepped_down=self._stepped_down,
            others=lambda: self.topology.ids,
        )
        self._seq = time.time_ns() // 1000
        self._tg: TaskGroup | None = None
        self._listeners: dict[str, anyio.CancelScope] = {}
        self._wire_seen: OrderedDict[bytes, set[str]] = OrderedDict()
        self._reread = anyio.Event()
        self._commit_lock = anyio.Lock()
        self._restamping = False
        self._restamped = 0  # the epoch whose re-stamped topology was committed
        self._reports: dict[str, dict[str, float]] = {}
        self._reported: dict[str, float] = {}
        self._repairs: dict[str, str] = {}  # node -> "running#n", "done" or "draining"
        self._repair_runs = 0
        self._empty: set[str] = set()  # nodes that came back without their data
        self._noted: dict[str, float] = {}  # nodes with hints pending -> when first noted
        self._ring: tuple[dict[str, float], Ring] | None = None
        self._ticks = 0
        self.counters: dict[str, int] = {
            "topology_commits": 0,
            "topology_commit_failures": 0,
            "topology_writes_refused": 0,
            "topology_adopted": 0,
            "messages_sent": 0,
            "messages_duplicate": 0,
            "rereads": 0,
            "repairs": 0,
            "hints_replayed": 0,
            "keys_cleared": 0,
            "keys_resynced": 0,
            "anti_entropy_sweeps": 0,
            "anti_entropy_incomplete": 0,
            "anti_entropy_repaired": 0,
        }
        self._sweep_now = anyio.Event()
        self.last_sweep: SweepResult | None = None
        """The last anti-entropy sweep this manager ran (None: none yet)."""
        self.ready = anyio.Event()
        """Set once the first topology read finished."""

    # ------------------------------------------------------------------ views

    @property
    def is_leader(self) -> bool:
        """Whether this manager leads right now."""
        return self.election.is_leader

    @property
    def leader(self) -> str | None:
        """The leader this manager knows of."""
        return self.election.leader

    @property
    def epoch(self) -> int:
        """The highest epoch this manager has seen."""
        return self.election.epoch

    def suspects(self) -> frozenset[str]:
        """Nodes this manager's heartbeats currently fail on."""
        return self.health.suspects()

    def spec(self, node_id: str) -> NodeSpec:
        """The connection spec of a node (configured, added, or learned from the topology)."""
        spec = self._specs.get(node_id)
        if spec is None:
            tnode = self.topology.node(node_id)
            base = self.config.nodes[0]
            spec = attrs.evolve(base, id=tnode.id, host=tnode.host, port=tnode.port)
            spec = attrs.evolve(spec, weight=tnode.weight)
            self._specs[node_id] = spec
        return spec

    def _pool(self, node_id: str) -> Pool:
        pool = self._pools.get(node_id)
        if pool is None:
            c = self.config
            pool = self._pools[node_id] = Pool(
                self.spec(node_id),
                max_size=4,
                connect_timeout=min(c.connect_timeout, max(self.round_timeout, 0.05)),
                timeout=self.round_timeout,
                backoff_base=0.0,
                backoff_max=0.0,
            )
        return pool

    def _watched_pools(self) -> dict[str, Pool]:
        ids = dict.fromkeys([*self.voters, *self.topology.ids])
        return {n: self._pool(n) for n in ids}

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run every part until cancelled; ``started`` once the first topology read is done."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._refresh("start")
                self.ready.set()
                for node in self._watched_pools():
                    self._listen(node)
                await tg.start(self.health.run)
                await tg.start(self.election.run)
                tg.start_soon(self._refresher)
                tg.start_soon(self._duties)
                tg.start_soon(self._anti_entropy_loop)
                task_status.started()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                for pool in list(self._pools.values()):
                    await pool.aclose()
                self._pools.clear()

    async def stop(self) -> None:
        """Leave gracefully: a leader announces it steps down so others take over at once."""
        if self.is_leader:
            epoch = self.epoch
            self.election.step_down("stopping")
            with anyio.move_on_after(self.round_timeout):
                await self._send("goodbye", epoch, {})

    # ------------------------------------------------------------------ messages

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    async def _send(self, kind: MessageKind, epoch: int, body: dict[str, Any]) -> None:
        msg = ControlMessage(
            kind,
            self.config.namespace,
            self.id,
            epoch=epoch,
            seq=self._next_seq(),
            sent_at=time.time(),
            body=body,
        )
        data = self.codec.encode(msg)
        pools = self._watched_pools()
        down = {n.id for n in self.topology.nodes if n.state == "down"}

        async def publish(node: str) -> None:
            if node in down and node in self.health.suspects():
                return
            await pools[node].execute("PUBLISH", self.keys.channel, data)

        await fan_out(list(pools), publish, self.round_timeout)
        self.counters["messages_sent"] += 1

    def _listen(self, node: str) -> None:
        if self._tg is None or node in self._listeners:
            return
        scope = anyio.CancelScope()
        self._listeners[node] = scope
        self._tg.start_soon(self._listener, node, scope)

    async def _listener(self, node: str, scope: anyio.CancelScope) -> None:
        with scope:
            retry = min(max(self.config.heartbeat_interval, 0.05), 1.0)
            sub = PubSub(
                self.spec(node),
                connect_timeout=self._pool(node).connect_timeout,
                backoff_base=retry / 4,
                backoff_max=retry,
            )
            async with sub:
                # On failure the channel stays registered and reading reconnects.
                with contextlib.suppress(NodeUnavailable):
                    await sub.subscribe(self.keys.channel)
                async for message in sub:
                    if message.kind == "gap":
                        self._reread.set()
                    else:
                        await self._on_wire(node, message.data)

    async def _on_wire(self, node: str, data: bytes) -> None:
        """One raw message from ``node``'s channel: dedupe the fan-out, check, dispatch."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        seen = self._wire_seen.get(digest)
        if seen is not None and node not in seen:
            # The same message published to another node: a copy, not a replay.
            seen.add(node)
            self.counters["messages_duplicate"] += 1
            return
        if seen is None:
            self._wire_seen[digest] = {node}
            while len(self._wire_seen) > 4096:
                self._wire_seen.popitem(last=False)
        try:
            msg = self.codec.decode(data, now=anyio.current_time())
        except MessageRejected:
            return
        if msg.sender == self.id:
            return
        try:
            await self._dispatch(msg)
        except (ValueError, TypeError, KeyError):
            self.codec.drops.record("malformed", anyio.current_time())

    async def _dispatch(self, msg: ControlMessage) -> None:
        body = msg.body
        if msg.kind == "leader":
            self.election.observe_leader(msg.sender, msg.epoch)
            stamp = body.get("topology")
            if isinstance(stamp, list) and len(stamp) == 2 and tuple(stamp) > self.topology.stamp:
                self._reread.set()  # an announcement was lost
        elif msg.kind == "topology":
            topology = Topology.from_dict(body["topology"])
            if topology.epoch != msg.epoch:
                raise ValueError("topology epoch differs from the message epoch")
            self.election.observe_epoch(msg.epoch)
            self._adopt(topology, "announce")
        elif msg.kind == "suspect":
            node = body["node"]
            if not isinstance(node, str) or not isinstance(body.get("suspect"), bool):
                raise ValueError("bad suspect message")
            reports = self._reports.setdefault(node, {})
            if body["suspect"]:
                reports[msg.sender] = anyio.current_time()
            else:
                reports.pop(msg.sender, None)
        elif msg.kind == "goodbye":
            self.election.observe_goodbye(msg.sender, msg.epoch)

    async def _announce_leader(self, epoch: int) -> None:
        await self._send("leader", epoch, {"topology": list(self.topology.stamp)})

    # ------------------------------------------------------------------ topology

    def _adopt(self, topology: Topology, source: str) -> bool:
        old = self.topology
        if not topology.newer_than(old):
            return False
        self.topology = topology
        self.counters["topology_adopted"] += 1
        self.codec.observe_epoch(topology.epoch)
        for node in topology.ids:
            if node not in self._specs:
                self._specs[node] = self.spec(node)
            self._listen(node)
        gone = [n for n in old.ids if n not in topology]
        for node in gone:
            scope = self._listeners.pop(node, None)
            if scope is not None and node not in self.voters:
                scope.cancel()
        self._node_events(old, topology)
        self.bus.publish(
            TopologyChanged(
                epoch=topology.epoch,
                version=topology.version,
                leader=topology.leader,
                source=source,
            )
        )
        self._notify()
        return True

    def _node_events(self, old: Topology, new: Topology) -> None:
        stamp = {"epoch": new.epoch, "version": new.version}
        kinds = {"down": NodeDown, "recovering": NodeRecovering, "up": NodeUp}
        for node in new.nodes:
            if node.id not in old:
                self.bus.publish(NodeAdded(node=node.id, **stamp))
                continue
            before = old.node(node.id)
            if before.state != node.state and node.state in kinds:
                self.bus.publish(kinds[node.state](node=node.id, **stamp))
            if before.weight != node.weight:
                self.bus.publish(NodeWeightChanged(node=node.id, weight=node.weight, **stamp))
        for node_id in old.ids:
            if node_id not in new:
                self.bus.publish(NodeRemoved(node=node_id, **stamp))

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change(self.topology, self.health.suspects())

    def _health_changed(self, node: str) -> None:
        self._reported.pop(node, None)  # report the new state on the next tick
        self._notify()

    def _restarted(self, node: str) -> None:
        self._empty.add(node)
        self.election.request_seed()
        self._reread.set()

    async def _refresh(self, source: str) -> None:
        """Read every node; adopt the newest valid topology; a leader repairs stale copies."""
        self.counters["rereads"] += 1
        states = await read_states(
            self._watched_pools(), self._watched_pools(), self.keys, self.round_timeout
        )
        newest: Topology | None = None
        for s in states.values():
            if s is None:
                continue
            for e in (s.epoch, s.topology_epoch):
                if e is not None:
                    self.election.observe_epoch(e)
            if s.topology is not None and s.topology.newer_than(newest):
                newest = s.topology
            if not s.ready:
                self.election.request_seed()
        if newest is not None:
            self._adopt(newest, source)
        if source == "start":
            self.election.observe_votes(states)
        if self.is_leader and self._restamped == self.epoch:
            behind = [
                n
                for n, s in states.items()
                if s is not None
                and s.ready
                and (s.topology_epoch, s.topology_version) != self.topology.stamp
                and (s.topology is None or self.topology.newer_than(s.topology))
            ]
            if behind:
                await self._cas_all(self.topology, behind)

    async def _refresher(self) -> None:
        interval = self.config.topology_refresh_interval
        while True:
            with anyio.move_on_after(interval):
                await self._reread.wait()
            self._reread = anyio.Event()
            await self._refresh("read")

    async def _cas_all(self, topology: Topology, ids: list[str]) -> dict[str, CasReply | None]:
        args = topology_cas_args(topology)
        pools = {n: self._pool(n) for n in ids}

        async def cas(node: str) -> CasReply:
            reply = await pools[node].run_script(
                _CAS, [self.keys.topology, self.keys.election], args, timeout=self.round_timeout
            )
            return parse_cas(reply)

        return await fan_out(ids, cas, self.round_timeout)

    async def _commit(self, change: Callable[[Topology], Topology]) -> Topology | None:
        """Write ``change(current topology)`` everywhere; adopt and announce it once a
        majority holds it. The change is computed under the commit lock, so two changes
        never build on the same version. Returns the committed topology (None: failed)."""
        async with self._commit_lock:
            if not self.is_leader:
                return None
            topology = change(self.topology)
            if topology.epoch != self.epoch:
                return None
            ids = list(dict.fromkeys([*self.voters, *topology.ids, *self.topology.ids]))
            replies = await self._cas_all(topology, ids)
            holds = sum(1 for n in self.voters if (r := replies.get(n)) is not None and r.holds)
            newer = 0
            for r in replies.values():
                if r is None:
                    continue
                if r.status == "STALE_EPOCH" or r.status == "CONFLICT":
                    self.counters["topology_writes_refused"] += 1
                for e in (r.node_epoch, r.stored_epoch):
                    if e is not None and e > topology.epoch:
                        newer = max(newer, e)
            if newer:
                self.election.observe_epoch(newer)  # steps down
                self.counters["topology_commit_failures"] += 1
                return None
            if holds < self.majority or not self.is_leader:
                self.counters["topology_commit_failures"] += 1
                return None
            self.counters["topology_commits"] += 1
            self._adopt(topology, "commit")
        with anyio.move_on_after(self.round_timeout * 2):
            await self._send("topology", topology.epoch, {"topology": topology.to_dict()})
        return topology

    async def _elected(self, epoch: int) -> None:
        await self._restamp(epoch)

    async def _restamp(self, epoch: int) -> None:
        if self._restamping:
            return
        self._restamping = True
        try:
            await self._restamp_now(epoch)
        finally:
            self._restamping = False

    async def _restamp_now(self, epoch: int) -> None:
        states = await read_states(
            self._watched_pools(), self._watched_pools(), self.keys, self.round_timeout
        )
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

        if await self._commit(stamp) is not None:
            self._restamped = epoch

    def _stepped_down(self, epoch: int) -> None:
        self._repairs.clear()

    # ------------------------------------------------------------------ leader duties

    async def _duties(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            start = anyio.current_time()
            await self._report_suspects()
            await self._check_lagging()
            if self.is_leader:
                if self._restamped != self.epoch:
                    await self._restamp(self.epoch)
                else:
                    await self._lead()
            await anyio.sleep_until(start + interval)

    def note_hinted(self, nodes: Iterable[str]) -> None:
        """The data path just recorded hints for ``nodes``: read from them no more until the
        hints were replayed (see :attr:`lagging`)."""
        now = anyio.current_time()
        added = False
        for node in nodes:
            added |= node not in self._noted
            self._noted[node] = now
        if added:
            self._notify()

    @property
    def lagging(self) -> frozenset[str]:
        """Nodes that missed writes not replayed yet: they must not serve reads."""
        return frozenset(self._noted)

    async def _check_lagging(self) -> None:
        """Ask every node which nodes still have hints; forget the replayed ones."""
        started = anyio.current_time()
        ids = list(self.topology.ids)
        counts = await pending_hints(
            self._pools, self.config.namespace, ids, ids, self.round_timeout
        )
        before = frozenset(self._noted)
        for node, count in counts.items():
            if count:
                self._noted.setdefault(node, started)
            elif node in self._noted and self._noted[node] < started:
                del self._noted[node]
        for node in list(self._noted):
            if node not in self.topology:
                del self._noted[node]
        if frozenset(self._noted) != before:
            self._notify()

    async def _report_suspects(self) -> None:
        if self.config.down_quorum <= 1:
            return
        now = anyio.current_time()
        every = self.config.effective_election_timeout / 2
        for node in self.topology.ids:
            rec = self.health.nodes.get(node)
            if rec is None:
                continue
            last = self._reported.get(node)
            if last is not None and now - last < every:
                continue
            self._reported[node] = now
            await self._send("suspect", self.epoch, {"node": node, "suspect": rec.suspect})

    def _down_votes(self, node: str) -> int:
        horizon = anyio.current_time() - self.config.effective_election_timeout
        reports = self._reports.get(node, {})
        for sender, at in list(reports.items()):
            if at < horizon:
                del reports[sender]
        return len(reports) + (1 if node in self.health.suspects() else 0)

    async def _lead(self) -> None:
        self._ticks += 1
        topo = self.topology
        epoch = self.epoch
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
                self._repairs.pop(node, None)
                await self._change(node, "down", epoch)
                return
            if tnode.state == "up" and node in self._empty and rec.healthy:
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "joining" and rec.healthy and rec.beats > 0:
                # Filled like a node that came back empty, then up.
                self._empty.add(node)
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "down" and rec.healthy and not rec.suspect:
                await self._change(node, "recovering", epoch)
                return
            if tnode.state == "recovering" and rec.healthy:
                if self._repairs.get(node) is None and self._tg is not None:
                    self._repair_runs += 1
                    token = self._repairs[node] = f"running#{self._repair_runs}"
                    self._tg.start_soon(self._repair, node, epoch, token)
                elif self._repairs.get(node) == "done":
                    self._repairs.pop(node, None)
                    if await self._change(node, "up", epoch):
                        self._sweep_now.set()
                    return
        if self._ticks % _DRAIN_EVERY == 0:
            await self._drain_up_nodes()

    async def _change(self, node: str, state: NodeState, epoch: int) -> bool:
        def change(current: Topology) -> Topology:
            return current.with_state(node, state, epoch=epoch, leader=self.id)

        try:
            return await self._commit(change) is not None
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
                    self._pools, self.config.namespace, node, holders, self.round_timeout
                )
        except (NodeUnavailable, OSError, TimeoutError, CacheringError):
            return None

    async def _clear_if_overflowed(self, node: str) -> bool:
        """A recovering node whose hint log overflowed: delete its keys first."""
        marked = await self._overflowed(node)
        if marked is None:
            return False
        if not marked:
            return True
        try:
            cleared = await clear_node(
                self._pool(node), self.config.namespace, timeout=max(self.config.timeout, 1.0)
            )
            for holder in marked:
                await self._pool(holder).execute(
                    "DEL", f"{self.config.namespace}:hintoverflow:{node}"
                )
        except (NodeUnavailable, OSError, CacheringError):
            return False
        self._empty.add(node)
        self.counters["keys_cleared"] += cleared
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
            if self._repairs.get(node) == token:
                if outcome == "done" and self.is_leader and self.epoch == epoch:
                    self._repairs[node] = "done"
                else:
                    del self._repairs[node]

    async def _repair_once(self, node: str) -> str:
        timeout = max(self.config.timeout, self.round_timeout)
        if not await self._clear_if_overflowed(node):
            return "retry"
        if node in self._empty:
            synced = await resync_node(
                node,
                self._pools,
                self.config.namespace,
                sources=[s for s in self._serving() if s != node],
                homes=self._homes,
                hint_limit=self.config.hint_limit,
                timeout=max(timeout, 1.0),
            )
            self.counters["keys_resynced"] += synced.replayed
            if not synced.complete:
                return "retry"
            self._empty.discard(node)
        holders = [n for n in self.topology.ids if n != node]
        result = await replay_hints(
            node,
            self._pools,
            self.config.namespace,
            holders=[h for h in holders if h in self._serving()],
            sources=[s for s in self._serving() if s != node],
            hint_limit=self.config.hint_limit,
            timeout=timeout,
        )
        self.counters["repairs"] += 1
        self.counters["hints_replayed"] += result.replayed
        if result.replayed or result.deleted:
            self.bus.publish(HintsReplayed(node=node, keys=result.replayed, cleared=False))
        return "done" if result.complete else "retry"

    async def _anti_entropy_loop(self) -> None:
        interval = self.config.anti_entropy_interval
        if interval <= 0:
            return
        while True:
            with anyio.move_on_after(interval):
                await self._sweep_now.wait()
            self._sweep_now = anyio.Event()
            if self.is_leader and self._restamped == self.epoch:
                await self.sweep()

    async def sweep(self) -> SweepResult:
        """Run one anti-entropy sweep now (see :func:`~cachering.repair.anti_entropy`).

        Every up node is scanned and the newest copy of each key is pushed to the key's
        writable home copies that are behind. The leader runs this on its own; calling it
        elsewhere is safe (every write is apply-if-newer), just redundant.
        """
        topo = self.topology
        up = [n.id for n in topo.nodes if n.state == "up"]
        writable = [n.id for n in topo.nodes if n.writable]
        for n in writable:
            self._pool(n)
        result = await anti_entropy(
            self._pools,
            self.config.namespace,
            sources=up,
            targets=writable,
            homes=lambda keys: self._homes(keys, topo),
            hint_limit=self.config.hint_limit,
            timeout=max(self.config.timeout, self.round_timeout, 1.0),
        )
        self.counters["anti_entropy_repaired"] += result.repaired
        if result.complete:
            self.counters["anti_entropy_sweeps"] += 1
        else:
            self.counters["anti_entropy_incomplete"] += 1
        self.last_sweep = result
        return result

    async def _drain_up_nodes(self) -> None:
        """Replay hints left for up nodes (writes that routed around a briefly failing node)."""
        serving = self._serving()
        up = [n.id for n in self.topology.nodes if n.state == "up" and n.id in serving]
        counts = await pending_hints(
            self._pools, self.config.namespace, up, serving, self.round_timeout
        )
        for node, count in counts.items():
            if count and node not in self._repairs and self._tg is not None:
                self._repairs[node] = "draining"
                self._tg.start_soon(self._drain, node)

    async def _drain(self, node: str) -> None:
        try:
            marked = await self._overflowed(node)
            if marked:
                # It missed writes we no longer know: it must stop serving and be rebuilt.
                self._empty.add(node)
                return
            if marked is None:
                return
            serving = [n for n in self._serving() if n != node]
            result = await replay_hints(
                node,
                self._pools,
                self.config.namespace,
                holders=serving,
                sources=serving,
                hint_limit=self.config.hint_limit,
                timeout=max(self.config.timeout, self.round_timeout),
            )
            self.counters["hints_replayed"] += result.replayed
        finally:
            if self._repairs.get(node) == "draining":
                del self._repairs[node]

    # ------------------------------------------------------------------ membership

    def _require_leader(self) -> None:
        if not self.is_leader or self._restamped != self.epoch:
            raise NotLeader(self.leader if self.leader != self.id else None)

    async def add_node(self, spec: NodeSpec) -> Topology:
        """Add a node (state ``joining``, then ``up`` once it answers); leader only."""
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"add_node() needs a NodeSpec, got {type(spec).__name__}")
        self._require_leader()
        if spec.id in self.topology:
            raise ValueError(f"node {spec.id!r} is already in the topology")
        self._specs[spec.id] = spec
        self._pool(spec.id)
        await self.election.seed_pass(extra=[spec.id])
        epoch = self.epoch
        return await self._apply(
            lambda t: t.with_node(
                TopologyNode.from_spec(spec, "joining"), epoch=epoch, leader=self.id
            )
        )

    async def remove_node(self, node_id: str) -> Topology:
        """Remove a node from the topology (its keys move to the others); leader only."""
        self._require_leader()
        epoch = self.epoch
        return await self._move(lambda t: t.without_node(node_id, epoch=epoch, leader=self.id))

    async def _move(self, change: Callable[[Topology], Topology]) -> Topology:
        """Commit a change that moves keys: copy them to their new homes before and after."""
        await self._copy_to_new_homes(change(self.topology))
        committed = await self._apply(change)
        if self._tg is not None:
            self._tg.start_soon(self._copy_to_new_homes, committed)
        return committed

    async def _copy_to_new_homes(self, new: Topology) -> None:
        """Give every serving node of ``new`` the keys ``new``'s ring places on it."""
        sources = self._serving()
        targets = [n.id for n in new.nodes if n.writable and n.id in sources]
        timeout = max(self.config.timeout, 1.0)
        for node in targets:
            result = await resync_node(
                node,
                self._pools,
                self.config.namespace,
                sources=sources,
                homes=lambda keys: self._homes(keys, new),
                hint_limit=self.config.hint_limit,
                timeout=timeout,
            )
            self.counters["keys_resynced"] += result.replayed

    async def set_weight(self, node_id: str, weight: float) -> Topology:
        """Change a node's weight; leader only."""
        self._require_leader()
        epoch = self.epoch
        self.topology.with_weight(node_id, weight, epoch=epoch)  # bad input fails here
        return await self._move(
            lambda t: t.with_weight(node_id, weight, epoch=epoch, leader=self.id)
        )

    async def _apply(self, change: Callable[[Topology], Topology]) -> Topology:
        committed = await self._commit(change)
        if committed is None:
            raise (
                NotLeader(None)
                if not self.is_leader
                else CacheringError("the topology change did not reach a majority of the nodes")
            )
        return committed

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Nodes (state and health), leader, epoch, topology stamp, message counters."""
        now = anyio.current_time()
        nodes: dict[str, Any] = {}
        for tnode in self.topology.nodes:
            rec = self.health.health(tnode.id)
            nodes[tnode.id] = {"state": tnode.state, "weight": tnode.weight, **rec.to_dict(now)}
        codec = self.codec.status()
        return {
            "manager": self.id,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "epoch": self.epoch,
            "topology": {
                "epoch": self.topology.epoch,
                "version": self.topology.version,
                "leader": self.topology.leader,
            },
            "nodes": nodes,
            "messages": codec,
            "messages_dropped": codec["dropped"],
            "secret_configured": self.codec.signed,
            "warnings": [] if self.codec.signed else ["no secret: control messages are unsigned"],
            "election": self.election.status(),
            "counters": dict(self.counters),
            "events_published": self.bus.published,
        }
