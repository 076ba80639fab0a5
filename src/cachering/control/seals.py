"""MACs on the control state a leader stores on the nodes (its topology).

With a cluster secret, the leader stores next to each topology payload a *seal*:
``<key id>.<hex HMAC-SHA256>`` over ``b"CRT1." + key id + b"." + namespace + b"." +
payload``, made with the cluster's :class:`~cachering.messages.Keyring` (the same keys
and rotation as the control messages). A manager adopts a stored topology only if its
seal checks out; a missing or wrong seal is refused and counted, so someone who can
write the node's keys but does not hold the secret cannot make managers adopt (and
propagate) a topology of their own. Without a secret nothing is sealed or checked.

The namespace is part of what is signed, so a seal from one cluster's namespace is not
valid in another's that shares the keys.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Literal

import attrs

from ..messages import Keyring
from .scripts import NodeControlState

if TYPE_CHECKING:
    from ..config import ClusterConfig

__all__ = ["UNSIGNED_WARNING", "SealCheck", "check_seal", "keyring_of", "screen", "seal"]

UNSIGNED_WARNING: Final = (
    "no secret: control messages and the stored topology are not authenticated; anyone "
    "who can write to a node's keys or publish on it (the data-plane ACL is enough) can "
    "make every manager adopt a topology of their choosing (mark nodes down, add a "
    "server they control and receive writes and serve reads) and impersonate the leader"
)
"""What ``status`` says when the cluster runs without a secret."""

_PREFIX: Final = b"CRT1."
_SEAL_RE: Final = re.compile(r"([A-Za-z0-9_:\-]{1,64})\.([0-9a-f]{64})\Z")

SealCheck = Literal["ok", "unsigned", "forged", "unknown_key"]
"""The outcome of :func:`check_seal`."""


def _signed(key_id: str, namespace: str, payload: bytes) -> bytes:
    return _PREFIX + key_id.encode("ascii") + b"." + namespace.encode("utf-8") + b"." + payload


def seal(keyring: Keyring | None, namespace: str, payload: bytes) -> str:
    """The seal to store next to ``payload`` ("" without a keyring)."""
    if keyring is None:
        return ""
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    mac = keyring.mac(keyring.active, _signed(keyring.active, namespace, bytes(payload)))
    assert mac is not None  # the active key is always in the ring
    return f"{keyring.active}.{mac.decode('ascii')}"


def check_seal(keyring: Keyring | None, namespace: str, payload: bytes, stored: str) -> SealCheck:
    """Whether ``stored`` is a valid seal of ``payload`` (always "ok" without a keyring)."""
    if keyring is None:
        return "ok"
    if not isinstance(stored, str) or not stored:
        return "unsigned"
    match = _SEAL_RE.match(stored)
    if match is None:
        return "forged"
    key_id, mac = match.group(1), match.group(2).encode("ascii")
    expected = keyring.mac(key_id, _signed(key_id, namespace, bytes(payload)))
    if expected is None:
        return "unknown_key"
    return "ok" if hmac.compare_digest(expected, mac) else "forged"


def screen(
    states: Mapping[str, NodeControlState | None],
    keyring: Keyring | None,
    namespace: str,
    on_refused: Callable[[str, SealCheck, bytes], None],
) -> dict[str, NodeControlState | None]:
    """``states`` with every topology whose seal does not check out taken away.

    A refused topology's stamp goes too (so nothing acts on it), its payload stays in
    ``topology_payload`` (so a leader can replace it), and ``on_refused(node, verdict,
    payload)`` is called. Without a keyring ``states`` come back as they are.
    """
    out: dict[str, NodeControlState | None] = {}
    for node, state in states.items():
        if keyring is not None and state is not None and state.topology_payload:
            verdict = check_seal(keyring, namespace, state.topology_payload, state.topology_seal)
            if verdict != "ok":
                on_refused(node, verdict, state.topology_payload)
                state = attrs.evolve(
                    state,
                    topology=None,
                    topology_epoch=None,
                    topology_version=None,
                    topology_error=f"stored topology refused: {verdict}",
                )
        out[node] = state
    return out


def keyring_of(config: ClusterConfig) -> Keyring | None:
    """The keyring described by ``config.secret`` (first entry signs), or None."""
    if not config.secret:
        return None
    return Keyring(dict(config.secret), active=config.secret[0][0])
