"""Seeded fault schedules for the fault lab, and the run of one seed.

:func:`make_schedule` turns a seed into a plain list of steps (printable JSON, the same
for the same seed on any machine); :func:`run_seed` starts three nodes and three manager
processes (clock offsets, read and write levels and the backend drawn from the seed),
applies the steps, heals everything, waits for convergence, gathers the final state and
runs the checker. A failing seed prints its schedule; ``CACHERING_LAB_SEED=N`` reruns
exactly that one.

Steps (``op``): ``partition`` (a manager and some nodes, one way or both, for a while),
``pause_manager`` / ``pause_node`` (SIGSTOP, then SIGCONT), ``kill_manager`` (SIGKILL and
a replacement with a new id and maybe another clock, which takes over the dead manager's
keys, so a writer whose clock is behind follows one whose clock is ahead),
``restart_node`` (empty or from a snapshot taken earlier), ``snapshot``, ``amnesia``
(every manager paused, every node restarted empty, a new manager started, the old ones
resumed), ``drift`` (a manager whose config lists other nodes or
other timers), and ``wait``. ``who: "leader"`` is resolved when the step runs.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from lab_checker import Checker, History, Report
from lab_harness import Lab

NODES = ["n0", "n1", "n2"]
OFFSETS = [0, 0, 0, 60, -60, 600, -600]
"""Clock offsets (seconds) a manager may get: most run on time, some up to 10 minutes off."""
FAULTS = [
    "partition",
    "partition",
    "partition",
    "pause_manager",
    "pause_manager",
    "pause_node",
    "kill_manager",
    "restart_node",
    "restart_node",
    "amnesia",
    "drift",
]


def _fault(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "partition":
        cut = rng.sample(NODES, rng.choice([1, 2]))
        return {
            "op": kind,
            "who": rng.choice(["leader", "leader", "m0", "m1", "m2"]),
            "nodes": cut,
            "dir": rng.choice(["both", "out", "in"]),
            "for": round(rng.uniform(0.4, 2.0), 2),
        }
    if kind == "pause_manager":
        return {
            "op": kind,
            "who": rng.choice(["leader", "m1"]),
            "for": round(rng.uniform(0.3, 2.5), 2),
        }
    if kind == "pause_node":
        return {"op": kind, "node": rng.choice(NODES), "for": round(rng.uniform(0.1, 0.8), 2)}
    if kind == "kill_manager":
        return {"op": kind, "who": rng.choice(["leader", "m2"]), "offset": rng.choice(OFFSETS)}
    if kind == "restart_node":
        return {
            "op": kind,
            "node": rng.choice(NODES),
            "mode": rng.choice(["empty", "snapshot"]),
            "down": round(rng.uniform(0.0, 0.6), 2),
        }
    if kind == "amnesia":
        return {"op": kind, "for": round(rng.uniform(0.5, 1.5), 2)}
    drift = rng.choice(["fewer_nodes", "timers"])
    return {"op": kind, "drift": drift, "omit": rng.choice(NODES), "offset": rng.choice(OFFSETS)}


def make_schedule(seed: int, faults: int = 3) -> dict[str, Any]:
    """The whole run for ``seed``: manager setup and fault steps."""
    rng = random.Random(seed)
    setup = {
        "backend": rng.choice(["asyncio", "trio"]),
        "write_level": rng.choice(["quorum", "quorum", "all"]),
        "read_level": rng.choice(["one", "quorum"]),
        "offsets": [0] + [rng.choice(OFFSETS) for _ in range(2)],
    }
    steps: list[dict[str, Any]] = [{"op": "snapshot", "node": n} for n in NODES]
    for _ in range(faults):
        steps.append({"op": "wait", "for": round(rng.uniform(0.2, 0.8), 2)})
        steps.append(_fault(rng, rng.choice(FAULTS)))
    steps.append({"op": "wait", "for": 0.5})
    return {"seed": seed, "faults": faults, "setup": setup, "steps": steps}


class Runner:
    """Applies one schedule to one :class:`Lab`."""

    def __init__(self, lab: Lab, schedule: dict[str, Any]) -> None:
        self.lab = lab
        self.schedule = schedule
        self.setup = schedule["setup"]
        self.seed = schedule["seed"]
        self.spare = 3

    def start(self, mid: str, offset: float, **kw: Any) -> None:
        """Start one manager with this schedule's levels and backend."""
        self.lab.start_manager(
            mid,
            seed=self.seed * 100 + int(mid[1:]),
            clock_offset=offset,
            backend=self.setup["backend"],
            write_level=self.setup["write_level"],
            read_level=self.setup["read_level"],
            **kw,
        )

    def who(self, name: str) -> str | None:
        """A manager id, with ``leader`` resolved now (None when nobody leads)."""
        if name != "leader":
            return name if name in self.lab.managers and self.lab.managers[name].alive else None
        lead = self.lab.leader(timeout=5)
        return lead.id if lead is not None else None

    def new_id(self) -> str:
        """A fresh manager id (each process writes its own keys)."""
        mid = f"m{self.spare}"
        self.spare += 1
        return mid

    def step(self, s: dict[str, Any]) -> None:
        """Apply one step."""
        lab, op = self.lab, s["op"]
        if op == "wait":
            time.sleep(s["for"])
        elif op == "snapshot":
            lab.nodes[s["node"]].snapshot()
            lab.log(f"snapshot {s['node']}")
        elif op == "partition":
            self.partition(s)
        elif op == "pause_manager":
            mid = self.who(s["who"])
            if mid is not None:
                lab.managers[mid].pause()
                lab.log(f"paused {mid}")
                time.sleep(s["for"])
                lab.managers[mid].resume()
                lab.log(f"resumed {mid}")
        elif op == "pause_node":
            lab.nodes[s["node"]].pause()
            lab.log(f"paused node {s['node']}")
            time.sleep(s["for"])
            lab.nodes[s["node"]].resume()
            lab.log(f"resumed node {s['node']}")
        elif op == "kill_manager":
            mid = self.who(s["who"])
            if mid is not None:
                lab.managers[mid].kill()
                lab.log(f"killed {mid}")
            self.start(self.new_id(), s["offset"], inherit=mid)
        elif op == "restart_node":
            node = lab.nodes[s["node"]]
            node.kill()
            lab.log(f"killed node {s['node']}")
            time.sleep(s["down"])
            lab.restart_node(s["node"], snapshot=s["mode"] == "snapshot")
        elif op == "amnesia":
            self.amnesia(s)
        elif op == "drift":
            self.drift(s)
        else:  # pragma: no cover - a schedule is made by make_schedule
            raise ValueError(f"unknown step {s}")

    def partition(self, s: dict[str, Any]) -> None:
        """Cut one manager from some nodes (one way or both) for a while, then heal."""
        mid = self.who(s["who"])
        if mid is None:
            return
        for node in s["nodes"]:
            if s["dir"] in ("both", "out"):
                self.lab.cut(mid, node)
            if s["dir"] in ("both", "in"):
                self.lab.cut(node, mid)
        time.sleep(s["for"])
        self.lab.heal_all()

    def amnesia(self, s: dict[str, Any]) -> None:
        """Managers paused while the whole fleet restarts empty; a new manager; resume."""
        lab = self.lab
        paused = [m for m in lab.live() if not m.paused]
        for m in paused:
            m.pause()
        lab.log(f"paused {[m.id for m in paused]} for fleet amnesia")
        for node in NODES:
            lab.restart_node(node, snapshot=False)
        self.start(self.new_id(), 0)
        time.sleep(s["for"])
        for m in paused:
            m.resume()
        lab.log(f"resumed {[m.id for m in paused]}")

    def drift(self, s: dict[str, Any]) -> None:
        """A manager whose config differs from the others' (a rolling change, a typo)."""
        mid = self.new_id()
        if s["drift"] == "fewer_nodes":
            self.start(mid, s["offset"], node_ids=[n for n in NODES if n != s["omit"]])
        else:
            self.start(
                mid, s["offset"], options={"heartbeat_interval": 0.25, "failure_threshold": 6}
            )

    def heal(self) -> None:
        """End every fault: heal cuts, resume everything, restart any node that is down."""
        lab = self.lab
        lab.heal_all()
        for m in lab.live():
            m.resume()
        for node in lab.nodes.values():
            node.resume()
            if not node.running:
                lab.restart_node(node.id, snapshot=False)


def _converged(lab: Lab) -> str:
    """Empty when every live manager holds the same topology, every node in it is up,
    nothing is lagging, and every node stores that topology; else what differs."""
    states = {}
    for m in lab.live():
        try:
            states[m.id] = m.ask("state", timeout=5)
        except (TimeoutError, RuntimeError) as exc:
            return f"{m.id}: {exc}"
    stamps = {tuple(s["stamp"]) for s in states.values()}
    if len(stamps) != 1:
        return f"managers disagree: { {k: s['stamp'] for k, s in states.items()} }"
    bad = {
        k: (s["states"], s["lagging"])
        for k, s in states.items()
        if any(v != "up" for v in s["states"].values()) or s["lagging"] or s["unreadable"]
    }
    if bad:
        return f"not all up and readable: {bad}"
    (stamp,) = stamps
    held = {}
    for node in sorted({n for s in states.values() for n in s["states"]}):
        client = lab.nodes[node].client
        with contextlib.suppress(Exception):
            te, tv = client.hmget(f"{lab.ns}:ctl:topology", "epoch", "version")
            held[node] = (int(te), int(tv)) if te is not None and tv is not None else None
    if any(v != stamp for v in held.values()):
        return f"nodes hold {held}, managers {stamp}"
    return ""


def wait_converged(lab: Lab, timeout: float = 30.0) -> str:
    """Wait (bounded) for :func:`_converged`; returns the last difference, or empty."""
    deadline = time.monotonic() + timeout
    why = "never checked"
    while time.monotonic() < deadline:
        why = _converged(lab)
        if not why:
            return ""
        time.sleep(0.1)
    return f"not converged {timeout:.0f} s after healing: {why}"


def final_state(lab: Lab, history: History) -> None:
    """Final reads through one manager and every home copy through redis-py."""
    live = [m for m in lab.live() if not m.paused]
    if not live:
        return
    # The final reads go through a manager configured like the fleet (not a drifted one).
    plain = [m for m in live if history.managers[m.id]["nodes"] == NODES]
    plain = [m for m in plain if not history.managers[m.id]["options"]]
    reader = (plain or live)[0]
    keys = lab.all_keys()
    for m in live:
        m.send("load", on=False)
    time.sleep(0.3)  # let in-flight operations finish: their lines still count
    with contextlib.suppress(TimeoutError, RuntimeError):
        reader.ask("flush", timeout=10)
    # One anti-entropy sweep after healing (see repair.sweep): copies must agree after it.
    with contextlib.suppress(TimeoutError, RuntimeError):
        base = sum(m.ask("state")["sweeps"] for m in live)
        deadline = time.monotonic() + 10
        while (
            sum(m.ask("state")["sweeps"] for m in live) < base + 2 and time.monotonic() < deadline
        ):
            time.sleep(0.1)
    history.final_at = time.monotonic()
    history.final_seqs = reader.ask("read", keys=keys, timeout=30)["seqs"]
    homes = reader.ask("homes", keys=keys)["homes"]
    for key in keys:
        row = {}
        for node in homes[key]:
            client = lab.nodes[node].client
            name = f"{lab.ns}:k:{key}"
            try:
                raw = client.get(name)
                exp = int(client.execute_command("PEXPIRETIME", name))
            except Exception as exc:
                row[node] = (-3, None)
                history.events.append((time.monotonic(), f"copy {key}@{node}: {exc!r}"))
                continue
            row[node] = (_seq_in(key, raw), exp if exp >= 0 else None)
        history.copies[key] = row


def _seq_in(key: str, raw: bytes | None) -> int:
    from cachering.data import values

    user = values.user_bytes(raw) if raw is not None else None
    if user is None:
        return -1
    name, _, seq = user.decode(errors="replace").rpartition(":")
    return int(seq) if name == key and seq.isdigit() else -2


def run_seed(lab: Lab, seed: int, faults: int = 3) -> tuple[dict[str, Any], History, Report]:
    """Run one seeded schedule on ``lab``; returns the schedule, history and report."""
    schedule = make_schedule(seed, faults)
    runner = Runner(lab, schedule)
    for node in NODES:
        lab.add_node(node)
    lab.start_observer()
    for i, offset in enumerate(schedule["setup"]["offsets"]):
        runner.start(f"m{i}", offset)
    if lab.leader(timeout=30) is None:
        lab.log("no leader within 30 s of starting")
    time.sleep(0.3)
    for step in schedule["steps"]:
        lab.log(f"step {json.dumps(step)}")
        runner.step(step)
    runner.heal()
    lab.history.converged = wait_converged(lab)
    final_state(lab, lab.history)
    lab.stop_observer()
    history = lab.collect()
    return schedule, history, Checker(history).run()


def describe(schedule: dict[str, Any], history: History, report: Report, workdir: Path) -> str:
    """What a failing seed prints: the seed, its schedule, what happened, the violations."""
    t0 = history.events[0][0] if history.events else 0.0
    events = "\n".join(f"    {t - t0:7.3f} {text}" for t, text in history.events)
    rerun = f"CACHERING_LAB_SEED={schedule['seed']} CACHERING_LAB_FAULTS={schedule['faults']}"
    return (
        f"fault lab seed {schedule['seed']} (rerun: {rerun} make lab)\n"
        f"  setup {json.dumps(schedule['setup'])}\n  events:\n{events}\n"
        f"  counts {dict(report.counts)}\n  violations:\n{report.summary()}\n"
        f"  manager logs: {workdir}"
    )
