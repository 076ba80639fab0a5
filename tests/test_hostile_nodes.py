"""A configured node that speaks valid RESP but answers nonsense (tests/garbage_node.py),
next to real redis-servers: no manager crashes, and what it says about others is ignored.
A node announcing a huge reply fails that call only, with bounded memory."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator

import anyio
import hiredis
import pytest

from cachering.cluster import Cluster
from cachering.errors import ProtocolError
from cachering.local import LocalCluster
from cachering.resp import Pool, PubSub, ReplyLimits, _guard_py
from cluster_helpers import config
from garbage_node import garbage_node

pytestmark = pytest.mark.anyio

_ns = itertools.count()

REPLIES = {
    "simple": "+OK\\r\\n",
    "bulk": "$3\\r\\nabc\\r\\n",
    "array": "*2\\r\\n:1\\r\\n+OK\\r\\n",
    "one": ":1\\r\\n",
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


async def _beats(cluster: Cluster, count: int) -> None:
    """Wait for ``count`` more heartbeat rounds (the tick loop runs at the same interval)."""
    assert cluster.control is not None
    target = cluster.control.health.rounds + count
    with anyio.fail_after(30):
        while cluster.control.health.rounds < target:
            await anyio.sleep(0.02)


@pytest.mark.parametrize("reply", list(REPLIES.values()), ids=list(REPLIES))
async def test_wrong_shaped_replies_crash_nothing_and_claim_no_hints(
    local: LocalCluster, reply: str
) -> None:
    ns = f"garbled{next(_ns)}"
    with garbage_node("g", "--reply", reply) as fake:
        cfg = config(
            (*local.nodes, fake),
            ns,
            replicas=2,
            heartbeat_interval=0.1,
            topology_refresh_interval=0.5,
            secret=b"test-secret-0123456789abcdef",
        )
        real = {n.id for n in local.nodes}
        async with Cluster(cfg) as cluster:
            assert cluster.control is not None
            candidates = (f"key{i}" for i in range(200))
            keys = [k for k in candidates if "g" not in cluster.home_nodes(k)][:20]
            for key in keys:
                await cluster.set(key, key.encode(), consistency="quorum")
            with anyio.fail_after(30):
                while "g" not in cluster.control.suspects():
                    await anyio.sleep(0.02)
            await _beats(cluster, 5)
            assert not cluster.control.lagging & real
            assert await cluster.get_many(keys) == [k.encode() for k in keys]
            status = cluster.status().as_dict()
            assert status["nodes"]["g"]["suspect"]
            assert status["nodes"]["g"]["garbled"]
            assert status["nodes"]["g"]["bad_replies"] > 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


STREAMS = {
    "bulk_2GB": ("--stream-bulk", "2000000000"),
    "array_2G_elements": ("--stream-array", "2000000000"),
}


@pytest.mark.parametrize("stream", list(STREAMS.values()), ids=list(STREAMS))
async def test_huge_announced_reply_fails_the_call_and_nothing_else(
    local: LocalCluster, stream: tuple[str, str]
) -> None:
    limits = ReplyLimits.for_values(1 << 20)
    peak = base = _rss()
    real_reads = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss())
            await anyio.sleep(0.005)

    async def read_real(pool: Pool) -> None:
        nonlocal real_reads
        while True:
            assert await pool.execute("PING", timeout=5) == b"PONG"
            real_reads += 1
            await anyio.sleep(0.005)

    with garbage_node("g", *stream) as fake:
        async with (
            Pool(fake, limits=limits) as bad,
            Pool(local.nodes[0], limits=limits) as good,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(sample)
            tg.start_soon(read_real, good)
            for _ in range(3):
                with pytest.raises(ProtocolError, match="bad reply") as info:
                    await bad.execute("GET", "k", timeout=2.0)
                assert "limit" in info.value.reason
                assert bad.stats.size == 0  # the connection was closed
            before = real_reads
            with anyio.fail_after(10):
                while real_reads < before + 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert peak - base < 64 << 20


async def test_huge_pubsub_message_is_a_gap(local: LocalCluster) -> None:
    with garbage_node("g", "--stream-bulk", "2000000000") as fake:
        limits = ReplyLimits.for_values(64 << 10)
        async with PubSub(fake, limits=limits, backoff_base=0.01, backoff_max=0.05) as sub:
            await sub.subscribe("c")
            with anyio.fail_after(10):
                message = await sub.get_message()
            assert message is not None
            assert message.kind == "gap"


def _resp_values(rng: random.Random, depth: int = 0) -> bytes:
    kind = rng.choice("+-:$*" if depth < 4 else "+-:$")
    if kind in "+-":
        return kind.encode() + b"x" * rng.randrange(5) + b"\r\n"
    if kind == ":":
        return b":%d\r\n" % rng.randrange(-5, 5)
    if kind == "$":
        size = rng.choice([-1, 0, 1, 3, 40])
        return b"$-1\r\n" if size < 0 else b"$%d\r\n%s\r\n" % (size, bytes(size))
    count = rng.choice([-1, 0, 1, 2, 5])
    parts = [_resp_values(rng, depth + 1) for _ in range(max(count, 0))]
    return b"*%d\r\n" % count + b"".join(parts)


@pytest.mark.parametrize("twin", ["py", "c"])
def test_reply_guard_twins_follow_the_stream(twin: str) -> None:
    """Both guards keep in step with hiredis over any cut of valid replies, and refuse the
    same oversized headers."""
    module = pytest.importorskip("cachering.resp._resp_c") if twin == "c" else _guard_py
    rng = random.Random(7)
    for _ in range(300):
        stream = b"".join(_resp_values(rng) for _ in range(rng.randrange(1, 6)))
        guard = module.ReplyGuard(100, 10, 10_000)
        reader = hiredis.Reader()
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(8))))
        got = []
        for a, b in itertools.pairwise([0, *cuts, len(stream)]):
            guard.feed(stream[a:b])
            reader.feed(stream[a:b])
            while (reply := reader.gets()) is not False:
                got.append(reply)
        assert got
    for bad in (
        b"$101\r\n",
        b"*11\r\n",
        b"*2\r\n%6\r\n",
        b"*1\r\n" * 65,
        b"$99999999999999999999\r\n",
    ):
        with pytest.raises(ValueError, match=r"limit|deeper|length"):
            module.ReplyGuard(100, 10, 10_000).feed(bad)
    guard = module.ReplyGuard(100, 100, 1000)
    guard.feed(b"*20\r\n")
    for _ in range(10):  # 97 bytes each
        guard.feed(b"$90\r\n" + bytes(90) + b"\r\n")
    with pytest.raises(module.ReplyTooLarge, match="reply over 1000 bytes"):
        guard.feed(b"$90\r\n" + bytes(90) + b"\r\n")
