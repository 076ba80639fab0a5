"""OpenTelemetry spans around cluster operations, recorded by the SDK's in-memory exporter
against a real local cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from cachering import Cluster
from cachering import tracing as tracing_mod
from cachering.local import LocalCluster
from cluster_helpers import config

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans() -> Iterator[in_memory.InMemorySpanExporter]:
    """A tracer provider for cachering alone, recording into memory."""
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    tracing_mod.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing_mod.use_tracer_provider(None)
        provider.shutdown()


def _by_name(exporter: in_memory.InMemorySpanExporter) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


async def test_each_operation_is_a_client_span(
    local: LocalCluster, spans: in_memory.InMemorySpanExporter
) -> None:
    async with Cluster(config(local.nodes, "otel1", replicas=2)) as cache:
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v"
        await cache.set_many({f"m{i}": b"x" for i in range(5)})
        assert await cache.get_many(["m0", "m1", "m2"]) == [b"x"] * 3
        assert await cache.delete("k") is True
        primary = cache.node_for("k")
    named = _by_name(spans)
    for name in ("set", "get", "set_many", "get_many", "delete"):
        assert len(named[f"cachering {name}"]) == 1, sorted(named)
    get = named["cachering get"][0]
    attrs = dict(get.attributes)  # type: ignore[attr-defined]
    assert get.kind == SpanKind.CLIENT  # type: ignore[attr-defined]
    assert attrs["db.system"] == "redis"
    assert attrs["db.operation.name"] == "get"
    assert attrs["db.namespace"] == "otel1"
    assert attrs["cachering.node"] == primary
    node = next(n for n in local.nodes if n.id == primary)
    assert (attrs["server.address"], attrs["server.port"]) == (node.host, node.port)
    batch = dict(named["cachering get_many"][0].attributes)  # type: ignore[attr-defined]
    assert batch["db.operation.batch.size"] == 3
    assert "cachering.node" not in batch
    assert dict(named["cachering set_many"][0].attributes)["db.operation.batch.size"] == 5  # type: ignore[attr-defined]


async def test_a_failed_operation_records_the_error(
    local: LocalCluster, spans: in_memory.InMemorySpanExporter
) -> None:
    async with Cluster(config(local.nodes, "otel2")) as cache:
        with pytest.raises(TypeError):
            await cache.set("k", 12345)  # type: ignore[arg-type]
    (span,) = _by_name(spans)["cachering set"]
    assert span.status.status_code == StatusCode.ERROR  # type: ignore[attr-defined]
    assert any(e.name == "exception" for e in span.events)  # type: ignore[attr-defined]


async def test_no_provider_no_spans(local: LocalCluster) -> None:
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    # A provider exists but is neither global nor given to cachering: nothing recorded.
    async with Cluster(config(local.nodes, "otel3")) as cache:
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v"
    assert tracing_mod._tracer() is None
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_import_does_not_load_opentelemetry() -> None:
    code = "import sys, cachering; assert 'opentelemetry' not in sys.modules, 'loaded'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        tracing_mod.traced("get", "keys")


_GLOBAL_PROVIDER = """
import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from cachering import Cluster, ClusterConfig
from cachering.local import LocalCluster

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))

async def main(nodes):
    async with Cluster(ClusterConfig(nodes=nodes, heartbeat_interval=0.2)) as cache:
        await cache.set("a", b"1")  # no provider yet: no span
        trace.set_tracer_provider(provider)
        with anyio.fail_after(10):  # noticed within about a second
            while not exporter.get_finished_spans():
                assert await cache.get("a") == b"1"
                await anyio.sleep(0.05)

with LocalCluster(1) as servers:
    anyio.run(main, servers.nodes)
print(sorted({span.name for span in exporter.get_finished_spans()}))
"""


def test_the_global_provider_is_noticed_once_set() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['cachering get']"
