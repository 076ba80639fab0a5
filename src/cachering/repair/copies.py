"""Reading and writing the copies of keys across nodes: the pieces repair, resync and
anti-entropy share, and the cleanup of copies left outside their homes.

A copy is read with its absolute expiry by a small Lua script (``PEXPIRETIME`` on Redis
>= 7.0, ``PTTL`` plus the server's ``TIME`` before that) and written through the data
path's apply-if-newer script, so copying never overwrites a newer write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..data.keys import data_prefix
from ..data.scripts import APPLY, READ_COPIES
from ..data.values import HEADER_LUA, HEADER_SIZE, version_of
from ..errors import NodeUnavailable, ProtocolError, ResponseError
from ..resp.pool import Pool
from ..resp.script import Script

__all__ = [
    "APPLY",
    "DELETE_IF_SAME",
    "ERRORS",
    "Homes",
    "drop_redundant",
    "drop_stand_in_copies",
    "int_reply",
    "read_copies",
    "read_versions",
    "scan_reply",
]

DELETE_IF_SAME = Script(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
"""Deletes ``KEYS[1]`` if its value is still exactly ``ARGV[1]``; answers 1 or 0."""
# Deletes each key whose stored version (bytes 1..16) is still ARGV[i]; returns the count.
_DELETE_IF_VERSION = Script(
    HEADER_LUA
    + """
local n = 0
for i = 1, #KEYS do
  local v = redis.pcall('GETRANGE', KEYS[i], VERSION_FIRST - 1, VERSION_LAST - 1)
  if v == ARGV[i] then n = n + redis.call('DEL', KEYS[i]) end
end
return n
"""
)
Homes = Callable[[list[bytes]], list[tuple[str, ...]]]
"""Gives each raw key's home nodes (its preference list on the ring in force)."""
ERRORS = (NodeUnavailable, ResponseError, OSError)
"""What a node call can fail with; repair notes these and goes on."""


def int_reply(node: str, reply: object, what: str) -> int:
    """``reply`` as a count (an int >= 0); anything else raises :class:`ProtocolError`."""
    if isinstance(reply, bool) or not isinstance(reply, int) or reply < 0:
        raise ProtocolError(node, f"{what} answered {reply!r:.60}, not a count")
    return reply


def scan_reply(node: str, reply: object) -> tuple[bytes, list[bytes]]:
    """A ``SCAN`` reply as ``(cursor, keys)``; anything else raises :class:`ProtocolError`."""
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and isinstance(reply[0], bytes)
        and reply[0].isdigit()
        and isinstance(reply[1], list)
        and all(isinstance(k, bytes) for k in reply[1])
    ):
        return reply[0], reply[1]
    raise ProtocolError(node, f"SCAN answered {reply!r:.60}")


async def read_copies(
    pool: Pool,
    keys: Sequence[bytes],
    timeout: float,
) -> list[tuple[bytes | None, int]]:
    """Each key's raw value (None: missing or not a string) and absolute expiry in ms."""
    if not keys:
        return []
    replies = await pool.run_script(READ_COPIES, list(keys), [], timeout=timeout)
    if not isinstance(replies, list) or len(replies) != 2 * len(keys):
        raise ProtocolError(pool.spec.id, f"copies read answered {replies!r:.60}")
    out: list[tuple[bytes | None, int]] = []
    for i in range(len(keys)):
        raw, exp = replies[2 * i], replies[2 * i + 1]
        value = raw if isinstance(raw, bytes) else None
        out.append((value, exp if isinstance(exp, int) else -1))
    return out


async def read_versions(
    pool: Pool,
    keys: Sequence[bytes],
    timeout: float,
) -> list[bytes | None]:
    """Each key's stored version (None: missing or not a cachering value)."""
    replies = await pool.pipeline(
        [("GETRANGE", k, 0, HEADER_SIZE - 1) for k in keys], timeout=timeout, raise_on_error=False
    )
    return [version_of(r) for r in replies]


async def drop_stand_in_copies(
    holder: str,
    raws: Sequence[bytes],
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    homes: Homes,
    timeout: float,
    errors: list[str] | None = None,
) -> int:
    """Delete ``holder``'s copies of the keys ``raws`` that it is not a home of, where every
    home holds the same version or a newer one; returns how many were deleted.

    A stand-in takes the writes of a home that is away and keeps them after the hints are
    replayed. Nothing reads it (reads go to homes only), so its copy is only memory, and a
    stale copy if the ring ever made it a home. The delete is conditional on the stored
    version being unchanged, so a write it took since (standing in again) is kept, and so
    is every copy some home cannot vouch for (missing, older, or the home did not answer).
    Errors are appended to ``errors`` and leave the copies where they are.
    """
    prefix = data_prefix(namespace)
    keys, where = [], []
    for raw, placed in zip(raws, homes(list(raws)), strict=True):
        if holder not in placed:
            keys.append(prefix + raw)
            where.append(placed)
    return await drop_redundant(
        holder, keys, where, pools, timeout, [] if errors is None else errors
    )


async def drop_redundant(
    holder: str,
    keys: Sequence[bytes],
    key_homes: Sequence[tuple[str, ...]],
    pools: Mapping[str, Pool],
    timeout: float,
    errors: list[str],
) -> int:
    """Delete ``holder``'s copy of each key (not homed on it) that every home of the key
    holds at the same or a newer version."""
    if not keys:
        return 0
    try:
        mine = await read_versions(pools[holder], keys, timeout)
        vouched = {i for i, v in enumerate(mine) if v is not None}
        by_home: dict[str, list[int]] = {}
        for i in vouched:
            for home in key_homes[i]:
                by_home.setdefault(home, []).append(i)
        for home, idx in by_home.items():
            pool = pools.get(home)
            if pool is None:
                vouched.difference_update(idx)
                continue
            theirs = await read_versions(pool, [keys[i] for i in idx], timeout)
            mine_v = [mine[i] for i in idx]
            vouched.difference_update(
                i
                for i, v, m in zip(idx, theirs, mine_v, strict=True)
                if v is None or m is None or v < m
            )
        if not vouched:
            return 0
        doomed = sorted(vouched)
        versions = [mine[i] or b"" for i in doomed]
        deleted = await pools[holder].run_script(
            _DELETE_IF_VERSION, [keys[i] for i in doomed], versions, timeout=timeout
        )
        return int_reply(holder, deleted, "delete")
    except ERRORS as exc:
        errors.append(f"{holder}: copies it held as a stand-in kept: {exc}")
        return 0
