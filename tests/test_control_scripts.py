"""The election and topology Lua scripts, against real redis-server processes."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
import redis

from cachering.control.scripts import (
    READ_LUA,
    SEED_FLOOR_LUA,
    TOPOLOGY_CAS_LUA,
    VOTE_LUA,
    BadControlReply,
    CasReply,
    ControlKeys,
    NodeControlState,
    SeedPlan,
    SeedReply,
    VoteReply,
    control_keys,
    majority,
    parse_cas,
    parse_read,
    parse_seed,
    parse_vote,
    plan_seed,
    seed_args,
    topology_cas_args,
    vote_args,
)
from cachering.control.topology import Topology
from cachering.local import LocalCluster
from cachering.node import NodeSpec

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as lc:
        yield lc


class Node:
    """One server seen through redis-py, with the control scripts registered."""

    def __init__(self, spec: NodeSpec, keys: ControlKeys) -> None:
        self.client = redis.Redis(host=spec.host, port=spec.port)
        self.keys = keys
        self._vote = self.client.register_script(VOTE_LUA)
        self._seed = self.client.register_script(SEED_FLOOR_LUA)
        self._cas = self.client.register_script(TOPOLOGY_CAS_LUA)
        self._read = self.client.register_script(READ_LUA)

    def vote(self, epoch: int, candidate: str) -> VoteReply:
        return parse_vote(self._vote(keys=[self.keys.election], args=vote_args(epoch, candidate)))

    def read(self) -> NodeControlState:
        return parse_read(self._read(keys=[self.keys.election, self.keys.topology]))

    def seed(
        self, floor: int, *, min_age_ms: int = 0, born: str | None = None, bootstrap: bool = False
    ) -> SeedReply:
        token = born if born is not None else self.read().born
        return parse_seed(
            self._seed(
                keys=[self.keys.election, self.keys.topology],
                args=seed_args(floor, token, min_age_ms, bootstrap=bootstrap),
            )
        )

    def cas(self, topology: Topology) -> CasReply:
        return parse_cas(
            self._cas(
                keys=[self.keys.topology, self.keys.election], args=topology_cas_args(topology)
            )
        )


@pytest.fixture
def nodes(cluster: LocalCluster) -> Iterator[list[Node]]:
    keys = control_keys(f"t{uuid.uuid4().hex[:8]}")
    made = [Node(spec, keys) for spec in cluster.nodes]
    yield made
    for node in made:
        node.client.close()


SPECS = [NodeSpec("a", "127.0.0.1", 7000), NodeSpec("b", "127.0.0.1", 7001)]


def test_fresh_node_refuses_to_vote_until_seeded(nodes: list[Node]) -> None:
    node = nodes[0]
    state = node.read()
    assert state.fresh
    assert not state.ready
    assert state.epoch is None
    assert state.born
    reply = node.vote(1, "m1")
    assert reply.status == "NOTREADY"
    assert not reply.granted
    assert node.seed(0).status == "SEEDED"
    assert node.read().ready
    assert node.vote(1, "m1").granted


def test_one_vote_per_epoch_and_renewal(nodes: list[Node]) -> None:
    node = nodes[0]
    node.seed(0)
    assert node.vote(3, "m1") == VoteReply("GRANTED", 3, "m1")
    assert node.vote(3, "m2") == VoteReply("REFUSED", 3, "m1")
    assert node.vote(3, "m1").granted, "the holder renews in its own epoch"
    assert node.vote(2, "m2") == VoteReply("REFUSED", 3, "m1")
    assert node.vote(4, "m2") == VoteReply("GRANTED", 4, "m2")
    assert node.vote(3, "m1").status == "REFUSED", "epochs never go back"
    assert node.read().epoch == 4


def test_seed_floor_blocks_the_floor_epoch_and_is_never_lowered(nodes: list[Node]) -> None:
    node = nodes[0]
    assert node.seed(10) == SeedReply("SEEDED", 10, "")
    assert node.vote(10, "m1").status == "REFUSED", "no vote at all in the floor epoch"
    assert node.seed(3).status == "READY"
    assert node.read().epoch == 10
    assert node.vote(11, "m1").granted
    assert node.seed(15).status == "RAISED"
    assert node.vote(15, "m1").status == "REFUSED"
    assert node.vote(16, "m2").granted
    assert node.seed(0).epoch == 16


def test_seed_waits_for_min_age_and_detects_lost_state(nodes: list[Node]) -> None:
    node = nodes[0]
    born = node.read().born
    young = node.seed(0, min_age_ms=60_000, born=born)
    assert young.status == "TOOYOUNG"
    assert 0 < young.wait_ms <= 60_000
    assert node.seed(0, born=born + "0").status == "CHANGED"
    node.client.delete(node.keys.election)
    assert node.seed(0, born=born).status == "CHANGED"
    fresh_born = node.read().born
    assert node.seed(0, born=fresh_born).status == "SEEDED"


def test_seed_never_goes_below_a_held_topology(nodes: list[Node]) -> None:
    node = nodes[0]
    node.seed(0)
    assert node.cas(Topology(7, 2, Topology.initial(SPECS).nodes, "m")).status == "ACCEPTED"
    node.client.delete(node.keys.election)  # e.g. evicted
    assert node.vote(8, "m").status == "NOTREADY"
    assert node.seed(1) == SeedReply("SEEDED", 7, "")
    assert node.vote(7, "m").status == "REFUSED"


def test_topology_cas(nodes: list[Node]) -> None:
    node = nodes[0]
    t0 = Topology(0, 0, Topology.initial(SPECS).nodes, "m0")
    assert node.cas(t0).status == "NOTREADY"
    node.seed(0)
    assert node.cas(t0).holds, "seeded with the floor: it voted for nobody in it"
    assert node.read().voted_for == "", "and still votes for nobody in it"
    t1 = t0.with_state("b", "down", epoch=2, leader="m1")
    assert node.cas(t1) == CasReply("ACCEPTED", 2, 1, 2)
    assert node.read().voted_for == "m1", "a write in a new epoch is the writer's vote"
    assert node.vote(2, "m2").status == "REFUSED"
    assert node.cas(t1).status == "HELD"
    assert node.cas(t0) == CasReply("STALE_EPOCH", 2, 1, 2)
    other = Topology(2, 1, t0.nodes, "m1")
    assert node.cas(other).status == "CONFLICT"
    node.vote(5, "m3")
    t2 = t1.with_state("b", "up", epoch=4)
    assert node.cas(t2) == CasReply("STALE_EPOCH", 2, 1, 5)
    t3 = t1.with_state("b", "recovering", epoch=5, leader="m3")
    assert node.cas(t3).status == "ACCEPTED"
    state = node.read()
    assert state.topology == t3
    assert state.topology_error is None
    assert (state.topology_epoch, state.topology_version) == (5, 2)


def test_topology_cas_only_from_the_manager_voted_for(nodes: list[Node]) -> None:
    node = nodes[0]
    node.seed(0)
    assert node.vote(3, "winner").granted
    base = Topology.initial(SPECS)
    mine = Topology(3, 1, base.nodes, "winner")
    theirs = Topology(3, 2, base.nodes, "impostor")
    assert node.cas(theirs) == CasReply("NOTVOTED", None, None, 3)
    assert node.cas(mine).status == "ACCEPTED"
    assert node.cas(theirs).status == "NOTVOTED", "a newer version from a non-winner too"
    assert node.read().topology == mine


def test_read_reports_a_corrupt_topology_instead_of_raising(nodes: list[Node]) -> None:
    node = nodes[0]
    node.client.hset(node.keys.topology, mapping={"epoch": "1", "version": "1", "payload": "{x"})
    state = node.read()
    assert state.topology is None
    assert state.topology_error
    node.client.hset(node.keys.topology, "payload", Topology.initial(SPECS).to_bytes())
    state = node.read()
    assert state.topology is None
    assert "stamp" in (state.topology_error or "")


def test_scripts_reject_bad_arguments(nodes: list[Node]) -> None:
    vote = nodes[0].client.register_script(VOTE_LUA)
    for args in (["abc", "m"], ["-1", "m"], ["0", "m"], ["01", "m"], ["1", ""], ["1" * 17, "m"]):
        with pytest.raises(redis.ResponseError, match="bad epoch or candidate"):
            vote(keys=[nodes[0].keys.election], args=args)


def test_restarted_empty_node_is_reseeded_from_a_majority_of_others(
    cluster: LocalCluster, nodes: list[Node]
) -> None:
    ids = ["n0", "n1", "n2"]
    for node in nodes:
        node.seed(0)
    for node in nodes:
        assert node.vote(6, "m1").granted
    cluster.restart(2)
    nodes[2].client.connection_pool.disconnect()
    assert nodes[2].vote(6, "m2").status == "NOTREADY", "forgot its vote: must not vote"
    target = nodes[2].read()
    states = {ids[0]: nodes[0].read(), ids[1]: nodes[1].read(), ids[2]: target}
    plan = plan_seed(3, states, "n2")
    assert plan is not None
    assert plan.floor == 6
    assert not plan.bootstrap
    assert plan_seed(3, {**states, "n1": None}, "n2") is None, "one other is not a majority"
    assert nodes[2].seed(plan.floor, born=target.born).status == "SEEDED"
    assert nodes[2].vote(6, "m2").status == "REFUSED"
    assert nodes[2].vote(7, "m2").granted


def test_fresh_cluster_bootstrap(nodes: list[Node]) -> None:
    ids = ["n0", "n1", "n2"]

    def read_all() -> dict[str, NodeControlState]:
        return {i: n.read() for i, n in zip(ids, nodes, strict=True)}

    states = read_all()
    assert plan_seed(3, {**states, "n2": None}, "n0") is None, "everyone must answer"
    plan = plan_seed(3, states, "n0", known_epoch=4)
    assert plan == SeedPlan(4, bootstrap=True)
    # the bootstrapping manager dies after seeding one node: the others still bootstrap
    before_ms = time.time_ns() // 1_000_000 - 60_000  # the server's clock, within a minute
    seeded = nodes[0].seed(4, born=states["n0"].born, bootstrap=True)
    assert seeded.status == "SEEDED"
    assert seeded.epoch is not None
    assert seeded.epoch > before_ms, "the floor is the clock in ms"
    states = read_all()
    assert states["n0"].boot
    assert plan_seed(3, states, "n1") == SeedPlan(seeded.epoch, bootstrap=True)
    # once a vote was cast, the boot marker goes and a fresh node needs a real majority
    nodes[1].seed(seeded.epoch)
    assert nodes[0].vote(seeded.epoch + 1, "m").granted
    states = read_all()
    assert not states["n0"].boot
    assert plan_seed(3, states, "n2") == SeedPlan(seeded.epoch + 1, bootstrap=False)
    assert plan_seed(3, {**states, "n1": None}, "n2") is None


def test_plan_seed_waits_for_min_age(nodes: list[Node]) -> None:
    states = {"n0": nodes[0].read()}
    assert plan_seed(1, states, "n0", min_age_ms=3_600_000) is None
    assert plan_seed(1, states, "n0") is not None


def test_parsers_reject_garbage() -> None:
    for bad in (None, b"OK", [b"GRANTED"], [b"MAYBE", b"1", b"x"], [b"GRANTED", b"1x", b"m"]):
        with pytest.raises(BadControlReply):
            parse_vote(bad)
    with pytest.raises(BadControlReply):
        parse_cas([b"ACCEPTED", b"1", b"1", 5])
    with pytest.raises(BadControlReply):
        parse_read([b"1"] * 8)
    with pytest.raises(BadControlReply):
        parse_seed([b"SEEDED", b"\xff", b"", b""])
    with pytest.raises(ValueError, match="epoch"):
        vote_args(0, "m")
    with pytest.raises(ValueError, match="namespace"):
        control_keys("")
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert control_keys("prod").election == "prod:ctl:election"


def test_racing_candidates_win_at_most_one_majority_per_epoch(cluster: LocalCluster) -> None:
    keys = control_keys(f"race{uuid.uuid4().hex[:8]}")
    per_thread = 6
    epochs = 25
    grants: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    seen_epochs: list[list[int]] = [[] for _ in cluster.nodes]
    lock = threading.Lock()
    barrier = threading.Barrier(per_thread)
    errors: list[BaseException] = []

    setup = [Node(spec, keys) for spec in cluster.nodes]
    for node in setup:
        node.seed(0)
        node.client.close()

    def candidate(name: str, seed: int) -> None:
        rng = random.Random(seed)
        own = [Node(spec, keys) for spec in cluster.nodes]
        try:
            for round_ in range(epochs):
                barrier.wait()
                epoch = round_ + 1 + rng.choice((0, 0, 1))  # overlap neighbouring epochs
                order = list(range(len(own)))
                rng.shuffle(order)
                for i in order:
                    reply = own[i].vote(epoch, name)
                    if reply.granted and rng.random() < 0.3:
                        reply = own[i].vote(epoch, name)  # renewal
                    with lock:
                        if reply.granted:
                            grants[epoch][name].add(str(i))
                        if reply.epoch is not None:
                            seen_epochs[i].append(reply.epoch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()
        finally:
            for node in own:
                node.client.close()

    done = threading.Event()
    observed: list[list[int]] = [[] for _ in cluster.nodes]

    def watcher() -> None:
        # epochs read from each node over time must never go down
        own = [Node(spec, keys) for spec in cluster.nodes]
        try:
            while not done.is_set():
                for i, node in enumerate(own):
                    epoch = node.read().epoch
                    assert epoch is not None
                    observed[i].append(epoch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            for node in own:
                node.client.close()

    threads = [threading.Thread(target=candidate, args=(f"c{k}", k)) for k in range(per_thread)]
    watch = threading.Thread(target=watcher)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watch.join()
    assert not errors, errors
    for series in observed:
        assert series, "the watcher read every node"
        assert series == sorted(series)
    winners_seen = 0
    for epoch, by_candidate in grants.items():
        winners = [c for c, got in by_candidate.items() if len(got) >= 2]
        assert len(winners) <= 1, (epoch, dict(by_candidate))
        winners_seen += len(winners)
        voters: dict[str, str] = {}
        for cand, got in by_candidate.items():
            for node_id in got:
                assert voters.setdefault(node_id, cand) == cand, "two grants by one node"
    assert winners_seen > 0
    finals = [Node(spec, keys) for spec in cluster.nodes]
    try:
        for i, node in enumerate(finals):
            assert node.read().epoch == max(seen_epochs[i])
    finally:
        for node in finals:
            node.client.close()
