"""Consistency levels, hints and reads that survive a dead or frozen node."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.errors import ConsistencyError, NodeUnavailable
from cachering.local import LocalCluster
from cluster_helpers import Inspector, config

pytestmark = pytest.mark.anyio

_ns = itertools.count()


@pytest.fixture
def ns(local: LocalCluster, inspect: Inspector) -> Iterator[str]:
    yield f"f{next(_ns)}"
    # every test leaves all servers running
    for i, node in enumerate(local.nodes):
        if not local.is_running(i) or local.is_paused(i):
            local.restart(i)
            inspect.reconnect(node.id)


def index(local: LocalCluster, node_id: str) -> int:
    return [n.id for n in local.nodes].index(node_id)


async def test_quorum_and_all_acknowledged_when_every_node_answers(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=3)) as cluster:
        await cluster.set("q", b"1", consistency="quorum")
        await cluster.set("a", b"1", consistency="all")
        await cluster.set_many({f"m{i}": b"x" for i in range(100)}, consistency="all")
        # quorum/all wrote every copy synchronously: nothing went through the synchronizer
        assert cluster.metrics().sync.counters.submitted == 0
        assert inspect.holders(ns, "a") == set(inspect.clients)
        assert inspect.holders(ns, "q") == set(inspect.clients)  # quorum calls every copy
        assert all(inspect.holders(ns, f"m{i}") == set(inspect.clients) for i in range(100))


async def test_consistency_errors_when_too_few_nodes_answer(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns, replicas=3, node_backoff=0)) as cluster:
        local.kill(2)
        dead = local.nodes[2].id
        await cluster.set("k", b"v", consistency="quorum")  # 2 of 3 is a quorum
        with pytest.raises(ConsistencyError) as info:
            await cluster.set("k", b"w", consistency="all")
        assert set(info.value.failed) == {dead}
        assert info.value.acknowledged == 2
        assert info.value.required == 3
        assert dead in str(info.value)
        local.kill(1)
        with pytest.raises(ConsistencyError) as info:
            await cluster.set("k", b"x", consistency="quorum")
        assert info.value.required == 2
        assert info.value.acknowledged == 1
        await cluster.set("k", b"y", consistency="one")
        local.kill(0)
        with pytest.raises(ConsistencyError) as info:
            await cluster.set("k", b"z")
        assert info.value.acknowledged == 0
        with pytest.raises(NodeUnavailable):
            await cluster.get("k")


@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_quorum_write_survives_loss_of_any_single_node(
    local: LocalCluster, ns: str, victim: int
) -> None:
    keys = [f"q{i}" for i in range(200)]
    async with Cluster(config(local.nodes, ns, replicas=2)) as cluster:
        await cluster.set_many({k: k.encode() for k in keys}, consistency="quorum")
        await cluster.set("single", b"s", consistency="quorum")
    local.kill(victim)
    async with Cluster(config(local.nodes, ns, replicas=2)) as reader:
        assert await reader.get_many(keys) == [k.encode() for k in keys]
        assert await reader.get("single") == b"s"
        for k in keys[:20]:
            assert await reader.get(k) == k.encode()


async def test_write_with_primary_down_goes_to_next_node_with_hint(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=2, node_backoff=30)) as cluster:
        key = next(k for k in (f"h{i}" for i in range(1000)) if cluster.node_for(k) == "n0")
        local.kill(0)
        home = cluster.preference_list(key)
        await cluster.set(key, b"v")
        await cluster.set_many({f"{key}-{i}": b"w" for i in range(50)})
        await cluster.wait_replicated()
        assert await cluster.get(key) == b"v"
        # the two live nodes hold it; the acting primary remembers that n0 missed it
        assert inspect.holders(ns, key, skip={"n0"}) == {"n1", "n2"}
        acting = next(n for n in home if n != "n0")
        assert key.encode() in inspect.hints(acting, ns, "n0")
        assert cluster.metrics().calls.hints_recorded >= 1
        assert cluster.metrics().calls.errors.get("n0", 0) >= 1


async def test_replica_down_drops_counted_and_hinted(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=2, node_backoff=0)) as cluster:
        local.kill(1)
        keys = [f"r{i}" for i in range(300)]
        to_n1 = [k for k in keys if cluster.preference_list(k)[1:] == ("n1",)]
        assert to_n1
        for k in to_n1:
            await cluster.set(k, b"v")
        await cluster.wait_replicated()
        sync = cluster.metrics().sync
        assert sync.counters.dropped == len(to_n1)
        hinted = set()
        for holder in ("n0", "n2"):
            hinted |= inspect.hints(holder, ns, "n1")
        assert hinted == {k.encode() for k in to_n1}


async def test_hint_set_is_bounded(local: LocalCluster, inspect: Inspector, ns: str) -> None:
    cfg = config(local.nodes, ns, replicas=3, hint_limit=5, node_backoff=30)
    async with Cluster(cfg) as cluster:
        local.kill(2)
        await cluster.set_many({f"o{i}": b"v" for i in range(40)}, consistency="quorum")
        holders = ("n0", "n1")
        assert all(len(inspect.hints(h, ns, "n2")) <= 5 for h in holders)
        assert any(inspect.clients[h].get(f"{ns}:hintoverflow:n2") == b"1" for h in holders)


async def test_killing_a_node_mid_workload_fails_no_read(local: LocalCluster, ns: str) -> None:
    keys = [f"w{i}" for i in range(400)]
    failures: list[BaseException] = []
    reads = 0
    async with Cluster(config(local.nodes, ns, replicas=2)) as cluster:
        await cluster.set_many({k: k.encode() for k in keys})
        await cluster.wait_replicated()

        async def reader(offset: int) -> None:
            nonlocal reads
            for i in itertools.count(offset):
                try:
                    if i % 3 == 0:
                        got = await cluster.get_many(keys[i % 300 : i % 300 + 100])
                        assert got == [k.encode() for k in keys[i % 300 : i % 300 + 100]]
                    else:
                        assert await cluster.get(keys[i % 400]) == keys[i % 400].encode()
                except Exception as exc:
                    failures.append(exc)
                reads += 1
                await anyio.sleep(0)

        with anyio.move_on_after(1.0):
            async with anyio.create_task_group() as tg:
                for offset in range(4):
                    tg.start_soon(reader, offset * 37)
                await anyio.sleep(0.2)
                local.kill(1)
    assert failures == []
    assert reads > 100


async def test_reads_fall_back_when_a_node_freezes(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns, replicas=2, timeout=0.2)) as cluster:
        keys = [f"z{i}" for i in range(60)]
        await cluster.set_many({k: b"v" for k in keys})
        await cluster.wait_replicated()
        local.pause(0)
        try:
            assert await cluster.get_many(keys) == [b"v"] * 60
            assert all([await cluster.get(k) == b"v" for k in keys])
            assert "n0" in cluster.metrics().suspects
        finally:
            local.resume(0)


async def test_writes_at_one_keep_succeeding_when_a_node_dies(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    failures: list[BaseException] = []
    written: dict[str, bytes] = {}
    attempted: dict[str, bytes] = {}  # the last write, which the deadline may interrupt
    async with Cluster(config(local.nodes, ns, replicas=2)) as cluster:

        async def writer(w: int) -> None:
            for i in itertools.count():
                key, value = f"w{w}:{i % 50}", f"{w}:{i}".encode()
                attempted[key] = attempted[f"{key}b"] = value
                try:
                    if i % 4 == 0:
                        await cluster.set_many({key: value, f"{key}b": value})
                    else:
                        await cluster.set(key, value)
                except Exception as exc:
                    failures.append(exc)
                else:
                    written[key] = value
                await anyio.sleep(0)

        with anyio.move_on_after(0.8):
            async with anyio.create_task_group() as tg:
                for w in range(3):
                    tg.start_soon(writer, w)
                await anyio.sleep(0.2)
                local.kill(2)
        await cluster.wait_replicated()
        assert failures == []
        assert len(written) > 50
        for key, value in written.items():
            assert await cluster.get(key) in (value, attempted[key])
        assert cluster.metrics().calls.hints_recorded > 0
