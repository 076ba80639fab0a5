"""Lua scripts identified by their SHA1, run with ``EVALSHA``."""

from __future__ import annotations

import hashlib

__all__ = ["Script"]


class Script:
    """A Lua script and its SHA1 digest (what ``EVALSHA`` and ``SCRIPT LOAD`` use).

    Create scripts once (at import or construction time) and pass them to
    :meth:`Connection.run_script` or :meth:`Pool.run_script`, which load the script on
    the server the first time it is missing there (``NOSCRIPT``).

    >>> Script("return 1").sha
    'e0e1f9fabfc9d4800c877a703b823ac0578ff8db'
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TypeError(f"Script source must be a str, got {type(source).__name__}")
        if not source.strip():
            raise ValueError("Script source must not be empty")
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"Script(sha={self.sha!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Script):
            return NotImplemented
        return self.source == other.source

    def __hash__(self) -> int:
        return hash(self.sha)
