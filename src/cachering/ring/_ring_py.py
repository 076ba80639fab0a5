"""Pure-Python consistent-hash ring: the reference implementation.

The compiled twin (``_ring_c``) gives identical answers; it reuses this module's
validation helpers so that both raise the same errors with the same messages.

Placement rules (shared by both twins):

* ``murmur3``: node ``name`` gets ``max(1, round(vnodes * weight))`` points, point ``i``
  being ``murmur3_32(f"{name}-{i}", seed)``; a key hashes to ``murmur3_32(key, seed)``.
* ``ketama``: libketama/uhashring placement. A node gets
  ``floor((vnodes / 4) * N * weight / sum(weights))`` md5 digests (exact rational
  arithmetic, so integer weights match uhashring bit for bit), digest ``d`` being
  ``md5(f"{name}-{d}")`` read as four little-endian uint32 points; a key hashes to the
  little-endian uint32 of ``md5(key)[0:4]``. A node may get no points at all (tiny weight).
* A key belongs to the first point strictly greater than its hash, wrapping to index 0.
* Equal points are all kept. In ``murmur3`` mode the node whose name sorts first (UTF-8
  byte order) wins a tie; in ``ketama`` mode the node whose name sorts last wins, which
  is what uhashring does for nodes given in sorted order (its last writer wins).
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from ..errors import EmptyRingError
from ..validators import MAX_RING_POINTS, is_number

__all__ = ["HASH_MODES", "MAX_NODES", "MAX_POINTS", "Ring", "murmur3_32"]

Key = str | bytes | bytearray | memoryview
Weight = int | float

HASH_MODES = ("murmur3", "ketama")
#: Owner indices are stored as uint16 in the compiled ring (6 bytes per point).
MAX_NODES = 65535
#: A guard against weights or vnodes that would need gigabytes of points (the limit
#: ``ClusterConfig`` checks too).
MAX_POINTS = MAX_RING_POINTS

_M32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_REPR_NODES = 8


def _check_seed(seed: object) -> int:
    if type(seed) is not int or not 0 <= seed <= _M32:
        raise ValueError(f"seed: expected an int in 0..2**32-1, got {seed!r}")
    return seed


def _data_bytes(data: object, what: str) -> bytes:
    """UTF-8 bytes of a str, or the bytes of any bytes-like object."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes):
        return data
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be str or bytes-like, not {type(data).__name__}") from None
    with view:
        return view.tobytes()


def _murmur3(data: bytes, seed: int) -> int:
    h = seed
    tail_start = len(data) & ~3
    for (k,) in struct.iter_unpack("<I", memoryview(data)[:tail_start]):
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        h ^= (k * _C2) & _M32
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    tail = data[tail_start:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        h ^= (k * _C2) & _M32
    h ^= len(data) & _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def murmur3_32(data: str | bytes | bytearray | memoryview, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of ``data`` (str is hashed as UTF-8), as an unsigned int.

    >>> murmur3_32("foo")
    4138058784
    """
    return _murmur3(_data_bytes(data, "data"), _check_seed(seed))


def _ketama_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.md5(data).digest()[:4], "little")


def _check_weight(name: str, weight: object) -> Weight:
    if not is_number(weight):
        raise ValueError(f"weights: weight of {name!r} must be an int or float, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weights: weight of {name!r} must be finite and > 0, got {weight!r}")
    return weight


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"nodes: node names must be non-empty str, got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"nodes: node name {name!r} is not valid UTF-8 text") from None
    return name


def _parse_nodes(nodes: object) -> dict[str, Weight]:
    """Validated ``{name: weight}`` in sorted name order (the ring's node order)."""
    result: dict[str, Weight] = {}
    if isinstance(nodes, Mapping):
        for name, weight in nodes.items():
            result[_check_name(name)] = _check_weight(name, weight)
    elif isinstance(nodes, (str, bytes)) or not isinstance(nodes, Iterable):
        raise ValueError(
            f"nodes: expected an iterable of names or a mapping of name to weight, "
            f"got {type(nodes).__name__}"
        )
    else:
        for name in nodes:
            if _check_name(name) in result:
                raise ValueError(f"nodes: duplicate node name {name!r}")
            result[name] = 1
    if len(result) > MAX_NODES:
        raise ValueError(f"nodes: at most {MAX_NODES} nodes, got {len(result)}")
    return {name: result[name] for name in sorted(result)}


def _check_options(vnodes: object, hash: object, seed: object) -> tuple[int, str, int]:
    if type(vnodes) is not int or vnodes < 1:
        raise ValueError(f"vnodes: expected an int >= 1, got {vnodes!r}")
    if hash not in HASH_MODES:
        raise ValueError(f"hash: expected one of {HASH_MODES}, got {hash!r}")
    _check_seed(seed)
    if hash == "ketama":
        if vnodes % 4:
            raise ValueError(
                f"vnodes: ketama needs a multiple of 4 (4 points per md5), got {vnodes}"
            )
        if seed != 0:
            raise ValueError("seed: ketama hashing has no seed; leave it at 0")
    return vnodes, hash, seed  # type: ignore[return-value]


def _point_counts(weights: Mapping[str, Weight], vnodes: int, hash: str) -> list[int]:
    """Points per node (murmur3) or md5 digests per node (ketama), in node order."""
    if hash == "murmur3":
        counts = [max(1, round(vnodes * w)) for w in weights.values()]
        total = sum(counts)
    else:
        # Fractions keep uhashring's exact integer floor for int weights and give a
        # well-defined answer for floats (uhashring itself rejects float weights).
        exact = [Fraction(w) for w in weights.values()]
        scale = Fraction(vnodes // 4 * len(exact)) / sum(exact) if exact else Fraction(0)
        counts = [math.floor(scale * w) for w in exact]
        total = 4 * sum(counts)
    if total > MAX_POINTS:
        raise ValueError(
            f"weights: the ring would need {total} points (at most {MAX_POINTS}); "
            f"lower vnodes or the weight ratios"
        )
    return counts


def _format_repr(weights: Mapping[str, Weight], vnodes: int, hash: str, seed: int) -> str:
    if len(weights) <= _REPR_NODES:
        shown = repr(dict(weights))
    else:
        shown = f"<{len(weights)} nodes: {', '.join(map(repr, list(weights)[:3]))}, ...>"
    tail = f", seed={seed}" if seed else ""
    return f"Ring({shown}, vnodes={vnodes}, hash={hash!r}{tail})"


def _ownership(names: tuple[str, ...], points: list[int], owners: list[int]) -> dict[str, float]:
    shares = [0] * len(names)
    if points:
        # Point i owns the hashes in [points[i-1], points[i]); point 0 owns the wrap.
        shares[owners[0]] += points[0] + (1 << 32) - points[-1]
        for i in range(1, len(points)):
            shares[owners[i]] += points[i] - points[i - 1]
    return {name: share / (1 << 32) for name, share in zip(names, shares, strict=True)}


def _rebuild(weights: dict[str, Weight], vnodes: int, hash: str, seed: int) -> Ring:
    return Ring(weights, vnodes=vnodes, hash=hash, seed=seed)


class Ring:
    """An immutable consistent-hash ring of named nodes.

    >>> ring = Ring(["a", "b", "c"])
    >>> ring.lookup("user:42") in ring.nodes
    True

    ``nodes`` is an iterable of names (weight 1 each) or a mapping of name to a positive
    weight. ``hash`` is ``"murmur3"`` (default) or ``"ketama"`` (libketama/uhashring
    compatible; ``vnodes`` must then be a multiple of 4). ``nodes`` are kept in sorted
    order. Keys are ``str`` (hashed as UTF-8) or bytes-like objects.
    """

    __slots__ = (
        "_hash",
        "_names",
        "_owners",
        "_points",
        "_reachable",
        "_seed",
        "_vnodes",
        "_weights",
    )

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, Weight] = (),
        *,
        vnodes: int = 160,
        hash: str = "murmur3",
        seed: int = 0,
    ) -> None:
        if hasattr(self, "_names"):
            raise TypeError("Ring is immutable; build a new one")
        weights = _parse_nodes(nodes)
        self._vnodes, self._hash, self._seed = _check_options(vnodes, hash, seed)
        self._weights = weights
        self._names = tuple(weights)
        counts = _point_counts(weights, self._vnodes, self._hash)
        entries: list[tuple[int, int]] = []
        if self._hash == "murmur3":
            for rank, (name, count) in enumerate(zip(self._names, counts, strict=True)):
                entries.extend(
                    (_murmur3(f"{name}-{i}".encode(), self._seed), rank) for i in range(count)
                )
        else:
            last = len(self._names) - 1
            for rank, (name, count) in enumerate(zip(self._names, counts, strict=True)):
                for d in range(count):
                    digest = hashlib.md5(f"{name}-{d}".encode()).digest()
                    # Descending rank, so the name sorting last wins a tie (see module doc).
                    entries.extend((p, last - rank) for p in struct.unpack("<4I", digest))
        entries.sort()
        self._points = [p for p, _ in entries]
        if self._hash == "murmur3":
            self._owners = [r for _, r in entries]
        else:
            self._owners = [len(self._names) - 1 - r for _, r in entries]
        self._reachable = len(set(self._owners))

    # -- hashing ---------------------------------------------------------------------

    def _key_hash(self, key: object) -> int:
        data = _data_bytes(key, "ring keys")
        if self._hash == "murmur3":
            return _murmur3(data, self._seed)
        return _ketama_hash(data)

    def _index(self, key: object) -> int:
        if not self._points:
            raise EmptyRingError("lookup on a ring with no nodes")
        i = bisect_right(self._points, self._key_hash(key))
        return 0 if i == len(self._points) else i

    # -- lookups ---------------------------------------------------------------------

    def lookup(self, key: Key) -> str:
        """The node that owns ``key``."""
        return self._names[self._owners[self._index(key)]]

    def lookup_many(self, keys: Iterable[Key]) -> list[str]:
        """The owner of every key, in order."""
        names, owners, index = self._names, self._owners, self._index
        return [names[owners[index(key)]] for key in keys]

    def _walk(self, start: int, n: int) -> tuple[str, ...]:
        want = min(n, self._reachable)
        found: list[int] = []
        count = len(self._points)
        i = start
        while len(found) < want:
            owner = self._owners[i]
            if owner not in found:
                found.append(owner)
            i += 1
            if i == count:
                i = 0
        return tuple(self._names[o] for o in found)

    def preference_list(self, key: Key, n: int) -> tuple[str, ...]:
        """The first ``n`` distinct nodes clockwise from ``key`` (fewer if the ring has fewer).

        The first entry is ``lookup(key)``.
        """
        n = _check_n(n)
        return self._walk(self._index(key), n)

    def preference_lists(self, keys: Iterable[Key], n: int) -> list[tuple[str, ...]]:
        """``preference_list(key, n)`` for every key, in order."""
        n = _check_n(n)
        return [self._walk(self._index(key), n) for key in keys]

    def group_by_preference(self, keys: Iterable[Key], n: int) -> dict[tuple[str, ...], list[Any]]:
        """Keys grouped by ``preference_list(key, n)``: the caller's key objects, in the
        caller's order, under each distinct list in the order it first occurs."""
        n = _check_n(n)
        if not self._points:
            raise EmptyRingError("lookup on a ring with no nodes")
        groups: dict[tuple[str, ...], list[Any]] = {}
        walked: dict[int, list[Any]] = {}  # each point's list is walked once
        index, walk = self._index, self._walk
        for key in keys:
            point = index(key)
            group = walked.get(point)
            if group is None:
                group = walked[point] = groups.setdefault(walk(point, n), [])
            group.append(key)
        return groups

    def group_by_node(self, keys: Iterable[Key]) -> dict[str, list[Any]]:
        """Keys grouped by owner: the caller's key objects, in the caller's order.

        Only nodes that own at least one key appear, in the ring's node order.
        """
        groups: list[list[Any] | None] = [None] * len(self._names)
        names, owners, index = self._names, self._owners, self._index
        for key in keys:
            owner = owners[index(key)]
            group = groups[owner]
            if group is None:
                groups[owner] = [key]
            else:
                group.append(key)
        return {names[i]: g for i, g in enumerate(groups) if g is not None}

    # -- derived rings ---------------------------------------------------------------

    def _derive(self, weights: Mapping[str, Weight]) -> Ring:
        return type(self)(weights, vnodes=self._vnodes, hash=self._hash, seed=self._seed)

    def with_node(self, name: str, weight: Weight = 1) -> Ring:
        """A new ring with ``name`` added; this ring is unchanged."""
        if name in self._weights:
            raise ValueError(f"nodes: duplicate node name {name!r}")
        return self._derive({**self._weights, name: weight})

    def without_node(self, name: str) -> Ring:
        """A new ring without ``name`` (``KeyError`` if absent); this ring is unchanged."""
        if name not in self._weights:
            raise KeyError(name)
        return self._derive({k: w for k, w in self._weights.items() if k != name})

    def with_weights(self, weights: Mapping[str, Weight]) -> Ring:
        """A new ring with the given nodes' weights changed (``KeyError`` for unknown names)."""
        for name in weights:
            if name not in self._weights:
                raise KeyError(name)
        return self._derive({**self._weights, **weights})

    # -- introspection ---------------------------------------------------------------

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names, sorted (by code point, which is also UTF-8 byte order)."""
        return self._names

    @property
    def weights(self) -> dict[str, Weight]:
        """A copy of ``{name: weight}``, in node order."""
        return dict(self._weights)

    @property
    def vnodes(self) -> int:
        """Points per unit weight (murmur3) or 4 x md5 digests per average node (ketama)."""
        return self._vnodes

    @property
    def hash(self) -> str:
        """The hashing mode: ``"murmur3"`` or ``"ketama"``."""
        return self._hash

    @property
    def seed(self) -> int:
        """The murmur3 seed (always 0 for ketama)."""
        return self._seed

    @property
    def point_count(self) -> int:
        """Number of points on the ring (collisions included)."""
        return len(self._points)

    def ownership(self) -> dict[str, float]:
        """Each node's fraction of the 2**32 hash space (they sum to 1 unless empty)."""
        return _ownership(self._names, self._points, self._owners)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    def _identity(self) -> tuple[object, ...]:
        return (tuple(self._weights.items()), self._vnodes, self._hash, self._seed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (dict(self._weights), self._vnodes, self._hash, self._seed))

    def __repr__(self) -> str:
        return _format_repr(self._weights, self._vnodes, self._hash, self._seed)


def _check_n(n: object) -> int:
    if type(n) is not int or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    return n
