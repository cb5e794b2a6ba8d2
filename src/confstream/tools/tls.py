"""A throwaway certificate authority for local ``wss://`` and ``https://`` peers.

Streams and status callbacks verify certificates (docs/api.md, docs/operations.md): a local
receiver needs a certificate chain the server trusts. :func:`make_tls` makes a CA with
``trustme``, writes the CA certificate to a PEM file (what ``CONFSTREAM_STREAM_CA_FILE`` points
at) and issues a server certificate for the given host names (default ``localhost``,
``127.0.0.1`` and ``::1``).

``trustme`` is a development dependency (the ``dev`` extra): it is imported only when a CA is
made, so importing this module, or :func:`load_server_context` for PEM files written earlier
(the benchmark's sink runs in its own process), does not need it, and ``make run`` never does.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme

#: The names a test server certificate covers unless told otherwise.
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Tls:
    """A CA (``ca``), its certificate as a PEM file (``ca_file``) and a server SSL context
    (``server_ctx``) holding a certificate that CA issued."""

    ca: trustme.CA
    ca_file: Path
    server_ctx: ssl.SSLContext

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        """A new server context with a certificate for exactly ``hostnames``."""
        return server_context(self.ca, hostnames or DEFAULT_HOSTNAMES)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and verifies host names)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx

    def write_server_pem(
        self, directory: Path, *hostnames: str, name: str = "server"
    ) -> tuple[Path, Path]:
        """Issue a certificate for ``hostnames`` and write ``<name>-chain.pem`` (certificate and
        chain) and ``<name>-key.pem`` in ``directory``; returns (chain file, key file), ready
        for :func:`load_server_context` in another process."""
        cert = self.ca.issue_cert(*(hostnames or DEFAULT_HOSTNAMES))
        chain, key = directory / f"{name}-chain.pem", directory / f"{name}-key.pem"
        with chain.open("wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        cert.private_key_pem.write_to_path(str(key))
        return chain, key


def server_context(ca: trustme.CA, hostnames: Sequence[str] = DEFAULT_HOSTNAMES) -> ssl.SSLContext:
    """A server SSL context with a certificate ``ca`` issues for ``hostnames``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hostnames).configure_cert(ctx)
    return ctx


def make_tls(
    directory: Path, hostnames: Sequence[str] = DEFAULT_HOSTNAMES, *, ca_name: str = "ca.pem"
) -> Tls:
    """A new CA with its certificate written to ``directory / ca_name`` and a server context
    for ``hostnames``. Needs ``trustme`` (the ``dev`` extra)."""
    import trustme

    ca = trustme.CA()
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / ca_name
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca, ca_file, server_context(ca, hostnames))


def load_server_context(chain: Path, key: Path) -> ssl.SSLContext:
    """A server SSL context from PEM files (see :meth:`Tls.write_server_pem`)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(chain), str(key))
    return ctx
