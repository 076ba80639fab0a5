"""Blocking helpers for a local server: its config quoting, RESP commands, log tail."""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["LineReader", "conf_quote", "log_tail", "resp_command"]


def conf_quote(value: str) -> str:
    """``value`` as one double-quoted redis.conf token."""
    # redis.conf lines are split like a shell: double quotes with backslash escapes.
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable() and ch.isascii():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def resp_command(*args: str) -> bytes:
    """``args`` encoded as one RESP command (an array of bulk strings)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class LineReader:
    """Reads CRLF lines and exact byte counts from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        while len(self._buf) < n:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a server log, or a note when there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
