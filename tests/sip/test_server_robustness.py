"""Hostile and heavy input against a live SipServer: malformed corpus over UDP and TCP, a raw
digest client (SHA-256, stale nonce, replay), 100 concurrent sipp calls, a sipvicious scan."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import sys
import time
from pathlib import Path

from confstream.sip.transaction import TimerConfig
from confstream.tools.metrics import sample

from .peers import (
    ACCOUNT,
    TOKEN,
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


def _bad_cseq(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind(("127.0.0.1", 0))
        s.sendto((GOOD_HEAD.format(n=10) + "CSeq: x\r\n\r\n").encode(), ("127.0.0.1", port))
        return s.recv(4096)


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
    before = sample("confstream_sip_parse_errors_total")
    try:
        await asyncio.get_running_loop().run_in_executor(None, _udp_blast, server.port)
        await _tcp_blast(server.port)
        # a 400 is sent where a Via could be read
        reply = await asyncio.get_running_loop().run_in_executor(None, _bad_cseq, server.port)
        assert reply.startswith(b"SIP/2.0 400 "), reply
        scen = write_scenario(tmp_path / "c.xml", CALL)
        code, log = await run_sipp(tmp_path, scen, server.port, "r")
        assert code == 0, log
        assert len(gateway.joins) == 1
    finally:
        await server.stop()
    assert sample("confstream_sip_parse_errors_total") - before >= 15
    assert pool.in_use == 0


async def test_load_100_concurrent_calls(tmp_path: Path) -> None:
    gateway = MemoryGateway()
    server, pool = await start_server(gateway, timers=TimerConfig(t1=0.05, t4=0.3))
    try:
        body = (
            authenticated_invite_prologue()
            + '  <pause milliseconds="5000"/>\n'
            + _msg(in_dialog("BYE", 3))
            + '  <recv response="200" crlf="true"/>\n'
        )
        scen = write_scenario(tmp_path / "load.xml", body)
        code, log = await run_sipp(
            tmp_path, scen, server.port, "load", calls=100, rate=25, limit=100, seconds=60
        )
        assert code == 0, log
        assert len(gateway.joins) == 100
        assert len({sid for _, _, sid in gateway.joins}) == 100
        for _ in range(100):  # Timer J/L (64*T1 = 3.2 s here) ends the last transactions
            if server.live_transactions == 0 and not server.calls and not gateway.members:
                break
            await asyncio.sleep(0.1)
        assert server.calls == {}
        assert server.live_transactions == 0
        assert gateway.members == {}
        assert len(gateway.leaves) == 100
        assert pool.in_use == 0
    finally:
        await server.stop()


async def test_sipvicious_scan_leaves_the_server_answering(tmp_path: Path) -> None:
    gateway = MemoryGateway()
    server, pool = await start_server(gateway)
    bindir = Path(sys.executable).parent
    try:
        for args in (
            ["sipvicious_svmap", "-p", str(server.port), "127.0.0.1"],
            ["sipvicious_svmap", "-m", "INVITE", "-p", str(server.port), "127.0.0.1"],
            ["sipvicious_svwar", "-e", "100-140", "-p", str(server.port), "127.0.0.1"],
            ["sipvicious_svwar", "-m", "INVITE", "-e", "100-120", "-p", str(server.port),
             "127.0.0.1"],
        ):  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                str(bindir / args[0]), *args[1:],
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            if args[0] == "sipvicious_svmap":
                assert b"confstream" in out, out  # it found us, via the Server header
        scen = write_scenario(tmp_path / "c.xml", CALL)
        code, log = await run_sipp(tmp_path, scen, server.port, "r")
        assert code == 0, log
    finally:
        await server.stop()
    assert pool.in_use == 0


# -- a raw digest client over UDP -----------------------------------------------------------


def _h(alg: str, text: str) -> str:
    return hashlib.new({"MD5": "md5", "SHA-256": "sha256"}[alg], text.encode()).hexdigest()


class RawCaller:
    """A minimal UAC on a blocking UDP socket (run in a thread): enough to test digest."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.local = self.sock.getsockname()[1]
        self.n = 0

    def request(self, method: str, cseq: int, extra: str = "", call_id: str = "raw1") -> str:
        """Send a request (a new branch each time) and return its final answer."""
        self.send(method, cseq, extra, call_id)
        while True:
            reply = self.sock.recv(65535).decode()
            # skip 100s and retransmitted answers to earlier requests (never ACKed here)
            if not reply.startswith("SIP/2.0 100") and f"CSeq: {cseq} " in reply:
                return reply

    def send(self, method: str, cseq: int, extra: str = "", call_id: str = "raw1") -> None:
        self.n += 1
        body = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 8\r\n"
        )
        msg = (
            f"{method} sip:room@127.0.0.1:{self.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.local};branch=z9hG4bKraw{self.n}\r\n"
            f"From: <sip:me@127.0.0.1>;tag=raw\r\nTo: <sip:room@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:me@127.0.0.1:{self.local}>\r\n{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )
        self.sock.sendto(msg.encode(), ("127.0.0.1", self.port))

    def authorization(self, challenge: str, alg: str, password: str, nc: str = "00000001") -> str:
        nonce = re.search(r'nonce="([^"]+)"', challenge)
        assert nonce is not None
        uri = f"sip:room@127.0.0.1:{self.port}"
        ha1 = _h(alg, f"{ACCOUNT}:confstream:{password}")
        ha2 = _h(alg, f"INVITE:{uri}")
        resp = _h(alg, f"{ha1}:{nonce.group(1)}:{nc}:c0ffee:auth:{ha2}")
        return (
            f'Authorization: Digest username="{ACCOUNT}", realm="confstream", '
            f'nonce="{nonce.group(1)}", uri="{uri}", response="{resp}", algorithm={alg}, '
            f'qop=auth, nc={nc}, cnonce="c0ffee"\r\n'
        )


def _sha256_flow(port: int) -> list[str]:
    caller = RawCaller(port)
    try:
        first = caller.request("INVITE", 1)
        challenge = next(line for line in first.split("\r\n") if "algorithm=SHA-256" in line)
        ok = caller.request("INVITE", 2, caller.authorization(challenge, "SHA-256", TOKEN))
        replay = caller.request(
            "INVITE", 3, caller.authorization(challenge, "SHA-256", TOKEN), call_id="raw2"
        )
        return [first, ok, replay]
    finally:
        caller.sock.close()


def _stale_flow(port: int) -> str:
    caller = RawCaller(port)
    try:
        first = caller.request("INVITE", 1)
        challenge = next(line for line in first.split("\r\n") if "algorithm=MD5" in line)
        time.sleep(1.2)  # nonce_ttl is 1 s in this test
        return caller.request("INVITE", 2, caller.authorization(challenge, "MD5", TOKEN))
    finally:
        caller.sock.close()


async def test_sha256_digest_and_nc_replay_refused() -> None:
    gateway = MemoryGateway()
    server, _ = await start_server(gateway)
    try:
        loop = asyncio.get_running_loop()
        first, ok, replay = await loop.run_in_executor(None, _sha256_flow, server.port)
        assert first.startswith("SIP/2.0 401 ")
        assert ok.startswith("SIP/2.0 200 "), ok
        assert "a=rtpmap:8 PCMA/8000" in ok
        assert replay.startswith("SIP/2.0 403 "), replay
        assert len(gateway.joins) == 1
    finally:
        await server.stop()


async def test_expired_nonce_gets_stale_challenge() -> None:
    gateway = MemoryGateway()
    server, _ = await start_server(gateway, nonce_ttl=1.0)
    try:
        reply = await asyncio.get_running_loop().run_in_executor(None, _stale_flow, server.port)
        assert reply.startswith("SIP/2.0 401 "), reply
        assert "stale=true" in reply
        assert gateway.joins == []
    finally:
        await server.stop()


def _merged_flow(port: int) -> str:
    """The authenticated INVITE, then the same request (Call-ID, From tag, CSeq) with another
    branch, as if it came by a second route, while the first is still joining."""
    caller = RawCaller(port)
    try:
        first = caller.request("INVITE", 1)
        challenge = next(line for line in first.split("\r\n") if "algorithm=MD5" in line)
        auth = caller.authorization(challenge, "MD5", TOKEN)
        caller.send("INVITE", 2, auth)
        return caller.request("INVITE", 2, auth)  # the copy: a new branch
    finally:
        caller.sock.close()


async def test_a_second_copy_of_an_invite_is_refused_482_and_makes_no_second_call() -> None:
    gateway = MemoryGateway(join_delay={"room": 1.0})
    server, _ = await start_server(gateway)
    try:
        reply = await asyncio.get_running_loop().run_in_executor(None, _merged_flow, server.port)
        assert reply.startswith("SIP/2.0 482 "), reply
        await asyncio.wait_for(gateway.joined_event.wait(), 30)
        await asyncio.sleep(1.5)  # a second join would have come after the same delay
        assert len(gateway.joins) == 1
    finally:
        await server.stop()
