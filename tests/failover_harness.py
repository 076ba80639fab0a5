"""Fault-test harness: managers (Clusters) in one process, a workload, a history, a checker.

Every operation of the workload is recorded with its start, end and outcome; every
manager's topology and leadership are sampled; every node's election epoch and stored
topology stamp are sampled with redis-py. :class:`Checker` then verifies the invariants
of the design (see ``DESIGN.md``, "Invariants the tests check").

Keys are single-writer: each manager writes only its own keys, with values
``b"<key>:<seq>"`` and rising ``seq``, so "stale" and "lost" have exact meanings.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import redis
from anyio.abc import TaskGroup

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.errors import CacheringError
from cachering.local import LocalCluster
from cachering.local.faults import FaultProxy
from cachering.node import NodeSpec
from cluster_helpers import pexpiretime

SECRET = b"failover-secret-0123456789abcdef"


def failover_config(nodes: Sequence[NodeSpec], ns: str, **options: Any) -> ClusterConfig:
    """Fast timers (0.1 s heartbeats), quorum writes, two copies, a secret."""
    base: dict[str, Any] = {
        "heartbeat_interval": 0.1,
        "failure_threshold": 3,
        "timeout": 0.5,
        "connect_timeout": 0.5,
        "node_backoff": 0.3,
        "topology_refresh_interval": 1.0,
        "replicas": 2,
        "consistency": "quorum",
        "sync_flush_interval": 0.002,
        "secret": SECRET,
        "anti_entropy_interval": 0.3,
    }
    base.update(options)
    return ClusterConfig(nodes=tuple(nodes), namespace=ns, **base)


async def _no_goodbye() -> None:
    """Stands in for ``ControlPlane.stop`` when a test simulates a crashed manager."""


@attrs.define
class Op:
    """One recorded operation."""

    manager: str
    kind: str  # "set" or "get"
    key: str
    seq: int  # written seq, or the seq read (-1: None)
    start: float
    end: float = 0.0
    ok: bool = False
    error: str = ""
    route: str = ""
    """For reads: the read order and routing state when the read started."""


def _seq_of(key: str, raw: bytes | None) -> int:
    if raw is None:
        return -1
    name, _, seq = raw.decode().rpartition(":")
    assert name == key, f"read {raw!r} for key {key!r}"
    return int(seq)


@attrs.define
class History:
    """Everything that happened during one run."""

    ops: list[Op] = attrs.Factory(list)
    leaders: dict[int, set[str]] = attrs.Factory(lambda: defaultdict(set))
    topologies: dict[str, list[tuple[float, tuple[int, int]]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    node_epochs: dict[str, list[int]] = attrs.Factory(lambda: defaultdict(list))
    node_topologies: dict[str, list[tuple[int, int]]] = attrs.Factory(lambda: defaultdict(list))
    restarted: set[str] = attrs.Factory(set)
    """Nodes that lost their state during the run (their samples may restart lower)."""
    notes: list[str] = attrs.Factory(list)


class Fleet:
    """Managers (each a Cluster in its own cancel scope) over one LocalCluster, with proxies.

    With ``proxied=True`` every manager reaches every node through its own FaultProxy, so
    a test can partition one manager from some nodes in either direction.
    """

    def __init__(self, tg: TaskGroup, local: LocalCluster, ns: str, **options: Any) -> None:
        self.tg = tg
        self.local = local
        self.ns = ns
        self.options = options
        self.clusters: dict[str, Cluster] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.proxies: dict[str, dict[str, FaultProxy]] = {}
        self.history = History()
        self.redis = {
            n.id: redis.Redis(host=n.host, port=n.port, socket_timeout=1) for n in local.nodes
        }
        self._sampling = True

    # ------------------------------------------------------------ managers

    async def start(self, manager_id: str, *, proxied: bool = False, **options: Any) -> Cluster:
        nodes: list[NodeSpec] = list(self.local.nodes)
        if proxied:
            row = {}
            for n in self.local.nodes:
                proxy = FaultProxy(n.host, n.port)
                await self.tg.start(proxy.serve)
                row[n.id] = proxy
            self.proxies[manager_id] = row
            nodes = [NodeSpec(n.id, row[n.id].host, row[n.id].port) for n in self.local.nodes]
        cfg = failover_config(nodes, self.ns, manager_id=manager_id, **{**self.options, **options})
        cluster = Cluster(cfg)
        scope = anyio.CancelScope()
        started = anyio.Event()

        async def run() -> None:
            with scope:
                async with cluster:
                    started.set()
                    await anyio.sleep_forever()

        self.tg.start_soon(run)
        await started.wait()
        self.clusters[manager_id] = cluster
        self.scopes[manager_id] = scope
        return cluster

    def kill(self, manager_id: str, *, graceful: bool = False) -> Cluster:
        """The manager's process dies: its scope is cancelled, by default without the
        goodbye a closing Cluster sends (as if the process crashed)."""
        cluster = self.clusters.pop(manager_id)
        if not graceful and cluster.control is not None:
            cluster.control.stop = _no_goodbye  # type: ignore[method-assign]
        self.scopes.pop(manager_id).cancel()
        return cluster

    def live(self) -> list[Cluster]:
        return list(self.clusters.values())

    def leader(self) -> Cluster | None:
        """The leader every live manager agrees on, if any."""
        live = self.live()
        leaders = [c for c in live if c.is_leader]
        if len(leaders) == 1 and all(c.leader == leaders[0].id for c in live):
            return leaders[0]
        return None

    async def until(self, check: Callable[[], bool], timeout: float = 40.0) -> None:
        """Wait until ``check()`` holds (a hang guard, not a speed requirement)."""
        with anyio.fail_after(timeout):
            while not check():
                await anyio.sleep(0.02)

    async def wait_leader(self) -> Cluster:
        await self.until(lambda: self.leader() is not None)
        lead = self.leader()
        assert lead is not None
        return lead

    def states(self, node: str) -> list[str]:
        return [c.topology.node(node).state for c in self.live() if node in c.topology]

    async def converged(self) -> None:
        """Every manager holds the same topology, every node of it is up and holds it, and
        no manager still keeps a node from reads for hints not replayed yet."""

        def check() -> bool:
            topos = {c.topology for c in self.live()}
            if len(topos) != 1:
                return False
            (t,) = topos
            lagging = any(c.control is not None and c.control.lagging for c in self.live())
            return all(n.state == "up" for n in t.nodes) and not lagging

        with anyio.fail_after(30):
            while True:
                await self.until(check, 30.0)
                topo = self.live()[0].topology
                held = await anyio.to_thread.run_sync(self._held, topo.ids)
                if all(stamp == topo.stamp for stamp in held) and check():
                    return
                await anyio.sleep(0.05)

    def _hints(self) -> int:
        total = 0
        for client in self.redis.values():
            try:
                for key in client.scan_iter(match=f"{self.ns}:hint*", count=1000):
                    total += 1 if b"overflow" in key else int(client.scard(key))
            except redis.RedisError:
                return -1
        return total

    async def drained(self, timeout: float = 20.0) -> None:
        """Wait until no hint is left on any node (the leader replayed them all)."""
        with anyio.fail_after(timeout):
            while await anyio.to_thread.run_sync(self._hints) != 0:
                await anyio.sleep(0.05)

    async def swept(self, timeout: float = 10.0) -> None:
        """Wait until some live manager has completed an anti-entropy sweep that started
        after this call (its second completed sweep from now: the first may have been
        under way already). A hang guard, not a speed requirement."""

        def sweeps(c: Cluster) -> int:
            return c.control.counters.anti_entropy_sweeps if c.control is not None else 0

        base = {c.id: sweeps(c) for c in self.live()}
        with anyio.fail_after(timeout):
            while not any(sweeps(c) >= base.get(c.id, 0) + 2 for c in self.live()):
                await anyio.sleep(0.02)

    def _held(self, ids: Iterable[str]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for node in ids:
            try:
                te, tv = self.redis[node].hmget(f"{self.ns}:ctl:topology", "epoch", "version")
            except redis.RedisError:
                out.append(None)
                continue
            out.append((int(te), int(tv)) if te is not None and tv is not None else None)
        return out

    # ------------------------------------------------------------ sampling

    async def sampler(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = anyio.current_time()
            for c in self.live():
                if c.is_leader:
                    self.history.leaders[c.epoch].add(c.id)
                topo = c.topology.stamp
                seq = self.history.topologies[c.id]
                if not seq or seq[-1][1] != topo:
                    seq.append((now, topo))
            await anyio.to_thread.run_sync(self._sample_nodes)
            await anyio.sleep(0.02)

    def _sample_nodes(self) -> None:
        h = self.history
        for node, client in list(self.redis.items()):
            try:
                epoch = client.hget(f"{self.ns}:ctl:election", "epoch")
                te, tv = client.hmget(f"{self.ns}:ctl:topology", "epoch", "version")
            except redis.RedisError:
                continue
            if epoch is not None:
                h.node_epochs[node].append(int(epoch))
            if te is not None and tv is not None:
                h.node_topologies[node].append((int(te), int(tv)))

    def add_redis(self, spec: NodeSpec) -> None:
        self.redis[spec.id] = redis.Redis(host=spec.host, port=spec.port, socket_timeout=1)

    def close(self) -> None:
        for client in self.redis.values():
            client.close()

    # ------------------------------------------------------------ workload

    async def workload(
        self,
        manager_id: str,
        keys: int = 20,
        *,
        pause: float = 0.005,
        task_status: Any = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write this manager's keys (rising seq) and read random keys, until cancelled."""
        rng = random.Random(manager_id)
        names = [f"{manager_id}-k{i}" for i in range(keys)]
        seqs = dict.fromkeys(names, 0)
        task_status.started()
        for i in itertools.count():
            cluster = self.clusters.get(manager_id)
            if cluster is None:
                return
            key = rng.choice(names)
            if i % 2 == 0:
                seqs[key] += 1
                op = Op(manager_id, "set", key, seqs[key], anyio.current_time())
                try:
                    await cluster.set(key, f"{key}:{seqs[key]}".encode())
                    op.ok = True
                except (CacheringError, RuntimeError) as exc:
                    op.error = type(exc).__name__
            else:
                op = Op(manager_id, "get", key, -1, anyio.current_time())
                op.route = (
                    f"{cluster.router.read_order(key.encode())} "
                    f"v{cluster.topology.stamp} lag={sorted(cluster.router.unreadable)}"
                )
                try:
                    op.seq = _seq_of(key, await cluster.get(key))
                    op.ok = True
                except (CacheringError, RuntimeError) as exc:
                    op.error = type(exc).__name__
            op.end = anyio.current_time()
            if manager_id not in self.clusters:
                return  # the manager died mid-call: the outcome is unknown, not a failure
            self.history.ops.append(op)
            await anyio.sleep(pause)


@asynccontextmanager
async def fleet(local: LocalCluster, ns: str, **options: Any) -> AsyncIterator[Fleet]:
    fleet_: Fleet | None = None
    try:
        async with anyio.create_task_group() as tg:
            fleet_ = Fleet(tg, local, ns, **options)
            await tg.start(fleet_.sampler)
            yield fleet_
            tg.cancel_scope.cancel()
    finally:
        # Only once the task group has exited: a sampler thread may still be using the
        # redis-py clients until its cancelled task has been waited for.
        if fleet_ is not None:
            fleet_.close()


class Checker:
    """The invariants, checked against a :class:`History` and the servers (redis-py)."""

    def __init__(self, history: History) -> None:
        self.h = history

    def one_leader_per_epoch(self) -> None:
        bad = {e: who for e, who in self.h.leaders.items() if len(who) > 1}
        assert not bad, f"several leaders in one epoch: {bad}"

    def epochs_never_go_backwards(self) -> None:
        for node, seq in self.h.node_epochs.items():
            if node in self.h.restarted:
                continue
            assert all(b >= a for a, b in itertools.pairwise(seq)), f"{node} epochs {seq}"

    def no_stale_topology_accepted(self) -> None:
        """Stored topology stamps only rise, and every manager's view only rises."""
        for node, seq in self.h.node_topologies.items():
            if node in self.h.restarted:
                continue
            assert all(b >= a for a, b in itertools.pairwise(seq)), f"{node} topologies {seq}"
        for manager, views in self.h.topologies.items():
            stamps = [s for _, s in views]
            assert stamps == sorted(stamps), f"{manager} saw topologies go back: {stamps}"

    def no_lost_or_stale(
        self, *, failed_reads_allowed: bool = True, misses_allowed: bool = True, strict: bool = True
    ) -> dict[str, int]:
        """No read older than a write acknowledged before it started.

        A read that finds nothing (a miss) is counted apart: a cache may lose a key (a
        node restarted empty, or the key moved to a new node) but never serve an older
        value. Returns the counts; with ``strict`` a violation fails the test.
        """
        acked: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for op in self.h.ops:
            if op.kind == "set" and op.ok:
                acked[op.key].append((op.end, op.seq))
        stale = []
        misses = 0
        failed_reads = 0
        for op in self.h.ops:
            if op.kind != "get":
                continue
            if not op.ok:
                failed_reads += 1
                continue
            floor = max((s for end, s in acked[op.key] if end < op.start), default=-1)
            if op.seq == -1 and floor >= 0:
                misses += 1
            elif op.seq < floor:
                stale.append((op.key, op.seq, floor, op.manager, round(op.start, 3), op.route))
        counts = {
            "reads": sum(op.kind == "get" for op in self.h.ops),
            "writes": sum(op.kind == "set" and op.ok for op in self.h.ops),
            "failed_writes": sum(op.kind == "set" and not op.ok for op in self.h.ops),
            "failed_reads": failed_reads,
            "stale_reads": len(stale),
            "misses": misses,
        }
        if strict:
            assert not stale, (
                f"stale reads (key, read seq, acknowledged seq, manager, at): {stale[:10]}; "
                f"notes: {self.h.notes}"
            )
            if not failed_reads_allowed:
                assert failed_reads == 0, f"{failed_reads} reads failed"
            if not misses_allowed:
                assert misses == 0, f"{misses} reads missed acknowledged keys"
        return counts

    async def final_values(self, cluster: Cluster, *, strict: bool = True) -> int:
        """After healing, every key reads at least its last acknowledged value.

        Returns how many keys read an older value or nothing (lost writes).
        """
        last: dict[str, int] = {}
        for op in self.h.ops:
            if op.kind == "set" and op.ok:
                last[op.key] = max(last.get(op.key, -1), op.seq)
        lost = []
        for key, seq in last.items():
            got = _seq_of(key, await cluster.get(key))
            if got < seq:
                lost.append((key, got, seq))
        if strict:
            assert not lost, f"acknowledged writes lost (key, read, acknowledged): {lost[:10]}"
        return len(lost)

    def copies_agree(self, cluster: Cluster, clients: dict[str, redis.Redis]) -> None:
        """Every home copy of every written key holds the same value and expiry."""
        keys = {op.key for op in self.h.ops if op.kind == "set"}
        prefix = f"{cluster.config.namespace}:k:"
        bad = []
        for key in sorted(keys):
            homes = cluster.preference_list(key)
            seen = set()
            for node in homes:
                client = clients[node]
                raw = client.get(prefix + key)
                exp = pexpiretime(client, prefix + key)
                seen.add((raw, exp))
            if len(seen) > 1:
                everywhere = {n: values.user_bytes(c.get(prefix + key)) for n, c in clients.items()}  # type: ignore[arg-type]
                bad.append((key, homes, everywhere))
        lost = {c.id: c.metrics().sync.counters.hints_lost for c in [cluster]}
        assert not bad, f"copies differ: {bad[:5]}; hints lost {lost}; notes {self.h.notes}"

    def only_on_homes(self, cluster: Cluster, clients: dict[str, redis.Redis]) -> None:
        """No written key is left on a node that is not one of its homes (stand-ins drop
        their copies once the homes hold them)."""
        keys = sorted({op.key for op in self.h.ops if op.kind == "set"})
        prefix = f"{cluster.config.namespace}:k:"
        members = set(cluster.topology.ids)  # a removed node's server is no business of ours
        strays = {}
        for key in keys:
            homes = set(cluster.preference_list(key))
            extra = [
                n
                for n, c in clients.items()
                if n in members and n not in homes and c.exists(prefix + key)
            ]
            if extra:
                strays[key] = (sorted(homes), extra)
        dropped = cluster.metrics().as_dict()["control"]["stand_in_copies_dropped"]
        assert not strays, f"copies outside their homes: {list(strays.items())[:5]}; {dropped=}"

    def same_topology_everywhere(
        self, clusters: Iterable[Cluster], clients: dict[str, redis.Redis], ns: str
    ) -> None:
        topos = {c.topology for c in clusters}
        assert len(topos) == 1, f"managers disagree: {[t.stamp for t in topos]}"
        (topo,) = topos
        for node in topo.ids:
            te, tv = clients[node].hmget(f"{ns}:ctl:topology", "epoch", "version")
            assert (int(te), int(tv)) == topo.stamp, f"{node} holds {(te, tv)}, not {topo.stamp}"  # type: ignore[arg-type]


async def check_all(
    f: Fleet, *, failed_reads_allowed: bool = True, misses_allowed: bool = True
) -> dict[str, int]:
    """Heal-time checks of every invariant; returns the workload counts."""
    await f.converged()
    lead = await f.wait_leader()
    await lead.wait_replicated()
    await f.drained()
    checker = Checker(f.history)
    checker.one_leader_per_epoch()
    checker.epochs_never_go_backwards()
    checker.no_stale_topology_accepted()
    counts = checker.no_lost_or_stale(
        failed_reads_allowed=failed_reads_allowed, misses_allowed=misses_allowed
    )
    await checker.final_values(lead)
    # Hints do not cover every fault (see cachering.repair.sweep): the copies must agree once an
    # anti-entropy sweep has run after healing. A copy still wrong after that is a violation.
    await f.swept()
    await anyio.to_thread.run_sync(checker.copies_agree, lead, f.redis)
    await anyio.to_thread.run_sync(checker.only_on_homes, lead, f.redis)
    await anyio.to_thread.run_sync(checker.same_topology_everywhere, f.live(), f.redis, f.ns)
    assert counts["reads"] > 0
    assert counts["writes"] > 0
    return counts
