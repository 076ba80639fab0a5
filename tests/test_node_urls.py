"""Node URLs and TOML tables that carry TLS files, a server name, or a Unix socket,
checked against real servers (a TLS build that requires client certificates, and a
server listening on a socket)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from cachering import Cluster, ClusterConfig, ConfigError, NodeSpec
from cachering.errors import NodeUnavailable
from cachering.local import LocalCluster
from cachering.node import tls_context
from cachering.resp import Connection
from cluster_helpers import skip_unless_tls

pytestmark = pytest.mark.anyio


# ----------------------------------------------------------------------------- parsing


def test_unix_url_parses_to_a_socket_spec() -> None:
    spec = NodeSpec.from_url("unix://app:s%40cret@/run/redis%20x.sock?db=3&weight=2&id=a")
    assert spec.is_unix
    assert spec.host == "/run/redis x.sock"
    assert (spec.db, spec.weight, spec.id) == (3, 2, "a")
    assert (spec.username, spec.password) == ("app", "s@cret")
    assert spec.address == "unix:/run/redis x.sock"
    assert NodeSpec.from_url(spec.url(with_password=True)) == spec
    assert NodeSpec.from_url("unix:///tmp/r.sock").id == "/tmp/r.sock"


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("unix://host/tmp/r.sock", "names no host"),
        ("unix://", "absolute path"),
        ("unix:///tmp/r.sock?db=x", "database"),
        ("unix:///tmp/r.sock?port=1", "port"),
        ("redis://127.0.0.1:6379?db=1", "db"),
        ("redis://127.0.0.1:6379?ssl_ca_certs=/x", "rediss://"),
        ("unix:///tmp/r.sock?ssl_server_hostname=a", "rediss://"),
        ("rediss://127.0.0.1:6379?ssl_cert_reqs=maybe", "cert_reqs"),
        ("rediss://127.0.0.1:6379?ssl_check_hostname=perhaps", "ssl_check_hostname"),
        ("rediss://127.0.0.1:6379?ssl_cert_reqs=none&ssl_check_hostname=true", "verification"),
        ("rediss://127.0.0.1:6379?ssl_keyfile=/k.pem", "certfile"),
        ("rediss://127.0.0.1:6379?ssl_ca_certs=/no/such/ca.pem", "/no/such/ca.pem"),
    ],
)
def test_bad_urls_name_the_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        NodeSpec.from_url(url)


def test_context_and_file_parameters_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either a tls context"):
        NodeSpec.from_url(
            "rediss://127.0.0.1:6379?ssl_cert_reqs=none", tls=ssl.create_default_context()
        )


def test_cert_reqs_none_turns_verification_off() -> None:
    spec = NodeSpec.from_url("rediss://127.0.0.1:6379?ssl_cert_reqs=none")
    assert spec.tls is not None
    assert spec.tls.verify_mode == ssl.CERT_NONE
    assert spec.tls.check_hostname is False
    context = tls_context(cert_reqs="optional", check_hostname=False)
    assert context.verify_mode == ssl.CERT_OPTIONAL


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def mtls() -> Iterator[LocalCluster]:
    """Two TLS servers that refuse a client without a certificate from their CA."""
    skip_unless_tls()
    with LocalCluster(2, tls=True, tls_client_auth=True) as cluster:
        yield cluster


def _tls_url(cluster: LocalCluster, i: int, *, cert: bool = True, name: str | None = None) -> str:
    assert cluster.ca_path is not None
    assert cluster.client_cert_path is not None
    assert cluster.client_key_path is not None
    query = [f"id=n{i}", f"ssl_ca_certs={quote(str(cluster.ca_path))}"]
    if cert:
        query += [
            f"ssl_certfile={quote(str(cluster.client_cert_path))}",
            f"ssl_keyfile={quote(str(cluster.client_key_path))}",
        ]
    if name is not None:
        query.append(f"ssl_server_hostname={name}")
    return f"rediss://127.0.0.1:{cluster.ports[i]}/0?{'&'.join(query)}"


async def _ping(spec: NodeSpec) -> object:
    conn = await Connection.open(spec)
    try:
        return await conn.execute("PING")
    finally:
        await conn.aclose()


async def test_client_certificate_from_the_url(mtls: LocalCluster) -> None:
    assert await _ping(NodeSpec.from_url(_tls_url(mtls, 0))) == b"PONG"
    # The same CA without the client certificate: the server refuses the client (in the
    # handshake, or with TLS 1.3 on the first read after it).
    with pytest.raises(NodeUnavailable):
        await _ping(NodeSpec.from_url(_tls_url(mtls, 0, cert=False)))


async def test_server_name_is_what_the_certificate_is_checked_against(
    mtls: LocalCluster,
) -> None:
    # The certificate names 127.0.0.1 and localhost.
    good = NodeSpec.from_url(_tls_url(mtls, 1, name="localhost"))
    assert good.tls_server_name == "localhost"
    assert "ssl_server_hostname=localhost" in good.url()
    assert await _ping(good) == b"PONG"
    wrong = NodeSpec.from_url(_tls_url(mtls, 1, name="cache.example.org"))
    with pytest.raises(NodeUnavailable, match="TLS error"):
        await Connection.open(wrong)


async def test_tls_files_in_toml_run_a_cluster(mtls: LocalCluster, tmp_path: Path) -> None:
    assert mtls.client_cert_path is not None
    toml = tmp_path / "cluster.toml"
    tls = (
        f'{{ ca_certs = "{mtls.ca_path}", certfile = "{mtls.client_cert_path}", '
        f'keyfile = "{mtls.client_key_path}", server_name = "localhost" }}'
    )
    toml.write_text(
        "replicas = 2\nheartbeat_interval = 0.2\nnodes = [\n"
        f'  {{ id = "n0", host = "127.0.0.1", port = {mtls.ports[0]}, tls = {tls} }},\n'
        f'  "{_tls_url(mtls, 1)}",\n]\n'
    )
    config = ClusterConfig.from_file(toml)
    assert config.nodes[0].tls_server_name == "localhost"
    async with Cluster(config) as cache:
        await cache.set("mtls:k", b"v")
        assert await cache.get("mtls:k") == b"v"
    ca_pem = Path(str(mtls.ca_path)).read_text()
    for port in mtls.ports:
        with redis.Redis(
            host="127.0.0.1",
            port=port,
            ssl=True,
            ssl_ca_data=ca_pem,
            ssl_certfile=str(mtls.client_cert_path),
            ssl_keyfile=str(mtls.client_key_path),
        ) as r:
            assert r.exists(b"cachering:k:mtls:k") == 1


def test_toml_tls_table_errors_name_the_field(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    for table, part in [
        ('{ ca_file = "x" }', "unknown tls field 'ca_file'"),
        ("{ check_hostname = 1 }", "check_hostname"),
        ('{ ca_certs = "/no/such.pem" }', "/no/such.pem"),
        ("7", "true, false or a table"),
    ]:
        toml.write_text(f'nodes = [{{ id = "a", host = "h", port = 1, tls = {table} }}]\n')
        with pytest.raises(ConfigError, match=r"nodes\[0\]") as info:
            ClusterConfig.from_file(toml)
        assert part in str(info.value)


# ----------------------------------------------------------------------------- unix


@pytest.fixture(scope="module")
def unix_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two servers that also listen on a Unix socket; yields the socket paths."""
    base = tmp_path_factory.mktemp("sockets")
    paths = [str(base / f"s{i}.sock") for i in range(2)]
    clusters = []
    try:
        for path in paths:
            cluster = LocalCluster(1, extra_args=["--unixsocket", path, "--unixsocketperm", "700"])
            clusters.append(cluster.start())
        yield paths
    finally:
        for cluster in clusters:
            cluster.stop()


async def test_cluster_over_unix_sockets(unix_servers: list[str]) -> None:
    urls = [f"unix://{path}?id=u{i}" for i, path in enumerate(unix_servers)]
    config = ClusterConfig.from_urls(urls, replicas=2, heartbeat_interval=0.2)
    assert all(node.is_unix for node in config.nodes)
    async with Cluster(config) as cache:
        await cache.set("sock:k", b"over a socket")
        assert await cache.get("sock:k") == b"over a socket"
    for path in unix_servers:
        with redis.Redis(unix_socket_path=path) as r:
            assert r.exists(b"cachering:k:sock:k") == 1


async def test_missing_socket_is_node_unavailable(tmp_path: Path) -> None:
    spec = NodeSpec.from_url(f"unix://{tmp_path}/none.sock")
    with pytest.raises(NodeUnavailable, match=r"none\.sock"):
        await Connection.open(spec)
