"""Repair of a node that missed writes: hint replay, and clearing after a hint overflow.

While a node is down (or routed around), every write it should have taken goes to a stand-in
that also records the key in the hint set ``{ns}:hint:{node}`` on the node that took the
write (see :mod:`cachering.data.scripts`). When the node answers again:

1. If any node holds the overflow marker ``{ns}:hintoverflow:{node}``, the hint sets are
   incomplete: every cachering key of the node is deleted (``SCAN`` + ``UNLINK`` in
   batches) before it may serve again (:func:`clear_node`), then the markers go.
2. :func:`replay_hints` reads every node's hint set for it, copies the newest copy of each
   hinted key (value, version header, absolute expiry; tombstones too) from the other
   nodes to it through the data path's apply-if-newer script, and removes exactly the
   replayed members from the hint set (claimed first, see :func:`replay_hints`), so hints
   recorded meanwhile survive. It loops until no hint is left (or ``max_rounds``).

3. A node that came back *empty* (restarted without persistence, or cleared after an
   overflow) also gets every key it is a home copy of: :func:`resync_node` scans the
   other nodes' cachering keys and copies those whose preference list includes it.

Hints cannot cover everything (a write a server applied but whose reply was lost, a hint
set that could not be written, a manager that died with replica writes queued), so the
leader also runs anti-entropy sweeps (:mod:`cachering.repair.sweep`). Copies are read and
written with the helpers of :mod:`cachering.repair.copies`.

Because writes apply only when newer, replay never overwrites a newer write the node
received directly (it is writable while recovering).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..data.fanout import each
from ..data.keys import data_pattern, data_prefix, hint_claim_key, hint_keys
from ..data.scripts import apply_args
from ..data.values import version_of
from ..errors import ProtocolError
from ..resp.pool import Pool
from ..resp.script import Script
from .copies import (
    APPLY,
    DELETE_IF_SAME,
    ERRORS,
    Homes,
    drop_stand_in_copies,
    int_reply,
    read_copies,
    scan_reply,
)

__all__ = [
    "RepairResult",
    "clear_node",
    "hint_holders",
    "overflowed",
    "pending_hints",
    "replay_hints",
    "resync_node",
]


@attrs.define
class RepairResult:
    """What one repair did."""

    node: str
    replayed: int = 0
    """Hinted keys copied to the node (or found already current)."""
    deleted: int = 0
    """Hinted keys that no other node holds any more, removed from the node."""
    cleared: int = 0
    """Keys deleted because the hints had overflowed."""
    dropped: int = 0
    """Stand-in copies deleted once every home of their key held the same value."""
    rounds: int = 0
    complete: bool = False
    """True when no hint for the node was left on any reachable holder."""
    errors: list[str] = attrs.Factory(list)


async def pending_hints(
    pools: Mapping[str, Pool],
    namespace: str,
    targets: Sequence[str],
    holders: Iterable[str],
    timeout: float,
    on_bad: Callable[[str, str], None] | None = None,
) -> dict[str, int]:
    """Hints recorded for each of ``targets`` (summed over the reachable ``holders``),
    claimed ones being replayed included.

    A holder whose replies are not counts is left out entirely (``on_bad(holder, reason)``
    is told), so a node speaking nonsense cannot claim hints for others.
    """
    counts = dict.fromkeys(targets, 0)
    if not targets:
        return counts
    cmds: list[tuple[Any, ...]] = []
    for t in targets:
        hint, over = hint_keys(namespace, t)
        cmds.append(("SCARD", hint))
        cmds.append(("EXISTS", over))
        cmds.append(("SCARD", hint_claim_key(namespace, t)))

    async def one(holder: str) -> None:
        pool = pools.get(holder)
        if pool is None:
            return
        try:
            replies = await pool.pipeline(cmds, timeout=timeout)
            if len(replies) != len(cmds):
                raise ProtocolError(holder, "wrong number of replies")
            found = [int_reply(holder, r, "hint count") for r in replies]
        except ProtocolError as exc:
            if on_bad is not None:
                on_bad(holder, exc.reason)
            return
        except ERRORS:
            return
        for i, t in enumerate(targets):
            if t != holder:
                counts[t] += sum(found[3 * i : 3 * i + 3])

    await each(holders, one, timeout=timeout)
    return counts


async def hint_holders(
    pools: Mapping[str, Pool],
    namespace: str,
    targets: Sequence[str],
    holders: Iterable[str],
    timeout: float,
    on_bad: Callable[[str, str], None] | None = None,
) -> dict[str, int]:
    """How many of the reachable ``holders`` hold hints (a hint set, claims being replayed
    or an overflow marker) for each of ``targets``.

    The cheap form of :func:`pending_hints`, run every heartbeat: one ``EXISTS`` over every
    hint key of every target per holder, so its cost per holder does not grow with the
    number of nodes; only a holder that holds any hint is asked again, target by target.
    A holder whose replies are not counts is left out (``on_bad(holder, reason)``).
    """
    counts = dict.fromkeys(targets, 0)

    async def one(holder: str) -> None:
        pool = pools.get(holder)
        mine = [t for t in targets if t != holder]
        if pool is None or not mine:
            return
        keys = [[*hint_keys(namespace, t), hint_claim_key(namespace, t)] for t in mine]
        try:
            every = [k for group in keys for k in group]
            total = int_reply(
                holder, await pool.execute("EXISTS", *every, timeout=timeout), "EXISTS"
            )
            if total > 3 * len(mine):
                raise ProtocolError(holder, f"EXISTS of {3 * len(mine)} keys answered {total}")
            found = [0] * len(mine)
            if total:
                replies = await pool.pipeline([("EXISTS", *k) for k in keys], timeout=timeout)
                # each count within what its keys allow; their sum may differ from the
                # first answer, since writes and replays change hint sets in between
                found = [int_reply(holder, r, "EXISTS") for r in replies]
                if len(found) != len(mine) or any(f > 3 for f in found):
                    raise ProtocolError(holder, "per-target EXISTS replies do not fit")
        except ProtocolError as exc:
            if on_bad is not None:
                on_bad(holder, exc.reason)
            return
        except ERRORS:
            return
        for t, n in zip(mine, found, strict=True):
            counts[t] += n > 0

    await each(holders, one, timeout=timeout)
    return counts


async def overflowed(
    pools: Mapping[str, Pool],
    namespace: str,
    node: str,
    holders: Iterable[str],
    timeout: float,
) -> list[str]:
    """The holders that carry an overflow marker for ``node`` (raises if one cannot be asked)."""
    _, over = hint_keys(namespace, node)
    found: list[str] = []
    for holder in holders:
        if holder == node or holder not in pools:
            continue
        exists = await pools[holder].execute("EXISTS", over, timeout=timeout)
        if int_reply(holder, exists, "EXISTS") > 1:
            raise ProtocolError(holder, f"EXISTS of one key answered {exists}")
        if exists:
            found.append(holder)
    return found


async def clear_node(pool: Pool, namespace: str, *, batch: int = 1000, timeout: float = 5.0) -> int:
    """Delete every cachering data key (``{ns}:k:*``) on one node; returns how many."""
    pattern = data_pattern(namespace)
    cursor: bytes | int = 0
    removed = 0
    while True:
        cursor, keys = scan_reply(
            pool.spec.id,
            await pool.execute("SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout),
        )
        if keys:
            unlinked = await pool.execute("UNLINK", *keys, timeout=timeout)
            removed += int_reply(pool.spec.id, unlinked, "UNLINK")
        if cursor in (b"0", 0, "0"):
            return removed


def _members(node: str, reply: object) -> list[bytes]:
    """A set-members reply (a list of bytes); anything else raises :class:`ProtocolError`."""
    if isinstance(reply, list) and all(isinstance(m, bytes) for m in reply):
        return reply
    raise ProtocolError(node, f"SRANDMEMBER answered {reply!r:.60}")


# Moves hint members into the claim set, so a hint recorded again for the same key while
# it is being replayed lands in the (now empty) hint set and survives the replay.
_CLAIM = Script(
    "for i = 1, #ARGV do redis.call('SMOVE', KEYS[1], KEYS[2], ARGV[i]) end return #ARGV"
)


def _sources(
    node: str, pools: Mapping[str, Pool], sources: Iterable[str] | None, holder_ids: list[str]
) -> list[str]:
    """The nodes whose copies a replay compares: ``sources`` and every holder, not ``node``."""
    wanted = dict.fromkeys([*(sources or ()), *holder_ids])
    return [s for s in wanted if s != node and s in pools]


async def _claim(
    pool: Pool,
    holder: str,
    hint_key: bytes,
    claim_key: bytes,
    batch: int,
    timeout: float,
) -> list[bytes]:
    """Up to ``batch`` claimed members of ``holder``: a claim left behind, else new hints."""
    members = _members(holder, await pool.execute("SRANDMEMBER", claim_key, batch, timeout=timeout))
    if not members:
        got = await pool.execute("SRANDMEMBER", hint_key, batch, timeout=timeout)
        members = _members(holder, got)
        if members:
            await pool.run_script(_CLAIM, [hint_key, claim_key], members, timeout=timeout)
    return members


async def _settle(
    holder: str,
    handled: list[bytes],
    pools: Mapping[str, Pool],
    namespace: str,
    homes: Homes | None,
    timeout: float,
    result: RepairResult,
) -> bool:
    """Remove the replayed members from ``holder``'s claim set, then its stand-in copies.

    True when the claim set was updated; an error is recorded in ``result`` and gives False.
    """
    claim_key = hint_claim_key(namespace, result.node)
    try:
        await pools[holder].execute("SREM", claim_key, *handled, timeout=timeout)
    except ERRORS as exc:
        result.errors.append(f"{holder}: {exc}")
        return False
    if homes is not None:
        result.dropped += await drop_stand_in_copies(
            holder, handled, pools, namespace, homes=homes, timeout=timeout, errors=result.errors
        )
    return True


async def replay_hints(
    node: str,
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    holders: Iterable[str],
    sources: Iterable[str] | None = None,
    homes: Homes | None = None,
    hint_limit: int = 100_000,
    batch: int = 256,
    timeout: float = 1.0,
    max_rounds: int = 100,
) -> RepairResult:
    """Replay every hint recorded for ``node`` until none is left (see the module docstring).

    ``holders`` are the nodes whose hint sets are read; ``sources`` the nodes whose copies
    are compared (default: the holders; a holder is always a source too). The node itself
    is never a source.

    A batch of hints is first moved to a claim set ``{ns}:hintclaim:{node}`` on its holder
    (still counted as pending by :func:`pending_hints`), then every source is read and the
    newest copy applied, and only then are the members removed from the claim set. A
    member is removed only when *every* source answered: a silent source may hold the
    newest copy. A claim left behind (a failed or interrupted replay) is replayed first
    next time.

    With ``homes`` (each raw key's home nodes, as for :func:`resync_node`), a holder that
    is not a home of a replayed key stood in for it: its copy is deleted once every home
    holds the very same value (see :func:`drop_stand_in_copies`).
    """
    result = RepairResult(node)
    holder_ids = [h for h in dict.fromkeys(holders) if h != node and h in pools]
    source_ids = _sources(node, pools, sources, holder_ids)
    target = pools.get(node)
    if target is None:
        result.errors.append("no pool for the node")
        return result
    hint_key, _ = hint_keys(namespace, node)
    claim_key = hint_claim_key(namespace, node)
    prefix = data_prefix(namespace)
    while result.rounds < max_rounds:
        result.rounds += 1
        pending = progress = unreachable = False
        for holder in holder_ids:
            pool = pools[holder]
            try:
                members = await _claim(pool, holder, hint_key, claim_key, batch, timeout)
            except ERRORS as exc:
                unreachable = True
                result.errors.append(f"{holder}: {exc}")
                continue
            if not members:
                continue
            pending = True
            keys = [prefix + m for m in members]
            done = await _replay_batch(target, pools, source_ids, keys, hint_limit, timeout, result)
            if done is None:
                return result  # the node itself (or a source) failed: the claim waits
            handled = [m for m, k in zip(members, keys, strict=True) if k in done]
            if not handled:
                continue
            settled = await _settle(holder, handled, pools, namespace, homes, timeout, result)
            progress = progress or settled
        if not pending:
            result.complete = not unreachable
            return result
        if not progress:
            return result
    return result


async def _replay_batch(
    target: Pool,
    pools: Mapping[str, Pool],
    sources: Sequence[str],
    keys: Sequence[bytes],
    hint_limit: int,
    timeout: float,
    result: RepairResult,
) -> set[bytes] | None:
    """Copy the newest copy of each key to ``target``; returns the keys dealt with, which
    is none of them unless every source answered (None: the target failed)."""
    best: list[tuple[bytes, int] | None] = [None] * len(keys)
    answered = 0
    for source in sources:
        try:
            copies = await read_copies(pools[source], keys, timeout)
        except ERRORS as exc:
            # What answered is still copied (apply-if-newer makes that safe), but the
            # silent source may hold a newer copy: the hints stay until it answers.
            result.errors.append(f"{source}: {exc}")
            continue
        answered += 1
        for i, (raw, exp) in enumerate(copies):
            version = version_of(raw)
            if raw is None or version is None:
                continue
            current = best[i]
            if current is None or version > (version_of(current[0]) or b""):
                best[i] = (raw, exp)
    if not answered:
        return None
    entries = [(k, b[0], max(b[1], 0)) for k, b in zip(keys, best, strict=True) if b is not None]
    complete = answered == len(sources)
    # Deleting needs every source's word that no copy is left.
    missing = [k for k, b in zip(keys, best, strict=True) if b is None] if complete else []
    try:
        if entries:
            key_list, argv = apply_args(entries, hint_limit=hint_limit)
            await target.run_script(APPLY, key_list, argv, timeout=timeout)
            result.replayed += len(entries)
        if missing:
            # No copy anywhere (expired or never kept): whatever the node still holds for
            # these keys is older than what was acknowledged while it was away.
            mine = await read_copies(target, missing, timeout)
            for k, (raw, _) in zip(missing, mine, strict=True):
                if raw is not None:
                    gone = await target.run_script(DELETE_IF_SAME, [k], [raw], timeout=timeout)
                    result.deleted += int_reply(target.spec.id, gone, "delete")
    except ERRORS as exc:
        result.errors.append(f"target: {exc}")
        return None
    if not complete:
        return set()
    return {k for k, _, _ in entries} | set(missing)


async def resync_node(
    node: str,
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    sources: Iterable[str],
    homes: Homes,
    hint_limit: int = 100_000,
    batch: int = 500,
    timeout: float = 5.0,
) -> RepairResult:
    """Copy to ``node`` every key the other nodes hold and ``homes`` places on it.

    ``homes(raw_keys)`` returns each key's home nodes (its preference list). Each copy goes
    through apply-if-newer, so copying from every source leaves the newest version.
    ``complete`` is False if a source or the node failed (run it again).
    """
    result = RepairResult(node)
    target = pools.get(node)
    if target is None:
        result.errors.append("no pool for the node")
        return result
    prefix = data_prefix(namespace)
    pattern = data_pattern(namespace)
    ok = True
    for source in dict.fromkeys(sources):
        if source == node or source not in pools:
            continue
        pool = pools[source]
        cursor: bytes | int = 0
        try:
            while True:
                cursor, keys = scan_reply(
                    source,
                    await pool.execute(
                        "SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout
                    ),
                )
                mine = [
                    k
                    for k, h in zip(keys, homes([k[len(prefix) :] for k in keys]), strict=True)
                    if node in h
                ]
                if mine:
                    copies = await read_copies(pool, mine, timeout)
                    entries = [
                        (k, raw, max(exp, 0))
                        for k, (raw, exp) in zip(mine, copies, strict=True)
                        if raw is not None and version_of(raw) is not None and exp != -2
                    ]
                    if entries:
                        key_list, argv = apply_args(entries, hint_limit=hint_limit)
                        await target.run_script(APPLY, key_list, argv, timeout=timeout)
                        result.replayed += len(entries)
                result.rounds += 1
                if cursor in (b"0", 0, "0"):
                    break
        except ERRORS as exc:
            ok = False
            result.errors.append(f"{source}: {exc}")
    result.complete = ok
    return result
