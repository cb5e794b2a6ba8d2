"""Test doubles and real peers for the SIP edge: an in-memory ConferenceGateway, a SipServer
fixture helper, and sipp scenario files written per call."""

from __future__ import annotations

import asyncio
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from confstream.conference.base import Participant
from confstream.conference.gateway import IncomingCall, JoinRefused
from confstream.rtp.ports import RtpPortPool
from confstream.settings import Settings
from confstream.sip.server import SipServer
from confstream.sip.transaction import TimerConfig
from confstream.tools.net import free_media_port, free_udp_port, rtp_port_bounds

ACCOUNT = "AC0f3b8e1c-1111-4aaa-8bbb-222233334444"
TOKEN = "secret-token-of-account-a"
OTHER_ACCOUNT = "AC-second-account"
OTHER_TOKEN = "token-b"


@dataclass
class MemoryGateway:
    """A ConferenceGateway kept in dicts: records every call the SIP edge makes."""

    tokens: dict[str, str] = field(
        default_factory=lambda: {ACCOUNT: TOKEN, OTHER_ACCOUNT: OTHER_TOKEN}
    )
    members: dict[str, Participant] = field(default_factory=dict)
    where: dict[str, tuple[str, str]] = field(default_factory=dict)
    joins: list[tuple[str, str, str]] = field(default_factory=list)
    incoming: list[IncomingCall] = field(default_factory=list)
    leaves: list[tuple[str, str]] = field(default_factory=list)
    holds: list[tuple[str, bool]] = field(default_factory=list)
    dtmf: list[tuple[str, str, int]] = field(default_factory=list)
    join_delay: dict[str, float] = field(default_factory=dict)
    refuse: dict[str, JoinRefused] = field(default_factory=dict)
    joined_event: asyncio.Event = field(default_factory=asyncio.Event)
    left_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def auth_token(self, account_sid: str) -> str | None:
        return self.tokens.get(account_sid)

    async def incoming_call(self, call: IncomingCall, participant: Participant) -> None:
        self.incoming.append(call)
        await self.join(call.account_sid, call.request_user, participant)

    async def join(self, account_sid: str, conference_name: str, participant: Participant) -> str:
        if conference_name in self.join_delay:
            await asyncio.sleep(self.join_delay[conference_name])
        if conference_name in self.refuse:
            raise self.refuse[conference_name]
        self.members[participant.call_sid] = participant
        self.where[participant.call_sid] = (account_sid, conference_name)
        self.joins.append((account_sid, conference_name, participant.call_sid))
        self.joined_event.set()
        return f"CF-{account_sid}-{conference_name}"

    async def leave(self, call_sid: str, reason: str) -> None:
        if self.members.pop(call_sid, None) is not None:
            self.leaves.append((call_sid, reason))
            self.left_event.set()

    def hold_changed(self, call_sid: str, hold: bool) -> None:
        self.holds.append((call_sid, hold))

    def dtmf_received(self, call_sid: str, digit: str, duration_ms: int) -> None:
        self.dtmf.append((call_sid, digit, duration_ms))


async def start_server(
    gateway: MemoryGateway,
    *,
    timers: TimerConfig | None = None,
    rtp_inactivity_timeout: float = 30.0,
    nonce_ttl: float = 300.0,
    pool_size: int = 400,
) -> tuple[SipServer, RtpPortPool]:
    low, high = rtp_port_bounds(pool_size)
    settings = Settings(
        sip_listen="127.0.0.1:0",
        rtp_ports=f"{low}-{high}",
        rtp_inactivity_timeout=rtp_inactivity_timeout,
        sip_nonce_ttl=nonce_ttl,
        # Offer both (MD5 first, for sipp 3.6) so the SHA-256 path is exercised too.
        sip_digest_algorithms=["MD5", "SHA-256"],
    )
    pool = RtpPortPool(low, high)
    server = SipServer(settings, gateway, pool, timers=timers or TimerConfig(t1=0.1, t4=0.5))
    await server.start()
    return server, pool


# ------------------------------------------------------------------------------------------
# sipp scenarios

SDP_SENDRECV = """\
v=0
o=sipp 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a={direction}
"""


def _sdp(direction: str = "sendrecv", connection: str | None = None) -> str:
    body = SDP_SENDRECV.format(direction=direction)
    if connection is not None:
        body = body.replace("c=IN IP4 [media_ip]", f"c=IN IP4 {connection}")
    return body


def _msg(text: str) -> str:
    inner = textwrap.indent(text, "      ")
    return f'  <send retrans="500">\n    <![CDATA[\n{inner}\n    ]]>\n  </send>\n'


def _plain_send(text: str) -> str:
    return f"  <send>\n    <![CDATA[\n{textwrap.indent(text, '      ')}\n    ]]>\n  </send>\n"


HEAD = """\
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch};rport
From: "sipp" <sip:[service]-caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
Call-ID: [call_id]
CSeq: {cseq} {method}
Max-Forwards: 70
"""


def invite(cseq: int, *, auth: bool, body: str | None = None, to_tag: str = "") -> str:
    head = HEAD.format(branch="[branch]", to_tag=to_tag, cseq=cseq, method="INVITE")
    text = f"INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n{head}"
    text += "Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
    if auth:
        text += "[authentication]\n"
    if body is None:
        body = _sdp()
    text += "Content-Type: application/sdp\nContent-Length: [len]\n\n" + body
    return text


def ack(
    cseq: int, branch: str = "[branch]", uri: str = "sip:[service]@[remote_ip]:[remote_port]"
) -> str:
    head = HEAD.format(branch=branch, to_tag="[peer_tag_param]", cseq=cseq, method="ACK")
    return f"ACK {uri} SIP/2.0\n{head}Content-Length: 0\n"


def in_dialog(method: str, cseq: int, body: str | None = None) -> str:
    head = HEAD.format(branch="[branch]", to_tag="[peer_tag_param]", cseq=cseq, method=method)
    text = f"{method} [next_url] SIP/2.0\n{head}"
    text += "Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
    if body is not None:
        return text + "Content-Type: application/sdp\nContent-Length: [len]\n\n" + body
    return text + "Content-Length: 0\n"


def answer_200() -> str:
    return (
        "SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
        "[last_CSeq:]\nContact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
        "Content-Length: 0\n"
    )


def authenticated_invite_prologue() -> str:
    """INVITE, 401, ACK (same branch as the INVITE: [branch-3]), authenticated INVITE (CSeq 2),
    100 (optional), 200 (Record-Route/Contact remembered), ACK."""
    return (
        _msg(invite(1, auth=False))
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="401" auth="true"/>\n'
        + _plain_send(ack(1, branch="[branch-3]"))
        + _msg(invite(2, auth=True))
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="200" rtd="true" rrs="true"/>\n'
        + _plain_send(ack(2, uri="[next_url]"))
    )


def scenario(body: str) -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="t">\n{body}</scenario>\n'


def write_scenario(path: Path, body: str) -> Path:
    path.write_text(scenario(body))
    return path


async def run_sipp(
    workdir: Path,
    scenario_file: Path,
    server_port: int,
    room: str,
    *,
    user: str = ACCOUNT,
    password: str = TOKEN,
    transport: str = "u1",
    calls: int = 1,
    rate: float | None = None,
    limit: int | None = None,
    seconds: float = 30.0,
) -> tuple[int, str]:
    """Run sipp to completion; returns (exit code, error log text)."""
    args = [
        "sipp", f"127.0.0.1:{server_port}", "-sf", str(scenario_file), "-s", room,
        "-au", user, "-ap", password, "-m", str(calls), "-i", "127.0.0.1",
        "-p", str(free_udp_port()), "-mp", str(free_media_port()), "-t", transport,
        "-timeout", f"{int(seconds)}", "-timeout_error", "-nostdin", "-trace_err",
        "-max_recv_loops", "10000",
    ]  # fmt: skip
    if rate is not None:
        args += ["-r", str(rate)]
    if limit is not None:
        args += ["-l", str(limit)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=workdir
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), seconds + 15)
    errors = "\n".join(
        p.read_text(errors="replace")
        for p in workdir.glob("*_errors.log")  # noqa: ASYNC240 - tiny files, test only
    )
    assert proc.returncode is not None
    return proc.returncode, stderr.decode(errors="replace") + errors
