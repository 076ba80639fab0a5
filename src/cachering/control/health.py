"""The health monitor: heartbeats every node, measures it, and says when it turns suspect.

Every ``interval`` seconds the monitor sends each node, all nodes at once, one pipeline
of ``PING`` plus the ``INFO`` sections ``server``, ``clients``, ``memory`` and
``replication`` (one section per command, so Redis 6.2 understands it too) with a
timeout of at most one interval. A node that misses ``threshold`` heartbeats in a row is
*suspect*: the ``on_suspect`` callback runs at once and a :class:`NodeSuspect` event is
published; its next answer makes it healthy again (``on_healthy``, :class:`NodeHealthy`).
A changed ``run_id`` means the server process restarted, which for a cache without
persistence means it came back empty: ``on_restart`` and :class:`NodeRestarted`.

A node whose heartbeat reply does not fit (``PING`` not answered ``PONG``, ``INFO`` not
answered with text), or that another service reports through :meth:`HealthMonitor.garble`,
is *garbled*: suspect at once, and what it says about other nodes (hint counts) is not
believed until it answers a heartbeat properly again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus

from ..data.fanout import each
from ..errors import NodeUnavailable, ResponseError
from ..events import EventBus, NodeHealthy, NodeRestarted, NodeSuspect
from ..resp.pool import Pool
from ..wallclock import wall_time

__all__ = ["HealthMonitor", "NodeHealth", "parse_info"]

_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("PING",),
    ("INFO", "server"),
    ("INFO", "clients"),
    ("INFO", "memory"),
    ("INFO", "replication"),
)


def parse_info(text: bytes | str) -> dict[str, str]:
    """``INFO`` output as a dict of ``field -> value`` strings (sections and comments skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


@attrs.define
class NodeHealth:
    """What the monitor knows of one node (mutable, updated every heartbeat)."""

    node: str
    healthy: bool = True
    suspect: bool = False
    misses: int = 0
    latency_ms: float | None = None
    last_seen: float | None = None
    """Monotonic time of the last answered heartbeat."""
    last_error: str = ""
    run_id: str | None = None
    restarts: int = 0
    memory: int | None = None
    clients: int | None = None
    role: str | None = None
    beats: int = 0
    garbled: bool = False
    """The last reply from this node did not fit the command (see the module docstring)."""
    bad_replies: int = 0

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """Plain values for ``status()``; with ``now`` (monotonic) ``last_seen`` is a Unix
        time and ``last_seen_ago`` the seconds since."""
        last: float | None = self.last_seen
        wall: float | None = None
        if last is not None and now is not None:
            last = round(now - last, 3)
            wall = round(wall_time() - last, 3)
        return {
            "healthy": self.healthy,
            "suspect": self.suspect,
            "misses": self.misses,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "last_seen": wall,
            "last_seen_ago": last,
            "last_error": self.last_error,
            "run_id": self.run_id,
            "restarts": self.restarts,
            "memory": self.memory,
            "clients": self.clients,
            "role": self.role,
            "garbled": self.garbled,
            "bad_replies": self.bad_replies,
        }


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class HealthMonitor:
    """Heartbeats every node of ``nodes()`` through ``pools()`` (a service: start ``run``).

    ``nodes`` and ``pools`` are callables so that nodes added at run time are watched
    from the next beat on. Callbacks must not block (they run inside the beat).
    """

    def __init__(
        self,
        pools: Callable[[], Mapping[str, Pool]],
        *,
        interval: float,
        threshold: int,
        timeout: float | None = None,
        bus: EventBus | None = None,
        on_suspect: Callable[[str], None] = lambda node: None,
        on_healthy: Callable[[str], None] = lambda node: None,
        on_restart: Callable[[str], None] = lambda node: None,
    ) -> None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"threshold must be an int >= 1, got {threshold!r}")
        self._pools = pools
        self.interval = float(interval)
        self.threshold = threshold
        self.timeout = min(self.interval, timeout) if timeout else self.interval
        self._bus = bus
        self._on_suspect = on_suspect
        self._on_healthy = on_healthy
        self._on_restart = on_restart
        self.nodes: dict[str, NodeHealth] = {}
        self.rounds = 0

    def health(self, node: str) -> NodeHealth:
        """The record of ``node`` (created on first use)."""
        rec = self.nodes.get(node)
        if rec is None:
            rec = self.nodes[node] = NodeHealth(node)
        return rec

    def suspects(self) -> frozenset[str]:
        """Nodes that are suspect right now."""
        return frozenset(n for n, h in self.nodes.items() if h.suspect)

    def garbled(self) -> frozenset[str]:
        """Nodes whose last reply did not fit: what they say about other nodes is ignored."""
        return frozenset(n for n, h in self.nodes.items() if h.garbled)

    def garble(self, node: str, reason: str) -> None:
        """Another service got a reply from ``node`` that does not fit: suspect it now."""
        rec = self.health(node)
        rec.garbled = True
        rec.bad_replies += 1
        rec.misses = max(rec.misses, self.threshold - 1)  # _missed counts this one
        self._missed(rec, f"reply does not fit: {reason}"[:200])

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat forever, one round every ``interval`` seconds (the first one at once)."""
        task_status.started()
        while True:
            start = anyio.current_time()
            await self.beat()
            await anyio.sleep_until(start + self.interval)

    async def beat(self) -> None:
        """One round: every node heartbeated at once; returns when all answered or timed out."""
        pools = dict(self._pools())
        await each(pools, lambda node: self._check(node, pools[node]))
        self.rounds += 1

    async def _check(self, node: str, pool: Pool) -> None:
        rec = self.health(node)
        start = anyio.current_time()
        replies: list[Any] | None = None
        error = "timeout"
        with anyio.move_on_after(self.timeout):
            try:
                replies = await pool.pipeline(_COMMANDS, timeout=self.timeout)
            except (NodeUnavailable, ResponseError, OSError) as exc:
                error = str(exc) or type(exc).__name__
        now = anyio.current_time()
        if replies is None:
            self._missed(rec, error)
            return
        if (
            len(replies) != len(_COMMANDS)
            or replies[0] != b"PONG"
            or not all(isinstance(r, bytes) for r in replies[1:])
        ):
            self.garble(node, f"heartbeat answered {replies!r:.60}")
            return
        info: dict[str, str] = {}
        for reply in replies[1:]:
            info.update(parse_info(reply))
        self._answered(rec, (now - start) * 1000.0, now, info)

    def _missed(self, rec: NodeHealth, error: str) -> None:
        rec.misses += 1
        rec.last_error = error
        rec.healthy = False
        if rec.misses >= self.threshold and not rec.suspect:
            rec.suspect = True
            if self._bus is not None:
                self._bus.publish(NodeSuspect(node=rec.node, misses=rec.misses, reason=error))
            self._on_suspect(rec.node)

    def _answered(self, rec: NodeHealth, latency: float, now: float, info: dict[str, str]) -> None:
        was_suspect = rec.suspect
        rec.garbled = False
        rec.misses = 0
        rec.healthy = True
        rec.suspect = False
        rec.latency_ms = latency
        rec.last_seen = now
        rec.beats += 1
        rec.memory = _int(info.get("used_memory"))
        rec.clients = _int(info.get("connected_clients"))
        rec.role = info.get("role")
        run_id = info.get("run_id")
        restarted = rec.run_id is not None and run_id is not None and run_id != rec.run_id
        old = rec.run_id
        if run_id is not None:
            rec.run_id = run_id
        if restarted:
            rec.restarts += 1
            if self._bus is not None:
                self._bus.publish(
                    NodeRestarted(node=rec.node, old_run_id=old or "", new_run_id=run_id or "")
                )
            self._on_restart(rec.node)
        if was_suspect:
            if self._bus is not None:
                self._bus.publish(NodeHealthy(node=rec.node, latency_ms=round(latency, 3)))
            self._on_healthy(rec.node)
