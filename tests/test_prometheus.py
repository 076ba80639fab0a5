"""The Prometheus exporter: counters move as operations happen."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.control.plane import ControlPlane
from cachering.local import LocalCluster
from cachering.metrics import flatten, hit_rate, samples, status_samples, total_operations
from cachering.prometheus import render, serve

pytestmark = pytest.mark.anyio

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}."""
    out = {}
    for line in text.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        out[(match[1], labels)] = float(match[3])
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str):
    want = set(labels.items())
    found = [v for (n, ls), v in metrics.items() if n == name and want <= set(ls)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(2) as cluster:
        yield cluster


async def test_counters_move_with_operations(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom", manager_id="mgr-1")
    async with Cluster(config) as cluster:
        await cluster.set("a", b"1")
        before = parse(render(cluster))
        assert value(before, "cachering_operations_total", op="set", manager="mgr-1") == 1
        await cluster.set("a", b"2")
        await cluster.set("b", b"3")
        assert await cluster.get("a") == b"2"
        assert await cluster.get("missing") is None
        await cluster.get_many(["a", "b", "missing"])
        after = parse(render(cluster))
    assert value(after, "cachering_operations_total", op="set") == 3
    assert value(after, "cachering_operations_total", op="get") == 2
    assert value(after, "cachering_operations_total", op="get_many") == 1
    assert value(after, "cachering_hits_total") - value(before, "cachering_hits_total") == 3
    assert value(after, "cachering_misses_total") - value(before, "cachering_misses_total") == 2
    assert ("cachering_replication_queue_depth", frozenset({("manager", "mgr-1")})) in after
    # The failover layer's status is exported too: a state per node, exactly one set.
    for node in ("n0", "n1"):
        states = [
            v
            for (n, ls), v in after.items()
            if n == "cachering_node_state" and ("node", node) in ls
        ]
        assert sorted(states) == [0, 0, 0, 1]


async def test_serve_exposes_metrics_over_http(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom2", manager_id="mgr-2")
    async with Cluster(config) as cluster:
        with serve(cluster, 0) as exporter:
            await cluster.set("k", b"v")
            with urllib.request.urlopen(exporter.url, timeout=5) as resp:
                first = parse(resp.read())
            await cluster.set("k", b"w")
            with urllib.request.urlopen(exporter.url, timeout=5) as resp:
                second = parse(resp.read())
    assert value(first, "cachering_operations_total", op="set", manager="mgr-2") == 1
    assert value(second, "cachering_operations_total", op="set", manager="mgr-2") == 2


def test_snapshot_helpers_name_unknown_fields_by_path() -> None:
    snap = {
        "ops": {"get": 3, "set": 1},
        "hits": 2,
        "misses": 1,
        "errors": {"n0": 4},
        "suspects": ["n0"],
        "control": {"dropped": {"forged": 2}},
    }
    assert total_operations(snap) == 4
    assert hit_rate(snap) == pytest.approx(2 / 3)
    assert flatten(snap)["control.dropped.forged"] == 2.0
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(snap)}
    assert by_name[("cachering_node_errors", (("node", "n0"),))] == 4
    assert by_name[("cachering_suspect_nodes", ())] == 1
    assert by_name[("cachering_control_dropped_forged", ())] == 2


async def test_status_samples_read_the_control_planes_status(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom3", secret={"k1": b"x" * 16})
    status = ControlPlane(config, manager_id="mgr-3").status()
    by_key = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in status_samples(status)}
    assert by_key[("cachering_node_state", (("node", "n0"), ("state", "up")))] == 1
    assert by_key[("cachering_node_state", (("node", "n0"), ("state", "down")))] == 0
    assert by_key[("cachering_is_leader", ())] == 0
    assert by_key[("cachering_secret_configured", ())] == 1
    assert ("cachering_control_messages_accepted", ()) in by_key
