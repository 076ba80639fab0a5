"""Bad input and misbehaving servers: clear errors, and the pool keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import attrs
import pytest
from anyio.abc import SocketAttribute, SocketStream

from cachering.errors import NodeUnavailable, ProtocolError, ResponseError
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Connection, Pool, PubSub

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def fake_server(first_reply: bytes | None) -> AsyncIterator[NodeSpec]:
    """A TCP server whose first connection reads a command, writes ``first_reply``
    (``None``: nothing) and closes; later connections answer ``+PONG`` to every read."""
    connections = 0

    async def handle(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        async with stream:
            try:
                while True:
                    await stream.receive()
                    if first:
                        if first_reply is not None:
                            await stream.send(first_reply)
                        return
                    await stream.send(b"+PONG\r\n")
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield NodeSpec("fake", "127.0.0.1", port)
        finally:
            tg.cancel_scope.cancel()


async def test_server_closes_mid_reply() -> None:
    async with fake_server(b"$10\r\nabc") as spec:
        conn = await Connection.open(spec)
        with pytest.raises(NodeUnavailable, match="closed by the server mid-reply") as info:
            await conn.execute("GET", "k")
        assert not isinstance(info.value, ProtocolError)
        assert info.value.node == "fake"
        assert conn.broken
        conn2 = await Connection.open(spec)
        assert await conn2.execute("PING") == b"PONG"
        await conn2.aclose()


async def test_server_closes_without_reply_then_pool_recovers() -> None:
    async with fake_server(None) as spec, Pool(spec, max_size=1) as pool:
        with pytest.raises(NodeUnavailable, match="closed by the server") as info:
            await pool.execute("PING")
        assert "mid-reply" not in info.value.reason
        assert pool.stats.discarded == 1
        assert pool.stats.size == 0
        assert await pool.execute("PING") == b"PONG"
        assert pool.stats.size == 1


@pytest.mark.parametrize(
    "garbage", [b"xyz\r\n", b"?\x00\xff\r\n", b":notanumber\r\n", b"*2\r\n:1\r\n$-5\r\n"]
)
async def test_garbage_reply_is_protocol_error_and_pool_recovers(garbage: bytes) -> None:
    async with fake_server(garbage) as spec, Pool(spec, max_size=1) as pool:
        with pytest.raises(ProtocolError, match="bad reply") as info:
            await pool.execute("PING")
        assert isinstance(info.value, NodeUnavailable)
        assert pool.stats.discarded == 1
        assert await pool.execute("PING") == b"PONG"


async def test_garbage_in_the_middle_of_a_pipeline() -> None:
    async with fake_server(b"+OK\r\n+OK\r\n&&&\r\n") as spec:
        conn = await Connection.open(spec)
        with pytest.raises(ProtocolError):
            await conn.pipeline([("SET", "a", 1)] * 3)
        assert conn.broken


async def test_pubsub_survives_garbage() -> None:
    async with fake_server(b"xyz\r\n") as spec, PubSub(spec, backoff_base=0.001) as sub:
        await sub.subscribe("c")
        with anyio.fail_after(5):
            message = await sub.get_message()
        # The bad connection was dropped and replaced: a gap, not a crash.
        assert message is not None
        assert message.kind == "gap"


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1, password="right") as c:
        yield c


@pytest.mark.redis
async def test_wrong_password(auth_cluster: LocalCluster) -> None:
    good = auth_cluster.nodes[0]
    bad = attrs.evolve(good, password="wrong")
    with pytest.raises(NodeUnavailable, match="authentication failed: WRONGPASS") as info:
        await Connection.open(bad)
    assert info.value.node == good.id
    assert "wrong" not in str(info.value).replace("WRONGPASS", "")  # no password echo
    async with Pool(bad, backoff_base=0) as pool:
        with pytest.raises(NodeUnavailable, match="WRONGPASS"):
            await pool.execute("PING")
        assert pool.stats.connect_failures == 1
        assert pool.stats.size == 0
    async with Pool(good) as pool:
        assert await pool.execute("PING") == b"PONG"
    bad_user = attrs.evolve(good, username="nobody")
    with pytest.raises(NodeUnavailable, match="WRONGPASS"):
        await Connection.open(bad_user)


@pytest.mark.redis
async def test_unsupported_argument_types_leave_pool_healthy(auth_cluster: LocalCluster) -> None:
    async with Pool(auth_cluster.nodes[0]) as pool:
        with pytest.raises(TypeError, match="NoneType"):
            await pool.execute("SET", "k", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="object"):
            await pool.pipeline([("SET", "k", object())])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="bool"):
            await pool.run_script(__import__("cachering.resp").resp.Script("return 1"), [], [True])
        with pytest.raises(ResponseError, match="wrong number"):
            await pool.execute("GET")
        assert pool.stats.discarded == 0
        assert await pool.execute("PING") == b"PONG"


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("http://127.0.0.1:6379", "scheme"),
        ("redis://:6379", "host"),
        ("redis://127.0.0.1:notaport", "port"),
        ("redis://127.0.0.1:6379/x", "database"),
        ("redis://127.0.0.1:6379?weight=-1", "weight"),
        ("redis://127.0.0.1:6379?color=red", "color"),
    ],
)
def test_malformed_urls(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        NodeSpec.from_url(url)
