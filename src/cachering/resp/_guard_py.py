"""The reply guard in pure Python: the reference twin of ``ReplyGuard`` in ``_resp_c.pyx``.

It reads the RESP headers of everything a node sends *before* hiredis sees the bytes,
and refuses a reply that announces more than the limits allow: a bulk string longer
than ``max_bulk``, an aggregate of more than ``max_elements`` elements, or a reply whose
bytes so far pass ``max_bytes``. hiredis preallocates an announced array and frees it
slot by slot, so a two-billion-element header alone would stall the event loop for
seconds; refusing it here keeps every parse step small. Bulk payloads are skipped by
arithmetic, so the cost is per element, not per byte.
"""

from __future__ import annotations

__all__ = ["ReplyGuard", "ReplyTooLarge"]

_SIMPLE = frozenset(b"+-:,#_(")  # one line each
_BLOB = frozenset(b"$=!")  # a length, then that many bytes and CRLF
_AGGREGATE = frozenset(b"*~>|")  # a count of elements (maps ``%`` count twice)
_MAX_DEPTH = 64


class ReplyTooLarge(ValueError):
    """A reply announced or sent more than the guard's limits allow."""


class ReplyGuard:
    """Checks a stream of RESP replies, chunk by chunk (see the module docstring).

    ``feed(data)`` raises :class:`ReplyTooLarge` (or ``ValueError`` for a header that is
    not RESP) before the bytes should be given to the parser.
    """

    __slots__ = ("_line", "_reply", "_skip", "_stack", "max_bulk", "max_bytes", "max_elements")

    def __init__(self, max_bulk: int, max_elements: int, max_bytes: int) -> None:
        self.max_bulk = max_bulk
        self.max_elements = max_elements
        self.max_bytes = max_bytes
        self._skip = 0  # payload bytes (and CRLF) of the current bulk string still to come
        self._stack: list[int] = []  # elements still to come in each open aggregate
        self._line = b""  # a header line cut by the end of the last chunk
        self._reply = 0  # bytes of the current top-level reply so far

    def feed(self, data: bytes) -> None:
        """Scan ``data`` (the next bytes from the node)."""
        if self._line:  # a header line was cut by the end of the last chunk
            self._reply -= len(self._line)
            data = self._line + data
            self._line = b""
        end = len(data)
        self._reply += end
        if self._reply > self.max_bytes:
            raise ReplyTooLarge(f"reply over {self.max_bytes} bytes")
        pos = 0
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                pos += take
                self._skip -= take
                if not self._skip:
                    self._done(end - pos)
                continue
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                if end - pos > 64 + self.max_bulk:
                    raise ReplyTooLarge("header line too long")
                self._line = data[pos:]
                return
            self._header(data[pos:nl], end - nl - 2)
            pos = nl + 2

    def _header(self, line: bytes, left: int) -> None:
        if not line:
            raise ValueError("empty RESP header")
        kind = line[0]
        if kind in _SIMPLE:
            if len(line) > self.max_bulk:
                raise ReplyTooLarge(f"line over {self.max_bulk} bytes")
            self._done(left)
            return
        digits = line[2:] if line[1:2] == b"-" else line[1:]
        if not digits or len(digits) > 18 or not digits.isdigit():
            raise ValueError("bad RESP length")
        size = -int(digits) if line[1:2] == b"-" else int(digits)
        if kind in _BLOB:
            if size > self.max_bulk:
                raise ReplyTooLarge(f"bulk string of {size} bytes, limit {self.max_bulk}")
            if size < 0:
                self._done(left)
            else:
                self._skip = size + 2
            return
        if kind == 0x25:  # '%' map: key and value per entry
            size *= 2
        elif kind not in _AGGREGATE:
            raise ValueError(f"unknown RESP type byte {kind}")
        if size > self.max_elements:
            raise ReplyTooLarge(f"aggregate of {size} elements, limit {self.max_elements}")
        if size <= 0:
            self._done(left)
        elif len(self._stack) >= _MAX_DEPTH:
            raise ReplyTooLarge(f"replies nested deeper than {_MAX_DEPTH}")
        else:
            self._stack.append(size)

    def _done(self, left: int) -> None:
        """One element is complete; ``left`` bytes of the chunk follow it."""
        stack = self._stack
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                return
            stack.pop()
        # A top-level reply ended: the next one counts its own bytes.
        self._reply = left
