"""``cachering bench``: the ring against its pure-Python twin and uhashring, and a cluster run.

Every figure is measured in this one process, best of a few repeats, and the table shows
ratios, which travel between machines better than absolute times. The cluster part starts
a :class:`~cachering.local.LocalCluster` and measures ``set_many``/``get_many`` keys per
second through a real :class:`~cachering.cluster.Cluster`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import os
import random
import string
import sys
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import anyio

from ..config import ClusterConfig
from ..ring import _ring_py
from .args import add_backend, int_in
from .output import Style, UsageError, print_json, table

__all__ = ["best_time", "cluster_bench", "configure", "ring_bench", "run"]

Progress = Callable[[str], None]


def configure(commands: Any) -> None:
    """Add the ``bench`` command to the parser."""
    p = commands.add_parser(
        "bench",
        help="benchmark the ring (C, pure Python, uhashring) and a local cluster",
        description=(
            "Measure the ring's per-key cost (compiled extension, its pure-Python twin, and "
            "uhashring when installed), its build time, and get_many/set_many throughput "
            "through a Cluster on a local 3-node cluster. Prints times and ratios."
        ),
    )
    p.add_argument("--ring-only", action="store_true", help="skip the cluster benchmark")
    p.add_argument(
        "--keys", type=int_in(100), default=100_000, help="random keys per run (default 100000)"
    )
    p.add_argument("--nodes", type=int, default=100, help="ring size for lookups (default 100)")
    p.add_argument(
        "--build-nodes",
        type=int,
        default=1000,
        help="ring size for the build-time figure (default 1000)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_backend(p)
    p.set_defaults(run=run)


def best_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` calls of ``fn``, in seconds (a collection before each)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _keys(n: int, seed: int = 20240229) -> list[str]:
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    return ["".join(rnd.choices(alphabet, k=16)) for _ in range(n)]


def _loop(fn: Callable[[str], object], keys: list[str]) -> Callable[[], None]:
    def run() -> None:
        for key in keys:
            fn(key)

    return run


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("cachering.ring._ring_c")
    except ImportError:
        return None


def ring_bench(
    n_keys: int, n_nodes: int, progress: Progress, build_nodes: int = 1000
) -> dict[str, Any]:
    """Per-key ns of lookup_many, group_by_node and lookup; build ms; one dict of results."""
    keys = _keys(n_keys)
    # The Python twin and per-call loops are slow; a slice keeps the run short.
    small = keys[: max(100, min(len(keys), 20_000))]
    names = [f"cache-{i}.example.net:6379" for i in range(n_nodes)]
    impls: list[tuple[str, ModuleType]] = []
    c_mod = _compiled()
    if c_mod is not None:
        impls.append(("c", c_mod))
    impls.append(("python", _ring_py))
    try:
        uhashring: ModuleType | None = importlib.import_module("uhashring")
    except ImportError:
        uhashring = None
    rows: list[dict[str, Any]] = []
    for impl, mod in impls:
        ring = mod.Ring(names)
        fast = impl == "c"
        batch = keys if fast else small
        reps = 5 if fast else 2
        for op, fn, n in (
            ("lookup_many", lambda r=ring, b=batch: r.lookup_many(b), len(batch)),
            ("group_by_node", lambda r=ring, b=batch: r.group_by_node(b), len(batch)),
            ("lookup", _loop(ring.lookup, small), len(small)),
        ):
            progress(f"ring {impl} {op}")
            rows.append({"impl": impl, "op": op, "ns_per_key": best_time(fn, reps) / n * 1e9})
    if uhashring is not None:
        progress("ring uhashring get_node")
        theirs = uhashring.HashRing(names)
        t = best_time(_loop(theirs.get_node, small), 3) / len(small) * 1e9
        rows.append({"impl": "uhashring", "op": "get_node", "ns_per_key": t})
    build: list[dict[str, Any]] = []
    big = [f"cache-{i}.example.net:6379" for i in range(build_nodes)]
    for impl, mod in impls:
        progress(f"build {impl}")
        reps = 3 if impl == "c" else 1
        build.append({"impl": impl, "ms": best_time(functools.partial(mod.Ring, big), reps) * 1e3})
    if uhashring is not None:
        progress("build uhashring")
        build_theirs = functools.partial(uhashring.HashRing, big)
        build.append({"impl": "uhashring", "ms": best_time(build_theirs, 2) * 1e3})
    base = next((r["ns_per_key"] for r in rows if r["impl"] == "uhashring"), None)
    py = {r["op"]: r["ns_per_key"] for r in rows if r["impl"] == "python"}
    for r in rows:
        r["vs_python"] = py[r["op"]] / r["ns_per_key"] if r["op"] in py else None
        r["vs_uhashring"] = base / r["ns_per_key"] if base else None
    return {
        "keys": len(keys),
        "nodes": n_nodes,
        "implementation": "c" if c_mod is not None else "python",
        "per_key": rows,
        "build_nodes": build_nodes,
        "build": build,
    }


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def _cluster_run(n_keys: int, progress: Progress) -> dict[str, Any]:
    from ..cluster import Cluster
    from ..local import LocalCluster
    from ..resp import Pool

    progress("cluster: starting 3 redis-server processes")
    async with LocalCluster(3) as local:
        keys = [f"bench:{k}" for k in _keys(n_keys, seed=7)]
        value = b"x" * 100
        results: list[dict[str, Any]] = []
        baseline: dict[tuple[str, int], float] = {}
        # The same batches as plain MSET/MGET to one node through the same transport:
        # what sharding, replication and versioned values cost on top of Redis itself.
        async with Pool(local.nodes[0]) as pool:
            for batch in (100, 1000):
                chunks = [keys[i : i + batch] for i in range(0, len(keys), batch)]
                progress(f"baseline: MSET/MGET x{batch} on one node")

                async def mset(chunks: list[list[str]] = chunks) -> None:
                    for chunk in chunks:
                        await pool.execute("MSET", *(a for k in chunk for a in (k, value)))

                async def mget(chunks: list[list[str]] = chunks) -> None:
                    for chunk in chunks:
                        await pool.execute("MGET", *chunk)

                baseline[("set_many", batch)] = len(keys) / await _timed(mset)
                baseline[("get_many", batch)] = len(keys) / await _timed(mget)
            await pool.execute("FLUSHALL")
        for level in ("one", "quorum"):
            cfg = ClusterConfig(
                nodes=local.nodes, replicas=2, consistency=level, secret=os.urandom(32)
            )
            async with Cluster(cfg) as cluster:
                for batch in (100, 1000):
                    chunks = [keys[i : i + batch] for i in range(0, len(keys), batch)]
                    progress(f"cluster: set_many x{batch} at {level}")

                    async def writes(
                        c: Cluster = cluster, chunks: list[list[str]] = chunks
                    ) -> None:
                        for chunk in chunks:
                            await c.set_many([(k, value) for k in chunk])
                        await c.wait_replicated()

                    async def reads(c: Cluster = cluster, chunks: list[list[str]] = chunks) -> None:
                        for chunk in chunks:
                            await c.get_many(chunk)

                    runs: list[tuple[str, str | None, Callable[[], Awaitable[None]]]]
                    runs = [("set_many", level, writes)]
                    if level == "one":
                        runs.append(("get_many", None, reads))
                    for op, consistency, fn in runs:
                        if op == "get_many":
                            progress(f"cluster: get_many x{batch}")
                        rate = len(keys) / await _timed(fn)
                        results.append(
                            {
                                "op": op,
                                "batch": batch,
                                "consistency": consistency,
                                "keys_per_s": rate,
                                "vs_one_node_raw": rate / baseline[(op, batch)],
                            }
                        )
        return {
            "keys": len(keys),
            "nodes": 3,
            "replicas": 2,
            "value_bytes": 100,
            "runs": results,
            "one_node_raw_keys_per_s": {f"{op} x{b}": r for (op, b), r in baseline.items()},
        }


def cluster_bench(n_keys: int, progress: Progress, backend: str = "asyncio") -> dict[str, Any]:
    """get_many/set_many keys per second through a Cluster on a local 3-node cluster."""
    return anyio.run(_cluster_run, n_keys, progress, backend=backend)


class _Bar:
    """A one-line progress indicator redrawn with ``\\r`` on a terminal; silent elsewhere."""

    def __init__(self, style: Style, total: int) -> None:
        self.style = style
        self.total = total
        self.done = 0

    def __call__(self, label: str) -> None:
        if not self.style.live:
            return
        self.done += 1
        width = 24
        filled = min(width, width * self.done // max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.style.stream.write(f"\r[{bar}] {label[:50]:<50}")
        self.style.stream.flush()

    def close(self) -> None:
        if self.style.live:
            self.style.stream.write("\r" + " " * 80 + "\r")
            self.style.stream.flush()


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks and print a table (or JSON); exit code 0."""
    if not 1 <= args.nodes <= 10_000:
        raise UsageError(f"--nodes must be in 1..10000, got {args.nodes}")
    if not 1 <= args.build_nodes <= 100_000:
        raise UsageError(f"--build-nodes must be in 1..100000, got {args.build_nodes}")
    style = Style()
    bar = _Bar(style, 11 + (0 if args.ring_only else 9))
    try:
        ring = ring_bench(args.keys, args.nodes, bar, args.build_nodes)
        cluster = (
            None if args.ring_only else cluster_bench(min(args.keys, 20_000), bar, args.backend)
        )
    finally:
        bar.close()
    result = {"ring": ring, "cluster": cluster, "python": sys.version.split()[0]}
    if args.json:
        print_json(result)
        return 0
    w = style.write
    w(style.paint(f"ring: {ring['nodes']} nodes, {ring['keys']:,} random 16-char keys", "bold"))
    rows = [
        [
            r["impl"],
            r["op"],
            f"{r['ns_per_key']:.1f}",
            _ratio(r["vs_python"]),
            _ratio(r["vs_uhashring"]),
        ]
        for r in ring["per_key"]
    ]
    for line in table(["IMPL", "OP", "NS/KEY", "VS PYTHON", "VS UHASHRING"], rows, right=(2, 3, 4)):
        w(line)
    w("")
    base = next((b["ms"] for b in ring["build"] if b["impl"] == "uhashring"), None)
    rows = [
        [b["impl"], f"{b['ms']:.1f}", _ratio(base / b["ms"] if base else None)]
        for b in ring["build"]
    ]
    w(style.paint(f"build: {ring['build_nodes']} nodes x 160 points", "bold"))
    for line in table(["IMPL", "MS", "VS UHASHRING"], rows, right=(1, 2)):
        w(line)
    if cluster is not None:
        w("")
        w(
            style.paint(
                f"cluster: 3 local nodes, replicas 2, {cluster['keys']:,} keys of 100 bytes", "bold"
            )
        )
        rows = [
            [
                r["op"],
                str(r["batch"]),
                r["consistency"] or "-",
                f"{r['keys_per_s']:,.0f}",
                _ratio(r["vs_one_node_raw"]),
            ]
            for r in cluster["runs"]
        ]
        headers = ["OP", "BATCH", "CONSISTENCY", "KEYS/S", "VS RAW MSET/MGET, 1 NODE"]
        for line in table(headers, rows, right=(1, 3, 4)):
            w(line)
    return 0
