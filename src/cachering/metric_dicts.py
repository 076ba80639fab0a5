"""Plain-dict helpers over metric snapshots: flatten, total_operations, hit_rate, delta.

They take a :class:`~cachering.metrics.Metrics` or its ``as_dict()`` form; import them
from :mod:`cachering.metrics`, which re-exports every name here.

>>> delta({"ops": {"get": 1}}, {"ops": {"get": 4}, "hits": 2})
{'ops.get': 3.0, 'hits': 2.0}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["delta", "flatten", "hit_rate", "total_operations"]


def _number(value: object) -> float | None:
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return float(len(value))
    return None


def _leaves(node: object, path: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def _as_mapping(snapshot: Mapping[str, Any] | Metrics) -> Mapping[str, Any]:
    return snapshot if isinstance(snapshot, Mapping) else snapshot.as_dict()


def flatten(snapshot: Mapping[str, Any] | Metrics) -> dict[str, float]:
    """Every numeric leaf of a snapshot's dict by dotted path; lists count their items."""
    out: dict[str, float] = {}
    for path, value in _leaves(_as_mapping(snapshot), ""):
        number = _number(value)
        if number is not None:
            out[path] = number
    return out


def total_operations(snapshot: Mapping[str, Any] | Metrics) -> int:
    """Every call counted in ``ops``, whatever the operation."""
    ops = _as_mapping(snapshot).get("ops")
    if not isinstance(ops, Mapping):
        return 0
    return int(sum(v for v in ops.values() if isinstance(v, (int, float))))


def hit_rate(snapshot: Mapping[str, Any] | Metrics) -> float | None:
    """``hits / (hits + misses)``, or None before the first read."""
    snap = _as_mapping(snapshot)
    hits = _number(snap.get("hits")) or 0.0
    misses = _number(snap.get("misses")) or 0.0
    return hits / (hits + misses) if hits + misses else None


def delta(
    before: Mapping[str, Any] | Metrics, after: Mapping[str, Any] | Metrics
) -> dict[str, float]:
    """``after - before`` for every flattened field (fields new in ``after`` count from 0)."""
    a, b = flatten(before), flatten(after)
    return {path: value - a.get(path, 0.0) for path, value in b.items()}
