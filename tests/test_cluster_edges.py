"""Promises at the edges: one timeout per unresponsive node, routing answers in force,
near caches after a failed write."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest

from cachering.cluster import Cluster
from cachering.errors import ConsistencyError, NodeUnavailable
from cachering.local import FaultProxy, LocalCluster
from cachering.node import NodeSpec
from cluster_helpers import Inspector, config
from failover_harness import failover_config

pytestmark = pytest.mark.anyio

_ns = itertools.count()
TIMEOUT = 0.5


@pytest.fixture
def ns(local: LocalCluster, inspect: Inspector) -> Iterator[str]:
    yield f"e{next(_ns)}"
    for i, node in enumerate(local.nodes):
        if not local.is_running(i) or local.is_paused(i):
            local.restart(i)
            inspect.reconnect(node.id)


@contextlib.asynccontextmanager
async def proxied(local: LocalCluster) -> AsyncIterator[tuple[list[FaultProxy], list[NodeSpec]]]:
    """One FaultProxy in front of every server, and node specs that go through them."""
    proxies = [FaultProxy(n.host, n.port) for n in local.nodes]
    async with contextlib.AsyncExitStack() as stack:
        for proxy in proxies:
            await stack.enter_async_context(proxy)
        specs = [NodeSpec(n.id, p.host, p.port) for n, p in zip(local.nodes, proxies, strict=True)]
        yield proxies, specs


def key_on(cluster: Cluster, node: str, prefix: str = "k") -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(10_000)) if cluster.node_for(k) == node)


@pytest.mark.parametrize("backoff", [0.0, 30.0])
async def test_a_set_whose_primary_goes_silent_pays_one_timeout(
    local: LocalCluster, inspect: Inspector, ns: str, backoff: float
) -> None:
    # The bound counts timeouts (two would be >= 2 x timeout), it does not time the code.
    async with proxied(local) as (proxies, specs):
        cfg = config(specs, ns, timeout=TIMEOUT, node_backoff=backoff, control_plane=False)
        async with Cluster(cfg) as cluster:
            key = key_on(cluster, "n0")
            await cluster.set(key, b"warm")  # a live connection to every node
            await cluster.wait_replicated()
            proxies[0].blackhole()
            start = anyio.current_time()
            await cluster.set(key, b"v")
            elapsed = anyio.current_time() - start
            assert elapsed < 1.6 * TIMEOUT, f"set took {elapsed:.3f} s: more than one timeout"
            assert cluster.metrics().as_dict()["errors"]["n0"] == 1
            await cluster.wait_replicated()
        other = next(n for n in cluster.home_nodes(key) if n != "n0")
        assert inspect.copies(ns, key)[other].endswith(b"v")
        assert any(key.encode() in inspect.hints(n, ns, "n0") for n in ("n1", "n2"))


@pytest.mark.parametrize("backoff", [0.0, 30.0])
async def test_a_set_many_whose_primary_goes_silent_pays_one_timeout(
    local: LocalCluster, inspect: Inspector, ns: str, backoff: float
) -> None:
    async with proxied(local) as (proxies, specs):
        cfg = config(specs, ns, timeout=TIMEOUT, node_backoff=backoff, control_plane=False)
        async with Cluster(cfg) as cluster:
            keys = [f"m{i}" for i in range(60)]
            await cluster.set_many(dict.fromkeys(keys, b"warm"))
            await cluster.wait_replicated()
            proxies[0].blackhole()
            start = anyio.current_time()
            await cluster.set_many(dict.fromkeys(keys, b"v"))
            elapsed = anyio.current_time() - start
            assert elapsed < 1.6 * TIMEOUT, f"set_many took {elapsed:.3f} s"
        for key in keys:
            assert inspect.holders(ns, key, skip={"n0"}), key


async def until(check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.02)
    assert check(), what


async def test_routing_answers_are_the_routing_in_force(local: LocalCluster, ns: str) -> None:
    async with proxied(local) as (proxies, specs):
        cfg = config(specs, ns, timeout=TIMEOUT, node_backoff=30.0, control_plane=False)
        async with Cluster(cfg) as cluster:
            key = key_on(cluster, "n0")
            home = cluster.home_nodes(key)
            assert cluster.preference_list(key) == home
            proxies[0].blackhole()
            await cluster.set(key, b"v")  # the call that finds n0 silent
            stand_in = next(n for n in ("n1", "n2") if n not in home)
            # where a write of the key goes now, stand-in included; the homes stay put
            assert cluster.node_for(key) == home[1]
            assert cluster.preference_list(key) == (home[1], stand_in)
            assert cluster.home_nodes(key) == home


async def test_a_node_removed_while_suspect_leaves_the_suspect_set(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with proxied(local) as (proxies, specs):
        cfg = failover_config(specs, ns, consistency="one")
        async with Cluster(cfg) as cluster:
            await until(lambda: cluster.is_leader, "a lone manager leads")
            proxies[2].blackhole()
            await until(lambda: "n2" in cluster.metrics().as_dict()["suspects"], "n2 suspect")
            await cluster.remove_node("n2")
            await until(lambda: "n2" not in cluster.topology, "n2 removed")
            assert cluster.metrics().as_dict()["suspects"] == []
            # plain ring placement again: set_many takes the fast path, no hints
            assert cluster.router.plain() is not None
            keys = [f"r{i}" for i in range(100)]
            await cluster.set_many(dict.fromkeys(keys, b"v"))
            await cluster.wait_replicated()
            assert cluster.metrics().as_dict()["hints_recorded"] == 0
        assert all(inspect.holders(ns, k) == {"n0", "n1"} for k in keys)


async def test_a_write_that_raises_consistency_error_still_invalidates_near_caches(
    local: LocalCluster, ns: str
) -> None:
    cfg = config(local.nodes, ns, replicas=3, near_cache_size=100, near_cache_ttl=60.0)
    cfg = cfg.evolve(control_plane=False, node_backoff=0)
    async with Cluster(cfg) as writer, Cluster(cfg) as reader:
        for c in (writer, reader):
            assert c._subscriber is not None
            await c._subscriber.subscribed.wait()
        await writer.set("k", b"old", consistency="all")
        assert await writer.get("k") == b"old"
        assert await reader.get("k") == b"old"  # both near caches hold it now
        local.kill(2)
        with pytest.raises(ConsistencyError):
            await writer.set("k", b"new", consistency="all")  # n0 and n1 took it
        assert await writer.get("k") == b"new"
        with anyio.fail_after(5):  # the announcement travels over pub/sub
            while await reader.get("k") != b"new":
                await anyio.sleep(0.01)


async def test_the_subscriber_does_not_spin_when_no_node_is_trusted(
    local: LocalCluster, ns: str
) -> None:
    cfg = config(local.nodes, ns, near_cache_size=100, control_plane=False, node_backoff=0.05)
    async with (
        Cluster(cfg) as reader,
        Cluster(cfg.evolve(near_cache_size=0, publish_invalidations=True)) as writer,
    ):
        sub = reader._subscriber
        assert sub is not None
        await sub.subscribed.wait()
        await writer.set("k", b"v1")
        for node in ("n0", "n1", "n2"):  # what the health service does when none answers
            reader.router.mark_suspect(node)
        before = reader.metrics().as_dict()["near_cache"]["clears"]
        await anyio.sleep(1.0)
        # each reconnect clears the near cache: a few at most in a second, not hundreds
        assert reader.metrics().as_dict()["near_cache"]["clears"] - before <= 5
        assert sub.node is not None  # still listening, on a node nobody vouches for
        assert await reader.get("k") == b"v1"
        await writer.set("k", b"v2")
        with anyio.fail_after(5):
            while await reader.get("k") != b"v2":
                await anyio.sleep(0.01)


async def test_an_error_inside_the_block_comes_out_as_itself(local: LocalCluster, ns: str) -> None:
    cfg = config(local.nodes, ns, replicas=1)

    async def lose_the_only_copy() -> None:
        async with Cluster(cfg) as cluster:
            key = key_on(cluster, "n1")
            local.kill(1)
            await cluster.get(key)  # the one copy is gone

    with pytest.raises(NodeUnavailable) as info:
        await lose_the_only_copy()
    assert type(info.value) is NodeUnavailable

    async def raise_inside() -> None:
        async with Cluster(cfg.evolve(control_plane=False)):
            raise KeyError("mine")

    with pytest.raises(KeyError) as raised:
        await raise_inside()
    assert type(raised.value) is KeyError  # not a group that holds it
    assert raised.value.args == ("mine",)
