"""The control plane on real redis-server processes: election, failover, rejoin, messages."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from cachering.control.plane import ControlPlane, NotLeader
from cachering.control.scripts import TOPOLOGY_CAS_LUA, VOTE_LUA
from cachering.control.topology import Topology
from cachering.events import NodeDown, NodeRecovering, NodeUp
from cachering.local import LocalCluster
from cachering.local.faults import FaultProxy
from cachering.messages import ControlMessage, Keyring, MessageCodec
from cachering.node import NodeSpec
from control_helpers import SECRET, EpochSampler, Managers, control_config, managers

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(3) as lc:
        yield lc


def _client(spec: NodeSpec) -> redis.Redis:
    return redis.Redis(host=spec.host, port=spec.port, socket_timeout=2)


async def test_one_leader_epochs_never_go_backwards(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "el")
    sampler = EpochSampler(local.nodes, "el")
    try:
        async with managers() as m, anyio.create_task_group() as tg:
            await tg.start(sampler.run)
            for i in range(3):
                await m.start(cfg, f"m{i}")
            lead = await m.wait_leader()
            assert sum(p.is_leader for p in m.live()) == 1
            # every manager holds the same committed topology, written by the leader
            await m.until(lambda: len({p.topology for p in m.live()}) == 1)
            assert lead.topology.leader == lead.id
            assert lead.topology.epoch == lead.epoch
            status = lead.status()
            assert status.is_leader
            assert status.secret_configured
            assert set(status.nodes) == {"n0", "n1", "n2"}
            assert all(n.healthy for n in status.nodes.values())
            # the leader's manager dies: another takes over with a higher epoch
            old_epoch = lead.epoch
            m.kill(lead.id)
            new = await m.wait_leader()
            assert new.id != lead.id
            assert new.epoch > old_epoch
            await m.until(lambda: all(p.topology.epoch == new.epoch for p in m.live()))
            tg.cancel_scope.cancel()
        assert all(len(who) == 1 for who in m.leaders.values()), m.leaders
        assert sampler.samples
        assert not sampler.backwards()
        for node, seq in sampler.topologies.items():
            assert seq == sorted(seq), node
    finally:
        sampler.close()


async def test_killed_node_goes_down_and_rejoins(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "kd")
    async with managers() as m:
        for i in range(3):
            await m.start(cfg, f"m{i}")
        lead = await m.wait_leader()
        async with lead.bus.subscribe() as events:
            local.kill(1)
            await m.until(lambda: m.states("n1") == ["down"] * 3)
            await m.until(lambda: all("n1" in p.suspects() for p in m.live()))
            await anyio.to_thread.run_sync(local.restart, 1)
            await m.until(lambda: m.states("n1") == ["up"] * 3)
            seen: list[type] = []
            while True:
                with anyio.move_on_after(0.05):
                    event = await events.__anext__()
                    if isinstance(event, (NodeDown, NodeRecovering, NodeUp)):
                        seen.append(type(event))
                    continue
                break
        assert seen == [NodeDown, NodeRecovering, NodeUp]
        status = lead.status()
        assert status.nodes["n1"].restarts == 1
        # the restarted node was seeded before it voted again, and holds the topology again
        client = _client(local.nodes[1])
        try:
            await m.until(lambda: client.hget("kd:ctl:election", "ready") == b"1")
            await m.until(
                lambda: (
                    client.hget("kd:ctl:topology", "version") == str(lead.topology.version).encode()
                )
            )
        finally:
            client.close()


async def test_pause_within_and_past_threshold(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "pz", failure_threshold=5)
    async with managers() as m:
        for i in range(2):
            await m.start(cfg, f"m{i}")
        lead = await m.wait_leader()
        version = lead.topology.version
        local.pause(2)
        await anyio.sleep(0.15)  # well within 5 heartbeats
        local.resume(2)
        await anyio.sleep(0.5)
        assert m.states("n2") == ["up", "up"]
        assert lead.topology.version == version
        local.pause(2)
        try:
            await m.until(lambda: m.states("n2") == ["down", "down"])
        finally:
            local.resume(2)
        await m.until(lambda: m.states("n2") == ["up", "up"])
        assert lead.status().nodes["n2"].restarts == 0


async def test_restarted_node_does_not_vote_until_seeded(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "sd")
    async with managers() as m:
        await m.start(cfg, "m0")
        lead = await m.wait_leader()
        local.kill(0)
        await m.until(lambda: m.states("n0") == ["down"])
        # bring it back empty while nobody looks at it, and ask for a vote at once
        client = _client(local.nodes[0])
        try:
            await anyio.to_thread.run_sync(local.restart, 0)
            vote = client.eval(VOTE_LUA, 1, "sd:ctl:election", lead.epoch + 5, "intruder")
            assert vote[0] == b"NOTREADY"
            await m.until(lambda: client.hget("sd:ctl:election", "ready") == b"1")
            floor = int(client.hget("sd:ctl:election", "epoch") or -1)
            assert floor >= lead.topology.epoch
            # seeded with no vote in the floor epoch: nobody can get one there
            vote = client.eval(VOTE_LUA, 1, "sd:ctl:election", floor, "intruder")
            assert vote[0] in (b"REFUSED", b"GRANTED")
            if vote[0] == b"GRANTED":  # only possible if a later epoch was voted since
                assert floor > lead.topology.epoch
        finally:
            client.close()
        await m.until(lambda: m.states("n0") == ["up"])


@pytest.mark.parametrize("direction", ["both", "up"])
async def test_partitioned_leader_steps_down(local: LocalCluster, direction: str) -> None:
    ns = f"pt{direction}"
    # every manager reaches every node through its own proxy
    proxies = [[FaultProxy(n.host, n.port) for n in local.nodes] for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for row in proxies:
            for p in row:
                await stack.enter_async_context(p)
        async with managers() as m:
            for i, row in enumerate(proxies):
                specs = [
                    NodeSpec(n.id, p.host, p.port) for n, p in zip(local.nodes, row, strict=True)
                ]
                await m.start(control_config(specs, ns), f"m{i}")
            old = await m.wait_leader()
            old_epoch = old.epoch
            cut = proxies[int(old.id[1:])]
            cut[0].blackhole(direction)  # type: ignore[arg-type]
            cut[1].blackhole(direction)  # type: ignore[arg-type]
            await m.until(lambda: not old.is_leader)
            others = [p for p in m.live() if p is not old]
            await m.until(lambda: any(p.is_leader for p in others))
            new = next(p for p in others if p.is_leader)
            assert new.epoch > old_epoch
            # whatever the old leader tries to write now is refused by the majority
            stale = Topology(old_epoch, old.topology.version + 100, old.topology.nodes, old.id)
            refused = 0
            for spec in local.nodes[:2]:
                client = _client(spec)
                try:
                    reply = client.eval(
                        TOPOLOGY_CAS_LUA,
                        2,
                        f"{ns}:ctl:topology",
                        f"{ns}:ctl:election",
                        stale.epoch,
                        stale.version,
                        stale.to_bytes(),
                        old.id,
                    )
                finally:
                    client.close()
                refused += reply[0] == b"STALE_EPOCH"
            assert refused == 2
            for row in proxies:
                for p in row:
                    p.heal()
            await m.until(lambda: m.agreed_leader() is not None)
            await m.until(lambda: len({p.topology for p in m.live()}) == 1)
            assert old.topology.epoch > old_epoch
            assert all(len(who) == 1 for who in m.leaders.values()), m.leaders


async def test_membership_changes_only_on_the_leader(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "mb")
    async with managers() as m:
        for i in range(2):
            await m.start(cfg, f"m{i}")
        lead = await m.wait_leader()
        follower = next(p for p in m.live() if p is not lead)
        with pytest.raises(NotLeader) as info:
            await follower.set_weight("n0", 2.0)
        assert info.value.leader == lead.id
        await lead.set_weight("n0", 2.0)
        await m.until(lambda: follower.topology.node("n0").weight == 2.0)
        extra = await anyio.to_thread.run_sync(local.add_node)
        await lead.add_node(extra)
        await m.until(lambda: m.states(extra.id) == ["up", "up"])
        await lead.remove_node(extra.id)
        await m.until(lambda: all(extra.id not in p.topology for p in m.live()))
        with pytest.raises(KeyError):
            await lead.remove_node("nope")


def _capture_leader(spec: NodeSpec, channel: str) -> bytes | None:
    client = _client(spec)
    sub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        sub.subscribe(channel)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.2)
            if msg and msg["type"] == "message" and b'"kind":"leader"' in msg["data"]:
                return msg["data"]  # type: ignore[no-any-return]
        return None
    finally:
        sub.close()
        client.close()


def _publish(spec: NodeSpec, channel: str, data: bytes) -> None:
    client = _client(spec)
    try:
        client.publish(channel, data)
    finally:
        client.close()


async def test_bad_control_messages_are_dropped_and_counted(local: LocalCluster) -> None:
    ns = "bad"
    cfg = control_config(local.nodes, ns)
    channel = f"{ns}:ctl"
    async with managers() as m:
        await m.start(cfg, "m0")
        await m.start(cfg, "m1")
        lead = await m.wait_leader()
        follower = next(p for p in m.live() if p is not lead)
        await m.until(lambda: follower.topology == lead.topology)
        before = follower.topology
        # capture one genuine leader heartbeat from node 0's channel (in a thread: the
        # managers must keep running meanwhile)
        captured = await anyio.to_thread.run_sync(_capture_leader, local.nodes[0], channel)
        assert captured is not None
        evil = before.with_state("n0", "down", epoch=before.epoch + 50, leader="evil")
        fake = ControlMessage(
            "topology", ns, "evil", epoch=evil.epoch, seq=1, body={"topology": evil.to_dict()}
        )
        forged = MessageCodec(Keyring({"0": b"x" * 32}), ns).encode(fake)
        unsigned = MessageCodec(None, ns).encode(fake)
        payload = json.dumps({"no": "fields"}).encode()
        mac = Keyring({"0": SECRET}).mac("0", b"CR1.0." + payload)
        assert mac is not None
        signed_junk = b"CR1.0." + mac + b"." + payload
        for data in (
            forged,
            unsigned,
            signed_junk,
            b"\xff" * 10,
            b"CR1..." + b"x" * 70000,
            captured,
        ):
            _publish(local.nodes[0], channel, data)
        await m.until(lambda: follower.status().messages.total >= 6)
        dropped = follower.status().messages.dropped
        assert dropped["forged"] >= 1
        assert dropped["unsigned"] >= 1
        assert dropped["malformed"] >= 2
        assert dropped["oversized"] >= 1
        assert dropped["replayed"] >= 1
        await anyio.sleep(0.3)
        assert follower.topology.stamp[0] < before.epoch + 50
        assert follower.topology.node("n0").state == "up"
        assert follower.leader == lead.id
        assert lead.is_leader


async def test_unsigned_cluster_runs_and_says_so(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "us", secret=None)
    async with managers() as m:
        plane = await m.start(cfg, "m0")
        await m.wait_leader()
        status = plane.status()
        assert status.secret_configured is False
        assert status.warnings


def test_control_plane_rejects_bad_config() -> None:
    with pytest.raises(TypeError):
        ControlPlane({"nodes": []})  # type: ignore[arg-type]


async def test_follower_manager_sees_leader_of_same_epoch_only(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "fl")
    async with managers() as m:
        a = await m.start(cfg, "m0")
        await m.wait_leader()
        b = await m.start(cfg, "m1")
        await m.until(lambda: b.leader == a.id)
        assert b.epoch == a.epoch
        assert not b.is_leader


_ = Managers  # re-exported for type checkers of the helpers


async def test_nodes_with_pending_hints_are_lagging_until_replayed(local: LocalCluster) -> None:
    cfg = control_config(local.nodes, "lg")
    async with managers() as m:
        lead = await m.start(cfg, "m0")
        await m.wait_leader()
        changes: list[frozenset[str]] = []
        lead._on_change = lambda topology, suspects: changes.append(lead.lagging)
        lead.note_hinted(["n2"])
        assert lead.lagging == {"n2"}
        client = _client(local.nodes[0])
        try:
            client.set("lg:k:a", b"\x01" + b"\x00" * 16 + b"\x00v")
            client.sadd("lg:hint:n1", b"a")
            await m.until(lambda: lead.lagging == frozenset())
            assert client.scard("lg:hint:n1") == 0
            other = _client(local.nodes[1])
            try:
                assert other.get("lg:k:a") == b"\x01" + b"\x00" * 16 + b"\x00v"
            finally:
                other.close()
        finally:
            client.close()
        assert frozenset({"n2"}) in changes
        assert changes[-1] == frozenset()
