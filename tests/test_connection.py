"""Connection: commands, pipelines, scripts, AUTH, TLS and timeouts against real servers."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import attrs
import pytest

from cachering.errors import NodeUnavailable, ResponseError
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Arg, Connection, Script
from cluster_helpers import skip_unless_tls

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1) as c:
        yield c


@pytest.fixture(scope="module")
def spec(cluster: LocalCluster) -> NodeSpec:
    return cluster.nodes[0]


async def test_simple_commands_and_reply_types(spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    try:
        assert await conn.execute("PING") == b"PONG"
        assert await conn.execute("DEL", "conn:n", "conn:l") in (0, 1, 2)
        assert await conn.execute("SET", "conn:k", b"v\x00\xff") == b"OK"
        assert await conn.execute("GET", "conn:k") == b"v\x00\xff"
        assert await conn.execute("GET", "conn:missing") is None
        assert await conn.execute("INCRBY", "conn:n", 5) == 5
        assert await conn.execute("SET", "conn:f", 1.5) == b"OK"
        assert await conn.execute("GET", "conn:f") == b"1.5"
        assert await conn.execute("SET", "conn:mv", memoryview(b"abc")) == b"OK"
        assert await conn.execute("GET", "conn:mv") == b"abc"
        assert await conn.execute("SET", "conn:é", "ü") == b"OK"
        assert await conn.execute("GET", "conn:é".encode()) == "ü".encode()
        await conn.execute("RPUSH", "conn:l", "a", "b")
        assert await conn.execute("LRANGE", "conn:l", 0, -1) == [b"a", b"b"]
        assert conn.broken is False
    finally:
        await conn.aclose()
    assert conn.broken is True


async def test_error_reply_raises_and_connection_stays_usable(spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    try:
        with pytest.raises(ResponseError, match="unknown command"):
            await conn.execute("NOSUCHCOMMAND")
        await conn.execute("SET", "conn:str", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await conn.execute("LPUSH", "conn:str", "y")
        assert conn.broken is False
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


async def test_large_pipeline_one_round_trip(spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    try:
        n = 6000
        value = b"x" * 100
        replies = await conn.pipeline([("SET", f"pipe:{i}", value) for i in range(n)])
        assert replies == [b"OK"] * n
        got = await conn.pipeline([["GET", f"pipe:{i}"] for i in range(n)])
        assert got == [value] * n
        assert await conn.pipeline([]) == []
    finally:
        await conn.aclose()


async def test_pipeline_errors(spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    try:
        await conn.execute("SET", "perr:s", "x")
        commands: list[tuple[Arg, ...]] = [
            ("SET", "perr:a", 1),
            ("LPUSH", "perr:s", "y"),
            ("INCR", "perr:a"),
            ("BAD",),
        ]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await conn.pipeline(commands)
        # Every reply was read: the commands after the error ran, the stream is in step.
        assert await conn.execute("GET", "perr:a") == b"2"
        replies = await conn.pipeline(commands, raise_on_error=False)
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError)
        assert replies[2] == 2
        assert isinstance(replies[3], ResponseError)
        assert "unknown command" in str(replies[3])
        assert conn.broken is False
    finally:
        await conn.aclose()


async def test_evalsha_after_script_flush(spec: NodeSpec) -> None:
    script = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    conn = await Connection.open(spec)
    try:
        await conn.execute("DEL", "script:k")
        await conn.execute("SCRIPT", "FLUSH")
        assert await conn.run_script(script, ["script:k"], ["a"]) == [b"script:k", b"a", 1]
        assert await conn.execute("SCRIPT", "EXISTS", script.sha) == [1]
        assert await conn.run_script(script, ["script:k"], ["b"], timeout=1.0) == [
            b"script:k",
            b"b",
            2,
        ]
        await conn.execute("SCRIPT", "FLUSH")
        assert await conn.run_script(script, ["script:k"], [7]) == [b"script:k", b"7", 3]
        with pytest.raises(ResponseError, match="boom"):
            await conn.run_script(Script("return redis.error_reply('boom')"), [], [])
        with pytest.raises(ResponseError):
            await conn.run_script(Script("this is not lua"), [], [])
        assert conn.broken is False
    finally:
        await conn.aclose()


async def test_script_value() -> None:
    s = Script("return 1")
    assert s.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    assert s == Script("return 1")
    assert s.sha in repr(s)
    with pytest.raises(TypeError, match="bytes"):
        Script(b"return 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Script("  ")


async def test_select_db(spec: NodeSpec) -> None:
    spec3 = attrs.evolve(spec, db=3)
    conn0 = await Connection.open(spec)
    conn3 = await Connection.open(spec3)
    try:
        await conn3.execute("SET", "db:k", "three")
        assert await conn3.execute("GET", "db:k") == b"three"
        assert await conn0.execute("GET", "db:k") is None
    finally:
        await conn0.aclose()
        await conn3.aclose()


async def test_timeout_against_paused_server(cluster: LocalCluster, spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    cluster.pause(0)
    try:
        with pytest.raises(NodeUnavailable, match="timeout") as info:
            await conn.execute("PING", timeout=0.1)
        assert info.value.node == spec.id
        assert conn.broken is True
        with pytest.raises(NodeUnavailable, match="already failed"):
            await conn.execute("PING")
        # Connecting works (the kernel accepts) but the handshake cannot complete.
        with pytest.raises(NodeUnavailable, match="timeout"):
            await Connection.open(attrs.evolve(spec, db=1), connect_timeout=0.1)
    finally:
        cluster.resume(0)
        await conn.aclose()
    conn = await Connection.open(spec)
    assert await conn.execute("PING") == b"PONG"
    await conn.aclose()


async def test_cancellation_mid_call_breaks_connection(
    cluster: LocalCluster, spec: NodeSpec
) -> None:
    conn = await Connection.open(spec)
    cluster.pause(0)
    try:
        with anyio.move_on_after(0.1) as scope:
            await conn.pipeline([("SET", f"c:{i}", i) for i in range(100)])
        assert scope.cancelled_caught
        assert conn.broken is True
    finally:
        cluster.resume(0)
        await conn.aclose()


async def test_connect_refused_names_node() -> None:
    dead = NodeSpec("deadnode", "127.0.0.1", 1)
    with pytest.raises(NodeUnavailable, match="refused") as info:
        await Connection.open(dead)
    assert info.value.node == "deadnode"
    assert "deadnode" in str(info.value)


async def test_unsupported_argument_types(spec: NodeSpec) -> None:
    conn = await Connection.open(spec)
    try:
        for bad, name in ((None, "NoneType"), (True, "bool"), ({"a": 1}, "dict"), ([1], "list")):
            with pytest.raises(TypeError, match=name):
                await conn.execute("SET", "k", bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=name):
                await conn.pipeline([("SET", "k", bad)])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="str"):
            await conn.pipeline(["GET k"])
        with pytest.raises(ValueError, match="at least one"):
            await conn.execute()
        # Nothing was sent: the connection is still in step.
        assert conn.broken is False
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1, password="s3cret pass") as c:
        yield c


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(1, username="app", password="apppw") as c:
        yield c


async def test_auth_password(password_cluster: LocalCluster) -> None:
    spec = password_cluster.nodes[0]
    assert spec.password is not None
    conn = await Connection.open(spec)
    try:
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()
    no_password = attrs.evolve(spec, password=None)
    conn = await Connection.open(no_password)
    try:
        with pytest.raises(ResponseError, match="NOAUTH"):
            await conn.execute("GET", "k")
    finally:
        await conn.aclose()


async def test_auth_acl_user(acl_cluster: LocalCluster) -> None:
    spec = acl_cluster.nodes[0]
    assert spec.username == "app"
    conn = await Connection.open(spec)
    try:
        assert await conn.execute("ACL", "WHOAMI") == b"app"
    finally:
        await conn.aclose()


async def test_tls() -> None:
    skip_unless_tls()
    async with LocalCluster(1, tls=True) as cluster:
        spec = cluster.nodes[0]
        assert spec.tls is not None
        conn = await Connection.open(spec)
        try:
            assert await conn.execute("SET", "tls:k", b"v" * 70000) == b"OK"
            assert await conn.execute("GET", "tls:k") == b"v" * 70000
            replies = await conn.pipeline([("INCR", "tls:n")] * 2000)
            assert replies == list(range(1, 2001))
            assert conn.looks_alive()
        finally:
            await conn.aclose()
