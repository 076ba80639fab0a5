"""pytest-benchmark version of benchmarks/cluster_report.py (run with ``make bench``).

A 5-node LocalCluster; each client runs inside a blocking portal (an event loop in a
helper thread). Compare rows of one run as ratios:

- ``test_many``: ``get_many``/``set_many`` of 1,000 keys, cachering (asyncio and trio)
  versus uhashring + redis.asyncio with one MGET/MSET per node issued concurrently
  (target >= 1.5x throughput);
- ``test_single``: one ``get``/``set`` versus a bare ``Pool.execute("PING")`` (<= 1.25x);
- ``test_replication``: ``set_many`` + ``wait_replicated`` with replicas=2 versus 1
  (>= 0.6x);
- ``test_sync_100k``: 100,000 replica writes batched versus one script call per key (>= 10x).
"""

from __future__ import annotations

import asyncio  # the redis-py peer runs on asyncio itself
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.data.scripts import APPLY_SOURCE, apply_args
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Pool, Script

KEYS = [f"bench:{i}" for i in range(1000)]
VALUE = b"v" * 100
MAPPING = dict.fromkeys(KEYS, VALUE)
SYNC_WRITES = 100_000

Op = Callable[[], Awaitable[Any]]
Check = Callable[[], Awaitable[None]]
"""Run once after the rounds: fails if what the benchmark did is not in place."""


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[NodeSpec]]:
    with LocalCluster(5) as local:
        yield local.nodes


def _config(nodes: list[NodeSpec], **options: Any) -> ClusterConfig:
    return ClusterConfig(nodes=tuple(nodes), namespace="bench", **options)


def _run(
    benchmark: Any,
    backend: str,
    factory: Callable[[], AbstractAsyncContextManager[tuple[Op, Check]]],
) -> None:
    with (
        start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(factory()) as (op, check),
    ):
        portal.call(op)
        benchmark(portal.call, op)
        portal.call(check)


@asynccontextmanager
async def _cluster(
    nodes: list[NodeSpec], what: str, replicas: int = 1
) -> AsyncIterator[tuple[Op, Check]]:
    async with Cluster(_config(nodes, replicas=replicas)) as cluster:
        await cluster.set_many(MAPPING)
        await cluster.set("one", VALUE)

        async def replicate() -> None:
            for _ in range(10):
                await cluster.set_many(MAPPING)
            await cluster.wait_replicated()

        ops: dict[str, Op] = {
            "get_many": lambda: cluster.get_many(KEYS),
            "set_many": lambda: cluster.set_many(MAPPING),
            "get": lambda: cluster.get("one"),
            "set": lambda: cluster.set("one", VALUE),
            "replicate": replicate,
        }

        async def check() -> None:
            assert await cluster.get_many(KEYS) == [VALUE] * len(KEYS)
            assert await cluster.get("one") == VALUE
            if what == "replicate" and replicas > 1:
                await cluster.wait_replicated()
                sync = cluster.metrics().sync.counters
                assert sync.dropped == 0
                assert sync.inline + sync.applied >= 10 * len(KEYS)

        yield ops[what], check


@asynccontextmanager
async def _ping(nodes: list[NodeSpec]) -> AsyncIterator[tuple[Op, Check]]:
    async with Pool(nodes[0]) as pool:

        async def check() -> None:
            assert await pool.execute("PING") in (b"PONG", "PONG")

        yield lambda: pool.execute("PING"), check


@asynccontextmanager
async def _peer(nodes: list[NodeSpec], what: str) -> AsyncIterator[tuple[Op, Check]]:
    import redis.asyncio
    from uhashring import HashRing

    clients = {n.id: redis.asyncio.Redis(host=n.host, port=n.port) for n in nodes}
    ring = HashRing(nodes=list(clients))

    def group() -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in KEYS:
            groups.setdefault(ring.get_node(key), []).append(key)
        return groups

    async def get_many() -> list[Any]:
        groups = group()
        replies = await asyncio.gather(*(clients[n].mget(ks) for n, ks in groups.items()))
        found: dict[str, Any] = {}
        for keys, vals in zip(groups.values(), replies, strict=True):
            found.update(zip(keys, vals, strict=True))
        return [found[k] for k in KEYS]

    async def set_many() -> None:
        groups = group()
        await asyncio.gather(
            *(clients[n].mset(dict.fromkeys(ks, VALUE)) for n, ks in groups.items())
        )

    async def check() -> None:
        assert await get_many() == [VALUE] * len(KEYS)

    await set_many()
    try:
        yield (get_many if what == "get_many" else set_many), check
    finally:
        for client in clients.values():
            await client.aclose()


@pytest.mark.parametrize("who", ["cachering-asyncio", "cachering-trio", "uhashring-redis-py"])
@pytest.mark.parametrize("what", ["get_many", "set_many"])
def test_many(benchmark: Any, nodes: list[NodeSpec], who: str, what: str) -> None:
    benchmark.group = f"{what} 1000 keys"
    if who.startswith("cachering"):
        _run(benchmark, who.split("-")[1], lambda: _cluster(nodes, what))
    else:
        _run(benchmark, "asyncio", lambda: _peer(nodes, what))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("what", ["ping", "get", "set"])
def test_single(benchmark: Any, nodes: list[NodeSpec], backend: str, what: str) -> None:
    benchmark.group = f"single op latency ({backend})"
    if what == "ping":
        _run(benchmark, backend, lambda: _ping(nodes))
    else:
        _run(benchmark, backend, lambda: _cluster(nodes, what, replicas=2))


@pytest.mark.parametrize("replicas", [1, 2])
def test_replication(benchmark: Any, nodes: list[NodeSpec], replicas: int) -> None:
    benchmark.group = "10x set_many 1000 keys + wait_replicated"
    _run(benchmark, "asyncio", lambda: _cluster(nodes, "replicate", replicas=replicas))


def _entries() -> list[tuple[bytes, bytes, int]]:
    clock = values.HybridClock.random()
    return [
        (f"bench:k:s{i}".encode(), values.encode(clock.next(), VALUE), 0)
        for i in range(SYNC_WRITES)
    ]


@pytest.mark.parametrize("mode", ["batched", "per-key"])
def test_sync_100k(benchmark: Any, nodes: list[NodeSpec], mode: str) -> None:
    benchmark.group = "100k replica writes"

    async def batched() -> int:
        entries = _entries()
        async with Cluster(_config(nodes)) as cluster:
            sync = cluster._sync
            assert sync is not None
            ids = [n.id for n in nodes]
            for i in range(0, SYNC_WRITES, 1000):
                await sync.submit(ids[(i // 1000) % 5], entries[i : i + 1000], holder=ids[0])
            await sync.flush()
            assert sync.stats.dropped == 0
            return sync.stats.applied + sync.stats.stale

    async def per_key() -> int:
        entries = _entries()
        script = Script(APPLY_SOURCE)
        pools = [Pool(n) for n in nodes]
        answered = 0

        async def worker(w: int) -> None:
            nonlocal answered
            for i in range(w, SYNC_WRITES, 10):
                keys, argv = apply_args([entries[i]], hint_limit=1)
                reply = await pools[i % 5].run_script(script, keys, argv)
                answered += len(reply)

        try:
            async with anyio.create_task_group() as tg:
                for w in range(10):
                    tg.start_soon(worker, w)
        finally:
            for pool in pools:
                await pool.aclose()
        return answered

    fn = batched if mode == "batched" else per_key
    written = benchmark.pedantic(lambda: anyio.run(fn), rounds=1, iterations=1)
    assert written == SYNC_WRITES  # every replica write reached its node
