"""The control plane's own connections to the nodes, and the specs they are made from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import ClusterConfig
from ..errors import NodeUnavailable
from ..node import NodeSpec
from ..resp.connection import ReplyLimits
from ..resp.pool import Pool
from .leader import PoolProvider
from .topology import Topology, TopologyNode

__all__ = ["NodePools"]


class NodePools:
    """Small pools (so data traffic cannot starve heartbeats), one per node, opened lazily.

    A node is known by its configured spec, a spec registered at run time, or its address
    in a topology (credentials and TLS from ``ClusterConfig.learned_node``).
    """

    def __init__(
        self,
        config: ClusterConfig,
        voters: Sequence[str],
        topology: Callable[[], Topology],
        round_timeout: float,
    ) -> None:
        self.config = config
        self.voters = tuple(voters)
        self._topology = topology
        self.round_timeout = round_timeout
        self.specs: dict[str, NodeSpec] = {n.id: n for n in config.nodes}
        self.opened: dict[str, Pool] = {}
        """Every pool opened so far, by node id."""

    def spec(self, node_id: str) -> NodeSpec:
        """The connection spec of a node; NodeUnavailable if it is not known at all."""
        spec = self.specs.get(node_id)
        if spec is None:
            topology = self._topology()
            if node_id not in topology:
                raise NodeUnavailable(node_id, "not a configured node nor in the topology")
            spec = self.learn(topology.node(node_id))
        return spec

    def learn(self, tnode: TopologyNode) -> NodeSpec:
        """The spec of a topology node (kept from now on); credentials and TLS as
        :meth:`ClusterConfig.learned_node <cachering.config.ClusterConfig.learned_node>`
        says."""
        spec = self.specs.get(tnode.id)
        if spec is None:
            spec = self.config.learned_node(tnode.id, tnode.host, tnode.port, tnode.weight)
            self.specs[tnode.id] = spec
        return spec

    def pool(self, node_id: str) -> Pool:
        """The pool of one node (opened on first use)."""
        pool = self.opened.get(node_id)
        if pool is None:
            c = self.config
            pool = self.opened[node_id] = Pool(
                self.spec(node_id),
                max_size=4,
                connect_timeout=min(c.connect_timeout, max(self.round_timeout, 0.05)),
                timeout=self.round_timeout,
                backoff_base=0.0,
                backoff_max=0.0,
                limits=ReplyLimits.for_values(c.max_value_size),
            )
        return pool

    def register(self, spec: NodeSpec) -> Pool:
        """Make a node known by its spec (added at run time) and open its pool."""
        self.specs[spec.id] = spec
        return self.pool(spec.id)

    def watched(self) -> dict[str, Pool]:
        """The pools of every voter and every node of the current topology."""
        ids = dict.fromkeys([*self.voters, *self._topology().ids])
        return {n: self.pool(n) for n in ids}

    def provider(self) -> PoolProvider:
        """These pools as the leader's duties see them."""
        return PoolProvider(
            pool=self.pool,
            watched=self.watched,
            opened=self.opened,
            register=self.register,
            learn=self.learn,
        )
