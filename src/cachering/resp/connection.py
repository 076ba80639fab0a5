"""One connection to one Redis node: anyio streams for I/O, hiredis for the protocol.

Replies come back as hiredis produces them for RESP2: ``bytes`` for bulk strings *and*
for simple strings (``SET`` answers ``b"OK"``, ``PING`` answers ``b"PONG"``), ``int``,
``list`` (possibly nested) and ``None``. Error replies become
:class:`~cachering.errors.ResponseError` (raised by :meth:`Connection.execute`, in place
in a pipeline's list when ``raise_on_error=False``; errors nested inside an array reply,
e.g. from ``EXEC``, stay in place as instances).

A connection that saw a timeout, a cancellation in the middle of a call, a protocol
error or a connection error is marked :attr:`Connection.broken`, closed at once and
never used again: a half-read reply would otherwise be read as the answer to the next
command.

Every byte a node sends passes a reply guard before hiredis parses it: a reply that
announces more than :class:`ReplyLimits` allow (a bulk string, an aggregate, or its
bytes so far) fails the call with :class:`~cachering.errors.ProtocolError` and closes
the connection, so a hostile or broken node can neither fill memory nor make hiredis
allocate (and later free, slot by slot, on the event loop) a huge array.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import ssl
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any, Final, TypeAlias, cast

import anyio
import attrs
import hiredis
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

from ..errors import NodeUnavailable, ProtocolError, ResponseError
from ..node import NodeSpec
from ._guard_py import ReplyGuard
from .script import Script

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODER",
    "Arg",
    "Connection",
    "ReplyLimits",
    "pack_command",
    "pack_commands",
]

Arg: TypeAlias = bytes | str | int | float | memoryview
"""A command argument: ``str`` is sent UTF-8 encoded, numbers in decimal."""

_RECEIVE_SIZE = 65536
_pack: Callable[[tuple[Any, ...]], bytes]
ENCODER: str
"""Which command encoder runs: ``"c"`` (the compiled one) or ``"hiredis"``; same bytes."""

if os.environ.get("CACHERING_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
    _pack, ENCODER = hiredis.pack_command, "hiredis"
else:
    try:
        from ._resp_c import ReplyGuard  # type: ignore[import-not-found,no-redef]
        from ._resp_c import pack_command as _pack  # type: ignore[no-redef]

        ENCODER = "c"
    except ImportError:  # built without a compiler: hiredis encodes the same bytes
        _pack, ENCODER = hiredis.pack_command, "hiredis"


@attrs.frozen
class ReplyLimits:
    """The largest reply a connection accepts: a bulk string of ``max_bulk`` bytes, an
    aggregate of ``max_elements`` elements, ``max_bytes`` bytes in all.

    >>> ReplyLimits.for_values(1 << 20).max_bulk
    1114112
    """

    max_bulk: int = attrs.field(validator=attrs.validators.ge(1))
    max_elements: int = attrs.field(validator=attrs.validators.ge(1))
    max_bytes: int = attrs.field(validator=attrs.validators.ge(1))

    @classmethod
    def for_values(cls, max_value_size: int) -> ReplyLimits:
        """Limits for values up to ``max_value_size`` bytes: each bulk string that plus 64
        KiB (headers), a reply four of those or at least 64 MiB (batches), 2**20 elements
        (freeing a partly read array of that many takes hiredis about 2 ms)."""
        bulk = max_value_size + 65536
        return cls(bulk, 1 << 20, max(4 * bulk, 64 << 20))


DEFAULT_LIMITS: Final = ReplyLimits.for_values(64 << 20)
"""The limits for the default ``max_value_size`` (64 MiB)."""


class _Refused(Exception):
    """The reply guard refused what the node sent (the reason is the message)."""


# The errors a broken socket can surface as, whatever the backend and TLS or not.
_IO_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


def _bad_argument(args: Sequence[object]) -> TypeError:
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, (bytes, str, int, float, memoryview)):
            return TypeError(
                "Redis command arguments must be bytes, str, int, float or memoryview, "
                f"got {type(arg).__name__}: {arg!r:.60}"
            )
    return TypeError(f"cannot encode command arguments {args!r:.100}")


def pack_command(args: Sequence[Arg]) -> bytes:
    """Encode one command (a sequence of arguments) as RESP bytes.

    Raises ``TypeError`` naming the type of an unsupported argument (``None``, ``bool``,
    containers...) and ``ValueError`` for an empty command.
    """
    if not args:
        raise ValueError("a Redis command needs at least one argument (its name)")
    try:
        return _pack(args if type(args) is tuple else tuple(args))
    except TypeError:
        raise _bad_argument(args) from None


def pack_commands(commands: Sequence[Sequence[Arg]]) -> bytes:
    """Encode many commands into one buffer, to be sent with a single write."""
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        if type(command) is not tuple:
            if isinstance(command, (str, bytes, memoryview)) or not isinstance(command, Sequence):
                raise TypeError(
                    "each pipeline command must be a sequence of arguments, "
                    f"got {type(command).__name__}"
                )
            command = tuple(command)
        command = cast("tuple[Arg, ...]", command)
        if not command:
            raise ValueError("a Redis command needs at least one argument (its name)")
        try:
            append(_pack(command))
        except TypeError:
            raise _bad_argument(command) from None
    return b"".join(parts)


def _describe(exc: BaseException) -> str:
    """A short human reason for a connection-level failure."""
    if isinstance(exc, anyio.EndOfStream):
        return "connection closed by the server"
    if isinstance(exc, anyio.ClosedResourceError):
        return "connection closed"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause}"
    if isinstance(exc, anyio.BrokenResourceError):
        return f"connection broken ({cause!r})" if cause is not exc else "connection broken"
    return str(cause) or type(cause).__name__


async def _connect(spec: NodeSpec) -> ByteStream:
    """Open the byte stream to a node: TCP or a Unix socket, with TLS when configured."""
    hostname = spec.tls_server_name or (None if spec.is_unix else spec.host)
    if spec.is_unix:
        stream: ByteStream = await anyio.connect_unix(spec.host)
        if spec.tls is None:
            return stream
        try:
            return await TLSStream.wrap(
                stream, hostname=hostname, ssl_context=spec.tls, standard_compatible=False
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
    if spec.tls is None:
        return await anyio.connect_tcp(spec.host, spec.port)
    # Redis does not need close_notify, and skipping it keeps close from waiting on a
    # peer that may be gone.
    return await anyio.connect_tcp(
        spec.host,
        spec.port,
        ssl_context=spec.tls,
        tls_hostname=hostname,
        tls_standard_compatible=False,
    )


class Connection:
    """A single connection to a node; use :meth:`open` to create one.

    A connection runs one call at a time (a pool hands it to one task at a time).
    """

    __slots__ = (
        "_guard",
        "_own_socket",
        "_reader",
        "_socket",
        "_stream",
        "broken",
        "last_used",
        "spec",
    )

    spec: NodeSpec
    broken: bool
    last_used: float

    def __init__(
        self, spec: NodeSpec, stream: ByteStream, limits: ReplyLimits = DEFAULT_LIMITS
    ) -> None:
        self.spec = spec
        #: ``True`` once the connection failed or was closed; it is never used again.
        self.broken = False
        #: ``time.monotonic()`` when the pool last got it back (its idle clock).
        self.last_used = monotonic()
        self._stream = stream
        self._own_socket = False
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._guard = ReplyGuard(limits.max_bulk, limits.max_elements, limits.max_bytes).feed
        self._socket: socket.socket | None = None
        raw: Any = stream.extra(SocketAttribute.raw_socket, None)
        if isinstance(raw, socket.socket):
            self._socket = raw
            self._own_socket = False
        elif raw is not None:
            # asyncio hands out a TransportSocket without recv(). A duplicate fd (same
            # socket) serves the liveness peek; it is closed with the connection and,
            # unlike a second object on the same fd number, can never close an
            # unrelated socket that reused the number.
            self._socket = socket.fromfd(raw.fileno(), raw.family, raw.type)
            self._own_socket = True

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<Connection {self.spec.id} {self.spec.address} {state}>"

    @classmethod
    async def open(
        cls, spec: NodeSpec, *, connect_timeout: float = 1.0, limits: ReplyLimits = DEFAULT_LIMITS
    ) -> Connection:
        """Connect, authenticate (``AUTH``) and select the database, all within ``connect_timeout``.

        ``limits`` bounds every reply (see :class:`ReplyLimits`).

        Raises :class:`~cachering.errors.NodeUnavailable` when the node cannot be reached,
        refuses the credentials (the reason carries the server's message, e.g.
        ``WRONGPASS``) or does not answer in time.
        """
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"spec must be a NodeSpec, got {type(spec).__name__}")
        node = spec.id
        deadline = anyio.current_time() + connect_timeout
        try:
            with anyio.fail_after(connect_timeout):
                stream = await _connect(spec)
        except TimeoutError:
            raise NodeUnavailable(
                node, f"connect timeout after {connect_timeout}s to {spec.address}"
            ) from None
        except _IO_ERRORS as exc:
            raise NodeUnavailable(
                node, f"cannot connect to {spec.address}: {_describe(exc)}"
            ) from exc
        try:
            conn = cls(spec, stream, limits)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        try:
            # Connect and handshake share the one connect_timeout budget.
            await conn._handshake(max(deadline - anyio.current_time(), 0.001))
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def _handshake(self, timeout: float) -> None:  # noqa: ASYNC109
        spec = self.spec
        commands: list[tuple[Arg, ...]] = []
        if spec.password is not None:
            if spec.username is not None:
                commands.append(("AUTH", spec.username, spec.password))
            else:
                commands.append(("AUTH", spec.password))
        if spec.db:
            commands.append(("SELECT", spec.db))
        if not commands:
            return
        replies = await self.pipeline(commands, timeout=timeout, raise_on_error=False)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ResponseError):
                what = "authentication failed" if command[0] == "AUTH" else "SELECT failed"
                raise NodeUnavailable(spec.id, f"{what}: {reply}")

    # -- the hot path ---------------------------------------------------------------------

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Send one command and return its reply (see the module docstring for types).

        >>> await conn.execute("SET", "k", b"v")   # doctest: +SKIP
        b'OK'
        """
        payload = pack_command(args)
        reply = (await self._call(payload, 1, timeout))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Send every command in one write, then read every reply (one round trip).

        With ``raise_on_error`` the first error reply is raised after all replies were
        read, so the connection stays usable; otherwise errors stay in the list as
        :class:`~cachering.errors.ResponseError` instances.
        """
        payload = pack_commands(commands)
        if not payload:
            return []
        replies = await self._call(payload, len(commands), timeout)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        return replies

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Run ``script`` with ``EVALSHA``; on ``NOSCRIPT`` load it and retry once.

        The timeout covers the whole call, retry included.
        """
        if not isinstance(script, Script):
            raise TypeError(f"script must be a Script, got {type(script).__name__}")
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        started = monotonic()
        # _call directly rather than execute(): one coroutine less on every write
        reply = (await self._call(pack_command(command), 1, timeout))[0]
        if not isinstance(reply, ResponseError):
            return reply
        if not str(reply).startswith("NOSCRIPT"):
            raise reply
        remaining = None if timeout is None else max(timeout - (monotonic() - started), 0.0)
        loaded, reply = await self.pipeline(
            [("SCRIPT", "LOAD", script.source), command],
            timeout=remaining,
            raise_on_error=False,
        )
        if isinstance(loaded, ResponseError):
            raise loaded
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _call(self, payload: bytes, count: int, timeout: float | None) -> list[Any]:  # noqa: ASYNC109
        if self.broken:
            raise NodeUnavailable(self.spec.id, "connection already failed or closed")
        # Stays True unless the call completes: every early exit (error, timeout,
        # cancellation) leaves a half-used socket that must never be reused.
        self.broken = True
        try:
            if timeout is None:
                await self._stream.send(payload)
                replies = await self._read(count)
            else:
                # move_on_after is measurably cheaper than fail_after on the hot path.
                with anyio.move_on_after(timeout) as scope:
                    await self._stream.send(payload)
                    replies = await self._read(count)
                if scope.cancelled_caught:
                    await self._discard()
                    raise NodeUnavailable(self.spec.id, f"timeout after {timeout}s")
        except NodeUnavailable:
            raise
        except hiredis.ProtocolError as exc:
            await self._discard()
            raise ProtocolError(self.spec.id, f"bad reply from server: {exc}") from None
        except _Refused as exc:
            await self._discard()
            raise ProtocolError(self.spec.id, f"bad reply from server: {exc}") from None
        except _IO_ERRORS as exc:
            partial = " mid-reply" if self._reader.has_data() else ""
            await self._discard()
            raise NodeUnavailable(self.spec.id, _describe(exc) + partial) from exc
        except BaseException:
            await self._discard()
            raise
        self.broken = False
        return replies

    async def _read(self, count: int) -> list[Any]:
        reader = self._reader
        gets = reader.gets
        receive = self._stream.receive
        guard = self._guard
        replies: list[Any] = []
        append = replies.append
        while count:
            reply = gets()
            if reply is False:
                data = await receive(_RECEIVE_SIZE)
                try:
                    guard(data)
                except ValueError as exc:
                    raise _Refused(str(exc)) from None
                reader.feed(data)
                continue
            append(reply)
            count -= 1
        return replies

    # -- used by the pub/sub client ------------------------------------------------------

    async def send_command(self, *args: Arg) -> None:
        """Write one command without reading a reply (pub/sub subscriptions)."""
        payload = pack_command(args)
        if self.broken:
            raise NodeUnavailable(self.spec.id, "connection already failed or closed")
        try:
            await self._stream.send(payload)
        except _IO_ERRORS as exc:
            await self._discard()
            raise NodeUnavailable(self.spec.id, _describe(exc)) from exc
        except BaseException:
            # A cancelled send may have written part of the command.
            await self._discard()
            raise

    async def read_reply(self) -> Any:
        """Read the next reply or pushed message, without sending anything.

        Cancelling this is safe (a partly received reply stays buffered), so callers can
        wait under ``move_on_after``. Error replies are returned, not raised.
        """
        if self.broken:
            raise NodeUnavailable(self.spec.id, "connection already failed or closed")
        reader = self._reader
        try:
            reply = reader.gets()
            while reply is False:
                data = await self._stream.receive(_RECEIVE_SIZE)
                self._guard(data)
                reader.feed(data)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            await self._discard()
            raise ProtocolError(self.spec.id, f"bad reply from server: {exc}") from None
        except ValueError as exc:  # the reply guard
            await self._discard()
            raise ProtocolError(self.spec.id, f"bad reply from server: {exc}") from None
        except _IO_ERRORS as exc:
            partial = " mid-reply" if reader.has_data() else ""
            await self._discard()
            raise NodeUnavailable(self.spec.id, _describe(exc) + partial) from exc
        return reply

    # -- liveness and closing --------------------------------------------------------------

    def looks_alive(self) -> bool:
        """Cheap check, without a round trip, that an idle connection is still open.

        Peeks at the socket: EOF or an error means the server went away; unexpected
        bytes on a plain connection mean the stream is out of step. Either way the
        connection is not reusable.
        """
        if self.broken:
            return False
        sock = self._socket
        if sock is None:  # pragma: no cover - every stream we open has a socket
            return True
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        # TLS may have records (session tickets) pending that are not replies.
        return bool(data) and self.spec.tls is not None

    async def _discard(self) -> None:
        self.broken = True
        if self._own_socket and self._socket is not None:
            self._socket.close()
            self._socket = None
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._stream.aclose()

    async def aclose(self) -> None:
        """Close the socket (idempotent); the connection is unusable afterwards."""
        await self._discard()
