"""Node configuration: where a cache server lives and how to log in to it."""

from __future__ import annotations

import math
import ssl
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlsplit

import attrs

from .validators import (
    non_empty_str,
    non_negative_int,
    of_type,
    optional_non_empty_str,
    positive_number,
    tcp_port,
)

__all__ = ["NodeSpec", "tls_context"]

_OWNER = "NodeSpec"  # the field checks' messages start "NodeSpec.<field> ..."


@attrs.frozen(repr=False)
class NodeSpec:
    """One cache server: its id (the name on the ring), address, weight and credentials.

    >>> NodeSpec("a", "127.0.0.1", 6379, weight=2)
    NodeSpec(id='a', host='127.0.0.1', port=6379, weight=2)

    A ``host`` that is an absolute path (``/run/redis.sock``) names a Unix domain socket;
    the port is then not used. ``tls`` is the client context for a TLS connection, and
    ``tls_server_name`` the name the server's certificate must carry (default: the
    host). The password never appears in the repr.
    """

    id: str = attrs.field(validator=non_empty_str(_OWNER))
    host: str = attrs.field(validator=non_empty_str(_OWNER))
    port: int = attrs.field(validator=tcp_port(_OWNER))
    weight: float = attrs.field(default=1, kw_only=True, validator=positive_number(_OWNER))
    username: str | None = attrs.field(
        default=None, kw_only=True, validator=of_type(_OWNER, str, "a str", optional=True)
    )
    # The check names only the type of a bad password, never its value.
    password: str | None = attrs.field(
        default=None,
        kw_only=True,
        validator=of_type(_OWNER, str, "a str", optional=True),
        eq=False,
    )
    db: int = attrs.field(default=0, kw_only=True, validator=non_negative_int(_OWNER))
    tls: ssl.SSLContext | None = attrs.field(
        default=None,
        kw_only=True,
        validator=of_type(_OWNER, ssl.SSLContext, "an ssl.SSLContext", optional=True),
        eq=False,
    )
    tls_server_name: str | None = attrs.field(
        default=None, kw_only=True, validator=optional_non_empty_str(_OWNER), eq=False
    )

    @property
    def is_unix(self) -> bool:
        """Whether the node is reached over a Unix domain socket (``host`` is its path)."""
        return self.host.startswith("/")

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets), or ``unix:PATH`` for a socket."""
        if self.is_unix:
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        parts = [f"id={self.id!r}", f"host={self.host!r}", f"port={self.port!r}"]
        if self.weight != 1:
            parts.append(f"weight={self.weight!r}")
        if self.username is not None:
            parts.append(f"username={self.username!r}")
        if self.password is not None:
            parts.append("password='***'")
        if self.db:
            parts.append(f"db={self.db!r}")
        if self.tls is not None:
            parts.append("tls=<SSLContext>")
        if self.tls_server_name is not None:
            parts.append(f"tls_server_name={self.tls_server_name!r}")
        return f"NodeSpec({', '.join(parts)})"

    def url(self, *, with_password: bool = False) -> str:
        """The node as a ``redis://``, ``rediss://`` or ``unix://`` URL.

        The password is masked unless asked for. A TLS context's files are not part of
        the URL (only ``ssl_server_hostname``).
        """
        auth = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            if self.password is None:
                auth = f"{user}@"
            else:
                pw = quote(self.password, safe="") if with_password else "***"
                auth = f"{user}:{pw}@"
        query = [f"id={quote(self.id, safe='')}"]
        if self.weight != 1:
            query.append(f"weight={self.weight}")
        if self.tls_server_name is not None:
            query.append(f"ssl_server_hostname={quote(self.tls_server_name, safe='')}")
        if self.is_unix:
            if self.db:
                query.insert(0, f"db={self.db}")
            return f"unix://{auth}{quote(self.host)}?{'&'.join(query)}"
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{auth}{self.address}/{self.db}?{'&'.join(query)}"

    @classmethod
    def from_url(
        cls, url: str, *, tls: ssl.SSLContext | None = None, id: str | None = None
    ) -> NodeSpec:
        """Parse a node URL.

        ``redis://[user:pass@]host:port[/db][?weight=2&id=a]``, ``rediss://`` for TLS,
        ``unix://[user:pass@]/path/to/socket[?db=0&weight=2&id=a]`` for a Unix socket.
        The id defaults to ``host:port`` (the socket path for ``unix://``).

        A ``rediss://`` URL without an explicit ``tls`` context gets a verifying context
        built from its query, with redis-py's parameter names: ``ssl_ca_certs`` (CA
        file), ``ssl_ca_path`` (CA directory), ``ssl_certfile`` and ``ssl_keyfile`` (a
        client certificate), ``ssl_cert_reqs`` (``required``, the default, ``optional``
        or ``none``), ``ssl_check_hostname`` (``true``/``false``); and
        ``ssl_server_hostname``, the name the server's certificate must carry.

        >>> NodeSpec.from_url("redis://127.0.0.1:7000/0?weight=2&id=a")
        NodeSpec(id='a', host='127.0.0.1', port=7000, weight=2)
        >>> NodeSpec.from_url("unix:///run/redis.sock?db=1").address
        'unix:/run/redis.sock'
        """
        if not isinstance(url, str):
            raise ValueError(f"node URL must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            raise ValueError(
                f"node URL {url!r}: expected redis://host:port, rediss://host:port or "
                f"unix:///path, found {found}"
            )
        query = _parse_query(url, parts.query, unix=parts.scheme == "unix")
        host, port, db = (
            _unix_address(url, parts, query) if parts.scheme == "unix" else _tcp_address(url, parts)
        )
        weight = _weight(url, query)
        tls_options = {k: v for k, v in query.items() if k in _TLS_PARAMS}
        server_name = tls_options.pop("ssl_server_hostname", None)
        if parts.scheme != "rediss" and (tls_options or server_name is not None):
            raise ValueError(f"node URL {url!r}: ssl_* parameters need a rediss:// URL")
        if parts.scheme == "rediss" and tls is None:
            tls = _tls_context(url, tls_options)
        elif tls_options:
            raise ValueError(
                f"node URL {url!r}: pass either a tls context or ssl_* file parameters"
            )
        default_id = (
            host
            if parts.scheme == "unix"
            else f"[{host}]:{port}"
            if ":" in host
            else f"{host}:{port}"
        )
        return cls(
            id or query.get("id") or default_id,
            host,
            port,
            weight=weight,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            db=db,
            tls=tls,
            tls_server_name=server_name or None,
        )


_TLS_PARAMS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_server_hostname",
    }
)
_KNOWN_PARAMS = frozenset({"weight", "id"}) | _TLS_PARAMS


def _parse_query(url: str, raw: str, *, unix: bool) -> dict[str, str]:
    try:
        query = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError:
        raise ValueError(f"node URL {url!r}: malformed query string") from None
    known = _KNOWN_PARAMS | {"db"} if unix else _KNOWN_PARAMS
    for name, values in query.items():
        if name not in known:
            raise ValueError(f"node URL {url!r}: unknown query parameter {name!r}")
        if len(values) != 1:
            raise ValueError(f"node URL {url!r}: query parameter {name!r} given twice")
    return {name: values[0] for name, values in query.items()}


def _tcp_address(url: str, parts: SplitResult) -> tuple[str, int, int]:
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        given = parts.netloc.rpartition(":")[2]
        raise ValueError(f"node URL {url!r}: port {given!r} is not a number in 1..65535") from None
    if port == 0:
        raise ValueError(f"node URL {url!r}: port 0 is not a number in 1..65535")
    if not host:
        raise ValueError(f"node URL {url!r}: missing host")
    db = 0
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError(f"node URL {url!r}: database {path!r} is not a number")
        db = int(path)
    return host, 6379 if port is None else port, db


def _unix_address(url: str, parts: SplitResult, query: dict[str, str]) -> tuple[str, int, int]:
    if parts.hostname:
        raise ValueError(f"node URL {url!r}: a unix:// URL names no host: unix:///path/to/socket")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise ValueError(f"node URL {url!r}: missing the socket's absolute path")
    raw_db = query.get("db", "0")
    if not raw_db.isdigit():
        raise ValueError(f"node URL {url!r}: database {raw_db!r} is not a number")
    return path, 6379, int(raw_db)


def _weight(url: str, query: dict[str, str]) -> float:
    if "weight" not in query:
        return 1
    raw = query["weight"]
    try:
        weight: float = int(raw) if raw.isdigit() else float(raw)
    except ValueError:
        raise ValueError(f"node URL {url!r}: weight {raw!r} is not a number") from None
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"node URL {url!r}: weight {raw!r} must be finite and positive")
    return weight


_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _tls_context(url: str, options: dict[str, str]) -> ssl.SSLContext:
    """A client context from redis-py-named query parameters (files are read now)."""
    where = f"node URL {url!r}"
    return tls_context(
        ca_certs=options.get("ssl_ca_certs"),
        ca_path=options.get("ssl_ca_path"),
        certfile=options.get("ssl_certfile"),
        keyfile=options.get("ssl_keyfile"),
        cert_reqs=options.get("ssl_cert_reqs", "required"),
        check_hostname=_parse_bool(where, "ssl_check_hostname", options.get("ssl_check_hostname")),
        where=where,
    )


def _parse_bool(where: str, name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    value = _BOOLS.get(raw.lower())
    if value is None:
        raise ValueError(f"{where}: {name} must be true or false, got {raw!r}")
    return value


def tls_context(
    *,
    ca_certs: str | None = None,
    ca_path: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    cert_reqs: str = "required",
    check_hostname: bool | None = None,
    where: str = "TLS options",
) -> ssl.SSLContext:
    """A verifying client :class:`ssl.SSLContext` for a node.

    ``ca_certs``/``ca_path``: the CA file or directory to trust (default: the system's);
    ``certfile`` and ``keyfile``: a client certificate (``keyfile`` may be left out when
    the certificate file holds the key); ``cert_reqs``: ``"required"`` (default),
    ``"optional"`` or ``"none"`` (no verification at all); ``check_hostname``: default
    on unless ``cert_reqs`` is ``"none"``. A file that cannot be read or used raises
    ``ValueError`` naming it and ``where``.
    """
    if cert_reqs not in _CERT_REQS:
        raise ValueError(
            f"{where}: cert_reqs must be one of required, optional, none, got {cert_reqs!r}"
        )
    if keyfile is not None and certfile is None:
        raise ValueError(f"{where}: a client key needs its certificate (certfile)")
    try:
        context = ssl.create_default_context(cafile=ca_certs, capath=ca_path)
        if certfile is not None:
            context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (ca_certs, ca_path, certfile, keyfile) if f)
        raise ValueError(f"{where}: cannot use {files}: {exc}") from None
    verify = _CERT_REQS[cert_reqs]
    context.check_hostname = verify != ssl.CERT_NONE if check_hostname is None else check_hostname
    if context.check_hostname and verify == ssl.CERT_NONE:
        raise ValueError(f"{where}: check_hostname needs certificate verification")
    context.verify_mode = verify
    return context
