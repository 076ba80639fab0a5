"""The minority side of a partition: a manager that cannot reach a majority of the nodes
for longer than the election timeout serves no ``one`` reads, unless it opted into stale
reads with ``stale_reads_in_partition=True``.

Partition {m0, m2, n0} | {m1, n1, n2}: every manager reaches every node through its own
FaultProxy, on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from cachering import Cluster, NodeSpec
from cachering.errors import CacheringError, ConsistencyError, NodeUnavailable
from cachering.local import LocalCluster
from cachering.local.faults import FaultProxy
from cluster_helpers import until
from failover_harness import failover_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


async def test_minority_manager_stops_one_reads(local: LocalCluster) -> None:
    ns = "part"
    async with contextlib.AsyncExitStack() as stack:
        proxies: dict[str, dict[str, FaultProxy]] = {}
        clusters: dict[str, Cluster] = {}
        for m in ("m0", "m1", "m2"):
            row = {}
            for n in local.nodes:
                row[n.id] = await stack.enter_async_context(FaultProxy(n.host, n.port))
            proxies[m] = row
            specs = [NodeSpec(n.id, row[n.id].host, row[n.id].port) for n in local.nodes]
            cfg = failover_config(
                specs,
                ns,
                manager_id=m,
                consistency="one",
                stale_reads_in_partition=m == "m2",
            )
            clusters[m] = await stack.enter_async_context(Cluster(cfg))
        m0, m1, m2 = clusters["m0"], clusters["m1"], clusters["m2"]
        await until(lambda: len({c.leader for c in clusters.values()} - {None}) == 1, 20, "leader")
        key = next(f"p{i}" for i in range(1000) if m0.preference_list(f"p{i}")[0] == "n0")
        await m1.set(key, b"old", consistency="all")
        assert await m0.get(key) == b"old"
        for m in ("m0", "m2"):
            for n in ("n1", "n2"):
                proxies[m][n].blackhole()
        proxies["m1"]["n0"].blackhole()
        await m1.set(key, b"new")  # n0 misses it; the majority side has it, with a hint
        for c in (m0, m2):
            control = c.control
            assert control is not None
            await until(lambda control=control: control.partitioned, 20, "cut off noticed")
        with pytest.raises(NodeUnavailable):
            await m0.get(key)
        with pytest.raises(NodeUnavailable):
            await m0.get_many([key])
        with pytest.raises(ConsistencyError):
            await m0.get(key, consistency="quorum")
        assert await m2.get(key) == b"old"  # opted into stale reads: documented
        assert await m1.get(key) == b"new"
        for row in proxies.values():
            for p in row.values():
                p.heal()
        control0 = m0.control
        assert control0 is not None
        await until(lambda: not control0.partitioned, 20, "reconnected")

        async def reads_new() -> bool:
            try:
                return await m0.get(key) == b"new"
            except CacheringError:
                return False

        with anyio.fail_after(20):
            while not await reads_new():
                await anyio.sleep(0.05)
