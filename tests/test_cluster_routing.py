"""Router: home copies, local suspicion with back-off, ring swaps and topology states."""

from __future__ import annotations

import pytest

from cachering import NodeSpec
from cachering.config import ClusterConfig
from cachering.control.topology import Topology
from cachering.data.routing import Router
from cachering.ring import Ring

NODES = tuple(NodeSpec(f"n{i}", "127.0.0.1", 7000 + i) for i in range(4))
KEYS = [f"key{i}".encode() for i in range(300)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(replicas: int = 2, backoff: float = 1.0) -> tuple[Router, Clock]:
    clock = Clock()
    cfg = ClusterConfig(nodes=NODES, replicas=replicas, node_backoff=backoff)
    return Router(cfg, clock=clock), clock


def test_home_copies_follow_the_ring() -> None:
    router, _ = make()
    ring = Ring({n.id: 1 for n in NODES})
    for key in KEYS:
        assert router.preference_list(key) == ring.preference_list(key, 2)
        assert router.node_for(key) == ring.lookup(key)
        assert router.write_plan(key) == (ring.preference_list(key, 2), ())
        assert router.read_order(key) == ring.preference_list(key, 2)
    assert router.read_orders(KEYS) is None


def test_suspect_primary_is_replaced_by_the_next_node_and_reported_missed() -> None:
    router, clock = make()
    ring = Ring({n.id: 1 for n in NODES})
    router.report_failure("n0")
    assert router.suspects() == {"n0"}
    for key, (targets, missed) in zip(KEYS, router.write_plans(KEYS), strict=True):
        full = ring.preference_list(key, 3)
        if "n0" in full[:2]:
            assert missed == ("n0",)
            assert targets == tuple(n for n in full if n != "n0")[:2]
        else:
            assert (targets, missed) == (full[:2], ())
        order = router.read_order(key)
        # reads stay on the home copies (a stand-in may hold an old copy), suspects last
        assert set(order) == set(full[:2])
        if "n0" in full[:2]:
            assert order[-1] == "n0"
    clock.now = 1.5  # back-off over
    assert router.suspects() == frozenset()
    assert router.write_plan(KEYS[0])[1] == ()


def test_mark_suspect_without_deadline_until_cleared() -> None:
    router, clock = make(backoff=0)
    router.report_failure("n1")  # back-off 0: not suspected
    assert not router.is_suspect("n1")
    router.mark_suspect("n1")
    clock.now = 1e9
    assert router.is_suspect("n1")
    router.clear_suspect("n1")
    assert not router.is_suspect("n1")


def test_every_node_suspect_still_routes_somewhere() -> None:
    router, _ = make(replicas=2)
    for node in NODES:
        router.mark_suspect(node.id)
    for key in KEYS[:20]:
        targets, missed = router.write_plan(key)
        assert targets == router.preference_list(key)
        assert missed == ()
        assert router.read_order(key) == router.preference_list(key)


def test_swap_is_atomic_and_changes_routing() -> None:
    router, _ = make(replicas=3)
    router.swap(["n0", "n1"])
    assert router.version == 1
    assert router.copies == 2
    assert set(router.ring.nodes) == {"n0", "n1"}
    assert all(set(router.preference_list(k)) == {"n0", "n1"} for k in KEYS[:20])
    router.swap({"n0": 1, "n1": 1, "n2": 3})
    assert router.ring.weights["n2"] == 3
    router.swap(["n0", "n1"], {"n1": 2})
    assert router.ring.weights["n1"] == 2
    with pytest.raises(ValueError, match="at least one"):
        router.swap([])


def test_topology_states() -> None:
    router, _ = make(replicas=2)
    topo = Topology.initial(NODES)
    topo = topo.with_state("n0", "down", epoch=1).with_state("n1", "recovering", epoch=1)
    nodes = topo.nodes
    router.swap(
        {n.id: n.weight for n in nodes},
        unreadable=[n.id for n in nodes if not n.readable],
        unwritable=[n.id for n in nodes if not n.writable],
    )
    assert router.unreadable == {"n0", "n1"}
    assert router.unwritable == {"n0"}
    for key in KEYS:
        order = router.read_order(key)
        assert "n0" not in order
        assert "n1" not in order
        targets, missed = router.write_plan(key)
        assert "n0" not in targets
        assert ("n0" in router.preference_list(key)) == (missed == ("n0",))
    orders = router.read_orders(KEYS)
    assert orders is not None
    assert all("n1" not in o for o in orders)
