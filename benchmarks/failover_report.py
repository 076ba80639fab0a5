"""Failover report: how fast and how cleanly the cluster heals, on real redis-server processes.

Usage: ``.venv/bin/python benchmarks/failover_report.py [--runs 20] [--slow-runs 3]
[--backend asyncio|trio] [--skip-default]``

Three nodes, three managers (three :class:`~cachering.Cluster` objects in this process,
each with its own control plane, as three application processes would have), replicas=2,
writes at ``quorum``. Measured:

- failover time: from ``kill -9`` of a node to the moment *every* manager writes that
  node's keys elsewhere (its write plan no longer starts with it), at
  ``heartbeat_interval`` 0.1 s (``--runs``, median and worst) and at the 5 s default
  (``--slow-runs``);
- during each 0.1 s run, a workload of reads and quorum writes on every manager: failed
  reads, acknowledged writes lost, and stale reads (a read older than a write
  acknowledged before it started), through the node's restart, recovery and rejoin;
- leader takeover: from cancelling the leader manager to every survivor agreeing on a
  new leader, in seconds and in lease periods (``election_timeout``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cachering.local import LocalCluster
from failover_harness import Checker, Fleet, fleet

SENTINEL = "Redis Sentinel: down-after-milliseconds 30,000 by default; ~2.2 s at 1,000 ms"


def _routed_away(f: Fleet, node: str, key: bytes) -> bool:
    return all(node not in c.router.write_plan(key)[0] for c in f.live())


async def _failover_once(f: Fleet, victim: int) -> float:
    node = f.local.nodes[victim].id
    key = next(
        k for k in (f"fo-{i}".encode() for i in range(10_000)) if f.live()[0].node_for(k) == node
    )
    t0 = anyio.current_time()
    f.local.kill(victim)
    while not _routed_away(f, node, key):  # noqa: ASYNC110 - polling is the measurement
        await anyio.sleep(0.002)
    took = anyio.current_time() - t0
    await anyio.to_thread.run_sync(f.local.restart, victim)
    f.history.restarted.add(node)
    try:
        await f.drained()
        await f.converged()
    except TimeoutError:
        f.history.notes.append(f"run killing {node}: no convergence within the wait")
    return took


async def _idle(runs: int, ns: str = "bench-idle", **options: Any) -> list[float]:
    """Failover with no traffic: only the heartbeats can notice (``options`` go to every
    manager's config)."""
    times: list[float] = []
    async with LocalCluster(3) as local, fleet(local, ns, **options) as f:
        for i in range(3):
            await f.start(f"m{i}")
        await f.wait_leader()
        await f.converged()
        for run in range(runs):
            times.append(await _failover_once(f, run % 3))
    return times


async def _fast(runs: int) -> dict[str, Any]:
    times: list[float] = []
    async with LocalCluster(3) as local, fleet(local, "bench-fast") as f:
        for i in range(3):
            await f.start(f"m{i}")
        await f.wait_leader()
        await f.converged()
        async with anyio.create_task_group() as tg:
            for i in range(3):
                await tg.start(f.workload, f"m{i}")
            for run in range(runs):
                times.append(await _failover_once(f, run % 3))
            tg.cancel_scope.cancel()
        await f.converged()
        lead = await f.wait_leader()
        await f.drained()
        checker = Checker(f.history)
        counts = checker.no_lost_or_stale(strict=False)
        lost = await checker.final_values(lead, strict=False)
        leaders_ok = all(len(who) == 1 for who in f.history.leaders.values())
    return {
        "times": times,
        **counts,
        "lost": lost,
        "one_leader_per_epoch": leaders_ok,
        "notes": list(f.history.notes),
    }


async def _slow(runs: int) -> list[float]:
    times: list[float] = []
    async with LocalCluster(3) as local, fleet(local, "bench-slow", heartbeat_interval=5.0) as f:
        for i in range(3):
            await f.start(f"m{i}", timeout=1.0, connect_timeout=1.0)
        await f.until(lambda: f.leader() is not None, 120)
        for run in range(runs):
            times.append(await _failover_once(f, run % 3))
    return times


async def _takeover(runs: int, *, graceful: bool) -> tuple[list[float], float]:
    times: list[float] = []
    async with LocalCluster(3) as local, fleet(local, "bench-lead") as f:
        for i in range(3):
            await f.start(f"m{i}")
        lease = f.live()[0].config.effective_election_timeout
        spare = 3
        for _ in range(runs):
            lead = await f.wait_leader()
            t0 = anyio.current_time()
            f.kill(lead.id, graceful=graceful)
            await f.wait_leader()
            times.append(anyio.current_time() - t0)
            await f.start(f"m{spare}")
            spare += 1
    return times, lease


def _row(name: str, values: list[float], extra: str = "") -> str:
    if not values:
        return f"{name:<44} {'-':>8} {'-':>8} {'-':>8}  {extra}"
    med = statistics.median(values)
    return f"{name:<44} {med:8.3f} {min(values):8.3f} {max(values):8.3f}  {extra}"


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("cachering").setLevel(logging.ERROR)
    t0 = time.monotonic()
    fast = await _fast(args.runs)
    idle = await _idle(args.runs)
    takeover, lease = await _takeover(args.runs, graceful=False)
    goodbye, _ = await _takeover(args.runs, graceful=True)
    slow = [] if args.skip_default else await _slow(args.slow_runs)
    print(f"\nfailover report ({args.backend}, {time.monotonic() - t0:.0f} s)\n")
    print(f"{'measure (seconds)':<44} {'median':>8} {'min':>8} {'max':>8}")
    print(
        _row(
            f"failover under load, heartbeat 0.1 s ({len(fast['times'])} runs)",
            fast["times"],
            "target: median <= 0.5",
        )
    )
    print(_row(f"failover idle, heartbeat 0.1 s ({len(idle)} runs)", idle, "heartbeats only"))
    print(_row(f"failover, heartbeat 5 s ({len(slow)} runs)", slow, "target: <= 16"))
    print(
        _row(
            f"leader takeover, graceful exit ({len(goodbye)} runs)",
            goodbye,
            "goodbye message",
        )
    )
    print(
        _row(
            f"leader takeover, crash ({len(takeover)} runs)",
            takeover,
            f"lease {lease:.2f} s; median {statistics.median(takeover) / lease:.2f} leases",
        )
    )
    print()
    print(
        f"reads during failovers: {fast['reads']}, failed: {fast['failed_reads']} (target 0), "
        f"misses of acknowledged keys: {fast['misses']}"
    )
    print(
        f"quorum writes acknowledged: {fast['writes']}, lost: {fast['lost']} (target 0); "
        f"writes refused: {fast['failed_writes']}"
    )
    print(f"stale reads (during failover and after rejoin): {fast['stale_reads']} (target 0)")
    print(f"at most one leader per epoch: {fast['one_leader_per_epoch']}")
    for note in fast["notes"]:
        print(f"note: {note}")
    print(f"\nfor comparison: {SENTINEL}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slow-runs", type=int, default=3)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--skip-default", action="store_true", help="skip the 5 s heartbeat runs")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
