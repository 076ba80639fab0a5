"""One manager of the fault lab: a ``cachering.Cluster`` in its own OS process.

Run as ``python lab_manager.py CONFIG.json`` (the lab starts it inside a network
namespace, maybe under libfaketime). It writes its own single-writer keys with rising
sequence numbers, reads every key it is told of, and reports everything as JSON lines on
stdout; it takes JSON-line commands on stdin (see :func:`_command`).

Every timestamp is ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process of
the machine, and the lab runs libfaketime with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` so only
wall time is shifted. Lines (``ev``):

- ``ready``: the Cluster is open; ``pid``, ``wall_offset`` (this process's wall clock
  minus the real one, as far as it can tell from the lab's reference).
- ``inv``: a write invoked (``kind`` set/del, ``key``, ``seq``, ``t0``), written before
  the call. A delete takes the key's next seq like a write.
- ``op``: an operation completed (``kind`` set/del/get, ``key``, ``seq`` written or read,
  -1 for a miss, ``level``, ``t0``, ``t1``, ``ok``, ``err``).
- ``role``: this manager's view changed (``epoch``, ``is_leader``, ``leader``, ``stamp``
  and ``author`` of its topology).
- ``reply``: the answer to a command with the same ``id``.
- ``crash``: the Cluster died with an exception (a violation: nothing a node or a
  message sends may crash a manager).
"""

from __future__ import annotations

import inspect
import json
import random
import sys
import time
import traceback
from typing import Any

import anyio

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.errors import CacheringError
from cachering.node import NodeSpec


def emit(**fields: Any) -> None:
    """One JSON line on stdout (only ever called from the event loop thread)."""
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def seq_of(key: str, raw: bytes | None) -> int:
    """The sequence number in ``raw`` (``b"<key>:<seq>"``), -1 for a miss, -2 for junk."""
    if raw is None:
        return -1
    name, _, seq = raw.decode(errors="replace").rpartition(":")
    if name != key or not seq.isdigit():
        return -2
    return int(seq)


class Manager:
    """The workload, the role monitor and the command loop around one Cluster."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.id: str = spec["id"]
        nodes = [NodeSpec(n, h, p) for n, h, p in spec["nodes"]]
        options = dict(spec["options"])
        if "secret" in options:
            options["secret"] = options["secret"].encode()
        self.config = ClusterConfig(
            nodes=tuple(nodes), namespace=spec["ns"], manager_id=self.id, **options
        )
        self.cluster = Cluster(self.config)
        self.rng = random.Random(spec["seed"])
        # A replacement takes over a dead manager's keys, going on from their last seq.
        self.own: list[str] = list(spec["own"])
        self.read_keys: list[str] = list(spec.get("read_keys", [])) or list(self.own)
        self.seqs = {k: int(spec.get("start_seqs", {}).get(k, 0)) for k in self.own}
        self.load = True
        self.read_level: str | None = spec.get("read_level")
        params = inspect.signature(self.cluster.get).parameters
        if "consistency" not in params:
            self.read_level = None  # the read has no level: the library's default
        self.write_level: str = spec.get("write_level", "quorum")

    async def workload(self) -> None:
        """Write own keys and read any key, until cancelled."""
        ttl = self.spec.get("ttl")
        pause = float(self.spec.get("pause", 0.02))
        for i in range(10**9):
            if not self.load:
                await anyio.sleep(0.05)
                continue
            if i % 2 == 0:
                delete = self.rng.random() < float(self.spec.get("deletes", 0.1))
                await self._write(self.rng.choice(self.own), ttl, delete=delete)
            else:
                await self._read(self.rng.choice(self.read_keys))
            await anyio.sleep(pause)

    async def _write(self, key: str, ttl: float | None, *, delete: bool = False) -> None:
        """Write the key's next seq, or delete it (a delete takes a seq too)."""
        self.seqs[key] += 1
        seq = self.seqs[key]
        kind = "del" if delete else "set"
        t0 = time.monotonic()
        emit(ev="inv", kind=kind, key=key, seq=seq, t0=t0)
        ok, err = False, ""
        try:
            if delete:
                await self.cluster.delete(key, consistency=self.write_level)  # type: ignore[arg-type]
            else:
                await self.cluster.set(
                    key, f"{key}:{seq}".encode(), ttl=ttl, consistency=self.write_level
                )
            ok = True
        except (CacheringError, RuntimeError, OSError) as exc:
            err = type(exc).__name__
        emit(
            ev="op",
            kind=kind,
            key=key,
            seq=seq,
            level=self.write_level,
            t0=t0,
            t1=time.monotonic(),
            ok=ok,
            err=err,
        )

    async def _read(self, key: str) -> None:
        t0 = time.monotonic()
        ok, err, seq = False, "", -1
        try:
            if self.read_level is None:
                raw = await self.cluster.get(key)
            else:
                raw = await self.cluster.get(key, consistency=self.read_level)  # type: ignore[call-arg]
            seq = seq_of(key, raw)
            ok = True
        except (CacheringError, RuntimeError, OSError) as exc:
            err = type(exc).__name__
        emit(
            ev="op",
            kind="get",
            key=key,
            seq=seq,
            level=self.read_level or "default",
            t0=t0,
            t1=time.monotonic(),
            ok=ok,
            err=err,
        )

    async def monitor(self) -> None:
        """Report every change of this manager's leadership, epoch and topology."""
        last: tuple[Any, ...] = ()
        while True:
            c = self.cluster
            topo = c.topology
            now = (c.epoch, c.is_leader, c.leader, list(topo.stamp), topo.leader)
            if now != last:
                last = now
                emit(
                    ev="role",
                    t=time.monotonic(),
                    epoch=now[0],
                    is_leader=now[1],
                    leader=now[2],
                    stamp=now[3],
                    author=now[4],
                )
            await anyio.sleep(0.01)

    def state(self) -> dict[str, Any]:
        """What the lab asks for to decide convergence."""
        c = self.cluster
        control = c.control
        return {
            "stamp": list(c.topology.stamp),
            "leader": c.leader,
            "is_leader": c.is_leader,
            "epoch": c.epoch,
            "states": {n.id: n.state for n in c.topology.nodes},
            "lagging": sorted(control.lagging) if control is not None else [],
            "unreadable": sorted(c.router.unreadable),
            "sweeps": control.counters.anti_entropy_sweeps if control is not None else 0,
        }

    async def command(self, msg: dict[str, Any]) -> bool:
        """Run one command; False means exit."""
        cmd, rid = msg.get("cmd"), msg.get("id")
        reply: dict[str, Any] = {}
        if cmd == "exit":
            return False
        if cmd == "load":
            self.load = bool(msg["on"])
        elif cmd == "keys":
            self.read_keys = list(msg["keys"]) or self.own
        elif cmd == "state":
            reply = self.state()
        elif cmd == "homes":
            reply = {"homes": {k: list(self.cluster.preference_list(k)) for k in msg["keys"]}}
        elif cmd == "flush":
            await self.cluster.wait_replicated()
        elif cmd == "read":
            seqs: dict[str, int | str] = {}
            for key in msg["keys"]:
                try:
                    seqs[key] = seq_of(key, await self.cluster.get(key))
                except (CacheringError, RuntimeError, OSError) as exc:
                    seqs[key] = type(exc).__name__
            reply = {"seqs": seqs}
        emit(ev="reply", id=rid, cmd=cmd, t=time.monotonic(), **reply)
        return True

    async def commands(self) -> None:
        """Read commands from stdin until ``exit`` or end of input."""
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            if not await self.command(json.loads(line)):
                return


async def main(spec: dict[str, Any]) -> None:
    """Open the Cluster, run the workload and monitor, serve commands until exit."""
    manager = Manager(spec)
    try:
        async with manager.cluster, anyio.create_task_group() as tg:
            emit(
                ev="ready",
                pid=__import__("os").getpid(),
                t=time.monotonic(),
                wall_offset=time.time() - (time.monotonic() + spec["mono_to_wall"]),
            )
            tg.start_soon(manager.workload)
            tg.start_soon(manager.monitor)
            await manager.commands()
            tg.cancel_scope.cancel()
    except BaseException as exc:
        emit(
            ev="crash",
            t=time.monotonic(),
            err=repr(exc)[:500],
            tb="".join(traceback.format_exception(exc))[-4000:],
        )
        raise SystemExit(3) from None


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        config = json.load(fh)
    anyio.run(main, config, backend=config.get("backend", "asyncio"))
