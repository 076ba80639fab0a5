"""The near cache: filled on reads, bounded, TTL-aware, invalidated across instances."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.data.nearcache import InvalidationCodec, NearCache
from cachering.local import LocalCluster
from cachering.messages import Keyring, MessageCodec
from cluster_helpers import Inspector, config

pytestmark = pytest.mark.anyio

_ns = itertools.count()


async def eventually(check: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while not check():
            await anyio.sleep(0.005)


async def subscribed(cluster: Cluster, inspect: Inspector) -> None:
    """Wait until the cluster's subscription is live on the server (confirmed by the server)."""
    sub = cluster._subscriber
    assert sub is not None
    await sub.subscribed.wait()
    channel = f"{cluster.config.namespace}:inval"

    def live() -> bool:
        node = sub.node
        if node is None:
            return False
        [_, count] = inspect.clients[node].pubsub_numsub(channel)[0]
        return bool(count)

    await eventually(live)


async def test_near_cache_serves_repeat_reads_and_own_writes_invalidate(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = f"n{next(_ns)}"
    async with Cluster(config(local.nodes, ns, near_cache_size=100)) as cluster:
        await cluster.set("k", b"v1")
        assert await cluster.get("k") == b"v1"
        # change the stored copies behind the cluster's back: the near cache still answers
        for node in cluster.preference_list("k"):
            inspect.clients[node].delete(f"{ns}:k:k")
        assert await cluster.get("k") == b"v1"
        assert cluster.metrics().near_cache.counters.hits == 1
        await cluster.set("k", b"v2")
        assert await cluster.get("k") == b"v2"
        await cluster.delete("k")
        assert await cluster.get("k") is None
        assert await cluster.get_many(["k", "k"]) == [None, None]


async def test_near_cache_is_bounded_and_ttl_aware(local: LocalCluster) -> None:
    ns = f"n{next(_ns)}"
    async with Cluster(config(local.nodes, ns, near_cache_size=10)) as cluster:
        await cluster.set_many({f"b{i}": b"x" for i in range(50)})
        assert await cluster.get_many([f"b{i}" for i in range(50)]) == [b"x"] * 50
        assert cluster.metrics().near_cache.size == 10
        await cluster.set("short", b"v", ttl=0.1)
        assert await cluster.get("short") == b"v"
        await anyio.sleep(0.15)
        assert await cluster.get("short") is None


@pytest.mark.parametrize("secret", [None, b"cluster-secret-0123456789"])
async def test_invalidation_across_instances(
    local: LocalCluster, inspect: Inspector, secret: bytes | None
) -> None:
    ns = f"n{next(_ns)}"
    cfg = config(local.nodes, ns, near_cache_size=100, secret=secret)
    async with Cluster(cfg) as reader, Cluster(cfg) as writer:
        await subscribed(reader, inspect)
        await writer.set_many({"x": b"1", "y": b"1"})
        await writer.wait_replicated()
        # let the announcement of that first write arrive before reading
        await eventually(lambda: reader.metrics().near_cache.counters.messages_received >= 1)
        assert await reader.get("x") == b"1"
        assert await reader.get_many(["y"]) == [b"1"]
        assert reader.metrics().near_cache.size == 2
        await writer.set("x", b"2")
        await writer.delete("y")
        await eventually(lambda: reader.metrics().near_cache.counters.invalidated >= 2)
        assert await reader.get("x") == b"2"
        assert await reader.get("y") is None
        # the writer ignored its own announcements
        assert writer.metrics().near_cache.counters.invalidated == 0


async def test_lost_messages_clear_the_near_cache(local: LocalCluster, inspect: Inspector) -> None:
    ns = f"n{next(_ns)}"
    async with Cluster(config(local.nodes, ns, near_cache_size=100)) as cluster:
        await subscribed(cluster, inspect)
        await cluster.set_many({f"g{i}": b"v" for i in range(20)})
        await cluster.get_many([f"g{i}" for i in range(20)])
        assert cluster.metrics().near_cache.size == 20
        clears = cluster.metrics().near_cache.counters.clears
        node = cluster._subscriber.node if cluster._subscriber else None
        assert node is not None
        # drop the subscription's connection: the transport reconnects and reports a gap
        inspect.clients[node].execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: cluster.metrics().near_cache.counters.clears > clears)
        assert cluster.metrics().near_cache.size == 0


async def test_subscriber_moves_off_a_dead_node(local: LocalCluster, inspect: Inspector) -> None:
    ns = f"n{next(_ns)}"
    cfg = config(local.nodes, ns, near_cache_size=100, node_backoff=30)
    try:
        async with Cluster(cfg) as reader, Cluster(cfg) as writer:
            await subscribed(reader, inspect)
            first = reader._subscriber.node if reader._subscriber else None
            assert first is not None
            await reader.set("m", b"1")
            assert await reader.get("m") == b"1"
            local.kill([n.id for n in local.nodes].index(first))
            reader.router.report_failure(first)
            writer.router.report_failure(first)
            await eventually(
                lambda: (
                    reader._subscriber is not None and reader._subscriber.node not in (None, first)
                )
            )
            assert reader.metrics().near_cache.size == 0
            await subscribed(reader, inspect)
            await reader.get("m")
            await writer.set("m", b"2")
            await eventually(lambda: reader.metrics().near_cache.counters.invalidated >= 1)
            assert await reader.get("m") == b"2"
    finally:
        for i in range(len(local.nodes)):
            if not local.is_running(i):
                local.restart(i)


async def test_garbage_on_the_channel_is_counted_not_fatal(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = f"n{next(_ns)}"
    async with Cluster(config(local.nodes, ns, near_cache_size=10)) as cluster:
        await subscribed(cluster, inspect)
        node = cluster._subscriber.node if cluster._subscriber else None
        assert node is not None
        for junk in (
            b"",
            b"CRINV1",
            b"CRINV1" + b"o" * 16 + b"\x00\x00\x00\x00\x09ab",
            b"\xff" * 9,
        ):
            inspect.clients[node].publish(f"{ns}:inval", junk)
        await eventually(lambda: cluster.metrics().near_cache.counters.messages_dropped >= 4)
        await cluster.set("still", b"ok")
        assert await cluster.get("still") == b"ok"


def test_invalidation_messages_split_to_fit() -> None:
    sender = InvalidationCodec(MessageCodec(None, "ns", 1024), "me")
    receiver = InvalidationCodec(MessageCodec(None, "ns", 1024), "other")
    keys = [f"key{i}".encode() for i in range(300)] + [b"\x00\xff bin"]
    messages = sender.encode(keys)
    assert len(messages) > 1
    assert all(len(m) <= 1024 for m in messages)
    decoded: list[bytes] = []
    for message in messages:
        who, clear_all, part = receiver.decode(message)
        assert who == "me"
        assert not clear_all
        decoded.extend(part)
    assert decoded == keys
    [big] = sender.encode([b"x" * 5000])
    assert receiver.decode(big)[1] is True
    with pytest.raises(ValueError, match="rejected"):
        receiver.decode(messages[0])  # a replay


def test_invalidations_are_signed_when_a_secret_is_set() -> None:
    good = Keyring({"k1": b"s" * 32})
    bad = Keyring({"k1": b"x" * 32})
    sender = InvalidationCodec(MessageCodec(bad, "ns"), "intruder")
    receiver = InvalidationCodec(MessageCodec(good, "ns"), "me")
    with pytest.raises(ValueError, match="rejected"):
        receiver.decode(sender.encode([b"k"])[0])
    unsigned = InvalidationCodec(MessageCodec(None, "ns"), "anon")
    with pytest.raises(ValueError, match="rejected"):
        receiver.decode(unsigned.encode([b"k"])[0])
    friend = InvalidationCodec(MessageCodec(good, "ns"), "friend")
    assert receiver.decode(friend.encode([b"k"])[0]) == ("friend", False, [b"k"])


def test_near_cache_lru_order() -> None:
    now = [0.0]
    cache = NearCache(2, 10.0, clock=lambda: now[0])
    cache.put(b"a", b"1", None, cache.generation)
    cache.put(b"b", b"2", None, cache.generation)
    assert cache.get(b"a") == b"1"
    cache.put(b"c", b"3", None, cache.generation)
    assert cache.get(b"b") is None
    assert cache.get(b"a") == b"1"
    now[0] = 11.0
    assert cache.get(b"a") is None


def test_near_cache_skips_values_read_before_an_invalidation() -> None:
    cache = NearCache(10, 10.0, clock=lambda: 0.0)
    seen = cache.generation
    cache.invalidate([b"other"])  # arrives while the read is in flight
    cache.put(b"k", b"maybe stale", None, seen)
    assert cache.get(b"k") is None
    cache.put(b"k", b"fresh", None, cache.generation)
    assert cache.get(b"k") == b"fresh"
