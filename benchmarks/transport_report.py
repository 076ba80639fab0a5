"""Transport benchmark: cachering vs redis-py vs coredis vs redis-benchmark, one run.

Usage: ``.venv/bin/python benchmarks/transport_report.py [--pings N] [--rounds R]``

Starts one local redis-server (``cachering.local.LocalCluster``) and measures, against
it, in interleaved rounds (the best block of 500 PINGs and the best pipeline of all
rounds are kept, which filters out noise from other processes):

- sequential ``PING`` round trips (us per call);
- 10,000 ``SET`` commands in one pipeline (us per command).

Clients: cachering's ``Pool`` on asyncio and on trio (with the default 1 s per-call
timeout, as applications use it, and a bare ``Connection`` without a timeout), redis-py's
asyncio client (hiredis parser), coredis, and ``redis-benchmark -c 1 -t ping`` as the
floor. Ratios are relative to redis-py (lower is better for both columns).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from cachering.local import LocalCluster
from cachering.node import NodeSpec
from cachering.resp import Connection, Pool

PIPELINE = 10_000
BLOCK = 500
VALUE = b"v" * 16


def _commands() -> list[tuple[Any, ...]]:
    return [("SET", f"bench:{i}", VALUE) for i in range(PIPELINE)]


async def _time_pings(call: Callable[[], Awaitable[Any]], n: int) -> float:
    """Best per-call time over blocks of ``BLOCK`` calls (filters out noisy neighbours)."""
    for _ in range(200):
        await call()
    best = float("inf")
    for _ in range(max(n // BLOCK, 1)):
        start = time.perf_counter()
        for _ in range(BLOCK):
            await call()
        best = min(best, (time.perf_counter() - start) / BLOCK * 1e6)
    return best


async def _time_pipeline(run: Callable[[], Awaitable[Any]]) -> float:
    await run()
    start = time.perf_counter()
    await run()
    return (time.perf_counter() - start) / PIPELINE * 1e6


def bench_cachering_pool(spec: NodeSpec, backend: str, n: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        commands = _commands()
        async with Pool(spec) as pool:
            ping = await _time_pings(lambda: pool.execute("PING"), n)
            pipe = await _time_pipeline(lambda: pool.pipeline(commands))
        return ping, pipe

    return anyio.run(main, backend=backend)


def bench_cachering_conn(spec: NodeSpec, backend: str, n: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        commands = _commands()
        conn = await Connection.open(spec)
        try:
            ping = await _time_pings(lambda: conn.execute("PING"), n)
            pipe = await _time_pipeline(lambda: conn.pipeline(commands))
        finally:
            await conn.aclose()
        return ping, pipe

    return anyio.run(main, backend=backend)


def bench_redis_py(spec: NodeSpec, n: int) -> tuple[float, float]:
    import redis.asyncio

    async def main() -> tuple[float, float]:
        client = redis.asyncio.Redis(host=spec.host, port=spec.port)
        try:
            ping = await _time_pings(client.ping, n)

            async def run() -> Any:
                pipe = client.pipeline(transaction=False)
                for _, key, value in _commands():
                    pipe.set(key, value)
                return await pipe.execute()

            pipe_us = await _time_pipeline(run)
        finally:
            await client.aclose()
        return ping, pipe_us

    return anyio.run(main, backend="asyncio")


def bench_coredis(spec: NodeSpec, n: int) -> tuple[float, float]:
    import coredis

    async def main() -> tuple[float, float]:
        async with coredis.Redis(host=spec.host, port=spec.port) as client:
            ping = await _time_pings(client.ping, n)

            async def run() -> Any:
                async with client.pipeline(transaction=False) as pipe:
                    for _, key, value in _commands():
                        pipe.set(key, value)

            pipe_us = await _time_pipeline(run)
        return ping, pipe_us

    return anyio.run(main, backend="asyncio")


def bench_redis_benchmark(spec: NodeSpec, n: int) -> tuple[float, float] | None:
    exe = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    if not shutil.which(exe):
        return None
    out = subprocess.run(
        [exe, "-h", spec.host, "-p", str(spec.port), "-c", "1", "-n", str(n), "-t", "ping", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rates = [float(x) for x in re.findall(r"PING_MBULK: ([\d.]+) requests per second", out)]
    if not rates:
        return None
    return 1e6 / rates[-1], float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=10_000, help="PINGs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    options = parser.parse_args()
    n = options.pings

    with LocalCluster(1) as cluster:
        spec = cluster.nodes[0]
        clients: dict[str, Callable[[], tuple[float, float] | None]] = {
            "redis-py asyncio (hiredis)": lambda: bench_redis_py(spec, n),
            "cachering Pool, asyncio": lambda: bench_cachering_pool(spec, "asyncio", n),
            "cachering Pool, trio": lambda: bench_cachering_pool(spec, "trio", n),
            "cachering Connection, asyncio": lambda: bench_cachering_conn(spec, "asyncio", n),
            "cachering Connection, trio": lambda: bench_cachering_conn(spec, "trio", n),
            "coredis": lambda: bench_coredis(spec, n),
            "redis-benchmark -c 1 (floor)": lambda: bench_redis_benchmark(spec, n),
        }
        best: dict[str, tuple[float, float] | None] = {}
        for _ in range(options.rounds):
            for name, run in clients.items():
                try:
                    result = run()
                except Exception as exc:  # a missing optional client must not stop the report
                    print(f"{name}: failed: {exc!r}")
                    result = None
                previous = best.get(name)
                if result is None:
                    best.setdefault(name, None)
                elif previous is None:
                    best[name] = result
                else:
                    best[name] = (min(previous[0], result[0]), min(previous[1], result[1]))

    base = best.get("redis-py asyncio (hiredis)")
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover
        HIREDIS_AVAILABLE = False
    if not HIREDIS_AVAILABLE:
        print("warning: redis-py is not using hiredis; its row is not the intended baseline")
    print(f"\nsequential PING x {n} and {PIPELINE:,} pipelined SETs, best of {options.rounds}")
    print(f"{'client':32} {'PING us/op':>11} {'ratio':>6} {'SET us/cmd':>11} {'ratio':>6}")
    for name, result in best.items():
        if result is None:
            print(f"{name:32} {'n/a':>11}")
            continue
        ping, pipe = result
        ping_ratio = ping / base[0] if base else float("nan")
        pipe_ratio = pipe / base[1] if base else float("nan")
        pipe_text = "-" if pipe != pipe else f"{pipe:.3f}"
        ratio_text = "-" if pipe != pipe else f"{pipe_ratio:.2f}"
        print(f"{name:32} {ping:11.1f} {ping_ratio:6.2f} {pipe_text:>11} {ratio_text:>6}")


if __name__ == "__main__":
    main()
