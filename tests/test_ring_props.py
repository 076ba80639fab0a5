"""Property tests: the twins agree, and the ring moves keys the way consistent hashing should."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachering.ring import _ring_py

try:
    from cachering.ring import _ring_c
except ImportError:  # pragma: no cover - only without a compiler
    _ring_c = None  # type: ignore[assignment]

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
weights = st.one_of(st.integers(1, 6), st.floats(0.05, 6, allow_nan=False, allow_infinity=False))
keys = st.one_of(st.text(max_size=40), st.binary(max_size=40))
key_lists = st.lists(keys, min_size=1, max_size=60)


@st.composite
def ring_args(draw: st.DrawFn) -> tuple[dict[str, float], dict[str, object]]:
    nodes = draw(st.dictionaries(names, weights, min_size=1, max_size=12))
    mode = draw(st.sampled_from(["murmur3", "ketama"]))
    if mode == "ketama":
        options: dict[str, object] = {"hash": mode, "vnodes": 4 * draw(st.integers(1, 12))}
    else:
        options = {"vnodes": draw(st.integers(1, 32)), "seed": draw(st.integers(0, 2**32 - 1))}
    return nodes, options


needs_c = pytest.mark.skipif(_ring_c is None, reason="compiled ring not built")
fast = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@needs_c
@fast
@given(ring_args(), key_lists, st.integers(1, 5))
def test_twins_agree(
    args: tuple[dict[str, float], dict[str, object]], ks: list[object], n: int
) -> None:
    nodes, options = args
    c_ring = _ring_c.Ring(nodes, **options)
    py_ring = _ring_py.Ring(nodes, **options)
    assert c_ring.nodes == py_ring.nodes
    assert c_ring.point_count == py_ring.point_count
    assert repr(c_ring) == repr(py_ring)
    assert c_ring.ownership() == py_ring.ownership()
    if py_ring.point_count == 0:  # ketama may give tiny weights no points at all
        return
    assert c_ring.lookup_many(ks) == py_ring.lookup_many(ks)
    assert c_ring.group_by_node(ks) == py_ring.group_by_node(ks)
    assert c_ring.preference_lists(ks, n) == py_ring.preference_lists(ks, n)
    c_groups, py_groups = c_ring.group_by_preference(ks, n), py_ring.group_by_preference(ks, n)
    assert list(c_groups.items()) == list(py_groups.items())


@needs_c
@fast
@given(st.one_of(st.text(max_size=80), st.binary(max_size=300)), st.integers(0, 2**32 - 1))
def test_twins_agree_on_murmur3(data: str | bytes, seed: int) -> None:
    assert _ring_c.murmur3_32(data, seed) == _ring_py.murmur3_32(data, seed)


@fast
@given(ring_args(), key_lists, st.integers(1, 5))
def test_batch_calls_agree_with_lookup(
    ring_impl: ModuleType,
    args: tuple[dict[str, float], dict[str, object]],
    ks: list[object],
    n: int,
) -> None:
    ring = ring_impl.Ring(*args[:1], **args[1])
    if ring.point_count == 0:
        return
    owners = [ring.lookup(k) for k in ks]
    reachable = sum(1 for share in ring.ownership().values() if share > 0)
    assert ring.lookup_many(ks) == owners
    prefs = ring.preference_lists(ks, n)
    for key, owner, pref in zip(ks, owners, prefs, strict=True):
        assert pref[0] == owner
        assert len(set(pref)) == len(pref) == min(n, reachable)
        assert pref == ring.preference_list(key, n)
    groups = ring.group_by_node(ks)
    for node, group in groups.items():
        assert all(ring.lookup(k) == node for k in group)
    assert sum(len(g) for g in groups.values()) == len(ks)
    by_pref = ring.group_by_preference(ks, n)
    for pref, group in by_pref.items():
        assert all(ring.preference_list(k, n) == pref for k in group)
    assert sum(len(g) for g in by_pref.values()) == len(ks)


_keys = [f"key:{i}" for i in range(2000)]


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_adding_a_node_moves_keys_only_to_it(ring_impl: ModuleType, count: int, seed: int) -> None:
    ring = ring_impl.Ring([f"node-{i}" for i in range(count)], seed=seed)
    bigger = ring.with_node("newcomer")
    before = ring.lookup_many(_keys)
    after = bigger.lookup_many(_keys)
    moved = [b for a, b in zip(before, after, strict=True) if a != b]
    assert set(moved) <= {"newcomer"}
    expected = len(_keys) / (count + 1)
    assert 0.5 * expected < len(moved) < 1.6 * expected
    # Removing it again restores every key.
    assert bigger.without_node("newcomer").lookup_many(_keys) == before


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(2, 12), st.sampled_from(["murmur3", "ketama"]), st.data())
def test_removing_a_node_moves_only_its_keys(
    ring_impl: ModuleType, count: int, mode: str, data: st.DataObject
) -> None:
    ring = ring_impl.Ring([f"node-{i}" for i in range(count)], hash=mode)
    gone = data.draw(st.sampled_from(ring.nodes))
    smaller = ring.without_node(gone)
    for before, after in zip(ring.lookup_many(_keys), smaller.lookup_many(_keys), strict=True):
        assert after != gone
        if before != gone:
            assert after == before
