"""``cachering demo``: a local cluster, several managers, a live failover, and a verdict.

Timeline for a run of D seconds: servers start and every key is written once; the
workload runs; at 0.3 D one node is killed with SIGKILL; the demo measures how long the
managers take to route around it (and, with the failover layer, until the leader marks
it down); at 0.55 D (or once that happened) the node is restarted empty; the demo
measures how long until every manager serves from it again; at D the workload stops
(later, up to a grace period, if the node has not rejoined), replicas are flushed and
every key is read back. The exit status is 1 if any invariant broke.

The engine lives in :mod:`cachering.cli.demo_run` and is imported only when the demo
runs, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_backend, float_in, int_in
from .local_up import SERVER_HELP
from .output import Style, UsageError, fmt_percent, print_json

__all__ = ["configure", "run"]


def configure(commands: Any) -> None:
    """Add the ``demo`` command to the parser."""
    p = commands.add_parser(
        "demo",
        help="run a local cluster under load, kill a node, watch it fail over and rejoin",
        description=(
            "Start a local cluster of redis-server processes, run a mixed read/write "
            "workload (writes at quorum) from several managers, kill one node part way "
            "through, restart it, and report failed reads, lost acknowledged writes, stale "
            "reads, failover and rejoin times. Exit status 1 if any invariant broke."
        ),
    )
    p.add_argument("--nodes", type=int_in(2, 16), default=3, help="servers (default 3)")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p.add_argument("--replicas", type=int_in(1, 16), default=2, help="copies per key (default 2)")
    p.add_argument(
        "--heartbeat", type=float_in(0.05, 10), default=0.2, help="seconds (default 0.2)"
    )
    p.add_argument(
        "--duration", type=float_in(3, 3600), default=20.0, help="seconds of workload (default 20)"
    )
    p.add_argument("--managers", type=int_in(1, 16), default=3, help="managers (default 3)")
    p.add_argument("--keys", type=int_in(10, 1_000_000), default=2000, help="keys (default 2000)")
    p.add_argument(
        "--rate", type=float_in(0, 1e7), default=0, help="cap on ops/s in total (default: none)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed for the victim and the workload")
    add_backend(p)
    p.add_argument("--json", action="store_true", help="print only a JSON summary at the end")
    p.set_defaults(run=run)


def _print_summary(summary: dict[str, Any], style: Style) -> None:
    w = style.write
    f = summary["failover"]
    w("")
    w(style.paint("summary", "bold"))
    w(
        f"  operations        {summary['ops']:,} (reads {summary['reads']:,}, writes "
        f"{summary['writes']:,}) in {summary['duration_s']:.1f}s"
        f" = {summary['ops_per_s']:,.0f} ops/s"
    )
    w(f"  hit rate          {fmt_percent(summary['hit_rate'])}")
    w(f"  failed reads      {summary['failed_reads']}")
    w(f"  failed writes     {summary['failed_writes']} (never acknowledged, so allowed)")
    if summary.get("replicas") == 2 and summary["failed_writes"]:
        w(
            "    with replicas=2 a quorum is both home copies: a quorum write of a key whose"
            " home is down fails until it returns (replicas=3 keeps quorum writes going)"
        )
    w(
        f"  lost ack. writes  {summary['lost_acknowledged_writes']} "
        f"(every one of {summary['keys']:,} keys read back)"
    )
    w(f"  stale reads       {summary['stale_reads']}")
    for phase, counts in summary["bad_reads_by_phase"].items():
        detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
        w(f"    {phase}: {detail}")

    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.3f}s"

    w(
        f"  failover          {f.get('node')} killed at {f.get('killed_at', 0):.2f}s; detected "
        f"after {secs(f.get('detected_s'))}; every manager routed around it after "
        f"{secs(f.get('failover_s'))}"
    )
    if summary["failover_layer"]:
        w(f"                    the leader marked it down after {secs(f.get('marked_down_s'))}")
    w(
        f"  rejoin            restarted at {f.get('restarted_at', 0):.2f}s; served again after "
        f"{secs(f.get('rejoin_s'))}"
    )
    if summary["leader"] is not None or summary["epoch"] is not None:
        w(f"  leader            {summary['leader'] or '-'} (epoch {summary['epoch']})")
    if not summary["invariants_checked"]:
        note = "  NOT CHECKED: with --replicas 1 a killed node's keys are simply gone"
        w(style.paint(note, "yellow", "bold"))
    elif summary["ok"]:
        w(style.paint("  OK: every invariant held", "green", "bold"))
    else:
        w(style.paint("  FAILED: " + "; ".join(summary["violations"]), "red", "bold"))
        for example in summary["examples"]:
            w(f"    e.g. {example}")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the summary (text or JSON); exit code 0 or 1."""
    if args.replicas > args.nodes:
        raise UsageError(f"--replicas ({args.replicas}) cannot exceed --nodes ({args.nodes})")
    import anyio

    from .demo_run import run_demo

    style = Style()
    summary = anyio.run(run_demo, args, style, backend=args.backend)
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary, style)
    return 0 if summary["ok"] else 1
