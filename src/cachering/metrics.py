"""Helpers over :meth:`Cluster.metrics() <cachering.cluster.Cluster.metrics>` snapshots.

A snapshot is a tree of plain dicts, lists and numbers. This module gives it stable,
conventional metric names (the ones the Prometheus exporter uses), flattens it, and
computes rates between two snapshots, without knowing more of its shape than it must:
a field it does not know still appears, named after its path.

>>> flatten({"ops": {"get": 3}, "sync": {"queue_depth": 0}, "suspects": ["b"]})
{'ops.get': 3.0, 'sync.queue_depth': 0.0, 'suspects': 1.0}
>>> hit_rate({"hits": 3, "misses": 1})
0.75
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "KNOWN",
    "MetricSpec",
    "Sample",
    "delta",
    "flatten",
    "hit_rate",
    "samples",
    "status_samples",
    "total_operations",
]

Kind = Literal["counter", "gauge"]


@attrs.frozen
class MetricSpec:
    """How one snapshot field becomes a metric.

    ``path``: dotted path in the snapshot. ``label``: when the field is a mapping, the
    label its keys become (``"op"``, ``"node"``...); ``labels``: fixed labels added to every
    sample (``{"outcome": "applied"}``). ``name`` is given without ``_total``.
    """

    path: str
    name: str
    kind: Kind
    help: str
    label: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)


_SYNC = "sync."
_NEAR = "near_cache."

KNOWN: tuple[MetricSpec, ...] = (
    MetricSpec("ops", "cachering_operations", "counter", "Calls by operation.", label="op"),
    MetricSpec("hits", "cachering_hits", "counter", "Keys read that held a value."),
    MetricSpec("misses", "cachering_misses", "counter", "Keys read that held no value."),
    MetricSpec("errors", "cachering_node_errors", "counter", "Failed calls by node.", label="node"),
    MetricSpec(
        "hints_recorded", "cachering_hints_recorded", "counter", "Hints kept for missed nodes."
    ),
    MetricSpec("suspects", "cachering_suspect_nodes", "gauge", "Nodes this manager routes around."),
    MetricSpec(
        _SYNC + "queue_depth",
        "cachering_replication_queue_depth",
        "gauge",
        "Replica writes waiting or in flight.",
    ),
    MetricSpec(
        _SYNC + "submitted",
        "cachering_replica_writes_submitted",
        "counter",
        "Replica writes queued.",
    ),
    MetricSpec(
        _SYNC + "inline",
        "cachering_replica_writes_inline",
        "counter",
        "Replica writes sent in a set_many's call to their node (counted in submitted).",
    ),
    *(
        MetricSpec(
            f"{_SYNC}replica_writes_{outcome}",
            "cachering_replica_writes",
            "counter",
            "Replica writes by outcome.",
            labels={"outcome": outcome},
        )
        for outcome in ("applied", "stale", "dropped", "abandoned")
    ),
    MetricSpec(
        _SYNC + "batches_flushed", "cachering_sync_batches", "counter", "Replica batches sent."
    ),
    MetricSpec(_SYNC + "flushes", "cachering_sync_flushes", "counter", "Synchronizer flushes."),
    MetricSpec(_SYNC + "hints_lost", "cachering_hints_lost", "counter", "Hints not recorded."),
    MetricSpec(_NEAR + "size", "cachering_near_cache_entries", "gauge", "Near-cache entries."),
    MetricSpec(_NEAR + "hits", "cachering_near_cache_hits", "counter", "Near-cache hits."),
    MetricSpec(_NEAR + "misses", "cachering_near_cache_misses", "counter", "Near-cache misses."),
    MetricSpec(
        _NEAR + "invalidated",
        "cachering_near_cache_invalidations",
        "counter",
        "Near-cache entries invalidated.",
    ),
    MetricSpec(
        _NEAR + "clears", "cachering_near_cache_clears", "counter", "Near-cache full clears."
    ),
    *(
        MetricSpec(
            f"{_NEAR}messages_{what}",
            "cachering_invalidation_messages",
            "counter",
            "Invalidation messages by direction.",
            labels={"direction": what},
        )
        for what in ("sent", "received", "dropped")
    ),
)
"""The snapshot fields with conventional names; anything else is exported by its path."""


@attrs.frozen
class Sample:
    """One value of one metric, with its labels."""

    name: str
    kind: Kind
    help: str
    labels: Mapping[str, str]
    value: float


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _walk(node: object, path: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def flatten(snapshot: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric leaf by dotted path; lists and sets count their items."""
    out: dict[str, float] = {}
    for path, value in _walk(snapshot, ""):
        if isinstance(value, (list, tuple, set, frozenset)):
            out[path] = float(len(value))
            continue
        number = _number(value)
        if number is not None:
            out[path] = number
    return out


def _get(snapshot: Mapping[str, Any], path: str) -> object:
    node: object = snapshot
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _generic_name(path: str) -> str:
    return "cachering_" + _BAD.sub("_", path.replace(".", "_"))


def samples(snapshot: Mapping[str, Any]) -> list[Sample]:
    """The snapshot as metric samples: known fields by their names, others by path.

    A mapping field with a ``label`` gives one sample per key; a list gives its length
    (``suspects``). Fields that are not numbers (``enabled`` flags become 0/1) and nested
    mappings without a known name are flattened into ``cachering_<path>`` gauges.
    """
    out: list[Sample] = []
    covered: set[str] = set()
    for spec in KNOWN:
        value = _get(snapshot, spec.path)
        if value is None:
            continue
        covered.add(spec.path)
        if spec.label is not None and isinstance(value, Mapping):
            for key, item in value.items():
                number = _number(item)
                if number is not None:
                    labels = {**spec.labels, spec.label: str(key)}
                    out.append(Sample(spec.name, spec.kind, spec.help, labels, number))
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            number = float(len(value))
        else:
            number = _number(value) or 0.0
        out.append(Sample(spec.name, spec.kind, spec.help, dict(spec.labels), number))
    for path, number in flatten(snapshot).items():
        if any(path == c or path.startswith(c + ".") for c in covered):
            continue
        out.append(Sample(_generic_name(path), "gauge", f"Snapshot field {path}.", {}, number))
    return out


_NODE_STATES = ("up", "down", "recovering", "joining")


def status_samples(status: Mapping[str, Any]) -> list[Sample]:
    """Samples from a manager's ``status()`` (leader, epoch, node states, control messages).

    Fields that are missing are skipped, so an older or newer status shape still exports
    what it can.
    """
    out: list[Sample] = []

    def add(name: str, kind: Kind, help: str, value: object, **labels: str) -> None:
        number = _number(value)
        if number is not None:
            out.append(Sample(name, kind, help, labels, number))

    add("cachering_is_leader", "gauge", "1 if this manager is the leader.", status.get("is_leader"))
    add(
        "cachering_epoch",
        "gauge",
        "Highest election epoch this manager has seen.",
        status.get("epoch"),
    )
    topo = status.get("topology")
    if isinstance(topo, Mapping):
        add("cachering_topology_epoch", "gauge", "Epoch of the topology in use.", topo.get("epoch"))
        add(
            "cachering_topology_version",
            "gauge",
            "Version of the topology in use.",
            topo.get("version"),
        )
    nodes = status.get("nodes")
    if isinstance(nodes, Mapping):
        for node, info in nodes.items():
            if not isinstance(info, Mapping):
                continue
            state = info.get("state")
            if state is not None:
                for candidate in _NODE_STATES:
                    add(
                        "cachering_node_state",
                        "gauge",
                        "1 for the node's state in the topology, 0 for the others.",
                        candidate == state,
                        node=str(node),
                        state=candidate,
                    )
            add(
                "cachering_node_suspect",
                "gauge",
                "1 while this manager's heartbeats to the node fail.",
                info.get("suspect"),
                node=str(node),
            )
            latency = _number(info.get("latency_ms"))
            if latency is not None:
                add(
                    "cachering_node_latency_seconds",
                    "gauge",
                    "Round trip of the last heartbeat.",
                    latency / 1000,
                    node=str(node),
                )
            add(
                "cachering_node_restarts",
                "counter",
                "Server restarts seen (run_id changes).",
                info.get("restarts"),
                node=str(node),
            )
    messages = status.get("messages")
    if isinstance(messages, Mapping):
        add(
            "cachering_control_messages_accepted",
            "counter",
            "Control messages that passed every check.",
            messages.get("accepted"),
        )
        dropped = messages.get("dropped")
        if isinstance(dropped, Mapping):
            for reason, count in dropped.items():
                add(
                    "cachering_control_messages_dropped",
                    "counter",
                    "Control messages dropped, by reason.",
                    count,
                    reason=str(reason),
                )
    add(
        "cachering_secret_configured",
        "gauge",
        "1 if control messages are signed.",
        status.get("secret_configured"),
    )
    counters = status.get("counters")
    if isinstance(counters, Mapping):
        for name, count in counters.items():
            add(
                f"cachering_control_{_BAD.sub('_', str(name))}",
                "counter",
                f"Control plane counter {name}.",
                count,
            )
    add(
        "cachering_events_published",
        "counter",
        "Cluster events published.",
        status.get("events_published"),
    )
    return out


def total_operations(snapshot: Mapping[str, Any]) -> int:
    """Every call counted in ``ops``, whatever the operation."""
    ops = snapshot.get("ops")
    if not isinstance(ops, Mapping):
        return 0
    return int(sum(v for v in ops.values() if isinstance(v, (int, float))))


def hit_rate(snapshot: Mapping[str, Any]) -> float | None:
    """``hits / (hits + misses)``, or None before the first read."""
    hits = _number(snapshot.get("hits")) or 0.0
    misses = _number(snapshot.get("misses")) or 0.0
    return hits / (hits + misses) if hits + misses else None


def delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float]:
    """``after - before`` for every flattened field (fields new in ``after`` count from 0)."""
    a, b = flatten(before), flatten(after)
    return {path: value - a.get(path, 0.0) for path, value in b.items()}
