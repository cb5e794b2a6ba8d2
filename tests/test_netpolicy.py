"""Outbound address policy: pure checks, real name resolution, real HTTP(S) servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from confstream.netpolicy import (
    PolicyError,
    check_address,
    check_url,
    client_ssl_context,
    policy_client,
    policy_error_of,
    policy_get,
    resolve_checked,
)
from confstream.tools.tls import make_tls

LOOPBACK = ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.1",
        "ff02::1",
        "0.0.0.0",
        "::",
        "240.0.0.1",
        "100.64.0.1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 embedding 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 embedding 10.0.0.1
    ],
)
def test_refused_addresses(ip: str) -> None:
    with pytest.raises(PolicyError):
        check_address(ip, [])


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(ip: str) -> None:
    check_address(ip, [])


def test_allowed_networks_override() -> None:
    check_address("127.0.0.1", LOOPBACK)
    check_address("::1", LOOPBACK)
    check_address("::ffff:127.0.0.1", LOOPBACK)
    check_address("10.9.9.9", ["10.0.0.0/8"])
    with pytest.raises(PolicyError, match="private"):
        check_address("10.9.9.9", ["10.0.0.0/16"])
    with pytest.raises(PolicyError, match="loopback"):
        check_address("127.0.0.1", ["10.0.0.0/8"])
    with pytest.raises(PolicyError, match="not an IP"):
        check_address("example.com", [])


async def test_resolve_checked_literals_and_names() -> None:
    assert await resolve_checked("127.0.0.1", 443, LOOPBACK) == "127.0.0.1"
    assert await resolve_checked("[::1]", 443, LOOPBACK) == "::1"
    ip = await resolve_checked("localhost", 443, LOOPBACK)
    assert ip in ("127.0.0.1", "::1")
    with pytest.raises(PolicyError, match="localhost"):
        await resolve_checked("localhost", 443, [])
    # Only IPv4 loopback allowed: an IPv4 answer is picked even if ::1 comes first.
    assert await resolve_checked("localhost", 443, ["127.0.0.0/8"]) == "127.0.0.1"
    with pytest.raises(socket.gaierror):
        await resolve_checked("no-such-host.invalid", 443, LOOPBACK)


async def test_check_url() -> None:
    assert await check_url("http://127.0.0.1:9/x", LOOPBACK) == "127.0.0.1"
    with pytest.raises(PolicyError, match="scheme"):
        await check_url("ftp://127.0.0.1/x", LOOPBACK)
    with pytest.raises(PolicyError, match="no host"):
        await check_url("http:///x", LOOPBACK)
    with pytest.raises(PolicyError):
        await check_url("https://127.0.0.1/x", [])


@contextlib.asynccontextmanager
async def https_server(
    tmp_path: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> AsyncIterator[tuple[int, Path, list[bytes]]]:
    """A tiny real HTTPS/1.1 server on 127.0.0.1 answering 200 'hello'; yields (port, CA file,
    raw requests seen)."""
    tls = make_tls(tmp_path, hostnames)
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, tls.ca_file, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_policy_get_https_verifies_hostname_on_checked_ip(tmp_path: Path) -> None:
    async with https_server(tmp_path) as (port, ca_file, seen):
        resp = await policy_get(f"https://localhost:{port}/a", ["127.0.0.0/8"], ca_file=ca_file)
        assert resp.status_code == 200 and resp.text == "hello"
        assert b"host: localhost:" in seen[0].lower()
        # The system store alone does not trust the test CA: verification is on.
        with pytest.raises(httpx.ConnectError) as info:
            await policy_get(f"https://localhost:{port}/a", ["127.0.0.0/8"])
        assert isinstance(info.value.__context__ or info.value.__cause__, ssl.SSLError) or (
            "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        )
        # A certificate for localhost does not cover the IP literal.
        with pytest.raises(httpx.ConnectError):
            await policy_get(f"https://127.0.0.1:{port}/a", ["127.0.0.0/8"], ca_file=ca_file)
        # Refused address: nothing connects.
        n = len(seen)
        with pytest.raises(PolicyError):
            await policy_get(f"https://localhost:{port}/a", [], ca_file=ca_file)
        assert len(seen) == n


async def test_policy_client_error_carries_policy_error() -> None:
    client = policy_client([], timeout=2)
    try:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("http://127.0.0.1:9/")
        assert isinstance(policy_error_of(info.value), PolicyError)
    finally:
        await client.aclose()
    with pytest.raises(PolicyError):
        await policy_get("file:///etc/passwd", LOOPBACK)


def test_client_ssl_context_verifies() -> None:
    ctx = client_ssl_context(None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_redact_url_hides_credentials_and_query() -> None:
    from confstream.netpolicy import redact_url

    assert redact_url("https://user:pw@hooks.example.com:8443/cb?token=abc#x") == (
        "https://***@hooks.example.com:8443/cb?***"
    )
    assert redact_url("https://hooks.example.com/cb") == "https://hooks.example.com/cb"
