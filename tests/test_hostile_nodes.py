"""A configured node that speaks valid RESP but answers nonsense (tests/garbage_node.py),
next to real redis-servers: no manager crashes, and what it says about others is ignored."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.local import LocalCluster
from cluster_helpers import config
from garbage_node import garbage_node

pytestmark = pytest.mark.anyio

_ns = itertools.count()

REPLIES = {
    "simple": "+OK\\r\\n",
    "bulk": "$3\\r\\nabc\\r\\n",
    "array": "*2\\r\\n:1\\r\\n+OK\\r\\n",
    "one": ":1\\r\\n",
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


async def _beats(cluster: Cluster, count: int) -> None:
    """Wait for ``count`` more heartbeat rounds (the tick loop runs at the same interval)."""
    assert cluster.control is not None
    target = cluster.control.health.rounds + count
    with anyio.fail_after(30):
        while cluster.control.health.rounds < target:
            await anyio.sleep(0.02)


@pytest.mark.parametrize("reply", list(REPLIES.values()), ids=list(REPLIES))
async def test_wrong_shaped_replies_crash_nothing_and_claim_no_hints(
    local: LocalCluster, reply: str
) -> None:
    ns = f"garbled{next(_ns)}"
    with garbage_node("g", "--reply", reply) as fake:
        cfg = config(
            (*local.nodes, fake),
            ns,
            replicas=2,
            heartbeat_interval=0.1,
            topology_refresh_interval=0.5,
            secret=b"test-secret-0123456789abcdef",
        )
        real = {n.id for n in local.nodes}
        async with Cluster(cfg) as cluster:
            assert cluster.control is not None
            candidates = (f"key{i}" for i in range(200))
            keys = [k for k in candidates if "g" not in cluster.preference_list(k)][:20]
            for key in keys:
                await cluster.set(key, key.encode(), consistency="quorum")
            with anyio.fail_after(30):
                while "g" not in cluster.control.suspects():
                    await anyio.sleep(0.02)
            await _beats(cluster, 5)
            assert not cluster.control.lagging & real
            assert await cluster.get_many(keys) == [k.encode() for k in keys]
            status = cluster.status()
            assert status["nodes"]["g"]["suspect"] and status["nodes"]["g"]["garbled"]
            assert status["nodes"]["g"]["bad_replies"] > 0
