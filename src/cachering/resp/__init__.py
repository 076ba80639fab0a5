"""The node transport: anyio streams for I/O and hiredis for the RESP protocol.

It runs on asyncio and trio alike and knows nothing about clusters:

- :class:`Connection`: one socket to one node (AUTH, SELECT, TLS, commands, pipelines
  in one write, EVALSHA with automatic SCRIPT LOAD);
- :class:`Pool`: a bounded, FIFO-fair pool per node with health checks and back-off;
- :class:`PubSub`: subscriptions that survive reconnects and signal possible gaps;
- :class:`Script`: a Lua script and its SHA1.

Replies are RESP2 values as hiredis builds them: ``bytes`` (simple strings too:
``b"OK"``, ``b"PONG"``), ``int``, ``list`` and ``None``.
"""

from __future__ import annotations

from .connection import Arg, Connection, ReplyLimits, pack_command, pack_commands
from .pool import Pool, PoolStats
from .pubsub import Message, PubSub
from .script import Script

__all__ = [
    "Arg",
    "Connection",
    "Message",
    "Pool",
    "PoolStats",
    "PubSub",
    "ReplyLimits",
    "Script",
    "pack_command",
    "pack_commands",
]
