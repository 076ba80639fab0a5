"""Helpers for the control-plane tests: several managers in one process, and watchers."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis
from anyio.abc import TaskGroup

from cachering.config import ClusterConfig
from cachering.control.plane import ControlPlane
from cachering.node import NodeSpec

SECRET = b"test-secret-0123456789abcdef"


def control_config(nodes: Sequence[NodeSpec], ns: str, **options: Any) -> ClusterConfig:
    """Fast timers: 0.1 s heartbeats, short timeouts, a secret."""
    base: dict[str, Any] = {
        "heartbeat_interval": 0.1,
        "failure_threshold": 3,
        "timeout": 0.5,
        "connect_timeout": 0.5,
        "topology_refresh_interval": 1.0,
        "secret": SECRET,
    }
    base.update(options)
    return ClusterConfig(nodes=tuple(nodes), namespace=ns, **base)


class Managers:
    """Several ControlPlanes, each in its own cancel scope ("process"), plus a history."""

    def __init__(self, tg: TaskGroup) -> None:
        self.tg = tg
        self.planes: dict[str, ControlPlane] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.leaders: dict[int, set[str]] = defaultdict(set)
        """Every (epoch -> managers that believed they led it) seen by :meth:`watch`."""

    async def start(self, config: ClusterConfig, manager_id: str) -> ControlPlane:
        plane = ControlPlane(config, manager_id=manager_id)
        scope = anyio.CancelScope()

        async def run(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await plane.run(task_status=task_status)

        await self.tg.start(run)
        self.planes[manager_id] = plane
        self.scopes[manager_id] = scope
        return plane

    def kill(self, manager_id: str) -> ControlPlane:
        """Cancel a manager's scope, as if its process died (no goodbye)."""
        self.scopes.pop(manager_id).cancel()
        return self.planes.pop(manager_id)

    def live(self) -> list[ControlPlane]:
        return list(self.planes.values())

    def note(self) -> None:
        for plane in self.planes.values():
            if plane.is_leader:
                self.leaders[plane.epoch].add(plane.id)

    async def watch(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.note()
            await anyio.sleep(0.01)

    async def until(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait until ``check()`` holds (a hang guard, not a speed check)."""
        with anyio.fail_after(timeout):
            while not check():
                self.note()
                await anyio.sleep(0.02)
        self.note()

    def agreed_leader(self) -> ControlPlane | None:
        """The leader every live manager agrees on, if there is one."""
        live = self.live()
        leaders = [p for p in live if p.is_leader]
        if len(leaders) != 1:
            return None
        lead = leaders[0]
        if all(p.leader == lead.id for p in live):
            return lead
        return None

    async def wait_leader(self, timeout: float = 15.0) -> ControlPlane:
        await self.until(lambda: self.agreed_leader() is not None, timeout)
        lead = self.agreed_leader()
        assert lead is not None
        return lead

    def states(self, node: str) -> list[str]:
        return [p.topology.node(node).state for p in self.live() if node in p.topology]


@asynccontextmanager
async def managers() -> AsyncIterator[Managers]:
    async with anyio.create_task_group() as tg:
        m = Managers(tg)
        await tg.start(m.watch)
        try:
            yield m
        finally:
            tg.cancel_scope.cancel()


class EpochSampler:
    """Reads every node's election epoch with redis-py, to check it never goes backwards."""

    def __init__(self, nodes: Sequence[NodeSpec], ns: str) -> None:
        self.clients = {
            n.id: redis.Redis(host=n.host, port=n.port, socket_timeout=0.5) for n in nodes
        }
        self.key = f"{ns}:ctl:election"
        self.samples: dict[str, list[int]] = defaultdict(list)
        self.topologies: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.resets: set[str] = set()

    def sample(self) -> None:
        for node, client in self.clients.items():
            try:
                epoch = client.hget(self.key, "epoch")
                topo = client.hmget(f"{self.key[: -len('election')]}topology", "epoch", "version")
            except redis.RedisError:
                continue
            if epoch is not None:
                self.samples[node].append(int(epoch))
            if topo[0] is not None:
                self.topologies[node].append((int(topo[0]), int(topo[1] or 0)))

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.to_thread.run_sync(self.sample)
            await anyio.sleep(0.02)

    def backwards(self, skip: Sequence[str] = ()) -> dict[str, list[int]]:
        """Nodes whose sampled epochs ever decreased (nodes in ``skip`` restarted empty)."""
        bad = {}
        for node, seq in self.samples.items():
            if node in skip:
                continue
            if any(b < a for a, b in itertools.pairwise(seq)):
                bad[node] = seq
        return bad

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
