"""Helpers for the cluster tests: an independent redis-py view of every server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from cachering import NodeSpec
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.local import LocalCluster


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
        return int(self.clients[node].execute_command("PEXPIRETIME", f"{ns}:k:".encode() + k))

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
