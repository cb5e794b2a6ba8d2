"""SIP transport limits against a live SipServer on uvloop, with raw sockets as peers: TCP
connections that stay silent, trickle or send garbage are closed; the connection cap; a peer
that does not read; the UDP receive buffer."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from confstream.rtp.ports import RtpPortPool
from confstream.settings import Settings
from confstream.sip.server import SipServer
from confstream.sip.transaction import TimerConfig
from confstream.sip.transport import MAX_BAD_MESSAGES
from confstream.tools.metrics import sample
from confstream.tools.net import rtp_port_bounds

from .peers import MemoryGateway


async def _server(**limits: object) -> SipServer:
    low, high = rtp_port_bounds(40)
    settings = Settings(sip_listen="127.0.0.1:0", rtp_ports=f"{low}-{high}", **limits)  # type: ignore[arg-type]
    server = SipServer(
        settings, MemoryGateway(), RtpPortPool(low, high), timers=TimerConfig(t1=0.1, t4=0.5)
    )
    await server.start()
    return server


@pytest.fixture
async def server() -> AsyncIterator[SipServer]:
    srv = await _server(sip_tcp_first_message_timeout=0.5, sip_tcp_idle_timeout=1.5)
    yield srv
    await srv.stop()


def options(n: int, transport: str = "TCP") -> bytes:
    return (
        f"OPTIONS sip:r@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bKlim{n}\r\n"
        f"From: <sip:a@b>;tag=1\r\nTo: <sip:r@127.0.0.1>\r\nCall-ID: lim{n}\r\n"
        f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (EOF or reset), reading what comes."""
    start = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), limit):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def closed_count(reason: str) -> float:
    return sample("confstream_sip_tcp_closed_total", reason=reason)


async def test_silent_tcp_connection_is_closed_after_the_first_message_timeout(
    server: SipServer,
) -> None:
    before = closed_count("no_message")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    took = await closed_after(reader, 5)
    writer.close()
    assert 0.4 < took < 1.5, took
    assert closed_count("no_message") == before + 1
    assert server.transport.tcp_connections == 0


async def test_trickled_bytes_do_not_extend_the_first_message_deadline(
    server: SipServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def trickle() -> None:
        for byte in b"OPTIONS sip:r@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    took = await closed_after(reader, 5)
    task.cancel()
    writer.close()
    assert 0.4 < took < 1.5, took


async def test_garbage_messages_close_the_connection(server: SipServer) -> None:
    before = closed_count("bad_messages")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"hello there\r\n\r\n" * MAX_BAD_MESSAGES)
    took = await closed_after(reader, 5)
    writer.close()
    assert took < 0.4, took  # at once, not at the first-message deadline
    assert closed_count("bad_messages") == before + 1


async def test_garbage_below_the_bad_message_limit_does_not_keep_it_open(
    server: SipServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"hello there\r\n\r\n")
    took = await closed_after(reader, 5)
    writer.close()
    assert 0.4 < took < 1.5, took


async def test_valid_message_then_idle_timeout(server: SipServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(options(1))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"SIP/2.0 200 ")
    await asyncio.sleep(1.0)  # past the first-message timeout: a proven connection stays
    writer.write(options(2))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"SIP/2.0 200 ")
    took = await closed_after(reader, 5)  # then silence: idle timeout (1.5 s)
    writer.close()
    assert 1.2 < took < 2.5, took


async def test_connection_cap() -> None:
    server = await _server(sip_tcp_max_connections=3, sip_tcp_first_message_timeout=5.0)
    before = closed_count("limit")
    conns = []
    try:
        for _ in range(3):
            conns.append(await asyncio.open_connection("127.0.0.1", server.port))
        await asyncio.sleep(0.1)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_after(extra_reader, 2) < 0.5
        extra_writer.close()
        assert closed_count("limit") == before + 1
        for n, (reader, writer) in enumerate(conns):
            writer.write(options(10 + n))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"SIP/2.0 200 ")
        assert server.transport.tcp_connections == 3
    finally:
        for _, writer in conns:
            writer.close()
        await server.stop()


def _flood_without_reading(port: int, count: int) -> int:
    """Send up to ``count`` OPTIONS on one connection without reading the answers; returns
    how many were sent before the server closed the connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.settimeout(5)
        for n in range(count):
            try:
                s.sendall(options(100000 + n))
            except OSError:
                return n
        return count


async def test_peer_that_does_not_read_is_disconnected() -> None:
    server = await _server(sip_tcp_max_write_buffer=4096)
    before = closed_count("write_buffer")
    try:
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(None, _flood_without_reading, server.port, 40000)
        assert sent < 40000  # the server hung up on us
        assert closed_count("write_buffer") == before + 1
    finally:
        await server.stop()


async def test_udp_receive_buffer_is_set_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="confstream.sip.transport")
    server = await _server(sip_udp_rcvbuf=1024 * 1024)
    try:
        # Linux reports twice the usable size it granted
        assert server.transport.udp_rcvbuf >= 1024 * 1024
        assert sample("confstream_sip_udp_rcvbuf_bytes") == server.transport.udp_rcvbuf
        assert any(
            "SIP UDP receive buffer: 1048576 bytes requested" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await server.stop()


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


async def test_udp_receive_buffer_request_beyond_the_kernel_cap_is_logged_as_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rmem_max = _rmem_max()
    wanted = 4 * rmem_max
    caplog.set_level(logging.INFO, logger="confstream.sip.transport")
    server = await _server(sip_udp_rcvbuf=wanted)
    try:
        assert server.transport.udp_rcvbuf <= 2 * rmem_max
        assert any("capped" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop()
