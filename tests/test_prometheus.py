"""The Prometheus exporter: every documented family, once, through HTTP, with a node down."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.control.plane import ControlPlane
from cachering.errors import ConsistencyError
from cachering.local import LocalCluster
from cachering.metrics import families, flatten, hit_rate, samples, total_operations
from cachering.prometheus import CacheringCollector, render, serve
from failover_harness import failover_config

pytestmark = pytest.mark.anyio

Series = tuple[str, frozenset[tuple[str, str]]]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_TYPE = re.compile(r"^# TYPE (\S+) (counter|gauge)$")
_DOC_ROW = re.compile(r"^\| `(cachering_\w+)` \| (counter|gauge) \|")
_OPERATIONS_MD = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


class Scrape:
    """One parsed exposition: every series once, and every family's declared type."""

    def __init__(self, text: bytes) -> None:
        self.values: dict[Series, float] = {}
        self.types: dict[str, str] = {}
        for line in text.decode().splitlines():
            typed = _TYPE.match(line)
            if typed:
                assert typed[1] not in self.types, f"family declared twice: {typed[1]}"
                self.types[typed[1]] = typed[2]
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            assert match, line
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            series = (match[1], labels)
            assert series not in self.values, f"duplicate series: {line}"
            assert match[1] in self.types, f"sample without a family: {line}"
            self.values[series] = float(match[3])

    def names(self) -> set[str]:
        """Families with at least one sample."""
        return {name for name, _ in self.values}

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        found = [v for (n, ls), v in self.values.items() if n == name and want <= set(ls)]
        assert len(found) == 1, (name, labels, found)
        return found[0]


def documented() -> dict[str, str]:
    """Family -> type, from the metric table in docs/operations.md."""
    out = {}
    for line in _OPERATIONS_MD.read_text().splitlines():
        row = _DOC_ROW.match(line)
        if row:
            out[row[1]] = row[2]
    assert len(out) > 40, "the metric table in docs/operations.md was not found"
    return out


def fetch(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return Scrape(resp.read())


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(2) as cluster:
        yield cluster


def test_the_table_and_the_document_name_the_same_families() -> None:
    declared = {name: spec.kind for name, spec in families().items()}
    assert declared == documented()
    for name, kind in declared.items():
        assert name.endswith("_total") == (kind == "counter"), name


def test_the_parser_rejects_duplicates_and_untyped_samples() -> None:
    ok = b'# TYPE a_total counter\na_total{x="1"} 1\na_total{x="2"} 1\n'
    assert len(Scrape(ok).values) == 2
    with pytest.raises(AssertionError, match="duplicate series"):
        Scrape(b'# TYPE a_total counter\na_total{x="1"} 1\na_total{x="1"} 2\n')
    with pytest.raises(AssertionError, match="without a family"):
        Scrape(b"b 1\n")
    with pytest.raises(AssertionError, match="declared twice"):
        Scrape(b"# TYPE a gauge\n# TYPE a gauge\n")


async def test_serve_answers_every_family_while_a_node_is_down() -> None:
    with LocalCluster(3) as local:
        config = failover_config(local.nodes, "promdown", manager_id="mgr-down")
        async with Cluster(config) as cluster:
            with serve(cluster, 0) as exporter:
                opening = await anyio.to_thread.run_sync(fetch, exporter.url)
                with anyio.fail_after(20):
                    while not cluster.is_leader:
                        await anyio.sleep(0.05)
                await cluster.set("k", b"v")
                first = await anyio.to_thread.run_sync(fetch, exporter.url)
                local.kill(1)
                with anyio.fail_after(30):
                    while not (
                        cluster.status().nodes["n1"].suspect
                        and cluster.topology.node("n1").state == "down"
                    ):
                        await anyio.sleep(0.05)
                for i in range(20):
                    # some homes are on n1: hinted writes (a quorum of two homes needs both)
                    await cluster.set(f"key{i}", b"v", consistency="one")
                down = await anyio.to_thread.run_sync(fetch, exporter.url)
    want = documented()
    for scrape in (opening, first, down):
        assert want.keys() <= scrape.names(), sorted(want.keys() - scrape.names())
        for name, kind in want.items():
            assert scrape.types[name] == kind, name
        assert all(("manager", "mgr-down") in ls for _, ls in scrape.values)
        for node in ("n0", "n1", "n2"):
            assert scrape.value("cachering_node_errors_total", node=node) >= 0
    assert first.value("cachering_node_state", node="n1", state="up") == 1
    assert down.value("cachering_node_state", node="n1", state="down") == 1
    assert down.value("cachering_node_state", node="n1", state="up") == 0
    assert down.value("cachering_node_suspect", node="n1") == 1
    assert down.value("cachering_node_suspect", node="n0") == 0
    assert down.value("cachering_is_leader") == 1
    assert down.value("cachering_epoch") >= 1
    assert down.value("cachering_secret_configured") == 1
    assert down.value("cachering_control_topology_commits_total") >= 1
    assert down.value("cachering_control_messages_dropped_total", reason="forged") == 0
    assert down.value("cachering_operations_total", op="set") == 21
    assert down.value("cachering_hints_recorded_total", source="write") >= 1
    assert down.value("cachering_node_latency_seconds", node="n0") > 0


async def test_counters_move_with_operations(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom", manager_id="mgr-1")
    async with Cluster(config) as cluster:
        await cluster.set("a", b"1")
        before = Scrape(render(cluster))  # on the loop thread: no portal round trip
        assert before.value("cachering_operations_total", op="set", manager="mgr-1") == 1
        assert before.value("cachering_operations_total", op="get") == 0
        await cluster.set("a", b"2")
        await cluster.set("b", b"3")
        assert await cluster.get("a") == b"2"
        assert await cluster.get("missing") is None
        await cluster.get_many(["a", "b", "missing"])
        after = Scrape(render(cluster))
        snap = cluster.metrics()
    assert after.value("cachering_operations_total", op="set") == 3
    assert after.value("cachering_operations_total", op="get") == 2
    assert after.value("cachering_operations_total", op="get_many") == 1
    assert after.value("cachering_hits_total") - before.value("cachering_hits_total") == 3
    assert after.value("cachering_misses_total") - before.value("cachering_misses_total") == 2
    assert after.value("cachering_hints_lost_total", source="write") == snap.calls.hints_lost
    assert after.value("cachering_replication_queue_depth", manager="mgr-1") <= 3
    for node in ("n0", "n1"):
        states = [
            v
            for (n, ls), v in after.values.items()
            if n == "cachering_node_state" and ("node", node) in ls
        ]
        assert sorted(states) == [0, 0, 0, 1]


async def test_serve_exposes_fresh_metrics_over_http(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom2", manager_id="mgr-2")
    async with Cluster(config) as cluster:
        with serve(cluster, 0) as exporter:
            await cluster.set("k", b"v")
            first = await anyio.to_thread.run_sync(fetch, exporter.url)
            await cluster.set("k", b"w")
            second = await anyio.to_thread.run_sync(fetch, exporter.url)
    assert first.value("cachering_operations_total", op="set", manager="mgr-2") == 1
    assert second.value("cachering_operations_total", op="set", manager="mgr-2") == 2


async def test_a_closed_cluster_is_served_from_its_last_snapshot(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom4", manager_id="mgr-4")
    async with Cluster(config) as cluster:
        exporter = serve(cluster, 0)
        await cluster.set("k", b"v")
        await anyio.to_thread.run_sync(fetch, exporter.url)
    with exporter:
        with pytest.raises(RuntimeError, match="not open"):
            cluster.snapshot()
        after = await anyio.to_thread.run_sync(fetch, exporter.url)
    assert after.value("cachering_operations_total", op="set", manager="mgr-4") == 1


async def test_snapshot_helpers_read_the_json_form(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom5")
    async with Cluster(config) as cluster:
        await cluster.set("a", b"1")
        await cluster.get("a")
        await cluster.get("b")
        snap = cluster.metrics()
    assert total_operations(snap) == 3
    assert hit_rate(snap) == pytest.approx(1 / 2)
    assert flatten(snap)["ops.set"] == 1.0
    assert flatten(snap.as_dict()) == flatten(snap)
    series = [(s.name, tuple(sorted(s.labels.items()))) for s in samples(snap)]
    assert len(series) == len(set(series))


async def test_samples_read_the_control_planes_status(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom3", secret={"k1": b"x" * 16})
    status = ControlPlane(config, manager_id="mgr-3").status()
    by_key = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(status)}
    assert by_key[("cachering_node_state", (("node", "n0"), ("state", "up")))] == 1
    assert by_key[("cachering_node_state", (("node", "n0"), ("state", "down")))] == 0
    assert by_key[("cachering_is_leader", ())] == 0
    assert by_key[("cachering_secret_configured", ())] == 1
    assert by_key[("cachering_control_messages_accepted_total", ())] == 0
    assert by_key[("cachering_control_messages_dropped_total", (("reason", "forged"),))] == 0
    assert status.as_dict()["messages"]["signed"] is True


async def test_a_blocked_loop_is_served_from_the_last_snapshot(local: LocalCluster) -> None:
    config = ClusterConfig(nodes=local.nodes, namespace="prom6", manager_id="mgr-6")
    async with Cluster(config) as cluster:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CacheringCollector(cluster, timeout=0.2))
        await cluster.set("k", b"v")
        fresh = Scrape(await anyio.to_thread.run_sync(generate_latest, registry))
        await cluster.set("k", b"w")
        scraped: list[bytes] = []
        scraper = threading.Thread(target=lambda: scraped.append(generate_latest(registry)))
        scraper.start()
        scraper.join()  # the loop is blocked here, so the scrape cannot reach it
        stale = Scrape(scraped[0])
        await anyio.sleep(0)  # the abandoned request runs now, harmlessly
        after = Scrape(await anyio.to_thread.run_sync(generate_latest, registry))
    assert fresh.value("cachering_operations_total", op="set") == 1
    assert stale.value("cachering_operations_total", op="set") == 1
    assert after.value("cachering_operations_total", op="set") == 2


async def test_hints_lost_on_the_write_path_are_reported() -> None:
    """The surviving copy refuses the hint (its user may write keys, not hints)."""
    with LocalCluster(2) as local:
        nodes = []
        for spec in local.nodes:
            admin = redis.Redis(host=spec.host, port=spec.port)
            admin.acl_setuser(
                "keysonly",
                enabled=True,
                passwords=["+pw-keys-only"],
                keys=["hl:k:*"],
                commands=["+@all"],
            )
            admin.close()
            nodes.append(attrs.evolve(spec, username="keysonly", password="pw-keys-only"))
        config = ClusterConfig(
            nodes=tuple(nodes), namespace="hl", control_plane=False, consistency="quorum"
        )
        async with Cluster(config) as cluster:
            with serve(cluster, 0) as exporter:
                local.kill(1)  # not known yet: the write finds out during its call
                with pytest.raises(ConsistencyError):
                    await cluster.set("k", b"v")
                scrape = await anyio.to_thread.run_sync(fetch, exporter.url)
            lost = cluster.metrics().calls.hints_lost
    assert lost == 1
    assert scrape.value("cachering_hints_lost_total", source="write") == 1
    assert scrape.value("cachering_hints_lost_total", source="replication") == 0
