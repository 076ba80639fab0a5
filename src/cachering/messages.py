"""Signed control messages: canonical encoding, HMAC-SHA256, replay and staleness guards.

Wire format (ASCII header, JSON payload)::

    CR1.<key id>.<mac>.<payload>

- ``CR1`` is the format version. A decoder rejects any other prefix as malformed.
- ``<key id>`` names the keyring entry that signed the message (``[A-Za-z0-9_:-]{1,64}``).
- ``<mac>`` is the lowercase hex HMAC-SHA256 (64 characters) over
  ``b"CR1." + key_id + b"." + payload``, so the version and key id are authenticated too.
- ``<payload>`` is the canonical JSON of the message: an object with exactly the keys
  ``body``, ``epoch``, ``kind``, ``ns``, ``sender``, ``sent_at`` and ``seq``, encoded with
  sorted keys, ``ensure_ascii``, separators ``,`` and ``:``, no NaN or infinities. The
  decoder re-encodes what it parsed and rejects anything that is not byte-for-byte
  canonical, so two parsers can never disagree about what was signed.
- An unsigned message (a cluster without a secret) has empty key id and mac fields:
  ``CR1...<payload>``.

The size limit is checked before anything else is looked at. Decoding any bytes either
returns a :class:`ControlMessage` or raises :class:`MessageRejected` whose ``reason`` is
one of :data:`REJECT_REASONS`; each rejected *message* is counted once in the codec's
:class:`DropCounters`, however many copies of it arrive (every node of the cluster
delivers its own): copies are recognised by the message's key id, kind, sender,
sequence number and epoch (by its bytes when it has none) and counted apart, as
``rejected_copies``.

Sequence numbers must grow per sender across the sender's restarts (for example the
sender's start time in microseconds plus a counter), or the sender id must carry a
per-process incarnation; otherwise a restarted sender's first messages look replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import attrs

from .errors import CacheringError
from .metrics import MessageCounters
from .validators import (
    finite_float,
    int_in,
    int_to_float,
    is_int,
    one_of,
    require_int_at_least,
    require_non_empty_str,
    str_of_length,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "KINDS",
    "MAX_EPOCH",
    "MAX_SEQ",
    "REJECT_REASONS",
    "ControlMessage",
    "DropCounters",
    "Keyring",
    "MessageCodec",
    "MessageKind",
    "MessageRejected",
    "RejectReason",
    "epoch_in_range",
    "key_id_problem",
]

MessageKind = Literal["topology", "leader", "suspect", "invalidate", "goodbye", "lagging"]
"""What a control message announces (``goodbye``: a manager leaves or steps down;
``lagging``: nodes that just missed writes or restarted, which must serve no reads)."""

KINDS: Final[frozenset[str]] = frozenset(get_args(MessageKind))
"""Every accepted message kind."""

RejectReason = Literal[
    "oversized", "malformed", "unsigned", "unknown_key", "forged", "replayed", "stale", "foreign"
]
"""Why a message was dropped."""

REJECT_REASONS: Final[tuple[str, ...]] = get_args(RejectReason)
"""Every rejection reason, in a stable order (for status output)."""

DEFAULT_MAX_SIZE: Final = 64 * 1024
"""Default largest encoded message accepted, in bytes."""

MAX_EPOCH: Final = 2**53 - 1
"""Largest epoch: epochs are compared inside Lua, whose numbers are doubles."""


def epoch_in_range(value: object) -> bool:
    """Whether ``value`` is an epoch a manager may act on: an int in ``0..MAX_EPOCH - 1``.

    The top epoch is excluded because nothing could be elected after it: a node or a
    message claiming it (or anything larger, negative or not a number) is refused.
    """
    return is_int(value) and 0 <= value < MAX_EPOCH


MAX_SEQ: Final = 2**63 - 1
"""Largest sequence number."""

MAX_BODY_DEPTH: Final = 16
"""Deepest nesting of lists and objects allowed in a message body."""

_VERSION: Final = b"CR1"
_MAC_LEN: Final = 64
_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_:\-]{1,64}\Z")
_HEX_RE: Final = re.compile(rb"[0-9a-f]{64}\Z")
_FIELDS: Final = frozenset({"body", "epoch", "kind", "ns", "sender", "sent_at", "seq"})
_EPOCH_KINDS: Final = frozenset({"topology", "leader"})
_MIN_KEY_LEN: Final = 16


def key_id_problem(key_id: object) -> str | None:
    """What is wrong with ``key_id`` as a secret key id, or None if it is fine.

    The one rule for key ids (``ClusterConfig.secret`` and :class:`Keyring` both use it):
    1-64 characters from ``[A-Za-z0-9_:-]``; no ``.``, which separates the wire fields.
    """
    if isinstance(key_id, str) and _KEY_ID_RE.match(key_id):
        return None
    return f"must be a non-empty str of up to 64 characters from [A-Za-z0-9_:-], got {key_id!r}"


class MessageRejected(CacheringError):
    """A control message was dropped; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"control message rejected ({reason}){': ' + detail if detail else ''}")
        self.reason: RejectReason = reason
        self.detail = detail


def _canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False
    ).encode("ascii")


def _check_json(value: object, path: str, depth: int) -> None:
    """Raise ValueError unless ``value`` is plain JSON (finite floats, str keys, bounded depth)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -MAX_SEQ - 1 <= value <= MAX_SEQ:
            raise ValueError(f"{path}: integer out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: non-finite float")
        return
    if depth >= MAX_BODY_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_BODY_DEPTH}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: object key {key!r} is not a str")
            _check_json(item, f"{path}.{key}", depth + 1)
        return
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


_OWNER = "ControlMessage"  # the field checks' messages start "ControlMessage.<field> ..."


def _validate_body(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"ControlMessage.body must be a dict, got {type(value).__name__}")
    _check_json(value, "ControlMessage.body", 0)


@attrs.frozen(eq=False)
class ControlMessage:
    """One control-channel message: what happened, who says so, in which epoch.

    ``seq`` grows per sender; ``sent_at`` is the sender's wall clock, informational only
    (nothing relies on clocks agreeing). ``body`` holds plain JSON values; treat it as
    read-only (equality and hashing go through the canonical encoding).

    >>> msg = ControlMessage("leader", "prod", "mgr-1", epoch=3, seq=10, body={"lease_ms": 300})
    >>> msg.to_payload()[:40]
    b'{"body":{"lease_ms":300},"epoch":3,"kind'
    """

    kind: MessageKind = attrs.field(validator=one_of(_OWNER, KINDS, str(sorted(KINDS))))
    namespace: str = attrs.field(validator=str_of_length(_OWNER, 1, 256))
    sender: str = attrs.field(validator=str_of_length(_OWNER, 1, 256))
    epoch: int = attrs.field(kw_only=True, validator=int_in(_OWNER, 0, MAX_EPOCH))
    seq: int = attrs.field(kw_only=True, validator=int_in(_OWNER, 0, MAX_SEQ))
    sent_at: float = attrs.field(
        kw_only=True, default=0.0, converter=int_to_float, validator=finite_float(_OWNER)
    )
    body: dict[str, Any] = attrs.field(kw_only=True, factory=dict, validator=_validate_body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlMessage):
            return NotImplemented
        return self.to_payload() == other.to_payload()

    def __hash__(self) -> int:
        return hash(self.to_payload())

    def to_payload(self) -> bytes:
        """The canonical JSON encoding that is signed and sent."""
        return _canonical(
            {
                "body": self.body,
                "epoch": self.epoch,
                "kind": self.kind,
                "ns": self.namespace,
                "sender": self.sender,
                "sent_at": self.sent_at,
                "seq": self.seq,
            }
        )


class Keyring:
    """The cluster's HMAC keys, by id: sign with the active one, accept any of them.

    Rotation without downtime: add the new key everywhere (still signing with the old
    one), then make it active everywhere, then drop the old one.

    >>> ring = Keyring({"k1": b"0123456789abcdef"})
    >>> ring.active
    'k1'
    """

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active: str | None = None) -> None:
        if not isinstance(keys, Mapping):
            raise TypeError(f"Keyring keys must be a mapping of id -> bytes, got {keys!r}")
        if not keys:
            raise ValueError("Keyring needs at least one key")
        checked: dict[str, bytes] = {}
        for key_id, key in keys.items():
            problem = key_id_problem(key_id)
            if problem is not None:
                raise ValueError(f"Keyring key id {problem}")
            if not isinstance(key, (bytes, bytearray)):
                raise ValueError(f"Keyring key {key_id!r} must be bytes, got {type(key).__name__}")
            if len(key) < _MIN_KEY_LEN:
                raise ValueError(
                    f"Keyring key {key_id!r} is {len(key)} bytes; at least {_MIN_KEY_LEN} needed"
                )
            checked[key_id] = bytes(key)
        if active is None:
            if len(checked) != 1:
                raise ValueError("Keyring with several keys needs an explicit active key id")
            active = next(iter(checked))
        elif active not in checked:
            raise ValueError(f"Keyring active key {active!r} is not one of {sorted(checked)}")
        self._keys: Mapping[str, bytes] = MappingProxyType(checked)
        self._active = active

    @classmethod
    def from_secret(cls, secret: str | bytes, key_id: str = "default") -> Keyring:
        """A one-key keyring from a shared secret (a str is UTF-8 encoded)."""
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)):
            raise TypeError(f"secret must be str or bytes, got {type(secret).__name__}")
        return cls({key_id: bytes(secret)})

    @property
    def active(self) -> str:
        """The id of the key new messages are signed with."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every accepted key id, sorted."""
        return tuple(sorted(self._keys))

    def mac(self, key_id: str, data: bytes) -> bytes | None:
        """Hex HMAC-SHA256 of ``data`` under ``key_id``, or None if the id is unknown."""
        key = self._keys.get(key_id)
        if key is None:
            return None
        return hmac.new(key, data, hashlib.sha256).hexdigest().encode("ascii")

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self.key_ids)!r}, active={self._active!r})"


DropCounters = MessageCounters
"""The codec's counters: accepted, and dropped by reason (see :mod:`cachering.metrics`)."""


def _identity(data: bytes, max_size: int) -> object:
    """What makes two copies of a message one message: its key id, kind, sender, sequence
    number and epoch when its payload says so (copies may differ elsewhere, in
    ``sent_at`` and so the MAC), otherwise its bytes."""
    digest = hashlib.blake2b(data[: max_size + 1], digest_size=16).digest()
    if len(data) > max_size:
        return digest
    parts = data.split(b".", 3)
    if len(parts) != 4:
        return digest
    try:
        raw = json.loads(parts[3])
    except (ValueError, RecursionError):
        return digest
    if isinstance(raw, dict):
        sender, seq, kind, epoch = (raw.get(f) for f in ("sender", "seq", "kind", "epoch"))
        if isinstance(sender, str) and isinstance(kind, str) and is_int(seq) and is_int(epoch):
            return (parts[1], kind, sender, seq, epoch)
    return digest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate object key")
    return result


class MessageCodec:
    """Encode and check control messages for one cluster namespace.

    ``keyring=None`` runs unsigned: messages carry no MAC and unsigned messages are
    accepted (signed ones are dropped as ``unknown_key``, since they cannot be checked).
    The codec is not thread-safe; use one per service task.

    ``replay_window`` lets a sender's messages arrive out of order by up to that many
    sequence numbers (each one still accepted at most once); 0 demands strictly rising
    numbers. At most ``max_senders`` senders are remembered (least recently heard first
    forgotten).
    """

    def __init__(
        self,
        keyring: Keyring | None,
        namespace: str,
        max_size: int = DEFAULT_MAX_SIZE,
        *,
        replay_window: int = 64,
        max_senders: int = 4096,
    ) -> None:
        if keyring is not None and not isinstance(keyring, Keyring):
            raise TypeError(f"keyring must be a Keyring or None, got {type(keyring).__name__}")
        require_non_empty_str("namespace", namespace)
        require_int_at_least("max_size", max_size, 256)
        require_int_at_least("replay_window", replay_window, 0)
        require_int_at_least("max_senders", max_senders, 1)
        self.keyring = keyring
        self.namespace = namespace
        self.max_size = max_size
        self.replay_window = replay_window
        self.max_senders = max_senders
        self.drops = MessageCounters(dropped=defaultdict(int, dict.fromkeys(REJECT_REASONS, 0)))
        """Messages accepted, and dropped by reason (zeros included)."""
        self._rejected: OrderedDict[object, None] = OrderedDict()
        self._epoch_floor = 0
        # sender -> (highest seq accepted, bitmap of accepted seqs just below it)
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()

    @property
    def accepted(self) -> int:
        """Messages that passed every check."""
        return self.drops.accepted

    @property
    def signed(self) -> bool:
        """Whether messages are signed and checked (False: no secret configured)."""
        return self.keyring is not None

    @property
    def epoch_floor(self) -> int:
        """Topology and leader messages below this epoch are dropped as stale."""
        return self._epoch_floor

    def observe_epoch(self, epoch: int) -> None:
        """Raise the epoch floor to ``epoch`` (never lowers it)."""
        require_int_at_least("epoch", epoch, 0)
        self._epoch_floor = max(self._epoch_floor, epoch)

    def status(self) -> dict[str, Any]:
        """Signing mode, key ids, accepted count and drop counters, for ``cluster.status()``."""
        return {
            "signed": self.signed,
            "key_ids": list(self.keyring.key_ids) if self.keyring else [],
            "active_key": self.keyring.active if self.keyring else None,
            "accepted": self.drops.accepted,
            "dropped": self.drops.snapshot(),
            "rejected_copies": self.drops.rejected_copies,
            "epoch_floor": self._epoch_floor,
        }

    def encode(self, msg: ControlMessage) -> bytes:
        """The wire bytes of ``msg`` (signed with the active key when a keyring is set)."""
        if not isinstance(msg, ControlMessage):
            raise TypeError(f"encode() needs a ControlMessage, got {type(msg).__name__}")
        if msg.namespace != self.namespace:
            raise ValueError(
                f"message namespace {msg.namespace!r} is not this codec's {self.namespace!r}"
            )
        payload = msg.to_payload()
        if self.keyring is None:
            data = _VERSION + b"..." + payload
        else:
            key_id = self.keyring.active.encode("ascii")
            signed = _VERSION + b"." + key_id + b"."
            mac = self.keyring.mac(self.keyring.active, signed + payload)
            assert mac is not None
            data = signed + mac + b"." + payload
        if len(data) > self.max_size:
            raise ValueError(f"encoded message is {len(data)} bytes, limit is {self.max_size}")
        return data

    def decode(self, data: bytes, *, now: float | None = None) -> ControlMessage:
        """Check and parse wire bytes; raise :class:`MessageRejected` (and count it) if bad.

        ``now`` is only recorded as the time of the drop, if there is one.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode() needs bytes, got {type(data).__name__}")
        raw = bytes(data)
        try:
            msg = self._decode(raw)
        except MessageRejected as exc:
            identity = _identity(raw, self.max_size)
            if identity in self._rejected:
                self.drops.rejected_copies += 1
            else:
                self._rejected[identity] = None
                while len(self._rejected) > 4096:
                    self._rejected.popitem(last=False)
                self.drops.record(exc.reason, now)
            raise
        self.drops.accepted += 1
        return msg

    def _decode(self, data: bytes) -> ControlMessage:
        if len(data) > self.max_size:
            raise MessageRejected("oversized", f"{len(data)} bytes > {self.max_size}")
        parts = data.split(b".", 3)
        if len(parts) != 4 or parts[0] != _VERSION:
            raise MessageRejected("malformed", "bad header")
        _, key_id_raw, mac, payload = parts
        self._authenticate(key_id_raw, mac, payload)
        msg = self._parse(payload)
        if msg.namespace != self.namespace:
            raise MessageRejected("foreign", f"namespace {msg.namespace!r}")
        if msg.kind in _EPOCH_KINDS and msg.epoch < self._epoch_floor:
            raise MessageRejected("stale", f"epoch {msg.epoch} < {self._epoch_floor}")
        self._check_replay(msg.sender, msg.seq)
        return msg

    def _authenticate(self, key_id_raw: bytes, mac: bytes, payload: bytes) -> None:
        if not key_id_raw and not mac:
            if self.keyring is not None:
                raise MessageRejected("unsigned")
            return
        try:
            key_id = key_id_raw.decode("ascii")
        except UnicodeDecodeError:
            raise MessageRejected("malformed", "key id is not ASCII") from None
        if not _KEY_ID_RE.match(key_id) or not _HEX_RE.match(mac):
            raise MessageRejected("malformed", "bad key id or MAC field")
        if self.keyring is None:
            raise MessageRejected("unknown_key", "signed message but no keys configured")
        expected = self.keyring.mac(key_id, _VERSION + b"." + key_id_raw + b"." + payload)
        if expected is None:
            raise MessageRejected("unknown_key", f"key id {key_id!r}")
        if not hmac.compare_digest(expected, mac):
            raise MessageRejected("forged")

    def _parse(self, payload: bytes) -> ControlMessage:
        try:
            raw = json.loads(
                payload.decode("ascii"),
                parse_constant=_reject_constant,
                object_pairs_hook=_no_duplicates,
            )
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise MessageRejected("malformed", f"payload is not canonical JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.keys() != _FIELDS:
            raise MessageRejected("malformed", "payload fields")
        sent_at = raw["sent_at"]
        if not isinstance(sent_at, float):
            raise MessageRejected("malformed", "sent_at must be a float")
        try:
            msg = ControlMessage(
                raw["kind"],
                raw["ns"],
                raw["sender"],
                epoch=raw["epoch"],
                seq=raw["seq"],
                sent_at=sent_at,
                body=raw["body"],
            )
            canonical = msg.to_payload()
        except (ValueError, TypeError, RecursionError) as exc:
            raise MessageRejected("malformed", str(exc)) from None
        if canonical != payload:
            raise MessageRejected("malformed", "payload is not in canonical form")
        return msg

    def _check_replay(self, sender: str, seq: int) -> None:
        state = self._seen.get(sender)
        if state is None:
            self._remember(sender, seq, 1)
            return
        top, bitmap = state
        if seq > top:
            shift = seq - top
            bitmap = ((bitmap << shift) | 1) if shift <= self.replay_window else 1
            self._remember(sender, seq, bitmap & ((1 << (self.replay_window + 1)) - 1))
            return
        offset = top - seq
        if offset > self.replay_window or (bitmap >> offset) & 1:
            raise MessageRejected("replayed", f"sender {sender!r} seq {seq}")
        self._remember(sender, top, bitmap | (1 << offset))

    def _remember(self, sender: str, top: int, bitmap: int) -> None:
        self._seen[sender] = (top, bitmap)
        self._seen.move_to_end(sender)
        while len(self._seen) > self.max_senders:
            self._seen.popitem(last=False)
