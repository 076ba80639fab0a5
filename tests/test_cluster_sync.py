"""The batched replica synchronizer: batching, backpressure, shutdown flush, accounting."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.data import values
from cachering.local import LocalCluster
from cluster_helpers import Inspector, config

pytestmark = pytest.mark.anyio

_ns = itertools.count()


@pytest.fixture
def ns(local: LocalCluster) -> Iterator[str]:
    yield f"s{next(_ns)}"
    for i in range(len(local.nodes)):
        if local.is_paused(i):
            local.resume(i)


async def test_replica_writes_travel_in_batches(local: LocalCluster, ns: str) -> None:
    # a long interval: batches go out when full, the rest when wait_replicated() asks
    cfg = config(local.nodes, ns, sync_flush_interval=30.0, sync_batch_size=256)
    async with Cluster(cfg) as cluster:
        await cluster.set_many({f"k{i}": b"v" for i in range(3000)})
        for i in range(200):
            await cluster.set(f"one{i}", b"v")
        await cluster.wait_replicated()
        sync = cluster.metrics().sync
        assert sync.counters.submitted == 3200
        assert sync.counters.applied == 3200
        # 3200 replica writes to 3 nodes: a few dozen script calls, not one per key
        assert sync.counters.batches <= 40
        assert sync.queue_depth == 0


async def test_backpressure_bounds_the_queue(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    cfg = config(local.nodes, ns, sync_batch_size=4, sync_queue_size=8, timeout=0.3, node_backoff=0)
    async with Cluster(cfg) as cluster:
        sync = cluster._sync
        assert sync is not None
        local.pause(1)
        entries = [
            (f"{ns}:k:p{i}".encode(), values.encode(cluster._clock.next(), b"v"), 0)
            for i in range(100)
        ]
        done = anyio.Event()
        depths: list[int] = []

        async def produce() -> None:
            await sync.submit("n1", entries, holder="n0")
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            with anyio.move_on_after(0.2):
                await done.wait()
            # the node is frozen: submit must be waiting, with a bounded number accepted
            assert not done.is_set()
            depths.append(sync.depth)
            local.resume(1)
            await done.wait()
        await cluster.wait_replicated()
        stats = cluster.metrics().sync
        # submit takes chunks (4 keys) only while fewer than 8 are pending or in flight
        assert max(depths) == 8
        assert stats.counters.submitted == 100
        assert stats.counters.applied + stats.counters.dropped == 100
        assert stats.queue_depth == 0
        # whatever was dropped while the node was frozen left a hint on the holder
        hinted = inspect.hints("n0", ns, "n1")
        assert len(hinted) == stats.counters.dropped


async def test_exit_flushes_pending_batches(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    cfg = config(local.nodes, ns, sync_flush_interval=30.0)
    async with Cluster(cfg) as cluster:
        for i in range(20):
            await cluster.set(f"e{i}", b"v")
        assert cluster.metrics().sync.queue_depth == 20
        prefs = {f"e{i}": cluster.preference_list(f"e{i}") for i in range(20)}
    for key, nodes in prefs.items():
        assert inspect.holders(ns, key) == set(nodes)
    assert cluster.metrics().sync.counters.applied == 20


async def test_exit_gives_up_after_the_shutdown_timeout(local: LocalCluster, ns: str) -> None:
    cfg = config(local.nodes, ns, sync_flush_interval=30.0, timeout=5.0, sync_shutdown_timeout=0.2)
    async with Cluster(cfg) as cluster:
        keys = [k for k in (f"t{i}" for i in range(200)) if cluster.preference_list(k)[1] == "n2"]
        for key in keys[:10]:
            await cluster.set(key, b"v")
        local.pause(2)
    stats = cluster.metrics().sync
    assert stats.counters.abandoned == 10
    assert stats.queue_depth == 0


async def test_set_many_replica_writes_ride_in_the_primary_calls(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    # A long interval: only writes that rode in set_many's own calls are stored before
    # wait_replicated(). Every node is primary for some of 600 keys, so every replica write rides.
    async with Cluster(config(local.nodes, ns, sync_flush_interval=30.0)) as cluster:
        keys = [f"i{i}" for i in range(600)]
        await cluster.set_many(dict.fromkeys(keys, b"v"), ttl=60)
        sync = cluster.metrics().sync
        assert sync.counters.inline == sync.counters.submitted == sync.counters.applied == 600
        assert sync.queue_depth == 0
        assert sync.counters.batches == 0
        for key in keys:
            home = cluster.preference_list(key)
            assert inspect.holders(ns, key) == set(home)
            assert len({inspect.expiretime(node, ns, key) for node in home}) == 1
        # one key: its replica node gets no call of its own, the synchronizer takes it
        await cluster.set_many({"alone": b"w"})
        sync = cluster.metrics().sync
        assert sync.counters.inline == 600
        assert sync.queue_depth == 1
        await cluster.wait_replicated()
        assert inspect.holders(ns, "alone") == set(cluster.preference_list("alone"))
        assert cluster.metrics().sync.counters.applied == 601


async def test_set_many_without_inline_replica_writes(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    cfg = config(local.nodes, ns, sync_flush_interval=30.0, sync_inline=False)
    async with Cluster(cfg) as cluster:
        keys = [f"q{i}" for i in range(300)]
        await cluster.set_many(dict.fromkeys(keys, b"v"))
        sync = cluster.metrics().sync
        assert sync.counters.inline == 0
        assert sync.queue_depth == 300
        # only the primary copies are written until the synchronizer flushes
        assert all(inspect.holders(ns, k) == {cluster.node_for(k)} for k in keys)
        await cluster.wait_replicated()
        assert all(inspect.holders(ns, k) == set(cluster.preference_list(k)) for k in keys)
        assert cluster.metrics().sync.counters.applied == 300


async def test_riders_of_a_failed_call_are_hinted(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    cfg = config(local.nodes, ns, timeout=0.3, node_backoff=0)
    async with Cluster(cfg) as cluster:
        keys = [f"f{i}" for i in range(300)]
        prefs = {k: cluster.preference_list(k) for k in keys}
        riders = {k for k, p in prefs.items() if p[1] == "n1"}
        assert riders
        local.pause(1)
        await cluster.set_many(dict.fromkeys(keys, b"v"))
        await cluster.wait_replicated()
        # n1's call timed out: its replica writes were retried by the synchronizer,
        # counted as dropped and left as hints on each key's primary
        sync = cluster.metrics().sync
        assert sync.counters.dropped == len(riders)
        for key in riders:
            assert key.encode() in inspect.hints(prefs[key][0], ns, "n1")
            assert inspect.holders(ns, key, skip={"n1"}) == {prefs[key][0]}
        # n1's own keys fell back to their other home, which remembers what n1 missed
        for key in (k for k, p in prefs.items() if p[0] == "n1"):
            assert inspect.holders(ns, key, skip={"n1"}) == {prefs[key][1]}
            assert key.encode() in inspect.hints(prefs[key][1], ns, "n1")
