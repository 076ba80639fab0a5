"""Repair of a node that missed writes: hint replay, and clearing after a hint overflow.

While a node is down (or routed around), every write it should have taken goes to a stand-in
that also records the key in the hint set ``{ns}:hint:{node}`` on the node that took the
write (see :mod:`cachering.data_scripts`). When the node answers again:

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
leader also runs :func:`anti_entropy` sweeps: every key on every up node is compared, by
its version header, with its other home copies, and the newest version is pushed to the
copies that are older or missing.

Copies are read with a small Lua script that returns each value with its absolute expiry:
``PEXPIRETIME`` on Redis >= 7.0, ``PTTL`` plus the server's ``TIME`` before that.

Because writes apply only when newer, replay never overwrites a newer write the node
received directly (it is writable while recovering).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from .data_scripts import APPLY_SOURCE, apply_args, hint_keys
from .errors import NodeUnavailable, ResponseError
from .resp.pool import Pool
from .resp.script import Script

__all__ = [
    "RepairResult",
    "SweepResult",
    "anti_entropy",
    "clear_node",
    "overflowed",
    "pending_hints",
    "replay_hints",
    "resync_node",
]

_APPLY = Script(APPLY_SOURCE)
_DELETE_IF_SAME = Script(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
# Deletes each key whose stored version (bytes 1..16) is still ARGV[i]; returns the count.
_DELETE_IF_VERSION = Script(
    "local n = 0 for i = 1, #KEYS do "
    "local v = redis.pcall('GETRANGE', KEYS[i], 1, 16) "
    "if v == ARGV[i] then n = n + redis.call('DEL', KEYS[i]) end "
    "end return n"
)
_ERRORS = (NodeUnavailable, ResponseError, OSError)
# Each key's stored value and absolute expiry in ms (-1: none, -2: no key). PEXPIRETIME
# exists from Redis 7.0; before that PTTL plus the server's clock gives the same within a
# millisecond (both are read in the same script run).
_READ_COPIES = Script(
    r"""
local out, now, exact = {}, nil, true
for i, key in ipairs(KEYS) do
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then raw = false end
  local exp
  if exact then
    exp = redis.pcall('PEXPIRETIME', key)
    if type(exp) == 'table' then exact = false end
  end
  if not exact then
    exp = redis.call('PTTL', key)
    if exp >= 0 then
      if now == nil then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      exp = now + exp
    end
  end
  out[2 * i - 1] = raw
  out[2 * i] = exp
end
return out
"""
)


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


def _version(raw: object) -> bytes | None:
    if isinstance(raw, bytes) and len(raw) >= 18 and raw[0] == 1:
        return raw[1:17]
    return None


async def pending_hints(
    pools: Mapping[str, Pool],
    namespace: str,
    targets: Sequence[str],
    holders: Iterable[str],
    timeout: float,  # noqa: ASYNC109
) -> dict[str, int]:
    """Hints recorded for each of ``targets`` (summed over the reachable ``holders``),
    claimed ones being replayed included."""
    counts = dict.fromkeys(targets, 0)
    if not targets:
        return counts
    cmds: list[tuple[Any, ...]] = []
    for t in targets:
        hint, over = hint_keys(namespace, t)
        cmds.append(("SCARD", hint))
        cmds.append(("EXISTS", over))
        cmds.append(("SCARD", _claim_key(namespace, t)))

    async def one(holder: str) -> None:
        pool = pools.get(holder)
        if pool is None:
            return
        try:
            replies = await pool.pipeline(cmds, timeout=timeout)
        except _ERRORS:
            return
        for i, t in enumerate(targets):
            if t != holder:
                counts[t] += sum(int(r) for r in replies[3 * i : 3 * i + 3])

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for holder in holders:
                tg.start_soon(one, holder)
    return counts


async def overflowed(
    pools: Mapping[str, Pool],
    namespace: str,
    node: str,
    holders: Iterable[str],
    timeout: float,  # noqa: ASYNC109
) -> list[str]:
    """The holders that carry an overflow marker for ``node`` (raises if one cannot be asked)."""
    _, over = hint_keys(namespace, node)
    found: list[str] = []
    for holder in holders:
        if holder == node or holder not in pools:
            continue
        if await pools[holder].execute("EXISTS", over, timeout=timeout):
            found.append(holder)
    return found


async def clear_node(pool: Pool, namespace: str, *, batch: int = 1000, timeout: float = 5.0) -> int:  # noqa: ASYNC109
    """Delete every cachering data key (``{ns}:k:*``) on one node; returns how many."""
    pattern = f"{namespace}:k:*".encode()
    cursor: bytes | int = 0
    removed = 0
    while True:
        cursor, keys = await pool.execute(
            "SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout
        )
        if keys:
            removed += int(await pool.execute("UNLINK", *keys, timeout=timeout))
        if cursor in (b"0", 0, "0"):
            return removed


def _claim_key(namespace: str, node: str) -> bytes:
    """Hints being replayed right now (moved out of the hint set, see :func:`replay_hints`)."""
    return f"{namespace}:hintclaim:{node}".encode()


# Moves hint members into the claim set, so a hint recorded again for the same key while
# it is being replayed lands in the (now empty) hint set and survives the replay.
_CLAIM = Script(
    "for i = 1, #ARGV do redis.call('SMOVE', KEYS[1], KEYS[2], ARGV[i]) end return #ARGV"
)


async def replay_hints(
    node: str,
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    holders: Iterable[str],
    sources: Iterable[str] | None = None,
    homes: Callable[[list[bytes]], list[tuple[str, ...]]] | None = None,
    hint_limit: int = 100_000,
    batch: int = 256,
    timeout: float = 1.0,  # noqa: ASYNC109
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
    source_ids = [
        s for s in dict.fromkeys([*(sources or ()), *holder_ids]) if s != node and s in pools
    ]
    target = pools.get(node)
    if target is None:
        result.errors.append("no pool for the node")
        return result
    hint_key, _ = hint_keys(namespace, node)
    claim_key = _claim_key(namespace, node)
    prefix = f"{namespace}:k:".encode()
    while result.rounds < max_rounds:
        result.rounds += 1
        pending = progress = unreachable = False
        for holder in holder_ids:
            pool = pools[holder]
            try:
                members = await pool.execute("SRANDMEMBER", claim_key, batch, timeout=timeout)
                if not members:
                    members = await pool.execute("SRANDMEMBER", hint_key, batch, timeout=timeout)
                    if members:
                        await pool.run_script(
                            _CLAIM, [hint_key, claim_key], members, timeout=timeout
                        )
            except _ERRORS as exc:
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
            try:
                await pool.execute("SREM", claim_key, *handled, timeout=timeout)
                progress = True
            except _ERRORS as exc:
                result.errors.append(f"{holder}: {exc}")
                continue
            if homes is not None:
                result.dropped += await drop_stand_in_copies(
                    holder, handled, pools, namespace, homes=homes, timeout=timeout, result=result
                )
        if not pending:
            result.complete = not unreachable
            return result
        if not progress:
            return result
    return result


async def drop_stand_in_copies(
    holder: str,
    raws: Sequence[bytes],
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    homes: Callable[[list[bytes]], list[tuple[str, ...]]],
    timeout: float,  # noqa: ASYNC109
    result: RepairResult | None = None,
) -> int:
    """Delete ``holder``'s copies of the keys ``raws`` that it is not a home of, where every
    home holds the same version or a newer one; returns how many were deleted.

    A stand-in takes the writes of a home that is away and keeps them after the hints are
    replayed. Nothing reads it (reads go to homes only), so its copy is only memory, and a
    stale copy if the ring ever made it a home. The delete is conditional on the stored
    version being unchanged, so a write it took since (standing in again) is kept, and so
    is every copy some home cannot vouch for (missing, older, or the home did not answer).
    """
    prefix = f"{namespace}:k:".encode()
    keys, where = [], []
    for raw, placed in zip(raws, homes(list(raws)), strict=True):
        if holder not in placed:
            keys.append(prefix + raw)
            where.append(placed)
    errors: list[str] = result.errors if result is not None else []
    return await _drop_redundant(holder, keys, where, pools, timeout, errors)


async def _drop_redundant(
    holder: str,
    keys: Sequence[bytes],
    key_homes: Sequence[tuple[str, ...]],
    pools: Mapping[str, Pool],
    timeout: float,  # noqa: ASYNC109
    errors: list[str],
) -> int:
    """Delete ``holder``'s copy of each key (not homed on it) that every home of the key
    holds at the same or a newer version."""
    if not keys:
        return 0
    try:
        mine = await _headers(pools[holder], keys, timeout)
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
            theirs = await _headers(pool, [keys[i] for i in idx], timeout)
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
        return int(
            await pools[holder].run_script(
                _DELETE_IF_VERSION, [keys[i] for i in doomed], versions, timeout=timeout
            )
        )
    except _ERRORS as exc:
        errors.append(f"{holder}: copies it held as a stand-in kept: {exc}")
        return 0


async def _read_copies(
    pool: Pool,
    keys: Sequence[bytes],
    timeout: float,  # noqa: ASYNC109
) -> list[tuple[bytes | None, int]]:
    """Each key's raw value (None: missing or not a string) and absolute expiry in ms."""
    if not keys:
        return []
    replies = await pool.run_script(_READ_COPIES, list(keys), [], timeout=timeout)
    out: list[tuple[bytes | None, int]] = []
    for i in range(len(keys)):
        raw, exp = replies[2 * i], replies[2 * i + 1]
        value = raw if isinstance(raw, bytes) else None
        out.append((value, exp if isinstance(exp, int) else -1))
    return out


async def _replay_batch(
    target: Pool,
    pools: Mapping[str, Pool],
    sources: Sequence[str],
    keys: Sequence[bytes],
    hint_limit: int,
    timeout: float,  # noqa: ASYNC109
    result: RepairResult,
) -> set[bytes] | None:
    """Copy the newest copy of each key to ``target``; returns the keys dealt with, which
    is none of them unless every source answered (None: the target failed)."""
    best: list[tuple[bytes, int] | None] = [None] * len(keys)
    answered = 0
    for source in sources:
        try:
            copies = await _read_copies(pools[source], keys, timeout)
        except _ERRORS as exc:
            # What answered is still copied (apply-if-newer makes that safe), but the
            # silent source may hold a newer copy: the hints stay until it answers.
            result.errors.append(f"{source}: {exc}")
            continue
        answered += 1
        for i, (raw, exp) in enumerate(copies):
            version = _version(raw)
            if raw is None or version is None:
                continue
            current = best[i]
            if current is None or version > current[0][1:17]:
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
            await target.run_script(_APPLY, key_list, argv, timeout=timeout)
            result.replayed += len(entries)
        if missing:
            # No copy anywhere (expired or never kept): whatever the node still holds for
            # these keys is older than what was acknowledged while it was away.
            mine = await _read_copies(target, missing, timeout)
            for k, (raw, _) in zip(missing, mine, strict=True):
                if raw is not None:
                    result.deleted += int(
                        await target.run_script(_DELETE_IF_SAME, [k], [raw], timeout=timeout)
                    )
    except _ERRORS as exc:
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
    homes: Callable[[list[bytes]], list[tuple[str, ...]]],
    hint_limit: int = 100_000,
    batch: int = 500,
    timeout: float = 5.0,  # noqa: ASYNC109
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
    prefix = f"{namespace}:k:".encode()
    pattern = prefix + b"*"
    ok = True
    for source in dict.fromkeys(sources):
        if source == node or source not in pools:
            continue
        pool = pools[source]
        cursor: bytes | int = 0
        try:
            while True:
                cursor, keys = await pool.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout
                )
                mine = [
                    k
                    for k, h in zip(keys, homes([k[len(prefix) :] for k in keys]), strict=True)
                    if node in h
                ]
                if mine:
                    copies = await _read_copies(pool, mine, timeout)
                    entries = [
                        (k, raw, max(exp, 0))
                        for k, (raw, exp) in zip(mine, copies, strict=True)
                        if raw is not None and _version(raw) is not None and exp != -2
                    ]
                    if entries:
                        key_list, argv = apply_args(entries, hint_limit=hint_limit)
                        await target.run_script(_APPLY, key_list, argv, timeout=timeout)
                        result.replayed += len(entries)
                result.rounds += 1
                if cursor in (b"0", 0, "0"):
                    break
        except _ERRORS as exc:
            ok = False
            result.errors.append(f"{source}: {exc}")
    result.complete = ok
    return result


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


async def _headers(
    pool: Pool,
    keys: Sequence[bytes],
    timeout: float,  # noqa: ASYNC109
) -> list[bytes | None]:
    """Each key's stored version (None: missing or not a cachering value)."""
    replies = await pool.pipeline(
        [("GETRANGE", k, 0, 17) for k in keys], timeout=timeout, raise_on_error=False
    )
    return [_version(r) for r in replies]


async def anti_entropy(
    pools: Mapping[str, Pool],
    namespace: str,
    *,
    sources: Iterable[str],
    targets: Iterable[str],
    homes: Callable[[list[bytes]], list[tuple[str, ...]]],
    hint_limit: int = 100_000,
    batch: int = 500,
    timeout: float = 5.0,  # noqa: ASYNC109
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
    prefix = f"{namespace}:k:".encode()
    cut = len(prefix)
    pattern = prefix + b"*"
    writable = {t for t in targets if t in pools}
    ok = True
    for source in dict.fromkeys(sources):
        pool = pools.get(source)
        if pool is None:
            continue
        cursor: bytes | int = 0
        try:
            while True:
                cursor, keys = await pool.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", batch, timeout=timeout
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
        except _ERRORS as exc:
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
    timeout: float,  # noqa: ASYNC109
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
        result.dropped += await _drop_redundant(
            source, [k for k, _ in strays], [h for _, h in strays], pools, timeout, result.errors
        )
    if not mine:
        return True
    result.scanned += len(mine)
    headers = await _headers(pool, [k for k, _ in mine], timeout)
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
            theirs = await _headers(pools[t], [mine[i][0] for i in idx], timeout)
        except _ERRORS as exc:
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
        zip(needed, await _read_copies(pool, [mine[i][0] for i in needed], timeout), strict=True)
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
            reply = await pools[t].run_script(_APPLY, key_list, argv, timeout=timeout)
        except _ERRORS as exc:
            ok = False
            result.errors.append(f"{t}: {exc}")
            continue
        result.repaired += len(reply) - bytes(reply).count(b"0")
    return ok
