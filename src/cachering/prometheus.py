"""Prometheus exporter for :class:`~cachering.cluster.Cluster` metrics (``cachering[prometheus]``).

At each scrape the collector asks every cluster for :meth:`Cluster.snapshot()
<cachering.cluster.Cluster.snapshot>`: its ``metrics()`` and ``status()`` taken on the
cluster's own event loop (nothing is updated on the hot path, and no loop state is read
from the scrape thread). The samples come from the one table in :mod:`cachering.metrics`,
so every family is declared once, counters are typed ``counter`` with ``_total``, and
every family exists from the first scrape: ``cachering_operations_total{op}``,
``cachering_node_errors_total{node}``, ``cachering_replica_writes_total{outcome}``,
``cachering_is_leader``, ``cachering_node_state{node,state}``,
``cachering_control_messages_dropped_total{reason}`` and the rest listed in
``docs/operations.md``. Every sample carries a ``manager`` label (the cluster's manager
id), so several clusters can share one registry. A cluster whose loop does not answer
in time is served from its last snapshot.

>>> from prometheus_client import CollectorRegistry            # doctest: +SKIP
>>> registry = CollectorRegistry()                             # doctest: +SKIP
>>> registry.register(CacheringCollector(cluster))             # doctest: +SKIP
>>> exporter = serve(cluster, 9120)   # http://127.0.0.1:9120/metrics   # doctest: +SKIP
>>> exporter.close()                                           # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, cast

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachering.prometheus needs prometheus-client: pip install 'cachering[prometheus]'"
    ) from exc

from .metrics import Metrics, Sample, Status, samples

__all__ = ["CacheringCollector", "Exporter", "render", "serve"]


class _HasSnapshot(Protocol):
    id: str

    def snapshot(self, timeout: float = ...) -> tuple[Metrics, Status]: ...


class CacheringCollector:
    """A prometheus-client collector over one or more clusters' snapshots.

    ``timeout``: how long a scrape waits for a cluster's loop before it serves that
    cluster's last snapshot.
    """

    def __init__(
        self, clusters: _HasSnapshot | Iterable[_HasSnapshot], *, timeout: float = 5.0
    ) -> None:
        if callable(getattr(clusters, "snapshot", None)):
            self._clusters: list[_HasSnapshot] = [cast(_HasSnapshot, clusters)]
        else:
            self._clusters = list(cast(Iterable[_HasSnapshot], clusters))
        for c in self._clusters:
            if not callable(getattr(c, "snapshot", None)):
                raise TypeError(f"expected objects with a snapshot() method, got {c!r}")
        self.timeout = timeout
        self._last: dict[int, tuple[Metrics, Status]] = {}

    def _snapshot(self, cluster: _HasSnapshot) -> tuple[Metrics, Status] | None:
        try:
            snap = cluster.snapshot(self.timeout)
        except (RuntimeError, TimeoutError):  # closed, or its loop is busy: the last one
            return self._last.get(id(cluster))
        self._last[id(cluster)] = snap
        return snap

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from fresh snapshots (called on each scrape)."""
        families: dict[str, Metric] = {}
        label_names: dict[str, list[str]] = {}
        for cluster in self._clusters:
            snap = self._snapshot(cluster)
            if snap is None:
                continue
            manager = str(getattr(cluster, "id", ""))
            for s in samples(*snap):
                labels = {"manager": manager, **s.labels}
                names = sorted(labels)
                family = families.get(s.name)
                if family is None:
                    family = families[s.name] = _family(s, names)
                    label_names[s.name] = names
                elif label_names[s.name] != names:
                    raise ValueError(
                        f"{s.name}: samples with labels {names} and {label_names[s.name]}"
                    )
                family.add_metric([labels[n] for n in names], s.value)  # type: ignore[attr-defined]
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        """Nothing up front (registered without a scrape)."""
        return iter(())


def _family(sample: Sample, labels: list[str]) -> Metric:
    if sample.kind == "counter":
        # prometheus-client adds the suffix itself to the exposed sample names
        return CounterMetricFamily(sample.name.removesuffix("_total"), sample.help, labels=labels)
    return GaugeMetricFamily(sample.name, sample.help, labels=labels)


def render(clusters: _HasSnapshot | Iterable[_HasSnapshot]) -> bytes:
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
    clusters: _HasSnapshot | Iterable[_HasSnapshot], port: int = 9120, *, addr: str = "127.0.0.1"
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
