"""The fault lab's checker and schedules, on hand-made histories (no servers).

Each invariant gets a history that breaks it and must be reported, beside the clean
history that must not: a checker that cannot fail would prove nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab_checker import ONE_READ_GRACE, Checker, History, promise
from lab_schedule import make_schedule

WALL = 1_000_000.0  # the lab's wall clock minus its monotonic clock, in these histories


def _op(kind: str, key: str, seq: int, t0: float, t1: float, **kw: Any) -> dict[str, Any]:
    base = {
        "kind": kind,
        "key": key,
        "seq": seq,
        "t0": t0,
        "t1": t1,
        "ok": True,
        "level": "default" if kind == "get" else "quorum",
        "manager": key.split("-")[0],
    }
    base.update(kw)
    return base


def _history() -> History:
    """m0 writes a-k0 seq 1 and 2 (quorum); m1 reads them in order; all converged."""
    h = History(ns="t", mono_to_wall=WALL)
    h.managers = {"m0": {"ttl": 60.0}, "m1": {"ttl": 60.0}}
    h.invs = [{"key": "m0-k0", "seq": 1, "t0": 1.0}, {"key": "m0-k0", "seq": 2, "t0": 3.0}]
    h.ops = [
        _op("set", "m0-k0", 1, 1.0, 1.1),
        _op("get", "m0-k0", 1, 2.0, 2.1, manager="m1", level="quorum"),
        _op("set", "m0-k0", 2, 3.0, 3.1),
        _op("get", "m0-k0", 2, 4.0, 4.1, manager="m1", level="quorum"),
    ]
    h.roles = [
        {"manager": "m0", "t": 0.5, "epoch": 1, "is_leader": True, "stamp": [1, 1], "author": "m0"},
        {
            "manager": "m1",
            "t": 0.6,
            "epoch": 1,
            "is_leader": False,
            "stamp": [1, 1],
            "author": "m0",
        },
    ]
    h.node_samples["n0"] = [(0.5, 1, "m0", 1, 1, "m0"), (0.7, 1, "m0", 1, 2, "m0")]
    h.final_seqs = {"m0-k0": 2}
    expiry = int((3.05 + WALL + 60.0) * 1000)
    h.copies = {"m0-k0": {"n0": (2, expiry), "n1": (2, expiry)}}
    return h


def _violated(h: History) -> set[str]:
    return {k for k, v in Checker(h).run().violations.items() if v}


def test_clean_history_passes() -> None:
    report = Checker(_history()).run()
    assert report.ok, report.summary()
    assert report.counts["reads"] == 2
    assert report.counts["writes"] == 2


def test_two_leaders_in_one_epoch() -> None:
    h = _history()
    h.roles.append(
        {"manager": "m1", "t": 0.9, "epoch": 1, "is_leader": True, "stamp": [1, 1], "author": "m0"}
    )
    assert _violated(h) == {"one_leader_per_epoch"}


def test_epoch_going_back_on_a_node_and_reset_excuses_it() -> None:
    h = _history()
    h.node_samples["n0"].append((0.8, 0, "", 1, 2, "m0"))
    assert _violated(h) == {"epochs_never_go_back"}
    h.resets.append((0.75, "n0", "empty"))  # the node forgot: a new segment starts
    assert _violated(h) == set()


def test_topology_by_a_non_winner() -> None:
    h = _history()
    h.node_samples["n1"] = [(0.9, 1, "m0", 1, 2, "m9")]
    assert _violated(h) == {"topology_from_winner"}


def test_topology_not_from_the_candidate_the_node_voted_for() -> None:
    h = _history()
    h.roles.append(
        {"manager": "m0", "t": 0.9, "epoch": 2, "is_leader": True, "stamp": [2, 1], "author": "m0"}
    )
    h.node_samples["n1"] = [(1.0, 2, "m1", 2, 1, "m0")]  # voted m1 in 2, holds m0's
    assert _violated(h) == {"topology_from_winner"}


def test_stale_read_and_grace_of_one_reads() -> None:
    h = _history()
    h.ops.append(_op("get", "m0-k0", 1, 3.2, 3.3, manager="m1", level="quorum"))
    assert _violated(h) == {"no_stale_reads"}
    h.ops[-1]["level"] = "one"  # within the grace after a quorum write: no promise yet
    assert _violated(h) == set()
    h.ops[-1]["t0"] = 3.1 + ONE_READ_GRACE + 0.01
    assert _violated(h) == {"no_stale_reads"}


def test_failed_write_promises_nothing() -> None:
    h = _history()
    h.invs.append({"key": "m0-k0", "seq": 3, "t0": 5.0})
    h.ops.append(_op("set", "m0-k0", 3, 5.0, 5.1, ok=False))
    h.ops.append(_op("get", "m0-k0", 2, 6.0, 6.1, manager="m1", level="quorum"))
    assert _violated(h) == set()


def test_phantom_read() -> None:
    h = _history()
    h.ops.append(_op("get", "m0-k0", 7, 5.0, 5.1, manager="m1"))
    assert _violated(h) == {"no_phantom_reads"}


def test_miss_is_lost_unless_enough_nodes_lost_their_data() -> None:
    h = _history()
    h.ops.append(_op("get", "m0-k0", -1, 5.0, 5.1, manager="m1", level="quorum"))
    assert _violated(h) == {"no_lost_writes"}
    h.resets.append((4.0, "n0", "empty"))
    assert _violated(h) == {"no_lost_writes"}  # one home lost it: the other must serve
    h.resets.append((4.5, "n1", "snapshot"))
    assert _violated(h) == set()


def test_data_lost_while_a_write_was_under_way_excuses_its_miss() -> None:
    # The write was invoked before its homes lost their data and completed after (its
    # writer was paused with the nodes' replies in flight): it may have taken effect
    # before the loss, so a later miss is excused; a write invoked after it is not.
    h = _history()
    h.invs.append({"key": "m0-k0", "seq": 3, "t0": 5.0})
    h.ops.append(_op("set", "m0-k0", 3, 5.0, 7.0))
    h.resets += [(5.5, "n0", "empty"), (5.6, "n1", "empty")]
    h.final_seqs = {"m0-k0": -1}
    h.copies = {}
    h.ops.append(_op("get", "m0-k0", -1, 8.0, 8.1, manager="m1", level="quorum"))
    assert _violated(h) == set()
    h.resets = [(4.5, "n0", "empty"), (4.6, "n1", "empty")]  # before the write began
    assert _violated(h) == {"no_lost_writes"}


def test_resurrected_delete_and_miss_after_delete() -> None:
    h = _history()
    h.invs.append({"key": "m0-k0", "seq": 3, "t0": 5.0, "kind": "del"})
    h.ops.append(_op("del", "m0-k0", 3, 5.0, 5.1))
    h.ops.append(_op("get", "m0-k0", -1, 6.0, 6.1, manager="m1", level="quorum"))
    h.final_seqs = {"m0-k0": -1}
    h.copies = {"m0-k0": {"n0": (-1, None), "n1": (-1, None)}}
    assert _violated(h) == set()
    h.ops.append(_op("get", "m0-k0", 2, 6.2, 6.3, manager="m1", level="quorum"))
    assert _violated(h) == {"no_resurrected_deletes"}
    h.ops.pop()
    h.final_seqs = {"m0-k0": 2}
    assert _violated(h) == {"no_resurrected_deletes"}


def test_a_delete_has_no_value() -> None:
    h = _history()
    h.invs.append({"key": "m0-k0", "seq": 3, "t0": 5.0, "kind": "del"})
    h.ops.append(_op("get", "m0-k0", 3, 6.0, 6.1, manager="m1"))
    assert _violated(h) == {"no_phantom_reads"}


def test_final_read_older_than_acknowledged() -> None:
    h = _history()
    h.final_seqs = {"m0-k0": 1}
    assert _violated(h) == {"no_lost_writes"}


def test_copies_apart_and_expiry_off() -> None:
    h = _history()
    expiry = h.copies["m0-k0"]["n0"][1]
    h.copies["m0-k0"]["n1"] = (1, expiry)
    assert "copies_agree" in _violated(h)
    h = _history()
    h.copies["m0-k0"] = {n: (2, e + 600_000) for n, (_, e) in h.copies["m0-k0"].items()}
    assert _violated(h) == {"expiry_follows_servers"}


def test_crash_and_convergence_are_reported() -> None:
    h = _history()
    h.crashes.append({"manager": "m1", "err": "ValueError('epoch')"})
    h.converged = "managers disagree"
    assert _violated(h) == {"manager_crash", "convergence"}


def test_promise_table() -> None:
    assert promise("quorum", "quorum") == 0.0
    assert promise("all", "one") == 0.0
    assert promise("quorum", "default") == ONE_READ_GRACE
    assert promise("one", "quorum") is None


@pytest.mark.parametrize("seed", [1, 2, 99])
def test_schedule_is_a_function_of_its_seed(seed: int) -> None:
    assert make_schedule(seed) == make_schedule(seed)
    assert make_schedule(seed) != make_schedule(seed + 1)
    ops = {s["op"] for s in make_schedule(seed)["steps"]}
    assert "snapshot" in ops
    assert "wait" in ops
