"""The wall clock, for the few places that store or send a wall time.

Every timer, timeout and interval in cachering reads anyio's clock
(``anyio.current_time``), so that a test's mock clock drives the whole cluster. Wall time
appears only where a time leaves the process: a message's ``sent_at``, the rising sequence
numbers of a sender (which must keep rising across restarts), a status report's
``last_seen``, and the versions and expiries before the servers' clock was first read
(:class:`cachering.data.servertime.ServerTime`). Those places read it here.
"""

from __future__ import annotations

import time

__all__ = ["next_seq", "wall_ms", "wall_time"]


def wall_time() -> float:
    """Unix time in seconds."""
    return time.time()


def wall_ms() -> int:
    """Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000


def next_seq(last: int) -> int:
    """A sender's next sequence number after ``last``: the wall clock in microseconds, or
    ``last + 1`` when that is not above ``last``, so that a sender restarted with a fresh
    counter still goes on above every number it sent before (``next_seq(0)`` starts one).
    """
    now = time.time_ns() // 1000
    return now if now > last else last + 1
