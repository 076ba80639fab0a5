"""The :class:`~cachering.metrics.Status` snapshot of one manager's control plane."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import attrs

from ..metrics import NodeStatus, Status, TopologyStamp
from .seals import UNSIGNED_WARNING

if TYPE_CHECKING:
    from .plane import ControlPlane

__all__ = ["plane_status"]


def plane_status(plane: ControlPlane) -> Status:
    """What :meth:`ControlPlane.status() <cachering.control.plane.ControlPlane.status>` returns.

    Reads the loop's clock: call it on the event loop.
    """
    now = anyio.current_time()
    nodes = {
        tnode.id: NodeStatus(
            state=tnode.state,
            weight=tnode.weight,
            **plane.health.health(tnode.id).to_dict(now),
        )
        for tnode in plane.topology.nodes
    }
    codec = plane.codec
    topology = plane.topology
    return Status(
        manager=plane.id,
        leader=plane.leader,
        control_plane=True,
        topology=TopologyStamp(topology.epoch, topology.version, topology.leader),
        nodes=nodes,
        is_leader=plane.is_leader,
        epoch=plane.epoch,
        secret_configured=codec.signed,
        messages=attrs.evolve(codec.drops, dropped=codec.drops.snapshot()),
        signing={k: v for k, v in codec.status().items() if k not in ("accepted", "dropped")},
        election=plane.election.status(),
        warnings=() if codec.signed else (UNSIGNED_WARNING,),
        errors=(plane.election.refusal,) if plane.election.refusal else (),
        events_published=plane.bus.published,
    )
