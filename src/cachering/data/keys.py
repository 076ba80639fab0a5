"""Every Redis key and channel name of the data path and of repair.

Everything cachering stores lives under the namespace ``ns`` (``config.namespace``)::

    {ns}:k:{key}              a user's key: the stored value (see cachering.data.values)
    {ns}:hint:{node}          set of raw keys that ``node`` missed (on the node that took them)
    {ns}:hintoverflow:{node}  "1" when such a set reached ``hint_limit`` and a key was left out
    {ns}:hintclaim:{node}     hints being replayed right now (moved out of the hint set)
    {ns}:inval                pub/sub channel of the near caches' invalidation messages
    {ns}:fence                the run_id of the server whose data the cluster vouches for

The control plane's keys (``{ns}:ctl:...``) are named by
:func:`cachering.control.scripts.control_keys`.
"""

from __future__ import annotations

__all__ = [
    "data_pattern",
    "data_prefix",
    "fence_key",
    "hint_claim_key",
    "hint_keys",
    "invalidation_channel",
]


def data_prefix(namespace: str) -> bytes:
    """The prefix of every data key: ``{ns}:k:``."""
    return f"{namespace}:k:".encode()


def data_pattern(namespace: str) -> bytes:
    """``SCAN MATCH`` pattern of every data key: ``{ns}:k:*``."""
    return data_prefix(namespace) + b"*"


def hint_keys(namespace: str, node: str) -> tuple[bytes, bytes]:
    """The hint set key and the overflow flag key for the node ``node``."""
    return f"{namespace}:hint:{node}".encode(), f"{namespace}:hintoverflow:{node}".encode()


def hint_claim_key(namespace: str, node: str) -> bytes:
    """The claim set of ``node``'s hints being replayed (``{ns}:hintclaim:{node}``)."""
    return f"{namespace}:hintclaim:{node}".encode()


def invalidation_channel(namespace: str) -> bytes:
    """The pub/sub channel of invalidation messages (``{ns}:inval``)."""
    return f"{namespace}:inval".encode()


def fence_key(namespace: str) -> bytes:
    """The key holding the run_id whose data the cluster vouches for (``{ns}:fence``, see
    :mod:`cachering.repair.fence`)."""
    return f"{namespace}:fence".encode()
