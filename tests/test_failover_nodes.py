"""Failover with data: nodes killed, paused, restarted empty, flapping, under load."""

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


async def test_kill_primary_under_load_no_failed_read(local: LocalCluster) -> None:
    async with fleet(local, "fk") as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}")
            await f.wait_leader()
            for i in range(2):
                await load.start(f.workload, f"m{i}")
            await anyio.sleep(0.3)
            local.kill(1)
            await f.until(lambda: f.states("n1") == ["down", "down"])
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(local.restart, 1)
            f.history.restarted.add("n1")
            await f.converged()
            await anyio.sleep(0.3)
            load.cancel_scope.cancel()
        counts = await check_all(f, failed_reads_allowed=False)
        assert counts["failed_reads"] == 0


@pytest.mark.parametrize("past_threshold", [False, True])
async def test_pause_and_resume(local: LocalCluster, past_threshold: bool) -> None:
    ns = f"pr{int(past_threshold)}"
    async with fleet(local, ns, failure_threshold=5) as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}")
            lead = await f.wait_leader()
            version = lead.topology.version
            for i in range(2):
                await load.start(f.workload, f"m{i}")
            await anyio.sleep(0.2)
            local.pause(0)
            try:
                if past_threshold:
                    await f.until(lambda: f.states("n0") == ["down", "down"])
                    await anyio.sleep(0.3)
                else:
                    await anyio.sleep(0.15)
            finally:
                local.resume(0)
            await f.converged()
            await anyio.sleep(0.3)
            load.cancel_scope.cancel()
            if not past_threshold:
                assert lead.topology.version == version
        await check_all(f, failed_reads_allowed=False, misses_allowed=False)


async def test_restart_empty_is_resynced(local: LocalCluster) -> None:
    async with fleet(local, "re") as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}")
            await f.wait_leader()
            for i in range(2):
                await load.start(f.workload, f"m{i}")
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(local.restart, 2)  # back at once, without its data
            f.history.restarted.add("n2")
            await f.until(lambda: "recovering" in f.states("n2") or f.states("n2") == ["down"] * 2)
            await f.converged()
            await anyio.sleep(0.2)
            load.cancel_scope.cancel()
        await check_all(f)


async def test_flapping_node(local: LocalCluster) -> None:
    async with fleet(local, "fl") as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}")
            await f.wait_leader()
            for i in range(2):
                await load.start(f.workload, f"m{i}")
            for _ in range(3):
                local.pause(1)
                await anyio.sleep(0.5)  # past the threshold sometimes, not always
                local.resume(1)
                await anyio.sleep(0.25)
            await f.converged()
            await anyio.sleep(0.2)
            load.cancel_scope.cancel()
        await check_all(f, failed_reads_allowed=False, misses_allowed=False)
