"""The ring API, hashing vectors and bad input, on both implementations (``ring_impl``)."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import platform
import random
import struct
from bisect import bisect_left
from types import ModuleType

import mmh3
import pytest
import uhashring

import cachering.ring
from cachering.errors import EmptyRingError

EXTENSIONS_EXPECTED = (
    not os.environ.get("CACHERING_NO_EXTENSIONS") and platform.python_implementation() == "CPython"
)


def test_compiled_ring_loaded_when_expected() -> None:
    if EXTENSIONS_EXPECTED:
        assert cachering.ring.IMPLEMENTATION == "c"
        assert cachering.ring.Ring.__module__ == "cachering.ring._ring_c"
    else:
        assert cachering.ring.IMPLEMENTATION == "python"


# -- MurmurHash3 x86_32 ---------------------------------------------------------------


def test_murmur3_smhasher_verification_value(ring_impl: ModuleType) -> None:
    # SMHasher's VerificationTest: hash keys 0, 0 1, 0 1 2, ... with seed 256 - i,
    # hash the concatenated little-endian results with seed 0.
    digests = b"".join(
        struct.pack("<I", ring_impl.murmur3_32(bytes(range(i)), 256 - i)) for i in range(256)
    )
    assert ring_impl.murmur3_32(digests, 0) == 0xB0F57EE3


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        ("foo", 0, 4138058784),
        ("foo", 42, 2972666014),
        ("", 0, 0),
        ("", 1, 0x514E28B7),
        ("", 0xFFFFFFFF, 0x81F16F39),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
        (b"\x21\x43\x65", 0, 0x7E4A8634),
        (b"\x21\x43", 0, 0xA0F7B07A),
        (b"\x21", 0, 0x72661CF4),
        (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
        ("Hello, world!", 1234, 0xFAF6CDB3),
        ("The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    ],
)
def test_murmur3_published_vectors(
    ring_impl: ModuleType, data: str | bytes, seed: int, expected: int
) -> None:
    assert ring_impl.murmur3_32(data, seed) == expected


def test_murmur3_matches_mmh3_on_random_input(ring_impl: ModuleType) -> None:
    rnd = random.Random(7)
    for _ in range(300):
        data = rnd.randbytes(rnd.randrange(0, 70))
        seed = rnd.randrange(0, 2**32)
        assert ring_impl.murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)
        text = "".join(chr(rnd.randrange(1, 0x2FFF)) for _ in range(rnd.randrange(0, 9)))
        assert ring_impl.murmur3_32(text, seed) == mmh3.hash(text.encode(), seed, signed=False)


def test_murmur3_accepts_bytes_like(ring_impl: ModuleType) -> None:
    expected = ring_impl.murmur3_32(b"abcdef", 9)
    assert ring_impl.murmur3_32(bytearray(b"abcdef"), 9) == expected
    assert ring_impl.murmur3_32(memoryview(b"xabcdefx")[1:-1], 9) == expected
    assert ring_impl.murmur3_32(memoryview(b"aXbXcXdXeXfX")[::2], 9) == expected


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "1", True])
def test_murmur3_rejects_bad_seed(ring_impl: ModuleType, seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        ring_impl.murmur3_32("x", seed)


def test_murmur3_rejects_non_bytes(ring_impl: ModuleType) -> None:
    with pytest.raises(TypeError, match="int"):
        ring_impl.murmur3_32(12)


# -- ketama compatibility ---------------------------------------------------------------


def test_python_ketama_vectors(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"127.0.0.1:11211": 600, "127.0.0.1:11212": 400}, hash="ketama")
    assert ring.point_count == 320
    assert int.from_bytes(hashlib.md5(b"test").digest()[:4], "little") == 3446378249
    assert ring.lookup("test") == "127.0.0.1:11211"
    assert ring.lookup(b"test") == "127.0.0.1:11211"


def _random_weights(rnd: random.Random) -> dict[str, int]:
    count = rnd.randrange(1, 25)
    names = {f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{i}:11211" for i in range(count)}
    return {name: rnd.randrange(1, 1000) for name in sorted(names)}


def test_ketama_matches_uhashring_on_random_rings(ring_impl: ModuleType) -> None:
    rnd = random.Random(11)
    for _ in range(8):
        weights = _random_weights(rnd)
        theirs = uhashring.HashRing(nodes=weights, hash_fn="ketama")
        ours = ring_impl.Ring(weights, hash="ketama")
        keys = [f"key:{rnd.random()}" for _ in range(1500)] + ["", "é", "😀" * 30]
        assert ours.lookup_many(keys) == [theirs.get_node(k) for k in keys]
        assert ours.point_count == len(theirs.runtime._keys)


LIBKETAMA_SERVERS = {
    "10.0.1.1:11211": 600,
    "10.0.1.2:11211": 300,
    "10.0.1.3:11211": 200,
    "10.0.1.4:11211": 350,
    "10.0.1.5:11211": 1000,
    "10.0.1.6:11211": 800,
    "10.0.1.7:11211": 950,
    "10.0.1.8:11211": 100,
}


def test_libketama_sample_servers_match_uhashring(ring_impl: ModuleType) -> None:
    keys = [str(i) for i in range(0, 100_000, 7)]
    theirs = uhashring.HashRing(nodes=LIBKETAMA_SERVERS, hash_fn="ketama")
    ours = ring_impl.Ring(LIBKETAMA_SERVERS, hash="ketama")
    assert ours.lookup_many(keys) == [theirs.get_node(k) for k in keys]


@functools.lru_cache(maxsize=1)
def _libketama_reference() -> tuple[list[str], list[str], str]:
    """Keys, owners and the md5 of the output of libketama's ketama_test, rebuilt here.

    ketama_test prints an empty error line, then ``"<key hash> <point> <server>"`` for
    keys "0".."999999"; libketama's test harness compares the md5 of that output.
    """
    total = sum(LIBKETAMA_SERVERS.values())
    continuum = sorted(
        (p, name)
        for name, weight in LIBKETAMA_SERVERS.items()
        for d in range(40 * len(LIBKETAMA_SERVERS) * weight // total)
        for p in struct.unpack("<4I", hashlib.md5(f"{name}-{d}".encode()).digest())
    )
    points = [p for p, _ in continuum]
    keys = [str(i) for i in range(1_000_000)]
    owners = []
    lines = ["\n"]
    for key in keys:
        kh = int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little")
        i = bisect_left(points, kh)
        # libketama takes the first point >= hash, we the first > hash: the same here,
        # since no key hash lands exactly on a point.
        assert i == len(points) or points[i] != kh
        point, owner = continuum[i % len(points)]
        owners.append(owner)
        lines.append(f"{kh} {point} {owner}\n")
    return keys, owners, hashlib.md5("".join(lines).encode()).hexdigest()


@pytest.mark.slow
def test_libketama_published_test_output(ring_impl: ModuleType) -> None:
    keys, owners, output_md5 = _libketama_reference()
    assert output_md5 == "5672b131391f5aa2b280936aec1eea74"  # from libketama's test.sh
    ring = ring_impl.Ring(LIBKETAMA_SERVERS, hash="ketama")
    assert ring.point_count == 1264
    assert ring.lookup_many(keys) == owners


def test_ketama_float_weights_use_exact_fractions(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"a": 0.5, "b": 1.5}, hash="ketama")
    # floor(40 * 2 * 0.5 / 2) = 20 digests, floor(40 * 2 * 1.5 / 2) = 60 digests.
    assert ring.point_count == 4 * (20 + 60)
    int_ring = ring_impl.Ring({"a": 1, "b": 3}, hash="ketama")
    keys = [f"k{i}" for i in range(300)]
    assert ring.lookup_many(keys) == int_ring.lookup_many(keys)


# -- the API ------------------------------------------------------------------------------


def test_point_counts_follow_weights(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"a": 1, "b": 2.5, "c": 0.001}, vnodes=100)
    assert ring.point_count == 100 + 250 + 1
    assert len(ring) == 3
    assert ring.nodes == ("a", "b", "c")
    assert ring.weights == {"a": 1, "b": 2.5, "c": 0.001}
    assert (ring.vnodes, ring.hash, ring.seed) == (100, "murmur3", 0)


def test_nodes_are_sorted_and_weights_is_a_copy(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["zeta", "alpha", "é", "Beta"])
    assert ring.nodes == ("Beta", "alpha", "zeta", "é")
    ring.weights["alpha"] = 5
    assert ring.weights["alpha"] == 1


def test_placement_rule_murmur3(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a", "b", "c"], vnodes=7, seed=99)
    points = sorted(
        (ring_impl.murmur3_32(f"{n}-{i}", 99), n) for n in ("a", "b", "c") for i in range(7)
    )
    for key in ["x", "y", "", "key:1", "ü" * 20]:
        h = ring_impl.murmur3_32(key, 99)
        owner = next((n for p, n in points if p > h), points[0][1])
        assert ring.lookup(key) == owner


def test_key_hash_on_a_point_goes_to_the_next_point(ring_impl: ModuleType) -> None:
    # The key "a-0" hashes exactly onto a's only point, so it belongs to the other node.
    ring = ring_impl.Ring(["a", "b"], vnodes=1)
    assert ring.lookup("a-0") == "b"
    assert ring.lookup("b-0") == "a"


def test_str_and_utf8_bytes_map_the_same(ring_impl: ModuleType) -> None:
    for mode in ("murmur3", "ketama"):
        ring = ring_impl.Ring([f"n{i}" for i in range(7)], hash=mode)
        for key in ["", "plain", "ünïcødé", "日本語のキー", "😀" * 100, "x" * 100_000]:
            data = key.encode()
            owner = ring.lookup(key)
            assert ring.lookup(data) == owner
            assert ring.lookup(bytearray(data)) == owner
            assert ring.lookup(memoryview(data)) == owner
        assert ring.lookup_many([b"a", "a", bytearray(b"a")]) == [ring.lookup("a")] * 3


@pytest.mark.parametrize("key", [1, 1.5, None, ("a",), object()])
def test_bad_key_types_raise_type_error(ring_impl: ModuleType, key: object) -> None:
    ring = ring_impl.Ring(["a", "b"])
    name = type(key).__name__
    with pytest.raises(TypeError, match=name):
        ring.lookup(key)
    with pytest.raises(TypeError, match=name):
        ring.lookup_many(["ok", key])
    with pytest.raises(TypeError, match=name):
        ring.group_by_node([key])
    with pytest.raises(TypeError, match=name):
        ring.preference_list(key, 2)
    with pytest.raises(TypeError, match=name):
        ring.group_by_preference(["ok", key], 2)


def test_empty_ring(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring([])
    assert len(ring) == 0
    assert ring.point_count == 0
    assert ring.ownership() == {}
    for call in (
        lambda: ring.lookup("k"),
        lambda: ring.lookup_many(["k"]),
        lambda: ring.group_by_node(["k"]),
        lambda: ring.preference_list("k", 1),
        lambda: ring.group_by_preference(["k"], 2),
    ):
        with pytest.raises(EmptyRingError):
            call()
    assert issubclass(EmptyRingError, LookupError)


@pytest.mark.parametrize(
    ("nodes", "kwargs", "field"),
    [
        (["a", ""], {}, "nodes"),
        (["a", 3], {}, "nodes"),
        (["a", "a"], {}, "nodes"),
        ("abc", {}, "nodes"),
        (42, {}, "nodes"),
        (["a\udc00"], {}, "nodes"),
        ({"a": 0}, {}, "weights"),
        ({"a": -1}, {}, "weights"),
        ({"a": True}, {}, "weights"),
        ({"a": math.nan}, {}, "weights"),
        ({"a": math.inf}, {}, "weights"),
        ({"a": "1"}, {}, "weights"),
        ({"a": 1e12}, {}, "weights"),
        (["a"], {"vnodes": 0}, "vnodes"),
        (["a"], {"vnodes": 1.0}, "vnodes"),
        (["a"], {"vnodes": True}, "vnodes"),
        (["a"], {"hash": "md5"}, "hash"),
        (["a"], {"hash": "ketama", "vnodes": 10}, "vnodes"),
        (["a"], {"hash": "ketama", "seed": 3}, "seed"),
        (["a"], {"seed": -1}, "seed"),
        (["a"], {"seed": 2**32}, "seed"),
        (["a"], {"seed": "0"}, "seed"),
    ],
)
def test_bad_construction_names_the_field(
    ring_impl: ModuleType, nodes: object, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        ring_impl.Ring(nodes, **kwargs)


@pytest.mark.parametrize("n", [0, -1, -(2**70), 1.0, None, True])
def test_preference_list_rejects_bad_n(ring_impl: ModuleType, n: object) -> None:
    ring = ring_impl.Ring(["a", "b"])
    with pytest.raises(ValueError, match=r"^n"):
        ring.preference_list("k", n)
    with pytest.raises(ValueError, match=r"^n"):
        ring.preference_lists(["k"], n)


def test_preference_list_caps_at_node_count(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a", "b", "c"])
    pref = ring.preference_list("key", 10)
    assert sorted(pref) == ["a", "b", "c"]
    assert pref[0] == ring.lookup("key")
    assert ring.preference_list("key", 1) == (ring.lookup("key"),)
    # an n past any C integer is capped like any other, in every call that takes one
    assert ring.preference_list("key", 2**70) == pref
    assert ring.preference_lists(["key"], 2**70) == [pref]
    assert ring.group_by_preference(["key"], 2**70) == {pref: ["key"]}


@pytest.mark.parametrize("nodes", [3, 64, 65, 200])
def test_preference_list_matches_the_batch_call(ring_impl: ModuleType, nodes: int) -> None:
    # the single-key call has its own path (a stack buffer up to 64 nodes, heap past it)
    ring = ring_impl.Ring([f"n{i}" for i in range(nodes)], vnodes=20)
    keys = [f"k{i}" for i in range(300)] + [b"\x00\xff", bytearray(b"ba"), memoryview(b"mv")]
    for n in (1, 2, 7, nodes + 1):
        batch = ring.preference_lists(keys, n)
        for key, pref in zip(keys, batch, strict=True):
            assert ring.preference_list(key, n) == pref
            assert len(pref) == min(n, nodes)


def test_batch_calls_accept_any_iterable(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a", "b", "c"])
    keys = [f"k{i}" for i in range(50)]
    expected = [ring.lookup(k) for k in keys]
    assert ring.lookup_many(iter(keys)) == expected
    assert ring.lookup_many(tuple(keys)) == expected
    assert ring.lookup_many(k for k in keys) == expected
    assert ring.lookup_many([]) == []
    assert ring.group_by_node(iter(keys)) == ring.group_by_node(keys)
    assert ring.group_by_node([]) == {}
    assert ring.preference_lists(iter(keys), 2) == [ring.preference_list(k, 2) for k in keys]
    assert ring.group_by_preference(iter(keys), 2) == ring.group_by_preference(keys, 2)
    assert ring.group_by_preference(tuple(keys), 2) == ring.group_by_preference(keys, 2)
    assert ring.group_by_preference([], 2) == {}


@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_group_by_preference_matches_preference_lists(ring_impl: ModuleType, n: int) -> None:
    ring = ring_impl.Ring({"a": 1, "b": 2, "c": 1, "d": 0.5})
    keys = [f"k{i}" for i in range(500)] + [b"k1", bytearray(b"k2"), memoryview(b"k3")]
    groups = ring.group_by_preference(keys, n)
    expected: dict[tuple[str, ...], list[object]] = {}
    for key, pref in zip(keys, ring.preference_lists(keys, n), strict=True):
        expected.setdefault(pref, []).append(key)
    # same lists, same order of first occurrence, the caller's objects in order
    assert list(groups) == list(expected)
    for pref, group in groups.items():
        assert [id(k) for k in group] == [id(k) for k in expected[pref]]
    assert all(len(pref) == min(n, 4) for pref in groups)


def test_group_by_preference_checks_n(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a", "b"])
    for bad in (0, -1, "2", 1.0):
        with pytest.raises(ValueError, match="n: expected an int"):
            ring.group_by_preference(["k"], bad)


def test_group_by_node_keeps_caller_objects_and_order(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a", "b", "c"])
    keys = [f"k{i}" for i in range(200)] + [b"k1", bytearray(b"k2")]
    groups = ring.group_by_node(keys)
    assert list(groups) == [n for n in ring.nodes if n in groups]
    assert all(groups.values())
    flat = [k for group in groups.values() for k in group]
    assert sorted(map(id, flat)) == sorted(map(id, keys))
    position = {id(k): i for i, k in enumerate(keys)}
    for node, group in groups.items():
        assert [position[id(k)] for k in group] == sorted(position[id(k)] for k in group)
        assert all(ring.lookup(k) == node for k in group)


def test_immutability_and_derived_rings(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"a": 1, "b": 2})
    bigger = ring.with_node("c", 3)
    assert bigger is not ring
    assert ring.nodes == ("a", "b")
    assert bigger.weights == {"a": 1, "b": 2, "c": 3}
    assert bigger.without_node("c") == ring
    assert ring.with_weights({"a": 5}).weights == {"a": 5, "b": 2}
    assert ring.weights == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="nodes"):
        ring.with_node("a")
    with pytest.raises(ValueError, match="weights"):
        ring.with_node("z", 0)
    with pytest.raises(KeyError):
        ring.without_node("zz")
    with pytest.raises(KeyError):
        ring.with_weights({"zz": 1})


def test_equality_hash_and_pickle(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"b": 2, "a": 1}, vnodes=50, seed=5)
    same = ring_impl.Ring({"a": 1, "b": 2}, vnodes=50, seed=5)
    assert ring == same
    assert hash(ring) == hash(same)
    assert ring != ring_impl.Ring({"a": 1, "b": 2}, vnodes=50, seed=6)
    assert ring != ring_impl.Ring({"a": 1, "b": 2}, vnodes=51, seed=5)
    assert ring != ring_impl.Ring({"a": 1, "b": 3}, vnodes=50, seed=5)
    assert ring != ring_impl.Ring(["a", "b"], vnodes=52, hash="ketama")
    assert ring != "ring"
    for mode in ("murmur3", "ketama"):
        original = ring_impl.Ring({"x": 1, "é": 2.5}, hash=mode)
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original)
        assert copy == original
        keys = [f"k{i}" for i in range(100)]
        assert copy.lookup_many(keys) == original.lookup_many(keys)


def test_repr_is_useful(ring_impl: ModuleType) -> None:
    assert (
        repr(ring_impl.Ring({"a": 1}, seed=3))
        == "Ring({'a': 1}, vnodes=160, hash='murmur3', seed=3)"
    )
    big = repr(ring_impl.Ring([f"n{i:02}" for i in range(20)], vnodes=4))
    assert "20 nodes" in big
    assert "'n00'" in big


def test_ownership_sums_to_one_and_tracks_weight(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"a": 1, "b": 3})
    shares = ring.ownership()
    assert math.isclose(sum(shares.values()), 1.0)
    assert 0.15 < shares["a"] < 0.35
    assert ring_impl.Ring(["solo"]).ownership() == {"solo": 1.0}


def test_ten_equal_nodes_share_evenly(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring([f"cache-{i}" for i in range(10)], vnodes=160)
    shares = ring.ownership()
    assert all(0.07 < s < 0.13 for s in shares.values()), shares
    keys = [f"user:{i}" for i in range(20_000)]
    counts = {n: len(g) for n, g in ring.group_by_node(keys).items()}
    assert all(1400 < c < 2600 for c in counts.values()), counts


def _murmur3_collision() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(1_000_000):
        name = f"n{i}"
        point = mmh3.hash(f"{name}-0", 0, signed=False)
        if point in seen:
            return seen[point], name
        seen[point] = name
    raise AssertionError("no collision found")


def _ketama_collision() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(1_000_000):
        name = f"s{i}"
        for point in struct.unpack("<4I", hashlib.md5(f"{name}-0".encode()).digest()):
            if point in seen and seen[point] != name:
                return seen[point], name
            seen[point] = name
    raise AssertionError("no collision found")


def test_murmur3_collisions_go_to_the_first_name(ring_impl: ModuleType) -> None:
    first, second = sorted(_murmur3_collision())
    ring = ring_impl.Ring([second, first], vnodes=1)
    assert ring.point_count == 2
    keys = [f"k{i}" for i in range(20)]
    assert set(ring.lookup_many(keys)) == {first}
    assert ring.ownership() == {first: 1.0, second: 0.0}
    assert ring.preference_list("k", 2) == (first, second)
    assert ring.without_node(first).lookup("k") == second
    assert ring.with_node("other").without_node("other") == ring


def test_ketama_collisions_match_uhashring(ring_impl: ModuleType) -> None:
    first, second = sorted(_ketama_collision())
    weights = {first: 1, second: 1, "third": 1}
    # 12 points per node: only digest 0 matters for the clash, the rest spread the keys.
    ring = ring_impl.Ring(weights, vnodes=4, hash="ketama")
    theirs = uhashring.HashRing(nodes=weights, vnodes=1, hash_fn="ketama")
    clash = next(p for p in theirs.runtime._keys if theirs.runtime._keys.count(p) > 1)
    index = theirs.runtime._keys.index(clash)
    keys = [f"k{i}" for i in range(3000)]
    assert ring.lookup_many(keys) == [theirs.get_node(k) for k in keys]
    assert theirs.runtime._ring[clash] == second
    # The arc ending at the clash belongs to the name sorting last (uhashring's last writer):
    # a key hashing into [previous point, clash) goes to ``second`` in both rings.
    low = theirs.runtime._keys[index - 1]
    on_arc = [
        k
        for k in (f"arc{i}" for i in range(200_000))
        if (low <= clash and low <= _ketama_key_hash(k) < clash)
        or (low > clash and (_ketama_key_hash(k) >= low or _ketama_key_hash(k) < clash))
    ][:5]
    assert on_arc, "no probe key landed on the clash arc"
    assert [ring.lookup(k) for k in on_arc] == [second] * len(on_arc)
    assert [theirs.get_node(k) for k in on_arc] == [second] * len(on_arc)
    assert ring.ownership()[second] > 0


def test_ketama_node_without_points_is_never_chosen(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring({"big": 1, "tiny": 0.001}, vnodes=4, hash="ketama")
    assert len(ring) == 2
    assert ring.point_count == 4
    assert ring.ownership() == {"big": 1.0, "tiny": 0.0}
    assert ring.preference_list("k", 2) == ("big",)


def test_ring_cannot_be_reinitialised(ring_impl: ModuleType) -> None:
    ring = ring_impl.Ring(["a"])
    with pytest.raises(TypeError, match="immutable"):
        ring.__init__(["b"])
    assert ring.nodes == ("a",)


def test_unusual_bytes_like_and_str_subclass_keys(ring_impl: ModuleType) -> None:
    import array

    class Name(str):
        pass

    ring = ring_impl.Ring([f"n{i}" for i in range(5)], hash="ketama")
    keys = [f"key-{i}" for i in range(40)]
    expected = ring.lookup_many(keys)
    odd = [
        memoryview(("#".join(k)).encode())[::2]
        if i % 3 == 0
        else Name(k)
        if i % 3 == 1
        else array.array("B", k.encode())
        for i, k in enumerate(keys)
    ]
    assert ring.lookup_many(odd) == expected
    assert ring.lookup_many(tuple(odd)) == expected
    groups = ring.group_by_node(odd)
    position = {id(k): i for i, k in enumerate(odd)}
    flat = [k for group in groups.values() for k in group]
    assert [position[id(k)] for k in sorted(flat, key=lambda k: position[id(k)])] == list(
        range(len(odd))
    )
    for node, group in groups.items():
        assert [position[id(k)] for k in group] == sorted(position[id(k)] for k in group)
        assert ring.lookup_many(group) == [node] * len(group)


@pytest.mark.parametrize("mode", ["murmur3", "ketama"])
def test_str_keys_that_are_not_utf8_encodable_raise(ring_impl: ModuleType, mode: str) -> None:
    ring = ring_impl.Ring(["a", "b"], hash=mode)
    bad = "x\udc00"
    with pytest.raises(UnicodeEncodeError):
        ring.lookup(bad)
    with pytest.raises(UnicodeEncodeError):
        ring.lookup_many(["k"] * 9 + [bad])
    with pytest.raises(UnicodeEncodeError):
        ring.group_by_node([bad] * 10)


def _ketama_key_hash(key: str) -> int:
    """A key's ketama hash: the little-endian uint32 of md5(key)[0:4]."""
    return int(struct.unpack_from("<I", hashlib.md5(key.encode()).digest())[0])
