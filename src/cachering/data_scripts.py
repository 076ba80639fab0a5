"""The Lua script every data write goes through, and helpers that build its arguments.

``APPLY`` writes many keys in one call, each only if the incoming version is newer than the
stored one (see :mod:`cachering.values`), with an absolute expiry (``PXAT``) computed once by
the writer. It can also record hints (keys that some node missed) in the same round trip.

Arguments::

    KEYS   data keys k1..kn
    ARGV   limit  g  [hint_key overflow_key m member*m]*g  [value pxat]*n

``limit`` bounds each hint set; past it the overflow key is set to ``1`` instead. ``pxat``
is absolute Unix milliseconds, ``0`` for no expiry. The reply is a string with one
character per key: ``0`` not applied (the stored copy is as new or newer), ``1`` applied,
``2`` applied over a live (non-tombstone) value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["APPLY_SOURCE", "HintGroup", "apply_args", "hint_keys"]

APPLY_SOURCE = r"""
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
local out = {}
local unpack = struct.unpack
for i = 1, #KEYS do
  local key, val, pxat = KEYS[i], ARGV[a], ARGV[a + 1]
  a = a + 2
  -- only the header is needed: GETRANGE avoids copying large values into Lua
  local cur = redis.pcall('GETRANGE', key, 0, 17)
  if type(cur) == 'table' then
    -- not a string: nothing of ours, replace it
    redis.call('DEL', key)
    cur = ''
  end
  local apply, live = true, false
  if #cur == 18 and string.byte(cur, 1) == 1 then
    live = string.byte(cur, 18) % 2 == 0
    -- the version is 16 big-endian bytes: compare them as four 32-bit numbers
    local c1, c2, c3, c4 = unpack('>I4I4I4I4', cur, 2)
    local v1, v2, v3, v4 = unpack('>I4I4I4I4', val, 2)
    if v1 ~= c1 then
      apply = v1 > c1
    elseif v2 ~= c2 then
      apply = v2 > c2
    elseif v3 ~= c3 then
      apply = v3 > c3
    else
      apply = v4 > c4
    end
  end
  if apply then
    if pxat == '0' then
      redis.call('SET', key, val)
    else
      redis.call('SET', key, val, 'PXAT', pxat)
    end
    out[i] = live and '2' or '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
"""
"""Source of the apply-if-newer write script."""


HintGroup = tuple[bytes, bytes, Sequence[bytes]]
"""(hint set key, overflow key, raw keys the missed node needs)."""


def hint_keys(namespace: str, node_id: str) -> tuple[bytes, bytes]:
    """The hint set key and overflow flag key for the node ``node_id``."""
    return (
        f"{namespace}:hint:{node_id}".encode(),
        f"{namespace}:hintoverflow:{node_id}".encode(),
    )


def apply_args(
    entries: Iterable[tuple[bytes, bytes, int]],
    *,
    hint_limit: int,
    hints: Sequence[HintGroup] = (),
) -> tuple[list[bytes], list[bytes | int]]:
    """KEYS and ARGV for ``APPLY`` from ``(redis_key, stored_value, pxat)`` entries."""
    keys: list[bytes] = []
    argv: list[bytes | int] = [hint_limit, len(hints)]
    for hint_key, overflow_key, members in hints:
        argv.append(hint_key)
        argv.append(overflow_key)
        argv.append(len(members))
        argv.extend(members)
    for key, value, pxat in entries:
        keys.append(key)
        argv.append(value)
        argv.append(pxat)
    return keys, argv
