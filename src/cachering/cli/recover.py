"""``cachering recover``: re-seed the nodes after a majority of them lost their state.

When a majority of the nodes restarts empty at once, the votes they gave are gone and no
rule can prove which epochs are safe to vote in again, so the managers elect no leader
and wait (see ``docs/operations.md``, "Several nodes lose their data at once"). This
command is the operator's way out. It reads every node (read-only), prints what was
lost and what it would do, and acts only with ``--yes``: every node without election
state is seeded with an epoch floor above every epoch any node holds and above the
servers' clocks in milliseconds (the rule of a fresh cluster, see ``docs/design.md``),
so a leader paused through the outage can never share an epoch with the next one.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from ..config import ClusterConfig
from ..control.election import read_states
from ..control.plane import keyring_of
from ..control.scripts import SEED_FLOOR_LUA, control_keys, parse_seed, seed_args, voters_id
from ..control.seals import seal
from ..errors import CacheringError
from ..resp import Pool
from ..resp.script import Script
from .args import add_backend, float_in
from .output import Style, print_json
from .status import collect, load_config

__all__ = ["configure", "plan", "run"]

_SEED = Script(SEED_FLOOR_LUA)
_seconds = float_in(0, above=True, unit="seconds")


def configure(commands: Any) -> None:
    """Add the ``recover`` command to the parser."""
    p = commands.add_parser(
        "recover",
        help="re-seed the nodes after a majority lost its election state",
        description=(
            "Read every node, say what a majority of nodes restarted empty has lost and "
            "what recovery does, and with --yes seed every node without election state "
            "with an epoch floor above every epoch and clock seen, so that the managers "
            "elect a leader again. Exit status 1 if a node is unreachable or seeding failed."
        ),
    )
    p.add_argument("urls", nargs="*", metavar="URL", help="node URL, e.g. redis://127.0.0.1:6379")
    p.add_argument("--config", metavar="FILE", help="the cluster's TOML config instead of URLs")
    p.add_argument("--namespace", help="the cluster's key namespace (default: from the config)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS")
    p.add_argument("--yes", action="store_true", help="act (without it nothing is changed)")
    p.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")
    add_backend(p)
    p.set_defaults(run=run)


def plan(report: dict[str, Any]) -> dict[str, Any]:
    """What recovery would do, from a :func:`~cachering.cli.status.collect` report."""
    nodes = report["nodes"]
    unreachable = [n["id"] for n in nodes if not n["reachable"]]
    lost = [n["id"] for n in nodes if n["reachable"] and not n["ready"]]
    majority = len(nodes) // 2 + 1
    ready = len(nodes) - len(lost) - len(unreachable)
    if unreachable:
        action = "wait"
        why = f"unreachable: {', '.join(unreachable)}; every node must answer to recover"
    elif not lost:
        action = "none"
        why = "every node holds its election state"
    elif ready >= majority:
        action = "none"
        why = f"{ready} of {len(nodes)} nodes hold their state: the managers re-seed the rest"
    else:
        action = "seed"
        why = f"{len(lost)} of {len(nodes)} nodes lost their election state: no leader can win"
    return {
        "action": action,
        "why": why,
        "lost_state": lost,
        "unreachable": unreachable,
        "keys_left": {n["id"]: n["keys"] for n in nodes if n["reachable"]},
        "topology": report["topology"],
        "highest_epoch": report["epoch"],
    }


def _describe(p: dict[str, Any]) -> list[str]:
    lines = [f"recover: {p['why']}."]
    if p["action"] != "seed":
        return lines
    lost = ", ".join(p["lost_state"])
    keys = ", ".join(f"{n} {k}" for n, k in p["keys_left"].items())
    topo = p["topology"]
    lines += [
        f"What is lost: the votes {lost} gave (their election state), and whatever keys",
        "  they held when they restarted: keys left now per node: " + keys + ".",
        "  A key whose only copies were on these nodes is gone; a key with a copy on a",
        "  node that kept its data is copied back by the leader's repair and sweeps.",
        f"What recovery does: seed {lost} with an epoch floor above the highest epoch held",
        f"  anywhere ({p['highest_epoch']}) and above the servers' clocks in milliseconds,",
        "  so the managers elect a leader in a new epoch; any manager still leading an",
        "  older epoch is refused everywhere. The stored topology "
        + ("(none)" if topo is None else f"(epoch {topo['epoch']} v{topo['version']})")
        + " is kept.",
    ]
    return lines


async def _seed(config: ClusterConfig, targets: list[str], floor: int) -> dict[str, str]:
    keys = control_keys(config.namespace)
    limit = config.timeout
    pools = {n.id: Pool(n, max_size=1, connect_timeout=limit, timeout=limit) for n in config.nodes}
    ident = voters_id([n.id for n in config.nodes])
    vseal = seal(keyring_of(config), config.namespace, b"voters." + ident.encode("utf-8"))
    min_age = int(min(config.timeout, config.heartbeat_interval) * 2000) + 10
    outcome: dict[str, str] = {}
    try:
        for node in targets:
            outcome[node] = "failed"
            with anyio.move_on_after(max(10.0, min_age / 250)):
                while True:
                    state = (await read_states(pools, [node], keys, limit))[node]
                    if state is None:
                        break
                    args = seed_args(floor, state.born, min_age, voters=ident, voters_seal=vseal)
                    reply = parse_seed(
                        await pools[node].run_script(_SEED, [keys.election, keys.topology], args)
                    )
                    if reply.ready:
                        outcome[node] = f"{reply.status.lower()} at epoch {reply.epoch}"
                        break
                    await anyio.sleep(max(reply.wait_ms, 10) / 1000)
    finally:
        with anyio.CancelScope(shield=True):
            for pool in pools.values():
                await pool.aclose()
    return outcome


async def _time_ms(config: ClusterConfig) -> int:
    best = 0
    for spec in config.nodes:
        pool = Pool(spec, max_size=1, connect_timeout=config.timeout, timeout=config.timeout)
        try:
            sec, usec = await pool.execute("TIME")
            best = max(best, int(sec) * 1000 + int(usec) // 1000)
        except (CacheringError, ValueError, TypeError):
            continue
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
    return best


async def _recover(config: ClusterConfig, act: bool) -> dict[str, Any]:
    p = plan(await collect(config))
    p["seeded"] = {}
    if act and p["action"] == "seed":
        epochs = [p["highest_epoch"] or 0]
        if p["topology"] is not None:
            epochs.append(p["topology"]["epoch"])
        floor = max(*epochs, await _time_ms(config))
        p["floor"] = floor
        p["seeded"] = await _seed(config, p["lost_state"], floor)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the plan; with ``--yes`` carry it out. Exit 1 if it could not be done."""
    config = load_config(
        args.urls,
        args.config,
        namespace=args.namespace,
        timeout=args.timeout,
        connect_timeout=args.timeout,
    )
    p = anyio.run(_recover, config, bool(args.yes), backend=args.backend)
    failed = [n for n, how in p["seeded"].items() if how == "failed"]
    if args.json:
        print_json(p)
    else:
        style = Style()
        for line in _describe(p):
            style.write(line)
        if p["action"] == "seed" and not args.yes:
            style.write("Nothing was changed. Run again with --yes to do this.")
        for node, how in p["seeded"].items():
            style.write(f"  {node}: {how}")
        if p["seeded"] and not failed:
            style.write("Done: the managers elect a leader on their next campaign.")
    return 1 if failed or p["action"] == "wait" else 0
