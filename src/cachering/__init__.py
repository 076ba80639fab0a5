"""cachering: a sharded, replicated, self-healing cache over many Redis or Valkey servers."""

from __future__ import annotations

from ._version import __version__
from .cluster import Cluster
from .config import ClusterConfig
from .control.plane import ControlPlane
from .control.scripts import BadControlReply
from .errors import (
    CacheringError,
    ConfigError,
    ConsistencyError,
    EmptyRingError,
    NodeUnavailable,
    NotLeader,
    ProtocolError,
    ResponseError,
    ServerNotFound,
    ServerStartError,
)
from .events import (
    Event,
    EventBus,
    HintsReplayed,
    LeaderChanged,
    NodeAdded,
    NodeDown,
    NodeHealthy,
    NodeRecovering,
    NodeRemoved,
    NodeRestarted,
    NodeSuspect,
    NodeUp,
    NodeWeightChanged,
    TopologyChanged,
)
from .messages import MessageRejected
from .node import NodeSpec
from .resp import Message, Pool, PubSub, Script
from .ring import Ring, murmur3_32

__all__ = [
    "BadControlReply",
    "CacheringError",
    "Cluster",
    "ClusterConfig",
    "ConfigError",
    "ConsistencyError",
    "ControlPlane",
    "EmptyRingError",
    "Event",
    "EventBus",
    "HintsReplayed",
    "LeaderChanged",
    "Message",
    "MessageRejected",
    "NodeAdded",
    "NodeDown",
    "NodeHealthy",
    "NodeRecovering",
    "NodeRemoved",
    "NodeRestarted",
    "NodeSpec",
    "NodeSuspect",
    "NodeUnavailable",
    "NodeUp",
    "NodeWeightChanged",
    "NotLeader",
    "Pool",
    "ProtocolError",
    "PubSub",
    "ResponseError",
    "Ring",
    "Script",
    "ServerNotFound",
    "ServerStartError",
    "TopologyChanged",
    "__version__",
    "murmur3_32",
]
