"""The engine of ``cachering demo``: managers, workload, fault schedule, live display.

See :mod:`cachering.cli.demo` for the timeline and the command's options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import time
from typing import Any

import anyio

from ..cluster import Cluster
from ..config import ClusterConfig
from ..errors import CacheringError
from ..local import LocalCluster
from ..resp import Pool
from .output import Live, Style, fmt_count, fmt_percent, table
from .workload import Workload

__all__ = ["run_demo"]


# ------------------------------------------------------------------ the managers' view


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:10] + "..."


def _plain(value: Any) -> Any:
    """``value`` as JSON types, nothing shortened (tuples and sets become lists)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


def _event_json(at: float, text: str, detail: dict[str, Any] | None) -> dict[str, Any]:
    """One event of ``demo --json``: the cluster event's kind, manager and every field
    untruncated, or ``kind: "demo"`` for the demo's own steps; ``text`` as printed."""
    out: dict[str, Any] = {"at": round(at, 3), "text": text}
    if detail is None:
        out.update(kind="demo", manager=None, fields={})
    else:
        out.update(detail)
    return out


class _View:
    """What the managers believe right now, read from each :class:`Cluster`."""

    def __init__(self, clusters: list[Cluster]) -> None:
        self.clusters = clusters
        self.statuses: list[dict[str, Any] | None] = [None] * len(clusters)

    @property
    def has_failover(self) -> bool:
        """Whether the clusters run the failover layer (a control plane behind status())."""
        return self.clusters[0].control is not None

    async def refresh(self) -> None:
        """Read every manager's status() (when the failover layer provides it)."""
        if not self.has_failover:
            return
        for i, c in enumerate(self.clusters):
            try:
                self.statuses[i] = c.status().as_dict()
            except (CacheringError, RuntimeError):
                self.statuses[i] = None

    def routes_around(self, c: Cluster, node: str) -> bool:
        """Whether manager ``c`` neither reads from ``node`` nor writes to it first."""
        router = c.router
        if node not in router.ring.nodes or router.is_suspect(node):
            return True
        return node in router.unreadable or node in router.unwritable

    def all_route_around(self, node: str) -> bool:
        """Whether every manager routes around ``node``."""
        return all(self.routes_around(c, node) for c in self.clusters)

    def all_route_to(self, node: str) -> bool:
        """Whether every manager serves from ``node`` again."""
        return not any(self.routes_around(c, node) for c in self.clusters)

    def topology_state(self, node: str) -> str | None:
        """The node's state in the newest topology any manager holds, if known."""
        best: tuple[tuple[int, int], str] | None = None
        for st in self.statuses:
            if not st:
                continue
            topo = st.get("topology")
            stamp = (0, 0)
            if isinstance(topo, dict):
                stamp = (int(topo.get("epoch") or 0), int(topo.get("version") or 0))
            nodes = st.get("nodes")
            entry: Any = None
            if isinstance(nodes, dict):
                entry = nodes.get(node)
            elif isinstance(nodes, list):
                entry = next(
                    (n for n in nodes if isinstance(n, dict) and n.get("id") == node), None
                )
            if isinstance(entry, dict) and entry.get("state") and (best is None or stamp > best[0]):
                best = (stamp, str(entry["state"]))
        return None if best is None else best[1]

    def state(self, node: str) -> str:
        """One word for the node: topology state, or ``suspect`` if a manager routes around it."""
        topo = self.topology_state(node)
        if topo is not None and topo != "up":
            return topo
        if any(self.routes_around(c, node) for c in self.clusters):
            return "suspect"
        return topo or "up"

    def leader(self) -> tuple[str | None, int | None, str | None]:
        """(leader, epoch, topology stamp text) as the managers report them."""
        leader, epoch, stamp = None, None, None
        for st in self.statuses:
            if not st:
                continue
            if st.get("leader") and leader is None:
                leader = str(st["leader"])
            e = st.get("epoch")
            if isinstance(e, int) and (epoch is None or e > epoch):
                epoch = e
            topo = st.get("topology")
            if isinstance(topo, dict) and stamp is None:
                stamp = f"{topo.get('epoch')}.{topo.get('version')}"
        return leader, epoch, stamp


# ------------------------------------------------------------------ the run


class _Demo:
    def __init__(self, args: argparse.Namespace, style: Style) -> None:
        self.args = args
        self.style = style
        self.quiet = args.json
        self.live = Live(style)
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        self.rnd = random.Random(self.seed)
        # (time, text for people, structured event for --json: None for the demo's own)
        self.events: list[tuple[float, str, dict[str, Any] | None]] = []
        self.t0 = time.monotonic()
        self.phase = "starting"
        self.timing: dict[str, Any] = {}
        self.keycounts: dict[str, int | None] = {}
        self.last_ops = 0
        self.last_t = 0.0
        self.throughput = 0.0
        self.seen_events: set[tuple[Any, ...]] = set()
        self.fault_round = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str, detail: dict[str, Any] | None = None) -> None:
        t = self.now()
        self.events.append((t, text, detail))
        if not self.quiet and not self.style.live:
            stamp = "  setup " if self.phase == "starting" else f"{t:6.2f}s"
            self.style.write(f"[{stamp}] {text}")

    async def main(self) -> dict[str, Any]:
        a = self.args
        self.event(f"starting {a.nodes} redis-server processes")
        async with LocalCluster(a.nodes, server=a.server) as local:
            self.local = local
            secret = os.urandom(32)
            configs = [
                ClusterConfig(
                    nodes=local.nodes,
                    replicas=a.replicas,
                    consistency="quorum",
                    namespace="demo",
                    heartbeat_interval=a.heartbeat,
                    timeout=0.5,
                    connect_timeout=0.5,
                    node_backoff=max(0.5, 2 * a.heartbeat),
                    secret={"k1": secret},
                    manager_id=f"m{i}",
                )
                for i in range(a.managers)
            ]
            async with contextlib.AsyncExitStack() as stack:
                clusters = [await stack.enter_async_context(Cluster(c)) for c in configs]
                self.view = _View(clusters)
                self.pools = {
                    n.id: await stack.enter_async_context(
                        Pool(n, max_size=1, connect_timeout=0.2, timeout=0.2)
                    )
                    for n in local.nodes
                }
                self.workload = Workload(
                    clusters,
                    keys=a.keys,
                    workers_per_manager=4,
                    write_ratio=0.3,
                    rate=a.rate,
                    seed=self.seed,
                )
                self.event(f"{a.managers} managers connected; writing {a.keys:,} keys")
                await self.workload.preload()
                return await self._run(clusters)

    async def _run(self, clusters: list[Cluster]) -> dict[str, Any]:
        a = self.args
        victim_i = self.rnd.randrange(a.nodes)
        victim = self.local.nodes[victim_i].id
        self.phase = "running"
        start = time.monotonic()
        # Times count from the workload's start; setup events get negative times.
        self.events = [(at - (start - self.t0), text, d) for at, text, d in self.events]
        self.t0 = start
        self.event("workload running (30% writes at quorum, 70% reads)")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.workload.run)
            tg.start_soon(self._display_loop)
            for c in clusters:
                tg.start_soon(self._watch_events, c)
            await self._scenario(victim_i, victim)
            self.workload.stop()
            self.phase = "verifying"
            tg.cancel_scope.cancel()
        self.live.close()
        with anyio.move_on_after(10):
            for c in clusters:
                await c.wait_replicated()
        lost, checked = await self.workload.verify(clusters[0])
        await self.view.refresh()
        return self._summary(victim, lost, checked)

    async def _scenario(self, victim_i: int, victim: str) -> None:
        a = self.args
        d = a.duration
        view = self.view
        await anyio.sleep(max(0.0, 0.3 * d - self.now()))
        self.phase = f"{victim} killed"
        self.fault_round += 1
        self.workload.tally.phase = "node down"
        await anyio.to_thread.run_sync(self.local.kill, victim_i)
        killed_at = self.now()
        self.timing.update(node=victim, killed_at=round(killed_at, 3))
        self.event(f"killed {victim} (SIGKILL)")
        # Failover: from the kill until every manager routes around the node; with the
        # failover layer, also until the leader has marked it down in the topology.
        detected = routed = marked = None
        need_mark = view.has_failover
        deadline = max(0.55 * d, killed_at + 0.1)
        give_up = killed_at + max(0.8 * d, 30 * a.heartbeat)
        while self.now() < deadline or routed is None or (need_mark and marked is None):
            if detected is None and any(view.routes_around(c, victim) for c in view.clusters):
                detected = self.now() - killed_at
                self.event(f"{victim} detected: a manager routes around it")
            if routed is None and view.all_route_around(victim):
                routed = self.now() - killed_at
                self.event(f"failover: all {a.managers} managers route around {victim}")
            if need_mark and marked is None and view.topology_state(victim) == "down":
                marked = self.now() - killed_at
                self.event(f"{victim} marked down in the topology")
            if self.now() > give_up:
                break  # not failing over: report it rather than hang
            await anyio.sleep(0.01)
            await view.refresh()
        self.timing["detected_s"] = None if detected is None else round(detected, 3)
        self.timing["failover_s"] = None if routed is None else round(routed, 3)
        self.timing["marked_down_s"] = None if marked is None else round(marked, 3)
        self.phase = f"restarting {victim}"
        self.fault_round += 1
        self.workload.tally.phase = "restarted, not rejoined"
        await anyio.to_thread.run_sync(self.local.restart, victim_i)
        restarted_at = self.now()
        self.timing["restarted_at"] = round(restarted_at, 3)
        self.event(f"restarted {victim} (empty, same port)")
        self.phase = f"{victim} rejoining"
        grace = max(5.0, 25 * a.heartbeat)
        rejoined = None
        while True:
            if rejoined is None and view.all_route_to(victim):
                state = view.topology_state(victim)
                if state in (None, "up"):
                    rejoined = self.now() - restarted_at
                    self.event(f"{victim} rejoined: every manager serves from it again")
                    self.workload.tally.phase = "after rejoin"
                    self.phase = "running"
            if self.now() >= d and (rejoined is not None or self.now() >= d + grace):
                break
            await anyio.sleep(0.01)
            await view.refresh()
        self.timing["rejoin_s"] = None if rejoined is None else round(rejoined, 3)
        self.event("workload stopping; reading every key back")

    async def _watch_events(self, cluster: Cluster) -> None:
        async with cluster.events() as sub:
            async for ev in sub:
                fields, kind = ev.fields(), ev.kind
                # Every manager reports the same change; show the first report of each
                # (per-manager health events once per fault).
                if kind in ("NodeSuspect", "NodeHealthy", "NodeRestarted"):
                    key: tuple[Any, ...] = (kind, fields.get("node"), self.fault_round)
                else:
                    key = (kind, fields.get("node"), fields.get("epoch"), fields.get("version"))
                if key in self.seen_events:
                    continue
                self.seen_events.add(key)
                body = " ".join(
                    f"{k}={_short(v)}" for k, v in fields.items() if v not in ("", None)
                )
                detail = {"manager": cluster.id, "kind": kind, "fields": _plain(fields)}
                self.event(f"{cluster.id}: {kind} {body}", detail)

    async def _count_keys(self) -> None:
        for node, pool in self.pools.items():
            try:
                self.keycounts[node] = int(await pool.execute("DBSIZE"))
            except CacheringError:
                self.keycounts[node] = None

    async def _display_loop(self) -> None:
        every = 0.25 if self.style.live else 1.0
        while True:
            await self.view.refresh()
            await self._count_keys()
            t = self.now()
            ops = self.workload.tally.ops
            if t - self.last_t >= 0.2:  # shorter windows give noisy rates
                self.throughput = (ops - self.last_ops) / (t - self.last_t)
                self.last_ops, self.last_t = ops, t
            if not self.quiet:
                if self.style.live:
                    self.live.update(self._panel())
                else:
                    self.style.write(self._line())
            await anyio.sleep(every)

    def _node_rows(self) -> list[dict[str, Any]]:
        shares = self.view.clusters[0].router.ring.ownership()
        rows = []
        for i, spec in enumerate(self.local.nodes):
            rows.append(
                {
                    "id": spec.id,
                    "process": "running" if self.local.is_running(i) else "killed",
                    "state": self.view.state(spec.id),
                    "keys": self.keycounts.get(spec.id),
                    "owns": shares.get(spec.id, 0.0),
                }
            )
        return rows

    def _line(self) -> str:
        t = self.workload.tally
        leader, epoch, _ = self.view.leader()
        hit = t.hits / (t.hits + t.misses) if t.hits + t.misses else None
        nodes = " ".join(
            f"{r['id']}:{r['state']}:{fmt_count(r['keys']).replace(',', '')}"
            for r in self._node_rows()
        )
        return (
            f"[{self.now():6.2f}s] ops/s={self.throughput:.0f} hit={fmt_percent(hit)} "
            f"failed_reads={t.failed_reads} stale={t.stale_reads} leader={leader or '-'} "
            f"epoch={'-' if epoch is None else epoch} nodes={nodes}"
        )

    def _panel(self) -> list[str]:
        s = self.style
        a = self.args
        t = self.workload.tally
        leader, epoch, stamp = self.view.leader()
        hit = t.hits / (t.hits + t.misses) if t.hits + t.misses else None
        bad = t.failed_reads + t.stale_reads
        lines = [
            s.paint("cachering demo", "bold")
            + f"  {self.now():5.1f}s / {a.duration:g}s  {a.nodes} nodes  replicas {a.replicas}"
            + f"  {a.managers} managers  heartbeat {a.heartbeat:g}s  seed {self.seed}",
            f"phase: {s.paint(self.phase, 'cyan')}",
            f"throughput {self.throughput:8,.0f} ops/s   hit rate {fmt_percent(hit)}   "
            f"ops {t.ops:,}   failed writes {t.failed_writes}",
            "failed reads "
            + s.paint(str(t.failed_reads), "red" if t.failed_reads else "green")
            + "   stale reads "
            + s.paint(str(t.stale_reads), "red" if t.stale_reads else "green")
            + ("" if bad else "   (all reads correct so far)"),
            f"leader {leader or '-'}   epoch {'-' if epoch is None else epoch}   "
            f"topology {stamp or '-'}",
        ]
        if self.view.has_failover:
            names = []
            for c, st in zip(self.view.clusters, self.view.statuses, strict=True):
                mark = s.paint(" (leader)", "green") if st and st.get("is_leader") else ""
                names.append(c.id + mark)
            lines.append("managers " + ", ".join(names))
        lines.append("")
        rows = [
            [
                r["id"],
                s.state(r["state"]),
                s.state(r["process"]) if r["process"] == "killed" else r["process"],
                fmt_count(r["keys"]),
                fmt_percent(r["owns"]),
            ]
            for r in self._node_rows()
        ]
        lines += table(["NODE", "STATE", "PROCESS", "KEYS", "OWNS"], rows, right=(3, 4))
        lines.append("")
        lines.append(s.paint("events", "bold"))
        for at, text, _ in self.events[-8:]:
            lines.append(f"  {at:6.2f}s  {text}")
        return lines

    def _summary(self, victim: str, lost: int, checked: int) -> dict[str, Any]:
        a = self.args
        t = self.workload.tally
        elapsed = self.now()
        violations: list[str] = []
        checks_apply = a.replicas >= 2
        if checks_apply:
            if t.failed_reads:
                violations.append(f"{t.failed_reads} failed read(s) with a replica alive")
            if lost:
                violations.append(f"{lost} acknowledged write(s) lost")
            if t.stale_reads:
                violations.append(f"{t.stale_reads} stale read(s)")
            if self.timing.get("failover_s") is None:
                violations.append(f"the managers never routed around {victim}")
            if self.view.has_failover and self.timing.get("marked_down_s") is None:
                violations.append(f"the leader never marked {victim} down")
            if self.timing.get("rejoin_s") is None:
                violations.append(f"{victim} did not rejoin")
        leader, epoch, stamp = self.view.leader()
        return {
            "ok": not violations,
            "violations": violations,
            "examples": list(t.examples),
            "invariants_checked": checks_apply,
            "failover_layer": self.view.has_failover,
            "seed": self.seed,
            "nodes": a.nodes,
            "replicas": a.replicas,
            "managers": a.managers,
            "heartbeat": a.heartbeat,
            "duration_s": round(elapsed, 3),
            "keys": checked,
            "ops": t.ops,
            "reads": t.reads,
            "writes": t.writes,
            "hits": t.hits,
            "misses": t.misses,
            "hit_rate": round(t.hits / (t.hits + t.misses), 4) if t.hits + t.misses else None,
            "ops_per_s": round(t.ops / elapsed, 1) if elapsed else None,
            "failed_reads": t.failed_reads,
            "failed_writes": t.failed_writes,
            "lost_acknowledged_writes": lost,
            "stale_reads": t.stale_reads,
            "bad_reads_by_phase": {k: dict(v) for k, v in t.by_phase.items()},
            "failover": dict(self.timing),
            "leader": leader,
            "epoch": epoch,
            "topology": stamp,
            "events": [_event_json(at, text, detail) for at, text, detail in self.events],
        }


async def run_demo(args: argparse.Namespace, style: Style) -> dict[str, Any]:
    """Run the whole demo; the summary dict (``ok`` False if an invariant broke)."""
    demo = _Demo(args, style)
    try:
        return await demo.main()
    finally:
        demo.live.close()  # show the cursor again, even after Ctrl-C
