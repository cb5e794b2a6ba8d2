"""Hostile and heavy input against a live SipServer: malformed corpus over UDP and TCP, a raw
digest client (SHA-256, stale nonce, replay), 100 concurrent sipp calls, a sipvicious scan."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from confstream import metrics

from .peers import (
    MemoryGateway,
    _msg,
    authenticated_invite_prologue,
    in_dialog,
    run_sipp,
    start_server,
    write_scenario,
)

CALL = (
    authenticated_invite_prologue()
    + '  <pause milliseconds="200"/>\n'
    + _msg(in_dialog("BYE", 3))
    + '  <recv response="200" crlf="true"/>\n'
)

GOOD_HEAD = (
    "OPTIONS sip:r@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx{n}\r\n"
    "From: <sip:a@b>;tag=1\r\nTo: <sip:r@127.0.0.1>\r\nCall-ID: c{n}\r\nCSeq: 1 OPTIONS\r\n"
)

CORPUS: list[bytes] = [
    b"",
    b"\r\n\r\n",
    b"\x00" * 100,
    b"garbage",
    b"INVITE\r\n\r\n",
    b"INVITE sip:x SIP/3.0\r\n\r\n",
    b"SIP/2.0 200 OK\r\n\r\n",
    b"SIP/2.0 999999 Huge\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nCSeq: 1 BYE\r\n\r\n",
    (GOOD_HEAD.format(n=1) + "Content-Length: 99999\r\n\r\nshort").encode(),
    (GOOD_HEAD.format(n=2) + "Content-Length: -1\r\n\r\n").encode(),
    (GOOD_HEAD.format(n=3) + "CSeq: x\r\n\r\n").encode(),
    GOOD_HEAD.format(n=4).replace("CSeq: 1 OPTIONS", "CSeq: 99999999999 OPTIONS").encode()
    + b"\r\n",
    GOOD_HEAD.format(n=5).replace("Via: SIP/2.0/UDP", "Via: SIP/9/ZZZ").encode() + b"\r\n",
    GOOD_HEAD.format(n=6).replace("<sip:a@b>", "<sip:a@b").encode() + b"\r\n",
    (GOOD_HEAD.format(n=7) + "X: \xff\xfe\r\n\r\n").encode("latin-1"),
    (GOOD_HEAD.format(n=8) + "".join(f"X-{i}: {i}\r\n" for i in range(500)) + "\r\n").encode(),
    (GOOD_HEAD.format(n=9) + " folded-without-name\r\n\r\n").encode(),
    b"INVITE sip:r@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq\r\n"
    b"From: <sip:a@b>\r\nTo: <sip:r@h>\r\nCall-ID: q\r\nCSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 7\r\n\r\nv=0\r\nm=",
    b"ACK sip:x SIP/2.0\r\nVia: broken\r\n\r\n",
    b"BYE sip:r@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKb\r\n"
    b"f: <sip:a@b>;tag=1\r\nt: <sip:r@h>;tag=nope\r\ni: nope\r\nCSeq: 1 BYE\r\n\r\n",
    b"X" * 70000,
]


def _udp_blast(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for item in CORPUS:
            try:
                s.sendto(item, ("127.0.0.1", port))
            except OSError:
                pass  # too large for a datagram: fine


async def _tcp_blast(port: int) -> None:
    for item in [*CORPUS, b"INVITE sip:x SIP/2.0\r\nContent-Length: 9999999\r\n\r\n"]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(item + b"\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(4096), 0.2)
        except TimeoutError:
            pass
        writer.close()


async def test_malformed_corpus_then_a_call_still_works(tmp_path: Path) -> None:
    gateway = MemoryGateway()
    server, pool = await start_server(gateway)
    before = metrics.SIP_PARSE_ERRORS._value.get()
    try:
        await asyncio.get_running_loop().run_in_executor(None, _udp_blast, server.port)
        await _tcp_blast(server.port)
        # a 400 is sent where a Via could be read
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.bind(("127.0.0.1", 0))
            s.sendto(
                (GOOD_HEAD.format(n=10) + "CSeq: x\r\n\r\n").encode(), ("127.0.0.1", server.port)
            )
            assert s.recv(4096).startswith(b"SIP/2.0 400 ")
        code, log = await run_sipp(
            tmp_path, write_scenario(tmp_path / "c.xml", CALL), server.port, "r"
        )
        assert code == 0, log
        assert len(gateway.joins) == 1
    finally:
        await server.stop()
    assert metrics.SIP_PARSE_ERRORS._value.get() - before >= 15
    assert pool.in_use == 0
