"""The fault lab's network: one network namespace per process, veths into one bridge.

Every name carries a per-run prefix ``crl<pid36>`` (the owning test process's PID in base
36), so parallel runs never collide and a run can tell a stale leftover (its owner PID
is gone) from another live run. :func:`cleanup_stale` removes the leftovers of aborted
runs: the processes in their namespaces (by PID), the namespaces and the links.

The bridge lives in the root namespace and holds the first address of a private /24
(``10.213.X.0/24``, X chosen unused on this machine); every other address of that range
is the ``eth0`` of a namespace this run created, so no packet leaves the bridge.

Partitions use what this kernel has (no netem, no iptables): a permanent neighbour entry
with an unused MAC in the sending namespace, so its packets to one address go to a MAC
nobody owns and vanish. A cut is one way; both ways is two cuts. Healing deletes the
entry, and ARP learns the real MAC again.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterable

import attrs

FAMILY = "crl"
"""The first letters of every namespace and link the lab creates (then 5 base-36 digits
of the owner's PID)."""
DEAD_MAC = "02:00:00:00:00:99"
"""A locally administered MAC that no interface of the lab owns."""
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    for _ in range(5):  # 36**5 is above Linux's largest pid_max (2**22)
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
    return out


def run_prefix(pid: int | None = None) -> str:
    """The name prefix of the run owned by ``pid`` (this process by default)."""
    return FAMILY + _base36(os.getpid() if pid is None else pid)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def unavailable() -> str | None:
    """Why the full lab cannot run here (None when it can): root, ``ip``, namespaces."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the fault lab needs root for network namespaces"
    probe = f"{run_prefix()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no usable `ip` command: {exc}"
    if made.returncode != 0:
        return f"network namespaces are not available: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _owner(name: str) -> int | None:
    match = re.match(rf"{FAMILY}([0-9a-z]{{5}})", name)
    return None if match is None else int(match.group(1), 36)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def cleanup_stale() -> list[str]:
    """Remove the namespaces and links of lab runs whose owner process is gone."""
    removed: list[str] = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        owner = _owner(ns)
        if owner is None or _alive(owner):
            continue
        _kill_netns_pids(ns)
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        link = parts[1].strip().split("@")[0]
        owner = _owner(link)
        if owner is not None and not _alive(owner):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _used_subnets() -> set[int]:
    used = set()
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        match = re.match(r"10\.213\.(\d+)\.", line)
        if match:
            used.add(int(match.group(1)))
    for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines():
        match = re.search(r"inet 10\.213\.(\d+)\.", line)
        if match:
            used.add(int(match.group(1)))
    return used


@attrs.define
class Host:
    """One namespace of the lab: its name, its address on the bridge, its host-side link."""

    name: str
    netns: str
    addr: str
    link: str


@attrs.define
class LabNet:
    """The bridge, the namespaces and the cuts of one run. Use as a context manager."""

    prefix: str = attrs.Factory(run_prefix)
    subnet: int = 0
    hosts: dict[str, Host] = attrs.Factory(dict)
    cuts: set[tuple[str, str]] = attrs.Factory(set)
    _next: int = 10

    @property
    def bridge(self) -> str:
        """The bridge's link name (root namespace)."""
        return f"{self.prefix}br"

    def __enter__(self) -> LabNet:
        cleanup_stale()
        used = _used_subnets()
        base = os.getpid() % 200 + 20
        self.subnet = next(
            (base + i) % 254 + 1 for i in range(254) if (base + i) % 254 + 1 not in used
        )
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"10.213.{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> Host:
        """A new namespace ``name`` with ``eth0`` on the bridge and ``lo`` up."""
        if name in self.hosts:
            return self.hosts[name]
        netns = f"{self.prefix}-{name}"
        link = f"{self.prefix}{name}"
        addr = f"10.213.{self.subnet}.{self._next}"
        self._next += 1
        # Registered before the commands run, so close() removes a half-made host too.
        host = self.hosts[name] = Host(name, netns, addr, link)
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", link + "p")
        _ip("link", "set", link + "p", "netns", netns)
        _ip("-n", netns, "link", "set", link + "p", "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        return host

    def exec_prefix(self, name: str) -> list[str]:
        """The argv prefix that runs a command inside host ``name``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[name].netns]

    def cut(self, src: str, dst: str) -> None:
        """Drop every packet ``src`` sends to ``dst`` (one way), silently."""
        a, b = self.hosts[src], self.hosts[dst]
        _ip(
            "-n",
            a.netns,
            "neigh",
            "replace",
            b.addr,
            "lladdr",
            DEAD_MAC,
            "nud",
            "permanent",
            "dev",
            "eth0",
        )
        self.cuts.add((src, dst))

    def heal(self, src: str, dst: str) -> None:
        """Undo :meth:`cut` (ARP learns the real address again)."""
        a, b = self.hosts[src], self.hosts[dst]
        _ip("-n", a.netns, "neigh", "del", b.addr, "dev", "eth0", check=False)
        self.cuts.discard((src, dst))

    def heal_all(self) -> None:
        """Heal every cut."""
        for src, dst in sorted(self.cuts):
            self.heal(src, dst)

    def pids(self) -> Iterable[int]:
        """Every process still running in one of this run's namespaces."""
        for host in self.hosts.values():
            for pid in _ip("netns", "pids", host.netns, check=False).stdout.split():
                with contextlib.suppress(ValueError):
                    yield int(pid)

    def close(self) -> None:
        """Kill every process left in the namespaces (by PID), delete namespaces and links."""
        for host in self.hosts.values():
            _kill_netns_pids(host.netns)
        for host in self.hosts.values():
            _ip("link", "del", host.link, check=False)
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
        self.cuts.clear()
