"""Anti-entropy: the leader's periodic sweep that brings every home copy up to date.

Hints cannot cover everything (a write a server applied but whose reply was lost, a hint
set that could not be written, a manager that died with replica writes queued), so the
leader also sweeps: every key on every up node is compared, by its version header, with
its other home copies, and the newest version is pushed to the copies that are older or
missing. Copies on nodes that are not a home of their key are deleted where every home
holds the same version or a newer one (see :func:`cachering.repair.copies.drop_redundant`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from ..data.keys import data_pattern, data_prefix
from ..data.scripts import apply_args
from ..errors import ProtocolError
from ..resp.pool import Pool
from .copies import (
    APPLY,
    ERRORS,
    Homes,
    drop_redundant,
    read_copies,
    read_versions,
    scan_reply,
)

__all__ = ["SweepResult", "anti_entropy"]


@attrs.define
class SweepResult:
    """What one anti-entropy sweep did."""

    scanned: int = 0
    """Keys read on the nodes swept (each key once per node that holds it)."""
    repaired: int = 0
    """Home copies that were older or missing and got the newest version."""
    dropped: int = 0
    """Copies on nodes that are not a home of their key, deleted because every home held
    the same version or a newer one."""
    complete: bool = False
    """True when every node was swept and every home copy answered."""
    errors: list[str] = attrs.Factory(list)


async def anti_entropy(
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    sources: Iterable[str],
    targets: Iterable[str],
    homes: Homes,
    hint_limit: int = 100_000,
    batch: int = 500,
    timeout: float = 5.0,
) -> SweepResult:
    """Push the newest copy of every key to each of its home copies that is behind.

    Every node of ``sources`` is scanned (``SCAN MATCH {ns}:k:* COUNT batch``); for each
    key that node is a home copy of (``homes(raw_keys)`` gives the preference lists), the
    version headers of the node and of the key's other homes among ``targets`` are read
    (one pipeline per node and batch), and the copies that are older or missing get the
    node's value and absolute expiry through apply-if-newer. Keys a node holds only as a
    stand-in are not pushed: they may be older than a delete whose tombstone expired; they
    are deleted where every home holds the same version or a newer one. Memory is bounded
    by ``batch``; there is never a round trip per key.
    """
    result = SweepResult()
    cut = len(data_prefix(namespace))
    pattern = data_pattern(namespace)
    writable = {t for t in targets if t in pools}
    ok = True
    for source in dict.fromkeys(sources):
        pool = pools.get(source)
        if pool is None:
            continue
        cursor: bytes | int = 0
        try:
            while True:
                cursor, keys = scan_reply(
                    source,
                    await pool.execute(
                        "SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout
                    ),
                )
                if keys:
                    ok &= await _sweep_batch(
                        source,
                        pools,
                        keys,
                        homes([k[cut:] for k in keys]),
                        writable,
                        hint_limit,
                        timeout,
                        result,
                    )
                if cursor in (b"0", 0, "0"):
                    break
        except ERRORS as exc:
            ok = False
            result.errors.append(f"{source}: {exc}")
    result.complete = ok
    return result


async def _sweep_batch(
    source: str,
    pools: Mapping[str, Pool],
    keys: Sequence[bytes],
    key_homes: Sequence[tuple[str, ...]],
    writable: set[str],
    hint_limit: int,
    timeout: float,
    result: SweepResult,
) -> bool:
    """One scanned batch of ``source``: returns False if a home copy could not be fixed."""
    pool = pools[source]
    mine = [(k, h) for k, h in zip(keys, key_homes, strict=True) if source in h]
    # copies this node holds without being a home (a stand-in's, or left by a ring
    # change), where every home is writable and so can be asked
    strays = [
        (k, h)
        for k, h in zip(keys, key_homes, strict=True)
        if source not in h and all(x in writable for x in h)
    ]
    if strays:
        result.dropped += await drop_redundant(
            source, [k for k, _ in strays], [h for _, h in strays], pools, timeout, result.errors
        )
    if not mine:
        return True
    result.scanned += len(mine)
    headers = await read_versions(pool, [k for k, _ in mine], timeout)
    ours = {i: v for i, v in enumerate(headers) if v is not None}  # foreign values: skipped
    by_target: dict[str, list[int]] = {}
    for i in ours:
        for t in mine[i][1]:
            if t != source and t in writable:
                by_target.setdefault(t, []).append(i)
    ok = True
    behind: dict[str, list[int]] = {}
    for t, idx in by_target.items():
        try:
            theirs = await read_versions(pools[t], [mine[i][0] for i in idx], timeout)
        except ERRORS as exc:
            ok = False
            result.errors.append(f"{t}: {exc}")
            continue
        stale = [i for i, v in zip(idx, theirs, strict=True) if v is None or v < ours[i]]
        if stale:
            behind[t] = stale
    if not behind:
        return ok
    needed = sorted({i for idx in behind.values() for i in idx})
    copies = dict(
        zip(needed, await read_copies(pool, [mine[i][0] for i in needed], timeout), strict=True)
    )
    for t, idx in behind.items():
        entries = [
            (mine[i][0], raw, max(exp, 0))
            for i in idx
            if (raw := copies[i][0]) is not None and (exp := copies[i][1]) != -2
        ]
        if not entries:
            continue
        key_list, argv = apply_args(entries, hint_limit=hint_limit)
        try:
            reply = await pools[t].run_script(APPLY, key_list, argv, timeout=timeout)
            if not isinstance(reply, bytes):
                raise ProtocolError(t, f"the write script answered {reply!r:.60}")
        except ERRORS as exc:
            ok = False
            result.errors.append(f"{t}: {exc}")
            continue
        result.repaired += len(reply) - bytes(reply).count(b"0")
    return ok
