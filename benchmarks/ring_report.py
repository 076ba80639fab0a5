"""Print the ring's per-key times, ratios against uhashring, build time and memory.

Run: ``.venv/bin/python benchmarks/ring_report.py`` (one process, one machine, best of N).
"""

from __future__ import annotations

import gc
import random
import string
import sys
import tracemalloc
from collections.abc import Callable

import uhashring

from cachering.cli.bench import best_time
from cachering.ring import _ring_c, _ring_py

_rnd = random.Random(20240229)
KEYS = ["".join(_rnd.choices(string.ascii_letters + string.digits, k=16)) for _ in range(100_000)]
LOOP_KEYS = KEYS[:20_000]


def names(count: int) -> list[str]:
    return [f"cache-{i}.example.net:6379" for i in range(count)]


def per_key_loop(fn: Callable[[str], object], keys: list[str]) -> Callable[[], None]:
    def run() -> None:
        for key in keys:
            fn(key)

    return run


def interleaved(
    cases: dict[str, tuple[Callable[[], object], int]], rounds: int
) -> dict[str, float]:
    """Best ns/key of each case, measured round-robin so load spikes hit all cases alike."""
    result = {label: float("inf") for label in cases}
    for _ in range(rounds):
        for label, (fn, count) in cases.items():
            result[label] = min(result[label], best_time(fn, 1) / count * 1e9)
    return result


def main() -> None:
    rows: list[tuple[str, float, str]] = []
    for count in (10, 100):
        for mode, theirs_kwargs in (("murmur3", {}), ("ketama", {"hash_fn": "ketama"})):
            theirs = uhashring.HashRing(names(count), **theirs_kwargs)
            c_ring = _ring_c.Ring(names(count), hash=mode)
            py_ring = _ring_py.Ring(names(count), hash=mode)
            label = "default" if mode == "murmur3" else "ketama"
            cases: dict[str, tuple[Callable[[], object], int]] = {
                f"uhashring get_node ({label})": (
                    per_key_loop(theirs.get_node, LOOP_KEYS),
                    len(LOOP_KEYS),
                ),
                f"{mode} c lookup_many": (lambda r=c_ring: r.lookup_many(KEYS), len(KEYS)),
                f"{mode} c group_by_node": (lambda r=c_ring: r.group_by_node(KEYS), len(KEYS)),
                f"{mode} c lookup per call": (
                    per_key_loop(c_ring.lookup, LOOP_KEYS),
                    len(LOOP_KEYS),
                ),
                f"{mode} py lookup_many": (
                    lambda r=py_ring: r.lookup_many(LOOP_KEYS),
                    len(LOOP_KEYS),
                ),
                f"{mode} py group_by_node": (
                    lambda r=py_ring: r.group_by_node(LOOP_KEYS),
                    len(LOOP_KEYS),
                ),
            }
            measured = interleaved(cases, 5)
            base = measured[f"uhashring get_node ({label})"]
            for name, ns in measured.items():
                rows.append((f"{count:>3} nodes {name}", ns, f"{base / ns:.1f}x"))
    print(f"{'per key (100,000 random 16-char str keys)':<48} {'ns/key':>9}  vs uhashring")
    for label, ns, ratio in rows:
        print(f"{label:<48} {ns:>9.1f}  {ratio:>8}")

    big = names(1000)
    theirs_build = best_time(lambda: uhashring.HashRing(big), 5)
    print(f"\n{'build 1000 nodes x 160 vnodes':<48} {'ms':>9}  vs uhashring")
    print(f"{'uhashring':<48} {theirs_build * 1e3:>9.1f}  {'1.0x':>8}")
    for label, fn in (
        ("c murmur3", lambda: _ring_c.Ring(big)),
        ("c ketama", lambda: _ring_c.Ring(big, hash="ketama")),
        ("py murmur3", lambda: _ring_py.Ring(big)),
    ):
        t = best_time(fn, 5 if label.startswith("c") else 2)
        print(f"{label:<48} {t * 1e3:>9.1f}  {theirs_build / t:>7.1f}x")

    print(f"\n{'memory (100 nodes, 16,000 points)':<48} {'B/point':>9}")
    ring = _ring_c.Ring(names(100))
    print(f"{'c (points + owners + bucket index)':<48} {ring._nbytes / ring.point_count:>9.2f}")
    for label, build in (
        ("py twin (tracemalloc)", lambda: _ring_py.Ring(names(100))),
        ("uhashring (tracemalloc)", lambda: uhashring.HashRing(names(100))),
    ):
        gc.collect()
        tracemalloc.start()
        kept = build()
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{label:<48} {size / 16_000:>9.2f}")
        del kept
    print(f"\npython {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
