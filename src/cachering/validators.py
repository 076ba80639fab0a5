"""The field checks that more than one module needs, in one place.

Every check raises :class:`ValueError` whose message starts with what it checked and
says what was wrong: ``NodeSpec.port must be an int in 1..65535, got 0``. Tests match
on these messages, and :meth:`ClusterConfig.from_file
<cachering.config.ClusterConfig.from_file>` rewrites ``ClusterConfig.<field> ...`` into
``key '<field>': ...``, so the wording is part of the behaviour.

Two kinds of check:

* attrs validators, made by a factory given the class name that starts the message
  (``validator=tcp_port("NodeSpec")``); the field name comes from the attribute;
* ``require_*(what, value)`` for plain function arguments (``Pool max_size``).

attrs' own leaf validators (``instance_of``, ``in_``, ``ge``, ``le``...) are not used:
they raise :class:`TypeError` for a wrong type where cachering raises ``ValueError``,
and word their messages differently (``'port' must be >= 1: 0``), which would change
both the exception type and the messages above. Rules about one type's own data (a
config's node list and keyring, a topology's node list, a message body) stay beside that
type. This module imports only the standard library and attrs (it is in the base layer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any, Final, TypeGuard

import attrs

__all__ = [
    "MAX_PORT",
    "MAX_RING_POINTS",
    "Validator",
    "bounded_int",
    "finite_float",
    "int_in",
    "int_to_float",
    "is_int",
    "is_number",
    "matching",
    "non_empty_str",
    "non_negative_int",
    "of_type",
    "one_of",
    "optional_non_empty_str",
    "positive_number",
    "require_int_at_least",
    "require_non_empty_str",
    "require_positive_number",
    "seconds",
    "str_of_length",
    "tcp_port",
]

MAX_PORT: Final = 65535
"""Largest TCP port."""

MAX_RING_POINTS: Final = 1 << 26
"""Most points a ring may have: a guard against weights or vnodes that would need
gigabytes. The ring refuses more (``cachering.ring.MAX_POINTS``) and ``ClusterConfig``
refuses, naming ``vnodes``, the options that would ask the ring for more."""

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
"""An attrs field validator: ``(instance, attribute, value)``, raises on a bad value."""

_Problem = Callable[[Any], "str | None"]


# ---- predicates and converters ---------------------------------------------------------


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float and not a bool (NaN and infinities count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_to_float(value: Any) -> Any:
    """Converter: an int (not a bool) becomes a float; anything else is left for the check."""
    if is_int(value):
        return float(value)
    return value


# ---- building blocks -------------------------------------------------------------------


def _field(owner: str, problem: _Problem) -> Validator:
    """An attrs validator raising ``ValueError("{owner}.{field} {problem}")``."""

    def validate(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        found = problem(value)
        if found is not None:
            raise ValueError(f"{owner}.{attr.name} {found}")

    return validate


def _require(what: str, problem: str | None) -> None:
    if problem is not None:
        raise ValueError(f"{what} {problem}")


def _non_empty_str(value: object) -> str | None:
    if isinstance(value, str) and value:
        return None
    return f"must be a non-empty str, got {value!r}"


def _int_at_least(value: object, low: int) -> str | None:
    if is_int(value) and value >= low:
        return None
    return f"must be an int >= {low}, got {value!r}"


def _positive_number(value: object, allow_zero: bool) -> str | None:
    if is_number(value) and (value >= 0 if allow_zero else value > 0) and value == value:
        return None
    return f"must be a positive number, got {value!r}"


# ---- attrs validators ------------------------------------------------------------------


def non_empty_str(owner: str) -> Validator:
    """A non-empty str: ``{owner}.{field} must be a non-empty str, got {value!r}``."""
    return _field(owner, _non_empty_str)


def optional_non_empty_str(owner: str) -> Validator:
    """None or a non-empty str: ``... must be a non-empty str or None, got {value!r}``."""

    def problem(value: object) -> str | None:
        if value is None or (isinstance(value, str) and value):
            return None
        return f"must be a non-empty str or None, got {value!r}"

    return _field(owner, problem)


def str_of_length(owner: str, low: int, high: int) -> Validator:
    """A str of ``low..high`` characters: ``... must be a str of 1..256 chars, got {value!r}``."""

    def problem(value: object) -> str | None:
        if isinstance(value, str) and low <= len(value) <= high:
            return None
        return f"must be a str of {low}..{high} chars, got {value!r}"

    return _field(owner, problem)


def matching(
    owner: str, pattern: re.Pattern[str], shape: str, *, max_len: int | None = None
) -> Validator:
    """A str that ``pattern.match`` accepts (and of at most ``max_len`` characters).

    The message is ``{owner}.{field} must be {shape}, got {value!r}``.
    """

    def problem(value: object) -> str | None:
        if (
            isinstance(value, str)
            and (max_len is None or len(value) <= max_len)
            and pattern.match(value)
        ):
            return None
        return f"must be {shape}, got {value!r}"

    return _field(owner, problem)


def int_in(owner: str, low: int, high: int) -> Validator:
    """An int (not a bool) in ``low..high``: ``... must be an int in 0..9, got {value!r}``."""

    def problem(value: object) -> str | None:
        if is_int(value) and low <= value <= high:
            return None
        return f"must be an int in {low}..{high}, got {value!r}"

    return _field(owner, problem)


def tcp_port(owner: str) -> Validator:
    """A TCP port: ``{owner}.{field} must be an int in 1..65535, got {value!r}``."""
    return int_in(owner, 1, MAX_PORT)


def non_negative_int(owner: str) -> Validator:
    """An int (not a bool) >= 0: ``... must be a non-negative int, got {value!r}``."""

    def problem(value: object) -> str | None:
        if is_int(value) and value >= 0:
            return None
        return f"must be a non-negative int, got {value!r}"

    return _field(owner, problem)


def bounded_int(owner: str, low: int, high: int | None = None) -> Validator:
    """An int (not a bool) >= ``low`` (and <= ``high``), in two messages.

    A wrong type: ``... must be an int, got str``; a wrong value: ``... must be >= 1, got
    0`` or ``... must be in 1..1000, got 0``.
    """
    bound = f">= {low}" if high is None else f"in {low}..{high}"

    def problem(value: object) -> str | None:
        if not is_int(value):
            return f"must be an int, got {type(value).__name__}"
        if value < low or (high is not None and value > high):
            return f"must be {bound}, got {value!r}"
        return None

    return _field(owner, problem)


def positive_number(owner: str) -> Validator:
    """A finite int or float (not a bool) > 0: ``... must be a finite positive number``."""

    def problem(value: object) -> str | None:
        if is_number(value) and math.isfinite(value) and value > 0:
            return None
        return f"must be a finite positive number, got {value!r}"

    return _field(owner, problem)


def finite_float(owner: str) -> Validator:
    """A finite float (pair it with :func:`int_to_float` to accept ints too)."""

    def problem(value: object) -> str | None:
        if isinstance(value, float) and math.isfinite(value):
            return None
        return f"must be a finite float, got {value!r}"

    return _field(owner, problem)


def seconds(
    owner: str, low: float, *, inclusive: bool = False, optional: bool = False
) -> Validator:
    """A duration: a finite int or float (not a bool) > ``low`` (>= when ``inclusive``).

    A wrong type: ``... must be a number of seconds, got str``; a wrong value: ``... must
    be finite and > 0, got 0``. ``optional`` lets None through.
    """
    op = ">=" if inclusive else ">"

    def problem(value: object) -> str | None:
        if value is None and optional:
            return None
        if not is_number(value):
            return f"must be a number of seconds, got {type(value).__name__}"
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            return f"must be finite and {op} {low}, got {value!r}"
        return None

    return _field(owner, problem)


def one_of(owner: str, allowed: Collection[object], shown: str | None = None) -> Validator:
    """One of ``allowed``: ``{owner}.{field} must be one of {shown}, got {value!r}``.

    ``shown`` defaults to ``list(allowed)``; membership is tested with ``in`` on
    ``allowed`` itself (so an unhashable value raises TypeError against a set).
    """
    listed = str(list(allowed)) if shown is None else shown

    def problem(value: object) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {listed}, got {value!r}"

    return _field(owner, problem)


def of_type(owner: str, cls: type, article: str, *, optional: bool = False) -> Validator:
    """An instance of ``cls`` (or None when ``optional``).

    The message names only the type of a wrong value, never the value (passwords use
    it): ``{owner}.{field} must be {article}[ or None], got {type name}``, ``article``
    being for example ``"a str"``.
    """
    wanted = f"{article} or None" if optional else article

    def problem(value: object) -> str | None:
        if isinstance(value, cls) or (optional and value is None):
            return None
        return f"must be {wanted}, got {type(value).__name__}"

    return _field(owner, problem)


# ---- plain checks ----------------------------------------------------------------------


def require_non_empty_str(what: str, value: object) -> None:
    """Raise ``ValueError("{what} must be a non-empty str, got {value!r}")`` unless it is one."""
    _require(what, _non_empty_str(value))


def require_int_at_least(what: str, value: object, low: int) -> None:
    """Raise ``ValueError("{what} must be an int >= {low}, got {value!r}")`` unless it is."""
    _require(what, _int_at_least(value, low))


def require_positive_number(what: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError("{what} must be a positive number, got {value!r}")`` unless it is.

    An int or float (not a bool), > 0 (>= 0 with ``allow_zero``), not NaN; infinity is
    allowed (no limit).
    """
    _require(what, _positive_number(value, allow_zero))
