"""With a secret, a topology written straight into a node's keys (no valid seal) is
refused by every manager, counted, never propagated, and replaced by the leader."""

from __future__ import annotations

import secrets

import anyio
import attrs
import pytest
import redis

from cachering.cluster import Cluster
from cachering.control.seals import UNSIGNED_WARNING
from cachering.control.topology import Topology, TopologyNode
from cachering.local import LocalCluster
from failover_harness import Fleet, fleet

pytestmark = pytest.mark.anyio


def _control(c: Cluster) -> dict[str, int]:
    assert c.control is not None
    return dict(attrs.asdict(c.control.counters))


async def _rereads(f: Fleet, rounds: int) -> None:
    """Wait until every manager has read every node ``rounds`` more times."""
    base = {c.id: _control(c)["rereads"] for c in f.live()}
    await f.until(lambda: all(_control(c)["rereads"] >= base[c.id] + rounds for c in f.live()))


@pytest.mark.parametrize("seal", ["none", "garbage", "other-key"])
async def test_a_topology_written_into_a_node_is_refused(seal: str) -> None:
    ns = f"forge{seal.replace('-', '')}"
    async with LocalCluster(3) as local, LocalCluster(1) as evil, fleet(local, ns) as f:
        for i in range(2):
            await f.start(f"m{i}")
        lead = await f.wait_leader()
        await f.converged()
        t = lead.topology
        impostor = TopologyNode("evil", evil.nodes[0].host, evil.nodes[0].port)
        forged = Topology(t.epoch, t.version + 1000, (*t.nodes, impostor), t.leader)
        fields = {"epoch": forged.epoch, "version": forged.version}
        fields["payload"] = forged.to_bytes()  # type: ignore[assignment]
        if seal == "garbage":
            fields["seal"] = "k." + secrets.token_hex(32)  # type: ignore[assignment]
        elif seal == "other-key":
            fields["seal"] = "default." + "0" * 64  # type: ignore[assignment]
        target = f.redis["n1"]

        def tamper() -> None:
            with target.pipeline(transaction=True) as tx:
                if seal == "none":
                    tx.hdel(f"{ns}:ctl:topology", "seal")
                tx.hset(f"{ns}:ctl:topology", mapping=fields)
                tx.execute()

        await anyio.to_thread.run_sync(tamper)
        await _rereads(f, 3)
        for c in f.live():
            assert "evil" not in c.topology, f"{c.id} adopted the forged topology"
            assert c.topology.version < forged.version
        # counted by whoever read it (the leader may replace it before another manager reads)
        kind = "topology_unsigned" if seal == "none" else "topology_forged"
        assert sum(_control(c)[kind] for c in f.live()) >= 1, "the refusal was not counted"
        for node in ("n0", "n2"):
            payload = f.redis[node].hget(f"{ns}:ctl:topology", "payload")
            assert payload is not None
            assert b"evil" not in payload, f"{node} was given the forged topology"
        # the leader writes its own topology over the forged one
        lead = await f.wait_leader()
        stamp = lead.topology.stamp
        await f.until(
            lambda: b"evil" not in (target.hget(f"{ns}:ctl:topology", "payload") or b"evil")
        )
        for i in range(100):
            await lead.set(f"k{i}", b"v")
        assert lead.topology.stamp >= stamp
        client = redis.Redis(host=evil.nodes[0].host, port=evil.nodes[0].port)
        try:
            assert client.dbsize() == 0, "writes landed on the impostor"
        finally:
            client.close()


async def test_without_a_secret_status_says_what_an_attacker_can_do(
    local: LocalCluster,
) -> None:
    async with fleet(local, "nosecret", secret=None) as f:
        c = await f.start("m0")
        status = c.status().as_dict()
        assert status["secret_configured"] is False
        assert UNSIGNED_WARNING in status["warnings"]
        assert "adopt a topology" in UNSIGNED_WARNING
