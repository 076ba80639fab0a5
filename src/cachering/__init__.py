"""cachering: a sharded, replicated, self-healing cache over many Redis or Valkey servers."""

from __future__ import annotations

from .errors import (
    CacheringError,
    ConfigError,
    ConsistencyError,
    EmptyRingError,
    NodeUnavailable,
    ProtocolError,
    ResponseError,
    ServerNotFound,
    ServerStartError,
)
from .cluster import Cluster
from .config import ClusterConfig
from .control_scripts import BadControlReply
from .messages import MessageRejected
from .node import NodeSpec
from .resp import Message, Pool, PubSub, Script
from .ring import Ring, murmur3_32

__version__ = "0.1.0"

__all__ = [
    "BadControlReply",
    "MessageRejected",
    "CacheringError",
    "Cluster",
    "ClusterConfig",
    "ConfigError",
    "ConsistencyError",
    "EmptyRingError",
    "NodeSpec",
    "Message",
    "NodeUnavailable",
    "Pool",
    "ProtocolError",
    "PubSub",
    "ResponseError",
    "Ring",
    "Script",
    "ServerNotFound",
    "ServerStartError",
    "__version__",
    "murmur3_32",
]
