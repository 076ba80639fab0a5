"""Logging for a service's unexpected exceptions: the traceback once per burst.

A service that must keep running (the replica synchronizer, the near-cache subscriber)
catches what it did not expect, counts it and carries on. :class:`BurstLog` logs the
first exception of a burst with its traceback, stays quiet while more follow within
``quiet`` seconds of each other, and says how many it held back when the next burst
starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["BurstLog"]


class BurstLog:
    """Log ``what`` failing on ``logger``, with the traceback, once per burst."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        quiet: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._quiet = quiet
        self._clock = clock
        self._last: float | None = None
        self.held_back = 0
        """Exceptions of the current burst that were not logged."""

    def exception(self, exc: BaseException) -> None:
        """Note ``exc``: logged if it starts a burst, else counted in :attr:`held_back`."""
        now = self._clock()
        last, self._last = self._last, now
        if last is not None and now - last < self._quiet:
            self.held_back += 1
            return
        more = f" ({self.held_back} more in the previous burst)" if self.held_back else ""
        self.held_back = 0
        self._logger.error(
            "%s: unexpected %s%s", self._what, type(exc).__name__, more, exc_info=exc
        )
