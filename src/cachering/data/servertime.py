"""The servers' clock as a manager estimates it, for versions and expiry.

Versions and absolute expiries are wall-clock milliseconds. The writer's own clock may be
off by minutes (an app host without NTP) or step while it runs, so cachering takes them
from the servers' clock instead: :class:`ServerTime` reads a server's ``TIME`` at the
first write and again once the reading is ``refresh`` seconds old, and answers that
reading plus the loop time (monotonic) elapsed since, so the local wall clock plays no
part. Until a first reading succeeds, :attr:`ServerTime.known` is False, the local clock
stands in for versions, and writes send their expiry relative to the server's clock
(``-ttl``, see :mod:`cachering.data.scripts`).
"""

from __future__ import annotations

import math

import anyio

from ..errors import NodeUnavailable, ResponseError
from ..resp.pool import Pool
from ..wallclock import wall_ms

__all__ = ["ServerTime"]


_EARLIEST, _LATEST = 946_684_800_000, 4_102_444_800_000  # 2000 and 2100, Unix ms


class ServerTime:
    """Unix milliseconds on the servers' clock: the last ``TIME`` reading plus the loop
    time elapsed since (the local wall clock until a first reading)."""

    __slots__ = ("_at", "_due", "_pending", "_refresh", "_server", "known")

    def __init__(self, *, refresh: float = 10.0) -> None:
        self.known = False
        """Whether a reading succeeded."""
        self._server = 0  # ms, at loop time _at
        self._at = 0.0
        self._refresh = refresh
        self._due = -math.inf
        self._pending: anyio.Event | None = None  # a first reading in flight

    def now_ms(self) -> int:
        """The servers' clock now, as estimated."""
        if not self.known:
            return wall_ms()
        return self._server + int((anyio.current_time() - self._at) * 1000)

    def stale(self) -> bool:
        """Whether it is time to read the servers' clock again (loop time), or a first
        reading is still in flight (writers then wait for it, so that every copy of their
        writes gets one absolute expiry)."""
        return anyio.current_time() >= self._due or self._pending is not None

    async def measure(self, pool: Pool) -> None:
        """Read ``TIME`` on ``pool``'s node, taken as the server's clock at the end of the
        round trip: the estimate is never ahead of the server (at most a round trip
        behind), so no expiry comes late. A failure keeps the last reading and retries in
        a second; a reply that is not a plausible time is ignored the same way."""
        if self._pending is not None:
            await self._pending.wait()  # the first reading, taken by another writer
            return
        self._due = anyio.current_time() + 1.0
        first = None if self.known else anyio.Event()
        self._pending = first
        try:
            reply = await pool.execute("TIME")
            server = int(reply[0]) * 1000 + int(reply[1]) // 1000
        except (NodeUnavailable, ResponseError, TypeError, ValueError, IndexError):
            return
        finally:
            if first is not None:
                self._pending = None
                first.set()
        if not _EARLIEST <= server <= _LATEST:
            return  # not a plausible clock: keep what we had
        self._at = anyio.current_time()
        self._server = server
        self.known = True
        self._due = self._at + self._refresh
