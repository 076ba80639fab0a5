"""A node that restarts empty under managers that knew it: none of them reads from it
before the leader resynced it, whoever of them reconnected to it first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from cachering import Cluster
from cachering.local import LocalCluster
from cluster_helpers import until
from failover_harness import failover_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


async def test_a_fence_another_manager_claimed_does_not_vouch_for_an_empty_node(
    local: LocalCluster,
) -> None:
    # Slow heartbeats: only the data connections can notice the restart here. Manager a
    # reconnects first and claims the empty node's fence; manager b, which also knew the
    # node before, must still not read from it (it used to take the claimed fence as the
    # cluster vouching for the node, and served misses for keys the other home holds).
    ns = "er"
    opts = {"heartbeat_interval": 5.0, "node_backoff": 0.05, "consistency": "one"}
    spec = local.nodes[0]
    plain = redis.Redis(host=spec.host, port=spec.port, socket_timeout=2)
    try:
        async with (
            Cluster(failover_config(local.nodes, ns, manager_id="a", **opts)) as a,
            Cluster(failover_config(local.nodes, ns, manager_id="b", **opts)) as b,
        ):
            keys = [f"k{i}" for i in range(300)]
            mine = [k for k in keys if a.home_nodes(k)[0] == spec.id][:20]
            assert mine
            await a.set_many(dict.fromkeys(mine, b"v"), consistency="all")
            assert await b.get_many(mine) == [b"v"] * len(mine)  # b knows the node
            await anyio.to_thread.run_sync(local.restart, 0)
            run_id = (await anyio.to_thread.run_sync(plain.info, "server"))["run_id"]

            def claimed() -> bool:
                return plain.get(f"{ns}:fence") == run_id.encode()

            with anyio.move_on_after(5):
                while not claimed():
                    assert await a.get(mine[0]) == b"v"
                    await anyio.sleep(0.06)
            assert claimed(), "manager a never reconnected to the restarted node"
            for _ in range(20):  # b's suspicion of the node runs out many times over
                assert await b.get_many(mine) == [b"v"] * len(mine)
                await anyio.sleep(0.06)
            assert b.control is not None
            assert spec.id in b.control.lagging
    finally:
        plain.close()


async def test_an_empty_node_serves_no_reads_until_the_leader_resynced_it(
    local: LocalCluster,
) -> None:
    # Fast heartbeats and a leader: every manager notices the restart, the leader takes
    # the node out of service, clears and resyncs it. No read in between may miss a key
    # the other home holds, on either manager.
    ns = "er2"
    opts = {"consistency": "one"}
    async with (
        Cluster(failover_config(local.nodes, ns, manager_id="a", **opts)) as a,
        Cluster(failover_config(local.nodes, ns, manager_id="b", **opts)) as b,
    ):
        await until(lambda: a.leader is not None and a.leader == b.leader, 20, "a leader")
        keys = [f"k{i}" for i in range(300)]
        mine = [k for k in keys if a.home_nodes(k)[0] == local.nodes[0].id][:20]
        assert mine
        await a.set_many(dict.fromkeys(mine, b"v"), consistency="all")
        await anyio.to_thread.run_sync(local.restart, 0)
        seen_recovering = False
        with anyio.move_on_after(10):
            while True:
                for c in (a, b):
                    got = await c.get_many(mine)
                    assert got == [b"v"] * len(mine), (c.id, got.count(None))
                states = {n.id: n.state for n in a.topology.nodes}
                seen_recovering |= states["n0"] != "up"
                if seen_recovering and states["n0"] == "up" and not a.control.lagging:  # type: ignore[union-attr]
                    break
                await anyio.sleep(0.02)
        assert seen_recovering, "the leader never took the restarted node out of service"
