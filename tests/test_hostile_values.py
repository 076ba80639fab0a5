"""Out-of-range values in a node's control keys or in a control message crash no manager.

A value a node or a message holds that is not a valid epoch (the top epoch, a 20-digit
number, a negative, garbage) is refused, counted in ``status()`` and ignored: the
election goes on with the nodes that answer well, and managers started afterwards too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachering.local import LocalCluster
from cachering.messages import MAX_EPOCH, ControlMessage, MessageCodec
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
        await m.until(lambda: sum(p.status()["election"]["bad_replies"] for p in planes) > 0)
        # Another election after the leader's death proceeds with the valid nodes.
        m.kill(lead.id)
        late = await m.start(config, "late")
        second = await m.wait_leader()
        assert second.id != lead.id
        assert second.epoch > lead.epoch
        assert late.status()["election"]["epochs_exhausted"] == 0
    assert not m.leaders or all(len(ids) == 1 for ids in m.leaders.values())


async def test_unsigned_leader_message_with_the_top_epoch(local: LocalCluster) -> None:
    ns = "badepochmsg"
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
        await m.until(lambda: all(p.status()["election"]["epochs_refused"] > 0 for p in planes))
        assert all(p.epoch < MAX_EPOCH and p.leader != "mallory" for p in planes)
        assert all(p.status()["messages_dropped"]["malformed"] > 0 for p in planes)
        m.kill(lead.id)
        second = await m.wait_leader()
        assert second.epoch > lead.epoch
    assert all(len(ids) == 1 for ids in m.leaders.values())
