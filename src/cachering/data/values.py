"""The stored value format and the hybrid logical clock that versions every write.

Every copy of a key holds ``header + user bytes``. The header is 18 bytes::

    offset size  field
    0      1     format byte, 0x01
    1      8     HLC, unsigned big-endian: 48-bit wall clock in ms << 16 | 16-bit counter
    9      8     writer id (random per Cluster instance; top bit clear, see below)
    17     1     flags: bit 0 = tombstone (a delete; no user bytes follow)
    18     n     the user's bytes, exactly as given to ``set``

Bytes 1..16 together are the *version*. Because both parts are big-endian, comparing the
16 bytes lexicographically orders versions by clock, then by writer id; the write script
keeps the copy with the greatest version, so every copy of a key converges on one value
no matter in what order the writes arrive.

A writer's own versions have the top bit of the writer id clear. When a first copy takes
a write older than its stored copy (the writer's clock is behind another's), the write
script gives it the version just above the stored one, with that bit set: such a version
can never equal one a writer stamped, so two different writes never share a version.
A write older than a copy its own writer stamped is never restamped: it is that writer's
earlier write arriving late, and is dropped like any older version.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from ..wallclock import wall_ms

__all__ = [
    "FLAGS_OFFSET",
    "FLAG_TOMBSTONE",
    "FORMAT",
    "HEADER_LUA",
    "HEADER_SIZE",
    "VERSION_OFFSET",
    "VERSION_SIZE",
    "HybridClock",
    "StoredValue",
    "decode",
    "encode",
    "header",
    "is_ours",
    "is_tombstone",
    "user_bytes",
    "user_values",
    "version_of",
    "with_version",
    "writer_id",
]

FORMAT = 0x01
"""The format byte (offset 0) of every value cachering writes."""
VERSION_OFFSET = 1
"""Where the 16 version bytes start."""
VERSION_SIZE = 16
"""Bytes of a version: 8 of HLC, 8 of writer id."""
FLAGS_OFFSET = VERSION_OFFSET + VERSION_SIZE
"""Where the flags byte is (17)."""
HEADER_SIZE = FLAGS_OFFSET + 1
"""Bytes of the header (18); the user's bytes follow."""
FLAG_TOMBSTONE = 0x01
"""Flags bit: the value is a delete marker."""
_VERSION_END = VERSION_OFFSET + VERSION_SIZE
_VERSION = struct.Struct(">Q8s")
_HEADER = struct.Struct(">BQ8sB")
_MAX_WALL = (1 << 48) - 1
_FORMAT_BYTE = bytes([FORMAT])
_LIVE, _TOMB = b"\x00", bytes([FLAG_TOMBSTONE])
_RESTAMPED = 0x80  # top bit of a writer id's first byte: a version a first copy gave


def writer_id() -> bytes:
    """A fresh random 8-byte writer id (top bit clear: that bit marks versions the write
    script assigns)."""
    raw = os.urandom(8)
    return bytes([raw[0] & ~_RESTAMPED & 0xFF]) + raw[1:]


class StoredValue(NamedTuple):
    """A decoded stored value."""

    hlc: int
    """``wall_ms << 16 | counter``."""
    writer: bytes
    """8-byte writer id."""
    tombstone: bool
    """True for a delete marker."""
    data: bytes
    """The user's bytes (empty for a tombstone)."""

    @property
    def version(self) -> bytes:
        """The 16 comparable version bytes (HLC then writer id)."""
        return _VERSION.pack(self.hlc, self.writer)


def header(version: bytes, *, tombstone: bool = False) -> bytes:
    """The 18-byte header for a 16-byte ``version``."""
    return b"".join((_FORMAT_BYTE, version, _TOMB if tombstone else _LIVE))


def encode(version: bytes, data: bytes | None) -> bytes:
    """Header + data for a 16-byte ``version``; ``data=None`` encodes a tombstone."""
    if data is None:
        return b"".join((_FORMAT_BYTE, version, _TOMB))
    return b"".join((_FORMAT_BYTE, version, _LIVE, data))


def decode(raw: bytes) -> StoredValue | None:
    """Parse a stored value; None when it is not in this format (a foreign value)."""
    if len(raw) < HEADER_SIZE or raw[0] != FORMAT:
        return None
    hlc, writer = _VERSION.unpack_from(raw, VERSION_OFFSET)
    tombstone = bool(raw[FLAGS_OFFSET] & FLAG_TOMBSTONE)
    return StoredValue(hlc, writer, tombstone, b"" if tombstone else raw[HEADER_SIZE:])


def user_bytes(raw: bytes | None) -> bytes | None:
    """What ``get`` returns for a raw stored value: the user bytes, or None.

    Missing keys, tombstones and values not written by cachering all read as None
    (a foreign value under the namespace is treated as absent rather than returned
    with a header that would be mistaken for data).
    """
    if (
        raw is None
        or len(raw) < HEADER_SIZE
        or raw[0] != FORMAT
        or raw[FLAGS_OFFSET] & FLAG_TOMBSTONE
    ):
        return None
    return raw[HEADER_SIZE:]


def user_values(replies: list[bytes | None]) -> list[bytes | None]:
    """:func:`user_bytes` of every reply, inlined in one comprehension (the hot path of
    a multi-key read)."""
    size, fmt, flags, tomb = HEADER_SIZE, FORMAT, FLAGS_OFFSET, FLAG_TOMBSTONE
    return [
        r[size:]
        if r is not None and len(r) >= size and r[0] == fmt and not r[flags] & tomb
        else None
        for r in replies
    ]


def is_ours(raw: object) -> bool:
    """Whether ``raw`` is a value in this format (at least a header, the format byte)."""
    return isinstance(raw, bytes) and len(raw) >= HEADER_SIZE and raw[0] == FORMAT


def version_of(raw: object) -> bytes | None:
    """The 16 version bytes of a stored value (or of a header alone); None for anything
    not in the format."""
    if isinstance(raw, bytes) and len(raw) >= HEADER_SIZE and raw[0] == FORMAT:
        return raw[VERSION_OFFSET:_VERSION_END]
    return None


def is_tombstone(raw: bytes) -> bool:
    """Whether the stored value ``raw`` (in the format) is a delete marker."""
    return bool(raw[FLAGS_OFFSET] & FLAG_TOMBSTONE)


def with_version(raw: bytes, version: bytes) -> bytes:
    """The stored value ``raw`` under another 16-byte ``version`` (flags and data kept)."""
    return b"".join((raw[:VERSION_OFFSET], version, raw[_VERSION_END:]))


HEADER_LUA = f"""
local byte = string.byte
-- the stored value header (cachering.data.values): 1-based Lua string positions
local HEADER_SIZE, FORMAT = {HEADER_SIZE}, {FORMAT}
local VERSION_FIRST, VERSION_LAST = {VERSION_OFFSET + 1}, {_VERSION_END}
local FLAGS_AT = {FLAGS_OFFSET + 1} -- bit 0 set: a tombstone
"""
"""Lua definitions of the header layout that every script reading a stored header starts
with: ``HEADER_SIZE``, ``FORMAT``, ``VERSION_FIRST``/``VERSION_LAST`` and ``FLAGS_AT`` (1-based
string positions; constants only, as each function a script defines costs every run)."""


class HybridClock:
    """Hybrid logical clock: wall-clock milliseconds plus a counter, never going backwards.

    ``next()`` returns a new 16-byte version (HLC + writer id), strictly greater than any
    version this clock returned or observed before, and close to the wall clock, so that
    "last writer wins" matches intuition when clocks are roughly in sync. ``wall_ms`` is
    a callable returning Unix milliseconds (for tests; default: the system clock).

    >>> clock = HybridClock(b"\\x00" * 8)
    >>> a, b = clock.next(), clock.next()
    >>> a < b
    True
    """

    __slots__ = ("_last", "_wall_ms", "writer")

    def __init__(
        self, writer: bytes, *, last: int = 0, wall_ms: Callable[[], int] | None = None
    ) -> None:
        if not isinstance(writer, bytes) or len(writer) != 8:
            raise ValueError("HybridClock.writer must be 8 bytes")
        if writer[0] & _RESTAMPED:
            raise ValueError("HybridClock.writer must have its top bit clear (see writer_id)")
        self.writer = writer
        """The 8-byte writer id appended to every version."""
        self._last = last
        self._wall_ms = wall_ms

    @classmethod
    def random(cls) -> HybridClock:
        """A clock with a random writer id."""
        return cls(writer_id())

    def tick(self) -> int:
        """Advance and return the new HLC value (an int)."""
        now = wall_ms() if self._wall_ms is None else int(self._wall_ms())
        now = (now if now < _MAX_WALL else _MAX_WALL) << 16
        hlc = now if now > self._last else self._last + 1
        self._last = hlc
        return hlc

    def next(self) -> bytes:
        """A fresh 16-byte version: HLC then writer id."""
        return _VERSION.pack(self.tick(), self.writer)

    def stamp(self, data: bytes) -> bytes:
        """``data`` as a live stored value under a fresh version: ``encode(next(), data)``
        in one step, for the single-key write path."""
        return _HEADER.pack(FORMAT, self.tick(), self.writer, 0) + data

    def observe(self, hlc: int) -> None:
        """Move past an HLC seen on a stored value, so our next write orders after it."""
        if hlc > self._last:
            self._last = hlc

    def observe_version(self, version: bytes) -> None:
        """:meth:`observe` the HLC of a 16-byte ``version`` (one a first copy gave a write)."""
        self.observe(int.from_bytes(version[:8], "big"))

    @property
    def last(self) -> int:
        """The last HLC returned or observed."""
        return self._last
