"""What a manager trusts of the control state stored on the nodes (see :mod:`.seals`).

:class:`StateGuard` seals what this manager stores (topologies, the voter set), screens
what it reads (a stored topology whose seal fails is refused, counted, logged once and
remembered so the leader's next write replaces it) and compares the cluster's stored
voter set with the configured one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..messages import Keyring
from ..metrics import ControlCounters
from .scripts import NodeControlState, voters_id
from .seals import SealCheck, check_seal, screen, seal

__all__ = ["StateGuard"]

logger = logging.getLogger("cachering.control.plane")


class StateGuard:
    """Seals and checks the stored control state of one manager (no-op without a keyring).

    ``counters`` holds the control plane's counters; ``topology_unsigned``,
    ``topology_forged`` and ``voter_mismatches`` are counted in it.
    """

    def __init__(
        self,
        keyring: Keyring | None,
        namespace: str,
        voters: Sequence[str],
        counters: ControlCounters,
    ) -> None:
        self.keyring = keyring
        self.namespace = namespace
        self.counters = counters
        self.untrusted: dict[str, bytes] = {}
        """Node -> a stored topology payload that failed its seal (replaced on next write)."""
        ident = voters_id(voters)
        self.identity = (ident, self.sign(b"voters." + ident.encode("utf-8")))
        """The configured voter set and its seal, as stored on the nodes."""

    def sign(self, payload: bytes) -> str:
        """The seal of ``payload`` ("" without a keyring)."""
        return seal(self.keyring, self.namespace, payload)

    def screen(
        self, states: Mapping[str, NodeControlState | None]
    ) -> dict[str, NodeControlState | None]:
        """``states`` with stored topologies that fail their seal taken away."""
        return screen(states, self.keyring, self.namespace, self._refused)

    def _refused(self, node: str, verdict: SealCheck, payload: bytes) -> None:
        if self.untrusted.get(node) == payload:
            return  # counted and logged when first seen
        self.untrusted[node] = payload
        if verdict == "unsigned":
            self.counters.topology_unsigned += 1
        else:
            self.counters.topology_forged += 1
        logger.warning(
            "cachering: node %s holds a topology that fails authentication (%s); "
            "refused, and replaced by the leader's next write",
            node,
            verdict,
        )

    def voter_mismatch(self, states: Mapping[str, NodeControlState | None]) -> str | None:
        """Why this manager must not campaign: a node holds a validly sealed voter set other
        than the configured one (None: no such node)."""
        mine = self.identity[0]
        differ: dict[str, str] = {}
        for node, s in states.items():
            if s is None or not s.voters or s.voters == mine:
                continue
            payload = b"voters." + s.voters.encode("utf-8")
            if check_seal(self.keyring, self.namespace, payload, s.voters_seal) == "ok":
                differ[node] = s.voters
        if not differ:
            return None
        stored = sorted(differ.items())[0][1]
        return (
            f"configured voters {mine} differ from the cluster's voters {stored} "
            f"(stored on {', '.join(sorted(differ))}); not campaigning: fix the node list"
        )
