"""Node configuration: where a cache server lives and how to log in to it."""

from __future__ import annotations

import math
import ssl
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import attrs

__all__ = ["NodeSpec"]


def _check_id(_inst: object, _attr: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"NodeSpec.id must be a non-empty str, got {value!r}")


def _check_host(_inst: object, _attr: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"NodeSpec.host must be a non-empty str, got {value!r}")


def _check_port(_inst: object, _attr: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"NodeSpec.port must be an int in 1..65535, got {value!r}")


def _check_weight(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"NodeSpec.weight must be a finite positive number, got {value!r}")


def _check_db(_inst: object, _attr: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"NodeSpec.db must be a non-negative int, got {value!r}")


def _check_optional_str(field: str) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[str | None], value: object) -> None:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"NodeSpec.{field} must be a str or None, got {type(value).__name__}")

    return check


def _check_tls(_inst: object, _attr: attrs.Attribute[ssl.SSLContext | None], value: object) -> None:
    if value is not None and not isinstance(value, ssl.SSLContext):
        raise ValueError(
            f"NodeSpec.tls must be an ssl.SSLContext or None, got {type(value).__name__}"
        )


@attrs.frozen(repr=False)
class NodeSpec:
    """One cache server: its id (the name on the ring), address, weight and credentials.

    >>> NodeSpec("a", "127.0.0.1", 6379, weight=2)
    NodeSpec(id='a', host='127.0.0.1', port=6379, weight=2)

    The password never appears in the repr.
    """

    id: str = attrs.field(validator=_check_id)
    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    weight: float = attrs.field(default=1, kw_only=True, validator=_check_weight)
    username: str | None = attrs.field(
        default=None, kw_only=True, validator=_check_optional_str("username")
    )
    password: str | None = attrs.field(
        default=None, kw_only=True, validator=_check_optional_str("password"), eq=False
    )
    db: int = attrs.field(default=0, kw_only=True, validator=_check_db)
    tls: ssl.SSLContext | None = attrs.field(
        default=None, kw_only=True, validator=_check_tls, eq=False
    )

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets)."""
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
        return f"NodeSpec({', '.join(parts)})"

    def url(self, *, with_password: bool = False) -> str:
        """The node as a ``redis://`` or ``rediss://`` URL (password masked unless asked)."""
        scheme = "rediss" if self.tls is not None else "redis"
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
        return f"{scheme}://{auth}{self.address}/{self.db}?{'&'.join(query)}"

    @classmethod
    def from_url(
        cls, url: str, *, tls: ssl.SSLContext | None = None, id: str | None = None
    ) -> NodeSpec:
        """Parse ``redis://[user:pass@]host:port[/db][?weight=2&id=a]`` (``rediss://`` for TLS).

        The id defaults to ``host:port``. For ``rediss://`` URLs without an explicit
        ``tls`` context, a default verifying context is created.

        >>> NodeSpec.from_url("redis://127.0.0.1:7000/0?weight=2&id=a")
        NodeSpec(id='a', host='127.0.0.1', port=7000, weight=2)
        """
        if not isinstance(url, str):
            raise ValueError(f"node URL must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            raise ValueError(
                f"node URL {url!r}: expected redis://host:port or rediss://host:port, found {found}"
            )
        try:
            host = parts.hostname
            port = parts.port
        except ValueError:
            given = parts.netloc.rpartition(":")[2]
            raise ValueError(
                f"node URL {url!r}: port {given!r} is not a number in 1..65535"
            ) from None
        if port == 0:
            raise ValueError(f"node URL {url!r}: port 0 is not a number in 1..65535")
        if not host:
            raise ValueError(f"node URL {url!r}: missing host")
        if port is None:
            port = 6379
        db = 0
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"node URL {url!r}: database {path!r} is not a number")
            db = int(path)
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError(f"node URL {url!r}: malformed query string") from None
        known = {"weight", "id"}
        for name, values in query.items():
            if name not in known:
                raise ValueError(f"node URL {url!r}: unknown query parameter {name!r}")
            if len(values) != 1:
                raise ValueError(f"node URL {url!r}: query parameter {name!r} given twice")
        weight: float = 1
        if "weight" in query:
            raw = query["weight"][0]
            try:
                weight = int(raw) if raw.isdigit() else float(raw)
            except ValueError:
                raise ValueError(f"node URL {url!r}: weight {raw!r} is not a number") from None
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"node URL {url!r}: weight {raw!r} must be finite and positive")
        default_id = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        node_id = id or (query["id"][0] if "id" in query else None) or default_id
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if parts.scheme == "rediss" and tls is None:
            tls = ssl.create_default_context()
        return cls(
            node_id,
            host,
            port,
            weight=weight,
            username=username,
            password=password,
            db=db,
            tls=tls,
        )
