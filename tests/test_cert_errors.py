"""TLS failures say which check failed (netpolicy.tls_failure_message): streams (31910) and
status callbacks, against real TLS servers with trustme certificates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from confstream.callbacks.webhooks import Callback, CallbackSender
from confstream.conference.engine import Engine
from confstream.netpolicy import (
    client_ssl_context,
    describe_connect_error,
    tls_failure_message,
    tls_failure_reason,
)
from confstream.settings import Settings
from confstream.streams.failures import Failure
from confstream.streams.session import StreamSession
from confstream.streams.spec import StreamSpec

LOOPBACK = ["127.0.0.0/8", "::1/128"]

# kind -> (what the message must say, OpenSSL's X509 error number)
EXPECTED = {
    "untrusted": ("unable to get local issuer certificate", 20),
    "expired": ("certificate has expired", 10),
    "wrong-host": ("Hostname mismatch, certificate is not valid for 'localhost'", 62),
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("certs") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def server_context(ca: trustme.CA, kind: str) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    if kind == "untrusted":
        cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    elif kind == "expired":
        cert = ca.issue_cert(
            "localhost",
            "127.0.0.1",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
    elif kind == "wrong-host":
        cert = ca.issue_cert("other.example")
    else:
        cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that closes every connection after the handshake."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@pytest.fixture(autouse=True)
def quiet_asyncio(caplog: pytest.LogCaptureFixture) -> None:
    # The servers' side of each failed handshake is logged by asyncio; not what is tested.
    caplog.set_level(logging.CRITICAL, logger="asyncio")


@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_handshake_failure_message_names_the_check(
    ca_file: tuple[trustme.CA, Path], kind: str
) -> None:
    ca, path = ca_file
    async with tls_server(server_context(ca, kind)) as port:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ssl_context(path), server_hostname="localhost"
            )
    words, code = EXPECTED[kind]
    message = tls_failure_message(info.value, "localhost", port)
    assert message == (
        f"TLS handshake with localhost:{port} failed: "
        f"certificate verification failed: {words} (X509 error {code})"
    )
    assert "CERTIFICATE_VERIFY_FAILED" not in message


async def test_a_trusted_certificate_connects(ca_file: tuple[trustme.CA, Path]) -> None:
    """The control case: the same servers with a valid certificate are accepted."""
    ca, path = ca_file
    async with tls_server(server_context(ca, "good")) as port:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(path), server_hostname="localhost"
        )
        writer.close()


async def test_non_certificate_tls_errors_give_their_reason() -> None:
    """A plain-TCP peer answering garbage: not a certificate problem, OpenSSL's reason."""

    async def junk(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLError) as info:
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ssl_context(), server_hostname="localhost"
            )
    finally:
        server.close()
    assert not isinstance(info.value, ssl.SSLCertVerificationError)
    assert tls_failure_reason(info.value) == info.value.reason
    assert "failed: " + str(info.value.reason) in tls_failure_message(info.value, "h", 1)
    wrapped = ConnectionError("outer")
    wrapped.__cause__ = info.value
    assert describe_connect_error(wrapped) == f"TLS: {info.value.reason}"
    assert describe_connect_error(TimeoutError()) == "TimeoutError"


def stream_spec(url: str) -> StreamSpec:
    return StreamSpec(
        sid=str(uuid.uuid4()),
        account_sid=str(uuid.uuid4()),
        auth_token="token-for-cert-tests",
        conference_sid=str(uuid.uuid4()),
        url=url,
    )


@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_stream_error_31910_names_the_check(
    ca_file: tuple[trustme.CA, Path], kind: str
) -> None:
    ca, path = ca_file
    settings = Settings(allowed_networks=LOOPBACK, stream_ca_file=path, stream_connect_timeout=5.0)
    async with tls_server(server_context(ca, kind)) as port:
        spec = stream_spec(f"wss://localhost:{port}/media")
        # Connecting comes before any audio: a conference that is not clocked is enough.
        session = StreamSession(spec, settings, Engine().add_conference(spec.source_sid))

        async def never_started() -> None:
            raise AssertionError("the stream must not start")

        outcome = await asyncio.wait_for(session.run(never_started), 10)
    words, code = EXPECTED[kind]
    assert outcome.error_code == 31910
    assert outcome.stream_error == Failure.TLS_FAILED.stream_error
    assert outcome.error_message == (
        f"TLS handshake with localhost:{port} failed: "
        f"certificate verification failed: {words} (X509 error {code})"
    )


@pytest.mark.parametrize("kind", ["expired", "wrong-host"])
async def test_callback_failure_log_names_the_check(
    ca_file: tuple[trustme.CA, Path], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca, path = ca_file
    settings = Settings(
        allowed_networks=LOOPBACK, stream_ca_file=path, callback_retries=0, callback_timeout=5.0
    )
    caplog.set_level(logging.INFO, logger="confstream.callbacks.webhooks")
    async with tls_server(server_context(ca, kind)) as port:
        sender = CallbackSender(settings)
        sender.send("S", Callback(f"https://localhost:{port}/cb", "POST", {"a": "b"}, "t" * 32))
        assert await sender.flush(10)
        await sender.close()
    words, _ = EXPECTED[kind]
    failed = [r.getMessage() for r in caplog.records if "failed (attempt 1)" in r.getMessage()]
    assert failed == [
        f"status callback https://localhost:{port}/cb failed (attempt 1): "
        f"TLS: certificate verification failed: {words} (X509 error {EXPECTED[kind][1]})"
    ]
