"""Control-plane load report: the commands idle managers make the cache nodes run.

Usage: ``.venv/bin/python benchmarks/control_load_report.py [--managers 1,5,10]
[--nodes 3,6] [--interval 0.1] [--seconds 3] [--backend asyncio|trio]``

For each point, ``M`` idle managers (control planes in this process, each with its own
connections, as ``M`` application processes would have) run against ``N`` real
redis-server processes at the given ``heartbeat_interval``. Once a leader is in charge,
``INFO commandstats`` is read on every node before and after ``--seconds``; the sum of
the deltas (commands run inside scripts included, as the servers count them) is the
fleet's load. Printed per point: commands per second for the fleet and per node, and
commands per manager per node per tick (ticks counted from the managers' heartbeat
rounds, so a slow machine that ticks less often does not flatter the figure).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cachering.control.plane import ControlPlane
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from control_helpers import control_config, managers


def _commands(nodes: Sequence[NodeSpec]) -> int:
    total = 0
    for node in nodes:
        client = redis.Redis(host=node.host, port=node.port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        total += sum(int(v["calls"]) for v in stats.values())
    return total


async def measure(
    nodes: Sequence[NodeSpec], count: int, interval: float, seconds: float, ns: str
) -> tuple[float, float]:
    """Fleet commands per second, and commands per manager per node per tick."""
    config = control_config(nodes, ns, heartbeat_interval=interval, timeout=max(0.5, interval))
    async with managers() as m:
        planes: list[ControlPlane] = [await m.start(config, f"m{i}") for i in range(count)]
        lead = await m.wait_leader(timeout=60)
        await m.until(lambda: lead._duties.in_charge(), timeout=60)
        await anyio.sleep(interval * 5)
        rounds = [p.health.rounds for p in planes]
        before, t0 = _commands(nodes), anyio.current_time()
        await anyio.sleep(seconds)
        after, took = _commands(nodes), anyio.current_time() - t0
        ticks = sum(p.health.rounds - r for p, r in zip(planes, rounds, strict=True))
    delta = after - before
    return delta / took, delta / len(nodes) / max(ticks, 1)


async def main(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.managers.split(",")]
    sizes = [int(x) for x in args.nodes.split(",")]
    print(f"heartbeat_interval {args.interval} s, {args.seconds} s per point, {args.backend}")
    heads = ("managers", "nodes", "fleet cmd/s", "per node/s", "per mgr·node·tick")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (8, 5, 12, 11, 18), strict=True)))
    with LocalCluster(max(sizes)) as local:
        for size in sizes:
            for count in counts:
                rate, per_tick = await measure(
                    local.nodes[:size], count, args.interval, args.seconds, f"load{count}x{size}"
                )
                print(
                    f"{count:>8} {size:>5} {rate:>12,.0f} {rate / size:>11,.0f} {per_tick:>18.2f}"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", default="1,5,10")
    parser.add_argument("--nodes", default="3,6")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
