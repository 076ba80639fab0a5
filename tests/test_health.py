"""The health monitor against real servers: latency, figures, suspicion, restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from cachering.control.health import HealthMonitor, parse_info
from cachering.events import EventBus, NodeHealthy, NodeRestarted, NodeSuspect
from cachering.local import LocalCluster
from cachering.resp.pool import Pool

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(2) as lc:
        yield lc


def test_parse_info() -> None:
    text = (
        b"# Server\r\nrun_id:abc\r\nredis_version:7.0.0\r\n\r\n# Clients\r\nconnected_clients:3\r\n"
    )
    assert parse_info(text) == {"run_id": "abc", "redis_version": "7.0.0", "connected_clients": "3"}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval"):
        HealthMonitor(dict, interval=0, threshold=1)
    with pytest.raises(ValueError, match="threshold"):
        HealthMonitor(dict, interval=1, threshold=0)


async def test_suspect_healthy_and_restart(local: LocalCluster) -> None:
    pools = {n.id: Pool(n, timeout=0.2, connect_timeout=0.2, backoff_base=0) for n in local.nodes}
    bus = EventBus()
    calls: list[tuple[str, str]] = []
    monitor = HealthMonitor(
        lambda: pools,
        interval=0.05,
        threshold=2,
        bus=bus,
        on_suspect=lambda n: calls.append(("suspect", n)),
        on_healthy=lambda n: calls.append(("healthy", n)),
        on_restart=lambda n: calls.append(("restart", n)),
    )
    try:
        async with bus.subscribe() as events:
            await monitor.beat()
            rec = monitor.health("n0")
            assert rec.healthy
            assert rec.run_id
            assert rec.memory
            assert rec.clients
            assert rec.role == "master"
            assert rec.latency_ms is not None
            local.kill(0)
            await monitor.beat()
            assert monitor.suspects() == frozenset()  # one miss is not enough
            await monitor.beat()
            assert monitor.suspects() == {"n0"}
            await anyio.to_thread.run_sync(local.restart, 0)
            await monitor.beat()
            assert monitor.suspects() == frozenset()
            assert rec.restarts == 1
            kinds = []
            while True:
                with anyio.move_on_after(0.01):
                    kinds.append(type(await events.__anext__()))
                    continue
                break
        assert kinds == [NodeSuspect, NodeRestarted, NodeHealthy]
        assert calls == [("suspect", "n0"), ("restart", "n0"), ("healthy", "n0")]
        assert monitor.health("n1").misses == 0
        assert monitor.health("n0").to_dict()["restarts"] == 1
    finally:
        for pool in pools.values():
            await pool.aclose()
