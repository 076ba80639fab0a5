"""Epochs are never reused: a full-fleet amnesia under a paused leader gives no second
writer in any epoch (the old leader runs in its own OS process, paused with SIGSTOP)."""

from __future__ import annotations

import json
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from cachering.cluster import Cluster
from cachering.local import LocalCluster
from failover_harness import SECRET, failover_config

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("manager_process.py")
TIMERS: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "failure_threshold": 3,
    "timeout": 0.5,
    "connect_timeout": 0.5,
    "topology_refresh_interval": 1.0,
    "replicas": 2,
    "consistency": "quorum",
    "anti_entropy_interval": 0,
}


class ManagerProcess:
    """A manager in a child process; :attr:`state` is the last line it printed."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.state: dict[str, Any] = {}
        self.lines = 0

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    self.state = json.loads(line)
                    self.lines += 1

    async def until(self, check: Any, timeout: float = 30.0) -> None:
        """Wait until ``check(state)`` holds (a hang guard, not a speed requirement)."""
        with anyio.fail_after(timeout):
            while not (self.state and check(self.state)):
                if self.process.returncode is not None:
                    raise AssertionError(f"manager process exited: {self.process.returncode}")
                await anyio.sleep(0.02)


@asynccontextmanager
async def manager_process(
    local: LocalCluster, ns: str, manager_id: str
) -> AsyncIterator[ManagerProcess]:
    raw = {
        "nodes": [[n.id, n.host, n.port] for n in local.nodes],
        "namespace": ns,
        "manager_id": manager_id,
        "options": {**TIMERS, "secret": SECRET.decode()},
    }
    process = await anyio.open_process([sys.executable, str(SCRIPT), json.dumps(raw)])
    async with anyio.create_task_group() as tg:
        mp = ManagerProcess(process)
        tg.start_soon(mp.read)
        try:
            yield mp
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                await process.wait()
                await process.aclose()
            tg.cancel_scope.cancel()


class TopologyWriters:
    """Which manager wrote each epoch's topologies, as every node stores them (redis-py)."""

    def __init__(self, local: LocalCluster, ns: str) -> None:
        self.clients = [
            redis.Redis(host=n.host, port=n.port, socket_timeout=0.5) for n in local.nodes
        ]
        self.key = f"{ns}:ctl:topology"
        self.writers: dict[int, set[str]] = defaultdict(set)
        self.seen: list[tuple[int, int, str]] = []

    def sample(self) -> None:
        for client in self.clients:
            try:
                payload = client.hget(self.key, "payload")
            except redis.RedisError:
                continue
            if payload:
                topo = json.loads(payload)
                self.writers[topo["epoch"]].add(topo["leader"])
                entry = (topo["epoch"], topo["version"], topo["leader"])
                if not self.seen or self.seen[-1] != entry:
                    self.seen.append(entry)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.to_thread.run_sync(self.sample)
            await anyio.sleep(0.01)

    def close(self) -> None:
        for client in self.clients:
            client.close()


async def _restart_all(local: LocalCluster) -> None:
    for i in range(len(local)):
        await anyio.to_thread.run_sync(local.restart, i)


async def test_full_fleet_amnesia_under_a_paused_leader_reuses_no_epoch() -> None:
    ns = "amnesia"
    async with LocalCluster(3) as local:
        writers = TopologyWriters(local, ns)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(writers.run)
                async with manager_process(local, ns, "old") as old:
                    await old.until(
                        lambda s: s["is_leader"] and s["topology_leader"] == "old", timeout=30
                    )
                    old_epoch = old.state["epoch"]
                    old.process.send_signal(signal.SIGSTOP)
                    await _restart_all(local)
                    cfg = failover_config(local.nodes, ns, manager_id="new", **TIMERS)
                    async with Cluster(cfg) as new:
                        with anyio.fail_after(30):
                            while not (new.is_leader and new.topology.leader == "new"):
                                await anyio.sleep(0.02)
                        new_epoch = new.epoch
                        lines = old.lines
                        old.process.send_signal(signal.SIGCONT)
                        # the old leader runs again, believes it leads, then learns better
                        await old.until(lambda s: not s["is_leader"], timeout=30)
                        assert old.lines > lines
                        await anyio.sleep(0.5)  # let anything it still sends land
                        assert new.is_leader
                tg.cancel_scope.cancel()
            await anyio.to_thread.run_sync(writers.sample)
            twice = {e: w for e, w in writers.writers.items() if len(w) > 1}
            assert not twice, f"two writers in one epoch: {twice}; history {writers.seen}"
            assert new_epoch > old_epoch, "the new cluster reused an old epoch"
            after = [w for e, v, w in writers.seen if e > old_epoch]
            assert after, writers.seen
            assert set(after) == {"new"}, writers.seen
        finally:
            writers.close()
