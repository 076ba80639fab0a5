"""The fault lab: nodes and manager processes on a real (or loopback) network, a history.

:class:`Lab` owns one run's network (:class:`lab_net.LabNet` namespaces, or
:class:`LoopbackNet` with a FaultProxy per manager and node where the machine has no
namespaces), its redis-server nodes, its manager processes, and an observer thread that
samples every node with redis-py from the root namespace (election epoch and vote, the
stored topology's stamp and author). Faults are methods: :meth:`Lab.cut` and
:meth:`Lab.heal` between any two hosts, pause/resume/kill of any process, node restarts
empty or from a snapshot, each manager's wall clock offset (libfaketime) and config.

Everything is logged on one clock, ``time.monotonic()`` of this machine: the managers
write their operations with the same clock (libfaketime shifts wall time only), and
:meth:`Lab.history` gathers it all for :mod:`lab_checker`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.from_thread
import redis

from cachering.local.faults import FaultProxy
from lab_checker import History
from lab_net import LabNet
from lab_procs import ManagerProc, NodeProc

SECRET = "lab-secret-0123456789abcdef01234"
BASE_OPTIONS: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "failure_threshold": 3,
    "timeout": 0.5,
    "connect_timeout": 0.5,
    "node_backoff": 0.3,
    "topology_refresh_interval": 1.0,
    "replicas": 2,
    "sync_flush_interval": 0.002,
    "anti_entropy_interval": 0.5,
    "secret": SECRET,
}
"""Every manager's options (0.1 s heartbeats), unless a schedule drifts one of them."""


class Network(Protocol):
    """What the lab needs of a network: hosts, exec prefixes, addresses, cuts."""

    def add(self, name: str) -> Any: ...
    def exec_prefix(self, name: str) -> list[str]: ...
    def cut(self, src: str, dst: str) -> None: ...
    def heal(self, src: str, dst: str) -> None: ...
    def heal_all(self) -> None: ...
    def close(self) -> None: ...


class LoopbackNet:
    """The fallback network without namespaces: every manager reaches every node through
    its own :class:`FaultProxy` on 127.0.0.1, served from one background event loop.

    ``cut(manager, node)`` blackholes that proxy's ``up`` direction, ``cut(node, manager)``
    its ``down`` direction; cuts between two nodes or two managers mean nothing here
    (they never talk to each other directly) and are refused.
    """

    def __init__(self) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.proxies: dict[tuple[str, str], FaultProxy] = {}
        self.cuts: set[tuple[str, str]] = set()

    def add(self, name: str) -> None:
        """Hosts are implicit on loopback."""

    def exec_prefix(self, name: str) -> list[str]:
        """No namespace: run the command as is."""
        return []

    def proxy(self, manager: str, node: str, port: int) -> FaultProxy:
        """Start (once) the proxy through which ``manager`` reaches ``node``."""
        key = (manager, node)
        if key not in self.proxies:
            proxy = FaultProxy("127.0.0.1", port)
            self.portal.start_task(proxy.serve)
            self.proxies[key] = proxy
        return self.proxies[key]

    def _apply(self, manager: str, node: str) -> None:
        proxy = self.proxies[(manager, node)]
        up, down = (manager, node) in self.cuts, (node, manager) in self.cuts
        self.portal.call(proxy.heal)
        if up or down:
            direction = "both" if up and down else "up" if up else "down"
            self.portal.call(proxy.blackhole, direction)

    def _pair(self, src: str, dst: str) -> tuple[str, str]:
        for m, n in ((src, dst), (dst, src)):
            if (m, n) in self.proxies:
                return m, n
        raise ValueError(f"loopback lab can only cut a manager from a node, not {src}->{dst}")

    def cut(self, src: str, dst: str) -> None:
        """Drop what ``src`` sends to ``dst``."""
        pair = self._pair(src, dst)
        self.cuts.add((src, dst))
        self._apply(*pair)

    def heal(self, src: str, dst: str) -> None:
        """Undo :meth:`cut`."""
        pair = self._pair(src, dst)
        self.cuts.discard((src, dst))
        self._apply(*pair)

    def heal_all(self) -> None:
        """Heal every cut."""
        for src, dst in sorted(self.cuts):
            self.heal(src, dst)

    def close(self) -> None:
        """Close every proxy and the background loop."""
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                self.portal.call(proxy.aclose)
        self.proxies.clear()
        self._portal_cm.__exit__(None, None, None)


class Lab:
    """One run: nodes, managers, faults, the observer and the history."""

    def __init__(self, net: LabNet | LoopbackNet, workdir: Path, ns: str) -> None:
        self.net = net
        self.workdir = workdir
        self.ns = ns
        self.nodes: dict[str, NodeProc] = {}
        self.managers: dict[str, ManagerProc] = {}
        self.history = History(ns=ns)
        self.mono_to_wall = time.time() - time.monotonic()
        self._stop = threading.Event()
        self._observer: threading.Thread | None = None
        self._ports: dict[str, int] = {}

    # ------------------------------------------------------------------ log

    def log(self, text: str) -> None:
        """A schedule step as applied, on the lab's clock."""
        self.history.events.append((time.monotonic(), text))

    # ------------------------------------------------------------------ nodes

    def add_node(self, node_id: str) -> NodeProc:
        """Create (or reuse) ``node_id`` and start it empty."""
        if isinstance(self.net, LabNet):
            host = self.net.add(node_id)
            node = NodeProc(node_id, self.net.exec_prefix(node_id), host.addr, self.workdir)
        else:
            node = _loopback_node(node_id, self.workdir)
        self.nodes[node_id] = node
        node.start()
        return node

    def node_specs(self, manager_id: str, ids: list[str]) -> list[list[Any]]:
        """The ``[id, host, port]`` rows through which ``manager_id`` reaches ``ids``."""
        rows = []
        for nid in ids:
            node = self.nodes[nid]
            if isinstance(self.net, LoopbackNet):
                proxy = self.net.proxy(manager_id, nid, node.port)
                rows.append([nid, proxy.host, proxy.port])
            else:
                rows.append([nid, node.addr, NodeProc.PORT])
        return rows

    def restart_node(self, node_id: str, *, snapshot: bool) -> None:
        """Kill a node and start it again, empty or from its last snapshot."""
        node = self.nodes[node_id]
        node.kill()
        self.history.resets.append((time.monotonic(), node_id, "snapshot" if snapshot else "empty"))
        node.start(snapshot=snapshot)
        self.log(f"node {node_id} restarted {'from snapshot' if snapshot else 'empty'}")

    # ------------------------------------------------------------------ managers

    def start_manager(
        self,
        manager_id: str,
        *,
        seed: int,
        node_ids: list[str] | None = None,
        clock_offset: float = 0.0,
        options: dict[str, Any] | None = None,
        backend: str = "asyncio",
        write_level: str = "quorum",
        read_level: str | None = None,
        keys: int = 6,
        ttl: float | None = 300.0,
        inherit: str | None = None,
    ) -> ManagerProc:
        """Start ``lab_manager.py`` as ``manager_id`` in its own namespace; with
        ``inherit``, it takes over that (dead) manager's keys after their last seq."""
        self.net.add(manager_id)
        ids = node_ids if node_ids is not None else sorted(self.nodes)
        own = [f"{manager_id}-k{i}" for i in range(keys)]
        start: dict[str, int] = {}
        if inherit is not None:
            own = list(self.managers[inherit].spec["own"])
            for line in self.managers[inherit].snapshot():
                if line.get("ev") == "inv":
                    start[line["key"]] = max(start.get(line["key"], 0), line["seq"])
        spec = {
            "id": manager_id,
            "nodes": self.node_specs(manager_id, ids),
            "ns": self.ns,
            "options": {**BASE_OPTIONS, **(options or {})},
            "seed": seed,
            "own": own,
            "start_seqs": start,
            "ttl": ttl,
            "write_level": write_level,
            "read_level": read_level,
            "backend": backend,
            "mono_to_wall": self.mono_to_wall,
            "read_keys": self.all_keys(extra=own),
        }
        proc = ManagerProc(
            spec, self.net.exec_prefix(manager_id), self.workdir, clock_offset=clock_offset
        )
        self.managers[manager_id] = proc
        self.history.managers[manager_id] = {
            "offset": clock_offset,
            "nodes": ids,
            "options": options or {},
            "ttl": ttl,
        }
        proc.wait_for(lambda line: line.get("ev") == "ready", 60, "ready")
        keys_now = self.all_keys()
        for other in self.live():
            if other.id != manager_id:
                other.send("keys", keys=keys_now)
        took = f", keys of {inherit}" if inherit else ""
        self.log(f"manager {manager_id} started (clock {clock_offset:+.0f} s, nodes {ids}{took})")
        return proc

    def all_keys(self, extra: list[str] | None = None) -> list[str]:
        """Every key any manager writes (each manager's own, single-writer keys)."""
        keys = [k for m in self.managers.values() for k in m.spec["own"]]
        return sorted(set(keys + (extra or [])))

    def live(self) -> list[ManagerProc]:
        """Managers not killed (paused ones included)."""
        return [m for m in self.managers.values() if m.alive]

    def leader(self, timeout: float = 20.0) -> ManagerProc | None:
        """The live unpaused manager that says it leads (bounded wait), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.live():
                if m.paused:
                    continue
                with contextlib.suppress(TimeoutError, RuntimeError):
                    if m.ask("state", timeout=5)["is_leader"]:
                        return m
            time.sleep(0.05)
        return None

    # ------------------------------------------------------------------ faults

    def cut(self, src: str, dst: str) -> None:
        """Drop what ``src`` sends to ``dst`` (hosts: node or manager ids)."""
        self.net.cut(src, dst)
        self.log(f"cut {src} -> {dst}")

    def heal_all(self) -> None:
        """Heal every cut."""
        self.net.heal_all()
        self.log("healed every cut")

    # ------------------------------------------------------------------ observer

    def start_observer(self) -> None:
        """Sample every node's control keys with redis-py every 20 ms, from this side."""
        self._observer = threading.Thread(target=self._observe, name="lab-observer", daemon=True)
        self._observer.start()

    def _observe(self) -> None:
        election, topology = f"{self.ns}:ctl:election", f"{self.ns}:ctl:topology"
        while not self._stop.wait(0.02):
            for node in list(self.nodes.values()):
                if node.paused:
                    continue
                try:
                    ep, voted = node.client.hmget(election, "epoch", "voted_for")
                    te, tv, payload = node.client.hmget(topology, "epoch", "version", "payload")
                except redis.RedisError:
                    continue
                self.history.node_samples[node.id].append(
                    (time.monotonic(), _int(ep), _text(voted), _int(te), _int(tv), _author(payload))
                )

    def stop_observer(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._observer is not None:
            self._observer.join(timeout=10)

    # ------------------------------------------------------------------ history

    def collect(self) -> History:
        """Merge every manager's lines into the history."""
        h = self.history
        h.ops.clear()
        h.invs.clear()
        h.roles.clear()
        h.crashes.clear()
        for m in self.managers.values():
            for line in m.snapshot():
                ev = line.get("ev")
                if ev == "op":
                    h.ops.append(line)
                elif ev == "ready":
                    h.managers[m.id]["wall_offset"] = line["wall_offset"]
                    h.managers[m.id]["ready_t"] = line["t"]
                elif ev == "inv":
                    h.invs.append(line)
                elif ev == "role":
                    h.roles.append(line)
                elif ev in ("crash", "junk"):
                    h.crashes.append(line)
        h.mono_to_wall = self.mono_to_wall
        return h

    def close(self) -> None:
        """Stop everything this lab started, by PID; the network is the caller's."""
        self.stop_observer()
        for m in self.managers.values():
            with contextlib.suppress(Exception):
                m.kill()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.close()


def _loopback_node(node_id: str, workdir: Path) -> NodeProc:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = NodeProc(node_id, [], "127.0.0.1", workdir)
    node.port = port
    node.client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1
    )
    return node


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _text(raw: Any) -> str | None:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else None


def _author(payload: Any) -> str | None:
    """The ``leader`` field of a stored topology payload (None if absent or unreadable)."""
    if not isinstance(payload, bytes):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    leader = data.get("leader") if isinstance(data, dict) else None
    return leader if isinstance(leader, str) else None
