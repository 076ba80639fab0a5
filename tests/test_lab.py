"""The fault lab: seeded fault schedules on real namespaces, checked over their history.

Each seed runs once (three redis-server nodes and three or more manager processes, each
in its own network namespace, see :mod:`lab_schedule`); every invariant of
:mod:`lab_checker` is then its own test, so a report says which invariant broke under
which seed. ``CACHERING_LAB_SEEDS=N`` runs seeds 1..N (``make lab SEEDS=200``),
``CACHERING_LAB_SEED=N`` reruns one seed; by default seeds 1..10 run, and the
:data:`REGRESSION_SEEDS`. A failing test
prints the seed, its schedule as applied, and the first violations.

Without root or network namespaces the namespace lab skips (saying why) and the
loopback variant runs the same schedules with FaultProxy in front of every node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_checker import Report
from lab_harness import Lab, LoopbackNet
from lab_net import LabNet, cleanup_stale, unavailable
from lab_procs import end, spawn
from lab_schedule import describe, run_seed

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]


def _seeds() -> list[int]:
    one = os.environ.get("CACHERING_LAB_SEED")
    if one:
        return [int(one)]
    n = int(os.environ.get("CACHERING_LAB_SEEDS", "0") or 0)
    if n > 0:
        return list(range(1, n + 1))
    return [*range(1, 11), *REGRESSION_SEEDS]


REGRESSION_SEEDS = (67,)
"""Seeds the CI share runs besides 1..10: a fleet amnesia followed by faults, which lost
every write the nodes took after coming back while the leader repaired two homes at once.
(Seed 73, which failed the same way, still loses a write now and then: open.)"""


SEEDS = _seeds()
FAULTS = int(os.environ.get("CACHERING_LAB_FAULTS", "3") or 3)
"""Faults per schedule (the CI share keeps 3 to stay within its time)."""
INVARIANTS: dict[str, str | None] = dict.fromkeys(
    (
        "manager_crash",
        "one_leader_per_epoch",
        "epochs_never_go_back",
        "topology_from_winner",
        "convergence",
        "copies_agree",
        "no_phantom_reads",
        "no_stale_reads",
        "no_lost_writes",
        "no_resurrected_deletes",
        "expiry_follows_servers",
    )
)
"""Each invariant, and why it is expected to fail (None: it must hold; every one must)."""


def _params() -> list[Any]:
    out = []
    for name, known in INVARIANTS.items():
        marks = [pytest.mark.xfail(strict=False, reason=known)] if known else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


class Runs:
    """One run per seed, shared by the tests of every invariant."""

    def __init__(self, net: LabNet | LoopbackNet) -> None:
        self.net = net
        self.results: dict[int, tuple[dict[str, Any], Any, Report, Path]] = {}
        self.errors: dict[int, str] = {}
        self.root = Path(tempfile.mkdtemp(prefix="cachering-lab-"))

    def get(self, seed: int) -> tuple[dict[str, Any], Any, Report, Path]:
        if seed in self.errors:
            pytest.fail(self.errors[seed])
        if seed not in self.results:
            workdir = self.root / f"seed{seed}"
            workdir.mkdir()
            lab = Lab(self.net, workdir, f"lab{seed}")
            try:
                schedule, history, report = run_seed(lab, seed, FAULTS)
            except Exception as exc:
                events = "\n".join(f"    {t:.3f} {text}" for t, text in lab.history.events)
                self.errors[seed] = (
                    f"seed {seed}: the lab failed: {exc!r}\n{events}\n{traceback.format_exc()}"
                )
                pytest.fail(self.errors[seed])
            finally:
                lab.close()
                self.net.heal_all()
            self.results[seed] = (schedule, history, report, workdir)
        return self.results[seed]

    def summary(self) -> list[str]:
        lines = []
        for seed, (_s, _h, report, _w) in sorted(self.results.items()):
            bad = {k: len(v) for k, v in report.violations.items() if v}
            lines.append(f"lab seed {seed}: {dict(report.counts)} violations {bad or 'none'}")
        return lines


def _report(config: pytest.Config, runs: Runs) -> None:
    """One line per seed on the terminal (not captured): what ran, what broke."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in runs.summary():
            reporter.write_line(line)


def _clean(runs: Runs) -> None:
    """Remove the run's files, unless ``CACHERING_LAB_KEEP=1`` keeps them for a post-mortem."""
    if os.environ.get("CACHERING_LAB_KEEP") == "1":
        print(f"lab files kept in {runs.root}")
        return
    shutil.rmtree(runs.root, ignore_errors=True)


@pytest.fixture(scope="module")
def ns_runs(pytestconfig: pytest.Config) -> Iterator[Runs]:
    why = unavailable()
    if why is not None:
        pytest.skip(f"{why}; the loopback lab (test_loopback_lab) runs instead")
    with LabNet() as net:
        runs = Runs(net)
        try:
            yield runs
        finally:
            _report(pytestconfig, runs)
            _clean(runs)


@pytest.fixture(scope="module")
def loop_runs(pytestconfig: pytest.Config) -> Iterator[Runs]:
    net = LoopbackNet()
    runs = Runs(net)
    try:
        yield runs
    finally:
        _report(pytestconfig, runs)
        net.close()
        _clean(runs)


def _check(runs: Runs, seed: int, invariant: str) -> None:
    schedule, history, report, workdir = runs.get(seed)
    for mid, info in history.managers.items():  # the faults really happened as scheduled
        shift = info.get("wall_offset")
        assert shift is not None, f"{mid} never reported ready"
        assert abs(shift - info["offset"]) < 5, f"{mid}: clock {shift:+.1f} s, not {info['offset']}"
        # Its monotonic clock is the lab's (libfaketime shifts wall time only).
        first, last = history.events[0][0], history.events[-1][0]
        assert first - 60 < info["ready_t"] < last, f"{mid}: monotonic {info['ready_t']}"
    assert report.counts["writes"] > 0, describe(schedule, history, report, workdir)
    assert report.counts["reads"] > 0, describe(schedule, history, report, workdir)
    assert not report.violations.get(invariant), describe(schedule, history, report, workdir)


@pytest.mark.parametrize("invariant", _params())
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_lab(ns_runs: Runs, seed: int, invariant: str) -> None:
    """Every invariant holds over seed ``seed``'s schedule on real namespaces."""
    _check(ns_runs, seed, invariant)


_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(2.0)
try:
    s.recv(64)
except TimeoutError:
    sys.exit(1)
"""
_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(10):
    s.sendto(b"x", (sys.argv[1], 9999))
    time.sleep(0.05)
"""


def _reaches(net: LabNet, src: str, dst: str) -> bool:
    """Whether a UDP datagram from ``src`` arrives at ``dst`` (bounded: about 2 s)."""
    addr = net.hosts[dst].addr
    recv = spawn([*net.exec_prefix(dst), sys.executable, "-c", _RECV, addr])
    try:
        time.sleep(0.2)
        subprocess.run(
            [*net.exec_prefix(src), sys.executable, "-c", _SEND, addr], timeout=10, check=True
        )
        return recv.wait(timeout=10) == 0
    finally:
        end(recv)


def test_cut_drops_one_way_and_heals(ns_runs: Runs) -> None:
    """A cut drops what one namespace sends to another, not the way back; heal undoes it."""
    net = ns_runs.net
    assert isinstance(net, LabNet)
    net.add("pa")
    net.add("pb")
    assert _reaches(net, "pa", "pb")
    assert _reaches(net, "pb", "pa")
    net.cut("pa", "pb")
    try:
        assert not _reaches(net, "pa", "pb")
        assert _reaches(net, "pb", "pa")
    finally:
        net.heal("pa", "pb")
    assert _reaches(net, "pa", "pb")


_ABORTED = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from lab_net import LabNet
net = LabNet().__enter__()
net.add("x")
subprocess.Popen([*net.exec_prefix("x"), "sleep", "120"])
print(net.prefix, flush=True)
time.sleep(120)
"""


def test_stale_run_is_cleaned_up(ns_runs: Runs) -> None:
    """A run killed without teardown leaves a namespace, links and a process; the next
    run's start removes them (by the dead owner's PID prefix), and leaves live runs be."""
    here = str(Path(__file__).parent)
    proc = subprocess.Popen([sys.executable, "-c", _ABORTED, here], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().decode().strip()
        assert prefix.startswith("crl"), prefix
        netns = f"{prefix}-x"
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        (sleeper,) = (int(p) for p in pids.stdout.split())
        assert netns not in cleanup_stale()  # its owner still lives: left alone
        assert netns in _netns()
    finally:
        end(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    removed = cleanup_stale()
    assert netns in removed
    assert netns not in _netns()
    assert f"{prefix}br" not in _links()
    assert f"{prefix}x" not in _links()
    deadline = time.monotonic() + 10
    while _running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(sleeper), "the process in the stale namespace survived"
    assert ns_runs.net.bridge in _links(), "a live run's bridge was removed"


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie (an orphan is reaped by whoever is init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


_LOOP_SEEDS = SEEDS if unavailable() is not None else SEEDS[:1]


@pytest.mark.parametrize("invariant", _params())
@pytest.mark.parametrize("seed", _LOOP_SEEDS, ids=lambda s: f"seed{s}")
def test_loopback_lab(loop_runs: Runs, seed: int, invariant: str) -> None:
    """The same schedules on loopback with a FaultProxy per manager and node: all of them
    where namespaces are missing, one seed otherwise (so the fallback keeps working)."""
    _check(loop_runs, seed, invariant)
