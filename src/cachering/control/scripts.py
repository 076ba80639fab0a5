"""Lua scripts that keep election votes and the topology on each cache node, and their codecs.

Each script runs atomically on one node. All state of a node lives under two keys of the
cluster namespace (see :func:`control_keys`):

``{ns}:ctl:election`` (hash)
    ``epoch``: the highest epoch this node voted in or was seeded with; ``voted_for``:
    the candidate it voted for in that epoch (empty: nobody may get a vote in it);
    ``ready``: ``1`` once the node knows an epoch floor; ``born``: the node's clock (µs)
    when it was first seen without state (also a token naming this incarnation of the
    state); ``boot``: present while the node was seeded by the bootstrap of a fresh
    cluster and has not voted since; ``voters`` and ``vseal``: the cluster's voter set
    (:func:`voters_id`) and its seal, stored when the node is seeded.
``{ns}:ctl:topology`` (hash)
    ``epoch``, ``version`` and ``payload`` (:meth:`Topology.to_bytes`) of the newest
    topology this node accepted, and ``seal``, the leader's MAC of the payload.

The election state is one hash so that losing it (restart without persistence, FLUSHALL,
or eviction under an ``allkeys-*`` policy) loses all of it at once: the node then stops
voting until it is seeded again. Separate keys could lose a vote but keep ``ready``.

Replies are arrays of bulk strings (numbers as decimal strings, absent values as ``""``),
decoded by the ``parse_*`` helpers into typed results.

Seeding rules (``plan_seed``), and why they keep "one vote per epoch" across a node that
forgot its votes: a node is seeded with the largest epoch held by at least
``n // 2 + 1`` ready nodes *other than itself*; any majority that elected a leader with
this node's forgotten vote shares at least one of those nodes (the two sets together
exceed ``n - 1``). Seeding sets ``voted_for`` to empty, so the node gives no vote at all
in the floor epoch, only in later ones. Vote requests still in flight when the node lost
its state are covered by ``min_age_ms``: the node refuses to be seeded until its own
clock says it has been without state that long, and the managers read the other nodes
only after seeing that age; a candidate must ignore vote replies that arrive later than
``min_age_ms`` after it started its round (only clock *rates* need to agree).
A fresh cluster (every configured node answers, none has a topology, and each is either
fresh or bootstrapped and has not voted since) is seeded with the caller's highest known
epoch or the node's clock in milliseconds, whichever is higher, so that no epoch of an
earlier incarnation of the cluster is used again. If a majority of nodes lost their state
at once, no rule can recover their votes; such a cluster waits for an operator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import attrs

from ..errors import CacheringError
from ..messages import MAX_EPOCH
from .topology import MAX_STAMP, Topology

__all__ = [
    "READ_LUA",
    "SEED_FLOOR_LUA",
    "TOPOLOGY_CAS_LUA",
    "VOTE_LUA",
    "BadControlReply",
    "CasReply",
    "ControlKeys",
    "NodeControlState",
    "SeedPlan",
    "SeedReply",
    "VoteReply",
    "control_keys",
    "majority",
    "parse_cas",
    "parse_read",
    "parse_seed",
    "parse_vote",
    "plan_seed",
    "seed_args",
    "topology_cas_args",
    "vote_args",
    "voters_id",
]


class BadControlReply(CacheringError, ValueError):
    """A node answered a control script with something that is not a valid reply."""


_LUA_COMMON = r"""
local function stamp(s)
  if type(s) ~= 'string' or #s > 16 or not (s == '0' or string.match(s, '^[1-9]%d*$')) then
    return nil
  end
  local n = tonumber(s)
  if n > 9007199254740991 then return nil end
  return n
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function age_ms(born)
  return math.floor((now_us() - tonumber(born)) / 1000)
end
local function touch(key, born)
  if not born then
    born = string.format('%d', now_us())
    redis.call('HSET', key, 'born', born)
  end
  return born
end
"""

VOTE_LUA: Final = (
    _LUA_COMMON
    + r"""
-- KEYS[1] election hash; ARGV[1] epoch, ARGV[2] candidate id
local e = stamp(ARGV[1])
local cand = ARGV[2]
if not e or e < 1 or type(cand) ~= 'string' or cand == '' then
  return redis.error_reply('ERR cachering vote: bad epoch or candidate')
end
local st = redis.call('HMGET', KEYS[1], 'ready', 'epoch', 'voted_for', 'born')
local cur_s, voted = st[2], st[3] or ''
if st[1] ~= '1' or not cur_s then
  touch(KEYS[1], st[4])
  return {'NOTREADY', cur_s or '', voted}
end
local cur = tonumber(cur_s)
if e < cur or (e == cur and voted ~= cand) then
  return {'REFUSED', cur_s, voted}
end
if e > cur then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'voted_for', cand)
  redis.call('HDEL', KEYS[1], 'boot')
end
return {'GRANTED', ARGV[1], cand}
"""
)
"""Grant at most one vote per epoch; renewals by the same candidate succeed.

KEYS: election hash. ARGV: epoch (>= 1), candidate id. Reply: ``[status, epoch,
voted_for]`` with status ``GRANTED``, ``REFUSED`` (the node holds a higher epoch, or voted
for someone else in this one) or ``NOTREADY`` (the node must be seeded first).
"""

SEED_FLOOR_LUA: Final = (
    _LUA_COMMON
    + r"""
-- KEYS[1] election hash, KEYS[2] topology hash
-- ARGV[1] floor epoch, ARGV[2] born token seen by the caller, ARGV[3] min age ms,
-- ARGV[4] '1' when seeding a fresh cluster, ARGV[5] the seeder's voter set, ARGV[6] its seal
local f = stamp(ARGV[1])
local min_age = stamp(ARGV[3])
if not f or not min_age then
  return redis.error_reply('ERR cachering seed: bad floor or min age')
end
local st = redis.call('HMGET', KEYS[1], 'ready', 'epoch', 'voted_for', 'born')
local born = touch(KEYS[1], st[4])
if born ~= ARGV[2] then
  return {'CHANGED', st[2] or '', st[3] or '', born}
end
local left = min_age - age_ms(born)
if left > 0 then
  return {'TOOYOUNG', st[2] or '', st[3] or '', string.format('%d', left)}
end
-- a topology held here proves a leader existed in its epoch: never seed below it
local te = stamp(redis.call('HGET', KEYS[2], 'epoch'))
local floor_s = ARGV[1]
if te and te > f then f = te; floor_s = redis.call('HGET', KEYS[2], 'epoch') end
local cur = st[2] and stamp(st[2])
if st[1] == '1' and cur then
  if f > cur then
    redis.call('HSET', KEYS[1], 'epoch', floor_s, 'voted_for', '')
    return {'RAISED', floor_s, '', born}
  end
  return {'READY', st[2], st[3] or '', born}
end
if cur and cur > f then f = cur; floor_s = st[2] end
if ARGV[4] == '1' then
  -- a fresh cluster starts above every epoch an earlier incarnation can have reached
  local now_ms = math.floor(now_us() / 1000)
  if now_ms > f then f = now_ms; floor_s = string.format('%d', now_ms) end
end
redis.call('HSET', KEYS[1], 'epoch', floor_s, 'voted_for', '', 'ready', '1')
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'boot', '1') end
if ARGV[5] and ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[1], 'voters') == 0 then
  redis.call('HSET', KEYS[1], 'voters', ARGV[5], 'vseal', ARGV[6] or '')
end
return {'SEEDED', floor_s, '', born}
"""
)
"""Give an unready node its epoch floor (never lowering one it has) and make it ready.

KEYS: election hash, topology hash. ARGV: floor, born token (from :data:`READ_LUA`),
min age in ms, ``"1"`` for a fresh-cluster bootstrap else ``"0"``. A bootstrap floor is
at least the node's ``TIME`` in milliseconds (see ``docs/design.md``, "Epochs are never
reused"). Reply: ``[status,
epoch, voted_for, born or ms left]`` with status ``SEEDED``, ``RAISED`` or ``READY``
(already ready, floor unchanged), ``CHANGED`` (the state was lost again since the caller
read it: read again) or ``TOOYOUNG`` (wait the given ms).
"""

TOPOLOGY_CAS_LUA: Final = (
    _LUA_COMMON
    + r"""
-- KEYS[1] topology hash, KEYS[2] election hash
-- ARGV[1] epoch, ARGV[2] version, ARGV[3] payload, ARGV[4] writer (the leader of the epoch),
-- ARGV[5] seal (MAC of the payload, '' unsigned), ARGV[6] a stored payload the writer
-- found unauthenticated: if it is what is stored, it is replaced whatever its stamp
local e, v = stamp(ARGV[1]), stamp(ARGV[2])
local writer = ARGV[4]
local seal = ARGV[5] or ''
local untrusted = ARGV[6] or ''
if not e or not v or type(ARGV[3]) ~= 'string' or ARGV[3] == ''
    or type(writer) ~= 'string' or writer == '' then
  return redis.error_reply('ERR cachering topology: bad epoch, version, payload or writer')
end
local st = redis.call('HMGET', KEYS[2], 'ready', 'epoch', 'born', 'voted_for')
local t = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'payload')
local te_s, tv_s = t[1] or '', t[2] or ''
if st[1] ~= '1' or not st[2] then
  touch(KEYS[2], st[3])
  return {'NOTREADY', te_s, tv_s, st[2] or ''}
end
local cur = tonumber(st[2])
if e < cur then
  return {'STALE_EPOCH', te_s, tv_s, st[2]}
end
-- only the manager this node voted for in e writes in e (a node seeded with e as its
-- floor voted for nobody in it and cannot tell; epochs are never reused, so e has one winner)
local voted = st[4] or ''
if e == cur and voted ~= '' and voted ~= writer then
  return {'NOTVOTED', te_s, tv_s, st[2]}
end
local te, tv = stamp(t[1]), stamp(t[2])
if te and tv and not (untrusted ~= '' and t[3] == untrusted) then
  if e < te or (e == te and v < tv) then return {'OLDER', te_s, tv_s, st[2]} end
  if e == te and v == tv then
    if t[3] == ARGV[3] then return {'HELD', te_s, tv_s, st[2]} end
    return {'CONFLICT', te_s, tv_s, st[2]}
  end
end
if e > cur then
  -- no vote cast in e yet: the write is the writer's vote request, granted as VOTE would
  redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'voted_for', writer)
  redis.call('HDEL', KEYS[2], 'boot')
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'version', ARGV[2], 'payload', ARGV[3],
           'seal', seal)
return {'ACCEPTED', ARGV[1], ARGV[2], ARGV[1]}
"""
)
"""Store a topology written by the leader of its epoch, if it is newer than the stored one.

KEYS: topology hash, election hash. ARGV: epoch, version, payload, writer id, and
optionally the payload's seal (:mod:`cachering.control.seals`) and a stored payload the
writer could not authenticate (replaced if it is still the one stored). A node
takes a topology of epoch e only from the manager it voted for in e; when it has voted
in no epoch up to e yet, the write counts as that manager's vote request and is granted
(one vote per epoch still holds). Reply: ``[status, stored epoch, stored version, node
epoch]`` with status ``ACCEPTED``, ``HELD`` (this very topology is already stored: counts
as holding it), ``OLDER``, ``CONFLICT`` (same stamp, other payload), ``STALE_EPOCH``
(epoch below the node's), ``NOTVOTED`` (the node voted for another manager in this
epoch) or ``NOTREADY``. A node seeded with the epoch as its floor voted for nobody in it
and accepts the write: epochs are never reused, so only the epoch's winner can write.
"""

READ_LUA: Final = (
    _LUA_COMMON
    + r"""
-- KEYS[1] election hash, KEYS[2] topology hash
local st = redis.call('HMGET', KEYS[1], 'ready', 'epoch', 'voted_for', 'born', 'boot',
                     'voters', 'vseal')
local born = touch(KEYS[1], st[4])
local t = redis.call('HMGET', KEYS[2], 'epoch', 'version', 'payload', 'seal')
return {st[1] == '1' and '1' or '0', st[2] or '', st[3] or '', born,
        string.format('%d', age_ms(born)), st[5] and '1' or '0',
        t[1] or '', t[2] or '', t[3] or '', t[4] or '', st[6] or '', st[7] or ''}
"""
)
"""Everything a manager needs from one node in one call (starts the ``born`` clock).

KEYS: election hash, topology hash. Reply: ``[ready, epoch, voted_for, born, age_ms,
boot, topology epoch, topology version, payload, seal, voters, voters seal]``; see
:func:`parse_read`.
"""


@attrs.frozen
class ControlKeys:
    """The Redis keys (and pub/sub channel) of one cluster namespace."""

    election: str
    topology: str
    channel: str


def control_keys(namespace: str) -> ControlKeys:
    """Key names under ``namespace``: ``{ns}:ctl:election``, ``{ns}:ctl:topology``, ..."""
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
    return ControlKeys(f"{namespace}:ctl:election", f"{namespace}:ctl:topology", f"{namespace}:ctl")


def majority(cluster_size: int) -> int:
    """How many nodes make a majority of ``cluster_size`` (``n // 2 + 1``)."""
    _check_stamp("cluster_size", cluster_size, 1)
    return cluster_size // 2 + 1


def _check_stamp(name: str, value: object, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_STAMP:
        raise ValueError(f"{name} must be an int in {low}..{MAX_STAMP}, got {value!r}")
    return value


def vote_args(epoch: int, candidate: str) -> list[str]:
    """ARGV for :data:`VOTE_LUA` (KEYS: ``[keys.election]``)."""
    _check_stamp("epoch", epoch, 1)
    if not isinstance(candidate, str) or not candidate:
        raise ValueError(f"candidate must be a non-empty str, got {candidate!r}")
    return [str(epoch), candidate]


def seed_args(
    floor: int,
    born: str,
    min_age_ms: int,
    *,
    bootstrap: bool = False,
    voters: str = "",
    voters_seal: str = "",
) -> list[str]:
    """ARGV for :data:`SEED_FLOOR_LUA` (KEYS: ``[keys.election, keys.topology]``).

    ``voters`` (the cluster's voter set, see :func:`voters_id`) and its seal are stored on
    a node seeded without one: the voter set is part of the cluster's identity.
    """
    _check_stamp("floor", floor)
    _check_stamp("min_age_ms", min_age_ms)
    if not isinstance(born, str) or not born:
        raise ValueError(f"born must be the token read from the node, got {born!r}")
    if not isinstance(voters, str) or not isinstance(voters_seal, str):
        raise TypeError("voters and voters_seal must be str")
    return [str(floor), born, str(min_age_ms), "1" if bootstrap else "0", voters, voters_seal]


def voters_id(voters: Sequence[str]) -> str:
    """The canonical form of a voter set as stored on the nodes (a sorted JSON list)."""
    return json.dumps(sorted(voters), ensure_ascii=True, separators=(",", ":"))


def topology_cas_args(
    topology: Topology, writer: str | None = None, *, seal: str = "", replace: bytes = b""
) -> list[str | bytes]:
    """ARGV for :data:`TOPOLOGY_CAS_LUA` (KEYS: ``[keys.topology, keys.election]``).

    ``writer`` is the manager writing (default: the topology's ``leader``); ``seal`` the
    payload's MAC; ``replace`` a stored payload that failed authentication.
    """
    if not isinstance(topology, Topology):
        raise TypeError(f"expected a Topology, got {type(topology).__name__}")
    writer = topology.leader if writer is None else writer
    if not isinstance(writer, str) or not writer:
        raise ValueError(f"writer must be a non-empty str, got {writer!r}")
    if not isinstance(seal, str) or not isinstance(replace, (bytes, bytearray)):
        raise TypeError("seal must be a str and replace bytes")
    return [str(topology.epoch), str(topology.version), topology.to_bytes(), writer, seal, replace]


def _fields(reply: object, count: int, what: str) -> list[str]:
    if not isinstance(reply, (list, tuple)) or len(reply) != count:
        raise BadControlReply(f"{what} reply must be an array of {count}, got {reply!r:.200}")
    out = []
    for item in reply:
        if isinstance(item, (bytes, bytearray)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise BadControlReply(f"{what} reply holds non-UTF-8 bytes") from None
        if not isinstance(item, str):
            raise BadControlReply(f"{what} reply holds {type(item).__name__}, not a string")
        out.append(item)
    return out


def _opt_int(value: str, what: str, limit: int = MAX_STAMP, *, signed: bool = False) -> int | None:
    # What the scripts' own stamp() accepts: plain decimal digits, nothing above the limit
    # (an age may be negative after the node's clock stepped back).
    if value == "":
        return None
    digits = value[1:] if signed and value.startswith("-") else value
    if len(digits) > 16 or not digits.isascii() or not digits.isdigit() or int(digits) > limit:
        raise BadControlReply(f"{what}: {value[:40]!r} is not a number in 0..{limit}")
    return int(value)


def _opt_epoch(value: str, what: str) -> int | None:
    """An epoch field: refused unless :func:`~cachering.messages.epoch_in_range`."""
    return _opt_int(value, what, MAX_EPOCH - 1)


def _status(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise BadControlReply(f"{what}: unknown status {value!r}")
    return value


VoteStatus = Literal["GRANTED", "REFUSED", "NOTREADY"]
SeedStatus = Literal["SEEDED", "RAISED", "READY", "CHANGED", "TOOYOUNG"]
CasStatus = Literal["ACCEPTED", "HELD", "OLDER", "CONFLICT", "STALE_EPOCH", "NOTVOTED", "NOTREADY"]


@attrs.frozen
class VoteReply:
    """A node's answer to a vote request, with its current epoch and vote."""

    status: VoteStatus
    epoch: int | None
    voted_for: str

    @property
    def granted(self) -> bool:
        """Whether the vote was granted (or renewed)."""
        return self.status == "GRANTED"


@attrs.frozen
class SeedReply:
    """A node's answer to seeding; ``wait_ms`` is set for ``TOOYOUNG``."""

    status: SeedStatus
    epoch: int | None
    voted_for: str
    wait_ms: int = 0

    @property
    def ready(self) -> bool:
        """Whether the node is ready to vote now."""
        return self.status in ("SEEDED", "RAISED", "READY")


@attrs.frozen
class CasReply:
    """A node's answer to a topology write, with what it holds and its epoch."""

    status: CasStatus
    stored_epoch: int | None
    stored_version: int | None
    node_epoch: int | None

    @property
    def holds(self) -> bool:
        """Whether the node now holds the written topology (counts toward the majority)."""
        return self.status in ("ACCEPTED", "HELD")


@attrs.frozen
class NodeControlState:
    """What :data:`READ_LUA` returned from one node.

    ``topology`` is None when the node holds none, or when its payload is invalid or does
    not match the stored stamp (then ``topology_error`` says why). ``topology_payload``
    and ``topology_seal`` are the stored bytes and their seal, as read.
    """

    ready: bool
    epoch: int | None
    voted_for: str
    born: str
    age_ms: int
    boot: bool
    topology_epoch: int | None
    topology_version: int | None
    topology: Topology | None
    topology_error: str | None = None
    topology_payload: bytes = b""
    topology_seal: str = ""
    voters: str = ""
    voters_seal: str = ""

    @property
    def fresh(self) -> bool:
        """No election state and no topology: the node never joined, or lost everything."""
        return not self.ready and self.epoch is None and self.topology_epoch is None


def parse_vote(reply: object) -> VoteReply:
    """Decode a :data:`VOTE_LUA` reply."""
    status, epoch, voted = _fields(reply, 3, "vote")
    allowed = ("GRANTED", "REFUSED", "NOTREADY")
    return VoteReply(_status(status, allowed, "vote"), _opt_epoch(epoch, "vote"), voted)  # type: ignore[arg-type]


def parse_seed(reply: object) -> SeedReply:
    """Decode a :data:`SEED_FLOOR_LUA` reply."""
    status, epoch, voted, extra = _fields(reply, 4, "seed")
    allowed = ("SEEDED", "RAISED", "READY", "CHANGED", "TOOYOUNG")
    status = _status(status, allowed, "seed")
    wait = (_opt_int(extra, "seed") or 0) if status == "TOOYOUNG" else 0
    return SeedReply(status, _opt_epoch(epoch, "seed"), voted, wait)  # type: ignore[arg-type]


def parse_cas(reply: object) -> CasReply:
    """Decode a :data:`TOPOLOGY_CAS_LUA` reply."""
    status, te, tv, ne = _fields(reply, 4, "topology")
    allowed = ("ACCEPTED", "HELD", "OLDER", "CONFLICT", "STALE_EPOCH", "NOTVOTED", "NOTREADY")
    return CasReply(
        _status(status, allowed, "topology"),  # type: ignore[arg-type]
        _opt_epoch(te, "topology"),
        _opt_int(tv, "topology"),
        _opt_epoch(ne, "topology"),
    )


def parse_read(reply: object) -> NodeControlState:
    """Decode a :data:`READ_LUA` reply; an invalid stored topology is reported, not raised."""
    if isinstance(reply, (list, tuple)) and len(reply) == 12:
        payload_raw = reply[8]
        head = _fields([*reply[:8], "", *reply[9:]], 12, "read")
    else:
        raise BadControlReply(f"read reply must be an array of 12, got {reply!r:.200}")
    ready, epoch, voted, born, age, boot, te_s, tv_s, _, seal, voters, vseal = head
    te, tv = _opt_epoch(te_s, "read"), _opt_int(tv_s, "read")
    topology: Topology | None = None
    error: str | None = None
    if isinstance(payload_raw, str):
        payload_raw = payload_raw.encode("utf-8")
    if not isinstance(payload_raw, (bytes, bytearray)):
        raise BadControlReply("read reply: topology payload is not a string")
    if payload_raw:
        try:
            topology = Topology.from_bytes(bytes(payload_raw))
        except ValueError as exc:
            error = f"invalid topology payload: {exc}"
        else:
            if topology.stamp != (te, tv):
                error = f"payload stamp {topology.stamp} != stored stamp {(te, tv)}"
                topology = None
    return NodeControlState(
        ready=ready == "1",
        epoch=_opt_epoch(epoch, "read"),
        voted_for=voted,
        born=born,
        age_ms=_opt_int(age, "read", signed=True) or 0,
        boot=boot == "1",
        topology_epoch=te,
        topology_version=tv,
        topology=topology,
        topology_error=error,
        topology_payload=bytes(payload_raw),
        topology_seal=seal,
        voters=voters,
        voters_seal=vseal,
    )


@attrs.frozen
class SeedPlan:
    """The floor to seed a node with, and whether it is a fresh-cluster bootstrap."""

    floor: int
    bootstrap: bool


def plan_seed(
    cluster_size: int,
    states: Mapping[str, NodeControlState | None],
    target: str,
    *,
    known_epoch: int = 0,
    min_age_ms: int = 0,
) -> SeedPlan | None:
    """Decide whether (and with which floor) ``target`` may be seeded, or None to wait.

    ``states`` maps every configured node id to its :func:`parse_read` result (None when
    it did not answer). The other nodes must have been read *after* the read of
    ``target`` that shows ``age_ms >= min_age_ms``. ``known_epoch`` is the highest epoch
    the caller has seen anywhere. See the module docstring for why this is safe.
    """
    quorum = majority(cluster_size)
    _check_stamp("known_epoch", known_epoch)
    me = states.get(target)
    if me is None or me.ready or me.age_ms < min_age_ms:
        return None
    answered = [s for s in states.values() if s is not None]
    others_ready = [s for n, s in states.items() if n != target and s is not None and s.ready]
    epochs = [known_epoch]
    epochs += [s.epoch for s in answered if s.epoch is not None]
    epochs += [s.topology_epoch for s in answered if s.topology_epoch is not None]
    if len(others_ready) >= quorum:
        return SeedPlan(max(epochs), bootstrap=False)
    fresh_cluster = (
        len(states) == cluster_size
        and len(answered) == cluster_size
        and all(s.topology_epoch is None for s in answered)
        and all(s.fresh or (s.ready and s.boot) for s in answered)
    )
    if fresh_cluster:
        return SeedPlan(max(epochs), bootstrap=True)
    return None
