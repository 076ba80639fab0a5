"""ClusterConfig: defaults, validation naming the field, from_urls, from_file, evolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachering import NodeSpec
from cachering.config import ClusterConfig
from cachering.errors import ConfigError
from cachering.ring import _ring_py

NODES = (NodeSpec("a", "127.0.0.1", 7000), NodeSpec("b", "127.0.0.1", 7001))


def test_defaults() -> None:
    cfg = ClusterConfig(nodes=NODES)
    assert cfg.replicas == 2
    assert cfg.copies == 2
    assert cfg.consistency == "one"
    assert cfg.namespace == "cachering"
    assert cfg.near_cache_size == 0
    assert not cfg.publishes_invalidations
    assert cfg.evolve(near_cache_size=10).publishes_invalidations
    assert cfg.evolve(publish_invalidations=True).publishes_invalidations
    assert cfg.heartbeat_interval == 5.0
    assert cfg.secret is None
    assert cfg.effective_election_timeout == 30.0


def test_nodes_list_is_converted_to_tuple() -> None:
    cfg = ClusterConfig(nodes=list(NODES))
    assert cfg.nodes == NODES


def test_replicas_capped_at_node_count() -> None:
    cfg = ClusterConfig(nodes=NODES, replicas=5)
    assert cfg.replicas == 5
    assert cfg.copies == 2


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nodes": ()}, "nodes"),
        ({"nodes": "redis://x"}, "nodes"),
        ({"nodes": [NODES[0], NODES[0]]}, "nodes"),
        ({"nodes": ["redis://127.0.0.1"]}, "nodes"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"replicas": 1.5}, "replicas"),
        ({"vnodes": 0}, "vnodes"),
        ({"hash": "md5"}, "hash"),
        ({"seed": -1}, "seed"),
        ({"consistency": "most"}, "consistency"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a b"}, "namespace"),
        ({"namespace": "app:"}, "namespace"),
        ({"namespace": "x" * 65}, "namespace"),
        ({"timeout": 0}, "timeout"),
        ({"connect_timeout": float("nan")}, "connect_timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"pool_size": 0}, "pool_size"),
        ({"max_value_size": 0}, "max_value_size"),
        ({"max_value_size": 2**40}, "max_value_size"),
        ({"sync_batch_size": 0}, "sync_batch_size"),
        ({"sync_flush_interval": 0}, "sync_flush_interval"),
        ({"sync_queue_size": 10}, "sync_queue_size"),
        ({"sync_shutdown_timeout": -1}, "sync_shutdown_timeout"),
        ({"tombstone_ttl": 0}, "tombstone_ttl"),
        ({"near_cache_size": -1}, "near_cache_size"),
        ({"near_cache_ttl": 0}, "near_cache_ttl"),
        ({"hint_limit": 0}, "hint_limit"),
        ({"node_backoff": -0.1}, "node_backoff"),
        ({"publish_invalidations": 1}, "publish_invalidations"),
        ({"sync_inline": "yes"}, "sync_inline"),
        ({"heartbeat_interval": 0.001}, "heartbeat_interval"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"election_timeout": 1.0}, "election_timeout"),
        ({"secret": b"short"}, "secret"),
        ({"secret": [("k1", b"x" * 16), ("k1", b"y" * 16)]}, "secret"),
        ({"secret": {"bad id!": b"x" * 16}}, "secret"),
        ({"secret": 42}, "secret"),
        ({"manager_id": "has space"}, "manager_id"),
        ({"topology_refresh_interval": 0}, "topology_refresh_interval"),
        ({"max_message_size": 10}, "max_message_size"),
        ({"down_quorum": 0}, "down_quorum"),
        ({"hash": "ketama", "vnodes": 10}, "vnodes"),
        ({"hash": "ketama", "seed": 7}, "seed"),
        ({"vnodes": 100_000, "nodes": [NodeSpec(f"n{i}", "h", 1) for i in range(700)]}, "vnodes"),
        (
            {
                "hash": "ketama",
                "vnodes": 100_000,
                "nodes": [NodeSpec(f"n{i}", "h", 1) for i in range(700)],
            },
            "vnodes",
        ),
        ({"vnodes": 160, "nodes": [NodeSpec("a", "h", 1, weight=1e6)]}, "vnodes"),
        ({"secret": {"k.1": b"x" * 16}}, "secret"),
    ],
)
def test_invalid_values_name_the_field(changes: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"nodes": NODES}
    base.update(changes)
    with pytest.raises(ValueError, match=rf"ClusterConfig\.{field}\b"):
        ClusterConfig(**base)  # type: ignore[arg-type]


def test_secret_forms() -> None:
    key = b"k" * 32
    assert ClusterConfig(nodes=NODES, secret=key).secret == (("0", key),)
    assert ClusterConfig(nodes=NODES, secret={"k2": key, "k1": "s" * 16}).secret == (
        ("k2", key),
        ("k1", b"s" * 16),
    )
    assert "kkkk" not in repr(ClusterConfig(nodes=NODES, secret=key))


def test_election_timeout_explicit() -> None:
    cfg = ClusterConfig(nodes=NODES, heartbeat_interval=0.05, election_timeout=0.5)
    assert cfg.effective_election_timeout == 0.5


def test_evolve_revalidates() -> None:
    cfg = ClusterConfig(nodes=NODES)
    assert cfg.evolve(replicas=1).replicas == 1
    assert cfg.replicas == 2
    with pytest.raises(ValueError, match="replicas"):
        cfg.evolve(replicas=-1)


def test_from_urls() -> None:
    cfg = ClusterConfig.from_urls(
        ["redis://127.0.0.1:7000?id=a", "redis://127.0.0.1:7001/2?weight=2"], replicas=3
    )
    assert [n.id for n in cfg.nodes] == ["a", "127.0.0.1:7001"]
    assert cfg.nodes[1].weight == 2
    assert cfg.nodes[1].db == 2
    assert cfg.replicas == 3
    with pytest.raises(TypeError, match="single string"):
        ClusterConfig.from_urls("redis://127.0.0.1:7000")
    with pytest.raises(ValueError, match="scheme"):
        ClusterConfig.from_urls(["http://x"])


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'namespace = "app"\nreplicas = 3\n'
        'nodes = ["redis://127.0.0.1:7000?id=a", {id = "b", host = "127.0.0.1", port = 7001}]\n'
        '[secret]\nk1 = "0123456789abcdef0123"\n'
    )
    cfg = ClusterConfig.from_file(path)
    assert cfg.namespace == "app"
    assert [n.id for n in cfg.nodes] == ["a", "b"]
    assert cfg.secret == (("k1", b"0123456789abcdef0123"),)


def test_from_file_cachering_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[cachering]\nnodes = ["redis://127.0.0.1:7000"]\ntimeout = 0.5\n')
    assert ClusterConfig.from_file(path).timeout == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes = [", "not valid TOML"),
        ("replicas = 2\n", "key 'nodes': missing"),
        ('nodes = ["redis://h:1"]\nreplica = 2\n', "key 'replica': unknown setting"),
        ('nodes = ["redis://h:1"]\nreplicas = 0\n', "key 'replicas': must be >= 1"),
        ('nodes = "redis://h:1"\n', "key 'nodes': must be a list"),
        ('nodes = [{id = "a", host = "h"}]\n', "key 'nodes[0]': missing node field 'port'"),
        ('nodes = [{id = "a", host = "h", port = 1, colour = 1}]\n', "nodes[0]"),
        ('nodes = ["ftp://h"]\n', "nodes[0]"),
        ('nodes = ["redis://h:1"]\ntimeout = "fast"\n', "key 'timeout'"),
    ],
)
def test_from_file_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_from_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ClusterConfig.from_file(tmp_path / "nope.toml")


def ring_refuses(nodes: list[NodeSpec], hash_mode: str, vnodes: int) -> bool:
    """Whether the config refuses these ring options, naming the vnodes field."""
    try:
        ClusterConfig(nodes=nodes, hash=hash_mode, vnodes=vnodes)
    except ValueError as exc:
        if "ClusterConfig.vnodes" not in str(exc):
            raise
        return True
    return False


def test_the_config_refuses_exactly_the_rings_the_ring_refuses(ring_impl: object) -> None:
    from cachering.config import MAX_RING_POINTS

    assert MAX_RING_POINTS == _ring_py.MAX_POINTS  # the compiled twin uses its checks
    big = 2**26 // 160  # weight of one node at the limit with vnodes=160
    cases = [  # (hash, vnodes, weights, refused)
        ("murmur3", 160, [big, 1], True),  # one point over
        ("murmur3", 160, [big - 1, 1], False),
        ("ketama", 160, [1] * 2000, False),
        ("ketama", 100_000, [1] * 671, False),
        ("ketama", 100_000, [1] * 672, True),
        ("murmur3", 100_000, [1] * 672, True),
    ]
    for hash_mode, vnodes, weights, refused in cases:
        nodes = [NodeSpec(f"n{i}", "h", 1, weight=w) for i, w in enumerate(weights)]
        assert ring_refuses(nodes, hash_mode, vnodes) is refused, (hash_mode, vnodes)
        if refused:
            with pytest.raises(ValueError, match="points"):
                ring_impl.Ring(  # type: ignore[attr-defined]
                    {n.id: n.weight for n in nodes}, vnodes=vnodes, hash=hash_mode
                )
            continue
        if vnodes * sum(weights) < 1_000_000:  # small enough to build here
            ring = ring_impl.Ring(  # type: ignore[attr-defined]
                {n.id: n.weight for n in nodes}, vnodes=vnodes, hash=hash_mode
            )
            assert len(ring.nodes) == len(nodes)


def test_secret_key_ids_follow_the_keyring_rule() -> None:
    from cachering.messages import Keyring

    for key_id in ("k.1", "", "x" * 65, "a b"):
        with pytest.raises(ValueError, match=r"ClusterConfig\.secret") as by_config:
            ClusterConfig(nodes=NODES, secret={key_id: b"x" * 16})
        with pytest.raises(ValueError, match="Keyring key id") as by_keyring:
            Keyring({key_id: b"x" * 16})
        assert (
            str(by_config.value).split("key id ", 1)[1]
            == str(by_keyring.value).split("key id ", 1)[1]
        )
    cfg = ClusterConfig(nodes=NODES, secret={"k:1-a_B": b"x" * 16})
    assert Keyring(dict(cfg.secret or ())).active == "k:1-a_B"


def test_ring_problems_from_a_file_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('nodes = ["redis://127.0.0.1:7000?id=a"]\nhash = "ketama"\nvnodes = 10\n')
    with pytest.raises(ConfigError, match=r"c\.toml: key 'vnodes': must be a multiple of 4"):
        ClusterConfig.from_file(path)
