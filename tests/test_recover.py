"""A majority of nodes restarted empty: the managers wait; ``cachering recover`` says what
is lost, changes nothing without ``--yes``, and with it lets a leader be elected again."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import anyio
import pytest
import redis

from cachering.cli import main
from cachering.cluster import Cluster
from cachering.control.election import Election
from cachering.control.scripts import control_keys
from cachering.local import LocalCluster
from failover_harness import SECRET, failover_config

pytestmark = pytest.mark.anyio


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _ready(local: LocalCluster, ns: str) -> list[bool]:
    key = control_keys(ns).election
    flags = []
    for spec in local.nodes:
        client = redis.Redis(host=spec.host, port=spec.port, socket_timeout=1)
        try:
            flags.append(client.hget(key, "ready") == b"1")
        finally:
            client.close()
    return flags


def _kept(local: LocalCluster, ns: str) -> list[str]:
    """The user keys node 2 (which kept its data) still holds."""
    spec = local.nodes[2]
    client = redis.Redis(host=spec.host, port=spec.port, socket_timeout=1)
    try:
        prefix = f"{ns}:k:".encode()
        return sorted(k[len(prefix) :].decode() for k in client.scan_iter(match=prefix + b"*"))
    finally:
        client.close()


async def test_recover_reseeds_a_majority_restarted_empty(tmp_path: Path) -> None:
    ns = "recover"
    async with LocalCluster(3) as local:
        cfg = failover_config(local.nodes, ns, manager_id="m1")
        async with Cluster(cfg) as first:
            with anyio.fail_after(30):
                while not (first.is_leader and first.topology.leader == "m1"):
                    await anyio.sleep(0.02)
            for i in range(50):
                await first.set(f"k{i}", b"v")
            old_epoch = first.epoch
        for i in (0, 1):
            await anyio.to_thread.run_sync(local.restart, i)
        nodes = ", ".join(f'"{u}?id={n.id}"' for u, n in zip(local.urls, local.nodes, strict=True))
        path = tmp_path / "cluster.toml"
        path.write_text(
            f'[cachering]\nnodes = [{nodes}]\nnamespace = "{ns}"\n'
            f"heartbeat_interval = 0.1\ntimeout = 0.5\n"
            f'[cachering.secret]\nk = "{SECRET.decode()}"\n'
        )
        cfg2 = failover_config(local.nodes, ns, manager_id="m2", anti_entropy_interval=0)
        async with Cluster(cfg2) as second:
            assert second.control is not None
            timeout = second.control.config.effective_election_timeout
            with anyio.move_on_after(timeout * 4):
                while not second.is_leader:
                    await anyio.sleep(0.02)
            assert not second.is_leader, "a majority lost its votes: nobody may win"
            code, text = await anyio.to_thread.run_sync(_cli, "recover", "--config", str(path))
            assert code == 0, text
            assert "lost their election state" in text
            assert "What is lost" in text
            assert "--yes" in text
            assert await anyio.to_thread.run_sync(_ready, local, ns) == [False, False, True]
            code, text = await anyio.to_thread.run_sync(
                _cli, "recover", "--config", str(path), "--yes"
            )
            assert code == 0, text
            assert "Done" in text
            with anyio.fail_after(30):
                while not (second.is_leader and second.topology.leader == "m2"):
                    await anyio.sleep(0.02)
            assert second.epoch > old_epoch
            assert await anyio.to_thread.run_sync(_ready, local, ns) == [True, True, True]
            # the nodes that came back empty are rebuilt before they serve: every key the
            # surviving node still holds reads back (no misses from an empty node)
            kept = await anyio.to_thread.run_sync(_kept, local, ns)
            assert kept
            with anyio.fail_after(30):
                while True:
                    states = {n.state for n in second.topology.nodes}
                    assert second.control is not None
                    if states == {"up"} and not second.control.lagging:
                        values = [await second.get(k) for k in kept]
                        if all(v == b"v" for v in values):
                            break
                    await anyio.sleep(0.05)
        for backend in ("asyncio", "trio"):  # the command runs on either backend
            code, text = await anyio.to_thread.run_sync(
                _cli, "recover", "--config", str(path), "--backend", backend
            )
            assert code == 0, text
            assert "every node holds its election state" in text


def test_lost_campaigns_back_off_exponentially_up_to_a_cap() -> None:
    election = Election(
        "m",
        ["a", "b", "c"],
        dict,
        control_keys("bo"),
        interval=0.1,
        election_timeout=0.6,
        round_timeout=0.1,
        rng=random.Random(7),
    )
    uppers = []
    for failed in range(1, 8):
        election._failed = failed
        waits = [election._backoff() for _ in range(400)]
        assert min(waits) >= 0.1
        uppers.append(max(waits))
    assert uppers[0] <= 0.6
    assert uppers[1] > 0.6, "the second loss in a row waits longer"
    assert uppers[2] > 1.2
    assert all(u <= 0.6 * 8 for u in uppers), "capped at eight election timeouts"
    assert uppers[-1] > 0.6 * 4
