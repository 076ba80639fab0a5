"""Read levels across managers: quorum reads after quorum writes, home-only write counts,
the lag announcement, and hints kept on two nodes.

Every manager is its own Cluster; a writer that cannot reach a node reaches every node
through its own FaultProxy, so the other managers still see that node's old copy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest

from cachering import Cluster, NodeSpec
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.errors import ConsistencyError
from cachering.local import LocalCluster
from cachering.local.faults import FaultProxy
from cachering.messages import ControlMessage, Keyring, MessageCodec
from cluster_helpers import Inspector, config, until

pytestmark = pytest.mark.anyio

SECRET = b"read-levels-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def local() -> LocalCluster:
    with LocalCluster(4) as cluster:
        yield cluster  # type: ignore[misc]


@contextlib.asynccontextmanager
async def proxied(
    local: LocalCluster,
) -> AsyncIterator[tuple[list[NodeSpec], dict[str, FaultProxy]]]:
    """Specs reaching every node through a proxy of its own, and the proxies by node id."""
    async with contextlib.AsyncExitStack() as stack:
        proxies = {}
        for n in local.nodes:
            proxies[n.id] = await stack.enter_async_context(FaultProxy(n.host, n.port))
        specs = [NodeSpec(n.id, proxies[n.id].host, proxies[n.id].port) for n in local.nodes]
        yield specs, proxies


def _key_on(cluster: Cluster, first: str, prefix: str) -> str:
    """A key whose primary home is ``first``."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if cluster.preference_list(key)[0] == first:
            return key
    raise AssertionError("no key found")


def _version(raw: bytes | None) -> bytes:
    assert raw is not None
    decoded = values.decode(raw)
    assert decoded is not None
    return decoded.version


async def test_quorum_read_after_quorum_write_from_another_manager(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rlq"
    async with proxied(local) as (specs, proxies):
        wcfg = config(specs, ns, replicas=3, control_plane=False)
        rcfg = config(local.nodes, ns, replicas=3, control_plane=False)
        async with Cluster(wcfg) as writer, Cluster(rcfg) as reader:
            key = _key_on(reader, "n0", "q")
            await writer.set(key, b"old", consistency="all")
            proxies["n0"].blackhole()  # the writer cannot reach n0; the reader can
            await writer.set(key, b"new", consistency="quorum")
            assert inspect.raw("n0", ns, key) is not None
            assert values.user_bytes(inspect.raw("n0", ns, key)) == b"old"
            got = [await reader.get(key, consistency="quorum") for _ in range(20)]
            assert got == [b"new"] * 20
            # the read repaired n0's copy (through apply-if-newer: same version as the others)
            homes = reader.preference_list(key)
            versions = {_version(inspect.raw(h, ns, key)) for h in homes}
            assert len(versions) == 1
            assert values.user_bytes(inspect.raw("n0", ns, key)) == b"new"
            assert await reader.get_many([key, "absent"], consistency="all") == [b"new", None]
            proxies["n0"].heal()


async def test_quorum_write_counts_home_copies_only(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rlh"
    async with proxied(local) as (specs, proxies):
        wcfg = config(specs, ns, replicas=3, control_plane=False)
        rcfg = config(local.nodes, ns, replicas=3, control_plane=False)
        async with Cluster(wcfg) as writer, Cluster(rcfg) as reader:
            key = _key_on(reader, "n0", "h")
            homes = reader.preference_list(key)
            await writer.set(key, b"old", consistency="all")
            for home in homes[:2]:
                proxies[home].blackhole()
            # one home plus two stand-ins took it: not a quorum of home copies
            with pytest.raises(ConsistencyError) as caught:
                await writer.set(key, b"new", consistency="quorum")
            assert caught.value.acknowledged == 1
            assert caught.value.required == 2
            # the copies that took it hold hints for the homes that missed it
            holders = [n.id for n in local.nodes if n.id not in homes[:2]]
            for holder in holders:
                assert values.user_bytes(inspect.raw(holder, ns, key)) == b"new"
                assert key.encode() in inspect.hints(holder, ns, homes[0])
            for home in homes[:2]:
                proxies[home].heal()


async def test_replicas_two_quorum_write_needs_both_homes(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rl2"
    async with proxied(local) as (specs, proxies):
        wcfg = config(specs, ns, replicas=2, control_plane=False)
        async with Cluster(wcfg) as writer:
            key = _key_on(writer, "n1", "t")
            proxies["n1"].blackhole()
            with pytest.raises(ConsistencyError):
                await writer.set(key, b"v", consistency="quorum")
            await writer.set(key, b"v", consistency="one")  # the available, hinted path
            proxies["n1"].heal()


async def test_a_timed_out_write_delivered_late_never_beats_the_writers_next_write(
    local: LocalCluster, inspect: Inspector
) -> None:
    # The writer's write times out on one home (its request held up on the way) and fails;
    # its next write is acknowledged by both homes; then the held request reaches that home
    # (as TCP delivers a closed socket's data once a partition heals). The first copy must
    # not take the older write above the acknowledged one: a quorum read from another
    # manager returns the acknowledged value.
    ns = "rld"
    async with proxied(local) as (specs, proxies):
        wcfg = config(specs, ns, replicas=2, node_backoff=0.1, control_plane=False)
        rcfg = config(local.nodes, ns, replicas=2, control_plane=False)
        async with Cluster(wcfg) as writer, Cluster(rcfg) as reader:
            key = _key_on(reader, "n0", "d")
            home = reader.preference_list(key)[1]
            await writer.set(key, b"v0", consistency="quorum")
            held = 3.0  # the request's delay: far beyond the writer's 0.5 s timeout
            proxies[home].delay(held, "up")
            sent = anyio.current_time()
            with pytest.raises(ConsistencyError):
                await writer.set(key, b"v1", consistency="quorum")
            proxies[home].heal()  # what is sent from now on passes at once
            await until(lambda: home not in writer.router.suspects(), 5.0, "home usable")
            await writer.set(key, b"v2", consistency="quorum")
            assert anyio.current_time() < sent + held, "the next write came too late"
            acked = inspect.raw(home, ns, key)
            assert values.user_bytes(acked) == b"v2"
            passed = proxies[home].bytes_up
            await anyio.sleep(sent + held + 0.5 - anyio.current_time())
            assert proxies[home].bytes_up > passed  # the held request reached the home
            assert inspect.raw(home, ns, key) == acked
            assert await reader.get(key, consistency="quorum") == b"v2"


async def test_read_levels_are_checked(local: LocalCluster) -> None:
    async with Cluster(config(local.nodes, "rlc", control_plane=False)) as cluster:
        with pytest.raises(ValueError, match="consistency"):
            await cluster.get("k", consistency="most")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="consistency"):
            await cluster.get_many(["k"], consistency="two")  # type: ignore[arg-type]
    cfg = config(local.nodes, "rlc", read_consistency="quorum", control_plane=False)
    async with Cluster(cfg) as cluster:
        await cluster.set("k", b"v", consistency="all")
        assert await cluster.get("k") == b"v"
        assert cluster.metrics().as_dict()["ops"]["get"] == 1


async def test_hint_is_recorded_on_two_nodes(local: LocalCluster, inspect: Inspector) -> None:
    ns = "rl4"
    async with (
        proxied(local) as (specs, proxies),
        Cluster(config(specs, ns, replicas=2, control_plane=False)) as writer,
    ):
        key = _key_on(writer, "n2", "f")
        proxies["n2"].blackhole()
        await writer.set(key, b"v")  # the first write after the failure
        await writer.wait_replicated()
        took = inspect.holders(ns, key, skip=["n2"])
        assert len(took) == 2
        # every node that took the write holds the hint: losing either keeps one
        for node in took:
            assert key.encode() in inspect.hints(node, ns, "n2"), node
        proxies["n2"].heal()


def _slow_config(nodes: Sequence[NodeSpec], ns: str, manager: str) -> ClusterConfig:
    # heartbeat ticks 60 s apart: only the announcement can tell the reader in time
    return config(nodes, ns, replicas=2, secret=SECRET, heartbeat_interval=60.0, manager_id=manager)


async def test_lag_is_announced_to_other_managers_at_once(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rla"
    inspect.flushall()  # no hints left by an earlier run
    async with (
        proxied(local) as (specs, proxies),
        Cluster(_slow_config(specs, ns, "w")) as writer,
        Cluster(_slow_config(local.nodes, ns, "r")) as reader,
    ):
        control = reader.control
        assert control is not None
        key = _key_on(reader, "n3", "a")
        await writer.set(key, b"old", consistency="all")
        assert await reader.get(key) == b"old"
        assert "n3" not in control.lagging
        proxies["n3"].blackhole()
        await writer.set(key, b"new")
        assert values.user_bytes(inspect.raw("n3", ns, key)) == b"old"
        # well inside the 60 s until the reader's next lagging check
        await until(lambda: "n3" in control.lagging, 20.0, "lag announced")
        assert "n3" not in reader.router.read_order(key.encode())
        assert await reader.get(key) == b"new"
        proxies["n3"].heal()


_READER = """
import sys, anyio
from cachering import Cluster, ClusterConfig, NodeSpec

async def main():
    ns, key, level, *addrs = sys.argv[1:]
    nodes = [NodeSpec(f"n{i}", "127.0.0.1", int(p)) for i, p in enumerate(addrs)]
    cfg = ClusterConfig(nodes=nodes, namespace=ns, replicas=3, control_plane=False, timeout=0.5)
    async with Cluster(cfg) as cluster:
        for _ in range(20):
            print((await cluster.get(key, consistency=level)).decode())

anyio.run(main)
"""


async def test_quorum_read_in_another_process(local: LocalCluster) -> None:
    ns = "rlp"
    async with (
        proxied(local) as (specs, proxies),
        Cluster(config(specs, ns, replicas=3, control_plane=False)) as writer,
    ):
        key = _key_on(writer, "n1", "o")
        await writer.set(key, b"old", consistency="all")
        proxies["n1"].blackhole()  # the writer cannot reach n1; the other process can
        await writer.set(key, b"new", consistency="quorum")
        ports = [str(n.port) for n in local.nodes]
        done = await anyio.run_process(
            [sys.executable, "-c", _READER, ns, key, "quorum", *ports], check=False
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert done.stdout.decode().split() == ["new"] * 20
        proxies["n1"].heal()


async def test_quorum_get_many_repairs_a_stale_home(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rlm"
    async with Cluster(config(local.nodes, ns, replicas=2, control_plane=False)) as cluster:
        keys = [f"m{i}" for i in range(300)]
        await cluster.set_many({k: b"old" for k in keys}, consistency="all")
        await cluster.set_many({k: b"new" for k in keys}, consistency="all")
        # a home loses the newer copies behind the cluster's back (a failed replica write)
        victim = keys[7]
        home = cluster.preference_list(victim)[1]
        stale = [k for k in keys if cluster.preference_list(k)[1] == home][:20]
        for k in stale:
            inspect.clients[home].delete(f"{ns}:k:{k}")
        assert await cluster.get_many(keys, consistency="quorum") == [b"new"] * len(keys)
        for k in stale:
            assert values.user_bytes(inspect.raw(home, ns, k)) == b"new"
        assert cluster.metrics().as_dict()["read_repairs"] == len(stale)
        assert cluster.metrics().as_dict()["ops"]["get_many"] == 1


async def test_hostile_lagging_messages_are_dropped(
    local: LocalCluster, inspect: Inspector
) -> None:
    ns = "rlx"
    cfg = _slow_config(local.nodes, ns, "r")
    codec = MessageCodec(Keyring({"0": SECRET}, active="0"), ns, cfg.max_message_size)
    async with Cluster(cfg) as reader:
        control = reader.control
        assert control is not None
        before = control.codec.drops.snapshot()["malformed"]
        bodies: list[dict[str, object]] = [
            {"nodes": "n0"},
            {"nodes": [1, 2]},
            {},
            {"nodes": ["nowhere", "x" * 200]},
        ]
        channel = f"{ns}:ctl"
        client = inspect.clients["n0"]
        await until(lambda: client.pubsub_numsub(channel)[0][1] >= 1, 20.0, "subscribed")
        for seq, body in enumerate(bodies, start=1):
            msg = ControlMessage("lagging", ns, "evil", epoch=0, seq=seq, body=body)
            client.publish(channel, codec.encode(msg))
        await until(
            lambda: control.codec.drops.snapshot()["malformed"] >= before + 3, 20.0, "drops"
        )
        assert not control.lagging  # unknown nodes are ignored
        await reader.set("k", b"v")
        assert await reader.get("k") == b"v"
