"""Nodes learned from the topology connect with their own credentials, not another node's."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
import pytest
import redis

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from failover_harness import failover_config

pytestmark = pytest.mark.anyio


async def until(check: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.05)
    assert check(), what


def test_learned_node_credentials_come_from_defaults_or_what_all_nodes_share() -> None:
    a = NodeSpec("a", "h", 1, username="u", password="pa")
    b = NodeSpec("b", "h", 2, username="u", password="pb")
    same = NodeSpec("b", "h", 2, username="u", password="pa")
    # per-node credentials: nobody's are lent to a node that was not configured
    learned = ClusterConfig(nodes=[a, b]).learned_node("c", "h3", 3, 2.0)
    assert (learned.id, learned.host, learned.port, learned.weight) == ("c", "h3", 3, 2.0)
    assert (learned.username, learned.password) == (None, None)
    shared = ClusterConfig(nodes=[a, same]).learned_node("c", "h3", 3)
    assert (shared.username, shared.password) == ("u", "pa")
    defaults = NodeSpec("any", "any", 9, username="v", password="pc", db=3)
    chosen = ClusterConfig(nodes=[a, b], node_defaults=defaults).learned_node("c", "h3", 3)
    assert (chosen.username, chosen.password, chosen.db, chosen.host) == ("v", "pc", 3, "h3")
    with pytest.raises(ValueError, match=r"ClusterConfig\.node_defaults"):
        ClusterConfig(nodes=[a], node_defaults="redis://x")  # type: ignore[arg-type]


def test_node_defaults_from_a_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text(
        '[cachering]\nnodes = ["redis://127.0.0.1:7000?id=a"]\n'
        '[cachering.node_defaults]\nusername = "v"\npassword = "pc"\n'
    )
    cfg = ClusterConfig.from_file(path)
    assert cfg.node_defaults is not None
    assert (cfg.node_defaults.username, cfg.node_defaults.password) == ("v", "pc")
    path.write_text(
        '[cachering]\nnodes = ["redis://127.0.0.1:7000?id=a"]\n'
        '[cachering.node_defaults]\nhost = "x"\n'
    )
    with pytest.raises(ValueError, match="key 'node_defaults': unknown field 'host'"):
        ClusterConfig.from_file(path)


async def test_a_node_added_elsewhere_is_reached_with_its_own_password() -> None:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(LocalCluster(1, password=f"pw-{i}")) for i in range(3)]
        specs = [
            NodeSpec(f"s{i}", s.nodes[0].host, s.nodes[0].port, password=f"pw-{i}")
            for i, s in enumerate(servers)
        ]
        lead_cfg = failover_config(specs[:2], "learn", manager_id="lead")
        other_cfg = failover_config(
            specs[:2],
            "learn",
            manager_id="other",
            node_defaults=NodeSpec("d", "d", 1, password="pw-2"),
        )
        async with Cluster(lead_cfg) as lead:
            await until(lambda: lead.is_leader, "lead leads")
            async with Cluster(other_cfg) as other:
                await until(lambda: other.leader == "lead", "other follows")
                await lead.add_node(specs[2])
                await until(lambda: "s2" in other.topology, "other learns s2")
                await until(
                    lambda: other.status().as_dict()["nodes"]["s2"].get("healthy") is True,
                    "other reaches s2",
                )
                keys = [f"k{i}" for i in range(200)]
                await other.set_many(dict.fromkeys(keys, b"v"), consistency="all")
                errors = other.metrics().as_dict()["errors"]
                assert errors.get("s2", 0) == 0, errors
                assert "s2" in other.router.ring
        direct = redis.Redis(host=specs[2].host, port=specs[2].port, password="pw-2")
        try:
            assert any(direct.exists(f"learn:k:{k}") for k in keys)
        finally:
            direct.close()
