"""Answers to unauthenticated requests never amplify over UDP: a SipServer on uvloop offering
both digest algorithms (a 455-byte 401) against raw sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from confstream.sip.server import AMPLIFICATION_LIMIT, SipServer
from confstream.tools.metrics import sample

from .peers import MemoryGateway, start_server

TINY = (
    "INVITE sip:r@h SIP/2.0\r\nVia: SIP/2.0/{t} 127.0.0.1:{p};branch=z9hG4bK{b}\r\n"
    "From: <sip:a@h>;tag=1\r\nTo: <sip:r@h>\r\nCall-ID: {b}\r\nCSeq: 1 INVITE\r\n\r\n"
)


@pytest.fixture
async def server() -> AsyncIterator[SipServer]:
    srv, _ = await start_server(MemoryGateway())
    yield srv
    await srv.stop()


def _udp_exchange(port: int, datagrams: list[bytes], wait: float) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
        for d in datagrams:
            s.sendto(d.replace(b"{p}", str(local).encode()), ("127.0.0.1", port))
            time.sleep(0.2)  # a retransmission, not a copy racing the first one
        out = []
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                out.append(s.recv(65535))
            except TimeoutError:
                break
        return out


def suppressed() -> float:
    return sample("confstream_sip_responses_suppressed_total")


async def test_tiny_udp_invite_draws_no_oversized_401(server: SipServer) -> None:
    tiny = TINY.format(t="UDP", p="{p}", b="1").encode()
    before = suppressed()
    # the INVITE and a retransmission of it: neither is answered
    replies = await asyncio.to_thread(_udp_exchange, server.port, [tiny, tiny], 1.0)
    assert replies == []
    assert suppressed() == before + 2
    # padded to a size where the 401 is within the limit, it is answered once
    # (a new request: the same Call-ID and CSeq from another port would be merged, 482)
    padded = TINY.format(t="UDP", p="{p}", b="2").encode()
    padded = padded.replace(b"\r\n\r\n", b"\r\nSubject: " + b"x" * 120 + b"\r\n\r\n")
    replies = await asyncio.to_thread(_udp_exchange, server.port, [padded], 1.0)
    assert len(replies) == 1 and replies[0].startswith(b"SIP/2.0 401 "), replies
    assert len(replies[0]) <= AMPLIFICATION_LIMIT * len(padded)
    assert len(replies[0]) > AMPLIFICATION_LIMIT * len(tiny)  # so the first one was held back


async def test_tiny_tcp_invite_is_challenged(server: SipServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(TINY.format(t="TCP", p=5999, b="2").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"SIP/2.0 401 ")
    finally:
        writer.close()
