"""The compiled RESP encoder against hiredis' (the fallback): same bytes, same refusals."""

from __future__ import annotations

import math
import os

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachering.resp import connection, pack_command

NO_EXTENSIONS = bool(os.environ.get("CACHERING_NO_EXTENSIONS"))
try:
    from cachering.resp import _resp_c  # type: ignore[attr-defined]
except ImportError:  # built without a compiler: hiredis encodes instead
    _resp_c = None

needs_compiled = pytest.mark.skipif(
    _resp_c is None or NO_EXTENSIONS,
    reason=(
        "CACHERING_NO_EXTENSIONS is set: the compiled encoder is not in use"
        if NO_EXTENSIONS
        else "cachering.resp._resp_c is not built (no compiler at install time)"
    ),
)

arguments = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=50),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.binary(max_size=20).map(memoryview),
)


@needs_compiled
@given(st.lists(arguments, min_size=1, max_size=40))
def test_same_bytes_as_hiredis(args: list[object]) -> None:
    command = tuple(args)
    assert _resp_c.pack_command(command) == hiredis.pack_command(command)


@needs_compiled
def test_lengths_across_digit_boundaries() -> None:
    for size in (0, 1, 9, 10, 99, 100, 999, 1000, 65_536):
        command = ("SET", b"k", b"x" * size)
        assert _resp_c.pack_command(command) == hiredis.pack_command(command)
    many = tuple(b"a" for _ in range(10_000))
    assert _resp_c.pack_command(many) == hiredis.pack_command(many)


@needs_compiled
def test_special_floats_and_big_ints() -> None:
    command = ("X", math.inf, -math.inf, 1e300, 0.1, -0.0, 2**100, -(2**63))
    assert _resp_c.pack_command(command) == hiredis.pack_command(command)


@pytest.mark.parametrize("bad", [None, True, bytearray(b"x"), object(), [b"a"], {"a": 1}])
def test_refuses_what_hiredis_refuses(bad: object) -> None:
    with pytest.raises(TypeError):
        hiredis.pack_command((bad,))
    if _resp_c is not None:
        with pytest.raises(TypeError):
            _resp_c.pack_command((bad,))
    # the package's wrapper names the offending type, whichever encoder runs
    with pytest.raises(TypeError, match=type(bad).__name__):
        pack_command(("SET", "k", bad))  # type: ignore[arg-type]


def test_encoder_follows_the_extension_switch() -> None:
    # compiled where it was built, unless CACHERING_NO_EXTENSIONS is set
    expected = "hiredis" if NO_EXTENSIONS or _resp_c is None else "c"
    assert expected == connection.ENCODER
