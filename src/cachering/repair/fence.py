"""The restart fence: how a node that came back holding data from before is caught.

Each node holds ``{ns}:fence``, the ``run_id`` of the server process whose data the
cluster vouches for. A server that restarts gets a new ``run_id``; one that restarts from
a snapshot (RDB, a restored backup) also brings back the old fence with its old data, and
one that restarts empty has none. So:

- every new data connection of a manager compares the two (:func:`check_fence`): equal,
  or no fence yet (a fresh or empty node, which gets the fence with ``SET NX``), is fine;
  different means the data predates the restart: the connection is refused (the call
  falls back as for a node failure, quorum reads included) until the node is repaired.
  A manager that saw another run_id on an earlier connection also knows of a restart
  when the fence is missing (the node came back empty);
- a node kept from reads for this reason gets an overflow marker for it on every other
  node (:func:`mark_restarted`): to the leader and to every manager it then looks like a
  node whose hint log overflowed, so it serves no reads, is cleared (every data key
  deleted), resynced from the other copies, and only then marked up, with the fence set
  to its current ``run_id`` (:func:`set_fence`).

Clearing, not comparing, is what keeps repair from undoing deletes: a key deleted while
the node was away may have no tombstone left anywhere, so nothing could tell its old copy
from a live one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..data.fanout import each
from ..data.keys import fence_key, hint_keys
from ..resp.pool import Pool
from .copies import ERRORS

__all__ = [
    "check_fence",
    "mark_restarted",
    "read_fence",
    "run_id_of",
    "set_fence",
]


def run_id_of(info: object) -> str | None:
    """The ``run_id`` field of an ``INFO server`` reply (None if absent or malformed)."""
    if not isinstance(info, (bytes, str)):
        return None
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            value = line[7:].strip()
            return value if 0 < len(value) <= 64 else None
    return None


async def read_fence(
    conn: Any,
    namespace: str,
    timeout: float,
) -> tuple[str | None, bytes | None]:
    """The node's current run_id and its fence (None where missing or unreadable), read
    through ``conn`` (a Connection or a Pool) in one round trip."""
    info, fence = await conn.pipeline(
        [("INFO", "server"), ("GET", fence_key(namespace))], timeout=timeout
    )
    return run_id_of(info), fence if isinstance(fence, bytes) else None


async def check_fence(conn: Any, namespace: str, timeout: float) -> bool:
    """Whether the node behind ``conn`` (a Connection or a Pool) holds only data the
    cluster vouches for: False when its fence names another server process. A node with
    no fence yet (fresh, or restarted empty) gets one naming its run_id."""
    run_id, fence = await read_fence(conn, namespace, timeout)
    if run_id is None:
        return True  # cannot tell (a server that hides INFO): treated as before
    if fence is None:
        await conn.execute("SET", fence_key(namespace), run_id, "NX", timeout=timeout)
        return True
    return fence == run_id.encode()


async def set_fence(pool: Pool, namespace: str, *, timeout: float | None = None) -> None:
    """Vouch for the node's current data (after it was cleared and resynced)."""
    run_id = run_id_of(await pool.execute("INFO", "server", timeout=timeout))
    if run_id is not None:
        await pool.execute("SET", fence_key(namespace), run_id, timeout=timeout)


async def mark_restarted(
    pools: Mapping[str, Pool],
    namespace: str,
    node: str,
    holders: Iterable[str],
    timeout: float,
) -> int:
    """Set the overflow marker for ``node`` on every reachable holder; returns how many
    holders took it (0: none reachable, try again)."""
    _, over = hint_keys(namespace, node)
    marked = 0

    async def one(holder: str) -> None:
        nonlocal marked
        try:
            await pools[holder].execute("SET", over, b"1", timeout=timeout)
        except ERRORS:
            return
        marked += 1

    await each([h for h in holders if h != node and h in pools], one, timeout=timeout)
    return marked
