"""Throw-away TLS certificates for local servers: a CA, a server certificate, optionally a
client certificate, all made on the fly by ``trustme`` and written as PEM files."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs

from ..errors import ServerStartError

__all__ = ["Certificates", "make_certificates"]


@attrs.frozen
class Certificates:
    """Where the PEM files are, and a client context that trusts the CA (and presents
    the client certificate, when one was made)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None
    client_key: Path | None
    client_context: ssl.SSLContext


def make_certificates(directory: Path, hosts: tuple[str, ...], *, client: bool) -> Certificates:
    """Write ``ca.crt``, ``server.crt``/``server.key`` (for ``hosts``) and, with
    ``client``, ``client.crt``/``client.key`` into ``directory``.

    Raises:
        ServerStartError: the ``trustme`` package is not installed.
    """
    try:
        import trustme
    except ImportError as exc:
        raise ServerStartError(
            "tls=True needs the trustme package: pip install 'cachering[local]'"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*hosts)
    paths = {name: directory / name for name in ("ca.crt", "server.crt", "server.key")}
    ca.cert_pem.write_to_path(str(paths["ca.crt"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server.crt"]))
    server.private_key_pem.write_to_path(str(paths["server.key"]))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    client_cert = client_key = None
    if client:
        issued = ca.issue_cert("cachering-client@example.org")
        client_cert, client_key = directory / "client.crt", directory / "client.key"
        issued.cert_chain_pems[0].write_to_path(str(client_cert))
        issued.private_key_pem.write_to_path(str(client_key))
        context.load_cert_chain(str(client_cert), str(client_key))
    return Certificates(
        ca=paths["ca.crt"],
        server_cert=paths["server.crt"],
        server_key=paths["server.key"],
        client_cert=client_cert,
        client_key=client_key,
        client_context=context,
    )
