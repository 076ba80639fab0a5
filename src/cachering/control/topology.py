"""Immutable topology snapshots: which nodes exist, their state and weight, and its stamp.

A :class:`Topology` is ordered by its stamp ``(epoch, version)``: the epoch of the leader
that wrote it, then a counter that every change raises. Only the leader of an epoch
writes topologies in it, so two different topologies never share a stamp.

Node states and what they serve:

=============  =========  ==========  ======================================================
state          reads      writes      meaning
=============  =========  ==========  ======================================================
``up``         yes        yes         healthy and complete
``recovering`` no         yes         back after a failure; hints are being replayed
``joining``    no         yes         new; filling up before it serves reads
``down``       no         no          failed; its share goes to the next nodes with hints
=============  =========  ==========  ======================================================

Every node of a topology stays on the ring whatever its state (so its keys do not move
while it is away); the cluster skips the nodes that cannot serve a request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal, Protocol, get_args

import attrs

from ..validators import (
    int_in,
    int_to_float,
    is_int,
    non_empty_str,
    one_of,
    optional_non_empty_str,
    positive_number,
    tcp_port,
)

__all__ = [
    "MAX_STAMP",
    "NODE_STATES",
    "NodeState",
    "Topology",
    "TopologyNode",
]

NodeState = Literal["up", "down", "recovering", "joining"]
"""The state of one node in a topology."""

NODE_STATES: Final[tuple[str, ...]] = get_args(NodeState)
"""Every node state."""

MAX_STAMP: Final = 2**53 - 1
"""Largest epoch or version: stamps are compared inside Lua, whose numbers are doubles."""

_FORMAT: Final = 1
_READABLE: Final = frozenset({"up"})
_WRITABLE: Final = frozenset({"up", "recovering", "joining"})


class _NodeLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def weight(self) -> float: ...


@attrs.frozen
class TopologyNode:
    """One node as the topology sees it: address, weight and state.

    >>> TopologyNode("a", "127.0.0.1", 7000)
    TopologyNode(id='a', host='127.0.0.1', port=7000, weight=1.0, state='up')
    """

    id: str = attrs.field(validator=non_empty_str("TopologyNode"))
    host: str = attrs.field(validator=non_empty_str("TopologyNode"))
    port: int = attrs.field(validator=tcp_port("TopologyNode"))
    # Ints become floats, so a weight is always a float here (a bool stays and fails).
    weight: float = attrs.field(
        default=1.0, converter=int_to_float, validator=positive_number("TopologyNode")
    )
    state: NodeState = attrs.field(default="up", validator=one_of("TopologyNode", NODE_STATES))

    @classmethod
    def from_spec(cls, spec: _NodeLike, state: NodeState = "up") -> TopologyNode:
        """The topology entry for a configured node (anything with id/host/port/weight)."""
        return cls(spec.id, spec.host, spec.port, spec.weight, state)

    @property
    def readable(self) -> bool:
        """Whether reads may be served from this node."""
        return self.state in _READABLE

    @property
    def writable(self) -> bool:
        """Whether this node receives writes."""
        return self.state in _WRITABLE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible form."""
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "weight": self.weight,
            "state": self.state,
        }


def _to_nodes(value: Any) -> Any:
    # Canonical order, so equal node sets give equal topologies and equal bytes.
    if isinstance(value, (list, tuple)) and all(isinstance(n, TopologyNode) for n in value):
        return tuple(sorted(value, key=lambda n: n.id))
    return value


def _check_nodes(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(n, TopologyNode) for n in value):
        raise ValueError("Topology.nodes must be a sequence of TopologyNode")
    ids = [n.id for n in value]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"Topology.nodes has duplicate ids: {dupes}")


@attrs.frozen
class Topology:
    """One immutable snapshot of the cluster's membership, stamped ``(epoch, version)``.

    ``leader`` is the id of the manager that wrote it (None for the initial snapshot).
    Nodes are kept sorted by id. Each ``with_*`` method returns a new snapshot with
    ``version + 1`` and the given epoch (which may not be lower than the current one).

    >>> from cachering.node import NodeSpec
    >>> t = Topology.initial([NodeSpec("a", "127.0.0.1", 7000), NodeSpec("b", "127.0.0.1", 7001)])
    >>> t2 = t.with_state("b", "down", epoch=1, leader="mgr-1")
    >>> t2.stamp, t2.readable_ids, t2.newer_than(t)
    ((1, 1), ('a',), True)
    """

    epoch: int = attrs.field(validator=int_in("Topology", 0, MAX_STAMP))
    version: int = attrs.field(validator=int_in("Topology", 0, MAX_STAMP))
    nodes: tuple[TopologyNode, ...] = attrs.field(converter=_to_nodes, validator=_check_nodes)
    leader: str | None = attrs.field(default=None, validator=optional_non_empty_str("Topology"))

    @classmethod
    def initial(cls, nodes: Iterable[_NodeLike]) -> Topology:
        """Epoch 0, version 0, every configured node up, no leader."""
        return cls(0, 0, tuple(TopologyNode.from_spec(n) for n in nodes))

    @property
    def stamp(self) -> tuple[int, int]:
        """``(epoch, version)``: the order of snapshots."""
        return (self.epoch, self.version)

    def newer_than(self, other: Topology | None) -> bool:
        """Whether this snapshot supersedes ``other`` (always True against None)."""
        return other is None or self.stamp > other.stamp

    @property
    def ids(self) -> tuple[str, ...]:
        """Every node id, sorted."""
        return tuple(n.id for n in self.nodes)

    @property
    def readable_ids(self) -> tuple[str, ...]:
        """Nodes that serve reads (state ``up``)."""
        return tuple(n.id for n in self.nodes if n.readable)

    @property
    def writable_ids(self) -> tuple[str, ...]:
        """Nodes that receive writes (``up``, ``recovering`` and ``joining``)."""
        return tuple(n.id for n in self.nodes if n.writable)

    @property
    def routable(self) -> tuple[TopologyNode, ...]:
        """Nodes that serve both reads and writes (state ``up``)."""
        return tuple(n for n in self.nodes if n.readable and n.writable)

    def node(self, node_id: str) -> TopologyNode:
        """The node with this id; KeyError if there is none."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in topology {self.stamp}")

    def __contains__(self, node_id: object) -> bool:
        return any(n.id == node_id for n in self.nodes)

    def _next(self, nodes: Sequence[TopologyNode], epoch: int, leader: str | None) -> Topology:
        if not is_int(epoch) or epoch < self.epoch:
            raise ValueError(f"epoch must be an int >= the current epoch {self.epoch}, got {epoch}")
        return Topology(
            epoch, self.version + 1, tuple(nodes), leader if leader is not None else self.leader
        )

    def with_state(
        self, node_id: str, state: NodeState, *, epoch: int, leader: str | None = None
    ) -> Topology:
        """A copy with one node's state changed."""
        self.node(node_id)
        return self._next(
            [attrs.evolve(n, state=state) if n.id == node_id else n for n in self.nodes],
            epoch,
            leader,
        )

    def with_weight(
        self, node_id: str, weight: float, *, epoch: int, leader: str | None = None
    ) -> Topology:
        """A copy with one node's weight changed."""
        self.node(node_id)
        return self._next(
            [attrs.evolve(n, weight=weight) if n.id == node_id else n for n in self.nodes],
            epoch,
            leader,
        )

    def with_node(self, node: TopologyNode, *, epoch: int, leader: str | None = None) -> Topology:
        """A copy with one more node (usually in state ``joining``); ValueError if known."""
        if not isinstance(node, TopologyNode):
            raise TypeError(f"with_node() needs a TopologyNode, got {type(node).__name__}")
        if node.id in self:
            raise ValueError(f"node {node.id!r} is already in the topology")
        return self._next([*self.nodes, node], epoch, leader)

    def without_node(self, node_id: str, *, epoch: int, leader: str | None = None) -> Topology:
        """A copy without this node; KeyError if it is not there."""
        self.node(node_id)
        return self._next([n for n in self.nodes if n.id != node_id], epoch, leader)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible form (what :meth:`to_bytes` encodes)."""
        return {
            "format": _FORMAT,
            "epoch": self.epoch,
            "version": self.version,
            "leader": self.leader,
            "nodes": [n.to_dict() for n in self.nodes],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, ASCII, compact; equal topologies give equal bytes."""
        return json.dumps(
            self.to_dict(), sort_keys=True, ensure_ascii=True, separators=(",", ":")
        ).encode("ascii")

    @classmethod
    def from_dict(cls, data: object) -> Topology:
        """Rebuild from :meth:`to_dict` output; ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"topology must be a JSON object, got {type(data).__name__}")
        expected = {"format", "epoch", "version", "leader", "nodes"}
        if data.keys() != expected:
            raise ValueError(f"topology fields must be {sorted(expected)}, got {sorted(data)}")
        if data["format"] != _FORMAT or not is_int(data["format"]):
            raise ValueError(f"unsupported topology format {data['format']!r}")
        raw_nodes = data["nodes"]
        if not isinstance(raw_nodes, list):
            raise ValueError("topology nodes must be a list")
        node_fields = {"id", "host", "port", "weight", "state"}
        nodes = []
        for raw in raw_nodes:
            if not isinstance(raw, dict) or raw.keys() != node_fields:
                raise ValueError(f"topology node must be an object with {sorted(node_fields)}")
            if isinstance(raw["weight"], bool):
                raise ValueError("TopologyNode.weight must be a number, got a bool")
            try:
                nodes.append(TopologyNode(**raw))
            except TypeError as exc:  # unhashable state values and the like
                raise ValueError(f"bad topology node: {exc}") from None
        return cls(data["epoch"], data["version"], tuple(nodes), data["leader"])

    @classmethod
    def from_bytes(cls, data: bytes) -> Topology:
        """Parse :meth:`to_bytes` output; ValueError on anything malformed."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes() needs bytes, got {type(data).__name__}")
        try:
            raw = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"topology is not valid JSON: {exc}") from None
        return cls.from_dict(raw)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a topology")
