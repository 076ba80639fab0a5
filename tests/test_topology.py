"""Topology snapshots: validation, changes, routing sets and the canonical encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachering.control.topology import NODE_STATES, Topology, TopologyNode
from cachering.node import NodeSpec

SPECS = [
    NodeSpec("c", "127.0.0.1", 7002),
    NodeSpec("a", "127.0.0.1", 7000, weight=2),
    NodeSpec("b", "::1", 7001),
]


def test_initial() -> None:
    t = Topology.initial(SPECS)
    assert t.stamp == (0, 0)
    assert t.leader is None
    assert t.ids == ("a", "b", "c"), "nodes are kept sorted by id"
    assert t.node("a").weight == 2.0
    assert all(n.state == "up" for n in t.nodes)
    assert t.readable_ids == t.writable_ids == ("a", "b", "c")
    assert "a" in t
    assert "z" not in t


def test_changes_bump_version_and_keep_the_original() -> None:
    t0 = Topology.initial(SPECS)
    t1 = t0.with_state("b", "down", epoch=1, leader="m1")
    assert t0.node("b").state == "up"
    assert t1.stamp == (1, 1)
    assert t1.leader == "m1"
    assert t1.newer_than(t0)
    assert not t0.newer_than(t1)
    assert t1.newer_than(None)
    t2 = t1.with_state("b", "recovering", epoch=1)
    assert t2.leader == "m1", "the leader carries over"
    assert t2.readable_ids == ("a", "c")
    assert t2.writable_ids == ("a", "b", "c")
    assert [n.id for n in t2.routable] == ["a", "c"]
    t3 = t2.with_node(TopologyNode("d", "h", 1, state="joining"), epoch=2)
    assert t3.stamp == (2, 3)
    assert "d" in t3.writable_ids
    assert "d" not in t3.readable_ids
    t4 = t3.with_weight("a", 0.5, epoch=2).without_node("c", epoch=2)
    assert t4.ids == ("a", "b", "d")
    assert t4.node("a").weight == 0.5
    assert t4.stamp == (2, 5)


def test_change_errors() -> None:
    t = Topology.initial(SPECS).with_state("a", "down", epoch=3)
    with pytest.raises(ValueError, match="epoch"):
        t.with_state("a", "up", epoch=2)
    with pytest.raises(KeyError):
        t.with_state("zz", "up", epoch=3)
    with pytest.raises(KeyError):
        t.without_node("zz", epoch=3)
    with pytest.raises(ValueError, match="already"):
        t.with_node(TopologyNode("a", "h", 1), epoch=3)
    with pytest.raises(ValueError, match="state"):
        t.with_state("a", "gone", epoch=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        t.with_weight("a", 0, epoch=3)
    with pytest.raises(TypeError):
        t.with_node(SPECS[0], epoch=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epoch": -1}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"version": 2**53}, "version"),
        ({"version": 1.0}, "version"),
        ({"leader": ""}, "leader"),
        ({"nodes": (TopologyNode("a", "h", 1), TopologyNode("a", "h", 2))}, "duplicate"),
        ({"nodes": ("a",)}, "TopologyNode"),
    ],
)
def test_topology_validation(kwargs: dict[str, Any], match: str) -> None:
    fields: dict[str, Any] = {"epoch": 0, "version": 0, "nodes": ()}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Topology(**fields)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "h", 1), "id"),
        (("a", "", 1), "host"),
        (("a", "h", 0), "port"),
        (("a", "h", 70000), "port"),
        (("a", "h", 1, float("nan")), "weight"),
        (("a", "h", 1, -1), "weight"),
        (("a", "h", 1, True), "weight"),
        (("a", "h", 1, 1, "gone"), "state"),
    ],
)
def test_node_validation(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TopologyNode(*args)


def test_bytes_are_canonical() -> None:
    t = Topology.initial(SPECS).with_state("b", "down", epoch=1, leader="m")
    data = t.to_bytes()
    assert data == Topology(1, 1, tuple(reversed(t.nodes)), "m").to_bytes()
    assert b" " not in data
    assert json.loads(data)["format"] == 1
    assert Topology.from_bytes(data) == t


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b"{}",
        b"NaN",
        b"[" * 100000,
        b'{"epoch":0,"format":1,"leader":null,"nodes":[],"version":0,"x":1}',
        b'{"epoch":0,"format":2,"leader":null,"nodes":[],"version":0}',
        b'{"epoch":0,"format":true,"leader":null,"nodes":[],"version":0}',
        b'{"epoch":-1,"format":1,"leader":null,"nodes":[],"version":0}',
        b'{"epoch":0,"format":1,"leader":null,"nodes":{},"version":0}',
        b'{"epoch":0,"format":1,"leader":null,"nodes":[1],"version":0}',
        b'{"epoch":0,"format":1,"leader":null,"nodes":[{"id":"a"}],"version":0}',
        b'{"epoch":0,"format":1,"leader":null,"version":0,"nodes":[{"id":"a","host":"h",'
        b'"port":1,"weight":NaN,"state":"up"}]}',
        b'{"epoch":0,"format":1,"leader":null,"version":0,"nodes":[{"id":"a","host":"h",'
        b'"port":1,"weight":true,"state":"up"}]}',
        b'{"epoch":0,"format":1,"leader":null,"version":0,"nodes":[{"id":"a","host":"h",'
        b'"port":1,"weight":1,"state":["up"]}]}',
        b'{"epoch":0,"format":1,"leader":null,"version":0,"nodes":[{"id":"a","host":"h",'
        b'"port":1,"weight":1,"state":"up"},{"id":"a","host":"h","port":2,"weight":1,'
        b'"state":"up"}]}',
    ],
)
def test_from_bytes_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the defect
        Topology.from_bytes(data)


@given(st.binary(max_size=300))
def test_from_bytes_fuzz_raises_only_value_error(data: bytes) -> None:
    try:
        t = Topology.from_bytes(data)
    except ValueError:
        return
    assert Topology.from_bytes(t.to_bytes()) == t


node_strategy = st.builds(
    TopologyNode,
    id=st.text(min_size=1, max_size=12),
    host=st.text(min_size=1, max_size=12),
    port=st.integers(1, 65535),
    weight=st.floats(min_value=1e-6, max_value=1e6) | st.integers(1, 1000),
    state=st.sampled_from(NODE_STATES),
)
topology_strategy = st.builds(
    Topology,
    epoch=st.integers(0, 2**53 - 1),
    version=st.integers(0, 2**53 - 1),
    nodes=st.lists(node_strategy, max_size=8, unique_by=lambda n: n.id).map(tuple),
    leader=st.none() | st.text(min_size=1, max_size=10),
)


@given(topology_strategy)
def test_round_trip_property(t: Topology) -> None:
    data = t.to_bytes()
    back = Topology.from_bytes(data)
    assert back == t
    assert back.to_bytes() == data
    assert data.isascii()
    assert set(t.readable_ids) <= set(t.writable_ids) <= set(t.ids)
