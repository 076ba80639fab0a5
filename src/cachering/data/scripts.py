"""The Lua scripts every data write goes through, and helpers that build their arguments.

``APPLY`` writes many keys in one call, each only if the incoming version is newer than the
stored one (see :mod:`cachering.data.values`). It can also record hints (keys that some
node missed) in the same round trip.

Arguments::

    KEYS   data keys k1..kn
    ARGV   limit  g  [hint_key overflow_key m member*m]*g  mode  first  expiry  [value]*n
       or  limit  g  [hint_key overflow_key m member*m]*g  mode  first  "*"  [value expiry]*n

``limit`` bounds each hint set; past it the overflow key is set to ``1`` instead. An
expiry is ``0`` for none, absolute Unix milliseconds (``PXAT``; what repairs copy), or
``-ttl``: ``ttl`` milliseconds after the server's own clock (``TIME``) at the write, which
is what every new write sends, so that expiry follows the servers' clocks and not the
writer's. There is one ``expiry`` for every key of the call (what a ``set_many`` writes),
or ``*`` and one per key (what replica batches and repairs mix). With no keys, ``mode``,
``first`` and the expiry may be left out.

The first ``first`` entries are *first-copy* writes: the writer's own write on the copy
that takes it first (every other entry is a replica or repair write of a version another
copy already holds). A first-copy write whose version is older than the stored one (its
writer's clock is behind another writer's) is not dropped: it is written under the
version just above the stored one (the stored clock plus one, then the writer's id), so
the write the first copy takes last is its newest, whatever the writers' clocks say.
Unless the stored copy is one the same writer stamped itself: a writer's clock only goes
forward, so its own older version is an earlier write of it arriving late (a request
that timed out and reached the node after the writer's next write), and it is dropped
like any older version (``0``), not restamped over the newer write.

The reply is a string with one character per key: ``0`` not applied (the stored copy is
as new or newer; for a first-copy write, this very version or a newer one of the same
writer is already there), ``1`` applied, ``2`` applied over a live (non-tombstone) value,
``3`` and ``4`` the same as ``1`` and ``2`` under a new version; then the 16 bytes of
each new version, in key order.

``mode`` is the sum of two flags (:func:`apply_mode` computes it). ``1``, *distinct*:
the caller knows that no key appears twice (a ``set_many``, whose keys come from a
mapping); without it (replica batches gather several writes) a repeated key's entries
are each compared with the newest the call has applied before it, and only the key's
last applied entry is written, bookkeeping that is a tenth of the script's work per key.
``2``, *large*: some value is over :data:`LARGE_VALUE` bytes; such keys have the stored
copy's 18-byte header read with ``GETRANGE`` instead of the whole value with ``MGET``.

``APPLY_ONE`` is the same first-copy write for a single key without hints, which is what
every ``set`` and ``delete`` sends first: ``KEYS`` holds the key, ``ARGV`` its value and
expiry, and the reply is one such character (and a new version after ``3`` or ``4``).
With fewer arguments and no tables it costs the server a third less than ``APPLY`` with
one key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..resp.script import Script
from .keys import hint_keys
from .values import HEADER_LUA

__all__ = [
    "APPLY",
    "APPLY_ONE",
    "APPLY_ONE_SOURCE",
    "APPLY_SOURCE",
    "EACH",
    "LARGE_VALUE",
    "READ_COPIES",
    "HintGroup",
    "apply_args",
    "apply_argv",
    "apply_mode",
    "hint_keys",
]

LARGE_VALUE = 2048
"""Past this many bytes a value is *large*: the write scripts read the stored copy's
header alone (``GETRANGE``) rather than the whole copy, which is likely as large."""


# The pieces both scripts share: version comparison, restamping, expiry.
_COMMON = (
    HEADER_LUA
    + r"""
-- How the incoming value val compares with the stored copy c: 1 newer (also when c is
-- not in the format: a foreign value is overwritten), 0 the same version, -1 older; and
-- whether c is live.
local function compare(c, val)
  if not (c and #c >= HEADER_SIZE and byte(c, 1) == FORMAT) then
    return 1, false
  end
  -- the version is big-endian: the first differing byte decides. The clock (its first 8
  -- bytes) nearly always differs, so the writer id (the last 8) is read only on a tie
  local f = VERSION_FIRST
  local c1, c2, c3, c4, c5, c6, c7, c8 = byte(c, f, f + 7)
  local v1, v2, v3, v4, v5, v6, v7, v8 = byte(val, f, f + 7)
  local live = byte(c, FLAGS_AT) % 2 == 0
  for half = 1, 2 do
    if v1 ~= c1 then return v1 > c1 and 1 or -1, live
    elseif v2 ~= c2 then return v2 > c2 and 1 or -1, live
    elseif v3 ~= c3 then return v3 > c3 and 1 or -1, live
    elseif v4 ~= c4 then return v4 > c4 and 1 or -1, live
    elseif v5 ~= c5 then return v5 > c5 and 1 or -1, live
    elseif v6 ~= c6 then return v6 > c6 and 1 or -1, live
    elseif v7 ~= c7 then return v7 > c7 and 1 or -1, live
    elseif v8 ~= c8 then return v8 > c8 and 1 or -1, live
    elseif half == 1 then
      c1, c2, c3, c4, c5, c6, c7, c8 = byte(c, f + 8, VERSION_LAST)
      v1, v2, v3, v4, v5, v6, v7, v8 = byte(val, f + 8, VERSION_LAST)
    end
  end
  return 0, live
end
-- Whether the stored copy c carries val's writer id as is (top bit clear): a version that
-- writer stamped itself. A writer's clock only goes forward, so a first-copy write older
-- than such a copy is an earlier write of the same writer arriving late (a request that
-- timed out, delivered after the writer's next write): it must not be restamped above it.
local function own_newer(c, val)
  local w = VERSION_FIRST + 8
  return string.sub(c, w, VERSION_LAST) == string.sub(val, w, VERSION_LAST)
end
-- A first-copy write of val older than the stored copy c (the writer's clock is behind
-- another's): (value to write, reply flag, new version or nil). It is written under the
-- version just above c's (c's clock plus one, then val's writer id with its top bit set),
-- so the write that arrives last at the first copy is the newest. Writers never set that
-- bit themselves, so no version a writer stamps can equal one given here: two different
-- writes never share a version.
local function restamp(c, val, live)
  local clock = {byte(c, VERSION_FIRST, VERSION_FIRST + 7)}
  local j = 8
  while j > 0 and clock[j] == 255 do
    clock[j] = 0
    j = j - 1
  end
  if j == 0 then
    return val, live and '2' or '1', nil -- a clock at its maximum: taken as foreign
  end
  clock[j] = clock[j] + 1
  local w = byte(val, VERSION_FIRST + 8)
  local v = string.char(unpack(clock)) .. string.char(w < 128 and w + 128 or w)
    .. string.sub(val, VERSION_FIRST + 9, VERSION_LAST)
  return string.sub(val, 1, VERSION_FIRST - 1) .. v .. string.sub(val, VERSION_LAST + 1),
    live and '4' or '3', v
end
-- The PXAT argument of an expiry argument x, or nil for none ('0'). A negative x is -ttl:
-- ttl ms after this server's clock, so expiry does not depend on the writer's clock.
local now
local function pxat_of(x)
  if x == '0' then
    return nil
  end
  if byte(x, 1) ~= 45 then
    return x
  end
  if now == nil then
    -- TIME before writes needs effects replication: the default from Redis 5, the only
    -- mode from 7.0 (where this call is a no-op)
    if redis.replicate_commands then
      redis.replicate_commands()
    end
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return string.format('%.0f', now - tonumber(x))
end
"""
)

APPLY_SOURCE = (
    _COMMON
    + r"""
local limit = tonumber(ARGV[1])
local a = 3
for _ = 1, tonumber(ARGV[2]) do
  local hk, ok, m = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local size = redis.call('SCARD', hk)
  for j = a, a + m - 1 do
    if size < limit then
      size = size + redis.call('SADD', hk, ARGV[j])
    elseif redis.call('SISMEMBER', hk, ARGV[j]) == 0 then
      redis.call('SET', ok, '1')
    end
  end
  a = a + m
end
local n = #KEYS
if n == 0 then
  return ''
end
local mode, firsts = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
local distinct, large = mode % 2 == 1, mode >= 2
a = a + 2
-- value i is ARGV[v + step * i], its expiry ARGV[v + step * i + 1] or the shared one
local shared = ARGV[a]
local step = shared == '*' and 2 or 1
local v = a + 1 - step
-- Read all current copies with one MGET per 4000 keys (MGET answers false for a missing
-- key and for a key of another type). When the caller says some incoming value is over
-- 2 KiB, such a key has its copy's header read alone with GETRANGE instead ('' when
-- missing): MGET would copy a value that is likely as large into Lua for a header.
local cur = {}
if not large then
  for s = 1, n, 4000 do
    local got = redis.call('MGET', unpack(KEYS, s, math.min(s + 3999, n)))
    for j = 1, #got do
      cur[s + j - 1] = got[j]
    end
  end
else
  local small, m = {}, 0
  for i = 1, n do
    if #ARGV[v + step * i] > LARGE_VALUE then
      local c = redis.pcall('GETRANGE', KEYS[i], 0, HEADER_SIZE - 1)
      cur[i] = type(c) == 'string' and c -- false for a key of another type
    else
      m = m + 1
      small[m] = i
    end
  end
  for s = 1, m, 4000 do
    local keys = {}
    for j = s, math.min(s + 3999, m) do
      keys[j - s + 1] = KEYS[small[j]]
    end
    local got = redis.call('MGET', unpack(keys))
    for j = 1, #got do
      cur[small[s + j - 1]] = got[j]
    end
  end
end
-- out: one flag per key; moved: values taken under a new version; stamps: those versions
local out, last, moved, stamps = {}, {}, {}, {}
for i = 1, n do
  local key, val = KEYS[i], ARGV[v + step * i]
  local c = cur[i]
  if not distinct then
    -- a key named twice in one call is compared with what the call applied before
    local p = last[key]
    if p then
      c = moved[p] or ARGV[v + step * p]
    end
  end
  local cmp, live = compare(c, val)
  if cmp > 0 then
    out[i] = live and '2' or '1'
  elseif cmp < 0 and i <= firsts and not own_newer(c, val) then
    local stamp
    moved[i], out[i], stamp = restamp(c, val, live)
    stamps[#stamps + 1] = stamp
  else
    -- as new or newer (a first copy: this very write, a retry, or the same writer's later one)
    out[i] = '0'
  end
  if not distinct and out[i] ~= '0' then
    last[key] = i
  end
end
-- Write each key's last applied entry: those without expiry in one MSET per 2000 keys,
-- those with one (PXAT, absolute) one SET each.
local mset, m = {}, 0
local pxat = step == 1 and pxat_of(shared) or nil
for i = 1, n do
  local key = KEYS[i]
  if (distinct and out[i] ~= '0') or (not distinct and last[key] == i) then
    local val = moved[i] or ARGV[v + step * i]
    if step == 2 then
      pxat = pxat_of(ARGV[v + 2 * i + 1])
    end
    if pxat == nil then
      mset[m + 1] = key
      mset[m + 2] = val
      m = m + 2
      if m == 4000 then
        redis.call('MSET', unpack(mset, 1, m))
        m = 0
      end
    else
      redis.call('SET', key, val, 'PXAT', pxat)
    end
  end
end
if m > 0 then
  redis.call('MSET', unpack(mset, 1, m))
end
return table.concat(out) .. table.concat(stamps)
"""
).replace("LARGE_VALUE", str(LARGE_VALUE))
"""Source of the apply-if-newer write script."""

APPLY = Script(APPLY_SOURCE)
"""The apply-if-newer script for many keys: replica writes, repairs and all but the
single-key writes below."""


APPLY_ONE_SOURCE = (
    _COMMON
    + r"""
local key = KEYS[1]
local c
if #ARGV[1] > LARGE_VALUE then
  -- the header alone, not a copy of what is likely as large (a missing key reads as '')
  c = redis.pcall('GETRANGE', key, 0, HEADER_SIZE - 1)
else
  c = redis.pcall('GET', key) -- cheaper than GETRANGE for small values
end
if type(c) == 'table' then
  c = false -- a key of another type (an error reply): overwritten, as MGET would have it
end
local val, flag, stamp = ARGV[1], nil, nil
local cmp, live = compare(c, val)
if cmp > 0 then
  flag = live and '2' or '1'
elseif cmp == 0 or own_newer(c, val) then
  return '0' -- this very write is already there (a retry), or the same writer's later one
else
  val, flag, stamp = restamp(c, val, live)
end
local pxat = pxat_of(ARGV[2])
if pxat == nil then
  redis.call('SET', key, val)
else
  redis.call('SET', key, val, 'PXAT', pxat)
end
return stamp and flag .. stamp or flag
"""
).replace("LARGE_VALUE", str(LARGE_VALUE))
"""Source of the single-key write script."""

APPLY_ONE = Script(APPLY_ONE_SOURCE)
"""``APPLY`` for one key and no hints, with shorter arguments: what every ``set`` runs."""


HintGroup = tuple[bytes, bytes, Sequence[bytes]]
"""(hint set key, overflow key, raw keys the missed node needs); see
:func:`cachering.data.keys.hint_keys`."""


EACH = b"*"
"""The ``expiry`` argument that announces one ``pxat`` per key."""


def apply_mode(distinct: bool, stored: Iterable[bytes]) -> int:
    """``APPLY``'s ``mode`` argument for values ``stored``: 1 if no key repeats, plus 2 if
    some value is over :data:`LARGE_VALUE` bytes."""
    large = max(map(len, stored), default=0) > LARGE_VALUE
    return (1 if distinct else 0) + (2 if large else 0)


def apply_argv(
    stored: Sequence[bytes],
    pxats: int | Sequence[int],
    *,
    hint_limit: int,
    distinct: bool,
    hints: Sequence[HintGroup] = (),
    first: int = 0,
) -> list[bytes | int]:
    """``APPLY``'s ARGV: the hint groups, then the values ``stored`` (the caller's KEYS
    are their Redis keys, in the same order) with one shared expiry (an int) or one per
    value (sent in the shared form when they agree). An expiry is 0 (none), a ``PXAT``
    or ``-ttl`` in ms (counted from the server's clock).

    ``distinct``: the caller knows that no key appears twice; ``first``: how many leading
    values are first-copy writes (see the module docstring). Every caller of ``APPLY``
    builds its arguments here."""
    argv: list[bytes | int] = [hint_limit, len(hints)]
    for hint_key, overflow_key, members in hints:
        argv.append(hint_key)
        argv.append(overflow_key)
        argv.append(len(members))
        argv.extend(members)
    if not stored:
        return argv
    argv.append(apply_mode(distinct, stored))
    argv.append(first)
    if not isinstance(pxats, int):
        first = pxats[0] if pxats else 0
        if any(p != first for p in pxats):
            n = len(argv)
            argv.append(EACH)
            argv += [EACH] * (2 * len(stored))
            argv[n + 1 :: 2] = stored
            argv[n + 2 :: 2] = pxats
            return argv
        pxats = first
    argv.append(pxats)
    argv.extend(stored)
    return argv


def apply_args(
    entries: Iterable[tuple[bytes, bytes, int]],
    *,
    hint_limit: int,
    hints: Sequence[HintGroup] = (),
    distinct: bool = False,
    first: int = 0,
) -> tuple[list[bytes], list[bytes | int]]:
    """KEYS and ARGV for ``APPLY`` from ``(redis_key, stored_value, expiry)`` entries
    (:func:`apply_argv` of their values)."""
    keys: list[bytes] = []
    stored: list[bytes] = []
    pxats: list[int] = []
    for key, value, pxat in entries:
        keys.append(key)
        stored.append(value)
        pxats.append(pxat)
    return keys, apply_argv(
        stored, pxats, hint_limit=hint_limit, distinct=distinct, hints=hints, first=first
    )


# Each key's stored value and absolute expiry in ms (-1: none, -2: no key). PEXPIRETIME
# exists from Redis 7.0; before that PTTL plus the server's clock gives the same within a
# millisecond (both are read in the same script run).
READ_COPIES = Script(
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
"""Each key's stored value and absolute expiry in ms: what read repair, resync and the
sweep copy."""
