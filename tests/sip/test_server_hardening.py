"""SIP hardening against ``confstream serve`` in a subprocess (it runs on uvloop): sipp joins
over TCP and UDP, an unauthenticated INVITE that is never ACKed draws exactly one 401, and a
wrong-password flood from one source is throttled while a correct caller elsewhere joins."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from confstream.tools.server import Account, ServerProcess

from .peers import _msg, authenticated_invite_prologue, in_dialog, run_sipp, write_scenario

REALM = "confstream"


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path)
    yield srv
    if srv.proc is not None:
        srv.stop()


CALL = (
    authenticated_invite_prologue()
    + '  <pause milliseconds="2500"/>\n'
    + _msg(in_dialog("BYE", 3))
    + '  <recv response="200" crlf="true"/>\n'
)


def live_participants(api: httpx.Client, room: str) -> list[dict[str, Any]]:
    confs = api.get("/Conferences.json", params={"FriendlyName": room}).json()["conferences"]
    if not confs:
        return []
    parts = api.get(f"/Conferences/{confs[0]['sid']}/Participants.json").json()
    return [p for p in parts["participants"] if p["status"] == "connected"]


async def join_with_sipp(
    srv: ServerProcess, account: Account, room: str, workdir: Path, transport: str
) -> None:
    """A sipp caller joins ``room``; the API shows it in the conference while it is up."""
    scen = write_scenario(workdir / "call.xml", CALL)
    task = asyncio.create_task(
        run_sipp(
            workdir,
            scen,
            srv.sip_port,
            room,
            user=account.sid,
            password=account.token,
            transport=transport,
        )
    )
    seen: list[dict[str, Any]] = []
    with srv.api(account) as api:
        deadline = time.monotonic() + 15
        while not seen and not task.done() and time.monotonic() < deadline:
            seen = await asyncio.to_thread(live_participants, api, room)
            await asyncio.sleep(0.1)
    code, log = await task
    assert code == 0, log
    assert len(seen) == 1, seen


@pytest.mark.parametrize("transport", ["t1", "u1"])
async def test_sipp_joins_a_conference(proc: ServerProcess, tmp_path: Path, transport: str) -> None:
    account = proc.create_account()
    proc.start()
    # silent TCP connections first: they must neither break the listener nor log tracebacks
    silent = [await asyncio.open_connection("127.0.0.1", proc.sip_port) for _ in range(20)]
    await join_with_sipp(proc, account, f"room-{transport}", tmp_path, transport)
    for _, writer in silent:
        writer.close()
    log = proc.log_tail(400)
    assert "Traceback" not in log, log
    assert "SIP UDP receive buffer: 4194304 bytes requested" in log, log


# -- a raw UDP client ------------------------------------------------------------------------


def _h(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # the SIP digest hash (RFC 2617)


class RawUac:
    """A UAC on a blocking UDP (or TCP) socket bound to ``source``, for use in threads."""

    def __init__(self, port: int, source: str = "127.0.0.1", tcp: bool = False) -> None:
        self.port = port
        self.tcp = tcp
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((source, 0))
        self.source = source
        self.local = self.sock.getsockname()[1]
        if tcp:
            self.sock.connect(("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()

    def invite(self, room: str, auth: str = "", pad: int = 0) -> bytes:
        body = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        body += "".join(f"a=x-pad:{'p' * 70}\r\n" for _ in range(pad // 80))
        transport = "TCP" if self.tcp else "UDP"
        msg = (
            f"INVITE sip:{room}@127.0.0.1:{self.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {self.source}:{self.local};branch=z9hG4bK{uuid.uuid4().hex}"
            f";rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:caller@{self.source}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{room}@127.0.0.1>\r\nCall-ID: {uuid.uuid4()}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@{self.source}:{self.local}>\r\n{auth}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        if self.tcp:
            self.sock.sendall(msg)
        else:
            self.sock.sendto(msg, ("127.0.0.1", self.port))
        return msg

    def replies(self, seconds: float) -> list[bytes]:
        """Everything that arrives within ``seconds``."""
        out: list[bytes] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            if not data:
                break
            out.append(data)
        return out

    def final(self, seconds: float = 5.0) -> bytes | None:
        """The first non-100 response within ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return None
            if not data.startswith(b"SIP/2.0 100 "):
                return data
        return None

    def authorization(self, challenge: bytes, room: str, user: str, password: str, nc: int) -> str:
        found = re.search(rb'nonce="([^"]+)"', challenge)
        assert found is not None, challenge
        nonce = found.group(1).decode()
        uri = f"sip:{room}@127.0.0.1:{self.port}"
        ha1 = _h(f"{user}:{REALM}:{password}")
        ha2 = _h(f"INVITE:{uri}")
        ncs = f"{nc:08x}"
        resp = _h(f"{ha1}:{nonce}:{ncs}:c0ffee:auth:{ha2}")
        return (
            f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc={ncs}, '
            f'cnonce="c0ffee"\r\n'
        )


def _never_acked(port: int) -> tuple[bytes, list[bytes], bytes, list[bytes]]:
    """A typical INVITE and a 60 KB one, each sent once and never ACKed; everything that comes
    back within 9 s: a transaction that retransmitted its final answer (Timer G, T1 = 0.5 s)
    would have sent it again at 0.5, 1.5, 3.5 and 7.5 s."""
    small, big = RawUac(port), RawUac(port)
    try:
        small_invite = small.invite("quiet")
        big_invite = big.invite("quiet", pad=60_000)
        small_replies = small.replies(9.0)
        big_replies = big.replies(0.1)  # by now, everything has arrived on both sockets
        return small_invite, small_replies, big_invite, big_replies
    finally:
        small.close()
        big.close()


async def test_unacked_unauthenticated_invite_gets_exactly_one_401(proc: ServerProcess) -> None:
    proc.start()
    small_invite, small_replies, big_invite, big_replies = await asyncio.to_thread(
        _never_acked, proc.sip_port
    )
    assert len(big_invite) > 60_000
    for invite, replies in ((small_invite, small_replies), (big_invite, big_replies)):
        assert len(replies) == 1, replies
        assert replies[0].startswith(b"SIP/2.0 401 "), replies[0]
        # never an amplifier: the challenge is no bigger than what drew it
        assert len(replies[0]) <= len(invite), (len(replies[0]), len(invite))
    assert len(big_replies[0]) < 1000


def _flood(port: int, account: Account, attempts: int) -> dict[str, Any]:
    """From 127.0.0.3: one challenge, then ``attempts`` wrong passwords; then the right one
    over UDP and over TCP."""
    uac = RawUac(port, source="127.0.0.3")
    result: dict[str, Any] = {}
    try:
        uac.invite("guess")
        challenge = uac.final()
        assert challenge is not None and challenge.startswith(b"SIP/2.0 401 "), challenge
        answers: list[bytes | None] = []
        for n in range(1, attempts + 1):
            auth = uac.authorization(challenge, "guess", account.sid, f"guess-{n}", n)
            uac.invite("guess", auth)
            answers.append(uac.final(1.0 if n <= 5 else 0.05))
        result["answers"] = answers
        uac.invite("guess", uac.authorization(challenge, "guess", account.sid, account.token, 99))
        result["right_password_udp"] = uac.replies(1.0)
    finally:
        uac.close()
    tcp = RawUac(port, source="127.0.0.3", tcp=True)
    try:
        tcp.invite("guess", tcp.authorization(challenge, "guess", account.sid, account.token, 100))
        result["right_password_tcp"] = tcp.final(3.0)
    finally:
        tcp.close()
    return result


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_wrong_password_flood_is_throttled_and_others_still_join(
    proc: ServerProcess, tmp_path: Path
) -> None:
    proc.env.update(
        CONFSTREAM_SIP_AUTH_MAX_FAILURES="5",
        CONFSTREAM_SIP_AUTH_FAILURE_WINDOW="60",
        CONFSTREAM_SIP_AUTH_BLOCK_SECONDS="120",
    )
    account = proc.create_account()
    proc.start()
    result = await asyncio.to_thread(_flood, proc.sip_port, account, 40)

    answers = result["answers"]
    assert all(a is not None and a.startswith(b"SIP/2.0 403 ") for a in answers[:5]), answers[:5]
    assert answers[5:] == [None] * 35  # blocked: dropped over UDP, unread
    assert result["right_password_udp"] == []  # a blocked source is not even checked
    tcp_answer = result["right_password_tcp"]
    assert tcp_answer is not None and tcp_answer.startswith(b"SIP/2.0 403 "), tcp_answer
    assert b"Retry-After: 120" in tcp_answer

    text = (await asyncio.to_thread(httpx.get, f"{proc.base}/metrics")).text
    assert _metric(text, "confstream_sip_auth_blocks_total") == 1
    assert _metric(text, "confstream_sip_auth_throttled_total") == 37  # 35 + right pw twice
    assert _metric(text, 'confstream_sip_auth_failures_total{reason="bad_credentials"}') == 5
    log = proc.log_tail(400)
    assert "SIP digest: blocking 127.0.0.3 for 120 s after 5 failed attempts within 60 s" in log
    assert log.count("SIP digest: blocking") == 1

    # a correct caller from another source (127.0.0.1) still joins
    await join_with_sipp(proc, account, "after-flood", tmp_path, "u1")
