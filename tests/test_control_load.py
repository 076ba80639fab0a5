"""The control plane's cost per node per tick does not grow with the number of nodes.

Commands are counted on the servers themselves (``INFO commandstats`` deltas, which
include the commands run inside scripts) over a fixed number of heartbeat ticks, with
two idle managers, on 3 and then on 6 nodes; the two per-node-per-tick figures are
compared as a ratio.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import anyio
import pytest
import redis

from cachering.control.plane import ControlPlane
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from control_helpers import control_config, managers

pytestmark = pytest.mark.anyio

TICKS = 20


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(6) as cluster:
        yield cluster


def _commands(nodes: Sequence[NodeSpec]) -> int:
    """Every command each node ran so far (scripts' own calls included)."""
    total = 0
    for node in nodes:
        client = redis.Redis(host=node.host, port=node.port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        total += sum(int(v["calls"]) for v in stats.values())
    return total


async def _per_node_per_tick(nodes: Sequence[NodeSpec], ns: str) -> float:
    config = control_config(nodes, ns, topology_refresh_interval=60.0)
    async with managers() as m:
        planes: list[ControlPlane] = [await m.start(config, f"m{i}") for i in range(2)]
        lead = await m.wait_leader()
        await m.until(lambda: lead._duties.in_charge())
        start = [p.health.rounds for p in planes]
        before = _commands(nodes)
        with anyio.fail_after(60):
            while min(p.health.rounds - s for p, s in zip(planes, start, strict=True)) < TICKS:
                await anyio.sleep(0.01)
        after = _commands(nodes)
        ticks = sum(p.health.rounds - s for p, s in zip(planes, start, strict=True)) / len(planes)
    return (after - before) / len(nodes) / ticks


async def test_commands_per_node_per_tick_do_not_grow_with_the_node_count(
    local: LocalCluster, anyio_backend: str
) -> None:
    three = await _per_node_per_tick(local.nodes[:3], f"load3{anyio_backend}")
    six = await _per_node_per_tick(local.nodes, f"load6{anyio_backend}")
    # Each manager costs each node a fixed handful of commands per tick (heartbeat
    # pipeline, one EXISTS for hints, the leader's vote and announcement); with three
    # commands per node per node the ratio would be about 1.7.
    assert six / three < 1.3, (three, six)
