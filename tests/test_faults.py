"""FaultProxy in front of a real redis-server, on asyncio and trio."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest
import redis
from anyio.abc import SocketStream
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachering.local import LocalCluster
from cachering.local.faults import FaultProxy

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

HOST = "127.0.0.1"
BROKEN = (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError, OSError)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1) as c:
        yield c


@pytest.fixture
def port(cluster: LocalCluster) -> int:
    return cluster.ports[0]


def direct(port: int) -> redis.Redis:
    return redis.Redis(HOST, port, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def cmd(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        out.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
    return b"".join(out)


async def roundtrip(stream: SocketStream, request: bytes) -> bytes:
    await stream.send(request)
    return await stream.receive()


async def nothing_within(stream: SocketStream, seconds: float) -> bool:
    """True when no byte arrives on ``stream`` for ``seconds``."""
    with anyio.move_on_after(seconds) as scope:
        await stream.receive()
    return scope.cancelled_caught


async def test_proxies_ping(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy:
        assert proxy.host == HOST
        assert proxy.port != port
        async with await anyio.connect_tcp(proxy.host, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
            assert proxy.connections == 1
            assert proxy.bytes_up == 6
            assert proxy.bytes_down == 7
        with anyio.fail_after(5):
            while proxy.connections:
                await anyio.sleep(0.005)


async def test_serve_in_a_task_group(port: int) -> None:
    proxy = FaultProxy(HOST, port)
    with pytest.raises(RuntimeError, match="not serving"):
        _ = proxy.port
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        async with await anyio.connect_tcp(HOST, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
        await proxy.aclose()
    await proxy.aclose()  # idempotent
    with pytest.raises(OSError):  # noqa: PT011 - the refusal errno differs by platform
        await anyio.connect_tcp(HOST, proxy.port)


async def test_redis_py_through_proxy(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy:

        def work() -> bytes | None:
            with direct(proxy.port) as r:
                r.set("via-proxy", "yes")
                value: bytes | None = r.get("via-proxy")
                return value

        assert await anyio.to_thread.run_sync(work) == b"yes"
        assert proxy.bytes_up > 0


async def test_large_pipeline_through_proxy(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy:

        def work() -> list[object]:
            with direct(proxy.port) as r:
                pipe = r.pipeline(transaction=False)
                for i in range(3000):
                    pipe.set(f"pipe:{i}", "x" * 100)
                    pipe.get(f"pipe:{i}")
                return pipe.execute()

        replies = await anyio.to_thread.run_sync(work)
        assert replies == [True, b"x" * 100] * 3000
        assert proxy.bytes_up > 3000 * 100
        assert proxy.bytes_down > 3000 * 100


async def test_blackhole_both_then_heal(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy, await anyio.connect_tcp(HOST, proxy.port) as s:
        assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
        proxy.blackhole()
        assert proxy.is_blackholed("up")
        assert proxy.is_blackholed("down")
        await s.send(b"PING\r\n")
        assert await nothing_within(s, 0.2)
        assert proxy.connections == 1  # the connection stays open, like a partition
        assert proxy.bytes_dropped == 6
        proxy.heal()
        assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"  # the swallowed PING is gone


async def test_blackhole_down_only_still_delivers_writes(port: int) -> None:
    with direct(port) as r:
        r.delete("bh-down")
    async with FaultProxy(HOST, port) as proxy, await anyio.connect_tcp(HOST, proxy.port) as s:
        proxy.blackhole("down")
        await s.send(cmd("SET", "bh-down", "1"))
        assert await nothing_within(s, 0.2)
        with direct(port) as r:
            assert r.get("bh-down") == b"1"


async def test_blackhole_up_only_drops_writes(port: int) -> None:
    with direct(port) as r:
        r.delete("bh-up")
    async with FaultProxy(HOST, port) as proxy, await anyio.connect_tcp(HOST, proxy.port) as s:
        proxy.blackhole("up")
        assert not proxy.is_blackholed("down")
        await s.send(cmd("SET", "bh-up", "1"))
        assert await nothing_within(s, 0.2)
        with direct(port) as r:
            assert r.get("bh-up") is None
        proxy.heal()
        assert await roundtrip(s, cmd("GET", "bh-up")) == b"$-1\r\n"


async def test_reset_drops_current_connections_only(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy:
        async with await anyio.connect_tcp(HOST, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
            proxy.reset()
            with anyio.fail_after(5), pytest.raises(BROKEN):
                await s.receive()
        async with await anyio.connect_tcp(HOST, proxy.port) as s2:
            assert await roundtrip(s2, b"PING\r\n") == b"+PONG\r\n"


async def test_delay_adds_latency(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy, await anyio.connect_tcp(HOST, proxy.port) as s:
        proxy.delay(0.1, "up")
        proxy.delay(0.05, "down")
        start = anyio.current_time()
        assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
        assert anyio.current_time() - start >= 0.15
        proxy.delay(0)
        assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"


async def test_refuse_new_connections(port: int) -> None:
    async with FaultProxy(HOST, port) as proxy:
        async with await anyio.connect_tcp(HOST, proxy.port) as old:
            proxy.refuse()
            async with await anyio.connect_tcp(HOST, proxy.port) as s:
                with anyio.fail_after(5), pytest.raises(BROKEN):
                    await roundtrip(s, b"PING\r\n")
            assert await roundtrip(old, b"PING\r\n") == b"+PONG\r\n"
        proxy.refuse(False)
        async with await anyio.connect_tcp(HOST, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"


async def test_target_down_closes_client() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        dead_port = probe.getsockname()[1]
    async with FaultProxy(HOST, dead_port) as proxy, await anyio.connect_tcp(HOST, proxy.port) as s:
        with anyio.fail_after(5), pytest.raises(BROKEN):
            await roundtrip(s, b"PING\r\n")
        assert proxy.connections == 0


async def test_server_killed_mid_connection() -> None:
    async with LocalCluster(1) as c, FaultProxy(HOST, c.ports[0]) as proxy:
        async with await anyio.connect_tcp(HOST, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"
            c.kill(0)
            with anyio.fail_after(5), pytest.raises(BROKEN):
                await roundtrip(s, b"PING\r\n")
        await anyio.to_thread.run_sync(c.restart, 0)
        async with await anyio.connect_tcp(HOST, proxy.port) as s:
            assert await roundtrip(s, b"PING\r\n") == b"+PONG\r\n"


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="target_port"):
        FaultProxy(HOST, 0)
    with pytest.raises(ValueError, match="target_host"):
        FaultProxy("", 1)
    proxy = FaultProxy(HOST, 6379)
    with pytest.raises(ValueError, match="direction"):
        proxy.blackhole("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(float("nan"))
