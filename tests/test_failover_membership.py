"""The failover layer through the Cluster facade: status, events, metrics, membership."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.control.plane import NotLeader
from cachering.events import NodeDown
from cachering.local import LocalCluster
from failover_harness import check_all, failover_config, fleet

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


async def test_status_events_metrics_and_leader_only_changes(local: LocalCluster) -> None:
    async with fleet(local, "api") as f:
        for i in range(2):
            await f.start(f"m{i}")
        lead = await f.wait_leader()
        follower = next(c for c in f.live() if c is not lead)
        status = follower.status().as_dict()
        assert status["leader"] == lead.id
        assert status["control_plane"] is True
        assert status["secret_configured"] is True
        assert set(status["nodes"]) == {"n0", "n1", "n2"}
        node = status["nodes"]["n0"]
        assert node["state"] == "up"
        assert node["healthy"] is True
        assert node["latency_ms"] is not None
        assert node["run_id"]
        control = lead.metrics().control
        assert control is not None
        assert lead.status().is_leader is True
        assert control.counters.topology_commits >= 1
        assert lead.metrics().as_dict()["control"]["topology_commits"] >= 1
        assert follower.epoch == lead.epoch
        assert follower.is_leader is False
        with pytest.raises(NotLeader):
            await follower.set_weight("n0", 2.0)
        async with follower.events() as events:
            local.kill(2)
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, NodeDown):
                        assert event.node == "n2"
                        break
        assert follower.preference_list("k") == lead.preference_list("k")
        await lead.set_weight("n0", 3.0)
        await f.until(lambda: follower.topology.node("n0").weight == 3.0)


async def test_control_plane_off(local: LocalCluster) -> None:
    cfg = failover_config(local.nodes, "off", control_plane=False)
    async with Cluster(cfg) as cluster:
        await cluster.set("k", b"v")
        assert await cluster.get("k") == b"v"
        assert cluster.control is None
        assert cluster.is_leader is False
        assert cluster.leader is None
        assert cluster.status().control_plane is False
        assert cluster.metrics().control is None
        assert cluster.metrics().as_dict()["control"] == {"enabled": False}
        assert cluster.topology.stamp == (0, 0)
        with pytest.raises(RuntimeError, match="control plane is off"):
            await cluster.remove_node("n0")
    with pytest.raises(ValueError, match="control_plane"):
        failover_config(local.nodes, "off", control_plane="yes")


@pytest.mark.slow
async def test_concurrent_add_and_remove_under_load(local: LocalCluster) -> None:
    async with fleet(local, "mv") as f:
        async with anyio.create_task_group() as load:
            for i in range(2):
                await f.start(f"m{i}")
            lead = await f.wait_leader()
            for c in f.live():
                await load.start(f.workload, c.id)
            await anyio.sleep(0.2)
            extra = await anyio.to_thread.run_sync(local.add_node)
            f.add_redis(extra)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lead.add_node, extra)
                tg.start_soon(lead.remove_node, "n2")
            await f.until(lambda: all(extra.id in c.topology for c in f.live()))
            await f.converged()
            assert all("n2" not in c.topology for c in f.live())
            await anyio.sleep(0.3)
            load.cancel_scope.cancel()
        # keys moved to new homes were copied there: nothing acknowledged is lost
        await check_all(f)
