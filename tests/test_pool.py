"""Pool: leasing, FIFO fairness, health checks, back-off, faults and clean close."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from cachering.errors import NodeUnavailable, ResponseError
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Connection, Pool, PoolStats, Script

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(2) as c:
        yield c


@pytest.fixture
def spec(cluster: LocalCluster) -> NodeSpec:
    return cluster.nodes[0]


@pytest.fixture
def faulty(cluster: LocalCluster) -> Iterator[NodeSpec]:
    """Node 1, which tests may pause or kill; it is running and resumed afterwards."""
    yield cluster.nodes[1]
    if cluster.is_paused(1):
        cluster.resume(1)
    if not cluster.is_running(1):
        cluster.restart(1)


async def client_count(spec: NodeSpec) -> int:
    conn = await Connection.open(spec)
    try:
        listing = await conn.execute("CLIENT", "LIST")
    finally:
        await conn.aclose()
    return len(listing.splitlines()) - 1  # minus the connection asking


async def wait_until(predicate: object) -> None:
    with anyio.fail_after(5):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.005)


async def test_commands_pipeline_script_and_stats(spec: NodeSpec) -> None:
    async with Pool(spec, max_size=3) as pool:
        assert pool.stats == PoolStats(0, 0, 0, 0, 0, 0, 0)
        assert await pool.execute("SET", "pool:a", "1") == b"OK"
        assert await pool.pipeline([("INCR", "pool:a"), ("GET", "pool:a")]) == [2, b"2"]
        with pytest.raises(ResponseError):
            await pool.execute("NOPE")
        replies = await pool.pipeline([("GET", "pool:a"), ("NOPE",)], raise_on_error=False)
        assert replies[0] == b"2"
        assert isinstance(replies[1], ResponseError)
        script = Script("return tonumber(ARGV[1]) * 2")
        await pool.execute("SCRIPT", "FLUSH")
        assert await pool.run_script(script, [], [21]) == 42
        stats = pool.stats
        # Sequential calls reuse one connection; error replies do not discard it.
        assert (stats.size, stats.idle, stats.in_use, stats.created, stats.discarded) == (
            1,
            1,
            0,
            1,
            0,
        )
        async with pool.connection() as conn:
            assert pool.stats.in_use == 1
            await conn.execute("SET", "pool:b", "x")
            assert await conn.execute("GET", "pool:b") == b"x"
        assert pool.stats.idle == 1
    assert pool.closed


async def test_exhaustion_and_fifo_fairness(spec: NodeSpec) -> None:
    # One connection, so each waiter is served only after the previous one released
    # (trio wakes tasks released together in random order, by design).
    order: list[int] = []
    async with Pool(spec, max_size=1) as pool:
        async with anyio.create_task_group() as tg, pool.connection() as held:
            assert pool.stats.size == 1

            async def worker(i: int) -> None:
                async with pool.connection() as conn:
                    order.append(i)
                    await conn.execute("PING")

            for i in range(6):
                tg.start_soon(worker, i)
                await wait_until(lambda i=i: pool.stats.waiting == i + 1)
            assert pool.stats.in_use == 1
            await held.execute("PING")
        assert order == list(range(6))
        assert pool.stats == PoolStats(1, 1, 0, 0, 1, 0, 0)


async def test_bounded_size_under_load(spec: NodeSpec) -> None:
    async with Pool(spec, max_size=3) as pool:
        peak = 0

        async def worker() -> None:
            nonlocal peak
            async with pool.connection() as conn:
                peak = max(peak, pool.stats.in_use)
                await conn.execute("PING")
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(worker)
        assert peak == 3
        assert pool.stats.size == 3
        assert pool.stats.created == 3
        assert pool.stats.waiting == 0


async def test_cancelled_waiter_leaves_the_queue(spec: NodeSpec) -> None:
    async with Pool(spec, max_size=1) as pool:
        async with pool.connection():
            with anyio.move_on_after(0.05):
                await pool.execute("PING")
            assert pool.stats.waiting == 0
        assert await pool.execute("PING") == b"PONG"
        assert pool.stats.size == 1


async def test_cancellation_mid_pipeline_discards_connection(
    cluster: LocalCluster, faulty: NodeSpec
) -> None:
    async with Pool(faulty, max_size=2, timeout=None) as pool:
        await pool.execute("PING")
        cluster.pause(1)
        try:
            with anyio.move_on_after(0.1) as scope:
                await pool.pipeline([("SET", f"cancel:{i}", i) for i in range(5000)])
            assert scope.cancelled_caught
            assert pool.stats.size == 0
            assert pool.stats.discarded == 1
        finally:
            cluster.resume(1)
        replies = await pool.pipeline([("GET", "cancel:0"), ("PING",)])
        assert replies[1] == b"PONG"
        assert pool.stats.size == 1


async def test_timeout_against_paused_server(cluster: LocalCluster, faulty: NodeSpec) -> None:
    async with Pool(faulty, timeout=0.1) as pool:
        assert await pool.execute("PING") == b"PONG"
        cluster.pause(1)
        try:
            with pytest.raises(NodeUnavailable, match="timeout"):
                await pool.execute("PING")
            with pytest.raises(NodeUnavailable, match="timeout"):
                await pool.execute("PING", timeout=0.05)
        finally:
            cluster.resume(1)
        # The kernel accepts a new connection for the paused server; its PING times out.
        assert pool.stats.discarded == 2
        assert await pool.execute("PING") == b"PONG"


async def test_reconnect_after_kill_and_restart(cluster: LocalCluster, faulty: NodeSpec) -> None:
    async with Pool(faulty, backoff_base=0.001, backoff_max=0.01) as pool:
        await pool.execute("SET", "restart:k", "v")
        cluster.kill(1)
        with pytest.raises(NodeUnavailable) as info:
            await pool.execute("GET", "restart:k")
        assert info.value.node == faulty.id
        assert pool.stats.discarded == 1  # the idle connection was seen dead
        assert pool.stats.connect_failures >= 1
        await anyio.to_thread.run_sync(cluster.restart, 1)
        for _ in range(50):
            try:
                reply = await pool.execute("GET", "restart:k")
                break
            except NodeUnavailable:
                await anyio.sleep(0.01)
        assert reply is None  # restarted empty
        assert pool.stats.size == 1


async def test_backoff_fails_fast(cluster: LocalCluster, faulty: NodeSpec) -> None:
    async with Pool(faulty, backoff_base=100.0, backoff_max=100.0) as pool:
        cluster.kill(1)
        with pytest.raises(NodeUnavailable, match="refused"):
            await pool.execute("PING")
        assert pool.stats.connect_failures == 1
        await anyio.to_thread.run_sync(cluster.restart, 1)
        for _ in range(3):
            with pytest.raises(NodeUnavailable, match="back-off"):
                await pool.execute("PING")
        # Failing fast did not try to connect again.
        assert pool.stats.connect_failures == 1
        assert pool.stats.size == 0


async def test_first_call_after_backoff_window_retries(faulty: NodeSpec) -> None:
    dead = NodeSpec("dead", "127.0.0.1", 1)
    async with Pool(dead, backoff_base=0.01, backoff_max=0.01) as pool:
        for _ in range(3):
            with pytest.raises(NodeUnavailable):
                await pool.execute("PING")
            await anyio.sleep(0.02)
        assert pool.stats.connect_failures == 3


async def test_health_check_replaces_dead_idle_connection(spec: NodeSpec) -> None:
    async with Pool(spec, health_check_interval=0) as pool:
        my_id = await pool.execute("CLIENT", "ID")
        admin = await Connection.open(spec)
        try:
            assert await admin.execute("CLIENT", "KILL", "ID", my_id) == 1
        finally:
            await admin.aclose()
        assert await pool.execute("CLIENT", "ID") != my_id
        assert pool.stats.discarded == 1
        assert pool.stats.created == 2


async def test_idle_connection_closed_by_server_is_replaced(spec: NodeSpec) -> None:
    async with Pool(spec) as pool:
        my_id = await pool.execute("CLIENT", "ID")
        idle = pool._idle[-1]
        admin = await Connection.open(spec)
        try:
            assert await admin.execute("CLIENT", "KILL", "ID", my_id) == 1
        finally:
            await admin.aclose()
        # The EOF reaches the socket shortly after the server closed it.
        await wait_until(lambda: not idle.looks_alive())
        assert await pool.execute("CLIENT", "ID") != my_id
        assert pool.stats.discarded == 1
        assert pool.stats.created == 2


async def test_aclose_closes_every_socket_and_fails_later_calls(spec: NodeSpec) -> None:
    before = await client_count(spec)
    pool = Pool(spec, max_size=4)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(pool.execute, "PING")
    assert pool.stats.size >= 1
    assert await client_count(spec) == before + pool.stats.size
    leased = pool.connection()
    conn = await leased.__aenter__()
    await pool.aclose()
    assert conn.broken  # leased connections are closed too
    await leased.__aexit__(None, None, None)
    await pool.aclose()  # idempotent
    assert await client_count(spec) == before
    assert pool.stats.size == 0
    with pytest.raises(NodeUnavailable, match="closed"):
        await pool.execute("PING")


async def test_aclose_wakes_waiters(spec: NodeSpec) -> None:
    pool = Pool(spec, max_size=1)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pool.execute("PING")
        except NodeUnavailable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, pool.connection():
        tg.start_soon(waiter)
        await wait_until(lambda: pool.stats.waiting == 1)
        await pool.aclose()
    assert len(errors) == 1
    assert "closed" in str(errors[0])


def test_bad_pool_arguments(spec: NodeSpec) -> None:
    with pytest.raises(ValueError, match="max_size"):
        Pool(spec, max_size=0)
    with pytest.raises(ValueError, match="timeout"):
        Pool(spec, timeout=-1)
    with pytest.raises(TypeError, match="NodeSpec"):
        Pool("127.0.0.1:6379")  # type: ignore[arg-type]


async def test_cancelled_during_health_check_ping(cluster: LocalCluster, faulty: NodeSpec) -> None:
    async with Pool(faulty, health_check_interval=0) as pool:
        await pool.execute("PING")
        cluster.pause(1)
        try:
            with anyio.move_on_after(0.1) as scope:
                await pool.execute("PING")
            assert scope.cancelled_caught
        finally:
            cluster.resume(1)
        assert pool.stats.size == 0
        assert pool.stats.discarded == 1
        assert await pool.execute("PING") == b"PONG"
        assert pool.stats.size == 1


async def test_health_check_ping_timeout_discards(cluster: LocalCluster, faulty: NodeSpec) -> None:
    async with Pool(faulty, health_check_interval=0, connect_timeout=0.05, timeout=0.05) as pool:
        await pool.execute("PING")
        cluster.pause(1)
        try:
            with pytest.raises(NodeUnavailable, match="timeout"):
                await pool.execute("PING")
        finally:
            cluster.resume(1)
        # The idle connection failed its PING; a new one was opened and timed out too.
        assert pool.stats.discarded == 2
        assert pool.stats.size == 0
        assert await pool.execute("PING") == b"PONG"


async def test_waiter_cancelled_just_as_it_is_served(spec: NodeSpec) -> None:
    async with Pool(spec, max_size=1) as pool:
        scope = anyio.CancelScope()

        async def waiter() -> None:
            with scope:
                async with pool.connection() as conn:
                    await conn.execute("PING")

        async with anyio.create_task_group() as tg:
            lease = pool.connection()
            await lease.__aenter__()
            tg.start_soon(waiter)
            await wait_until(lambda: pool.stats.waiting == 1)
            await lease.__aexit__(None, None, None)  # hands the connection over...
            scope.cancel()  # ...and cancels the waiter before it runs
        # Depending on where the cancellation lands, the connection went back idle or
        # was discarded mid-PING; either way no slot leaked.
        stats = pool.stats
        assert (stats.in_use, stats.waiting) == (0, 0)
        assert stats.size == stats.idle == 1 - stats.discarded
        assert await pool.execute("PING") == b"PONG"
        assert pool.stats.size == 1
