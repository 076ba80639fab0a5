"""argparse options shared by the commands: numbers checked against a range, --backend."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["BACKENDS", "add_backend", "float_in", "int_in"]

BACKENDS = ("asyncio", "trio")
"""The async backends the commands can run on."""


def add_backend(parser: argparse.ArgumentParser) -> None:
    """The ``--backend`` option (asyncio or trio) of every command that runs async code."""
    parser.add_argument(
        "--backend", choices=BACKENDS, default="asyncio", help="async backend (default asyncio)"
    )


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting whole numbers from ``low`` to ``high`` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def float_in(
    low: float, high: float = math.inf, *, above: bool = False, unit: str = "a number"
) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers in ``low..high``.

    With ``above=True`` the value must be strictly greater than ``low``.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        too_low = value <= low if above else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"> {low:g}" if above else f"in {low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse
