"""Cluster data path on real servers: placement, values, expiry, tombstones, bad input."""

from __future__ import annotations

import itertools
import math
import time
from datetime import timedelta

import anyio
import anyio.abc
import pytest

from cachering.cluster import Cluster
from cachering.data import values
from cachering.local import LocalCluster
from cluster_helpers import Inspector, config

pytestmark = pytest.mark.anyio

_ns = itertools.count()


@pytest.fixture
def ns() -> str:
    return f"b{next(_ns)}"


async def test_set_get_roundtrip_exact_bytes(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        payloads = [b"", b"\x00\xff" * 10, "héllo".encode(), bytes(range(256)) * 40]
        for i, data in enumerate(payloads):
            await cluster.set(f"k{i}", data)
        for i, data in enumerate(payloads):
            assert await cluster.get(f"k{i}") == data
        await cluster.set("s", "text é")
        assert await cluster.get("s") == "text é".encode()
        await cluster.set(bytearray(b"ba"), memoryview(b"mv"))
        assert await cluster.get(b"ba") == b"mv"
        assert await cluster.get("missing") is None


async def test_every_key_on_exactly_its_preference_list(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        keys = [f"key:{i}".encode() for i in range(300)] + [b"\x00\xff\n bin", "ключ".encode()]
        await cluster.set_many({k: k for k in keys})
        await cluster.set("single", b"v")
        await cluster.wait_replicated()
        for key in [*keys, b"single"]:
            prefs = cluster.preference_list(key)
            assert len(prefs) == 2
            assert prefs[0] == cluster.node_for(key)
            assert cluster.home_nodes(key) == prefs  # every node up: homes take the writes
            assert inspect.holders(ns, key) == set(prefs)
        assert cluster.metrics().sync.counters.applied == len(keys) + 1
        # the healthy-cluster fast path took every write: no call failed and fell back
        assert not any(cluster.metrics().calls.errors.values())


async def test_replicas_capped_and_one_replica(local: LocalCluster, inspect: Inspector) -> None:
    for replicas, expected in ((1, 1), (3, 3), (7, 3)):
        ns = f"b{next(_ns)}"
        async with Cluster(config(local.nodes, ns, replicas=replicas)) as cluster:
            await cluster.set("k", b"v")
            await cluster.wait_replicated()
            assert len(cluster.preference_list("k")) == expected
            assert inspect.holders(ns, "k") == set(cluster.preference_list("k"))


async def test_expiry_is_the_same_absolute_time_on_every_copy(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=3)) as cluster:
        before = int(time.time() * 1000)
        await cluster.set("t", b"v", ttl=100)
        await cluster.set_many({f"m{i}": b"x" for i in range(50)}, ttl=timedelta(seconds=50))
        await cluster.wait_replicated()
        times = {inspect.expiretime(n, ns, "t") for n in inspect.clients}
        assert len(times) == 1
        [at] = times
        assert before + 100_000 <= at <= int(time.time() * 1000) + 100_000
        for i in range(50):
            assert len({inspect.expiretime(n, ns, f"m{i}") for n in inspect.clients}) == 1
        remaining = await cluster.ttl("t")
        assert remaining is not None
        assert 90 < remaining <= 100


async def test_ttl_and_exists(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        await cluster.set("forever", b"v")
        await cluster.set("short", b"v", ttl=0.05)
        assert await cluster.ttl("forever") == math.inf
        assert await cluster.ttl("missing") is None
        assert await cluster.exists("forever")
        assert not await cluster.exists("missing")
        await anyio.sleep(0.1)
        assert await cluster.get("short") is None
        assert await cluster.ttl("short") is None
        assert not await cluster.exists("short")


async def test_delete_writes_tombstones_everywhere(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, tombstone_ttl=30)) as cluster:
        await cluster.set("d", b"v")
        assert await cluster.delete("d") is True
        assert await cluster.delete("d") is False
        assert await cluster.get("d") is None
        assert not await cluster.exists("d")
        assert await cluster.ttl("d") is None
        await cluster.wait_replicated()
        copies = inspect.copies(ns, "d")
        assert set(copies) == set(cluster.preference_list("d"))
        for raw in copies.values():
            decoded = values.decode(raw)
            assert decoded is not None
            assert decoded.tombstone
        for node in copies:
            assert 0 < inspect.expiretime(node, ns, "d") - time.time() * 1000 <= 30_000


async def test_late_older_write_does_not_resurrect(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with (
        Cluster(config(local.nodes, ns)) as writer,
        Cluster(config(local.nodes, ns)) as deleter,
    ):
        # an old version captured before the delete, replayed after it (a late replica write)
        old_version = writer._clock.next()
        await writer.set("r", b"alive")
        await deleter.delete("r")
        await deleter.wait_replicated()
        assert writer._sync is not None
        stored = values.encode(old_version, b"zombie")
        for node in cluster_nodes(writer, "r"):
            await writer._sync.submit(node, [(f"{ns}:k:r".encode(), stored, 0)], holder=node)
        await writer.wait_replicated()
        assert await writer.get("r") is None
        assert inspect.holders(ns, "r") == set()
        assert writer.metrics().sync.counters.stale >= 2


def cluster_nodes(cluster: Cluster, key: str) -> tuple[str, ...]:
    return cluster.preference_list(key)


async def test_many_ops_thousands_of_keys(local: LocalCluster, inspect: Inspector, ns: str) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        keys = [f"bulk:{i}" for i in range(5000)]
        await cluster.set_many({k: k.encode() * 2 for k in keys})
        got = await cluster.get_many(keys)
        assert got == [k.encode() * 2 for k in keys]
        # aligned with the input, duplicates and misses included
        expected = [b"bulk:1" * 2, None, b"bulk:1" * 2]
        assert await cluster.get_many(["bulk:1", "nope", "bulk:1"]) == expected
        await cluster.wait_replicated()
        per_node = {n: len(inspect.data_keys(n, ns)) for n in inspect.clients}
        assert sum(per_node.values()) == 2 * len(keys)
        assert all(count > 2000 for count in per_node.values())
        assert await cluster.delete_many([*keys[:1000], "never-set"]) == 1000
        got = await cluster.get_many(keys[:1000])
        assert got == [None] * 1000
        # pairs are accepted as well as mappings
        await cluster.set_many([("p1", b"1"), ("p2", b"2")], ttl=60)
        assert await cluster.get_many([b"p1", "p2"]) == [b"1", b"2"]


async def test_bad_input(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns, max_value_size=10)) as cluster:
        with pytest.raises(TypeError, match="values"):
            await cluster.set("k", 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="values"):
            await cluster.set("k", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="keys"):
            await cluster.set(5, b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="keys"):
            await cluster.get(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_value_size"):
            await cluster.set("k", b"x" * 11)
        for ttl in (0, -1, float("nan"), float("inf"), timedelta(0)):
            with pytest.raises(ValueError, match="ttl"):
                await cluster.set("k", b"v", ttl=ttl)
        with pytest.raises(TypeError, match="ttl"):
            await cluster.set("k", b"v", ttl="5")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="ttl"):
            await cluster.set("k", b"v", ttl=True)
        with pytest.raises(ValueError, match="consistency"):
            await cluster.set("k", b"v", consistency="some")  # type: ignore[arg-type]
        # no keys: empty answers, as redis-py and Django give (arguments still checked)
        assert await cluster.get_many([]) == []
        assert await cluster.set_many({}) is None  # type: ignore[func-returns-value]
        assert await cluster.set_many([]) is None  # type: ignore[func-returns-value]
        assert await cluster.delete_many([]) == 0
        with pytest.raises(ValueError, match="consistency"):
            await cluster.delete_many([], consistency="most")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            await cluster.set_many({}, ttl=-1)
        with pytest.raises(TypeError, match="keys"):
            await cluster.get_many(["a", 1])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="keys"):
            cluster.node_for(1.5)  # type: ignore[arg-type]
        # nothing was written by the failed calls
        assert await cluster.get("k") is None
        assert cluster.metrics().calls.ops.get("set", 0) == 0


async def test_lifecycle_errors(local: LocalCluster, ns: str) -> None:
    cluster = Cluster(config(local.nodes, ns))
    with pytest.raises(RuntimeError, match="async with"):
        await cluster.get("k")
    async with cluster:
        await cluster.set("k", b"v")
    with pytest.raises(RuntimeError, match="async with"):  # closed: the same advice
        await cluster.get("k")
    with pytest.raises(RuntimeError, match="once"):
        async with cluster:
            pass
    with pytest.raises(TypeError, match="ClusterConfig"):
        Cluster({"nodes": []})  # type: ignore[arg-type]


async def test_foreign_values_under_namespace_read_as_missing(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        for node in cluster.preference_list("f"):
            inspect.clients[node].set(f"{ns}:k:f", b"not ours")
        assert await cluster.get("f") is None
        await cluster.set("f", b"ours")
        assert await cluster.get("f") == b"ours"


async def test_metrics_snapshot(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        await cluster.set("m", b"v")
        await cluster.get("m")
        await cluster.get("none")
        await cluster.wait_replicated()
        snap = cluster.metrics()
        assert snap.calls.ops["set"] == 1
        assert snap.calls.ops["get"] == 2
        assert snap.calls.hits == 1
        assert snap.calls.misses == 1
        assert snap.sync.queue_depth == 0
        assert snap.sync.counters.batches >= 1
        assert snap.calls.errors == {n.id: 0 for n in local.nodes}
        # the JSON form the CLI prints carries the same numbers
        assert snap.as_dict()["ops"]["set"] == 1
        assert snap.as_dict()["sync"]["batches"] == snap.sync.counters.batches


async def test_set_many_pairs_last_value_wins(local: LocalCluster, ns: str) -> None:
    async with Cluster(config(local.nodes, ns)) as cluster:
        await cluster.set_many([("d", b"first"), ("d", b"second")])
        assert await cluster.get("d") == b"second"
        with pytest.raises(TypeError, match="pairs"):
            await cluster.set_many(5)  # type: ignore[arg-type]


async def test_routing_swap_moves_new_writes(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=1)) as cluster:
        cluster.router.swap(["n2"])
        assert cluster.node_for("any") == "n2"
        assert cluster.preference_list("any") == ("n2",)
        await cluster.set_many({f"s{i}": b"v" for i in range(50)})
        assert inspect.data_keys("n2", ns) == {f"s{i}".encode() for i in range(50)}
        assert inspect.data_keys("n0", ns) == set()
