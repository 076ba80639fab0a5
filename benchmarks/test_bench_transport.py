"""pytest-benchmark version of benchmarks/transport_report.py (run with ``make bench``).

Each client runs inside a blocking portal (an event loop in a helper thread), and every
benchmark round is one batch (1,000 sequential PINGs, or one pipeline of 10,000 SETs),
so the cost of crossing into the loop is amortised. Compare the rows as ratios.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Pool

PINGS = 1000
PIPELINE = 10_000
COMMANDS = [("SET", f"bench:{i}", b"v" * 16) for i in range(PIPELINE)]

Client = tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]


@pytest.fixture(scope="module")
def spec() -> Iterator[NodeSpec]:
    with LocalCluster(1) as cluster:
        yield cluster.nodes[0]


@asynccontextmanager
async def _cachering(spec: NodeSpec) -> AsyncIterator[Client]:
    async with Pool(spec) as pool:
        yield (lambda: pool.execute("PING"), lambda: pool.pipeline(COMMANDS))


@asynccontextmanager
async def _redis_py(spec: NodeSpec) -> AsyncIterator[Client]:
    import redis.asyncio

    client = redis.asyncio.Redis(host=spec.host, port=spec.port)

    async def pipe() -> Any:
        p = client.pipeline(transaction=False)
        for _, key, value in COMMANDS:
            p.set(key, value)
        return await p.execute()

    try:
        yield (client.ping, pipe)
    finally:
        await client.aclose()


@asynccontextmanager
async def _coredis(spec: NodeSpec) -> AsyncIterator[Client]:
    import coredis

    async with coredis.Redis(host=spec.host, port=spec.port) as client:

        async def pipe() -> Any:
            async with client.pipeline(transaction=False) as p:
                for _, key, value in COMMANDS:
                    p.set(key, value)

        yield (client.ping, pipe)


CLIENTS: dict[str, tuple[str, Callable[[NodeSpec], AbstractAsyncContextManager[Client]]]] = {
    "cachering-asyncio": ("asyncio", _cachering),
    "cachering-trio": ("trio", _cachering),
    "redis-py-asyncio": ("asyncio", _redis_py),
    "coredis-asyncio": ("asyncio", _coredis),
}


@pytest.fixture(params=list(CLIENTS), scope="module")
def client(
    request: pytest.FixtureRequest, spec: NodeSpec
) -> Iterator[tuple[BlockingPortal, Client]]:
    backend, factory = CLIENTS[request.param]
    # The client's context manager runs in one task of the portal's loop (coredis
    # needs that).
    with (
        start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(factory(spec)) as calls,
    ):
        yield portal, calls


def test_ping_sequential_x1000(benchmark: Any, client: tuple[BlockingPortal, Client]) -> None:
    portal, (ping, _) = client

    async def batch() -> list[Any]:
        return [await ping() for _ in range(PINGS)]

    portal.call(batch)  # warm up: connect
    replies = benchmark.pedantic(portal.call, args=(batch,), rounds=10, iterations=1)
    # redis-py answers True, the others the status reply
    assert len(replies) == PINGS
    assert all(r in (True, b"PONG", "PONG") for r in replies)


def test_pipeline_10000_sets(
    benchmark: Any, client: tuple[BlockingPortal, Client], spec: NodeSpec
) -> None:
    portal, (_, pipe) = client
    direct = redis.Redis(host=spec.host, port=spec.port)
    try:
        direct.flushall()  # what is stored afterwards was written by this client
        portal.call(pipe)
        benchmark.pedantic(portal.call, args=(pipe,), rounds=10, iterations=1)
        assert direct.dbsize() == PIPELINE
        assert direct.get(COMMANDS[-1][1]) == COMMANDS[-1][2]
    finally:
        direct.close()
