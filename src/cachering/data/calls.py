"""The per-node script calls of a write: how keys are grouped and replies recorded."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..ring import Ring
from . import values
from .keys import hint_keys
from .scripts import HintGroup

__all__ = [
    "Call",
    "Plan",
    "Segment",
    "copies_needed",
    "missed_hints",
    "new_versions",
    "note_hints",
    "plan_calls",
    "record_reply",
    "targets_of",
]

Plan = tuple[tuple[str, ...], tuple[str, ...]]  # (nodes to write, homes missed)
_RESTAMPED = b"34"  # reply flags of a first-copy write taken under a new version
_VERSION = values.VERSION_SIZE


def new_versions(reply: bytes, n: int) -> dict[int, bytes]:
    """The new versions a write script's reply for ``n`` keys gives, by key index."""
    out: dict[int, bytes] = {}
    at = n
    for i in range(n):
        if reply[i] in _RESTAMPED:
            out[i] = reply[at : at + _VERSION]
            at += _VERSION
    return out


class Segment(NamedTuple):
    """Replica writes of one preference group for one node."""

    target: str
    holder: str  # the group's primary: hints go there if the target misses the writes
    rkeys: list[bytes]
    stored: list[bytes]


class Call:
    """One node's script call in ``set_many``: its primary keys first, then the replica
    writes that ride along (``riders``)."""

    __slots__ = ("members", "riders", "rkeys", "stored")

    def __init__(self, members: list[bytes], rkeys: list[bytes], stored: list[bytes]) -> None:
        self.members = members  # raw keys this node is primary for
        self.rkeys = rkeys
        self.stored = stored
        self.riders: list[Segment] = []

    def add(self, members: list[bytes], rkeys: list[bytes], stored: list[bytes]) -> None:
        """More primary keys."""
        self.members += members
        self.rkeys += rkeys
        self.stored += stored

    def board(self) -> None:
        """Append the riders' keys and values after the primary ones."""
        for segment in self.riders:
            self.rkeys += segment.rkeys
            self.stored += segment.stored


def plan_calls(
    ring: Ring,
    raws: list[bytes],
    copies: int,
    prefix: Callable[[bytes], bytes],
    value_of: Callable[[bytes], bytes],
    inline: bool,
) -> tuple[dict[str, Call], list[Segment]]:
    """The level-``one`` calls by node, and the replica writes left to the synchronizer.

    With ``inline``, a replica write whose node is called for primary copies rides along.
    """
    calls: dict[str, Call] = {}
    later: list[Segment] = []  # replica writes for the synchronizer
    if copies == 1:
        for node, members in ring.group_by_node(raws).items():
            calls[node] = Call(members, list(map(prefix, members)), list(map(value_of, members)))
    else:
        groups = [
            (pref, members, list(map(prefix, members)), list(map(value_of, members)))
            for pref, members in ring.group_by_preference(raws, copies).items()
        ]
        for pref, members, rkeys, stored in groups:
            call = calls.get(pref[0])
            if call is None:
                calls[pref[0]] = Call(list(members), list(rkeys), list(stored))
            else:
                call.add(members, rkeys, stored)
        for pref, _, rkeys, stored in groups:
            for target in pref[1:]:
                segment = Segment(target, pref[0], rkeys, stored)
                call = calls.get(target) if inline else None
                if call is None:
                    later.append(segment)
                else:
                    call.riders.append(segment)
        for call in calls.values():
            call.board()
    return calls, later


def record_reply(
    node: str,
    idx: list[int],
    reply: bytes,
    acked: list[tuple[str, ...]],
    stamps: dict[int, dict[str, bytes]],
    flags: list[int],
) -> None:
    """Note ``node``'s acknowledgements, new versions and reply flags for the keys ``idx``."""
    given = new_versions(reply, len(idx)) if len(reply) > len(idx) else {}
    for j, (i, flag) in enumerate(zip(idx, reply[: len(idx)], strict=True)):
        acked[i] += (node,)
        if j in given:  # '3'/'4': applied under a new version
            stamps.setdefault(i, {})[node] = given[j]
            flag -= 2
        if flag - 48 > flags[i]:
            flags[i] = flag - 48


def missed_hints(
    namespace: str, idx: list[int], plans: list[Plan], raws: list[bytes]
) -> list[HintGroup]:
    """The hints a call for the keys ``idx`` records, for the homes their plans missed."""
    missed: dict[str, list[bytes]] = defaultdict(list)
    for i in idx:
        for m in plans[i][1]:
            missed[m].append(raws[i])
    return [(*hint_keys(namespace, m), members) for m, members in missed.items()]


def targets_of(
    todo: Sequence[int],
    plans: list[Plan],
    avoid: set[str],
    acked: list[tuple[str, ...]],
    need: Callable[[int], int],
) -> tuple[dict[str, list[int]], bool]:
    """The keys to send each node this round, and whether any plan missed a home."""
    calls: dict[str, list[int]] = defaultdict(list)
    any_missed = False
    for i in todo:
        targets, missed = plans[i]
        if missed:
            any_missed = True
        if avoid:
            targets = tuple(t for t in targets if t not in avoid)
        done = acked[i]
        for t in targets[: need(i)]:
            if t not in done:
                calls[t].append(i)
    return calls, any_missed


def copies_needed(level: str, copies: int, plan: Plan) -> int:
    """How many copies a key's write needs acknowledged on the general path."""
    # At level one a key that misses a home is written to two copies, each
    # recording the hint, so the hint survives the loss of either.
    if level != "one":
        return copies
    return 2 if copies > 1 and plan[1] else 1


def note_hints(idx: list[int], plans: list[Plan], hinted: dict[int, set[str]]) -> None:
    """Note the homes a successful call for the keys ``idx`` recorded hints for."""
    for i in idx:
        if plans[i][1]:
            hinted.setdefault(i, set()).update(plans[i][1])
