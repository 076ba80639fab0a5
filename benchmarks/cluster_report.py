"""Cluster data-path benchmark: one run, ratios against the hand-written alternative.

Usage::

    .venv/bin/python benchmarks/cluster_report.py [--rounds R] [--pairs P] [--backend B]

Starts a 5-node ``LocalCluster`` and measures in interleaved rounds; each ratio is the
median of the rounds' own ratios (both sides of a round run back to back, so drift in
the machine's speed hits them alike), with median rates beside it. Throughputs are given
per second of wall clock and per second of this process's CPU: client and servers share
the machine's cores here, so the second figure is the client's own cost:

1. ``get_many``/``set_many`` of 1,000 keys: cachering versus uhashring routing plus
   redis-py's asyncio client with one ``MGET`` (or ``MSET``) per node, issued concurrently
   with ``asyncio.gather`` (what a user would write today). Target: >= 1.5x.
2. Single ``get``/``set`` latency (replicas 1 and 2) versus a bare transport ``PING``
   round trip to the same node (``Pool.execute("PING")``): medians per call, the three
   interleaved in blocks while the cluster runs. Target: <= 1.25x. Beside them, for
   reference, the server side of a ``set`` without the cluster layer: the single-key
   write script and a script that does nothing, each run through the same ``Pool``.
3. Replication cost: ``set_many`` throughput (including the background replica flush)
   with ``replicas=2, consistency="one"`` versus ``replicas=1``, on two clusters open side
   by side, measured in alternating blocks: the median of ``--pairs`` per-pair ratios.
   Target: >= 0.6x. Twice: rewriting the same 1,000 keys (overwrites) and writing 1,000
   new keys every call (inserts, which cost the servers more).
4. Read levels: a single ``get`` and a 1,000-key ``get_many`` at ``quorum`` (both home
   copies with replicas=2, newest wins) versus at ``one``, interleaved in the same
   cluster, every node healthy: medians per call. Target: <= 1.3x.
5. 100,000 replica writes through the batched synchronizer versus one script call per
   key (10 concurrent callers, the pool size). Target: >= 10x.
"""

from __future__ import annotations

import argparse
import asyncio  # the redis-py peer runs on asyncio itself
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.data import values
from cachering.data.scripts import APPLY_ONE, APPLY_SOURCE, apply_args
from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Pool, Script

KEYS = [f"bench:{i}" for i in range(1000)]
VALUE = b"v" * 100
SYNC_WRITES = 100_000
_run = itertools.count()  # keeps fresh keys fresh across rounds
_EMPTY = Script("return '1'")


def _config(nodes: Sequence[NodeSpec], **options: Any) -> ClusterConfig:
    return ClusterConfig(nodes=tuple(nodes), namespace="bench", **options)


async def _rate(
    out: dict[str, float], name: str, call: Callable[[], Awaitable[Any]], n: int, per_call: int
) -> None:
    """Operations per second of ``call`` (``per_call`` operations each), after a warm-up.

    Stores the wall-clock rate under ``name`` and the rate per second of this process's
    CPU under ``name + " cpu"``: the servers are other processes, so the latter is the
    client's own cost, what throughput becomes when the servers have their own hosts.
    """
    for _ in range(max(3, n // 10)):
        await call()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await call()
    out[name] = n * per_call / (time.perf_counter() - start)
    out[name + " cpu"] = n * per_call / max(time.process_time() - cpu, 1e-9)


# ------------------------------------------------------------------------- cachering


def cachering_many(nodes: Sequence[NodeSpec], backend: str, n: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        out: dict[str, float] = {}
        mapping = dict.fromkeys(KEYS, VALUE)
        async with Cluster(_config(nodes, replicas=1)) as cluster:
            await cluster.set_many(mapping)
            await _rate(out, "get_many", lambda: cluster.get_many(KEYS), n, len(KEYS))
            await _rate(out, "set_many r=1", lambda: cluster.set_many(mapping), n, len(KEYS))
        return out

    return anyio.run(main, backend=backend)


def cachering_replication(
    nodes: Sequence[NodeSpec], backend: str, pairs: int
) -> dict[str, list[tuple[float, float, float, float]]]:
    """``set_many`` of 1,000 keys, ten calls then ``wait_replicated()``, with replicas=1 and with
    replicas=2 (consistency one), on two clusters open side by side.

    The two are measured in alternating blocks, so a change in the machine's speed hits
    both members of a pair alike; each pair gives (r=1 wall, r=2 wall, r=1 CPU, r=2 CPU)
    in keys per second. Twice: rewriting the same keys, and writing keys never written
    before in every call (built beforehand), which costs the servers more."""

    async def main() -> dict[str, list[tuple[float, float, float, float]]]:
        out: dict[str, list[tuple[float, float, float, float]]] = {}
        mapping = dict.fromkeys(KEYS, VALUE)
        async with (
            Cluster(_config(nodes, replicas=1)) as one,
            Cluster(_config(nodes, replicas=2)) as two,
        ):
            for fresh in (False, True):
                rows = out.setdefault("fresh" if fresh else "same", [])
                for block in range(-1, pairs):  # the first pair warms up
                    row: list[float] = []
                    for cluster in (one, two):
                        batches = [
                            {f"{k}:{next(_run)}": VALUE for k in KEYS} if fresh else mapping
                            for _ in range(50)
                        ]
                        start, cpu = time.perf_counter(), time.process_time()
                        for i, batch in enumerate(batches):
                            await cluster.set_many(batch)
                            if i % 10 == 9:
                                await cluster.wait_replicated()
                        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                        row += [len(batches) * len(KEYS) / wall, len(batches) * len(KEYS) / cpu]
                    if block >= 0:
                        rows.append((row[0], row[2], row[1], row[3]))
        return out

    return anyio.run(main, backend=backend)


def cachering_single(nodes: Sequence[NodeSpec], backend: str, n: int) -> dict[str, float]:
    """Median microseconds per call of ``get``/``set`` and of a bare ``PING`` to the node
    that holds the key, through the transport's ``Pool``, with the cluster open for all
    three (its background work, replica flushes included, runs the whole time).

    The three are interleaved in blocks of 50 calls, so drift in the machine's speed hits
    them alike; the median per call is what one request sees."""

    async def main() -> dict[str, float]:
        out: dict[str, float] = {}
        clock = values.HybridClock.random()
        for replicas in (1, 2):
            async with Cluster(_config(nodes, replicas=replicas)) as cluster:
                await cluster.set("lat", VALUE)
                home = next(nd for nd in nodes if nd.id == cluster.node_for("lat"))
                async with Pool(home) as pool:
                    calls: dict[str, Callable[[], Awaitable[Any]]] = {
                        "ping": lambda: pool.execute("PING"),
                        "get": lambda: cluster.get("lat"),
                        "set": lambda: cluster.set("lat", VALUE),
                    }
                    if replicas == 2:
                        # a read of both home copies (newest wins) against one copy
                        calls["get quorum"] = lambda: cluster.get("lat", consistency="quorum")
                    if replicas == 1:
                        # what the server side of a set costs, without the cluster layer:
                        # the write script, and a script that does nothing
                        calls["APPLY_ONE"] = lambda: pool.run_script(
                            APPLY_ONE, (b"bench:k:lat2",), (clock.stamp(VALUE), 0)
                        )
                        calls["empty script"] = lambda: pool.run_script(
                            _EMPTY, (b"bench:k:lat2",), (clock.stamp(VALUE), 0)
                        )
                    times: dict[str, list[float]] = {name: [] for name in calls}
                    for block in range(-1, max(1, n // 50)):
                        for name, call in calls.items():
                            for _ in range(50):
                                start = time.perf_counter()
                                await call()
                                if block >= 0:  # the first block warms up
                                    times[name].append(time.perf_counter() - start)
                    if replicas == 2:
                        await cluster.set_many(dict.fromkeys(KEYS, VALUE))
                        await cluster.wait_replicated()
                        many: dict[str, Callable[[], Awaitable[Any]]] = {
                            "get_many one": lambda: cluster.get_many(KEYS),
                            "get_many quorum": lambda: cluster.get_many(KEYS, consistency="quorum"),
                        }
                        for name in many:
                            times[name] = []
                        for block in range(-1, max(1, n // 200)):
                            for name, call in many.items():
                                for _ in range(5):
                                    start = time.perf_counter()
                                    await call()
                                    if block >= 0:
                                        times[name].append(time.perf_counter() - start)
                for name, seq in times.items():
                    out[f"{name} r={replicas}"] = statistics.median(seq) * 1e6
        return out

    return anyio.run(main, backend=backend)


def cachering_sync(nodes: Sequence[NodeSpec], backend: str) -> dict[str, float]:
    """Seconds for 100,000 replica writes: batched synchronizer versus per-key calls."""

    async def main() -> dict[str, float]:
        clock = values.HybridClock.random()
        entries = [
            (f"bench:k:s{i}".encode(), values.encode(clock.next(), VALUE), 0)
            for i in range(SYNC_WRITES)
        ]
        out = {}
        async with Cluster(_config(nodes)) as cluster:
            sync = cluster._sync
            assert sync is not None
            targets = [n.id for n in nodes]
            start = time.perf_counter()
            step = 1000
            for i in range(0, SYNC_WRITES, step):
                await sync.submit(
                    targets[(i // step) % len(targets)], entries[i : i + step], holder=targets[0]
                )
            await sync.flush()
            out["batched"] = time.perf_counter() - start
            assert sync.stats.applied == SYNC_WRITES, sync.stats
        clock = values.HybridClock.random()
        newer = [(k, values.encode(clock.next(), VALUE), p) for k, _, p in entries]
        script = Script(APPLY_SOURCE)
        pools = [Pool(n) for n in nodes]
        try:
            start = time.perf_counter()

            async def worker(w: int) -> None:
                for i in range(w, SYNC_WRITES, 10):
                    keys, argv = apply_args([newer[i]], hint_limit=1)
                    await pools[i % len(pools)].run_script(script, keys, argv)

            async with anyio.create_task_group() as tg:
                for w in range(10):
                    tg.start_soon(worker, w)
            out["per_key"] = time.perf_counter() - start
        finally:
            for pool in pools:
                await pool.aclose()
        return out

    return anyio.run(main, backend=backend)


# ------------------------------------------------------------------------- the peer


def peer_many(nodes: Sequence[NodeSpec], n: int) -> dict[str, float]:
    """uhashring routing + redis.asyncio, one MGET/MSET per node via asyncio.gather."""
    import redis.asyncio
    from uhashring import HashRing

    async def main() -> dict[str, float]:
        clients = {nd.id: redis.asyncio.Redis(host=nd.host, port=nd.port) for nd in nodes}
        ring = HashRing(nodes=list(clients))
        try:

            def group(keys: Sequence[str]) -> dict[str, list[str]]:
                groups: dict[str, list[str]] = {}
                for key in keys:
                    groups.setdefault(ring.get_node(key), []).append(key)
                return groups

            async def get_many() -> list[Any]:
                groups = group(KEYS)
                replies = await asyncio.gather(
                    *(clients[node].mget(keys) for node, keys in groups.items())
                )
                found: dict[str, Any] = {}
                for keys, vals in zip(groups.values(), replies, strict=True):
                    found.update(zip(keys, vals, strict=True))
                return [found[k] for k in KEYS]

            async def set_many() -> None:
                groups = group(KEYS)
                await asyncio.gather(
                    *(
                        clients[node].mset(dict.fromkeys(keys, VALUE))
                        for node, keys in groups.items()
                    )
                )

            await set_many()
            out: dict[str, float] = {}
            await _rate(out, "get_many", get_many, n, len(KEYS))
            await _rate(out, "set_many r=1", set_many, n, len(KEYS))
            return out
        finally:
            for client in clients.values():
                await client.aclose()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=10, help="replication: measured pairs")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    with LocalCluster(5) as local:
        nodes = local.nodes
        ours, peer, single = [], [], []
        for i in range(args.rounds):
            if i % 2:  # alternate which side goes first
                peer.append(peer_many(nodes, args.iterations // 4))
            ours.append(cachering_many(nodes, args.backend, args.iterations // 4))
            if not i % 2:
                peer.append(peer_many(nodes, args.iterations // 4))
            single.append(cachering_single(nodes, args.backend, args.iterations * 10))
        replication = cachering_replication(nodes, args.backend, args.pairs)
        sync = cachering_sync(nodes, args.backend)
    # latencies: each figure's median over the rounds (each round is already a median)
    s = {k: statistics.median(r[k] for r in single) for k in single[0]}
    print(
        f"cachering cluster data path, 5-node LocalCluster, backend={args.backend}, "
        f"medians of {args.rounds} rounds (replication: of {args.pairs} pairs)"
    )
    print(f"{'measure':<48}{'cachering':>14}{'baseline':>14}{'ratio':>8}{'target':>9}")

    def row(name: str, a: float, b: float, unit: str, target: str) -> None:
        print(f"{name:<48}{a:>10,.1f} {unit:<3}{b:>10,.1f} {unit:<3}{a / b:>7.2f}x{target:>9}")

    for op in ("get_many", "set_many r=1"):
        for cpu in ("", " cpu"):
            what = "client CPU" if cpu else "wall clock"
            key = op + cpu
            name = f"{op} 1k keys vs uhashring+redis.asyncio, {what}"
            # each round measures both sides back to back: the median of the rounds' own
            # ratios, with the median rates beside it
            ratio = statistics.median(a[key] / b[key] for a, b in zip(ours, peer, strict=True))
            a, b = (statistics.median(r[key] for r in rows) for rows in (ours, peer))
            print(f"{name:<48}{a:>10,.1f} k/s{b:>10,.1f} k/s{ratio:>7.2f}x{'>=1.5x':>9}")
    for op in ("get", "set"):
        for r in (1, 2):
            name = f"single {op} r={r} vs Pool PING (median)"
            row(name, s[f"{op} r={r}"], s[f"ping r={r}"], "us", "<=1.25x")
    row(
        "single get quorum r=2 vs get one r=2 (median)",
        s["get quorum r=2"],
        s["get r=2"],
        "us",
        "<=1.3x",
    )
    row(
        "get_many 1k quorum r=2 vs one r=2 (median)",
        s["get_many quorum r=2"],
        s["get_many one r=2"],
        "us",
        "<=1.3x",
    )
    for op in ("APPLY_ONE", "empty script"):
        row(f"{op} through Pool vs Pool PING (median)", s[f"{op} r=1"], s["ping r=1"], "us", "info")
    for keys, pairs in replication.items():
        label = "new keys" if keys == "fresh" else "same keys"
        for what, r1, r2 in (("wall clock", 0, 1), ("client CPU", 2, 3)):
            # the median of the pairs' own ratios; the throughputs beside it are medians too
            ratio = statistics.median(p[r2] / p[r1] for p in pairs)
            a, b = (statistics.median(p[i] for p in pairs) for i in (r2, r1))
            name = f"set_many+flush r=2 vs r=1, {label}, {what}"
            print(f"{name:<48}{a:>10,.1f} k/s{b:>10,.1f} k/s{ratio:>7.2f}x{'>=0.6x':>9}")
    row("100k replica writes: per-key / batched", sync["per_key"], sync["batched"], "s", ">=10x")


if __name__ == "__main__":
    main()
