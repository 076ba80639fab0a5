"""``cachering status``: what every node of a running cluster holds and how it answers.

It talks to the nodes directly through the transport (one small pool per node), reads
the election and topology state that the managers keep on each node (read-only: plain
``HMGET``, no script), and never joins the cluster as a manager.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from ..config import ClusterConfig
from ..control.scripts import control_keys
from ..control.seals import UNSIGNED_WARNING
from ..control.topology import Topology
from ..errors import CacheringError
from ..node import NodeSpec
from ..resp import Pool
from ..ring import Ring
from .args import add_backend, float_in
from .output import Live, Style, UsageError, fmt_bytes, fmt_count, fmt_percent, print_json, table

__all__ = ["collect", "configure", "load_config", "render", "run"]


def load_config(urls: Sequence[str], path: str | None, **options: Any) -> ClusterConfig:
    """A config from ``--config FILE`` or from node URLs (exactly one of the two)."""
    if path is not None and urls:
        raise UsageError("give node URLs or --config FILE, not both")
    if path is not None:
        config = ClusterConfig.from_file(path)
        overrides = {k: v for k, v in options.items() if v is not None}
        return config.evolve(**overrides) if overrides else config
    if not urls:
        raise UsageError("give at least one node URL (redis://host:port) or --config FILE")
    try:
        return ClusterConfig.from_urls(urls, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:  # a bad URL or option on the command line: usage, exit 2
        raise UsageError(str(exc)) from None


_seconds = float_in(0, above=True, unit="seconds")


def configure(commands: Any) -> None:
    """Add the ``status`` command to the parser."""
    p = commands.add_parser(
        "status",
        help="show each node, the leader, the epoch and the topology",
        description=(
            "Connect to every node of a running cluster and show its address, state in the "
            "stored topology, latency, memory, key count and share of the ring, then the "
            "leader, epoch and topology version. Exit status 1 if any node is unreachable."
        ),
    )
    p.add_argument("urls", nargs="*", metavar="URL", help="node URL, e.g. redis://127.0.0.1:6379")
    p.add_argument("--config", metavar="FILE", help="a TOML cluster config instead of URLs")
    p.add_argument(
        "--namespace", help="the cluster's key namespace (default: from the config, 'cachering')"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="per node call (default: the config's, 1)",
    )
    p.add_argument(
        "--listen",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "also listen to the control channel for SECONDS and count valid and rejected "
            "messages (verified with the secret from --config); always on with --watch"
        ),
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (with --watch: one object per line, per refresh)",
    )
    p.add_argument(
        "--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C"
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (default 2)",
    )
    add_backend(p)
    p.set_defaults(run=run)


def _info_fields(raw: object) -> dict[str, str]:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            out[name.strip()] = value.strip()
    return out


def _int_or_none(value: object) -> int | None:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii", "replace")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


async def _probe(spec: NodeSpec, namespace: str, limit: float) -> dict[str, Any]:
    keys = control_keys(namespace)
    row: dict[str, Any] = {
        "id": spec.id,
        "address": spec.address,
        "reachable": False,
        "error": None,
        "latency_ms": None,
        "used_memory": None,
        "keys": None,
        "redis_version": None,
        "epoch": None,
        "voted_for": None,
        "ready": None,
        "topology": None,
        "topology_error": None,
    }
    pool = Pool(spec, max_size=1, connect_timeout=limit, timeout=limit)
    try:
        await pool.execute("PING")  # connect (and AUTH) before timing a round trip
        start = time.perf_counter()
        await pool.execute("PING")
        row["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
        info_mem, info_srv, dbsize, election, topo = await pool.pipeline(
            [
                ("INFO", "memory"),
                ("INFO", "server"),
                ("DBSIZE",),
                ("HMGET", keys.election, "epoch", "voted_for", "ready"),
                ("HMGET", keys.topology, "epoch", "version", "payload"),
            ]
        )
    except CacheringError as exc:
        row["error"] = str(exc)
        return row
    finally:
        with anyio.CancelScope(shield=True):
            await pool.aclose()
    row["reachable"] = True
    row["used_memory"] = _int_or_none(_info_fields(info_mem).get("used_memory"))
    row["redis_version"] = _info_fields(info_srv).get("redis_version")
    row["keys"] = _int_or_none(dbsize)
    row["epoch"] = _int_or_none(election[0])
    voted = election[1]
    row["voted_for"] = voted.decode("utf-8", "replace") if voted else None
    row["ready"] = election[2] == b"1"
    payload = topo[2]
    if payload:
        try:
            row["topology"] = Topology.from_bytes(payload)
        except (TypeError, ValueError) as exc:
            row["topology_error"] = str(exc)
    return row


class ControlTap:
    """Listens to the control channel of every node and checks each message that passes.

    With the cluster secret (from ``--config``) every message is verified exactly as a
    manager would (one codec per node, since each message is published to every node):
    accepted ones are counted by kind, rejected ones by reason (``forged``,
    ``unsigned``, ``replayed``, ...). Without the secret only arrivals are counted.
    """

    def __init__(self, config: ClusterConfig) -> None:
        from ..control.plane import keyring_of
        from ..messages import MessageCodec

        self.config = config
        self.keyring = keyring_of(config)
        self.codecs = {
            n.id: MessageCodec(self.keyring, config.namespace, config.max_message_size)
            for n in config.nodes
        }
        self.received = 0
        self.kinds: dict[str, int] = {}

    async def run(self) -> None:
        """Listen on every node until cancelled."""
        async with anyio.create_task_group() as tg:
            for spec in self.config.nodes:
                tg.start_soon(self._listen, spec)

    async def _listen(self, spec: NodeSpec) -> None:
        from ..messages import MessageRejected
        from ..resp import PubSub

        channel = control_keys(self.config.namespace).channel
        codec = self.codecs[spec.id]
        async with PubSub(spec, connect_timeout=self.config.connect_timeout) as sub:
            # On failure the subscription stays registered and reading reconnects.
            with contextlib.suppress(CacheringError):
                await sub.subscribe(channel)
            async for message in sub:
                if message.kind == "gap":
                    continue
                self.received += 1
                try:
                    msg = codec.decode(message.data)
                except MessageRejected:
                    continue
                self.kinds[msg.kind] = self.kinds.get(msg.kind, 0) + 1

    def report(self, seconds: float) -> dict[str, Any]:
        """What arrived so far: received, accepted by kind, dropped by reason."""
        dropped: dict[str, int] = {}
        for codec in self.codecs.values():
            for reason, count in codec.drops.snapshot().items():
                dropped[reason] = dropped.get(reason, 0) + count
        return {
            "listened_s": round(seconds, 3),
            "verified": self.keyring is not None,
            "received": self.received,
            "accepted": sum(c.accepted for c in self.codecs.values()),
            "by_kind": dict(sorted(self.kinds.items())),
            "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        }


async def collect(config: ClusterConfig) -> dict[str, Any]:
    """Probe every configured node in parallel; a JSON-ready report of the cluster.

    A node's ``state`` comes from the newest topology any node holds (``unknown`` when
    none is stored and the node does not answer); ``reachable`` says whether it answered.

    Keys: ``ok`` (every node answered), ``namespace``, ``leader``, ``epoch`` (highest
    election epoch any node holds), ``topology`` (stamp of the newest stored topology or
    None), ``nodes`` (one dict per node: id, address, reachable, state, latency_ms,
    used_memory, keys, ownership, ...).
    """
    rows: dict[str, dict[str, Any]] = {}

    async def probe(spec: NodeSpec) -> None:
        rows[spec.id] = await _probe(spec, config.namespace, config.timeout)

    async with anyio.create_task_group() as tg:
        for spec in config.nodes:
            tg.start_soon(probe, spec)
    newest: Topology | None = None
    for row in rows.values():
        topo = row["topology"]
        if topo is not None and topo.newer_than(newest):
            newest = topo
    if newest is not None:
        weights = {n.id: n.weight for n in newest.routable}
    else:
        weights = {n.id: float(n.weight) for n in config.nodes}
    shares: dict[str, float] = {}
    if weights:
        ring = Ring(weights, vnodes=config.vnodes, hash=config.hash, seed=config.seed)
        shares = ring.ownership()
    nodes = []
    for spec in config.nodes:
        row = rows[spec.id]
        state: str
        if newest is not None and spec.id in newest:
            state = newest.node(spec.id).state
        elif newest is not None:
            state = "not in topology"
        elif row["reachable"]:
            state = "up"  # no manager has written a topology yet: every node is routable
        else:
            state = "unknown"
        held = row.pop("topology")
        row["topology_version"] = None if held is None else list(held.stamp)
        row["state"] = state
        row["ownership"] = round(shares.get(spec.id, 0.0), 6)
        row["weight"] = spec.weight
        nodes.append(row)
    epochs = [r["epoch"] for r in nodes if r["epoch"] is not None]
    return {
        "ok": all(r["reachable"] for r in nodes),
        "namespace": config.namespace,
        "leader": newest.leader if newest is not None else None,
        "epoch": max(epochs) if epochs else None,
        "topology": None
        if newest is None
        else {"epoch": newest.epoch, "version": newest.version, "leader": newest.leader},
        "nodes": nodes,
        "control_messages": None,
        "secret_configured": bool(config.secret),
        "warnings": [] if config.secret else [UNSIGNED_WARNING],
    }


def render(report: dict[str, Any], style: Style) -> list[str]:
    """The report as text lines (coloured when ``style`` says so)."""
    rows = []
    for n in report["nodes"]:
        latency = "-" if n["latency_ms"] is None else f"{n['latency_ms']:.2f}ms"
        rows.append(
            [
                n["id"],
                n["address"],
                style.state(n["state"])
                + ("" if n["reachable"] else ", " + style.state("unreachable")),
                latency,
                fmt_bytes(n["used_memory"]),
                fmt_count(n["keys"]),
                fmt_percent(n["ownership"]),
            ]
        )
    lines = table(
        ["NODE", "ADDRESS", "STATE", "LATENCY", "MEMORY", "KEYS", "OWNS"], rows, right=(3, 4, 5, 6)
    )
    topo = report["topology"]
    stamp = "none stored yet" if topo is None else f"epoch {topo['epoch']} v{topo['version']}"
    leader = report["leader"] or "none"
    epoch = "-" if report["epoch"] is None else str(report["epoch"])
    lines.append("")
    lines.append(f"leader {leader}   epoch {epoch}   topology {stamp}")
    tap = report.get("control_messages")
    if tap:
        kinds = ", ".join(f"{k} {v}" for k, v in tap["by_kind"].items()) or "none"
        line = f"control messages in {tap['listened_s']:g}s: {tap['received']} received"
        if tap["verified"]:
            line += f", {tap['accepted']} valid ({kinds})"
            if tap["dropped"]:
                bad = ", ".join(f"{k} {v}" for k, v in tap["dropped"].items())
                line += ", " + style.paint(f"rejected: {bad}", "red")
            else:
                line += ", none rejected"
        else:
            line += " (not verified: give --config with the cluster secret)"
        lines.append(line)
    for warning in report.get("warnings", ()):
        lines.append(style.paint(f"warning: {warning}", "yellow"))
    for n in report["nodes"]:
        if n["error"]:
            lines.append(style.paint(f"{n['id']}: {n['error']}", "red"))
        if n["topology_error"]:
            lines.append(
                style.paint(
                    f"{n['id']}: stored topology unreadable: {n['topology_error']}", "yellow"
                )
            )
    return lines


def run(args: argparse.Namespace) -> int:
    """Probe once (or every ``--interval`` seconds with ``--watch``); exit code 1 if a node
    is unreachable."""
    config = load_config(
        args.urls,
        args.config,
        namespace=args.namespace,
        timeout=args.timeout,
        connect_timeout=args.timeout,
    )
    style = Style()
    if not args.watch:
        report = anyio.run(_once, config, args.listen, backend=args.backend)
        if args.json:
            print_json(report)
        else:
            for line in render(report, style):
                style.write(line)
        return 0 if report["ok"] else 1
    return _watch(config, args.interval, args.json, style, args.backend)


async def _once(config: ClusterConfig, listen: float) -> dict[str, Any]:
    if not listen:
        return await collect(config)
    tap = ControlTap(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tap.run)
        await anyio.sleep(listen)
        report = await collect(config)
        tg.cancel_scope.cancel()
    report["control_messages"] = tap.report(listen)
    return report


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` on SIGINT or SIGTERM: the watch ends cleanly, whatever it was
    awaiting (a cancelled host task can otherwise land in a shielded cleanup)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _watch(
    config: ClusterConfig, every: float, as_json: bool, style: Style, backend: str = "asyncio"
) -> int:
    import json

    live = Live(style)
    ok = True

    async def loop() -> None:
        nonlocal ok
        tap = ControlTap(config)
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            if sys.platform != "win32":  # there Ctrl-C arrives as KeyboardInterrupt
                tg.start_soon(_stop_on_signal, tg.cancel_scope)
            tg.start_soon(tap.run)
            while True:
                report = await collect(config)
                report["control_messages"] = tap.report(anyio.current_time() - started)
                ok = report["ok"]
                if as_json:
                    style.stream.write(json.dumps(report, sort_keys=True, default=str) + "\n")
                    style.stream.flush()
                elif style.live:
                    stamp = time.strftime("%H:%M:%S")
                    head = f"cachering status  {stamp}  (every {every:g}s, Ctrl-C to quit)"
                    live.update([style.paint(head, "bold"), "", *render(report, style)])
                else:
                    style.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}")
                    for line in render(report, style):
                        style.write(line)
                await anyio.sleep(every)

    try:
        anyio.run(loop, backend=backend)
    except KeyboardInterrupt:
        pass
    finally:
        live.close()
    return 0 if ok else 1
