"""Randomized fault schedules, reproducible from their seed (in the test id).

``CACHERING_CHAOS_SEEDS=N`` runs seeds 1..N (``make chaos SEEDS=200``); by default a few
seeds run. Each schedule applies one fault at a time to a 3-node cluster with three
managers under load (node killed and restarted, restarted empty, paused briefly or past
the threshold, partitioned from every manager, the leader's manager killed or cut off
from the majority), heals everything, and then checks every invariant.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskGroup

from cachering.local import LocalCluster
from failover_harness import Fleet, check_all, fleet

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_N = int(os.environ.get("CACHERING_CHAOS_SEEDS", "0") or 0)
SEEDS = list(range(1, _N + 1)) if _N > 0 else [7, 11]
FAULTS = (
    "kill_restart",
    "restart_empty",
    "pause_short",
    "pause_long",
    "partition_node",
    "kill_leader_manager",
    "partition_leader",
)


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


async def _fault(
    f: Fleet, load: TaskGroup, rng: random.Random, kind: str, spare: list[int]
) -> None:
    local = f.local
    victim = rng.randrange(3)
    node = local.nodes[victim].id
    f.history.notes.append(f"{anyio.current_time():.3f} {kind} {node}")
    if kind == "kill_restart":
        local.kill(victim)
        await anyio.sleep(rng.uniform(0.1, 0.6))
        await anyio.to_thread.run_sync(local.restart, victim)
        f.history.restarted.add(node)
    elif kind == "restart_empty":
        await anyio.to_thread.run_sync(local.restart, victim)
        f.history.restarted.add(node)
    elif kind in ("pause_short", "pause_long"):
        local.pause(victim)
        await anyio.sleep(0.1 if kind == "pause_short" else rng.uniform(0.5, 0.8))
        local.resume(victim)
    elif kind == "partition_node":
        for row in f.proxies.values():
            row[node].blackhole(rng.choice(["both", "up", "down"]))
        await anyio.sleep(rng.uniform(0.4, 0.8))
        for row in f.proxies.values():
            row[node].heal()
    elif kind == "kill_leader_manager":
        lead = await f.wait_leader()
        f.kill(lead.id)
        new_id = f"m{spare[0]}"
        spare[0] += 1
        await f.start(new_id, proxied=True)
        await load.start(f.workload, new_id)
    elif kind == "partition_leader":
        lead = await f.wait_leader()
        direction = rng.choice(["both", "up", "down"])
        cut = [n.id for n in local.nodes if n.id != node][:2]
        for n in cut:
            f.proxies[lead.id][n].blackhole(direction)  # type: ignore[arg-type]
        await anyio.sleep(rng.uniform(0.5, 1.0))
        for n in cut:
            f.proxies[lead.id][n].heal()
    await f.converged()
    f.history.notes.append(f"{anyio.current_time():.3f} converged")


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
async def test_random_fault_schedule(local: LocalCluster, seed: int) -> None:
    rng = random.Random(seed)
    async with fleet(local, f"chaos{seed}") as f:
        async with anyio.create_task_group() as load:
            for i in range(3):
                await f.start(f"m{i}", proxied=True)
            await f.wait_leader()
            for c in f.live():
                await load.start(f.workload, c.id)
            spare = [3]
            for _ in range(3):
                await anyio.sleep(rng.uniform(0.1, 0.3))
                await _fault(f, load, rng, rng.choice(FAULTS), spare)
            await anyio.sleep(0.2)
            load.cancel_scope.cancel()
        try:
            await check_all(f)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, schedule {f.history.notes}: {exc}") from None
