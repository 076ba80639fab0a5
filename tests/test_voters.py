"""The voter set is part of the cluster's identity: a manager configured with other
voters refuses to campaign and says why; an unknown node never raises KeyError."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from anyio.abc import TaskGroup

from cachering.cluster import Cluster
from cachering.control.plane import ControlPlane
from cachering.control.topology import Topology, TopologyNode
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from failover_harness import failover_config

pytestmark = pytest.mark.anyio


async def start(
    tg: TaskGroup, nodes: Sequence[NodeSpec], ns: str, mid: str
) -> tuple[Cluster, anyio.CancelScope]:
    """A manager in its own task and cancel scope (cancel the scope: it leaves)."""
    cluster = Cluster(failover_config(nodes, ns, manager_id=mid))
    scope = anyio.CancelScope()
    started = anyio.Event()

    async def run() -> None:
        with scope:
            async with cluster:
                started.set()
                await anyio.sleep_forever()

    tg.start_soon(run)
    await started.wait()
    return cluster, scope


async def until(check: object, timeout: float = 20.0) -> None:
    """Wait until ``check()`` holds (a hang guard, not a speed requirement)."""
    assert callable(check)
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


async def test_a_manager_with_other_voters_refuses_to_campaign() -> None:
    ns = "voters"
    async with LocalCluster(4) as local:
        three, four = local.nodes[:3], local.nodes
        async with anyio.create_task_group() as tg:
            a, a_scope = await start(tg, three, ns, "a")
            await until(lambda: a.is_leader and a.topology.leader == "a")
            b, _ = await start(tg, four, ns, "b")
            await until(lambda: bool(b.status().as_dict()["errors"]))
            (error,) = b.status().as_dict()["errors"]
            assert "voters" in error
            assert '"n3"' in error
            a_scope.cancel()  # the leader leaves (with a goodbye)
            assert b.control is not None
            timeout = b.control.config.effective_election_timeout
            led = False
            with anyio.move_on_after(timeout * 6):
                while not led:
                    led = b.is_leader
                    await anyio.sleep(0.02)
            assert not led, "a manager with other voters took over the cluster"
            status = b.status().as_dict()
            assert status["errors"] == [error]
            assert status["election"]["refused"] == error
            assert b.control is not None
            assert b.control.counters.voter_mismatches == 1
            assert b.control.election.stats.campaigns == 0
            tg.cancel_scope.cancel()


async def test_writing_a_topology_with_a_node_never_adopted_raises_no_keyerror() -> None:
    ns = "unknown"
    async with LocalCluster(4) as local:
        cfg = failover_config(local.nodes[:3], ns, manager_id="m")
        plane = ControlPlane(cfg)
        extra = local.nodes[3]
        base = plane.topology
        held = Topology(
            1, 5, (*base.nodes, TopologyNode(extra.id, extra.host, extra.port)), plane.id
        )
        try:
            replies = await plane._duties.cas_all(held, list(held.ids))
            assert set(replies) == set(held.ids)
            assert plane.spec(extra.id).port == extra.port
        finally:
            for pool in plane._pools.values():
                await pool.aclose()
