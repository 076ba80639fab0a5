"""The fault lab's checker: every invariant, over one run's whole history.

The history is plain data (the managers' JSON lines, the observer's samples, the lab's
fault log), all timestamped with this machine's CLOCK_MONOTONIC. Keys are single-writer
with rising sequence numbers, so "stale" and "lost" are exact: a read is stale when it
returns a lower sequence than a write its level promises it sees, and a write is lost
when the final state holds a lower sequence (or nothing) without enough data loss to
excuse it.

What a read is promised (:data:`PROMISES`), by write level and read level:

- a write acknowledged at ``quorum`` or ``all`` is seen by every ``quorum`` or ``all``
  read that starts after the acknowledgement, from any manager;
- a write acknowledged at ``all`` is seen by every read that starts after it;
- a write acknowledged at ``quorum`` is seen by a ``one`` read (or a read without a level,
  as today's ``get``) that starts more than :data:`ONE_READ_GRACE` after it: one message
  delivery for the other managers to learn that a home missed the write;
- a write at ``one`` promises other readers nothing beyond convergence.

A delete takes the key's next sequence number like a write; a read that returns an older
value after an acknowledged delete it is promised to see is a resurrected delete.

A miss (no value) is no older value, but it is a lost acknowledged write unless at least
``replicas`` distinct nodes lost their data (restarted empty or from a snapshot) after
the write was invoked (it may have taken effect at any moment until its acknowledgement)
and before the read, or the key's ttl has run out on the
servers' clock.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import attrs

ONE_READ_GRACE = 0.2
"""Seconds after a quorum acknowledgement within which a ``one`` read may still be stale:
one message delivery (the lag announced when the hint is written), bounded generously by
two 0.1 s heartbeats for a loaded machine. Learning of the hint on the next lagging check
instead (a tick later, plus the check) overruns it."""
EXPIRY_SLACK = 1.0
"""Seconds of tolerance on every copy's expiry (write time + ttl, servers' clock)."""
STRONG = ("quorum", "all")


def promise(write_level: str, read_level: str) -> float | None:
    """Seconds after the acknowledgement from which a read at ``read_level`` must see a
    write acknowledged at ``write_level`` (None: no promise)."""
    read = "one" if read_level == "default" else read_level
    if write_level == "all" or (write_level == "quorum" and read in STRONG):
        return 0.0
    if write_level == "quorum":
        return ONE_READ_GRACE
    return None


PROMISES = {
    (w, r): promise(w, r) for w in ("one", "quorum", "all") for r in ("one", "quorum", "all")
}
"""The table the checker applies (see the module docstring)."""


@attrs.define
class History:
    """Everything one run recorded (see :mod:`lab_harness`)."""

    ns: str
    ops: list[dict[str, Any]] = attrs.Factory(list)
    invs: list[dict[str, Any]] = attrs.Factory(list)
    roles: list[dict[str, Any]] = attrs.Factory(list)
    crashes: list[dict[str, Any]] = attrs.Factory(list)
    events: list[tuple[float, str]] = attrs.Factory(list)
    resets: list[tuple[float, str, str]] = attrs.Factory(list)
    """(time, node, "empty" or "snapshot"): a node lost (or rolled back) its data."""
    node_samples: dict[str, list[tuple[Any, ...]]] = attrs.Factory(lambda: defaultdict(list))
    """node -> (time, election epoch, voted_for, topology epoch, version, author)."""
    managers: dict[str, dict[str, Any]] = attrs.Factory(dict)
    mono_to_wall: float = 0.0
    replicas: int = 2
    final_seqs: dict[str, int | str] = attrs.Factory(dict)
    """Each key as read by one manager after healing."""
    copies: dict[str, dict[str, tuple[int, int | None]]] = attrs.Factory(dict)
    """key -> home node -> (seq held, PEXPIRETIME ms or None), read with redis-py."""
    final_at: float = 0.0
    """When the final reads started (lab clock)."""
    converged: str = ""
    """Empty when every manager and node agreed after healing, else what differed."""


@attrs.define
class Report:
    """Violations by invariant, plus workload counts."""

    violations: dict[str, list[str]] = attrs.Factory(lambda: defaultdict(list))
    counts: dict[str, int] = attrs.Factory(lambda: defaultdict(int))

    def add(self, invariant: str, text: str) -> None:
        """Record one violation of ``invariant``."""
        self.violations[invariant].append(text)

    @property
    def ok(self) -> bool:
        """No violation at all."""
        return not any(self.violations.values())

    def summary(self, limit: int = 4) -> str:
        """One line per violated invariant with its count and first examples."""
        return "\n".join(
            f"  {name}: {len(items)} (e.g. {'; '.join(items[:limit])})"
            for name, items in sorted(self.violations.items())
            if items
        )


class Checker:
    """Runs every check of the module docstring over one :class:`History`."""

    def __init__(self, history: History) -> None:
        self.h = history
        self.r = Report()
        self.acked: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for op in history.ops:
            if op["kind"] in ("set", "del") and op["ok"]:
                self.acked[op["key"]].append(op)
        self.invoked = {(i["key"], i["seq"]): i for i in history.invs}

    def run(self) -> Report:
        """Every check; returns the report."""
        self.crashes()
        self.one_leader_per_epoch()
        self.node_epochs_and_stamps_rise()
        self.topologies_from_winners()
        self.reads()
        self.final_state()
        if self.h.converged:
            self.r.add("convergence", self.h.converged)
        return self.r

    # ------------------------------------------------------------ control plane

    def crashes(self) -> None:
        """No manager crashed (nothing a node or message sends may kill one)."""
        for line in self.h.crashes:
            self.r.add("manager_crash", f"{line['manager']}: {line.get('err') or line.get('raw')}")

    def winners(self) -> dict[int, set[str]]:
        """epoch -> managers that said they lead in it."""
        out: dict[int, set[str]] = defaultdict(set)
        for role in self.h.roles:
            if role["is_leader"]:
                out[role["epoch"]].add(role["manager"])
        return out

    def one_leader_per_epoch(self) -> None:
        """At most one manager ever led any epoch."""
        for epoch, who in sorted(self.winners().items()):
            if len(who) > 1:
                self.r.add("one_leader_per_epoch", f"epoch {epoch}: {sorted(who)}")

    def _segments(self, node: str) -> list[list[tuple[Any, ...]]]:
        """The node's samples split at each of its resets (a reset forgets state)."""
        cuts = sorted(t for t, n, _ in self.h.resets if n == node)
        segments: list[list[tuple[Any, ...]]] = [[] for _ in range(len(cuts) + 1)]
        for sample in self.h.node_samples.get(node, []):
            segments[sum(sample[0] > t for t in cuts)].append(sample)
        return segments

    def node_epochs_and_stamps_rise(self) -> None:
        """Between resets, a node's election epoch and topology stamp never go back."""
        for node in sorted(self.h.node_samples):
            for seg in self._segments(node):
                for a, b in itertools.pairwise(seg):
                    if a[1] is not None and b[1] is not None and b[1] < a[1]:
                        self.r.add("epochs_never_go_back", f"{node} epoch {a[1]} -> {b[1]}")
                    sa, sb = (a[3], a[4]), (b[3], b[4])
                    if None not in sa and None not in sb and sb < sa:
                        self.r.add("epochs_never_go_back", f"{node} topology {sa} -> {sb}")

    def topologies_from_winners(self) -> None:
        """Every topology a node stored or a manager adopted was written by a manager that
        won its epoch; a node holding a topology of the epoch it voted in holds its
        candidate's."""
        wins = self.winners()
        seen: set[tuple[str, Any, Any, Any]] = set()
        for node, samples in sorted(self.h.node_samples.items()):
            for _t, epoch, voted, te, tv, author in samples:
                if te is None or author is None or (node, te, tv, author) in seen:
                    continue
                seen.add((node, te, tv, author))
                if te > 0 and author not in wins.get(te, set()):
                    self.r.add(
                        "topology_from_winner",
                        f"{node} holds ({te}, {tv}) by {author}, "
                        f"winners of {te}: {sorted(wins.get(te, set()))}",
                    )
                if epoch == te and voted and voted != author:
                    self.r.add(
                        "topology_from_winner",
                        f"{node} voted {voted} in {te} but holds ({te}, {tv}) by {author}",
                    )
        for role in self.h.roles:
            te, author = role["stamp"][0], role["author"]
            if te > 0 and author is not None and author not in wins.get(te, set()):
                key = ("manager", role["manager"], tuple(role["stamp"]), author)
                if key not in seen:
                    seen.add(key)  # type: ignore[arg-type]
                    self.r.add(
                        "topology_from_winner",
                        f"{role['manager']} adopted "
                        f"{tuple(role['stamp'])} by {author}, not a winner of {te}",
                    )

    # ------------------------------------------------------------ data path

    def _lost_nodes(self, start: float, end: float) -> set[str]:
        return {n for t, n, _ in self.h.resets if start < t < end}

    def _expired(self, write: dict[str, Any], at: float) -> bool:
        ttl = self.h.managers.get(write["manager"], {}).get("ttl")
        return ttl is not None and at > write["t1"] + ttl - EXPIRY_SLACK

    def reads(self) -> None:
        """No read older than its level promises; no junk; misses only when excused."""
        for op in self.h.ops:
            if op["kind"] != "get":
                continue
            self.r.counts["reads"] += 1
            if not op["ok"]:
                self.r.counts["failed_reads"] += 1
                continue
            key, seq = op["key"], op["seq"]
            where = f"{key} read by {op['manager']} at {op['t0']:.3f}"
            inv = self.invoked.get((key, seq))
            if seq == -2 or (seq >= 0 and (inv is None or inv.get("kind") == "del")):
                self.r.add("no_phantom_reads", f"{where}: seq {seq} was never written")
                continue
            due = [
                w
                for w in self.acked[key]
                if (g := promise(w["level"], op["level"])) is not None and w["t1"] + g < op["t0"]
            ]
            if not due:
                continue
            floor = max(due, key=lambda w: w["seq"])
            if seq >= floor["seq"] or (seq == -1 and self._deleted(key, floor, op["t1"])):
                continue
            if floor["kind"] == "del":
                self.r.add(
                    "no_resurrected_deletes",
                    f"{where} ({op['level']}): seq {seq}, but deleted as "
                    f"{floor['seq']} at {floor['level']} at {floor['t1']:.3f}",
                )
            elif seq >= 0:
                self.r.add(
                    "no_stale_reads",
                    f"{where} ({op['level']}): seq {seq}, but "
                    f"{floor['seq']} acked at {floor['level']} at {floor['t1']:.3f}",
                )
            elif not self._excused(floor, op["t0"]):
                self.r.add(
                    "no_lost_writes",
                    f"{where} ({op['level']}): miss, but "
                    f"{floor['seq']} acked at {floor['level']} at {floor['t1']:.3f}",
                )
        for op in self.h.ops:
            if op["kind"] in ("set", "del"):
                self.r.counts["writes" if op["ok"] else "failed_writes"] += 1

    def _deleted(self, key: str, write: dict[str, Any], before: float) -> bool:
        """Whether a delete of ``key`` at or after ``write``'s seq began before ``before``
        (so a miss may be that delete's doing)."""
        return any(
            i["key"] == key
            and i.get("kind") == "del"
            and i["seq"] >= write["seq"]
            and i["t0"] < before
            for i in self.h.invs
        )

    def _excused(self, write: dict[str, Any], at: float) -> bool:
        # A write takes effect at some moment between its invocation and its completion:
        # data lost on enough nodes after the invocation may have taken it (a writer paused
        # with the replies in flight completes long after its homes forgot it).
        return len(self._lost_nodes(write["t0"], at)) >= self.h.replicas or self._expired(write, at)

    def final_state(self) -> None:
        """After healing: every acknowledged write survived, every home copy agrees on the
        value and on an expiry within :data:`EXPIRY_SLACK` of write time + ttl."""
        end = self.h.final_at or max((op["t1"] for op in self.h.ops), default=0.0)
        for key, writes in sorted(self.acked.items()):
            if not writes:
                continue
            last = max(writes, key=lambda w: w["seq"])
            if last["level"] not in STRONG:
                continue
            got = self.h.final_seqs.get(key)
            if not isinstance(got, int) or got >= last["seq"]:
                continue
            if last["kind"] == "del":
                if got >= 0:
                    self.r.add(
                        "no_resurrected_deletes",
                        f"{key}: final read {got}, deleted as {last['seq']}",
                    )
            elif not (got == -1 and self._deleted(key, last, end)) and not self._excused(last, end):
                self.r.add("no_lost_writes", f"{key}: final read {got}, acked {last['seq']}")
        for key, homes in sorted(self.h.copies.items()):
            held = {(s, e if s >= 0 else None) for s, e in homes.values()}
            if len(held) > 1:
                self.r.add("copies_agree", f"{key}: {dict(sorted(homes.items()))}")
            for node, (seq, expiry) in sorted(homes.items()):
                self._check_expiry(key, node, seq, expiry)

    def _check_expiry(self, key: str, node: str, seq: int, expiry: int | None) -> None:
        if seq < 0:
            return
        inv = self.invoked.get((key, seq))
        writer = inv.get("manager", key.rsplit("-k", 1)[0]) if inv is not None else ""
        ttl = self.h.managers.get(writer, {}).get("ttl")
        if inv is None or ttl is None:
            return
        done = next((o["t1"] for o in self.acked[key] if o["seq"] == seq), None)
        low = (inv["t0"] + self.h.mono_to_wall + ttl - EXPIRY_SLACK) * 1000
        high = (
            (done if done is not None else inv["t0"] + 60)
            + self.h.mono_to_wall
            + ttl
            + EXPIRY_SLACK
        ) * 1000
        if expiry is None or not low <= expiry <= high:
            have = (
                "none"
                if expiry is None
                else f"{expiry / 1000 - (low / 1000 + EXPIRY_SLACK):+.1f} s"
            )
            self.r.add("expiry_follows_servers", f"{key}@{node} seq {seq}: expiry off by {have}")
