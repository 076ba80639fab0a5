"""Optional OpenTelemetry spans around each public cluster operation.

cachering speaks RESP over its own transport, so the standard Redis instrumentations
never see it. With ``opentelemetry-api`` installed (``pip install 'cachering[otel]'``)
and a tracer provider set (the global one, ``opentelemetry.trace.set_tracer_provider``,
or one given to :func:`use_tracer_provider`), every :class:`~cachering.Cluster`
operation is a ``CLIENT`` span named ``cachering <operation>`` with the database
semantic conventions:

=============================  =====================================================
``db.system``                  ``"redis"`` (also as ``db.system.name``)
``db.operation.name``          the operation: ``get``, ``set_many``, ``delete`` ...
``db.operation.batch.size``    how many keys a ``*_many`` call carries (when sized)
``db.namespace``               the cluster's key namespace
``cachering.node``             the node holding the key's primary copy (one-key calls)
``server.address``, ``.port``  that node's address (a socket path for ``unix://``)
=============================  =====================================================

A failed operation's span records the exception and an error status. Without the API,
or before a provider is set, an operation costs one clock read and no span; a global
provider is noticed within a second of being set. The API is imported on the first
operation, never at ``import cachering``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Sized
from time import monotonic
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["traced", "use_tracer_provider"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

_UNSET: Any = object()
_RECHECK = 1.0  # seconds between looks for a global provider while none is set
_trace: Any = _UNSET  # the opentelemetry.trace module, None without the API
_override: Any = None  # a provider given to use_tracer_provider
_tracer_now: Any = None  # the tracer in use, None while tracing is off
_next_look = 0.0  # monotonic time of the next look for a provider


def use_tracer_provider(provider: Any) -> None:
    """Trace with ``provider`` instead of OpenTelemetry's global one (None: the global).

    For a process that keeps several providers, and for tests. Takes effect at once.
    """
    global _override, _next_look, _tracer_now
    _override, _next_look, _tracer_now = provider, 0.0, None


def _tracer() -> Any:
    """The tracer to use now, or None when tracing is off.

    OpenTelemetry's global provider can be set once only, so once it is set the tracer
    is kept; before that, a look costs microseconds, so it is taken at most once a
    second (spans start within a second of ``set_tracer_provider``).
    """
    global _trace, _tracer_now, _next_look
    if _tracer_now is not None:
        return _tracer_now
    now = monotonic()
    if now < _next_look:
        return None
    _next_look = now + _RECHECK
    if _trace is _UNSET:
        try:
            import opentelemetry.trace
        except ImportError:
            _trace = None
        else:
            _trace = opentelemetry.trace
    if _trace is None:
        _next_look = math.inf  # no API: tracing stays off in this process
        return None
    provider = _override if _override is not None else _trace.get_tracer_provider()
    if isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
        return None  # no provider set: nothing would record the spans
    from ._version import __version__

    _tracer_now = provider.get_tracer("cachering", __version__)
    return _tracer_now


def _attributes(cluster: Any, operation: str, args: tuple[Any, ...], shape: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "db.system": "redis",
        "db.system.name": "redis",
        "db.operation.name": operation,
    }
    namespace = getattr(getattr(cluster, "config", None), "namespace", None)
    if namespace is not None:
        attributes["db.namespace"] = namespace
    if shape == "batch" and args and isinstance(args[0], Sized):
        attributes["db.operation.batch.size"] = len(args[0])
    elif shape == "key" and args:
        try:
            node = cluster.node_for(args[0])
        except Exception:  # a bad key: the operation itself raises and says why
            return attributes
        attributes["cachering.node"] = node
        spec = getattr(cluster, "_pools", {}).get(node)
        spec = getattr(spec, "spec", None)
        if spec is not None:
            attributes["server.address"] = spec.host
            if not spec.is_unix:
                attributes["server.port"] = spec.port
    return attributes


async def _in_span(
    tracer: Any,
    operation: str,
    attributes: dict[str, Any],
    call: Awaitable[R],
) -> R:
    kind = _trace.SpanKind.CLIENT
    with tracer.start_as_current_span(f"cachering {operation}", kind=kind, attributes=attributes):
        return await call


Method = Callable[Concatenate[S, P], Awaitable[R]]


def traced(operation: str, shape: str = "none") -> Callable[[Method[S, P, R]], Method[S, P, R]]:
    """Wrap an async cluster method so that each call is a span when tracing is on.

    ``shape`` says what the first argument is: ``"key"`` (one key: the span names its
    node), ``"batch"`` (keys or items: the span has the batch size) or ``"none"``.
    When tracing is off the method's own coroutine is returned as is.
    """
    if shape not in ("key", "batch", "none"):
        raise ValueError(f"shape must be 'key', 'batch' or 'none', got {shape!r}")

    def wrap(method: Method[S, P, R]) -> Method[S, P, R]:
        @functools.wraps(method)
        def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
            tracer = _tracer_now
            # the off path in line: no span, one clock read
            if tracer is None and (monotonic() < _next_look or (tracer := _tracer()) is None):
                return method(self, *args, **kwargs)
            attributes = _attributes(self, operation, args, shape)
            return _in_span(tracer, operation, attributes, method(self, *args, **kwargs))

        return call

    return wrap
