"""Cluster configuration: one frozen, validated value that every part of cachering reads.

>>> from cachering import NodeSpec
>>> cfg = ClusterConfig(nodes=[NodeSpec("a", "127.0.0.1", 7000), NodeSpec("b", "127.0.0.1", 7001)])
>>> cfg.replicas, cfg.copies
(2, 2)
>>> cfg.evolve(replicas=3).copies  # capped at the node count
2

Every field is checked at construction; a bad value raises :class:`ValueError` (or
:class:`~cachering.errors.ConfigError`, a ``ValueError``, when read from a file) whose
message names the field. Durations are seconds (int or float).
"""

from __future__ import annotations

import math
import os
import re
import ssl
import sys
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any, Literal

import attrs

from .errors import ConfigError
from .messages import key_id_problem
from .node import NodeSpec, tls_context
from .validators import (
    MAX_RING_POINTS,
    Validator,
    bounded_int,
    matching,
    of_type,
    one_of,
    seconds,
)

__all__ = ["MAX_VALUE_SIZE_LIMIT", "ClusterConfig", "Consistency"]

Consistency = Literal["one", "quorum", "all"]
"""How many copies a write waits for: the primary only, a majority of copies, or all."""

#: Redis refuses bulk strings over 512 MiB; the stored header takes a few bytes of that.
MAX_VALUE_SIZE_LIMIT = 512 * 1024 * 1024 - 64

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)*$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _fail(field: str, problem: str) -> ValueError:
    return ValueError(f"ClusterConfig.{field} {problem}")


# The field checks (messages "ClusterConfig.<field> ..."; from_file reads the field back).
_OWNER = "ClusterConfig"


def _int_at_least(low: int, high: int | None = None) -> Validator:
    return bounded_int(_OWNER, low, high)


def _seconds(low: float, *, inclusive: bool = False, optional: bool = False) -> Validator:
    return seconds(_OWNER, low, inclusive=inclusive, optional=optional)


def _choice(*allowed: str) -> Validator:
    return one_of(_OWNER, allowed, ", ".join(map(repr, allowed)))


def _to_nodes(value: object) -> object:
    if isinstance(value, (str, bytes, NodeSpec)) or not isinstance(value, Iterable):
        return value  # the validator explains what is wrong
    return tuple(value)


def _check_nodes(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise _fail("nodes", f"must be a sequence of NodeSpec, got {type(value).__name__}")
    if not value:
        raise _fail("nodes", "must name at least one node")
    seen: set[str] = set()
    for node in value:
        if not isinstance(node, NodeSpec):
            raise _fail("nodes", f"must hold NodeSpec objects, got {type(node).__name__}")
        if node.id in seen:
            raise _fail("nodes", f"has two nodes with id {node.id!r}")
        seen.add(node.id)


_check_namespace = matching(
    _OWNER,
    _NAME_RE,
    "1-64 chars of letters, digits, '_', '.', '-', with ':' only between parts",
    max_len=64,
)


def _to_secret(value: object) -> object:
    """Accept bytes (one key, id ``"0"``), a mapping id -> key, or (id, key) pairs."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (("0", bytes(value)),)
    if isinstance(value, str):
        return (("0", value.encode()),)
    if isinstance(value, Mapping):
        value = list(value.items())
    if isinstance(value, Iterable):
        out: list[object] = []
        for item in value:
            if isinstance(item, (tuple, list)) and len(item) == 2:
                key_id, key = item
                if isinstance(key, str):
                    key = key.encode()
                elif isinstance(key, (bytearray, memoryview)):
                    key = bytes(key)
                out.append((key_id, key))
            else:
                out.append(item)
        return tuple(out)
    return value


def _check_secret(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or not value:
        raise _fail("secret", "must be bytes, a mapping key_id -> bytes, or (key_id, bytes) pairs")
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, tuple) or len(item) != 2:
            raise _fail("secret", f"entries must be (key_id, bytes) pairs, got {item!r}")
        key_id, key = item
        problem = key_id_problem(key_id)
        if problem is not None:
            raise _fail("secret", f"key id {problem}")
        if key_id in seen:
            raise _fail("secret", f"key id {key_id!r} appears twice")
        seen.add(key_id)
        if not isinstance(key, bytes) or len(key) < 16:
            raise _fail("secret", f"key {key_id!r} must be at least 16 bytes")


_check_manager_id = attrs.validators.optional(
    matching(_OWNER, _ID_RE, "None or 1-64 chars [A-Za-z0-9_.:-]")
)
_check_node_defaults = of_type(_OWNER, NodeSpec, "a NodeSpec", optional=True)
_check_flag = of_type(_OWNER, bool, "a bool")
_check_bool = of_type(_OWNER, bool, "a bool", optional=True)


@attrs.frozen
class ClusterConfig:
    """Everything a :class:`~cachering.cluster.Cluster` needs to know, validated at construction.

    Data path
        ``nodes``: the cache servers (``NodeSpec``), unique ids, at least one; also the
        voter set for elections. ``replicas``: copies of each key (default 2); more than
        the node count is allowed and silently capped (see :attr:`copies`), so a config
        can be shared by a 1-node dev setup and a 5-node fleet. ``vnodes``, ``hash``,
        ``seed``: ring parameters (see :class:`~cachering.ring.Ring`). ``consistency``:
        default write level, ``"one"`` (primary synchronously, replicas batched in the
        background), ``"quorum"`` (``copies // 2 + 1`` acknowledgements from home copies;
        a stand-in's does not count) or ``"all"`` (every home copy).
        ``read_consistency``: default read level, ``"one"`` (the first readable home copy
        that answers), ``"quorum"`` (a majority of home copies, newest version wins, stale
        copies repaired) or ``"all"`` (every home copy). ``stale_reads_in_partition``:
        keep serving ``one`` reads from nodes this manager cannot confirm with a majority
        of the nodes for longer than the election timeout (default False: such nodes
        serve no ``one`` reads until confirmed again).
        ``namespace``: prefix of every Redis key the cluster stores (data under
        ``{namespace}:k:``, internal keys under ``{namespace}:``).
        ``connect_timeout``/``timeout``: seconds per connection attempt / per command.
        ``pool_size``: connections per node. ``max_value_size``: largest value in bytes.
        ``node_backoff``: seconds a node that just failed is routed around locally.

    Synchronization
        ``sync_batch_size``: replica writes per script call. ``sync_flush_interval``:
        longest wait before a partial batch is sent. ``sync_queue_size``: most replica
        writes held in memory; ``submit`` waits (backpressure) beyond it.
        ``sync_inline``: ``set_many`` at level ``one`` writes a replica copy in the
        script call that its node gets anyway for the keys it is primary for (one round
        trip per node, replicas current when the call returns; the call waits for no
        other node than without it); False sends every replica write through the
        synchronizer, so ``set_many`` returns once the primary copies are written.
        ``sync_shutdown_timeout``: how long ``Cluster`` exit waits to flush pending
        batches. ``tombstone_ttl``: how long a delete is remembered so that a late, older
        replica write cannot bring the key back. ``hint_limit``: most keys recorded for
        one missed node before its hint set is marked overflowed.
        ``publish_invalidations``: publish written keys on ``{namespace}:inval`` for
        the near caches of other processes; None (default) = only when this process
        has a near cache itself (see :attr:`publishes_invalidations`).

    Near cache
        ``near_cache_size``: entries kept in process (0 = off). ``near_cache_ttl``:
        longest an entry is served from memory (also bounded by the key's own TTL).

    Failover (used by the health, election and topology services)
        ``heartbeat_interval`` (>= 0.01 s), ``failure_threshold`` (missed heartbeats
        before a node is suspect), ``election_timeout`` (None: derived, see
        :attr:`effective_election_timeout`), ``secret`` (keyring signing control
        messages: bytes, ``{key_id: bytes}`` or ``(key_id, bytes)`` pairs, first entry
        signs, all verify; None = unsigned), ``manager_id`` (None: random per Cluster),
        ``topology_refresh_interval``, ``max_message_size`` (bytes, 1 KiB..4 MiB), ``down_quorum``
        (managers that must report a node before the leader marks it down),
        ``control_plane`` (run health monitoring, election, topology and repair in the
        cluster; on by default, off only for a client that must not take part),
        ``anti_entropy_interval`` (seconds between the leader's anti-entropy sweeps, which
        push the newest copy of every key to its home copies that are behind; 0 = off).
        ``node_defaults``: a ``NodeSpec`` whose ``username``, ``password``, ``db`` and
        ``tls`` are used for nodes the topology names that ``nodes`` does not list
        (added by another manager); see :meth:`learned_node`.
    """

    nodes: tuple[NodeSpec, ...] = attrs.field(converter=_to_nodes, validator=_check_nodes)
    replicas: int = attrs.field(default=2, kw_only=True, validator=_int_at_least(1))
    vnodes: int = attrs.field(default=160, kw_only=True, validator=_int_at_least(1, 100_000))
    hash: str = attrs.field(default="murmur3", kw_only=True, validator=_choice("murmur3", "ketama"))
    seed: int = attrs.field(default=0, kw_only=True, validator=_int_at_least(0, 2**32 - 1))
    consistency: Consistency = attrs.field(
        default="one", kw_only=True, validator=_choice("one", "quorum", "all")
    )
    read_consistency: Consistency = attrs.field(
        default="one", kw_only=True, validator=_choice("one", "quorum", "all")
    )
    stale_reads_in_partition: bool = attrs.field(default=False, kw_only=True, validator=_check_flag)
    namespace: str = attrs.field(default="cachering", kw_only=True, validator=_check_namespace)
    connect_timeout: float = attrs.field(default=1.0, kw_only=True, validator=_seconds(0))
    timeout: float = attrs.field(default=1.0, kw_only=True, validator=_seconds(0))
    pool_size: int = attrs.field(default=10, kw_only=True, validator=_int_at_least(1, 10_000))
    max_value_size: int = attrs.field(
        default=64 * 1024 * 1024,
        kw_only=True,
        validator=_int_at_least(1, MAX_VALUE_SIZE_LIMIT),
    )
    node_backoff: float = attrs.field(
        default=1.0, kw_only=True, validator=_seconds(0, inclusive=True)
    )
    sync_batch_size: int = attrs.field(
        default=512, kw_only=True, validator=_int_at_least(1, 100_000)
    )
    sync_flush_interval: float = attrs.field(default=0.005, kw_only=True, validator=_seconds(0))
    sync_queue_size: int = attrs.field(default=100_000, kw_only=True, validator=_int_at_least(1))
    sync_inline: bool = attrs.field(default=True, kw_only=True, validator=_check_flag)
    sync_shutdown_timeout: float = attrs.field(
        default=5.0, kw_only=True, validator=_seconds(0, inclusive=True)
    )
    tombstone_ttl: float = attrs.field(default=60.0, kw_only=True, validator=_seconds(0))
    hint_limit: int = attrs.field(default=100_000, kw_only=True, validator=_int_at_least(1))
    publish_invalidations: bool | None = attrs.field(
        default=None, kw_only=True, validator=_check_bool
    )
    near_cache_size: int = attrs.field(default=0, kw_only=True, validator=_int_at_least(0))
    near_cache_ttl: float = attrs.field(default=30.0, kw_only=True, validator=_seconds(0))
    heartbeat_interval: float = attrs.field(
        default=5.0, kw_only=True, validator=_seconds(0.01, inclusive=True)
    )
    failure_threshold: int = attrs.field(default=3, kw_only=True, validator=_int_at_least(1, 1000))
    election_timeout: float | None = attrs.field(
        default=None, kw_only=True, validator=_seconds(0, optional=True)
    )
    secret: tuple[tuple[str, bytes], ...] | None = attrs.field(
        default=None, kw_only=True, converter=_to_secret, validator=_check_secret, repr=False
    )
    manager_id: str | None = attrs.field(default=None, kw_only=True, validator=_check_manager_id)
    topology_refresh_interval: float = attrs.field(
        default=30.0, kw_only=True, validator=_seconds(0)
    )
    # At most 4 MiB: Redis disconnects a subscriber whose pending pub/sub output passes
    # 32 MB at once or 8 MB for a minute (client-output-buffer-limit pubsub).
    max_message_size: int = attrs.field(
        default=65536, kw_only=True, validator=_int_at_least(1024, 4 * 1024 * 1024)
    )
    down_quorum: int = attrs.field(default=1, kw_only=True, validator=_int_at_least(1))
    control_plane: bool = attrs.field(default=True, kw_only=True, validator=_check_flag)
    anti_entropy_interval: float = attrs.field(
        default=300.0, kw_only=True, validator=_seconds(0, inclusive=True)
    )
    node_defaults: NodeSpec | None = attrs.field(
        default=None, kw_only=True, validator=_check_node_defaults
    )

    def __attrs_post_init__(self) -> None:
        self._check_ring()
        if self.sync_queue_size < self.sync_batch_size:
            raise _fail(
                "sync_queue_size",
                f"({self.sync_queue_size}) must be >= sync_batch_size ({self.sync_batch_size})",
            )
        if self.election_timeout is not None and self.election_timeout <= self.heartbeat_interval:
            raise _fail(
                "election_timeout",
                f"({self.election_timeout}) must exceed heartbeat_interval "
                f"({self.heartbeat_interval})",
            )

    def _check_ring(self) -> None:
        """The ring options the ring itself would refuse, named here by field."""
        if self.hash == "ketama":
            if self.vnodes % 4:
                raise _fail(
                    "vnodes", f"must be a multiple of 4 with hash='ketama', got {self.vnodes}"
                )
            if self.seed:
                raise _fail("seed", f"must be 0 with hash='ketama' (no seed), got {self.seed}")
        weights = [node.weight for node in self.nodes]
        if self.hash == "murmur3":
            points = sum(max(1, round(self.vnodes * w)) for w in weights)
        else:  # the ring's count: floor of each node's share of vnodes/4 x nodes digests
            exact = [Fraction(w) for w in weights]
            scale = Fraction(self.vnodes // 4 * len(exact)) / sum(exact)
            points = 4 * sum(math.floor(scale * w) for w in exact)
        if points > MAX_RING_POINTS:
            raise _fail(
                "vnodes",
                f"({self.vnodes}) with these {len(weights)} nodes and weights needs {points} "
                f"ring points, more than the ring's limit of {MAX_RING_POINTS}",
            )

    def learned_node(self, node_id: str, host: str, port: int, weight: float = 1) -> NodeSpec:
        """The connection spec of a node learned from the topology that ``nodes`` lacks.

        Credentials, db and TLS come from ``node_defaults`` when set; else from the
        configured nodes when they all have the same username, password, db and TLS on
        or off (the TLS context of the first); else the node gets none of them, so one
        node's credentials are never sent to another. A configured node with the same
        id is used as configured and does not come here.
        """
        base = self.node_defaults
        if base is None:
            shared = {(n.username, n.password, n.db, n.tls is not None) for n in self.nodes}
            base = self.nodes[0] if len(shared) == 1 else None
        if base is None:
            return NodeSpec(node_id, host, port, weight=weight)
        return attrs.evolve(base, id=node_id, host=host, port=port, weight=weight)

    @property
    def copies(self) -> int:
        """Copies actually kept of each key: ``replicas`` capped at the node count."""
        return min(self.replicas, len(self.nodes))

    @property
    def publishes_invalidations(self) -> bool:
        """Whether writes are announced for near caches.

        ``publish_invalidations``, or when unset whether this process has a near cache.
        Processes without a near cache that share a namespace with processes that have
        one must set ``publish_invalidations=True``, or those near caches only learn of
        their writes through ``near_cache_ttl``.
        """
        if self.publish_invalidations is not None:
            return self.publish_invalidations
        return self.near_cache_size > 0

    @property
    def effective_election_timeout(self) -> float:
        """``election_timeout``, or when unset ``2 * heartbeat_interval * failure_threshold``."""
        if self.election_timeout is not None:
            return self.election_timeout
        return 2.0 * self.heartbeat_interval * self.failure_threshold

    def evolve(self, **changes: Any) -> ClusterConfig:
        """A copy with some fields changed, validated like a new config."""
        return attrs.evolve(self, **changes)

    @classmethod
    def from_urls(cls, urls: Iterable[str], **options: Any) -> ClusterConfig:
        """Build a config from ``redis://`` node URLs plus keyword options.

        >>> ClusterConfig.from_urls(["redis://127.0.0.1:7000?id=a"], replicas=1).nodes[0].id
        'a'
        """
        if isinstance(urls, (str, bytes)):
            raise TypeError("urls must be a sequence of URL strings, not a single string")
        return cls(nodes=tuple(NodeSpec.from_url(u) for u in urls), **options)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClusterConfig:
        """Read a TOML file: top-level keys (or a ``[cachering]`` table) named like the fields.

        ``nodes`` is a list of URL strings (see :meth:`NodeSpec.from_url`: TLS files as
        ``ssl_*`` query parameters, ``unix://`` sockets) or of tables with ``id``,
        ``host``, ``port`` and optionally ``weight``, ``username``, ``password``, ``db``,
        ``tls``: true for a default verifying context, or a table with ``ca_certs``,
        ``ca_path``, ``certfile``, ``keyfile``, ``cert_reqs``, ``check_hostname`` (see
        :func:`~cachering.node.tls_context`) and ``server_name``. ``secret`` is a table
        ``{key_id = "key"}``.
        Every problem raises :class:`~cachering.errors.ConfigError` naming the file and key.
        """
        name = os.fspath(path)
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on 3.10 only
            try:
                import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
            except ImportError:
                raise ConfigError(f"{name}: reading TOML on Python 3.10 needs 'tomli'") from None
        try:
            with open(name, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name}: not valid TOML: {exc}") from None
        table = data.get("cachering", data)
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: key 'cachering' must be a table")
        return cls._from_mapping(table, name)

    @classmethod
    def _from_mapping(cls, table: Mapping[str, Any], source: str) -> ClusterConfig:
        fields = {f.name for f in attrs.fields(cls)}
        for key in table:
            if key not in fields:
                raise ConfigError(f"{source}: key {key!r}: unknown setting")
        if "nodes" not in table:
            raise ConfigError(f"{source}: key 'nodes': missing (list of node URLs or tables)")
        raw_nodes = table["nodes"]
        if not isinstance(raw_nodes, list):
            raise ConfigError(f"{source}: key 'nodes': must be a list")
        nodes = []
        for i, raw in enumerate(raw_nodes):
            try:
                nodes.append(_node_from_toml(raw))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: key 'nodes[{i}]': {exc}") from None
        options = {k: v for k, v in table.items() if k != "nodes"}
        if "node_defaults" in options:
            try:
                options["node_defaults"] = _defaults_from_toml(options["node_defaults"])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: key 'node_defaults': {exc}") from None
        try:
            return cls(nodes=tuple(nodes), **options)
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            match = re.match(r"ClusterConfig\.(\w+) (.*)", msg, re.S)
            if match:
                raise ConfigError(f"{source}: key {match[1]!r}: {match[2]}") from None
            raise ConfigError(f"{source}: {msg}") from None


def _node_from_toml(raw: object) -> NodeSpec:
    if isinstance(raw, str):
        return NodeSpec.from_url(raw)
    if not isinstance(raw, dict):
        raise TypeError(f"must be a URL string or a table, got {type(raw).__name__}")
    allowed = {"id", "host", "port", "weight", "username", "password", "db", "tls"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown node field {unknown[0]!r}")
    for required in ("id", "host", "port"):
        if required not in raw:
            raise ValueError(f"missing node field {required!r}")
    tls, server_name = _tls_from_toml(raw.get("tls", False))
    return NodeSpec(
        raw["id"],
        raw["host"],
        raw["port"],
        weight=raw.get("weight", 1),
        username=raw.get("username"),
        password=raw.get("password"),
        db=raw.get("db", 0),
        tls=tls,
        tls_server_name=server_name,
    )


_TLS_FIELDS = {"ca_certs", "ca_path", "certfile", "keyfile", "cert_reqs", "check_hostname"}


def _tls_from_toml(tls: object) -> tuple[ssl.SSLContext | None, str | None]:
    """A node's ``tls``: true/false, or a table of TLS options (and ``server_name``)."""
    if isinstance(tls, bool):
        return (ssl.create_default_context() if tls else None), None
    if not isinstance(tls, dict):
        raise ValueError("node field 'tls' must be true, false or a table of TLS options")
    unknown = sorted(set(tls) - _TLS_FIELDS - {"server_name"})
    if unknown:
        raise ValueError(f"unknown tls field {unknown[0]!r}")
    options = {k: v for k, v in tls.items() if k != "server_name"}
    for key, value in options.items():
        wanted = bool if key == "check_hostname" else str
        if not isinstance(value, wanted):
            raise ValueError(f"tls field {key!r} must be a {wanted.__name__}")
    server_name = tls.get("server_name")
    if server_name is not None and not isinstance(server_name, str):
        raise ValueError("tls field 'server_name' must be a str")
    return tls_context(**options, where="node field 'tls'"), server_name


def _defaults_from_toml(raw: object) -> NodeSpec:
    """A ``[cachering.node_defaults]`` table: username, password, db, tls."""
    if not isinstance(raw, dict):
        raise TypeError(f"must be a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"username", "password", "db", "tls"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (username, password, db, tls)")
    return _node_from_toml({**raw, "id": "node_defaults", "host": "-", "port": 1})
