"""The arguments of the write calls: key, value and ttl types and their checks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import timedelta

__all__ = ["MAX_TTL", "TTL", "Items", "Key", "Value", "key_bytes", "ttl_ms"]

Key = str | bytes | bytearray | memoryview
"""A key: str (stored UTF-8 encoded) or bytes-like."""
Value = str | bytes | bytearray | memoryview
"""A value: bytes-like, or str (stored UTF-8 encoded)."""
TTL = int | float | timedelta | None
"""A time to live in seconds or as a timedelta; None for no expiry."""
Items = (
    Mapping[str, Value] | Mapping[bytes, Value] | Mapping[Key, Value] | Iterable[tuple[Key, Value]]
)
"""What ``set_many`` takes: a mapping or (key, value) pairs. Mapping is invariant in its
key type, so the common key types are named and a plain ``dict[str, bytes]`` fits."""


def key_bytes(key: object) -> bytes:
    """A key argument as bytes; TypeError for anything but str or bytes-like."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys must be str or bytes-like, got {type(key).__name__}")


MAX_TTL = 10**12
"""The longest ttl in seconds (about 31,700 years): its milliseconds added to a server's
clock stay exact in the scripts' numbers and within what ``PXAT`` takes."""


def ttl_ms(ttl: object) -> int:
    """Milliseconds of a ttl argument; 0 for None. ValueError for one that cannot be
    stored (not positive, not finite, or over :data:`MAX_TTL`)."""
    if ttl is None:
        return 0
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        if not 0 < ttl <= MAX_TTL:  # compared as an int: no float overflow
            raise ValueError(f"ttl must be positive and at most {MAX_TTL} seconds, got {ttl!r}")
        return ttl * 1000
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"ttl must be seconds (int or float) or a timedelta, got {ttl!r}")
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TTL:
        raise ValueError(f"ttl must be positive and at most {MAX_TTL} seconds, got {ttl!r}")
    return max(1, math.ceil(seconds * 1000))
