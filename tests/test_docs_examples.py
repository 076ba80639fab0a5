"""Every code block of the README and docs/ runs as written.

A block is run according to its language, or to the marker on the line before it:

- ``python``: run in order with the other Python blocks of the same file, sharing one
  namespace (so a later block may use what an earlier one defined);
- ``toml``: loaded as a cluster configuration (a fragment without ``nodes`` gets one
  placeholder node), so every key and value must be valid;
- ``<!-- example: shell -->``: run by bash, each must exit 0;
- ``<!-- example: redis-command -->``: sent to a real server (lines joined at ``\\``),
  then a cluster must work as the user the command creates;
- ``<!-- example: with-cluster -->``: Python run while ``cluster`` is an open
  :class:`~cachering.Cluster` on local servers;
- ``<!-- example: illustrative -->``: not run (commands that need other hosts, run
  until interrupted, or install software).

A block with neither a runnable language nor a marker fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import redis

if sys.version_info >= (3, 11):
    import tomllib
else:  # a dependency of cachering on 3.10
    import tomli as tomllib

from cachering import Cluster, ClusterConfig
from cachering.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "README.md").is_file():  # e.g. a wheel's tests, copied without the docs
    pytest.skip("README.md and docs/ are not beside the tests", allow_module_level=True)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_MARKER = re.compile(r"<!-- example: ([a-z-]+) -->\s*$")
KINDS = {"shell", "redis-command", "with-cluster", "illustrative"}


@attrs.frozen
class Block:
    """One fenced code block: where it is, its language, its marker, its text."""

    page: Path
    line: int
    language: str
    marker: str | None
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return self.marker or self.language


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the marker on the line before."""
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        found.append(Block(page, line, match[1], marker[1] if marker else None, match[2]))
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_pages_have_blocks_and_every_block_has_a_known_kind() -> None:
    assert len(PAGES) >= 3
    assert sum(b.kind == "python" for b in ALL) >= 3
    unknown = [b.where for b in ALL if b.kind not in KINDS | {"python", "toml"}]
    assert unknown == [], f"mark these blocks (see this module's docstring): {unknown}"
    bad_markers = [b.where for b in ALL if b.marker is not None and b.marker not in KINDS]
    assert bad_markers == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_in_order(page: Path) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    for block in blocks(page):
        if block.kind == "python":
            exec(compile(block.code, block.where, "exec"), namespace)


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "toml"], ids=lambda b: b.where)
def test_toml_blocks_are_valid_configurations(block: Block) -> None:
    data = tomllib.loads(block.code)
    table = dict(data.get("cachering", data))
    table.setdefault("nodes", ["redis://127.0.0.1:6379?id=placeholder"])
    config = ClusterConfig._from_mapping(table, block.where)
    assert config.nodes


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "shell"], ids=lambda b: b.where)
def test_shell_blocks_exit_zero(block: Block, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{block.where}: {proc.stderr}"


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.kind == "redis-command"], ids=lambda b: b.where
)
def test_redis_command_blocks_grant_what_a_cluster_needs(block: Block) -> None:
    command = shlex.split(block.code.replace("\\\n", " "))
    user, password = command[2], next(a[1:] for a in command if a.startswith(">"))
    with LocalCluster(3) as servers:
        for node in servers.nodes:
            with redis.Redis(host=node.host, port=node.port) as admin:
                assert admin.execute_command(*command) in (b"OK", "OK", True)
        nodes = [attrs.evolve(n, username=user, password=password) for n in servers.nodes]
        config = ClusterConfig(nodes=nodes, heartbeat_interval=0.1)

        async def work() -> None:
            async with Cluster(config) as cache:
                await cache.set("acl:k", b"v", ttl=60)
                await cache.set_many({"acl:a": b"1", "acl:b": b"2"}, consistency="all")
                assert await cache.get_many(["acl:k", "acl:a", "acl:b"]) == [b"v", b"1", b"2"]
                assert await cache.delete("acl:a") is True
                await cache.wait_replicated()
                # the control plane, too, runs under that user: an election completes
                with anyio.fail_after(20):
                    while cache.leader is None:
                        await anyio.sleep(0.05)

        anyio.run(work)


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.kind == "with-cluster"], ids=lambda b: b.where
)
def test_blocks_that_use_a_cluster(block: Block) -> None:
    with LocalCluster(2) as servers:
        config = ClusterConfig(nodes=servers.nodes, heartbeat_interval=0.2)

        async def run() -> None:
            async with Cluster(config) as cluster:
                await cluster.set("docs:k", b"v")
                namespace: dict[str, Any] = {"cluster": cluster}
                exec(compile(block.code, block.where, "exec"), namespace)
                exporter = namespace.get("exporter")
                if exporter is not None:

                    def scrape() -> bytes:
                        with urllib.request.urlopen(exporter.url, timeout=10) as reply:
                            body: bytes = reply.read()
                            return body

                    try:  # from a thread: the exporter asks this loop for its snapshot
                        assert b"cachering_operations_total" in await anyio.to_thread.run_sync(
                            scrape
                        )
                    finally:
                        exporter.close()

        anyio.run(run)
