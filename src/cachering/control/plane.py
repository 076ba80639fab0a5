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

Leader duties (each heartbeat, on the leader only; :mod:`cachering.control.leader`)
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
    the key's home copies that are behind (:func:`~cachering.repair.sweep.anti_entropy`): the
    backstop for what hints cannot cover (a write applied by a node whose reply was lost,
    a hint that could not be recorded, replica writes lost with a crashed manager).

Membership changes
    :meth:`ControlPlane.add_node`, :meth:`~ControlPlane.remove_node` and
    :meth:`~ControlPlane.set_weight` succeed only on the leader (others raise
    :class:`NotLeader`, naming the leader they know): the leader is the one writer of the
    topology, and a caller can retry against ``control.leader``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..config import ClusterConfig
from ..errors import NodeUnavailable, NotLeader
from ..events import (
    EventBus,
    NodeAdded,
    NodeDown,
    NodeRecovering,
    NodeRemoved,
    NodeUp,
    NodeWeightChanged,
    TopologyChanged,
)
from ..messages import ControlMessage, MessageCodec, MessageKind, MessageRejected
from ..metrics import ControlCounters, Status
from ..node import NodeSpec
from ..repair.sweep import SweepResult
from ..resp.connection import ReplyLimits
from ..resp.pubsub import PubSub
from ..wallclock import next_seq, wall_time
from .election import Election, fan_out, read_states
from .guard import ReadGuard
from .health import HealthMonitor
from .leader import LeaderDuties, TopologyCommitter
from .pools import NodePools
from .scripts import NodeControlState, control_keys
from .seals import keyring_of as keyring_of  # re-exported for the cli
from .status import plane_status
from .topology import Topology
from .trust import StateGuard

__all__ = ["ControlPlane", "NotLeader"]  # NotLeader lives in errors; re-exported here

logger = logging.getLogger("cachering.control.plane")


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
        self.nodes = NodePools(config, self.voters, lambda: self.topology, self.round_timeout)
        self._specs = self.nodes.specs
        self._pools = self.nodes.opened
        self._pool = self.nodes.pool
        self._watched_pools = self.nodes.watched
        self.health = self._build_health(interval)
        self.election = self._build_election(interval)
        self._seq = next_seq(0)
        self._tg: TaskGroup | None = None
        self._listeners: dict[str, anyio.CancelScope] = {}
        self._wire_seen: OrderedDict[bytes, set[str]] = OrderedDict()
        self._reread = anyio.Event()
        self._reported: dict[str, float] = {}
        self.counters = ControlCounters()
        """What the control plane counts (declared in :mod:`cachering.metrics`)."""
        self.guard = StateGuard(self.codec.keyring, config.namespace, self.voters, self.counters)
        self.election.identity = self.guard.identity
        self.reads = ReadGuard(
            config,
            voters=self.voters,
            majority=self.majority,
            round_timeout=self.round_timeout,
            topology=lambda: self.topology,
            pool=self.nodes.pool,
            pools=lambda: self.nodes.opened,
            health=self.health,
            send=self._send,
            epoch=lambda: self.epoch,
            notify=self._notify,
        )
        """Which nodes must serve no reads on this manager (:mod:`cachering.control.guard`)."""
        self._duties = self._build_duties()
        self.ready = anyio.Event()
        """Set once the first topology read finished."""

    def _build_health(self, interval: float) -> HealthMonitor:
        """The heartbeat monitor of the watched nodes."""
        return HealthMonitor(
            self._watched_pools,
            interval=interval,
            threshold=self.config.failure_threshold,
            timeout=self.round_timeout,
            bus=self.bus,
            on_suspect=self._health_changed,
            on_healthy=self._health_changed,
            on_restart=self._restarted,
        )

    def _build_election(self, interval: float) -> Election:
        """This manager's part in the leader election."""
        return Election(
            self.id,
            self.voters,
            self._watched_pools,
            self.keys,
            interval=interval,
            election_timeout=self.config.effective_election_timeout,
            round_timeout=self.round_timeout,
            failure_threshold=self.config.failure_threshold,
            bus=self.bus,
            announce=self._announce_leader,
            on_elected=self._elected,
            on_stepped_down=self._stepped_down,
            others=lambda: self.topology.ids,
        )

    def _build_duties(self) -> LeaderDuties:
        """The leader's work: topology commits, repair, anti-entropy, membership."""
        return LeaderDuties(
            self.config,
            self.id,
            keys=self.keys,
            election=self.election,
            health=self.health,
            bus=self.bus,
            counters=self.counters,
            round_timeout=self.round_timeout,
            nodes=self.nodes.provider(),
            topology=TopologyCommitter(
                current=lambda: self.topology,
                adopt=self._adopt,
                read=self._read_trusted,
                sign=self.guard.sign,
                untrusted=self.guard.untrusted,
            ),
            send=self._send,
            tasks=lambda: self._tg,
            lagging=lambda: self.lagging,
        )

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
        return self.nodes.spec(node_id)

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
                tg.start_soon(self._tick_loop)
                tg.start_soon(self._duties.anti_entropy_loop)
                await tg.start(self.reads.run)
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
        self._seq = next_seq(self._seq)
        return self._seq

    async def _send(self, kind: MessageKind, epoch: int, body: dict[str, Any]) -> None:
        msg = ControlMessage(
            kind,
            self.config.namespace,
            self.id,
            epoch=epoch,
            seq=self._next_seq(),
            sent_at=wall_time(),
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
        self.counters.messages_sent += 1

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
                limits=ReplyLimits.for_values(self.config.max_message_size),
            )
            async with sub:
                # On failure the channel stays registered and reading reconnects.
                with contextlib.suppress(NodeUnavailable):
                    await sub.subscribe(self.keys.channel)
                async for message in sub:
                    if message.kind == "gap":
                        # Messages may be lost: a restart, a cut, or Redis closing a
                        # subscriber past its pub/sub output buffer limit.
                        self.counters.subscriber_gaps += 1
                        logger.warning("cachering: control channel on %s reconnected", node)
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
            self.counters.messages_duplicate += 1
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
        if not self.election.accepts_epoch(msg.epoch, f"a message from {msg.sender!r:.80}"):
            raise ValueError(f"epoch {msg.epoch} out of range")
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
            reports = self._duties.reports.setdefault(node, {})
            if body["suspect"]:
                reports[msg.sender] = anyio.current_time()
            else:
                reports.pop(msg.sender, None)
        elif msg.kind == "goodbye":
            self.election.observe_goodbye(msg.sender, msg.epoch)
        elif msg.kind == "lagging":
            nodes = body["nodes"]
            if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                raise ValueError("bad lagging message")
            self.reads.note([n for n in nodes[:1024] if n in self.topology], announce=False)

    async def _announce_leader(self, epoch: int) -> None:
        await self._send("leader", epoch, {"topology": list(self.topology.stamp)})

    # ------------------------------------------------------------------ topology

    def _adopt(self, topology: Topology, source: str) -> bool:
        old = self.topology
        if not topology.newer_than(old):
            return False
        self.topology = topology
        self.counters.topology_adopted += 1
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
        self._duties.empty.add(node)
        self.election.request_seed()
        self._reread.set()
        self.reads.note_restarted(node)

    def _check_voters(self, states: dict[str, NodeControlState | None]) -> None:
        """Refuse to campaign while the cluster's stored voter set is not the configured one."""
        reason = self.guard.voter_mismatch(states)
        if reason != self.election.refusal:
            if reason is not None:
                self.counters.voter_mismatches += 1
                logger.error("cachering: %s", reason)
            self.election.refuse(reason)

    async def _read_trusted(self) -> dict[str, NodeControlState | None]:
        """Every node's control state; stored topologies that fail their seal screened out."""
        pools = self.nodes.watched()
        return self.guard.screen(
            await read_states(
                pools, pools, self.keys, self.round_timeout, self.election.note_bad_reply
            )
        )

    async def _refresh(self, source: str) -> None:
        """Read every node; adopt the newest valid topology; a leader repairs stale copies."""
        self.counters.rereads += 1
        states = await self._read_trusted()
        self._check_voters(states)
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
            # A node of an established cluster without election state lost it with its
            # data (restart, flush): rebuild it before it serves again, as after a restart.
            for node, st in states.items():
                if st is not None and not st.ready and node in self.topology:
                    self._duties.empty.add(node)
        if source == "start":
            self.election.observe_votes(states)
        if self._duties.in_charge():
            behind = [
                n
                for n, s in states.items()
                if s is not None
                and s.ready
                and (s.topology_epoch, s.topology_version) != self.topology.stamp
                and (s.topology is None or self.topology.newer_than(s.topology))
            ]
            if behind:
                await self._duties.cas_all(self.topology, behind)

    async def _refresher(self) -> None:
        interval = self.config.topology_refresh_interval
        while True:
            with anyio.move_on_after(interval):
                await self._reread.wait()
            self._reread = anyio.Event()
            await self._refresh("read")

    async def _elected(self, epoch: int) -> None:
        await self._duties.restamp(epoch)

    def _stepped_down(self, epoch: int) -> None:
        self._duties.stepped_down()

    # ------------------------------------------------------------------ every tick

    async def _tick_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            start = anyio.current_time()
            await self._report_suspects()
            await self.reads.check()
            if self.is_leader:
                if self._duties.restamped != self.epoch:
                    await self._duties.restamp(self.epoch)
                else:
                    await self._duties.lead()
            await anyio.sleep_until(start + interval)

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

    def note_hinted(self, nodes: Iterable[str]) -> None:
        """The data path just recorded hints for ``nodes``: read from them no more until the
        hints were replayed (see :attr:`lagging`), and tell every other manager so at once."""
        self.reads.note(nodes)

    def note_restarted(self, node: str, *, mark: bool = True) -> None:
        """``node`` restarted (holding data from before, or empty): no reads until it was
        repaired; ``mark`` as in :meth:`ReadGuard.note_restarted
        <cachering.control.guard.ReadGuard.note_restarted>`."""
        self.reads.note_restarted(node, mark=mark)

    @property
    def lagging(self) -> frozenset[str]:
        """Nodes that must not serve reads (missed writes, or restarted with old data)."""
        return self.reads.lagging

    @property
    def partitioned(self) -> bool:
        """Whether this manager is cut off from the nodes' majority past the election timeout."""
        return self.reads.partitioned

    # ------------------------------------------------------------------ leader only

    @property
    def last_sweep(self) -> SweepResult | None:
        """The last anti-entropy sweep this manager ran (None: none yet)."""
        return self._duties.last_sweep

    async def sweep(self) -> SweepResult:
        """Run one anti-entropy sweep now (see :func:`~cachering.repair.sweep.anti_entropy`).

        Every up node is scanned and the newest copy of each key is pushed to the key's
        writable home copies that are behind. The leader runs this on its own; calling it
        elsewhere is safe (every write is apply-if-newer), just redundant.
        """
        return await self._duties.sweep()

    async def add_node(self, spec: NodeSpec) -> Topology:
        """Add a node (state ``joining``, then ``up`` once it answers); leader only."""
        return await self._duties.add_node(spec)

    async def remove_node(self, node_id: str) -> Topology:
        """Remove a node from the topology (its keys move to the others); leader only."""
        return await self._duties.remove_node(node_id)

    async def set_weight(self, node_id: str, weight: float) -> Topology:
        """Change a node's weight; leader only."""
        return await self._duties.set_weight(node_id, weight)

    # ------------------------------------------------------------------ status

    def status(self) -> Status:
        """Nodes (state and health), leader, epoch, topology stamp, message counters.

        Reads the loop's clock: call it on the event loop (the Prometheus exporter goes
        through :meth:`Cluster.snapshot() <cachering.cluster.Cluster.snapshot>`).
        """
        return plane_status(self)
