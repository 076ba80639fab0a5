"""Exception types raised by cachering.

Every error the package raises on purpose derives from :class:`CacheringError`, so a
caller can catch the whole family at once; the more specific classes also derive from
the builtin a Python user would expect (``LookupError``, ``ValueError``, ...).
"""

from __future__ import annotations

import sys
from typing import NoReturn

if sys.version_info >= (3, 11):
    _Group = BaseExceptionGroup  # noqa: F821 - a builtin from 3.11 on
else:  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup as _Group

__all__ = [
    "CacheringError",
    "ConfigError",
    "ConsistencyError",
    "EmptyRingError",
    "NodeUnavailable",
    "NotLeader",
    "ProtocolError",
    "ResponseError",
    "ServerNotFound",
    "ServerStartError",
    "raise_sole_cause",
    "sole_cause",
]


def sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups; ``exc`` itself otherwise."""
    while isinstance(exc, _Group) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def raise_sole_cause(exc: BaseException) -> NoReturn:
    """Raise ``exc``, or the single exception it wraps when it is a group of one, so that
    ``except NodeUnavailable`` catches what a task group wrapped."""
    cause = sole_cause(exc)
    if cause is exc:
        raise exc
    raise cause from cause.__cause__


class CacheringError(Exception):
    """Base class of every error cachering raises on purpose."""


class EmptyRingError(CacheringError, LookupError):
    """A lookup was made on a ring that has no nodes."""


class ConfigError(CacheringError, ValueError):
    """A configuration value or file is invalid; the message names the field."""


class NodeUnavailable(CacheringError, ConnectionError):
    """A node could not be reached, or the connection failed or timed out mid-call.

    ``node`` names the node (its id, or ``host:port``).
    """

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} unavailable: {reason}")
        self.node = node
        self.reason = reason


class ProtocolError(NodeUnavailable):
    """A node sent bytes that are not a valid RESP reply; the connection is discarded."""


class ResponseError(CacheringError):
    """The server answered a command with an error reply (the message is the server's)."""


class ConsistencyError(CacheringError):
    """A write (or a read) could not collect the acknowledgements (answers) from home
    copies that its consistency level needs.

    ``failed`` maps each node that did not acknowledge (answer) to the reason.
    """

    def __init__(self, message: str, failed: dict[str, str], acknowledged: int, required: int):
        super().__init__(message)
        self.failed = failed
        self.acknowledged = acknowledged
        self.required = required


class ServerNotFound(CacheringError, FileNotFoundError):
    """No ``redis-server`` (or ``valkey-server``) binary could be found to start."""


class ServerStartError(CacheringError, RuntimeError):
    """A server process could not be started or did not answer in time.

    The message includes the tail of the server's log.
    """


class NotLeader(CacheringError):
    """A topology change was asked of a manager that is not the leader (``leader``: known one)."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(
            f"only the leader changes the topology; the leader is {leader or 'not known yet'}"
        )
        self.leader = leader
