"""The ``cachering`` command line: ``demo``, ``status``, ``local up``, ``bench`` and ``recover``.

Exit codes: 0 success, 1 failure (an unreachable node, a broken invariant, an error),
2 usage error. Errors are one line on stderr, ``cachering: error: ...``, never a
traceback. ``--json`` output goes to stdout alone, so programs can parse it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import CacheringError
from . import bench, demo, local_up, recover, status
from .output import UsageError, error

__all__ = ["UsageError", "build_parser", "main"]

_PROG = "cachering"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        error(f"{message}{hint}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command and its options)."""
    from .. import __version__

    parser = _Parser(
        prog=_PROG,
        description="A sharded, replicated, self-healing cache over many Redis or Valkey servers.",
        epilog="Run 'cachering COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log to stderr at this level (default: WARNING; ERROR for demo, which shows events)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (demo, status, local_up, bench, recover):
        module.configure(commands)
    return parser


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (list, tuple)) and inner:
        out: list[BaseException] = []
        for e in inner:
            out.extend(_leaves(e))
        return out
    return [exc]


_EXPECTED = (CacheringError, ValueError, OSError, UsageError, TimeoutError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    level = args.log_level or ("ERROR" if args.command == "demo" else "WARNING")
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        error(
            "a command is required: demo, status, local, bench or recover (see 'cachering --help')"
        )
        return 2
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else 1
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        for leaf in leaves:
            if isinstance(leaf, UsageError):
                error(str(leaf))
                return 2
        for leaf in leaves:
            if isinstance(leaf, _EXPECTED):
                error(_describe(leaf))
                return 1
        raise


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return text or type(exc).__name__
