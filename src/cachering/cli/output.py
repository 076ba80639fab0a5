"""Terminal output for the command line: colour, tables, live redraw, JSON, one-line errors.

Colour and in-place redraw are used only when the stream is a terminal and ``NO_COLOR``
is unset (https://no-color.org); otherwise every function here writes plain lines, so
logs and pipes stay readable. No third-party UI library: the few ANSI sequences needed
are written by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = [
    "Live",
    "Style",
    "UsageError",
    "error",
    "fmt_bytes",
    "fmt_count",
    "fmt_percent",
    "print_json",
    "table",
]


class UsageError(Exception):
    """Bad command-line usage found after parsing (exit code 2)."""


_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


class Style:
    """Whether a stream gets colour and live redraw, and helpers to colour text.

    ``color`` (ANSI colours) and ``live`` (in-place redraw) are both True only on a
    terminal with ``NO_COLOR`` unset and ``TERM`` not ``dumb``; elsewhere output is plain
    lines that read well in logs and pipes.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        no_color = os.environ.get("NO_COLOR", "") != ""
        fancy = self.tty and not no_color and os.environ.get("TERM") != "dumb"
        self.color = fancy
        self.live = fancy

    def paint(self, text: str, *styles: str) -> str:
        """``text`` wrapped in the ANSI codes of ``styles`` (``"red"``, ``"bold"``, ...)."""
        if not self.color or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def state(self, state: str) -> str:
        """A node state coloured by severity (green up, yellow transitional, red down)."""
        colour = {
            "up": "green",
            "ok": "green",
            "recovering": "yellow",
            "joining": "yellow",
            "suspect": "yellow",
            "down": "red",
            "unreachable": "red",
            "killed": "red",
        }.get(state, "")
        return self.paint(state, colour) if colour else state

    def write(self, line: str = "") -> None:
        """Write one line and flush (so pipes see progress as it happens)."""
        self.stream.write(line + "\n")
        self.stream.flush()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _strip(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI.sub("", text)


def _visible_len(text: str) -> int:
    """Length of ``text`` without ANSI escape sequences."""
    return len(_strip(text))


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()
) -> list[str]:
    """Lines of an aligned text table; column indexes in ``right`` are right-aligned."""
    body = [list(map(str, r)) for r in rows]
    widths = [_visible_len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], _visible_len(cell))
    align_right = set(right)

    def fmt(row: Sequence[str]) -> str:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _visible_len(cell))
            cells.append(pad + cell if i in align_right else cell + pad)
        return "  ".join(cells).rstrip()

    return [fmt(list(headers)), *(fmt(r) for r in body)]


class Live:
    """A block of lines redrawn in place on a terminal.

    On a terminal each :meth:`update` moves the cursor back over the previous block and
    rewrites it; elsewhere it does nothing (callers print plain lines instead). Call
    :meth:`close` to leave the last block on screen and show the cursor again.
    """

    def __init__(self, style: Style) -> None:
        self.style = style
        self._height = 0

    def update(self, lines: Sequence[str]) -> None:
        """Replace the block on screen with ``lines``."""
        if not self.style.live:
            return
        out = []
        if self._height:
            out.append(f"\x1b[{self._height}F")  # to the start of the block's first line
        else:
            out.append("\x1b[?25l")  # hide the cursor while redrawing
        width = shutil.get_terminal_size().columns
        for line in lines:
            if _visible_len(line) >= width:  # a wrapped line would break the redraw
                line = _strip(line)[: max(width - 1, 1)]
            out.append(line + "\x1b[K\n")  # clear what the old, longer line left over
        extra = self._height - len(lines)
        if extra > 0:
            out.append("\x1b[K\n" * extra + f"\x1b[{extra}F")
        self.style.stream.write("".join(out))
        self.style.stream.flush()
        self._height = len(lines)

    def close(self) -> None:
        """Stop redrawing; the last block stays on screen."""
        if self.style.live and self._height:
            self.style.stream.write("\x1b[?25h")
            self.style.stream.flush()
        self._height = 0


def _json_default(value: Any) -> Any:
    """Snapshots (``metrics()``, ``status()``) as their ``as_dict()``; anything else as text."""
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else str(value)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Write ``data`` as indented, key-sorted JSON followed by a newline.

    Objects with an ``as_dict()`` method (:class:`~cachering.metrics.Metrics`,
    :class:`~cachering.metrics.Status`) are written as that dict.
    """
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    out.flush()


def error(message: str) -> None:
    """Print ``cachering: error: message`` as one line on stderr."""
    text = " ".join(str(message).split()) or "unknown error"
    sys.stderr.write(f"cachering: error: {text}\n")
    sys.stderr.flush()


def fmt_count(n: float | None) -> str:
    """``12,345`` (or ``-`` for None)."""
    return "-" if n is None else f"{n:,.0f}"


def fmt_percent(fraction: float | None, digits: int = 1) -> str:
    """``33.3%`` from a fraction (or ``-`` for None)."""
    return "-" if fraction is None else f"{fraction * 100:.{digits}f}%"


def fmt_bytes(n: int | None) -> str:
    """A byte count with a binary unit: ``1.2M`` (or ``-`` for None)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"  # pragma: no cover - unreachable
