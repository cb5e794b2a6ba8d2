"""RTP hijack, injection and port reuse after a crash (docs/sip.md, "RTP security"), against
``confstream serve`` in a subprocess with real peers: a sipp caller, callers of our own over
real UDP sockets (they report the server's RTP port from the SDP answer and record what they
hear), an attacker on another loopback address (127.0.0.2: Linux routes all of 127.0.0.0/8 to
lo), and a wss:// stream receiver (trustme chain)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from confstream.media.analysis import tone, tone_levels
from confstream.media.g711 import ulaw_decode, ulaw_encode
from confstream.sip.digest import compute_response
from confstream.tools.server import Account, ServerProcess, rtp_port_range

from ..streams.peers import Tls, ws_receiver
from .peers import await_for, conference_named, start_sipp_caller

VICTIM_HZ, OTHER_HZ, ATTACK_HZ = 440.0, 660.0, 1000.0
HOST = "127.0.0.1"
ATTACKER_HOST = "127.0.0.2"


def small_rtp_range(even_ports: int) -> tuple[int, int]:
    """``even_ports`` even ports at a random place of the range ServerProcess uses (outside
    the ephemeral ports), so that parallel test runs rarely share them."""
    low, high = map(int, rtp_port_range().split("-"))
    low += low & 1
    start = low + 2 * secrets.randbelow((high - low) // 2 - even_ports)
    return start, start + 2 * even_ports - 1


def rtp(seq: int, ssrc: int, codes: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + codes


def tone_packets(freq: float) -> list[bytes]:
    """One second of a µ-law tone as 50 payloads of 20 ms (loops seamlessly: whole periods)."""
    codes = ulaw_encode(tone(freq, 1.0, amplitude=8000)).tobytes()
    return [codes[i : i + 160] for i in range(0, 8000, 160)]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self.queue.put_nowait(data)


@dataclass
class Caller:
    """A SIP caller of our own: INVITE with digest over UDP, then a µ-law tone every 20 ms
    from its media socket to the server's RTP port, recording every RTP payload it gets."""

    sip_port: int
    account: Account
    room: str
    freq: float
    status: int = 0
    server_rtp_port: int = 0
    _sip: asyncio.DatagramTransport | None = None
    _sip_in: _Udp = field(default_factory=_Udp)
    _media: asyncio.DatagramTransport | None = None
    _media_in: _Udp = field(default_factory=_Udp)
    _sender: asyncio.Task[None] | None = None
    _call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    _to_tag: str = ""

    async def dial(self) -> int:
        """INVITE, answer the challenge, ACK; returns the final status. On 200 media starts."""
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: self._sip_in, local_addr=(HOST, 0)
        )
        self._media, _ = await loop.create_datagram_endpoint(
            lambda: self._media_in, local_addr=(HOST, 0)
        )
        reply = await self._transact("INVITE", 1, sdp=True)
        if reply.startswith("SIP/2.0 401"):
            self._ack(1, reply)
            challenge = _header(reply, "WWW-Authenticate")
            reply = await self._transact("INVITE", 2, sdp=True, auth=self._digest(challenge))
        self.status = int(reply.split()[1])
        self._ack(2, reply)
        if self.status == 200:
            port = re.search(r"^m=audio (\d+) ", reply, re.MULTILINE)
            assert port is not None, reply
            self.server_rtp_port = int(port.group(1))
            self._sender = asyncio.create_task(self._send_tone())
        return self.status

    @property
    def uri(self) -> str:
        return f"sip:{self.room}@{HOST}:{self.sip_port}"

    def _request(self, method: str, cseq: int, *, sdp: bool = False, auth: str = "") -> bytes:
        assert self._sip is not None and self._media is not None
        local = self._sip.get_extra_info("sockname")[1]
        media = self._media.get_extra_info("sockname")[1]
        body = (
            f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {media} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            if sdp
            else ""
        )
        to_tag = f";tag={self._to_tag}" if self._to_tag and method != "INVITE" else ""
        head = [
            f"{method} {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{secrets.token_hex(6)};rport",
            f"From: <sip:caller@{HOST}>;tag=uac{self._call_id[:6]}",
            f"To: <{self.uri}>{to_tag}",
            f"Call-ID: {self._call_id}",
            f"CSeq: {cseq} {'INVITE' if method == 'ACK' else method}",
            f"Contact: <sip:caller@{HOST}:{local}>",
            "Max-Forwards: 70",
            *([auth] if auth else []),
            *(["Content-Type: application/sdp"] if sdp else []),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(head) + "\r\n\r\n" + body).encode()

    async def _transact(self, method: str, cseq: int, **kw: Any) -> str:
        assert self._sip is not None
        request = self._request(method, cseq, **kw)
        for _ in range(6):  # UDP: retransmit until a final response
            self._sip.sendto(request, (HOST, self.sip_port))
            try:
                async with asyncio.timeout(2):
                    while True:
                        reply = (await self._sip_in.queue.get()).decode()
                        if f"CSeq: {cseq} {method}" in reply and not reply.startswith("SIP/2.0 1"):
                            return reply
            except TimeoutError:
                continue
        raise AssertionError(f"no final response to {method}")

    def _ack(self, cseq: int, reply: str) -> None:
        assert self._sip is not None
        tag = re.search(r"^To:.*;tag=([^;\s]+)", reply, re.MULTILINE | re.IGNORECASE)
        self._to_tag = tag.group(1) if tag else ""
        self._sip.sendto(self._request("ACK", cseq), (HOST, self.sip_port))

    def _digest(self, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
        response = compute_response(
            algorithm=params.get("algorithm", "MD5"),
            username=self.account.sid,
            realm=params["realm"],
            password=self.account.token,
            method="INVITE",
            uri=self.uri,
            nonce=params["nonce"],
            nc="00000001",
            cnonce="c0ffee",
            qop="auth",
        )
        return (
            f'Authorization: Digest username="{self.account.sid}", realm="{params["realm"]}", '
            f'nonce="{params["nonce"]}", uri="{self.uri}", response="{response}", '
            f'algorithm={params.get("algorithm", "MD5")}, qop=auth, nc=00000001, cnonce="c0ffee"'
        )

    async def _send_tone(self) -> None:
        assert self._media is not None
        packets, ssrc = tone_packets(self.freq), secrets.randbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for seq in range(100_000):
            self._media.sendto(rtp(seq, ssrc, packets[seq % 50]), (HOST, self.server_rtp_port))
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))

    def heard(self) -> np.ndarray:
        """Every audio payload received so far, decoded, in arrival order."""
        payloads = [d[12:] for d, _ in self._media_in.received if len(d) > 12]
        return ulaw_decode(np.frombuffer(b"".join(payloads), np.uint8))

    async def stop_media(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    async def close(self) -> None:
        await self.stop_media()
        for t in (self._sip, self._media):
            if t is not None:
                t.close()


def _header(message: str, name: str) -> str:
    found = re.search(rf"^{name}:\s*(.+)$", message, re.MULTILINE | re.IGNORECASE)
    assert found is not None, message
    return found.group(1).strip()


@dataclass
class Attacker:
    """A socket on 127.0.0.2 that sprays a 1000 Hz tone at every even port of the range every
    20 ms and records anything sent back to it."""

    low: int
    high: int
    proto: _Udp = field(default_factory=_Udp)
    sent: int = 0


@contextlib.asynccontextmanager
async def spraying(low: int, high: int) -> AsyncIterator[Attacker]:
    attacker = Attacker(low, high)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: attacker.proto, local_addr=(ATTACKER_HOST, 0)
    )
    packets, ssrc = tone_packets(ATTACK_HZ), secrets.randbits(32)

    async def spray() -> None:
        seq = 0
        while True:
            data = rtp(seq, ssrc, packets[seq % 50])
            for port in range(low + (low & 1), high + 1, 2):
                transport.sendto(data, (HOST, port))
                attacker.sent += 1
            seq += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(spray())
    try:
        yield attacker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        transport.close()


def rejected_total(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base}/metrics").text
    found = re.search(
        r'^confstream_rtp_packets_rejected_total\{reason="source"\} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def _attacker_can_bind() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ATTACKER_HOST, 0))
        except OSError:
            return False
    return True


needs_second_loopback = pytest.mark.skipif(
    not _attacker_can_bind(), reason="127.0.0.2 is not usable as a source address here"
)


@needs_second_loopback
async def test_rtp_sprayed_from_another_address_gets_no_audio_and_is_not_mixed_in(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    low, high = small_rtp_range(16)
    server.env["CONFSTREAM_RTP_PORTS"] = f"{low}-{high}"
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    account = server.create_account()
    server.start()
    async with spraying(low, high) as attacker, ws_receiver(tls) as rec:
        # The attacker sprays before, during and after the callers' first packets.
        await asyncio.sleep(0.3)
        victim = await start_sipp_caller(tmp_path, server.sip_port, account, "board", VICTIM_HZ, 8)
        other = Caller(server.sip_port, account, "board", OTHER_HZ)
        try:
            assert await other.dial() == 200
            assert low <= other.server_rtp_port <= high
            with server.api(account) as api:
                conf = await await_for(lambda: conference_named(api, "board"))

                def two_live() -> bool:
                    parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
                    return len(parts["participants"]) == 2

                await await_for(two_live)
                created = await asyncio.to_thread(
                    api.post,
                    f"/Conferences/{conf['sid']}/Streams.json",
                    data={"Url": rec.url("/media", host="localhost"), "StreamCodec": "PCMU"},
                )
                assert created.status_code == 200, created.text
            await rec.wait_for(
                lambda: rec.conns and len(rec.conns[0].events("media")) > 400, timeout=20
            )
            heard_by_other = other.heard()
        finally:
            await other.close()
            with contextlib.suppress(ProcessLookupError):
                victim.kill()
            await victim.wait()
        rejected = rejected_total(server)

    # Nothing of the conference reached the attacker: no latch was stolen.
    assert attacker.sent > 1000
    assert attacker.proto.received == []
    # Its tone is not in the conference: not on the stream's inbound track (the callers) ...
    inbound = np.concatenate(
        [
            ulaw_decode(np.frombuffer(base64.b64decode(m["media"]["payload"]), np.uint8))
            for m in rec.conns[0].events("media")
            if m["media"]["track"] == "inbound"
        ]
    )
    middle = inbound[len(inbound) // 4 :]
    levels = tone_levels(middle, (VICTIM_HZ, OTHER_HZ, ATTACK_HZ), 8000)
    assert levels[VICTIM_HZ] > 0.1 and levels[OTHER_HZ] > 0.1, levels
    assert levels[ATTACK_HZ] < 0.002, levels
    # ... nor in what the other caller hears; that caller does hear the victim.
    assert len(heard_by_other) > 8000, "the caller heard nothing"
    got = tone_levels(heard_by_other[len(heard_by_other) // 4 :], (VICTIM_HZ, ATTACK_HZ), 8000)
    assert got[VICTIM_HZ] > 0.1 and got[ATTACK_HZ] < 0.002, got
    # Every sprayed datagram that reached a call's port was dropped and counted.
    assert rejected > 100


async def test_after_kill_9_the_old_calls_port_is_quarantined(server: ServerProcess) -> None:
    low, high = small_rtp_range(2)  # two ports: the old call's and one other
    quarantine = 12.0
    server.env["CONFSTREAM_RTP_PORTS"] = f"{low}-{high}"
    server.env["CONFSTREAM_RTP_PORT_QUARANTINE"] = str(quarantine)
    account_a = server.create_account("--friendly-name", "a")
    account_b = server.create_account("--friendly-name", "b")
    server.start()
    old = Caller(server.sip_port, account_a, "alpha", VICTIM_HZ)
    new: list[Caller] = []
    try:
        assert await old.dial() == 200
        old_port = old.server_rtp_port
        server.stop(kill=True)  # no BYE: the old phone keeps sending to old_port
        server.proc = None
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(server.start)
        started = loop.time()

        b = Caller(server.sip_port, account_b, "beta", OTHER_HZ)
        new.append(b)
        assert await b.dial() == 200
        assert b.server_rtp_port != old_port
        assert low <= b.server_rtp_port <= high
        # The only other port is quarantined: the next caller is refused, not given it.
        c = Caller(server.sip_port, account_b, "beta", OTHER_HZ)
        new.append(c)
        assert await c.dial() == 503
        assert loop.time() - started < quarantine, "the machine is too slow for this test"
        assert "quarantined" in server.log_tail(80)

        # After the quarantine (and once the old phone is gone) the port is used again.
        await old.stop_media()
        await asyncio.sleep(max(0.0, started + quarantine + 0.5 - loop.time()))
        d = Caller(server.sip_port, account_b, "beta", OTHER_HZ)
        new.append(d)
        assert await d.dial() == 200
        assert d.server_rtp_port == old_port
    finally:
        await old.close()
        for caller in new:
            await caller.close()
