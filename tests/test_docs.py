"""The docs against the code: the ACL the Lua scripts need, TOML examples, make test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cachering.config import ClusterConfig
from cachering.local import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "docs").is_dir() or not (ROOT / "src").is_dir():
    # e.g. a wheel's tests, copied without the docs and the sources they are checked against
    pytest.skip("docs/ and src/ are not beside the tests", allow_module_level=True)
SRC = ROOT / "src" / "cachering"
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()

# Arguments that make each command a valid call on the namespace's keys and channels.
SAMPLE_ARGS: dict[str, list[str]] = {
    "GET": ["cachering:k:a"],
    "MGET": ["cachering:k:a", "cachering:k:b"],
    "GETRANGE": ["cachering:k:a", "0", "17"],
    "PTTL": ["cachering:k:a"],
    "PEXPIRETIME": ["cachering:k:a"],
    "EXISTS": ["cachering:hintoverflow:n1"],
    "SET": ["cachering:k:a", "v", "PXAT", "99999999999999"],
    "MSET": ["cachering:k:a", "v", "cachering:k:b", "w"],
    "DEL": ["cachering:k:a"],
    "UNLINK": ["cachering:k:a"],
    "SCAN": ["0", "MATCH", "cachering:k:*", "COUNT", "100"],
    "HGET": ["cachering:state", "epoch"],
    "HMGET": ["cachering:state", "epoch", "ready"],
    "HEXISTS": ["cachering:state", "epoch"],
    "HSET": ["cachering:state", "epoch", "1"],
    "HDEL": ["cachering:state", "epoch"],
    "SADD": ["cachering:hint:n1", "a"],
    "SCARD": ["cachering:hint:n1"],
    "SISMEMBER": ["cachering:hint:n1", "a"],
    "SMOVE": ["cachering:hint:n1", "cachering:hintclaim:n1", "a"],
    "SREM": ["cachering:hint:n1", "a"],
    "SRANDMEMBER": ["cachering:hint:n1", "10"],
    "TIME": [],
    "PING": [],
    "INFO": ["server"],
    "DBSIZE": [],
    "SELECT": ["0"],
    "EVALSHA": ["0" * 40, "1", "cachering:k:a"],
    "SCRIPT": ["LOAD", "return 1"],
    "PUBLISH": ["cachering:inval", "x"],
    "SUBSCRIBE": ["cachering:inval"],
    "PSUBSCRIBE": ["cachering:*"],
}


def lua_commands() -> set[str]:
    """Every command a Lua script in the package calls."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", path.read_text()):
            found.add(name.upper())
    return found


def documented(kind: str) -> set[str]:
    """The commands one bullet of the ACL section lists."""
    bullet = re.search(rf"^- {kind}[^:]*:(.*?)(?=^- |^$)", OPERATIONS, re.M | re.S)
    assert bullet is not None, kind
    return set(re.findall(r"`([A-Z]+)`", bullet[1]))


def test_the_acl_section_lists_every_command_the_scripts_call() -> None:
    scripts = lua_commands()
    assert {"SMOVE", "PEXPIRETIME", "TIME", "HGET"} <= scripts  # the scan finds them
    assert documented("called by the Lua scripts") == scripts


@pytest.fixture(scope="module")
def server() -> Iterator[redis.Redis]:
    with LocalCluster(1) as local:
        node = local.nodes[0]
        client = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
        yield client
        client.close()


def test_the_documented_acl_user_may_run_every_command(server: redis.Redis) -> None:
    line = re.search(r"^ACL SETUSER (.*?)\n(?!\s)", OPERATIONS, re.M | re.S)
    assert line is not None
    rules = line[1].replace("\\\n", " ").split()
    assert server.execute_command("ACL", "SETUSER", *rules) in (b"OK", True)
    try:
        server.execute_command("ACL", "DRYRUN", rules[0], "PING")
    except redis.ResponseError as exc:
        if "dryrun" not in str(exc).lower():
            raise
        pytest.skip(
            "this server has no ACL DRYRUN (Redis < 7); the documented ACL is used for real "
            "by test_docs_examples.py's ACL test on every server"
        )
    commands = (
        lua_commands()
        | documented("sent directly")
        | {
            "EVALSHA",
            "SCRIPT",
            "PUBLISH",
            "SUBSCRIBE",
            "PSUBSCRIBE",
            "PING",
            "INFO",
            "DBSIZE",
        }
    )
    refused = {}
    for command in sorted(commands):
        reply = server.execute_command("ACL", "DRYRUN", rules[0], command, *SAMPLE_ARGS[command])
        if reply not in (b"OK", "OK"):
            refused[command] = reply
    assert refused == {}


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_every_toml_example_with_nodes_loads(tmp_path: Path) -> None:
    blocks = [b for doc in (OPERATIONS, (ROOT / "README.md").read_text()) for b in toml_blocks(doc)]
    full = [b for b in blocks if "nodes" in b]
    assert len(full) >= 2
    for i, block in enumerate(full):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        config = ClusterConfig.from_file(path)
        assert len(config.nodes) >= 2


def test_make_test_runs_the_doctests_on_both_rings() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("test-c", "test-pure"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe is not None, target
        assert "--doctest-modules src/cachering" in recipe[1], target
