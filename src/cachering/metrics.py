"""The one table of counters and metric names, and the snapshots built from it.

Every counter a manager keeps is a field of one of the counter groups below
(:class:`CallCounters`, :class:`SyncCounters`, :class:`NearCacheCounters`,
:class:`ControlCounters`, :class:`ElectionCounters`, :class:`MessageCounters`), and every
field a snapshot exports is declared with its metric name, kind and help text in the same
line, through :func:`counter`, :func:`counter_map` or :func:`gauge`. The services count
by attribute (``stats.applied += 1``: typed, and as fast as a plain int);
:meth:`Cluster.metrics() <cachering.cluster.Cluster.metrics>` and
:meth:`Cluster.status() <cachering.cluster.Cluster.status>` return :class:`Metrics` and
:class:`Status`, which hold copies of these groups; the Prometheus exporter walks the
same declarations (:func:`samples`), so a name exists in one place only.

To add a counter, add one line to its group, for example in :class:`ControlCounters`::

    epochs_refused: int = counter("cachering_control_epochs_refused", "Bad epochs refused.")

then count it where it happens (``self.counters.epochs_refused += 1``). It appears in
``metrics().as_dict()``, in ``status()`` where its group does, and in the exporter as
``cachering_control_epochs_refused_total``; list it in ``docs/operations.md`` (a test
checks that the table and the document name the same families). Names are given without
``_total``; a counter that counts one thing by a label is a :func:`counter_map`; several
counters may share one family when their fixed ``labels`` differ
(``cachering_replica_writes_total{outcome=...}``).

>>> flatten({"ops": {"get": 3}, "sync": {"queue_depth": 0}, "suspects": ["b"]})
{'ops.get': 3.0, 'sync.queue_depth': 0.0, 'suspects': 1.0}
>>> hit_rate({"hits": 3, "misses": 1})
0.75
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs

from .metric_dicts import _number, delta, flatten, hit_rate, total_operations

__all__ = [
    "OPERATIONS",
    "CallCounters",
    "ControlCounters",
    "ControlMetrics",
    "ElectionCounters",
    "MessageCounters",
    "MetricSpec",
    "Metrics",
    "NearCacheCounters",
    "NearCacheMetrics",
    "NodeStatus",
    "Sample",
    "Status",
    "SyncCounters",
    "SyncMetrics",
    "TopologyStamp",
    "counter",
    "counter_map",
    "delta",
    "families",
    "flatten",
    "gauge",
    "hit_rate",
    "samples",
    "snapshot_of",
    "total_operations",
]

Kind = Literal["counter", "gauge"]

_META = "cachering.metric"

NODE_STATES = ("up", "down", "recovering", "joining")
"""The topology states ``cachering_node_state`` has one series for."""

OPERATIONS = ("get", "get_many", "exists", "ttl", "set", "set_many", "delete", "delete_many")
"""Every operation ``cachering_operations_total{op}`` counts (all present from the start)."""


@attrs.frozen
class MetricSpec:
    """How one field becomes a metric family.

    ``name`` is given without ``_total``. ``label``: for a mapping field, the label its
    keys become (``"op"``, ``"node"``); ``labels``: fixed labels on every sample of the
    field (``{"outcome": "applied"}``); ``scale`` multiplies the value (milliseconds to
    seconds); ``states``: a string field becomes one 0/1 series per listed state;
    ``unknown``: the value exported while the field is None (NaN for a latency not
    measured yet), so the series exists from the first scrape.
    """

    name: str
    kind: Kind
    help: str
    label: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    scale: float = 1.0
    states: tuple[str, ...] = ()
    unknown: float | None = None

    @property
    def exposed(self) -> str:
        """The name a scrape shows (``_total`` added to counters)."""
        return self.name + "_total" if self.kind == "counter" else self.name


def counter(name: str, help: str, *, labels: Mapping[str, str] | None = None) -> Any:
    """A counter field (an int starting at 0) named ``name`` (``_total`` is added)."""
    spec = MetricSpec(name, "counter", help, labels=dict(labels or {}))
    return attrs.field(default=0, metadata={_META: spec})


def counter_map(name: str, help: str, *, label: str, keys: tuple[str, ...] = ()) -> Any:
    """A counter by ``label`` (a ``defaultdict(int)``: ``keys`` start at 0, others on use)."""
    spec = MetricSpec(name, "counter", help, label=label)
    return attrs.field(
        factory=lambda: defaultdict(int, dict.fromkeys(keys, 0)), metadata={_META: spec}
    )


def gauge(
    name: str, help: str, *, label: str | None = None, default: Any = attrs.NOTHING, **options: Any
) -> Any:
    """A gauge field of a snapshot (without ``default`` the snapshot's builder fills it)."""
    spec = MetricSpec(name, "gauge", help, label=label, **options)
    return attrs.field(default=default, metadata={_META: spec})


def _spec(field: attrs.Attribute[Any]) -> MetricSpec | None:
    spec = field.metadata.get(_META)
    return spec if isinstance(spec, MetricSpec) else None


# ------------------------------------------------------------------ counter groups


@attrs.define
class CallCounters:
    """What the :class:`~cachering.cluster.Cluster` API and its write path count."""

    ops: dict[str, int] = counter_map(  # noqa: RUF009 - a field spec with a factory
        "cachering_operations", "Calls by operation.", label="op", keys=OPERATIONS
    )
    hits: int = counter("cachering_hits", "Keys read that held a value.")
    misses: int = counter("cachering_misses", "Keys read that held no value.")
    errors: dict[str, int] = counter_map(  # noqa: RUF009 - a field spec with a factory
        "cachering_node_errors", "Failed calls by node.", label="node"
    )
    read_repairs: int = counter(
        "cachering_read_repairs", "Home copies brought up to date by quorum and all reads."
    )
    read_repairs_failed: int = counter(
        "cachering_read_repairs_failed", "Read repairs that a home did not take."
    )
    hints_recorded: int = counter(
        "cachering_hints_recorded", "Hints kept for missed nodes.", labels={"source": "write"}
    )
    hints_lost: int = counter(
        "cachering_hints_lost", "Hints that could not be recorded.", labels={"source": "write"}
    )


@attrs.define
class SyncCounters:
    """What the synchronizer (batched replica writes) counts."""

    submitted: int = counter("cachering_replica_writes_submitted", "Replica writes queued.")
    inline: int = counter(
        "cachering_replica_writes_inline",
        "Replica writes sent in a set_many's call to their node (counted in submitted).",
    )
    applied: int = counter(
        "cachering_replica_writes", "Replica writes by outcome.", labels={"outcome": "applied"}
    )
    stale: int = counter(
        "cachering_replica_writes", "Replica writes by outcome.", labels={"outcome": "stale"}
    )
    dropped: int = counter(
        "cachering_replica_writes", "Replica writes by outcome.", labels={"outcome": "dropped"}
    )
    abandoned: int = counter(
        "cachering_replica_writes", "Replica writes by outcome.", labels={"outcome": "abandoned"}
    )
    batches: int = counter("cachering_sync_batches", "Replica batches sent.")
    flushes: int = counter("cachering_sync_flushes", "Synchronizer flushes.")
    hints_recorded: int = counter(
        "cachering_hints_recorded", "Hints kept for missed nodes.", labels={"source": "replication"}
    )
    hints_lost: int = counter(
        "cachering_hints_lost",
        "Hints that could not be recorded.",
        labels={"source": "replication"},
    )


@attrs.define
class NearCacheCounters:
    """What the near cache and its invalidation messages count."""

    hits: int = counter("cachering_near_cache_hits", "Near-cache hits.")
    misses: int = counter("cachering_near_cache_misses", "Near-cache misses.")
    invalidated: int = counter("cachering_near_cache_invalidations", "Entries invalidated.")
    clears: int = counter("cachering_near_cache_clears", "Near-cache full clears.")
    messages_sent: int = counter(
        "cachering_invalidation_messages", "Invalidation messages.", labels={"direction": "sent"}
    )
    messages_received: int = counter(
        "cachering_invalidation_messages",
        "Invalidation messages.",
        labels={"direction": "received"},
    )
    messages_dropped: int = counter(
        "cachering_invalidation_messages",
        "Invalidation messages.",
        labels={"direction": "dropped"},
    )


def _control(name: str, help: str) -> Any:
    return counter(f"cachering_control_{name}", help)


@attrs.define
class ControlCounters:
    """What the control plane and the leader's duties count."""

    topology_commits: int = _control("topology_commits", "Topologies committed (leader).")
    topology_commit_failures: int = _control(
        "topology_commit_failures", "Topology commits without a majority."
    )
    topology_writes_refused: int = _control(
        "topology_writes_refused", "Topology writes a node refused."
    )
    topology_adopted: int = _control("topology_adopted", "Newer topologies adopted.")
    topology_unsigned: int = _control(
        "topology_unsigned", "Stored topologies refused for carrying no seal (with a secret)."
    )
    topology_forged: int = _control(
        "topology_forged", "Stored topologies refused for a seal that does not verify."
    )
    voter_mismatches: int = _control(
        "voter_mismatches", "Times the stored voter set differed from the configured one."
    )
    messages_sent: int = _control("messages_sent", "Control messages published.")
    messages_duplicate: int = _control("messages_duplicate", "Copies of one message ignored.")
    rereads: int = _control("rereads", "Topology rereads from the nodes.")
    subscriber_gaps: int = _control(
        "subscriber_gaps", "Reconnects of the control channel (messages may have been lost)."
    )
    repairs: int = _control("repairs", "Hint replays run for a returning node.")
    hints_replayed: int = _control("hints_replayed", "Keys copied back by hint replay.")
    stand_in_copies_dropped: int = _control(
        "stand_in_copies_dropped", "Copies outside their homes deleted."
    )
    keys_cleared: int = _control("keys_cleared", "Keys cleared on a node that came back.")
    keys_resynced: int = _control("keys_resynced", "Keys copied to a node by resync.")
    anti_entropy_sweeps: int = _control("anti_entropy_sweeps", "Anti-entropy sweeps finished.")
    anti_entropy_incomplete: int = _control(
        "anti_entropy_incomplete", "Anti-entropy sweeps cut short."
    )
    anti_entropy_repaired: int = _control("anti_entropy_repaired", "Keys repaired by sweeps.")


def _election(name: str, help: str) -> Any:
    return counter(f"cachering_election_{name}", help)


@attrs.define
class ElectionCounters:
    """What the election counts."""

    campaigns: int = _election("campaigns", "Campaigns started.")
    won: int = _election("won", "Campaigns won.")
    step_downs: int = _election("step_downs", "Times this manager stopped leading.")
    renewals: int = _election("renewals", "Leases renewed.")
    renewal_misses: int = _election("renewal_misses", "Lease renewals without a majority.")
    late_or_failed_replies: int = _election(
        "late_or_failed_replies", "Node replies missing from a round."
    )
    seeded: int = _election("seeded", "Nodes seeded with an epoch floor.")
    new_terms: int = _election("new_terms", "Newer terms seen.")
    campaigns_refused: int = _election(
        "campaigns_refused", "Campaigns not started: the configured voters differ from the stored."
    )
    bad_replies: int = _election("bad_replies", "Election replies from a node that did not fit.")
    epochs_refused: int = _election(
        "epochs_refused", "Epochs out of range refused (from a node or a message)."
    )
    epochs_exhausted: int = _election(
        "epochs_exhausted", "Campaigns not started because no epoch is left."
    )


@attrs.define
class MessageCounters:
    """Control messages accepted, and dropped by reason (with the last drop's reason and time)."""

    accepted: int = counter(
        "cachering_control_messages_accepted", "Control messages that passed every check."
    )
    dropped: dict[str, int] = counter_map(  # noqa: RUF009 - a field spec with a factory
        "cachering_control_messages_dropped", "Control messages dropped, by reason.", label="reason"
    )
    rejected_copies: int = counter(
        "cachering_control_messages_rejected_copies",
        "Copies of a rejected message delivered by further nodes (not counted as drops).",
    )
    last_reason: str | None = None
    last_at: float | None = None

    def record(self, reason: str, now: float | None = None) -> None:
        """Count one drop (``now`` is stored as the time of the last drop, if given)."""
        self.dropped[reason] += 1
        self.last_reason = reason
        if now is not None:
            self.last_at = now

    @property
    def total(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.dropped.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of the drop counts, one entry per reason."""
        return dict(self.dropped)


def snapshot_of(group: Any) -> Any:
    """A copy of a counter group (mappings copied too), safe to keep while counting goes on."""
    return attrs.evolve(group, **{f.name: dict(v) for f, v in _items(group) if isinstance(v, dict)})


def _items(obj: Any) -> Iterator[tuple[attrs.Attribute[Any], Any]]:
    for field in attrs.fields(type(obj)):
        yield field, getattr(obj, field.name)


# ------------------------------------------------------------------ snapshots


@attrs.frozen
class SyncMetrics:
    """The synchronizer: queue depth and its counters."""

    queue_depth: int = gauge(
        "cachering_replication_queue_depth", "Replica writes waiting or in flight."
    )
    counters: SyncCounters = attrs.field(factory=SyncCounters)


@attrs.frozen
class NearCacheMetrics:
    """The near cache: whether it is on, its size and its counters."""

    enabled: bool = gauge("cachering_near_cache_enabled", "1 if this manager has a near cache.")
    size: int = gauge("cachering_near_cache_entries", "Near-cache entries.")
    counters: NearCacheCounters = attrs.field(factory=NearCacheCounters)


@attrs.frozen
class ControlMetrics:
    """The control plane's counters, the election's, and a few sizes."""

    counters: ControlCounters
    election: ElectionCounters
    health_suspects: int = gauge(
        "cachering_health_suspects", "Nodes this manager's heartbeats fail on."
    )
    lagging: int = gauge("cachering_lagging_nodes", "Nodes with hints not replayed yet.")


@attrs.frozen
class Metrics:
    """What :meth:`Cluster.metrics() <cachering.cluster.Cluster.metrics>` returns."""

    calls: CallCounters
    sync: SyncMetrics
    near_cache: NearCacheMetrics
    control: ControlMetrics | None
    suspects: tuple[str, ...] = gauge(
        "cachering_suspect_nodes", "Nodes this manager routes around."
    )
    events_dropped: int = counter(
        "cachering_events_dropped", "Events subscribers lost (their buffer was full)."
    )

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dict: the call counters at the top level, then each part."""
        out = _plain(self.calls)
        out["suspects"] = list(self.suspects)
        out["events_dropped"] = self.events_dropped
        out["sync"] = {"queue_depth": self.sync.queue_depth, **_plain(self.sync.counters)}
        near = self.near_cache
        out["near_cache"] = {"enabled": near.enabled, "size": near.size, **_plain(near.counters)}
        control = self.control
        if control is None:
            out["control"] = {"enabled": False}
        else:
            out["control"] = {
                "enabled": True,
                **_plain(control.counters),
                **{f"election_{k}": v for k, v in _plain(control.election).items()},
                "health_suspects": control.health_suspects,
                "lagging": control.lagging,
            }
        return out


_PER_NODE = "cachering_node"  # not a family: the nodes' own fields are, labelled by node


@attrs.frozen
class NodeStatus:
    """One node as this manager sees it: topology state and weight, then health."""

    state: str = gauge(
        "cachering_node_state",
        "1 for the node's state in the topology, 0 for the others.",
        states=NODE_STATES,
    )
    weight: float = gauge("cachering_node_weight", "The node's weight on the ring.")
    healthy: bool = True
    suspect: bool = gauge(
        "cachering_node_suspect",
        "1 while this manager's heartbeats to the node fail.",
        default=False,
    )
    misses: int = 0
    latency_ms: float | None = gauge(
        "cachering_node_latency_seconds",
        "Round trip of the last heartbeat (NaN before the first answer).",
        scale=0.001,
        unknown=math.nan,
        default=None,
    )
    last_seen: float | None = None
    last_seen_ago: float | None = None
    last_error: str | None = None
    run_id: str | None = None
    restarts: int = counter("cachering_node_restarts", "Server restarts seen (run_id changes).")
    memory: int | None = None
    clients: int | None = None
    role: str | None = None
    garbled: bool = gauge(
        "cachering_node_garbled",
        "1 while the node's replies do not fit the protocol (its word about others ignored).",
        default=False,
    )
    bad_replies: int = counter(
        "cachering_node_bad_replies", "Replies from the node that did not fit what was asked."
    )


@attrs.frozen
class TopologyStamp:
    """Which topology is in force: its epoch, version and the leader that wrote it."""

    epoch: int = gauge("cachering_topology_epoch", "Epoch of the topology in use.")
    version: int = gauge("cachering_topology_version", "Version of the topology in use.")
    leader: str | None = None


@attrs.frozen
class Status:
    """What :meth:`Cluster.status() <cachering.cluster.Cluster.status>` returns.

    ``messages`` holds the control messages' counters; ``signing`` the signing mode and
    key ids; ``election`` the leader, epoch, voters and majority.
    """

    manager: str
    leader: str | None
    control_plane: bool
    topology: TopologyStamp
    nodes: Mapping[str, NodeStatus] = gauge(_PER_NODE, "Per node.", label="node")
    is_leader: bool = gauge("cachering_is_leader", "1 if this manager is the leader.")
    epoch: int = gauge("cachering_epoch", "Highest election epoch this manager has seen.")
    secret_configured: bool = gauge("cachering_secret_configured", "1 if messages are signed.")
    messages: MessageCounters = attrs.field(factory=MessageCounters)
    signing: Mapping[str, Any] = attrs.field(factory=dict)
    election: Mapping[str, Any] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    """Why this manager does not take part (e.g. its configured voters differ)."""
    events_published: int = counter("cachering_events_published", "Cluster events published.")

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (``messages``: signing mode, accepted, dropped by reason)."""
        messages = {
            **self.signing,
            "accepted": self.messages.accepted,
            "dropped": dict(self.messages.dropped),
            "rejected_copies": self.messages.rejected_copies,
        }
        return {
            "manager": self.manager,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "epoch": self.epoch,
            "control_plane": self.control_plane,
            "topology": attrs.asdict(self.topology),
            "nodes": {k: attrs.asdict(v) for k, v in self.nodes.items()},
            "messages": messages,
            "messages_dropped": dict(self.messages.dropped),
            "secret_configured": self.secret_configured,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "election": dict(self.election),
            "events_published": self.events_published,
        }


def _plain(group: Any) -> dict[str, Any]:
    return {f.name: dict(v) if isinstance(v, dict) else v for f, v in _items(group)}


# ------------------------------------------------------------------ samples


@attrs.frozen
class Sample:
    """One value of one metric, with its labels (``name`` as exposed, with ``_total``)."""

    name: str
    kind: Kind
    help: str
    labels: Mapping[str, str]
    value: float


def _walk(obj: Any, labels: Mapping[str, str]) -> Iterator[Sample]:
    for field, value in _items(obj):
        spec = _spec(field)
        if attrs.has(type(value)):
            yield from _walk(value, labels)
        elif spec is None:
            continue
        elif spec.label is not None and isinstance(value, Mapping):
            for key, item in value.items():
                inner = {**labels, **spec.labels, spec.label: str(key)}
                if attrs.has(type(item)):
                    yield from _walk(item, inner)
                else:
                    yield from _one(spec, item, inner)
        else:
            yield from _one(spec, value, {**labels, **spec.labels})


def _one(spec: MetricSpec, value: object, labels: dict[str, str]) -> Iterator[Sample]:
    if spec.states:
        for state in spec.states:
            one = {**labels, "state": state}
            yield Sample(spec.exposed, spec.kind, spec.help, one, float(value == state))
        return
    number = _number(value)
    if number is not None:
        yield Sample(spec.exposed, spec.kind, spec.help, labels, number * spec.scale)
    elif value is None and spec.unknown is not None:
        yield Sample(spec.exposed, spec.kind, spec.help, labels, spec.unknown)


def samples(*snapshots: Metrics | Status) -> list[Sample]:
    """Every declared field of the snapshots as metric samples.

    Counter groups and nested parts are walked through; a field without a declaration
    (an id, a flag for JSON readers) is not exported; a ``None`` value gives the
    field's ``unknown`` value, or no sample.
    """
    out: list[Sample] = []
    for snapshot in snapshots:
        out.extend(_walk(snapshot, {}))
    return out


def families() -> dict[str, MetricSpec]:
    """Every metric family the table declares, by exposed name (``_total`` included)."""
    out: dict[str, MetricSpec] = {}
    tables = [v for v in globals().values() if isinstance(v, type) and attrs.has(v)]
    for cls in tables:  # every counter group and snapshot class of this module
        for field in attrs.fields(cls):
            spec = _spec(field)
            if spec is not None and spec.name != _PER_NODE:
                out.setdefault(spec.exposed, spec)
    return out
