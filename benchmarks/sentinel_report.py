"""Failover beside Redis Sentinel, both measured on this machine in one run.

Usage: ``.venv/bin/python benchmarks/sentinel_report.py [--runs 5]``

Sentinel: a master, one replica and three sentinels (quorum 2), started from the same
``redis-server`` binary LocalCluster uses (``redis-server sentinel.conf --sentinel``) with
``down-after-milliseconds`` 1,000. Measured: from ``kill -9`` of the master to the
``+switch-master`` announcement on a sentinel. Every run starts a fresh set.

cachering: a 3-node LocalCluster with three managers, no traffic (only heartbeats can
notice), with failure detection tuned to the same one second (``heartbeat_interval``
1/3 s, ``failure_threshold`` 3) and at 0.1 s. Measured: from ``kill -9`` of a node to
every manager writing that node's keys elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cachering.local import _free_port, find_server
from failover_report import _idle

_QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def _wait(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the Sentinel set did not come up")


def _sentinel_once(server: str, workdir: Path) -> float:
    """Seconds from kill -9 of the master to +switch-master."""
    master_port, replica_port = _free_port(), _free_port()
    sentinel_ports = [_free_port() for _ in range(3)]
    common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen([server, "--port", str(master_port), *common], cwd=workdir, **_QUIET)
        )
        procs.append(
            subprocess.Popen(
                [
                    server,
                    "--port",
                    str(replica_port),
                    "--replicaof",
                    "127.0.0.1",
                    str(master_port),
                    *common,
                ],
                cwd=workdir,
                **_QUIET,
            )
        )
        replica = redis.Redis(port=replica_port)
        _wait(lambda: replica.info("replication").get("master_link_status") == "up")
        for port in sentinel_ports:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor m 127.0.0.1 {master_port} 2\n"
                "sentinel down-after-milliseconds m 1000\n"
                "sentinel failover-timeout m 10000\n"
                "sentinel parallel-syncs m 1\n"
            )
            procs.append(subprocess.Popen([server, str(conf), "--sentinel"], cwd=workdir, **_QUIET))
        sentinels = [redis.Redis(port=p) for p in sentinel_ports]
        # every sentinel knows the replica and the two other sentinels
        _wait(
            lambda: all(
                len(s.execute_command("SENTINEL", "REPLICAS", "m")) == 1
                and len(s.execute_command("SENTINEL", "SENTINELS", "m")) == 2
                for s in sentinels
            )
        )
        switched = threading.Event()
        pubsub = sentinels[0].pubsub()
        pubsub.subscribe("+switch-master")
        pubsub.get_message(timeout=1.0)  # the subscribe confirmation

        def listen() -> None:
            while not switched.is_set():
                msg = pubsub.get_message(timeout=0.01)
                if msg and msg["type"] == "message":
                    switched.set()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        t0 = time.monotonic()
        procs[0].kill()
        if not switched.wait(60):
            raise TimeoutError("no +switch-master within 60 s")
        took = time.monotonic() - t0
        listener.join()
        pubsub.close()
        for client in [replica, *sentinels]:
            client.close()
        return took
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _cachering(runs: int, heartbeat: float) -> list[float]:
    return await _idle(runs, "bench-vs-sentinel", heartbeat_interval=heartbeat, failure_threshold=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("cachering").setLevel(logging.ERROR)
    server = find_server()
    sentinel: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cachering-sentinel-") as tmp:
        for _ in range(args.runs):
            sentinel.append(_sentinel_once(server, Path(tmp)))
    second = anyio.run(_cachering, args.runs, 1 / 3)
    tenth = anyio.run(_cachering, args.runs, 0.1)
    print(f"\nfailover beside Redis Sentinel, {args.runs} runs each, {server}\n")
    print(f"{'measure (seconds)':<58} {'median':>8} {'min':>8} {'max':>8}")
    rows = [
        ("Sentinel, down-after-milliseconds 1000: kill -> +switch-master", sentinel),
        ("cachering, detection 1 s (heartbeat 1/3 s x 3 misses)", second),
        ("cachering, heartbeat 0.1 s x 3 misses", tenth),
    ]
    for name, values in rows:
        med = statistics.median(values)
        print(f"{name:<58} {med:8.3f} {min(values):8.3f} {max(values):8.3f}")
    ratio = statistics.median(sentinel) / statistics.median(second)
    print(f"\nat the same 1 s detection budget cachering fails over {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
