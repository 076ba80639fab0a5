"""Failover with data: the leader's manager dies or is partitioned; a minority is cut off."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from cachering.local import LocalCluster
from failover_harness import check_all, fleet

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


async def test_leader_manager_killed_under_load(local: LocalCluster) -> None:
    async with fleet(local, "lk") as f:
        async with anyio.create_task_group() as load:
            for i in range(3):
                await f.start(f"m{i}")
            lead = await f.wait_leader()
            for c in f.live():
                if c is not lead:
                    await load.start(f.workload, c.id)
            await anyio.sleep(0.2)
            old_epoch = lead.epoch
            f.kill(lead.id)
            new = await f.wait_leader()
            assert new.epoch > old_epoch
            await anyio.sleep(0.3)
            load.cancel_scope.cancel()
        await check_all(f, failed_reads_allowed=False, misses_allowed=False)


@pytest.mark.parametrize("direction", ["both", "up", "down"])
async def test_leader_partitioned_from_majority(local: LocalCluster, direction: str) -> None:
    async with fleet(local, f"lp{direction}") as f:
        async with anyio.create_task_group() as load:
            for i in range(3):
                await f.start(f"m{i}", proxied=True)
            lead = await f.wait_leader()
            old_epoch = lead.epoch
            for c in f.live():
                await load.start(f.workload, c.id)
            await anyio.sleep(0.2)
            cut = f.proxies[lead.id]
            for node in ("n0", "n1"):
                cut[node].blackhole(direction)  # type: ignore[arg-type]
            others = [c for c in f.live() if c is not lead]
            await f.until(lambda: not lead.is_leader and any(c.is_leader for c in others))
            assert max(c.epoch for c in others) > old_epoch
            await anyio.sleep(0.3)
            for row in f.proxies.values():
                for proxy in row.values():
                    proxy.heal()
            await f.converged()
            await anyio.sleep(0.2)
            load.cancel_scope.cancel()
        await check_all(f)


async def test_minority_node_partitioned(local: LocalCluster) -> None:
    async with fleet(local, "mp") as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}", proxied=True)
            await f.wait_leader()
            for c in f.live():
                await load.start(f.workload, c.id)
            await anyio.sleep(0.2)
            for row in f.proxies.values():
                row["n2"].blackhole()
            await f.until(lambda: f.states("n2") == ["down", "down"])
            await anyio.sleep(0.3)
            for row in f.proxies.values():
                row["n2"].heal()
            await f.converged()
            await anyio.sleep(0.2)
            load.cancel_scope.cancel()
        await check_all(f, failed_reads_allowed=False, misses_allowed=False)
