"""Real servers on this machine: :class:`LocalCluster` for the demo and the tests, and
:class:`FaultProxy`, a TCP proxy that injects network faults in front of one node.

Nothing else in the package imports this subpackage; it sits beside the base layer.
"""

from __future__ import annotations

from .faults import Direction, FaultProxy
from .servers import LocalCluster, ServerStartError, find_server, server_version

__all__ = [
    "Direction",
    "FaultProxy",
    "LocalCluster",
    "ServerStartError",
    "find_server",
    "server_version",
]
