"""Hint replay and clearing on real redis-server processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis

from cachering import values
from cachering.local import LocalCluster
from cachering.repair import clear_node, overflowed, pending_hints, replay_hints
from cachering.resp.pool import Pool

pytestmark = pytest.mark.anyio

NS = "rp"


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


def _v(hlc: int, data: bytes | None) -> bytes:
    return values.encode(hlc.to_bytes(8, "big") + b"w" * 8, data)


def _k(key: str) -> bytes:
    return f"{NS}:k:{key}".encode()


async def test_replay_copies_newest_version_expiry_and_deletes(local: LocalCluster) -> None:
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    try:
        later = int(time.time() * 1000) + 60_000
        # n0 was away: it holds old copies
        r["n0"].set(_k("a"), _v(1, b"old-a"))
        r["n0"].set(_k("b"), _v(1, b"old-b"))
        r["n0"].set(_k("c"), _v(1, b"old-c"))
        r["n0"].set(_k("d"), _v(9, b"newer-on-n0"))
        # what was acknowledged meanwhile, on the others
        r["n1"].set(_k("a"), _v(5, b"new-a"), pxat=later)
        r["n2"].set(_k("a"), _v(4, b"older-a"))
        r["n2"].set(_k("b"), _v(6, None), pxat=later)  # a delete
        r["n1"].set(_k("d"), _v(2, b"old-d"))
        r["n1"].sadd(f"{NS}:hint:n0", b"a", b"b", b"c")
        r["n2"].sadd(f"{NS}:hint:n0", b"b", b"d")
        assert await pending_hints(pools, NS, ["n0", "n1"], ["n0", "n1", "n2"], 1.0) == {
            "n0": 5,
            "n1": 0,
        }
        result = await replay_hints(
            "n0", pools, NS, holders=["n1", "n2"], sources=["n1", "n2"], batch=2
        )
        assert result.complete
        assert result.replayed == 4  # a, d, and b twice (hinted on both holders)
        assert result.deleted == 1  # c: no copy left anywhere
        assert values.user_bytes(r["n0"].get(_k("a"))) == b"new-a"  # type: ignore[arg-type]
        assert r["n0"].execute_command("PEXPIRETIME", _k("a")) == later  # type: ignore[no-untyped-call]
        assert values.user_bytes(r["n0"].get(_k("b"))) is None  # type: ignore[arg-type]
        assert r["n0"].get(_k("b")) == _v(6, None)
        assert r["n0"].get(_k("c")) is None
        assert values.user_bytes(r["n0"].get(_k("d"))) == b"newer-on-n0"  # type: ignore[arg-type]
        assert r["n1"].scard(f"{NS}:hint:n0") == 0
        assert r["n2"].scard(f"{NS}:hint:n0") == 0
        assert await pending_hints(pools, NS, ["n0"], ["n1", "n2"], 1.0) == {"n0": 0}
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


async def test_replay_skips_a_silent_source_and_keeps_what_only_it_holds(
    local: LocalCluster,
) -> None:
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n, timeout=0.3, connect_timeout=0.3) for n in local.nodes}
    try:
        r["n1"].sadd(f"{NS}:hint:n0", b"x", b"y")
        r["n1"].set(_k("x"), _v(3, b"x"))
        r["n2"].set(_k("y"), _v(3, b"y"))  # the only copy, on the node about to die
        local.kill(2)
        result = await replay_hints("n0", pools, NS, holders=["n1"], sources=["n1", "n2"])
        assert not result.complete
        assert result.errors
        assert values.user_bytes(r["n0"].get(_k("x"))) == b"x"
        assert r["n0"].get(_k("y")) is None
        assert r["n1"].smembers(f"{NS}:hint:n0") == {b"y"}  # waits for n2
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


async def test_overflow_clears_only_cachering_keys(local: LocalCluster) -> None:
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    try:
        r["n0"].mset({_k(f"key{i}"): _v(1, b"v") for i in range(2500)})
        r["n0"].set("other:k:keep", b"v")
        r["n0"].set(f"{NS}:ctl:election", b"not data")
        assert await overflowed(pools, NS, "n0", ["n1", "n2"], 1.0) == []
        r["n2"].set(f"{NS}:hintoverflow:n0", b"1")
        assert await overflowed(pools, NS, "n0", ["n1", "n2"], 1.0) == ["n2"]
        assert await clear_node(pools["n0"], NS, batch=500) == 2500
        assert r["n0"].dbsize() == 2
        assert r["n0"].get("other:k:keep") == b"v"
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()
