"""A node that restarts from a snapshot (RDB) holding old data: no manager serves its old
copies, and repair never brings back a key deleted meanwhile, sweep included.

The snapshot is taken, then some keys are overwritten and some deleted while the node is
still up (it takes those writes in memory only), then it is killed, more keys are
overwritten and deleted while it is down, and it comes back from the snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from cachering import Cluster
from cachering.data import values
from cachering.local import LocalCluster
from cluster_helpers import until
from failover_harness import failover_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


def _settled(clusters: list[Cluster]) -> bool:
    for c in clusters:
        if c.control is None or c.control.lagging:
            return False
        if any(n.state != "up" for n in c.topology.nodes):
            return False
    return True


async def test_snapshot_restart_serves_no_old_copy_and_resurrects_no_delete(
    local: LocalCluster,
) -> None:
    ns = "snap"
    opts = {"consistency": "one", "tombstone_ttl": 1.0, "anti_entropy_interval": 0.3}
    plain = {n.id: redis.Redis(host=n.host, port=n.port, socket_timeout=2) for n in local.nodes}
    async with (
        Cluster(failover_config(local.nodes, ns, manager_id="a", **opts)) as a,
        Cluster(failover_config(local.nodes, ns, manager_id="b", **opts)) as b,
    ):
        await until(lambda: a.leader is not None and a.leader == b.leader, 20, "a leader")
        keys = [f"k{i}" for i in range(400)]
        mine = [k for k in keys if "n0" in a.preference_list(k)]
        assert len(mine) >= 40
        await a.set_many({k: f"{k}:v1".encode() for k in keys}, consistency="all")
        expected: dict[str, bytes | None] = {k: f"{k}:v1".encode() for k in keys}
        plain["n0"].save()
        # n0 takes these in memory only: its snapshot keeps the older state
        for k in mine[:10]:
            await a.set(k, f"{k}:v2".encode(), consistency="all")
            expected[k] = f"{k}:v2".encode()
        for k in mine[10:20]:
            await a.delete(k, consistency="all")
            expected[k] = None
        local.kill(0)
        for k in mine[20:30]:
            await a.set(k, f"{k}:v3".encode())
            expected[k] = f"{k}:v3".encode()
        for k in mine[30:40]:
            await a.delete(k)
            expected[k] = None
        await a.wait_replicated()
        await anyio.to_thread.run_sync(lambda: local.restart(0, keep_data=True))
        assert plain["n0"].get(f"{ns}:k:{mine[0]}") is not None  # the snapshot is back
        # a manager that never saw n0 before its restart reads too, from the start
        async with Cluster(failover_config(local.nodes, ns, manager_id="c", **opts)) as c:
            wrong: list[str] = []

            async def check_round() -> None:
                for who in (a, b, c):
                    got = await who.get_many(keys)
                    for k, value in zip(keys, got, strict=True):
                        if value != expected[k]:
                            wrong.append(f"{who.id} read {k}={value!r}")
                for node in ("n1", "n2"):  # the others never take the old copies
                    raws = plain[node].mget([f"{ns}:k:{k}" for k in mine[:40]])
                    for k, raw in zip(mine[:40], raws, strict=True):
                        live = values.user_bytes(raw)
                        if live is not None and live != expected[k]:
                            wrong.append(f"{node} holds {k}={live!r}")

            with anyio.fail_after(60):
                # the tombstones expire (1 s) and sweeps run (every 0.3 s) meanwhile
                started = anyio.current_time()
                while not (_settled([a, b, c]) and anyio.current_time() - started > 2.0):
                    await check_round()
                    await anyio.sleep(0.02)
            assert not wrong, wrong[:10]
            managers = (a, b, c)
            await until(lambda: any(x.is_leader for x in managers), 20, "a leader")
            lead = next(x for x in managers if x.is_leader)
            assert lead.control is not None
            result = await lead.control.sweep()
            assert result.complete
            await check_round()
            assert not wrong, wrong[:10]
            # and n0 itself holds nothing older than what was acknowledged
            raws = plain["n0"].mget([f"{ns}:k:{k}" for k in mine[:40]])
            for k, raw in zip(mine[:40], raws, strict=True):
                assert values.user_bytes(raw) in (None, expected[k]), k
            for k in mine[10:20] + mine[30:40]:
                assert values.user_bytes(plain["n0"].get(f"{ns}:k:{k}")) is None
    for client in plain.values():
        client.close()
