"""Leader election: a majority vote of the configured nodes, numbered by epochs.

How it works (the node-side rules are the Lua scripts of :mod:`cachering.control.scripts`):

- A follower that has heard no leader heartbeat for ``election_timeout`` (plus a random
  back-off, so candidates rarely duel) becomes a candidate: it takes an epoch above every
  epoch it has seen and asks every configured node for its vote, all in parallel. Each
  node grants at most one vote per epoch (``VOTE``); a majority wins.
- Replies count only if they arrive within ``round_timeout`` of the round's start; later
  ones are ignored (the request is cancelled). The seeding rules rely on this: a node
  that lost its votes is seeded only once it has been stateless for longer than that.
- The leader renews its votes (the same ``VOTE`` in the same epoch) every heartbeat and
  announces itself on the control channel. It steps down as soon as a node reports a
  higher epoch, or when ``failure_threshold`` renewals in a row miss a majority.
- Nodes that answer ``NOTREADY`` (restarted empty, or a fresh cluster) are seeded with an
  epoch floor through :func:`~cachering.control.scripts.plan_seed` and ``SEED_FLOOR``
  before they vote again.

Safety does not depend on clocks agreeing across machines: at most one candidate can
collect a majority in an epoch, and a deposed leader's topology writes are refused by
every node that voted in a later epoch. Only the rates of the local clocks matter, for
the ``round_timeout``/``min_age`` rule.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ..data.fanout import gather
from ..errors import NodeUnavailable, ResponseError
from ..events import EventBus, LeaderChanged
from ..messages import MAX_EPOCH, epoch_in_range
from ..metrics import ElectionCounters
from ..resp.pool import Pool
from ..resp.script import Script
from .scripts import (
    READ_LUA,
    SEED_FLOOR_LUA,
    VOTE_LUA,
    BadControlReply,
    ControlKeys,
    NodeControlState,
    VoteReply,
    parse_read,
    parse_seed,
    parse_vote,
    plan_seed,
    seed_args,
    vote_args,
)

__all__ = ["Election", "fan_out", "read_states"]

_VOTE = Script(VOTE_LUA)
_SEED = Script(SEED_FLOOR_LUA)
_READ = Script(READ_LUA)

T = TypeVar("T")
_CALL_ERRORS = (NodeUnavailable, ResponseError, BadControlReply, OSError)
logger = logging.getLogger("cachering.control.election")
OnBadReply = Callable[[str, Exception], None]
"""Told of a node whose reply did not fit (the node and the error); the reply is ignored."""


async def fan_out(
    ids: Iterable[str],
    call: Callable[[str], Coroutine[Any, Any, T]],
    timeout: float,  # noqa: ASYNC109
) -> dict[str, T | None]:
    """:func:`~cachering.data.fanout.gather` with the errors a control call can meet: a
    node that fails or is late maps to None (after ``timeout`` at the latest)."""
    return await gather(ids, call, timeout, _CALL_ERRORS)


async def read_states(
    pools: Mapping[str, Pool],
    ids: Iterable[str],
    keys: ControlKeys,
    timeout: float,  # noqa: ASYNC109
    on_bad: OnBadReply | None = None,
) -> dict[str, NodeControlState | None]:
    """Run the ``READ`` script on every node of ``ids`` at once (None: no valid answer).

    A reply that does not fit (``on_bad`` is told) counts as no answer.
    """

    async def read(node: str) -> NodeControlState:
        pool = pools.get(node)
        if pool is None:
            raise NodeUnavailable(node, "no pool for this node")
        reply = await pool.run_script(_READ, [keys.election, keys.topology], [], timeout=timeout)
        try:
            return parse_read(reply)
        except BadControlReply as exc:
            if on_bad is not None:
                on_bad(node, exc)
            raise

    return await fan_out(ids, read, timeout)


class Election:
    """The election service of one manager: start ``run`` in a task group.

    ``is_leader``, ``leader`` and ``epoch`` tell the current view. ``announce(epoch)`` is
    awaited after every successful renewal (the control plane publishes a signed leader
    heartbeat); ``on_elected(epoch)`` is awaited once when this manager wins, and
    ``on_stepped_down(epoch)`` is called when it gives leadership up.
    """

    def __init__(
        self,
        manager_id: str,
        voters: Sequence[str],
        pools: Callable[[], Mapping[str, Pool]],
        keys: ControlKeys,
        *,
        interval: float,
        election_timeout: float,
        round_timeout: float,
        failure_threshold: int = 3,
        bus: EventBus | None = None,
        announce: Callable[[int], Awaitable[None]] | None = None,
        on_elected: Callable[[int], Awaitable[None]] | None = None,
        on_stepped_down: Callable[[int], None] | None = None,
        rng: random.Random | None = None,
        others: Callable[[], Iterable[str]] = tuple,
        identity: tuple[str, str] = ("", ""),
    ) -> None:
        if not voters:
            raise ValueError("an election needs at least one voter")
        if not 0 < round_timeout <= election_timeout:
            raise ValueError("round_timeout must be positive and at most election_timeout")
        self.manager_id = manager_id
        self.voters = tuple(voters)
        self.majority = len(self.voters) // 2 + 1
        self._pools = pools
        self._keys = keys
        self.interval = interval
        self.election_timeout = election_timeout
        self.round_timeout = round_timeout
        # Nodes that lost their votes are seeded only after being stateless this long,
        # which is longer than any reply we still count (see control_scripts).
        self.min_age_ms = math.ceil(round_timeout * 2000) + 10
        self.failure_threshold = failure_threshold
        self._bus = bus
        self._announce = announce
        self._on_elected = on_elected
        self._on_stepped_down = on_stepped_down
        self._rng = rng or random.Random()
        self._others = others
        self.identity = identity
        """The configured voter set (:func:`voters_id`) and its seal, stored when seeding."""
        self.refusal: str | None = None
        """Why this manager may not campaign or seed (None: it may); see :meth:`refuse`."""
        self._failed = 0  # campaigns in a row that did not win
        self.epoch = 0
        """Highest epoch this manager has seen (voted, observed or led)."""
        self.leader: str | None = None
        """The leader this manager currently knows of (itself when leading)."""
        self.is_leader = False
        self.last_heard = -math.inf
        """Monotonic time of the last evidence that the known leader is alive."""
        self._next_try = 0.0
        self._renew_failures = 0
        self._leader_epoch = 0
        self._seed_wanted = True
        self._seed_retry_at = 0.0
        self._wake = anyio.Event()
        self.stats = ElectionCounters()
        """What the election counts (declared in :mod:`cachering.metrics`)."""
        self._logged: set[str] = set()

    # ------------------------------------------------------------------ observations

    def note_bad_reply(self, node: str, exc: Exception) -> None:
        """A node answered a control call with something that does not fit: counted, logged
        (once per node), and otherwise ignored."""
        self.stats.bad_replies += 1
        if self._first(node):
            logger.warning("cachering: ignoring a bad control reply from %s: %s", node, exc)

    def _first(self, what: str) -> bool:
        """True the first time ``what`` is logged (a bounded memory of what was)."""
        if what in self._logged or len(self._logged) >= 256:
            return False
        self._logged.add(what)
        return True

    def accepts_epoch(self, epoch: object, source: str) -> bool:
        """Whether ``epoch`` is in range (:func:`~cachering.messages.epoch_in_range`); a
        refusal is counted (``epochs_refused``) and logged once per ``source``."""
        if epoch_in_range(epoch):
            return True
        self.stats.epochs_refused += 1
        if self._first(source):
            logger.warning("cachering: refusing epoch %.40r from %s", epoch, source)
        return False

    def observe_epoch(self, epoch: int, source: str = "a node") -> None:
        """An epoch seen anywhere (a node, a message): remember it; a leader below it steps down.

        An epoch out of range (see :func:`~cachering.messages.epoch_in_range`) is refused.
        """
        if not self.accepts_epoch(epoch, source):
            return
        if epoch > self.epoch:
            if self.is_leader:
                self._step_down(f"saw epoch {epoch}")
            self.epoch = epoch

    def observe_leader(self, leader: str, epoch: int) -> None:
        """A valid leader heartbeat from ``leader`` in ``epoch`` (out of range: refused)."""
        if not self.accepts_epoch(epoch, f"leader {leader!r:.80}"):
            return
        if leader == self.manager_id or epoch < self.epoch:
            return
        if self.is_leader:
            if epoch == self.epoch:
                return  # impossible with a majority vote; ignore rather than flap
            self._step_down(f"{leader} leads epoch {epoch}")
        changed = leader != self.leader or epoch != self.epoch
        self._failed = 0
        self.epoch = epoch
        self.leader = leader
        self._leader_epoch = epoch
        self.last_heard = anyio.current_time()
        self._next_try = self.last_heard + self._timeout_with_jitter()
        if changed:
            self._publish(leader, epoch)

    def observe_votes(self, states: Mapping[str, NodeControlState | None]) -> None:
        """Votes read from the nodes: a majority for one manager in the newest epoch counts
        as a sign of life of that leader (used at start, before any heartbeat arrived)."""
        tally: dict[tuple[int, str], int] = {}
        for node in self.voters:
            s = states.get(node)
            if s is not None and s.ready and s.epoch is not None and s.voted_for:
                key = (s.epoch, s.voted_for)
                tally[key] = tally.get(key, 0) + 1
        for (epoch, leader), count in tally.items():
            if count >= self.majority and epoch >= self.epoch:
                self.observe_leader(leader, epoch)

    def observe_goodbye(self, leader: str, epoch: int) -> None:
        """The leader of ``epoch`` stepped down or left: campaign soon instead of waiting."""
        if not self.accepts_epoch(epoch, f"leader {leader!r:.80}"):
            return
        if leader == self.leader and epoch >= self.epoch and not self.is_leader:
            self.leader = None
            self._publish(None, epoch, "the leader left")
            self._next_try = anyio.current_time() + self._rng.uniform(0, self.interval * 2)
            self._wake.set()

    def request_seed(self) -> None:
        """Check for unready nodes (a node restarted) on the next iteration."""
        self._seed_wanted = True
        self._wake.set()

    def refuse(self, reason: str | None) -> None:
        """Stop campaigning and seeding for ``reason`` (None: allowed again); a leader
        steps down."""
        self.refusal = reason
        if reason is not None and self.is_leader:
            self._step_down(reason)

    def step_down(self, reason: str = "asked to") -> None:
        """Give leadership up now (a topology write was refused, or shutting down)."""
        if self.is_leader:
            self._step_down(reason)

    # ------------------------------------------------------------------ the loop

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Seed unready nodes, listen for a leader, campaign when there is none; forever."""
        now = anyio.current_time()
        # Listen for a heartbeat or two before the first campaign (a live leader was
        # usually recognised from the nodes' votes already, see observe_votes).
        listen = now + self.interval + self._rng.uniform(0, self.interval)
        self._next_try = max(self._next_try, listen)
        task_status.started()
        while True:
            start = anyio.current_time()
            if self.refusal is not None:
                self.stats.campaigns_refused += 1
                await anyio.sleep(max(self.interval, self.election_timeout / 2))
                continue
            if self._seed_wanted and start >= self._seed_retry_at:
                await self.seed_pass()
            if self.is_leader:
                await self._renew()
                await anyio.sleep_until(start + self.interval)
                continue
            if anyio.current_time() >= self._next_try:
                await self._campaign()
                continue
            self._wake = anyio.Event()
            wait = min(self._next_try, start + self.interval) - anyio.current_time()
            with anyio.move_on_after(max(wait, 0.0)):
                await self._wake.wait()

    def _timeout_with_jitter(self) -> float:
        return self.election_timeout + self._rng.uniform(0, self.election_timeout / 2)

    async def _vote_all(self, epoch: int) -> dict[str, VoteReply | None]:
        pools = self._pools()
        args = vote_args(epoch, self.manager_id)

        async def vote(node: str) -> VoteReply:
            pool = pools.get(node)
            if pool is None:
                raise NodeUnavailable(node, "no pool for this node")
            reply = await pool.run_script(
                _VOTE, [self._keys.election], args, timeout=self.round_timeout
            )
            try:
                return parse_vote(reply)
            except BadControlReply as exc:
                self.note_bad_reply(node, exc)
                raise

        replies = await fan_out(self.voters, vote, self.round_timeout)
        self.stats.late_or_failed_replies += sum(1 for r in replies.values() if r is None)
        return replies

    def _learn(self, replies: Mapping[str, VoteReply | None], own: int) -> int:
        """Highest epoch reported by a refusing node (0 if none above ``own``)."""
        higher = 0
        for reply in replies.values():
            if reply is None:
                continue
            if reply.status == "NOTREADY":
                self._seed_wanted = True
            elif reply.status == "REFUSED" and reply.epoch is not None and reply.epoch > own:
                higher = max(higher, reply.epoch)
        return higher

    async def _campaign(self) -> None:
        self.stats.campaigns += 1
        if self.leader is not None:
            self.leader = None  # silent for too long: presumed gone
            self._publish(None, self.epoch, "no heartbeat from the leader")
        before = self.epoch
        epoch = before + 1
        if epoch > MAX_EPOCH:
            self._exhausted()
            return
        self.epoch = epoch  # used now, whatever the outcome
        replies = await self._vote_all(epoch)
        granted = sum(1 for r in replies.values() if r is not None and r.granted)
        if granted == 0 and self.epoch == epoch:
            # No node recorded this epoch: forget it, so that a leader of a lower epoch
            # that we hear once the network heals is still followed.
            self.epoch = before
        higher = self._learn(replies, epoch)
        if higher:
            self.observe_epoch(higher)
        won = granted >= self.majority and self.epoch == epoch and not self._heard_since(epoch)
        if not won:
            self._failed += 1
            self._next_try = anyio.current_time() + self._backoff()
            return
        self._failed = 0
        self.stats.won += 1
        self.is_leader = True
        self.leader = self.manager_id
        self._leader_epoch = epoch
        self._renew_failures = 0
        self.last_heard = anyio.current_time()
        self._publish(self.manager_id, epoch)
        if self._on_elected is not None:
            await self._on_elected(epoch)
        if self.is_leader and self._announce is not None:
            await self._announce(epoch)

    def _backoff(self) -> float:
        """Wait after a lost campaign: random, between one interval and an upper bound
        that doubles with each loss in a row, from one election timeout up to eight, so
        campaigns that cannot win (no majority answers) neither burn epochs nor load."""
        upper = self.election_timeout * 2 ** min(self._failed - 1, 3)
        return self._rng.uniform(self.interval, max(self.interval, upper))

    def _heard_since(self, epoch: int) -> bool:
        # A leader heartbeat of this very epoch from someone else means we lost the race.
        return (
            self.leader is not None
            and self.leader != self.manager_id
            and self._leader_epoch >= epoch
        )

    async def _renew(self) -> None:
        epoch = self.epoch
        replies = await self._vote_all(epoch)
        if not self.is_leader or self.epoch != epoch:
            return
        granted = sum(1 for r in replies.values() if r is not None and r.granted)
        higher = self._learn(replies, epoch)
        if higher:
            self.observe_epoch(higher)
            return
        if granted >= self.majority:
            self.stats.renewals += 1
            self._renew_failures = 0
            self.last_heard = anyio.current_time()
            reseeded = any(
                r is not None and r.status == "REFUSED" and r.epoch == epoch and not r.voted_for
                for r in replies.values()
            )
            if reseeded:
                await self._new_term(epoch)
            if self._announce is not None and self.is_leader:
                await self._announce(self.epoch)
            return
        self.stats.renewal_misses += 1
        self._renew_failures += 1
        if self._renew_failures >= self.failure_threshold:
            self._step_down(f"no majority for {self._renew_failures} renewals")

    async def _new_term(self, epoch: int) -> None:
        """Move to the next epoch while leading: a node seeded with our epoch as its floor
        gives no vote in it, so its support only counts from the next epoch on."""
        new = epoch + 1
        if new > MAX_EPOCH:
            self._exhausted()
            return
        replies = await self._vote_all(new)
        if not self.is_leader or self.epoch != epoch:
            return
        higher = self._learn(replies, new)
        if higher:
            self.observe_epoch(higher)
            return
        granted = sum(1 for r in replies.values() if r is not None and r.granted)
        if granted < self.majority:
            return  # the next renewals decide (nodes that granted ``new`` now refuse ``epoch``)
        self.stats.new_terms += 1
        self.epoch = self._leader_epoch = new
        self.last_heard = anyio.current_time()
        self._publish(self.manager_id, new, "new term to count re-seeded nodes")
        if self._on_elected is not None:
            await self._on_elected(new)

    def _exhausted(self) -> None:
        # Only reachable if an epoch just below the top was accepted: no crash, no campaign.
        self.stats.epochs_exhausted += 1
        if self._first("exhausted"):
            logger.error("cachering: epoch %d is the last one; no further election", self.epoch)
        self._next_try = anyio.current_time() + self._timeout_with_jitter()

    def _step_down(self, reason: str) -> None:
        epoch = self.epoch
        self.is_leader = False
        self.leader = None
        self.stats.step_downs += 1
        self._next_try = anyio.current_time() + self._timeout_with_jitter()
        self._publish(None, epoch, f"{self.manager_id} stepped down: {reason}")
        if self._on_stepped_down is not None:
            self._on_stepped_down(epoch)

    def _publish(self, leader: str | None, epoch: int, reason: str = "") -> None:
        if self._bus is not None:
            self._bus.publish(
                LeaderChanged(
                    leader=leader, epoch=epoch, is_self=leader == self.manager_id, reason=reason
                )
            )

    # ------------------------------------------------------------------ seeding

    async def seed_pass(self, extra: Iterable[str] = ()) -> dict[str, NodeControlState | None]:
        """Seed every unready node that may be seeded now; returns the first read's states.

        Non-voting nodes (added at run time: ``others()`` and ``extra``) are seeded too.
        """
        self._seed_wanted = False
        pools = self._pools()
        ids = list(dict.fromkeys([*self.voters, *self._others(), *extra]))
        first = await read_states(pools, ids, self._keys, self.round_timeout, self.note_bad_reply)
        self._note_epochs(first.values())
        unready = [n for n, s in first.items() if s is not None and not s.ready]
        if not unready:
            return first
        aged = [n for n in unready if (s := first[n]) is not None and s.age_ms >= self.min_age_ms]
        if len(aged) < len(unready):
            # Come back once the youngest unready node is old enough.
            self._seed_wanted = True
            waits = [self.min_age_ms - s.age_ms for n in unready if (s := first[n]) is not None]
            self._seed_retry_at = anyio.current_time() + max(min(waits), 1) / 1000
        if not aged:
            return first
        # The other nodes must be read after the read that showed the target old enough.
        second = await read_states(pools, ids, self._keys, self.round_timeout, self.note_bad_reply)
        self._note_epochs(second.values())
        for target in aged:
            view: dict[str, NodeControlState | None] = {n: second.get(n) for n in self.voters}
            view[target] = first[target]
            await self._seed_one(target, view)
        return first

    async def _seed_one(self, target: str, view: Mapping[str, NodeControlState | None]) -> None:
        state = view[target]
        plan = plan_seed(
            len(self.voters), view, target, known_epoch=self.epoch, min_age_ms=self.min_age_ms
        )
        if plan is None or state is None:
            self._seed_wanted = True
            self._seed_retry_at = anyio.current_time() + self.interval
            return
        pool = self._pools().get(target)
        if pool is None:
            return
        try:
            with anyio.fail_after(self.round_timeout):
                raw = await pool.run_script(
                    _SEED,
                    [self._keys.election, self._keys.topology],
                    seed_args(
                        plan.floor,
                        state.born,
                        self.min_age_ms,
                        bootstrap=plan.bootstrap,
                        voters=self.identity[0],
                        voters_seal=self.identity[1],
                    ),
                    timeout=self.round_timeout,
                )
            reply = parse_seed(raw)
        except BadControlReply as exc:
            self.note_bad_reply(target, exc)
            self._seed_wanted = True
            return
        except (*_CALL_ERRORS, TimeoutError):
            self._seed_wanted = True
            return
        if reply.ready:
            self.stats.seeded += reply.status in ("SEEDED", "RAISED")
            if reply.epoch is not None:
                self.observe_epoch(reply.epoch)
        else:
            self._seed_wanted = True
            self._seed_retry_at = anyio.current_time() + max(reply.wait_ms, 1) / 1000

    def _note_epochs(self, states: Iterable[NodeControlState | None]) -> None:
        for s in states:
            if s is not None:
                for e in (s.epoch, s.topology_epoch):
                    if e is not None:
                        self.observe_epoch(e)

    def status(self) -> dict[str, Any]:
        """Leader, epoch, whether this manager leads, voters and majority."""
        return {
            "leader": self.leader,
            "epoch": self.epoch,
            "is_leader": self.is_leader,
            "voters": list(self.voters),
            "majority": self.majority,
            "refused": self.refusal,
        }
