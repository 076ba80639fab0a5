"""The stored value format, the hybrid logical clock and the apply-if-newer write script."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from cachering.data import values
from cachering.data.scripts import (
    APPLY_ONE_SOURCE,
    APPLY_SOURCE,
    LARGE_VALUE,
    apply_args,
    apply_mode,
    hint_keys,
)
from cachering.local import LocalCluster
from cluster_helpers import pexpiretime

# ----------------------------------------------------------------------------- format


def test_encode_decode_roundtrip() -> None:
    clock = values.HybridClock(b"W" * 8)
    version = clock.next()
    raw = values.encode(version, b"\x00payload\xff")
    assert len(raw) == values.HEADER_SIZE + 9
    assert raw[0] == values.FORMAT
    decoded = values.decode(raw)
    assert decoded is not None
    assert decoded.version == version
    assert decoded.writer == b"W" * 8
    assert not decoded.tombstone
    assert decoded.data == b"\x00payload\xff"
    assert values.user_bytes(raw) == b"\x00payload\xff"


def test_empty_value_is_not_a_tombstone() -> None:
    raw = values.encode(values.HybridClock(b"a" * 8).next(), b"")
    assert values.user_bytes(raw) == b""


def test_tombstone_reads_as_missing() -> None:
    raw = values.encode(values.HybridClock(b"a" * 8).next(), None)
    decoded = values.decode(raw)
    assert decoded is not None
    assert decoded.tombstone
    assert values.user_bytes(raw) is None


@pytest.mark.parametrize("raw", [b"", b"short", b"\x02" + b"x" * 30, None])
def test_foreign_values_read_as_missing(raw: bytes | None) -> None:
    assert values.user_bytes(raw) is None
    if raw is not None:
        assert values.decode(raw) is None


def test_hlc_layout_is_wall_ms_and_counter() -> None:
    clock = values.HybridClock(b"a" * 8, wall_ms=lambda: 1_000)
    first = clock.tick()
    assert first == 1_000 << 16
    assert clock.tick() == (1_000 << 16) + 1


def test_hlc_is_monotonic_when_the_wall_clock_goes_back() -> None:
    now = [5_000]
    clock = values.HybridClock(b"a" * 8, wall_ms=lambda: now[0])
    seen = []
    for step in (0, -100, -4_000, 10, 0):
        now[0] += step
        seen.append(clock.next())
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def test_hlc_counter_overflow_carries_into_ms() -> None:
    clock = values.HybridClock(b"a" * 8, wall_ms=lambda: 7)
    for _ in range(70_000):
        clock.tick()
    assert clock.last >> 16 == 8


def test_hlc_observe_orders_later_writes_after() -> None:
    clock = values.HybridClock(b"a" * 8, wall_ms=lambda: 10)
    clock.observe(99 << 16)
    assert clock.tick() > 99 << 16


def test_hlc_close_to_wall_clock() -> None:
    clock = values.HybridClock.random()
    assert abs((clock.tick() >> 16) - time.time() * 1000) < 60_000


def test_stamp_is_encode_of_next() -> None:
    a = values.HybridClock(b"w" * 8, wall_ms=lambda: 1_234)
    b = values.HybridClock(b"w" * 8, wall_ms=lambda: 1_234)
    for data in (b"", b"x", bytes(range(256))):
        stamped = a.stamp(data)
        assert stamped == values.encode(b.next(), data)
        assert values.decode(stamped) == (a.last, b"w" * 8, False, data)


def test_writer_must_be_8_bytes() -> None:
    with pytest.raises(ValueError, match="writer"):
        values.HybridClock(b"short")


# ----------------------------------------------------------------------------- script


@pytest.fixture(scope="module")
def server() -> Iterator[redis.Redis]:
    with LocalCluster(1) as local:
        node = local.nodes[0]
        client = redis.Redis(host=node.host, port=node.port)
        try:
            yield client
        finally:
            client.close()


def _apply(client: redis.Redis, entries, **kw) -> str:  # type: ignore[no-untyped-def]
    keys, argv = apply_args(entries, hint_limit=kw.pop("hint_limit", 10), **kw)
    reply = client.eval(APPLY_SOURCE, len(keys), *keys, *argv)
    return reply.decode() if isinstance(reply, bytes) else str(reply)


Apply = Callable[..., str]


@pytest.fixture
def apply(server: redis.Redis) -> Apply:
    """``_apply`` on ``server``: replica and repair writes, which apply only when newer
    (first-copy writes, which never lose to an older clock, are tested below)."""

    def run(entries, **kw) -> str:  # type: ignore[no-untyped-def]
        return _apply(server, entries, **kw)

    return run


def test_script_applies_only_newer(server: redis.Redis, apply: Apply) -> None:
    server.flushall()
    a = values.HybridClock(b"a" * 8, wall_ms=lambda: 1_000)
    v1, v2 = a.next(), a.next()
    assert apply([(b"k", values.encode(v2, b"new"), 0)]) == "1"
    assert apply([(b"k", values.encode(v1, b"old"), 0)]) == "0"
    assert values.user_bytes(server.get(b"k")) == b"new"
    # same version again: idempotent, not re-applied
    assert apply([(b"k", values.encode(v2, b"new"), 0)]) == "0"


def test_script_ties_broken_by_writer_id(server: redis.Redis, apply: Apply) -> None:
    server.flushall()
    low = values.HybridClock(b"\x00" * 8, wall_ms=lambda: 1).next()
    high = values.HybridClock(b"\x7f" + b"\xff" * 7, wall_ms=lambda: 1).next()
    apply([(b"k", values.encode(high, b"H"), 0)])
    assert apply([(b"k", values.encode(low, b"L"), 0)]) == "0"
    assert values.user_bytes(server.get(b"k")) == b"H"


def test_script_orders_versions_at_every_byte(server: redis.Redis, apply: Apply) -> None:
    # versions that first differ at each of the 16 positions (clock and writer id), and
    # an equal pair: the stored copy changes exactly when the incoming one is greater
    rng = random.Random(3)
    for position in range(17):
        for _ in range(6):
            a = bytearray(rng.randbytes(16))
            b = bytearray(a)
            if position < 16:
                b[position] = rng.choice([x for x in range(256) if x != a[position]])
                b[position + 1 :] = rng.randbytes(15 - position)
            server.flushall()
            apply([(b"k", values.encode(bytes(a), b"A"), 0)])
            newer = bytes(b) > bytes(a)
            assert apply([(b"k", values.encode(bytes(b), b"B"), 0)]) == ("2" if newer else "0")
            assert values.user_bytes(server.get(b"k")) == (b"B" if newer else b"A")


def test_script_converges_in_any_order(server: redis.Redis, apply: Apply) -> None:
    rng = random.Random(7)
    clocks = [values.HybridClock(bytes([i]) * 8, wall_ms=lambda: 42) for i in range(3)]
    writes = [(c.next(), f"{i}-{j}".encode()) for i, c in enumerate(clocks) for j in range(3)]
    best = max(writes)[1]
    for order in itertools.islice(itertools.permutations(writes), 0, None, 5000):
        server.flushall()
        order = list(order)
        rng.shuffle(order)
        for version, data in order:
            apply([(b"k", values.encode(version, data), 0)])
        assert values.user_bytes(server.get(b"k")) == best


def test_script_tombstone_blocks_older_write(server: redis.Redis, apply: Apply) -> None:
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    old, tomb = clock.next(), clock.next()
    assert apply([(b"k", values.encode(old, b"v"), 0)]) == "1"
    pxat = int(time.time() * 1000) + 60_000
    assert apply([(b"k", values.encode(tomb, None), pxat)]) == "2"
    assert apply([(b"k", values.encode(old, b"v"), 0)]) == "0"
    assert values.user_bytes(server.get(b"k")) is None
    assert 0 < server.pttl(b"k") <= 60_000


def test_script_sets_absolute_expiry(server: redis.Redis, apply: Apply) -> None:
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    pxat = int(time.time() * 1000) + 50_000
    assert apply([(b"k", values.encode(clock.next(), b"v"), pxat)]) == "1"
    assert pexpiretime(server, b"k") == pxat
    # a newer write without ttl clears the expiry
    apply([(b"k", values.encode(clock.next(), b"w"), 0)])
    assert server.pttl(b"k") == -1


def test_script_many_keys_and_binary(server: redis.Redis) -> None:
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    entries = [
        (b"ns:k:" + bytes([i, 0, 255]), values.encode(clock.next(), bytes([i])), 0)
        for i in range(200)
    ]
    assert _apply(server, entries) == "1" * 200
    assert server.dbsize() == 200
    assert values.user_bytes(server.get(b"ns:k:" + bytes([5, 0, 255]))) == b"\x05"


def _apply_one(client: redis.Redis, key: bytes, stored: bytes, expiry: int) -> str:
    reply: bytes = client.eval(APPLY_ONE_SOURCE, 1, key, stored, expiry)
    return reply.decode("latin-1")


def test_script_replaces_wrong_type_and_foreign_values(server: redis.Redis, apply: Apply) -> None:
    server.flushall()
    server.rpush(b"a", b"x")
    server.set(b"b", b"plain")
    clock = values.HybridClock(b"a" * 8)
    out = apply(
        [
            (b"a", values.encode(clock.next(), b"1"), 0),
            (b"b", values.encode(clock.next(), b"2"), 0),
        ],
    )
    assert out == "11"
    assert values.user_bytes(server.get(b"a")) == b"1"
    # one key at a time through APPLY_ONE, with and without an expiry
    server.delete(b"a", b"b")
    server.rpush(b"a", b"x")
    server.set(b"b", b"plain")
    pxat = int(time.time() * 1000) + 50_000
    assert _apply_one(server, b"a", values.encode(clock.next(), b"3"), pxat) == "1"
    assert _apply_one(server, b"b", values.encode(clock.next(), b"4"), 0) == "1"
    assert values.user_bytes(server.get(b"a")) == b"3"
    assert pexpiretime(server, b"a") == pxat
    assert values.user_bytes(server.get(b"b")) == b"4"


@pytest.mark.parametrize("size", [10, 2048, 2049, 50_000])
def test_single_key_script_reads_only_the_header_of_large_values(
    server: redis.Redis, size: int
) -> None:
    # past 2 KiB APPLY_ONE reads the stored copy with GETRANGE: the same outcomes
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    old, new, newest = clock.next(), clock.next(), clock.next()

    def one(key: bytes, version: bytes, fill: bytes) -> str:
        return _apply_one(server, key, values.encode(version, fill * size), 0)

    assert one(b"k", new, b"n") == "1"  # missing key
    assert one(b"k", new, b"n") == "0"  # the same write again
    assert values.user_bytes(server.get(b"k")) == b"n" * size
    assert one(b"k", newest, b"w") == "2"
    assert values.user_bytes(server.get(b"k")) == b"w" * size
    # the same writer's older write (one arriving late) is dropped
    assert one(b"k", old, b"o") == "0"
    assert values.user_bytes(server.get(b"k")) == b"w" * size
    # another writer's older first-copy write is taken under the version just above the
    # stored one
    behind = values.HybridClock(b"b" * 8, wall_ms=lambda: 1).next()
    reply = one(b"k", behind, b"o")
    assert reply[0] == "4"
    assert reply[1:].encode("latin-1") == values.version_of(server.get(b"k"))
    assert values.user_bytes(server.get(b"k")) == b"o" * size
    server.rpush(b"list", b"x")
    server.set(b"foreign", b"f" * 3000)
    assert one(b"list", old, b"l") == "1"
    assert one(b"foreign", old, b"f") == "1"
    assert values.user_bytes(server.get(b"list")) == b"l" * size


def test_script_records_bounded_hints(server: redis.Redis) -> None:
    server.flushall()
    hk, ok = hint_keys("ns", "n1")
    members = [f"m{i}".encode() for i in range(5)]
    _apply(server, [], hints=[(hk, ok, members)], hint_limit=3)
    assert server.scard(hk) == 3
    assert server.get(ok) == b"1"
    server.delete(ok)
    # members already present do not overflow
    present = sorted(server.smembers(hk))
    _apply(server, [], hints=[(hk, ok, present)], hint_limit=3)
    assert server.get(ok) is None
    assert hk == b"ns:hint:n1"


def test_script_key_named_twice_keeps_the_newest(server: redis.Redis) -> None:
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    v1, v2, v3 = clock.next(), clock.next(), clock.next()
    pxat = int(time.time() * 1000) + 50_000
    # newer then older: the older entry is refused against the newer one of the same call
    out = _apply(
        server, [(b"k", values.encode(v2, b"two"), pxat), (b"k", values.encode(v1, b"one"), 0)]
    )
    assert out == "10"
    assert values.user_bytes(server.get(b"k")) == b"two"
    assert pexpiretime(server, b"k") == pxat
    # older then newer: both apply, the last one is what stays, with its own (no) expiry
    server.flushall()
    out = _apply(
        server, [(b"j", values.encode(v2, b"two"), pxat), (b"j", values.encode(v3, b"three"), 0)]
    )
    assert out == "12"  # the second replaced the live value the first had written
    assert values.user_bytes(server.get(b"j")) == b"three"
    assert server.pttl(b"j") == -1


def test_script_distinct_mode_matches_the_general_one(server: redis.Redis) -> None:
    # distinct=1 skips the repeated-key bookkeeping: for distinct keys the replies, the
    # values and the expiries must be what the general mode gives
    rng = random.Random(11)
    old, new = values.HybridClock(b"o" * 8, wall_ms=lambda: 5), values.HybridClock(b"n" * 8)
    pxat = int(time.time() * 1000) + 50_000
    server.flushall()
    start = [(b"%d" % i, values.encode(new.next(), b"x"), 0) for i in range(0, 300, 2)]
    for prefix in (b"d:", b"g:"):  # the same starting state under two prefixes
        _apply(server, [(prefix + k, v, p) for k, v, p in start])
    entries = []
    for i in range(300):
        version = (new if rng.random() < 0.7 else old).next()
        entries.append((b"%d" % i, values.encode(version, b"v%d" % i), pxat if i % 5 == 0 else 0))
    rng.shuffle(entries)
    general = _apply(server, [(b"g:" + k, v, p) for k, v, p in entries])
    distinct = _apply(server, [(b"d:" + k, v, p) for k, v, p in entries], distinct=True)
    assert distinct == general
    assert set(general) == {"0", "1", "2"}
    for key, _, _ in entries:
        assert server.get(b"d:" + key) == server.get(b"g:" + key)
        assert server.pttl(b"d:" + key) // 1000 == server.pttl(b"g:" + key) // 1000


@pytest.mark.parametrize("distinct", [False, True])
def test_script_mixes_large_and_small_values(server: redis.Redis, distinct: bool) -> None:
    # values over 2 KiB have their copy's header read with GETRANGE, the rest with MGET:
    # every key still gets the outcome its own version calls for
    rng = random.Random(5)
    old, new = values.HybridClock(b"o" * 8, wall_ms=lambda: 5), values.HybridClock(b"n" * 8)
    server.flushall()
    sizes = [rng.choice([0, 10, 2048, 2049, 40_000]) for _ in range(120)]
    stored = {}
    for i in range(0, 120, 3):  # a third start with a newer copy, a third with an older
        version = (new if i % 2 else old).next()
        stored[i] = version
        server.set(b"m:%d" % i, values.encode(version, b"s" * sizes[(i + 7) % 120]))
    server.rpush(b"m:1", b"wrong type")
    server.set(b"m:4", b"f" * 3000)  # foreign, over 2 KiB
    incoming = values.HybridClock(b"i" * 8, wall_ms=lambda: 1_000).next()  # between the two
    entries = [(b"m:%d" % i, values.encode(incoming, b"%d" % i * sizes[i]), 0) for i in range(120)]
    out = _apply(server, entries, distinct=distinct)
    for i in range(120):
        current = server.get(b"m:%d" % i)
        if i in stored and stored[i] > incoming:
            assert out[i] == "0"
            assert values.decode(current).writer == b"n" * 8  # type: ignore[union-attr]
        else:
            assert out[i] == ("2" if i in stored else "1")
            assert values.user_bytes(current) == b"%d" % i * sizes[i]


def test_apply_mode_flags() -> None:
    assert apply_mode(False, []) == 0
    assert apply_mode(True, []) == 1
    assert apply_mode(True, [b"x" * LARGE_VALUE]) == 1
    assert apply_mode(False, [b"", b"x" * (LARGE_VALUE + 1)]) == 2
    assert apply_mode(True, iter([b"x" * (LARGE_VALUE + 1), b"y"])) == 3


def test_script_modes_agree(server: redis.Redis) -> None:
    # the mode flags change how copies are read, never the outcome: the large flag with
    # only small values, and large values without the flag, give the same replies
    rng = random.Random(9)
    old, new = values.HybridClock(b"o" * 8, wall_ms=lambda: 5), values.HybridClock(b"n" * 8)
    server.flushall()
    sizes = [rng.choice([1, 100, 3000, 30_000]) for _ in range(60)]
    starts = {i: (new if i % 4 else old).next() for i in range(0, 60, 2)}
    incoming = values.HybridClock(b"i" * 8, wall_ms=lambda: 1_000).next()
    replies = {}
    for mode in range(4):
        prefix = b"%d:" % mode
        for i, version in starts.items():
            server.set(prefix + b"%d" % i, values.encode(version, b"s" * sizes[59 - i]))
        keys = [prefix + b"%d" % i for i in range(60)]
        argv = [10, 0, mode, 0, 0, *(values.encode(incoming, b"x" * size) for size in sizes)]
        replies[mode] = server.eval(APPLY_SOURCE, len(keys), *keys, *argv)
        assert [server.get(k) for k in keys] == [server.get(b"0:" + k[2:]) for k in keys]
    assert len(set(replies.values())) == 1
    assert set(replies[0].decode()) == {"0", "1", "2"}


def test_script_more_keys_than_one_command_takes(server: redis.Redis) -> None:
    """Past 4000 keys the reads and writes are split into several MGET/MSET calls."""
    server.flushall()
    clock = values.HybridClock(b"a" * 8)
    pxat = int(time.time() * 1000) + 50_000
    entries = [
        (f"k{i}".encode(), values.encode(clock.next(), str(i).encode()), pxat if i % 3 == 0 else 0)
        for i in range(9_001)
    ]
    assert _apply(server, entries) == "1" * 9_001
    assert server.dbsize() == 9_001
    for i in (0, 1, 3_999, 4_000, 4_001, 7_999, 8_000, 9_000):
        assert values.user_bytes(server.get(f"k{i}".encode())) == str(i).encode()
        assert (server.pttl(f"k{i}".encode()) > 0) == (i % 3 == 0)
    # all over again with one older version each: nothing applies, nothing changes
    stale = [
        (k, values.encode(values.HybridClock(b"a" * 8, wall_ms=lambda: 1).next(), b"x"), 0)
        for k, _, _ in entries
    ]
    assert _apply(server, stale) == "0" * 9_001
    assert values.user_bytes(server.get(b"k8000")) == b"8000"


# ----------------------------------------------------------------------------- first copy


def _stamp_of(clock_ms: int, counter: int, writer: bytes) -> bytes:
    return ((clock_ms << 16) | counter).to_bytes(8, "big") + writer


def _restamped(writer: bytes) -> bytes:
    """The writer id a first copy gives a write it restamps: the top bit set."""
    return bytes([writer[0] | 0x80]) + writer[1:]


def _first_copy(client: redis.Redis, script: str, key: bytes, stored: bytes) -> bytes:
    if script == "APPLY_ONE":
        reply: bytes = client.eval(APPLY_ONE_SOURCE, 1, key, stored, 0)
        return reply
    keys, argv = apply_args([(key, stored, 0)], hint_limit=1, first=1)
    reply = client.eval(APPLY_SOURCE, len(keys), *keys, *argv)
    return reply


@pytest.mark.parametrize("script", ["APPLY", "APPLY_ONE"])
def test_a_restamped_version_never_equals_one_a_writer_stamps(
    server: redis.Redis, script: str
) -> None:
    # B's write is restamped above A's copy, at A's clock plus one. B's next write, stamped
    # by B's own clock at that very value, is another write: the first copy must take it,
    # not mistake it for a retry of the stored one (the copies then disagreed for good).
    server.flushall()
    server.set(b"k", values.encode(_stamp_of(10_000, 0, b"A" * 8), b"from A"))
    assert (
        _first_copy(server, script, b"k", values.encode(_stamp_of(1, 0, b"B" * 8), b"b1"))[:1]
        == b"4"
    )
    own = values.encode(_stamp_of(10_000, 1, b"B" * 8), b"b2")
    assert _first_copy(server, script, b"k", own)[:1] == b"4"
    stored = server.get(b"k")
    assert values.user_bytes(stored) == b"b2"
    assert values.version_of(stored) == _stamp_of(10_000, 2, _restamped(b"B" * 8))


@pytest.mark.parametrize("script", ["APPLY", "APPLY_ONE"])
def test_a_late_first_copy_write_never_restamps_over_its_own_writers_newer_one(
    server: redis.Redis, script: str
) -> None:
    # A's first write timed out on this node and reaches it only after A's next write (a
    # request delivered late): a writer's clock only goes forward, so this is A's older
    # write, dropped like any older version, not taken above A's newer one.
    server.flushall()
    clock = values.HybridClock(b"A" * 8, wall_ms=lambda: 5_000)
    late, newer = (values.encode(clock.next(), data) for data in (b"a1", b"a2"))
    server.set(b"k", newer)
    assert _first_copy(server, script, b"k", late) == b"0"
    assert server.get(b"k") == newer
    # a tombstone of A's stays too
    tomb = values.encode(clock.next(), None)
    server.set(b"k", tomb)
    assert _first_copy(server, script, b"k", late) == b"0"
    assert server.get(b"k") == tomb
    # a copy that a first copy gave A's write (the restamp bit set) is still another
    # writer's clock: A's write that arrives after it is taken above it, as before
    server.set(b"k", values.encode(_stamp_of(10_000, 0, _restamped(b"A" * 8)), b"a0"))
    assert _first_copy(server, script, b"k", late)[:1] == b"4"
    assert values.user_bytes(server.get(b"k")) == b"a1"


def test_writer_ids_keep_the_restamp_bit_clear() -> None:
    assert all(values.writer_id()[0] < 0x80 for _ in range(200))
    assert values.HybridClock.random().writer[0] < 0x80
    with pytest.raises(ValueError, match="top bit"):
        values.HybridClock(b"\x80" + b"a" * 7)


@pytest.mark.parametrize("script", ["APPLY", "APPLY_ONE"])
def test_first_copy_write_older_than_the_stored_one_is_taken(
    server: redis.Redis, script: str
) -> None:
    # writer A's clock is ahead of B's: B's later write still becomes the newest copy,
    # under the version just above A's (A's clock plus one, B's writer id)
    server.flushall()
    ahead = values.HybridClock(b"A" * 8, wall_ms=lambda: 10_000)
    behind = values.HybridClock(b"B" * 8, wall_ms=lambda: 1_000)
    server.set(b"k", values.encode(ahead.next(), b"from A"))
    server.set(b"t", values.encode(ahead.next(), None))  # a tombstone, counter 1
    late = values.encode(behind.next(), b"from B")
    if script == "APPLY":
        keys, argv = apply_args(
            [(b"k", late, 0), (b"t", late, 0), (b"r", late, 0)], hint_limit=1, first=2
        )
        reply = server.eval(APPLY_SOURCE, len(keys), *keys, *argv)
        assert reply[:3] == b"431"  # the third entry is not a first copy: applied as is
        stamps = [reply[3:19], reply[19:35]]
        assert len(reply) == 35
    else:
        reply_k = server.eval(APPLY_ONE_SOURCE, 1, b"k", late, 0)
        reply_t = server.eval(APPLY_ONE_SOURCE, 1, b"t", late, 0)
        assert reply_k[:1] == b"4"
        assert reply_t[:1] == b"3"
        stamps = [reply_k[1:], reply_t[1:]]
    given = _restamped(b"B" * 8)
    assert stamps == [_stamp_of(10_000, 1, given), _stamp_of(10_000, 2, given)]
    for key, stamp in zip((b"k", b"t"), stamps, strict=True):
        stored = server.get(key)
        assert values.version_of(stored) == stamp
        assert values.user_bytes(stored) == b"from B"
    # the same write arriving again at a replica (not a first copy) is stale there
    assert _apply(server, [(b"k", late, 0)]) == "0"
    # and a replica that got the restamped value takes it over A's
    server.set(b"replica", values.encode(_stamp_of(10_000, 0, b"A" * 8), b"from A"))
    assert _apply(server, [(b"replica", values.with_version(late, stamps[0]), 0)]) == "2"


def test_first_copy_write_carries_into_the_next_byte_and_keeps_retries_idempotent(
    server: redis.Redis,
) -> None:
    server.flushall()
    server.set(b"k", values.encode(b"\x00\x00\x00\x01\xff\xff\xff\xff" + b"A" * 8, b"a"))
    late = values.encode(_stamp_of(1, 0, b"B" * 8), b"b")
    reply = server.eval(APPLY_ONE_SOURCE, 1, b"k", late, 0)
    assert reply == b"4" + b"\x00\x00\x00\x02\x00\x00\x00\x00" + _restamped(b"B" * 8)
    # the writer's own version already stored: nothing to do, not stamped again
    server.set(b"j", late)
    assert server.eval(APPLY_ONE_SOURCE, 1, b"j", late, 0) == b"0"
    # a stored clock at its maximum (no writer makes one) is overwritten as foreign
    server.set(b"m", values.encode(b"\xff" * 8 + b"A" * 8, b"a"))
    assert server.eval(APPLY_ONE_SOURCE, 1, b"m", late, 0) == b"2"
    assert server.get(b"m") == late


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.parametrize("script", ["APPLY", "APPLY_ONE", "APPLY_EACH"])
def test_negative_expiry_counts_from_the_servers_clock(server: redis.Redis, script: str) -> None:
    server.flushall()
    clock = values.HybridClock(b"a" * 8, wall_ms=lambda: 1)  # the writer's clock is far off
    stored = values.encode(clock.next(), b"v")
    before = _server_ms(server)
    if script == "APPLY_ONE":
        server.eval(APPLY_ONE_SOURCE, 1, b"k", stored, -50_000)
    elif script == "APPLY":
        _apply(server, [(b"k", stored, -50_000)])
    else:  # one expiry per key: relative, absolute and none mixed
        _apply(server, [(b"k", stored, -50_000), (b"a", stored, before + 9_000), (b"n", stored, 0)])
        assert pexpiretime(server, b"a") == before + 9_000
        assert server.pttl(b"n") == -1
    after = _server_ms(server)
    expires = pexpiretime(server, b"k")
    assert before + 50_000 <= expires <= after + 50_000
