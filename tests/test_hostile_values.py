"""Out-of-range values in a node's control keys or in a control message crash no manager.

A value a node or a message holds that is not a valid epoch (the top epoch, a 20-digit
number, a negative, garbage) is refused, counted in ``status()`` and ignored: the
election goes on with the nodes that answer well, and managers started afterwards too.
A rejected message counts once however many nodes deliver it, and a subscriber Redis
cut off (its pub/sub output buffer limit) shows in a counter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachering.config import ClusterConfig
from cachering.control.plane import ControlPlane
from cachering.control.topology import MAX_STAMP, Topology
from cachering.local import LocalCluster
from cachering.messages import MAX_EPOCH, ControlMessage, MessageCodec
from cachering.node import NodeSpec
from control_helpers import control_config, managers

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


BAD_EPOCHS = {
    "top": str(MAX_EPOCH),
    "twenty_digits": "12345678901234567890",
    "negative": "-5",
    "garbage": "not-an-epoch",
}


@pytest.mark.parametrize("value", list(BAD_EPOCHS.values()), ids=list(BAD_EPOCHS))
async def test_bad_epoch_in_a_node_key(local: LocalCluster, value: str, request: Any) -> None:
    ns = f"badepoch{request.node.callspec.id.replace('-', '')}"
    config = control_config(local.nodes, ns)
    poisoned = local.nodes[0]
    async with managers() as m:
        for i in range(2):
            await m.start(config, f"old{i}")
        await m.wait_leader()
        for i in range(2):
            m.kill(f"old{i}")
        client = redis.Redis(host=poisoned.host, port=poisoned.port)
        try:
            client.hset(f"{ns}:ctl:election", "epoch", value)
        finally:
            client.close()
        # Managers started now read the bad value at once; none may die of it.
        planes = [await m.start(config, f"new{i}") for i in range(2)]
        lead = await m.wait_leader()
        assert 0 < lead.epoch < MAX_EPOCH
        await m.until(lambda: sum(p.election.stats.bad_replies for p in planes) > 0)
        # Another election after the leader's death proceeds with the valid nodes.
        m.kill(lead.id)
        late = await m.start(config, "late")
        second = await m.wait_leader()
        assert second.id != lead.id
        assert second.epoch > lead.epoch
        assert late.election.stats.epochs_exhausted == 0
    assert not m.leaders or all(len(ids) == 1 for ids in m.leaders.values())


async def test_unsigned_leader_message_with_the_top_epoch(
    local: LocalCluster, anyio_backend: str
) -> None:
    ns = f"badepochmsg{anyio_backend}"
    config = control_config(local.nodes, ns, secret=None)
    codec = MessageCodec(None, ns)
    forged = ControlMessage(
        "leader", ns, "mallory", epoch=MAX_EPOCH, seq=1, sent_at=time.time(), body={}
    )
    data = codec.encode(forged)
    async with managers() as m:
        planes = [await m.start(config, f"m{i}") for i in range(3)]
        lead = await m.wait_leader()
        for node in local.nodes:
            client = redis.Redis(host=node.host, port=node.port)
            try:
                client.publish(f"{ns}:ctl", data)
            finally:
                client.close()
        await m.until(lambda: all(p.election.stats.epochs_refused > 0 for p in planes))
        assert all(p.epoch < MAX_EPOCH and p.leader != "mallory" for p in planes)
        assert all(p.status().as_dict()["messages_dropped"]["malformed"] > 0 for p in planes)
        m.kill(lead.id)
        second = await m.wait_leader()
        assert second.epoch > lead.epoch
    assert all(len(ids) == 1 for ids in m.leaders.values())


async def test_a_rejected_message_counts_once_however_many_nodes_deliver_it(
    local: LocalCluster, anyio_backend: str
) -> None:
    ns = f"dropsonce{anyio_backend}"
    config = control_config(local.nodes, ns)
    codec = MessageCodec(None, ns)
    clients = [redis.Redis(host=n.host, port=n.port) for n in local.nodes]
    async with managers() as m:
        planes = [await m.start(config, f"m{i}") for i in range(3)]
        await m.wait_leader()
        try:
            for seq in range(1, 21):
                for client in clients:
                    # Each node gets its own encoding (sent_at differs): one message still.
                    msg = ControlMessage(
                        "leader", ns, "mallory", epoch=1, seq=seq, sent_at=time.time(), body={}
                    )
                    client.publish(f"{ns}:ctl", codec.encode(msg))
        finally:
            for client in clients:
                client.close()

        def seen(plane: ControlPlane) -> int:
            messages = plane.status().as_dict()["messages"]
            return int(messages["dropped"]["unsigned"] + messages.get("rejected_copies", 0))

        await m.until(lambda: all(seen(p) == 60 for p in planes))
        dropped = [p.status().as_dict()["messages_dropped"]["unsigned"] for p in planes]
        assert dropped == [20, 20, 20]


async def test_a_subscriber_cut_off_by_the_output_buffer_limit_is_counted(
    local: LocalCluster, anyio_backend: str
) -> None:
    ns = f"outbuf{anyio_backend}"
    config = control_config(local.nodes, ns)
    node = local.nodes[0]
    client = redis.Redis(host=node.host, port=node.port)
    old = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    try:
        async with managers() as m:
            plane = await m.start(config, "m0")
            await m.wait_leader()
            assert plane.counters.subscriber_gaps == 0
            client.config_set("client-output-buffer-limit", "pubsub 65536 0 0")
            # More than the limit in one publish: Redis closes every subscriber on the node.
            assert client.publish(f"{ns}:ctl", b"x" * 200_000) >= 1
            await m.until(lambda: plane.counters.subscriber_gaps >= 1)
            assert plane.counters.subscriber_gaps >= 1
            assert plane.is_leader
    finally:
        client.config_set("client-output-buffer-limit", old)
        client.close()


def test_control_messages_stay_under_the_pubsub_output_limits() -> None:
    nodes = (NodeSpec("a", "127.0.0.1", 1),)
    with pytest.raises(ValueError, match="max_message_size"):
        ClusterConfig(nodes=nodes, max_message_size=8 * 1024 * 1024)
    ClusterConfig(nodes=nodes, max_message_size=4 * 1024 * 1024)


async def test_a_topology_at_the_top_version_stops_commits_not_managers(
    local: LocalCluster, anyio_backend: str
) -> None:
    ns = f"topversion{anyio_backend}"
    config = control_config(local.nodes, ns, secret=None)
    async with managers() as m:
        planes = [await m.start(config, f"m{i}") for i in range(2)]
        lead = await m.wait_leader()
        await m.until(lambda: lead._duties.in_charge())
        # A writer with Redis access stores a topology one version short of the top.
        top = Topology(lead.epoch, MAX_STAMP - 1, lead.topology.nodes, "mallory")
        for node in local.nodes:
            client = redis.Redis(host=node.host, port=node.port)
            try:
                client.hset(
                    f"{ns}:ctl:topology",
                    mapping={"epoch": top.epoch, "version": top.version, "payload": top.to_bytes()},
                )
            finally:
                client.close()
        await m.until(lambda: all(p.topology.version == MAX_STAMP - 1 for p in planes))
        # Two node state changes: the first takes the last version, the second has none.
        local.kill(2)
        try:
            await m.until(lambda: lead.topology.node("n2").state == "down")
        finally:
            local.restart(2)
        await m.until(lambda: lead.counters.topology_commit_failures > 0)
        assert lead.is_leader
        assert all(p.topology.version == MAX_STAMP for p in planes if p.topology.leader == lead.id)
