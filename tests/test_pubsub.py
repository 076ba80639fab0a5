"""PubSub: messages, patterns, confirmations hidden, reconnect with resubscribe and gaps."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from cachering.errors import NodeUnavailable
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Message, Pool, PubSub

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1) as c:
        yield c


@pytest.fixture
def spec(cluster: LocalCluster) -> Iterator[NodeSpec]:
    yield cluster.nodes[0]
    if not cluster.is_running(0):
        cluster.restart(0)


async def publish_until_received(
    pool: Pool, sub: PubSub, channel: str, data: bytes
) -> list[Message]:
    """Publish until the subscriber sees the message (subscribing is asynchronous)."""
    seen: list[Message] = []
    with anyio.fail_after(5):
        while True:
            await pool.execute("PUBLISH", channel, data)
            message = await sub.get_message(timeout=0.05)
            while message is not None:
                seen.append(message)
                if message.data == data:
                    return seen
                message = await sub.get_message(timeout=0.01)


async def test_messages_and_patterns(spec: NodeSpec) -> None:
    async with Pool(spec) as pool, PubSub(spec) as sub:
        await sub.subscribe("news", b"sport")
        await sub.psubscribe("log.*")
        seen = await publish_until_received(pool, sub, "news", b"hello")
        assert seen[-1] == Message(kind="message", channel=b"news", data=b"hello", pattern=None)
        # Confirmations are never yielded.
        assert all(m.kind == "message" for m in seen)
        assert await pool.execute("PUBLISH", "log.error", b"disk") == 1
        assert await sub.get_message(timeout=2) == Message(
            kind="pmessage", channel=b"log.error", data=b"disk", pattern=b"log.*"
        )
        await sub.unsubscribe("news")
        await sub.punsubscribe()
        assert sub.channels == {b"sport"}
        assert sub.patterns == frozenset()
        # The unsubscribe is processed before the next PUBLISH on this node.
        await pool.execute("PUBLISH", "news", b"gone")
        await pool.execute("PUBLISH", "log.x", b"gone")
        await pool.execute("PUBLISH", "sport", b"goal")
        async for message in sub:
            assert message == Message("message", b"sport", b"goal")
            break
        assert sub.gaps == 0


async def test_get_message_timeout_returns_none(spec: NodeSpec) -> None:
    async with PubSub(spec) as sub:
        await sub.subscribe("quiet")
        assert await sub.get_message(timeout=0.05) is None
        assert sub.gaps == 0


async def test_restart_resubscribes_and_signals_gap(cluster: LocalCluster, spec: NodeSpec) -> None:
    async with PubSub(spec, backoff_base=0.01, backoff_max=0.05) as sub:
        await sub.subscribe("topo")
        await sub.psubscribe("inv.*")
        async with Pool(spec) as pool:
            await publish_until_received(pool, sub, "topo", b"before")
        await anyio.to_thread.run_sync(cluster.restart, 0)
        with anyio.fail_after(10):
            message = await sub.get_message()
        assert message == Message(kind="gap", channel=b"", data=b"", pattern=None)
        assert sub.gaps == 1
        async with Pool(spec) as pool:
            await publish_until_received(pool, sub, "topo", b"after")
            assert await pool.execute("PUBLISH", "inv.keys", b"k1") == 1
            assert await sub.get_message(timeout=2) == Message(
                "pmessage", b"inv.keys", b"k1", b"inv.*"
            )


async def test_reader_survives_kill_until_node_returns(
    cluster: LocalCluster, spec: NodeSpec
) -> None:
    async with PubSub(spec, backoff_base=0.01, backoff_max=0.05) as sub:
        await sub.subscribe("c")
        cluster.kill(0)
        # The node is down: the reader keeps retrying rather than failing.
        assert await sub.get_message(timeout=0.2) is None
        await anyio.to_thread.run_sync(cluster.restart, 0)
        with anyio.fail_after(10):
            message = await sub.get_message()
        assert message is not None
        assert message.kind == "gap"
        assert sub.gaps == 1


async def test_lazy_connect_and_closed(spec: NodeSpec) -> None:
    sub = PubSub(spec)
    initial = sub._conn
    assert initial is None
    await sub.subscribe("x")
    assert sub._conn is not None
    await sub.aclose()
    assert await sub.get_message(timeout=0.1) is None
    with pytest.raises(NodeUnavailable, match="closed"):
        await sub.subscribe("y")
    with pytest.raises(TypeError, match="int"):
        await PubSub(spec).subscribe(1)  # type: ignore[arg-type]


async def test_first_subscribe_to_dead_node_raises() -> None:
    async with PubSub(NodeSpec("dead", "127.0.0.1", 1)) as sub:
        with pytest.raises(NodeUnavailable, match="refused"):
            await sub.subscribe("x")
        assert sub.channels == {b"x"}


async def test_health_check_notices_paused_server(cluster: LocalCluster, spec: NodeSpec) -> None:
    sub = PubSub(spec, health_check_interval=0.05, backoff_base=0.01, backoff_max=0.05)
    async with sub:
        await sub.subscribe("hc")
        # Quiet but healthy: PINGs are answered, no gap.
        assert await sub.get_message(timeout=0.3) is None
        assert sub.gaps == 0
        cluster.pause(0)
        try:
            with anyio.fail_after(10):
                message = await sub.get_message()
        finally:
            cluster.resume(0)
        assert message is not None
        assert message.kind == "gap"
        async with Pool(spec) as pool:
            seen = await publish_until_received(pool, sub, "hc", b"back")
        assert seen[-1].data == b"back"


async def test_without_health_check_a_quiet_connection_is_kept(spec: NodeSpec) -> None:
    async with PubSub(spec) as sub:
        await sub.subscribe("quiet2")
        conn = sub._conn
        assert await sub.get_message(timeout=0.2) is None
        assert sub._conn is conn
    with pytest.raises(ValueError, match="health_check_interval"):
        PubSub(spec, health_check_interval=0)


async def test_reader_started_before_subscribe(spec: NodeSpec) -> None:
    received: list[Message] = []
    async with PubSub(spec) as sub, Pool(spec) as pool:
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                async for message in sub:
                    received.append(message)
                    return

            tg.start_soon(reader)
            await anyio.sleep(0.02)
            assert received == []
            await sub.subscribe("late")
            with anyio.fail_after(5):
                while not received:
                    await pool.execute("PUBLISH", "late", b"hi")
                    await anyio.sleep(0.01)
        assert received[0] == Message("message", b"late", b"hi")


async def test_reader_retries_after_failed_first_subscribe(
    cluster: LocalCluster, spec: NodeSpec
) -> None:
    cluster.kill(0)
    async with PubSub(spec, backoff_base=0.01, backoff_max=0.05) as sub:
        with pytest.raises(NodeUnavailable):
            await sub.subscribe("retry")
        # Reading keeps retrying the connection, with back-off.
        assert await sub.get_message(timeout=0.1) is None
        await anyio.to_thread.run_sync(cluster.restart, 0)
        with anyio.fail_after(10):
            message = await sub.get_message()
        assert message is not None
        assert message.kind == "gap"
        async with Pool(spec) as pool:
            seen = await publish_until_received(pool, sub, "retry", b"ok")
        assert seen[-1].channel == b"retry"
