"""The :class:`Cluster` facade: what applications call.

>>> async with Cluster(ClusterConfig.from_urls(urls)) as cluster:    # doctest: +SKIP
...     await cluster.set("user:42", b"...", ttl=60)
...     await cluster.get("user:42")
b'...'

Each key lives on its home copies (:meth:`Cluster.home_nodes`). Writes carry a
version and go through one apply-if-newer Lua script on every copy (the write engine is
:class:`~cachering.data.writes.Writes`; see also :mod:`cachering.data.values` and
:mod:`cachering.data.scripts`); reads try the copies in order and fall back on a
connection error or timeout within the same call.

The failover layer (:class:`~cachering.control.plane.ControlPlane`: health, election, topology,
repair) runs in the cluster's task group unless ``config.control_plane`` is False. It
routes by the committed topology: every node stays on the ring whatever its state (so
its keys do not move while it is away); ``down`` nodes take no writes (the next node
stands in and records a hint), ``recovering``/``joining`` nodes and nodes with hints not
replayed yet serve no reads, and nodes this manager's heartbeats fail on are routed
around at once, before the leader has said anything.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .config import ClusterConfig, Consistency
from .control.plane import ControlPlane
from .control.topology import Topology
from .data import values
from .data.keys import data_prefix, fence_key, invalidation_channel
from .data.nearcache import (
    InvalidationCodec,
    InvalidationPublisher,
    InvalidationSubscriber,
    NearCache,
)
from .data.reads import Reads
from .data.replication import Synchronizer
from .data.routing import Router
from .data.scripts import APPLY
from .data.servertime import ServerTime
from .data.writes import TTL, Items, Key, Value, Writes, key_bytes
from .errors import NodeUnavailable, ResponseError, raise_sole_cause
from .events import EventBus, Subscription
from .messages import Keyring, MessageCodec
from .metrics import (
    CallCounters,
    ControlMetrics,
    Metrics,
    NearCacheCounters,
    NearCacheMetrics,
    NodeStatus,
    Status,
    SyncCounters,
    SyncMetrics,
    TopologyStamp,
    snapshot_of,
)
from .node import NodeSpec
from .repair.fence import read_fence
from .resp import Pool, PubSub, ReplyLimits
from .resp.connection import Connection
from .snapshot import LoopSnapshot
from .tracing import traced

__all__ = ["Cluster"]


class Cluster:
    """A sharded, replicated cache over the nodes of ``config``; use ``async with``.

    An exception that ends the ``async with`` block comes out as itself (so ``except
    NodeUnavailable`` around the block works), not wrapped in an ``ExceptionGroup`` by
    the cluster's task group. A group comes out only when several things failed at once
    (the block and a background service, say); it holds each of them.
    """

    def __init__(self, config: ClusterConfig) -> None:
        if not isinstance(config, ClusterConfig):
            raise TypeError(f"config must be a ClusterConfig, got {type(config).__name__}")
        self.config = config
        self.instance = values.writer_id() + os.urandom(8)  # its head is the writer id
        """Random id of this Cluster object (origin of its invalidation messages)."""
        self.id = config.manager_id or self.instance.hex()
        """Manager id: ``config.manager_id`` or random."""
        self._time = ServerTime()
        self._clock = values.HybridClock(self.instance[:8], wall_ms=self._time.now_ms)
        self._prefix = data_prefix(config.namespace)
        self.router = Router(config, clock=anyio.current_time)
        """Routing state; the failover layer swaps rings and marks nodes through it."""
        self._pools: dict[str, Pool] = {}
        self._tg: TaskGroup | None = None
        self._sync: Synchronizer | None = None
        self._near: NearCache | None = None
        self._near_stats = NearCacheCounters()
        self._publisher: InvalidationPublisher | None = None
        self._subscriber: InvalidationSubscriber | None = None
        self._state = "new"
        self._counters = CallCounters()
        self._ops = self._counters.ops
        self._errors = self._counters.errors
        self._snapshots = LoopSnapshot(self._take_snapshot)
        self._bus = EventBus()
        self.control: ControlPlane | None = None
        """The failover layer (None when ``config.control_plane`` is off)."""
        self._health_marked: frozenset[str] = frozenset()
        self._writes: Writes  # built complete in __aenter__, used only while open
        self._run_ids: dict[str, str] = {}  # node -> run_id its data connections last saw
        self._reads = Reads(
            config.namespace,
            self.router,
            self._pools,
            on_failure=self._failed,
            counters=self._counters,
            default_level=config.read_consistency,
            hint_limit=config.hint_limit,
        )

    # ---------------------------------------------------------------- lifecycle

    def _build_invalidation(self) -> None:
        """Build the invalidation publisher and the near cache with its subscriber."""
        c = self.config
        channel = invalidation_channel(c.namespace)
        keyring = None
        if c.secret is not None:
            keyring = Keyring(dict(c.secret), active=c.secret[0][0])
        codec = InvalidationCodec(
            MessageCodec(keyring, c.namespace, c.max_message_size), self.instance.hex()
        )
        if c.publishes_invalidations:
            self._publisher = InvalidationPublisher(
                self._pools,
                lambda: self.router.ring.nodes,
                channel=channel,
                codec=codec,
                interval=c.sync_flush_interval,
                timeout=c.timeout,
                stats=self._near_stats,
            )
        if c.near_cache_size:
            self._near = NearCache(c.near_cache_size, c.near_cache_ttl, clock=anyio.current_time)
            self._near.stats = self._near_stats
            self._reads.near = self._near
            self._subscriber = InvalidationSubscriber(
                self._near,
                c.nodes,
                lambda order: [n for n in order if not self.router.is_suspect(n)],
                channel=channel,
                codec=codec,
                retry_delay=min(max(c.node_backoff, 0.05), 1.0),
                on_failure=self._failed,
                pubsub_factory=lambda spec: PubSub(
                    spec,
                    connect_timeout=c.connect_timeout,
                    limits=ReplyLimits.for_values(c.max_message_size),
                ),
            )

    async def __aenter__(self) -> Cluster:
        if self._state != "new":
            raise RuntimeError("a Cluster can be entered only once")
        self._state = "open"
        c = self.config
        for node in c.nodes:
            self._pools[node.id] = self._data_pool(node)
        self._sync = Synchronizer(
            self._pools,
            APPLY,
            namespace=c.namespace,
            batch_size=c.sync_batch_size,
            flush_interval=c.sync_flush_interval,
            queue_size=c.sync_queue_size,
            hint_limit=c.hint_limit,
            timeout=c.timeout,
            on_failure=self._failed,
        )
        self._build_invalidation()
        if c.control_plane:
            self.control = ControlPlane(
                c, manager_id=self.id, bus=self._bus, on_change=self._route_by_topology
            )
        self._writes = Writes(
            c,
            self.router,
            self._pools,
            self._clock,
            self._sync,
            self._time,
            on_failure=self._failed,
            counters=self._counters,
            near=self._near,
            publisher=self._publisher,
            note_hinted=self.control.note_hinted if self.control is not None else None,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._sync.run)
            await self._tg.start(self._snapshots.run)
            if self._publisher is not None:
                await self._tg.start(self._publisher.run)
            if self._subscriber is not None:
                await self._tg.start(self._subscriber.run)
            if self.control is not None:
                await self._tg.start(self.control.run)
        except BaseException as exc:
            self._tg.cancel_scope.cancel()
            try:
                await self._tg.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseException as error:
                raise_sole_cause(error)
            finally:
                await self._close_pools()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        assert self._sync is not None
        self._state = "closed"
        try:
            with anyio.CancelScope(shield=True):
                if self.control is not None:
                    await self.control.stop()
                with anyio.move_on_after(self.config.sync_shutdown_timeout) as scope:
                    self._sync.close()
                    await self._sync.finished.wait()
                    if self._publisher is not None:
                        await self._publisher.close()
                if scope.cancelled_caught:
                    self._sync.abandon()
        finally:
            self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        except BaseException as error:  # one cause: raise it, not a group of one
            raise_sole_cause(error)
        finally:
            await self._close_pools()

    async def _close_pools(self) -> None:
        with anyio.CancelScope(shield=True):
            for pool in self._pools.values():
                await pool.aclose()

    def _data_pool(self, spec: NodeSpec) -> Pool:
        c = self.config
        return Pool(
            spec,
            max_size=c.pool_size,
            connect_timeout=c.connect_timeout,
            timeout=c.timeout,
            limits=ReplyLimits.for_values(c.max_value_size),
            on_connect=self._fence_check(spec.id) if c.control_plane else None,
        )

    def _fence_check(self, node: str) -> Callable[[Connection], Awaitable[None]]:
        """What every new data connection to ``node`` checks first: that the node holds no
        data from before a restart (:mod:`cachering.repair.fence`)."""

        async def check(conn: Connection) -> None:
            ns, timeout = self.config.namespace, self.config.timeout
            try:
                run_id, fence = await read_fence(conn, ns, timeout)
                if run_id is None:
                    return  # the server hides INFO: cannot tell
                known = self._run_ids.get(node)
                self._run_ids[node] = run_id
                seen = known is None or known == run_id  # no restart under our eyes
                mark = True
                if fence is None:
                    await conn.execute("SET", fence_key(ns), run_id, "NX", timeout=timeout)
                    if seen:
                        return
                    reason = "restarted empty"  # under our eyes: resync it before reads
                elif fence == run_id.encode():
                    if seen:
                        return
                    # Another manager claimed the fence of the node that restarted empty
                    # (and set the markers), or the leader vouched for it already: no
                    # reads from here until the topology shows it repaired.
                    reason, mark = "restarted, not repaired yet", False
                else:
                    reason = "restarted with data from before, not repaired yet"
            except ResponseError:
                return  # the server refuses INFO, GET or SET here: cannot tell
            if self.control is not None:
                self.control.note_restarted(node, mark=mark)
            raise NodeUnavailable(node, reason)

        return check

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError("use the Cluster inside 'async with Cluster(config) as cluster:'")

    def _failed(self, node: str) -> None:
        self._errors[node] += 1
        self.router.report_failure(node)

    def _route_by_topology(self, topology: Topology, suspects: frozenset[str]) -> None:
        """The control plane's view changed: swap the routing (one assignment)."""
        assert self.control is not None
        c = self.config
        for tnode in topology.nodes:
            if tnode.id not in self._pools:
                self._pools[tnode.id] = self._data_pool(self.control.spec(tnode.id))
        lagging = self.control.lagging
        # cut off from the majority: no node's state can be confirmed (unless opted out)
        blind = self.control.partitioned and not c.stale_reads_in_partition
        self.router.swap(
            {n.id: n.weight for n in topology.nodes},
            unreadable=[n.id for n in topology.nodes if blind or not n.readable or n.id in lagging],
            unwritable=[n.id for n in topology.nodes if not n.writable],
        )
        for node in suspects - self._health_marked:
            self.router.mark_suspect(node)
        for node in self._health_marked - suspects:
            self.router.clear_suspect(node)
        self._health_marked = suspects

    # ---------------------------------------------------------------- failover

    def _need_control(self) -> ControlPlane:
        self._check_open()
        if self.control is None:
            raise RuntimeError("the control plane is off (config.control_plane=False)")
        return self.control

    @property
    def is_leader(self) -> bool:
        """Whether this manager is the cluster's leader right now."""
        return self.control is not None and self.control.is_leader

    @property
    def leader(self) -> str | None:
        """The id of the leader this manager knows of (None: none known, or no control plane)."""
        return self.control.leader if self.control is not None else None

    @property
    def epoch(self) -> int:
        """The highest election epoch this manager has seen (0 without a control plane)."""
        return self.control.epoch if self.control is not None else 0

    @property
    def topology(self) -> Topology:
        """The topology this manager routes by."""
        if self.control is not None:
            return self.control.topology
        return Topology.initial(self.config.nodes)

    def events(self, size: int = 256) -> Subscription:
        """Subscribe to cluster events (node down/up, leader changes...); ``async with`` it.

        A subscriber that falls behind loses the oldest events (counted in ``dropped``).
        """
        return self._bus.subscribe(size)

    def status(self) -> Status:
        """Nodes (state, health, latency, last seen), leader, epoch, topology, messages.

        Call it on the event loop; from another thread use :meth:`snapshot`.
        ``status().as_dict()`` is the JSON-ready form.
        """
        if self.control is None:
            c = self.config
            return Status(
                manager=self.id,
                leader=None,
                control_plane=False,
                topology=TopologyStamp(0, 0),
                nodes={n.id: NodeStatus(state="up", weight=n.weight) for n in c.nodes},
                is_leader=False,
                epoch=0,
                secret_configured=c.secret is not None,
                events_published=self._bus.published,
            )
        return self.control.status()

    @traced("add_node")
    async def add_node(self, spec: NodeSpec) -> Topology:
        """Add a node (leader only; others raise :class:`~cachering.control.plane.NotLeader`)."""
        return await self._need_control().add_node(spec)

    @traced("remove_node")
    async def remove_node(self, node_id: str) -> Topology:
        """Remove a node from the topology (leader only)."""
        return await self._need_control().remove_node(node_id)

    @traced("set_weight")
    async def set_weight(self, node_id: str, weight: float) -> Topology:
        """Change a node's weight (leader only)."""
        return await self._need_control().set_weight(node_id, weight)

    # ---------------------------------------------------------------- routing

    def node_for(self, key: Key) -> str:
        """The node that would take a write of ``key`` now: its primary, or the node
        standing in for it while this manager routes around it (see :meth:`home_nodes`)."""
        return self.router.write_plan(key_bytes(key))[0][0]

    def preference_list(self, key: Key) -> tuple[str, ...]:
        """The nodes a write of ``key`` goes to now, acting primary first: the home nodes
        with stand-ins in place of the ones routed around (down, suspect)."""
        return self.router.write_plan(key_bytes(key))[0]

    def home_nodes(self, key: Key) -> tuple[str, ...]:
        """``key``'s home copies on the ring, primary first, whatever their health: where
        the key lives when every node is up (hints bring a missed home up to date)."""
        return self.router.preference_list(key_bytes(key))

    # ---------------------------------------------------------------- reads

    @traced("get", "key")
    async def get(self, key: Key, *, consistency: Consistency | None = None) -> bytes | None:
        """The value of ``key``, or None.

        ``consistency`` (default ``config.read_consistency``): ``"one"`` reads the first
        readable home copy and falls back to the next if a node fails; ``"quorum"`` and
        ``"all"`` read a majority (all) of the home copies, return the newest version and
        repair the copies that are behind, or raise
        :class:`~cachering.errors.ConsistencyError` if too few answer.
        """
        self._check_open()
        return await self._reads.get(key, consistency)

    @traced("exists", "key")
    async def exists(self, key: Key) -> bool:
        """Whether ``key`` holds a value (deleted and expired keys do not)."""
        self._check_open()
        return await self._reads.exists(key)

    @traced("ttl", "key")
    async def ttl(self, key: Key) -> float | None:
        """Seconds until ``key`` expires; ``math.inf`` without expiry; None if missing."""
        self._check_open()
        return await self._reads.ttl(key)

    @traced("get_many", "batch")
    async def get_many(
        self, keys: Iterable[Key], *, consistency: Consistency | None = None
    ) -> list[bytes | None]:
        """Values of ``keys`` (None where missing), in order; one MGET per node, in parallel.

        ``consistency`` as for :meth:`get`.
        """
        self._check_open()
        return await self._reads.get_many(keys, consistency)

    # ---------------------------------------------------------------- writes

    @traced("set", "key")
    async def set(
        self, key: Key, value: Value, *, ttl: TTL = None, consistency: Consistency | None = None
    ) -> None:
        """Store ``value`` under ``key`` (``ttl`` in seconds or a timedelta; None = no expiry)."""
        self._check_open()
        await self._writes.set(key, value, ttl, consistency)

    @traced("set_many", "batch")
    async def set_many(
        self,
        mapping: Items,
        *,
        ttl: TTL = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Store many keys (same ``ttl`` for all); one pipeline per node, in parallel.

        All keys of one call share one version; with repeated keys the last value wins.
        An empty mapping writes nothing.
        """
        self._check_open()
        await self._writes.set_many(mapping, ttl, consistency)

    @traced("delete", "key")
    async def delete(self, key: Key, *, consistency: Consistency | None = None) -> bool:
        """Delete ``key``; True if it held a value (as seen by the node that took the delete)."""
        self._check_open()
        return await self._writes.delete(key, consistency)

    @traced("delete_many", "batch")
    async def delete_many(
        self, keys: Iterable[Key], *, consistency: Consistency | None = None
    ) -> int:
        """Delete ``keys``; returns how many held a value (0 for no keys)."""
        self._check_open()
        return await self._writes.delete_many(keys, consistency)

    # ---------------------------------------------------------------- status

    @traced("wait_replicated")
    async def wait_replicated(self) -> None:
        """Wait until every replica write handed to the synchronizer so far was sent.

        It deletes nothing (unlike ``FLUSHDB`` or ``flush_all`` elsewhere): it waits for
        the background replica writes of level ``one`` and the pending near-cache
        announcements."""
        self._check_open()
        assert self._sync is not None
        await self._sync.flush()
        if self._publisher is not None:
            await self._publisher.flush()

    def _control_metrics(self) -> ControlMetrics | None:
        control = self.control
        if control is None:
            return None
        return ControlMetrics(
            counters=snapshot_of(control.counters),
            election=snapshot_of(control.election.stats),
            health_suspects=len(control.suspects()),
            lagging=len(control.lagging),
        )

    def metrics(self) -> Metrics:
        """A snapshot of every counter (``metrics().as_dict()`` is the JSON-ready form).

        Call it on the event loop; from another thread use :meth:`snapshot`.
        """
        calls: CallCounters = snapshot_of(self._counters)
        for node in self._pools:
            calls.errors.setdefault(node, 0)  # every node's series exists before its first error
        sync = self._sync
        near = self._near
        return Metrics(
            calls=calls,
            sync=SyncMetrics(
                queue_depth=sync.depth if sync is not None else 0,
                counters=snapshot_of(sync.stats) if sync is not None else SyncCounters(),
            ),
            near_cache=NearCacheMetrics(
                enabled=near is not None,
                size=len(near) if near is not None else 0,
                counters=snapshot_of(self._near_stats),
            ),
            control=self._control_metrics(),
            suspects=tuple(sorted(self.router.suspects())) if self._state == "open" else (),
            events_dropped=self._bus.dropped,
        )

    def snapshot(self, timeout: float = 5.0) -> tuple[Metrics, Status]:
        """:meth:`metrics` and :meth:`status` taken together on the event loop.

        Safe from any thread: from another one (a Prometheus scrape) the snapshot is
        taken by a task on the cluster's loop and handed back
        (:class:`~cachering.snapshot.LoopSnapshot`), so no loop state is read or changed
        off the loop. Raises :class:`RuntimeError` when the cluster is not open and
        :class:`TimeoutError` when the loop does not answer within ``timeout`` seconds.
        """
        if self._state != "open":
            raise RuntimeError("the Cluster is not open")
        try:
            return self._snapshots.get(timeout)
        except RuntimeError:
            raise RuntimeError("the Cluster is not open") from None

    def _take_snapshot(self) -> tuple[Metrics, Status]:
        return self.metrics(), self.status()
