"""The servers' clock as a manager estimates it, for versions and expiry.

Versions and absolute expiries are wall-clock milliseconds. The writer's own clock may be
off by minutes (an app host without NTP), so cachering takes them from the servers'
clock instead: :class:`ServerTime` keeps the offset between this process's clock and a
server's ``TIME``, measured at the first write and again once it is ``refresh`` seconds
old (loop time), and answers local time plus that offset. Until a first measurement
succeeds, :meth:`ServerTime.known` is False and writes send their expiry relative to
the server's clock (``-ttl``, see :mod:`cachering.data.scripts`).
"""

from __future__ import annotations

import time

import anyio

from ..errors import NodeUnavailable, ResponseError
from ..resp.pool import Pool

__all__ = ["ServerTime"]


_EARLIEST, _LATEST = 946_684_800_000, 4_102_444_800_000  # 2000 and 2100, Unix ms


def _local_ms() -> int:
    return time.time_ns() // 1_000_000


class ServerTime:
    """Unix milliseconds on the servers' clock: this process's clock plus a measured offset."""

    __slots__ = ("_due", "_refresh", "known", "offset")

    def __init__(self, *, refresh: float = 10.0) -> None:
        self.offset = 0
        """Server clock minus local clock, in ms (0 until measured)."""
        self.known = False
        """Whether a measurement succeeded."""
        self._refresh = refresh
        self._due = -float("inf")

    def now_ms(self) -> int:
        """The servers' clock now, as estimated (the local clock until measured)."""
        return time.time_ns() // 1_000_000 + self.offset

    def stale(self) -> bool:
        """Whether it is time to measure again (loop time)."""
        return anyio.current_time() >= self._due

    async def measure(self, pool: Pool) -> None:
        """Read ``TIME`` on ``pool``'s node and keep the offset (the middle of the round trip
        against the server's answer). A failure keeps the last offset and retries in a
        second; a reply that is not a time is ignored the same way."""
        self._due = anyio.current_time() + 1.0
        before = _local_ms()
        try:
            reply = await pool.execute("TIME")
            server = int(reply[0]) * 1000 + int(reply[1]) // 1000
        except (NodeUnavailable, ResponseError, TypeError, ValueError, IndexError):
            return
        if not _EARLIEST <= server <= _LATEST:
            return  # not a plausible clock: keep what we had
        after = _local_ms()
        self.offset = server - (before + after) // 2
        self.known = True
        self._due = anyio.current_time() + self._refresh
