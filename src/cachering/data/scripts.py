"""The Lua scripts every data write goes through, and helpers that build their arguments.

``APPLY`` writes many keys in one call, each only if the incoming version is newer than the
stored one (see :mod:`cachering.data.values`), with an absolute expiry (``PXAT``) computed once by
the writer. It can also record hints (keys that some node missed) in the same round trip.

Arguments::

    KEYS   data keys k1..kn
    ARGV   limit  g  [hint_key overflow_key m member*m]*g  mode  expiry  [value]*n
       or  limit  g  [hint_key overflow_key m member*m]*g  mode  "*"  [value pxat]*n

``limit`` bounds each hint set; past it the overflow key is set to ``1`` instead. The
expiry is absolute Unix milliseconds (``PXAT``), ``0`` for none: one ``expiry`` for every
key of the call (what a ``set_many`` writes), or ``*`` and one ``pxat`` per key (what
replica batches and repairs mix). With no keys, ``mode`` and the expiry may be left
out. The reply is a string with one character per key: ``0`` not applied (the stored copy
is as new or newer), ``1`` applied, ``2`` applied over a live (non-tombstone) value.

``mode`` is the sum of two flags (:func:`apply_mode` computes it). ``1``, *distinct*:
the caller knows that no key appears twice (a ``set_many``, whose keys come from a
mapping); without it (replica batches gather several writes) a repeated key's entries
are each compared with the newest the call has applied before it, and only the key's
last applied entry is written, bookkeeping that is a tenth of the script's work per key.
``2``, *large*: some value is over :data:`LARGE_VALUE` bytes; such keys have the stored
copy's 18-byte header read with ``GETRANGE`` instead of the whole value with ``MGET``.

``APPLY_ONE`` is the same write for a single key without hints, which is what every
``set`` sends: ``KEYS`` holds the key, ``ARGV`` its value and expiry (``0`` for none), and
the reply is one such character. With fewer arguments and no tables it costs the server
a third less than ``APPLY`` with one key.
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
    "HintGroup",
    "apply_args",
    "apply_argv",
    "apply_mode",
    "hint_keys",
]

LARGE_VALUE = 2048
"""Past this many bytes a value is *large*: the write scripts read the stored copy's
header alone (``GETRANGE``) rather than the whole copy, which is likely as large."""


# The version comparison both scripts share.
_NEWER = (
    HEADER_LUA
    + r"""
-- Whether the incoming value val is newer than the stored copy c (false if the copy is
-- not in the format: a foreign value is overwritten), and whether c is live.
local function newer(c, val)
  if not is_ours(c) then
    return true, false
  end
  -- the version is big-endian: the first differing byte decides. The clock (its first 8
  -- bytes) nearly always differs, so the writer id (the last 8) is read only on a tie
  local f = VERSION_FIRST
  local c1, c2, c3, c4, c5, c6, c7, c8 = byte(c, f, f + 7)
  local v1, v2, v3, v4, v5, v6, v7, v8 = byte(val, f, f + 7)
  local live = is_live(c)
  for half = 1, 2 do
    if v1 ~= c1 then return v1 > c1, live
    elseif v2 ~= c2 then return v2 > c2, live
    elseif v3 ~= c3 then return v3 > c3, live
    elseif v4 ~= c4 then return v4 > c4, live
    elseif v5 ~= c5 then return v5 > c5, live
    elseif v6 ~= c6 then return v6 > c6, live
    elseif v7 ~= c7 then return v7 > c7, live
    elseif v8 ~= c8 then return v8 > c8, live
    elseif half == 1 then
      c1, c2, c3, c4, c5, c6, c7, c8 = byte(c, f + 8, VERSION_LAST)
      v1, v2, v3, v4, v5, v6, v7, v8 = byte(val, f + 8, VERSION_LAST)
    end
  end
  return false, live -- the same version: keep the stored copy
end
"""
)

APPLY_SOURCE = (
    _NEWER
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
local mode = tonumber(ARGV[a])
local distinct, large = mode % 2 == 1, mode >= 2
a = a + 1
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
local out, last = {}, {}
for i = 1, n do
  local key, val = KEYS[i], ARGV[v + step * i]
  local c = cur[i]
  if not distinct then
    -- a key named twice in one call is compared with what the call applied before
    local p = last[key]
    if p then
      c = ARGV[v + step * p]
    end
  end
  local apply, live = newer(c, val)
  if apply then
    if not distinct then
      last[key] = i
    end
    out[i] = live and '2' or '1'
  else
    out[i] = '0'
  end
end
-- Write each key's last applied entry: those without expiry in one MSET per 2000 keys,
-- those with one (PXAT, absolute) one SET each.
local mset, m = {}, 0
for i = 1, n do
  local key = KEYS[i]
  if (distinct and out[i] ~= '0') or (not distinct and last[key] == i) then
    local val, pxat = ARGV[v + step * i], shared
    if step == 2 then
      pxat = ARGV[v + 2 * i + 1]
    end
    if pxat == '0' then
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
return table.concat(out)
"""
).replace("LARGE_VALUE", str(LARGE_VALUE))
"""Source of the apply-if-newer write script."""

APPLY = Script(APPLY_SOURCE)
"""The apply-if-newer script for many keys: replica writes, repairs and all but the
single-key writes below."""


APPLY_ONE_SOURCE = (
    _NEWER
    + r"""
local key, val, pxat = KEYS[1], ARGV[1], ARGV[2]
local c
if #val > LARGE_VALUE then
  -- the header alone, not a copy of what is likely as large (a missing key reads as '')
  c = redis.pcall('GETRANGE', key, 0, HEADER_SIZE - 1)
else
  c = redis.pcall('GET', key) -- cheaper than GETRANGE for small values
end
if type(c) == 'table' then
  c = false -- a key of another type (an error reply): overwritten, as MGET would have it
end
local apply, live = newer(c, val)
if not apply then
  return '0'
end
if pxat == '0' then
  redis.call('SET', key, val)
else
  redis.call('SET', key, val, 'PXAT', pxat)
end
return live and '2' or '1'
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
) -> list[bytes | int]:
    """``APPLY``'s ARGV: the hint groups, then the values ``stored`` (the caller's KEYS
    are their Redis keys, in the same order) with one shared absolute expiry (an int) or
    one per value (sent in the shared form when they agree).

    ``distinct``: the caller knows that no key appears twice. Every caller of ``APPLY``
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
) -> tuple[list[bytes], list[bytes | int]]:
    """KEYS and ARGV for ``APPLY`` from ``(redis_key, stored_value, pxat)`` entries
    (:func:`apply_argv` of their values)."""
    keys: list[bytes] = []
    stored: list[bytes] = []
    pxats: list[int] = []
    for key, value, pxat in entries:
        keys.append(key)
        stored.append(value)
        pxats.append(pxat)
    return keys, apply_argv(stored, pxats, hint_limit=hint_limit, distinct=distinct, hints=hints)
