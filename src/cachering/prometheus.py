"""Prometheus exporter for :class:`~cachering.cluster.Cluster` metrics (``cachering[prometheus]``).

The collector reads ``cluster.metrics()`` at scrape time (nothing is updated on the hot
path) and exposes the snapshot under conventional names (see :mod:`cachering.metrics`):
``cachering_operations_total{op}``, ``cachering_hits_total``, ``cachering_misses_total``,
``cachering_node_errors_total{node}``, ``cachering_replication_queue_depth``,
``cachering_replica_writes_total{outcome}`` and so on. When the cluster has a
``status()`` (the failover layer), leader, epoch, topology, node states and latencies,
and control messages accepted and dropped by reason are exported too
(``cachering_is_leader``, ``cachering_node_state{node,state}``,
``cachering_control_messages_dropped_total{reason}``, ...). Every sample carries a
``manager`` label (the cluster's manager id), so several clusters can share one registry.

>>> from prometheus_client import CollectorRegistry            # doctest: +SKIP
>>> registry = CollectorRegistry()                             # doctest: +SKIP
>>> registry.register(CacheringCollector(cluster))             # doctest: +SKIP
>>> exporter = serve(cluster, 9120)   # http://127.0.0.1:9120/metrics   # doctest: +SKIP
>>> exporter.close()                                           # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, cast

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachering.prometheus needs prometheus-client: pip install 'cachering[prometheus]'"
    ) from exc

from .errors import CacheringError
from .metrics import Sample, samples, status_samples

__all__ = ["CacheringCollector", "Exporter", "render", "serve"]


class _HasMetrics(Protocol):
    id: str

    def metrics(self) -> dict[str, Any]: ...


class CacheringCollector:
    """A prometheus-client collector over one or more clusters' ``metrics()`` snapshots."""

    def __init__(self, clusters: _HasMetrics | Iterable[_HasMetrics]) -> None:
        if callable(getattr(clusters, "metrics", None)):
            self._clusters: list[_HasMetrics] = [cast(_HasMetrics, clusters)]
        else:
            self._clusters = list(cast(Iterable[_HasMetrics], clusters))
        for c in self._clusters:
            if not callable(getattr(c, "metrics", None)):
                raise TypeError(f"expected objects with a metrics() method, got {c!r}")

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from fresh snapshots (called on each scrape)."""
        families: dict[str, Metric] = {}
        label_names: dict[str, list[str]] = {}
        for cluster in self._clusters:
            manager = str(getattr(cluster, "id", ""))
            for s in [*samples(cluster.metrics()), *_status_of(cluster)]:
                labels = {"manager": manager, **s.labels}
                names = sorted(labels)
                family = families.get(s.name)
                if family is None:
                    cls = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                    family = families[s.name] = cls(s.name, s.help, labels=names)
                    label_names[s.name] = names
                elif label_names[s.name] != names:
                    continue  # every sample of a family must have the same label names
                family.add_metric([labels[n] for n in names], s.value)  # type: ignore[attr-defined]
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the names depend on the snapshot (registered without a scrape)."""
        return iter(())


def _status_of(cluster: object) -> list[Sample]:
    """Samples from ``cluster.status()`` when the cluster has one (the failover layer)."""
    status = getattr(cluster, "status", None)
    if not callable(status):
        return []
    try:
        result = status()
    except (RuntimeError, CacheringError):  # closed, or changed while read from this thread
        return []
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # an async status() cannot be awaited from the scrape thread
        return []
    return status_samples(result) if isinstance(result, Mapping) else []


def render(clusters: _HasMetrics | Iterable[_HasMetrics]) -> bytes:
    """The Prometheus text exposition of ``clusters``' metrics right now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheringCollector(clusters))
    return bytes(generate_latest(registry))


class Exporter:
    """A running ``/metrics`` HTTP endpoint; :meth:`close` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread, registry: CollectorRegistry):
        self._server = server
        self._thread = thread
        self.registry = registry
        """The registry the endpoint serves (register more collectors on it if you like)."""
        self.host, self.port = server.server_address[:2]

    @property
    def url(self) -> str:
        """The scrape URL, ``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(
    clusters: _HasMetrics | Iterable[_HasMetrics], port: int = 9120, *, addr: str = "127.0.0.1"
) -> Exporter:
    """Serve ``clusters``' metrics on ``http://addr:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (read it from :attr:`Exporter.port`). Binds to loopback
    by default; pass ``addr="0.0.0.0"`` to let a Prometheus server on another host scrape.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheringCollector(clusters))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return Exporter(server, thread, registry)
