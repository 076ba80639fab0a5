"""Signed control messages: encoding, every rejection reason, and fuzzing of the decoder."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachering.errors import CacheringError
from cachering.messages import (
    KINDS,
    REJECT_REASONS,
    ControlMessage,
    DropCounters,
    Keyring,
    MessageCodec,
    MessageRejected,
)

KEY = b"k" * 32
OTHER = b"o" * 32


def make_codec(**kwargs: Any) -> MessageCodec:
    return MessageCodec(Keyring({"k1": KEY}), "prod", **kwargs)


def msg(seq: int = 1, kind: str = "leader", **kwargs: Any) -> ControlMessage:
    fields: dict[str, Any] = {"epoch": 3, "seq": seq, "sent_at": 1.5, "body": {"x": [1, "y"]}}
    fields.update(kwargs)
    ns = fields.pop("namespace", "prod")
    sender = fields.pop("sender", "mgr-1")
    return ControlMessage(kind, ns, sender, **fields)  # type: ignore[arg-type]


def reason_of(codec: MessageCodec, data: bytes) -> str:
    with pytest.raises(MessageRejected) as info:
        codec.decode(data)
    return info.value.reason


def resign(payload: bytes, key: bytes = KEY, key_id: bytes = b"k1") -> bytes:
    head = b"CR1." + key_id + b"."
    return (
        head + hmac.new(key, head + payload, hashlib.sha256).hexdigest().encode() + b"." + payload
    )


def test_round_trip_and_wire_format() -> None:
    sender, receiver = make_codec(), make_codec()
    m = msg()
    data = sender.encode(m)
    assert data.startswith(b"CR1.k1.")
    assert data.split(b".", 3)[3] == m.to_payload()
    assert receiver.decode(data) == m
    assert receiver.accepted == 1
    assert receiver.drops.total == 0


def test_canonical_payload() -> None:
    m = msg(body={"b": 1, "a": "é"})
    payload = m.to_payload()
    assert payload.isascii()
    assert b" " not in payload
    assert payload.index(b'"body"') < payload.index(b'"epoch"')
    assert payload.index(b'"a"') < payload.index(b'"b"')


def test_every_rejection_reason_is_counted() -> None:
    codec = make_codec(max_size=512)
    good = make_codec()
    first = good.encode(msg(seq=5))
    assert codec.decode(first).seq == 5
    cases = {
        "oversized": b"x" * 513,
        "malformed": b"CR2.k1." + b"0" * 64 + b".{}",
        "unsigned": b"CR1..." + msg(seq=6).to_payload(),
        "unknown_key": MessageCodec(Keyring({"k2": KEY}), "prod").encode(msg(seq=7)),
        "forged": MessageCodec(Keyring({"k1": OTHER}), "prod").encode(msg(seq=8)),
        "replayed": first,
        "foreign": MessageCodec(Keyring({"k1": KEY}), "dev").encode(msg(seq=9, namespace="dev")),
    }
    for reason, data in cases.items():
        assert reason_of(codec, data) == reason
    codec.observe_epoch(4)
    assert reason_of(codec, good.encode(msg(seq=10, epoch=3))) == "stale"
    assert codec.decode(good.encode(msg(seq=11, epoch=3, kind="suspect"))).seq == 11
    snap = codec.drops.snapshot()
    assert set(snap) == set(REJECT_REASONS)
    assert all(count == 1 for count in snap.values())
    assert codec.status()["dropped"] == snap
    assert codec.status()["signed"] is True


def test_replay_window_accepts_each_seq_once() -> None:
    codec, good = make_codec(replay_window=4), make_codec()
    for seq in (10, 8, 9, 12, 11):
        assert codec.decode(good.encode(msg(seq=seq))).seq == seq
    for seq in (8, 9, 10, 11, 12, 7, 5):
        assert reason_of(codec, good.encode(msg(seq=seq))) == "replayed"
    strict = make_codec(replay_window=0)
    strict.decode(good.encode(msg(seq=10)))
    assert reason_of(strict, good.encode(msg(seq=9))) == "replayed"
    other = good.encode(msg(seq=1, sender="mgr-2"))
    assert strict.decode(other).sender == "mgr-2", "replay state is per sender"


def test_rejected_messages_do_not_advance_the_replay_guard() -> None:
    codec, good = make_codec(replay_window=0), make_codec()
    codec.observe_epoch(9)
    assert reason_of(codec, good.encode(msg(seq=50, epoch=1))) == "stale"
    assert codec.decode(good.encode(msg(seq=2, epoch=9))).seq == 2


def test_key_rotation() -> None:
    old = Keyring({"k1": KEY})
    both_old = Keyring({"k1": KEY, "k2": OTHER}, active="k1")
    both_new = Keyring({"k1": KEY, "k2": OTHER}, active="k2")
    new = Keyring({"k2": OTHER})
    data_new = MessageCodec(both_new, "prod").encode(msg(seq=1))
    assert MessageCodec(both_old, "prod").decode(data_new).seq == 1
    assert MessageCodec(new, "prod").decode(data_new).seq == 1
    assert reason_of(MessageCodec(old, "prod"), data_new) == "unknown_key"
    assert "OTHER" not in repr(both_new)
    assert repr(both_new) == "Keyring(key_ids=['k1', 'k2'], active='k2')"


def test_unsigned_mode() -> None:
    codec = MessageCodec(None, "prod")
    data = codec.encode(msg())
    assert data.startswith(b"CR1...")
    assert codec.decode(data) == msg()
    assert codec.status()["signed"] is False
    assert reason_of(codec, make_codec().encode(msg(seq=2))) == "unknown_key"


@pytest.mark.parametrize(
    ("keys", "active", "match"),
    [
        ({}, None, "at least one"),
        ({"": KEY}, None, "key id"),
        ({"a.b": KEY}, None, "key id"),
        ({"k": b"short"}, None, "at least 16"),
        ({"k": "not-bytes-but-long-enough"}, None, "must be bytes"),
        ({"k": KEY, "j": KEY}, None, "explicit active"),
        ({"k": KEY}, "j", "not one of"),
    ],
)
def test_keyring_validation(keys: dict[str, Any], active: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Keyring(keys, active)


def test_keyring_from_secret() -> None:
    ring = Keyring.from_secret("correct horse battery staple")
    assert ring.key_ids == ("default",)
    with pytest.raises(ValueError, match="at least 16"):
        Keyring.from_secret("short")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "gossip"),
        ("namespace", ""),
        ("sender", 5),
        ("epoch", -1),
        ("epoch", True),
        ("epoch", 2**53),
        ("seq", 1.0),
        ("sent_at", float("nan")),
        ("body", []),
        ("body", {"x": float("inf")}),
        ("body", {"x": {1, 2}}),
        ("body", {"x": b"bytes"}),
        ("body", {"x": 2**70}),
    ],
)
def test_message_validation(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field if field != "namespace" else "namespace"):
        msg(**{field: value})


def test_body_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        msg(body={"x": deep})


def test_encode_checks_namespace_and_size() -> None:
    with pytest.raises(ValueError, match="namespace"):
        make_codec().encode(msg(namespace="dev"))
    with pytest.raises(ValueError, match="limit"):
        make_codec(max_size=256).encode(msg(body={"x": "y" * 300}))
    with pytest.raises(TypeError):
        make_codec().decode("text")  # type: ignore[arg-type]


def test_message_rejected_is_a_cachering_error() -> None:
    assert issubclass(MessageRejected, CacheringError)
    assert {"topology", "leader", "suspect", "invalidate", "goodbye", "lagging"} == KINDS
    counters = DropCounters()
    counters.record("forged", now=12.0)
    assert counters.snapshot()["forged"] == 1
    assert counters.last_at == 12.0


def _field_variants() -> list[bytes]:
    base = json.loads(msg().to_payload())
    out = []
    for key in sorted(base):
        for bad in (None, "x", -1, 1.5, 2**80, [], {}, True, "NaN"):
            changed = dict(base)
            changed[key] = bad
            out.append(json.dumps(changed, sort_keys=True, separators=(",", ":")).encode())
        missing = {k: v for k, v in base.items() if k != key}
        out.append(json.dumps(missing, sort_keys=True, separators=(",", ":")).encode())
    return out


@pytest.mark.parametrize("payload", _field_variants())
def test_signed_payloads_with_any_field_value(payload: bytes) -> None:
    codec = make_codec()
    try:
        out = codec.decode(resign(payload))
    except MessageRejected:
        assert codec.drops.total == 1
    else:  # e.g. sender "x": still a valid message
        assert out.to_payload() == payload


RAW = msg().to_payload()


@pytest.mark.parametrize(
    "payload",
    [
        RAW.replace(b"1.5", b"NaN"),
        RAW.replace(b"1.5", b"Infinity"),
        RAW.replace(b"1.5", b"-Infinity"),
        RAW.replace(b"1.5", b"1e999"),
        RAW.replace(b"1.5", b"2"),
        RAW.replace(b'"x"', b'"x","x"'),
        RAW.replace(b",", b", "),
        RAW.replace(b'"epoch":3', b'"epoch":3,"epoch":3'),
        RAW.replace(b'"epoch":3', b'"epoch":3.0'),
        RAW.replace(b'"epoch":3', b'"epoch":' + b"9" * 5000),
        RAW.replace(b'"seq":1', b'"seq":true'),
        RAW.replace(b'"kind":"leader"', b'"kind":"Leader"'),
        RAW.replace(b'"kind":"leader"', b'"kind":["leader"]'),
        RAW.replace(b'"body":{', b'"body":{"d":' + b"[" * 200 + b"]" * 200 + b","),
        b"[" * 60000,
        b"{" * 60000,
        b"",
        b"null",
        RAW + b" ",
        RAW[:-1],
        RAW.replace(b"mgr-1", b"mgr-\xff"),
        RAW.replace(b"mgr-1", "mgr-\u00e9".encode()),
        RAW.replace(b"mgr-1", b"mgr-\\u0041"),
    ],
)
def test_signed_but_malformed_payloads_are_rejected(payload: bytes) -> None:
    codec = make_codec()
    with pytest.raises(MessageRejected) as info:
        codec.decode(resign(payload))
    assert info.value.reason == "malformed"


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    codec = make_codec()
    with pytest.raises(MessageRejected):
        codec.decode(data)
    assert codec.drops.total == 1


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_valid_messages(data: st.DataObject) -> None:
    codec, good = make_codec(max_size=1024), make_codec()
    wire = bytearray(good.encode(msg(seq=7)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del wire[pos:]
        elif op == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and wire:
            del wire[pos]
    try:
        out = codec.decode(bytes(wire))
    except MessageRejected:
        assert codec.drops.total == 1
    else:
        assert out == msg(seq=7), "only an unchanged message may pass"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
VALID_FIELDS = json.loads(msg().to_payload())


@settings(max_examples=200)
@given(
    replaced=st.dictionaries(st.sampled_from(sorted(VALID_FIELDS)), json_values, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(VALID_FIELDS)), max_size=1),
    extra=st.booleans(),
    nan_ok=st.booleans(),
)
def test_fuzz_signed_json_objects(
    replaced: dict[str, Any], dropped: set[str], extra: bool, nan_ok: bool
) -> None:
    fields = {k: v for k, v in {**VALID_FIELDS, **replaced}.items() if k not in dropped}
    if extra:
        fields["zz"] = 1
    try:
        payload = json.dumps(
            fields, sort_keys=True, separators=(",", ":"), allow_nan=nan_ok
        ).encode()
    except ValueError:
        return
    codec = make_codec()
    try:
        out = codec.decode(resign(payload))
    except MessageRejected:
        assert codec.drops.total == 1
    else:  # e.g. sender "x": still a valid message
        assert out.to_payload() == payload


@given(
    kind=st.sampled_from(sorted(KINDS)),
    sender=st.text(min_size=1, max_size=30),
    epoch=st.integers(0, 2**53 - 1),
    seq=st.integers(0, 2**63 - 1),
    sent_at=st.floats(allow_nan=False, allow_infinity=False),
    body=st.dictionaries(
        st.text(max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text() | st.none(), max_size=5
    ),
)
def test_round_trip_property(
    kind: str, sender: str, epoch: int, seq: int, sent_at: float, body: dict[str, Any]
) -> None:
    m = ControlMessage(kind, "prod", sender, epoch=epoch, seq=seq, sent_at=sent_at, body=body)  # type: ignore[arg-type]
    for codec_pair in ((make_codec(), make_codec()), (MessageCodec(None, "prod"),) * 2):
        assert codec_pair[1].decode(codec_pair[0].encode(m)) == m
