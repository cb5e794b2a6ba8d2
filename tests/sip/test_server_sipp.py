"""The SIP edge against real sipp processes (UDP and TCP), with an in-memory gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from confstream.conference.gateway import JoinRefused
from confstream.sip.server import SipServer

from .peers import (
    ACCOUNT,
    MemoryGateway,
    _msg,
    _plain_send,
    _sdp,
    ack,
    answer_200,
    authenticated_invite_prologue,
    in_dialog,
    invite,
    run_sipp,
    start_server,
    write_scenario,
)


@pytest.fixture
async def gateway() -> MemoryGateway:
    return MemoryGateway()


@pytest.fixture
async def server(gateway: MemoryGateway):  # type: ignore[no-untyped-def]
    srv, pool = await start_server(gateway)
    yield srv
    await srv.stop()
    assert pool.in_use == 0


BYE_FROM_CALLER = (
    authenticated_invite_prologue()
    + '  <pause milliseconds="300"/>\n'
    + _msg(in_dialog("BYE", 3))
    + '  <recv response="200" crlf="true"/>\n'
)


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_call_with_bye_from_caller(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway, transport: str
) -> None:
    scen = write_scenario(tmp_path / "call.xml", BYE_FROM_CALLER)
    code, log = await run_sipp(tmp_path, scen, server.port, "my%20room", transport=transport)
    assert code == 0, log
    assert len(gateway.joins) == 1
    account, room, call_sid = gateway.joins[0]
    assert (account, room) == (ACCOUNT, "my room")
    await asyncio.wait_for(gateway.left_event.wait(), 2)
    assert gateway.leaves == [(call_sid, "caller-bye")]
    assert server.calls == {}


def _check(response: str, regexp: str, var: str, where: str = "msg") -> str:
    return (
        f'  <recv response="{response}">\n    <action>\n'
        f'      <ereg regexp="{regexp}" search_in="{where}" check_it="true" assign_to="{var}"/>\n'
        "    </action>\n  </recv>\n"
    )


def _refs(*names: str) -> str:
    return f'  <Reference variables="{",".join(names)}"/>\n'


async def test_invite_without_credentials_is_challenged_with_md5_and_sha256(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    body = (
        _msg(invite(1, auth=False))
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="401">\n    <action>\n'
        '      <ereg regexp="WWW-Authenticate: Digest [^\\r\\n]*algorithm=MD5[^\\r\\n]*qop=.auth"'
        ' search_in="msg" check_it="true" assign_to="md5"/>\n'
        '      <ereg regexp="WWW-Authenticate: Digest [^\\r\\n]*algorithm=SHA-256"'
        ' search_in="msg" check_it="true" assign_to="sha"/>\n'
        "    </action>\n  </recv>\n"
        + _plain_send(ack(1, branch="[branch-3]"))
        + _refs("md5", "sha")
    )
    code, log = await run_sipp(tmp_path, write_scenario(tmp_path / "s.xml", body), server.port, "r")
    assert code == 0, log
    assert gateway.joins == []


def _auth_then(final: str, sdp: str | None = None) -> str:
    """INVITE, 401, ACK, INVITE with credentials, expect ``final``, ACK it."""
    return (
        _msg(invite(1, auth=False))
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="401" auth="true"/>\n'
        + _plain_send(ack(1, branch="[branch-3]"))
        + _msg(invite(2, auth=True, body=sdp))
        + '  <recv response="100" optional="true"/>\n'
        + f'  <recv response="{final}"/>\n'
        + _plain_send(ack(2, branch="[branch-3]"))
    )


@pytest.mark.parametrize(("user", "password"), [(ACCOUNT, "wrong"), ("AC-nobody", "whatever")])
async def test_wrong_credentials_get_403(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway, user: str, password: str
) -> None:
    scen = write_scenario(tmp_path / "s.xml", _auth_then("403"))
    code, log = await run_sipp(tmp_path, scen, server.port, "r", user=user, password=password)
    assert code == 0, log
    assert gateway.joins == []


async def test_join_refused_sends_its_status(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    gateway.refuse["ended"] = JoinRefused("conference completed", 404)
    scen = write_scenario(tmp_path / "s.xml", _auth_then("404"))
    code, log = await run_sipp(tmp_path, scen, server.port, "ended")
    assert code == 0, log
    await asyncio.sleep(0.05)
    assert server.calls == {}


async def test_no_common_codec_gets_488(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    g729 = (
        "v=0\no=sipp 1 1 IN IP4 [local_ip]\ns=-\nc=IN IP4 [media_ip]\nt=0 0\n"
        "m=audio [media_port] RTP/AVP 18\na=rtpmap:18 G729/8000\n"
    )
    body = _auth_then("488", g729)
    code, log = await run_sipp(tmp_path, write_scenario(tmp_path / "s.xml", body), server.port, "r")
    assert code == 0, log
    assert gateway.joins == []


async def test_other_account_joins_its_own_conference(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    from .peers import OTHER_ACCOUNT, OTHER_TOKEN

    scen = write_scenario(tmp_path / "call.xml", BYE_FROM_CALLER)
    code, log = await run_sipp(
        tmp_path, scen, server.port, "room", user=OTHER_ACCOUNT, password=OTHER_TOKEN
    )
    assert code == 0, log
    assert [(a, r) for a, r, _ in gateway.joins] == [(OTHER_ACCOUNT, "room")]


SERVER_BYE = (
    authenticated_invite_prologue()
    + '  <recv request="BYE"/>\n'
    + _plain_send(answer_200())
    + '  <pause milliseconds="200"/>\n'
)


async def test_bye_from_server_on_participant_hangup(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    scen = write_scenario(tmp_path / "s.xml", SERVER_BYE)
    task = asyncio.create_task(run_sipp(tmp_path, scen, server.port, "r", transport="u1"))
    await asyncio.wait_for(gateway.joined_event.wait(), 10)
    call_sid = gateway.joins[0][2]
    assert call_sid in server.calls
    await asyncio.sleep(0.3)  # let the ACK arrive (a BYE before the ACK is deferred anyway)
    gateway.members[call_sid].hangup("removed")
    code, log = await task
    assert code == 0, log
    assert gateway.leaves == [(call_sid, "removed")]
    assert server.calls == {}


async def test_rtp_inactivity_hangs_up_with_bye(tmp_path: Path, gateway: MemoryGateway) -> None:
    server, pool = await start_server(gateway, rtp_inactivity_timeout=1.0)
    try:
        scen = write_scenario(tmp_path / "s.xml", SERVER_BYE)
        code, log = await run_sipp(tmp_path, scen, server.port, "r")
        assert code == 0, log
        assert [reason for _, reason in gateway.leaves] == ["rtp-timeout"]
    finally:
        await server.stop()
    assert pool.in_use == 0


async def test_cancel_answers_487_and_leaves(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    gateway.join_delay["slow"] = 1.0
    cancel = (
        "CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n"
        # [branch-3]: the INVITE's branch (100 and the pause come between)
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport\n"
        'From: "sipp" <sip:[service]-caller@[local_ip]:[local_port]>'
        ";tag=[pid]SIPpTag00[call_number]\n"
        "To: <sip:[service]@[remote_ip]:[remote_port]>\n"
        "Call-ID: [call_id]\nCSeq: 2 CANCEL\nMax-Forwards: 70\nContent-Length: 0\n"
    )
    body = (
        _msg(invite(1, auth=False))
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="401" auth="true"/>\n'
        + _plain_send(ack(1, branch="[branch-3]"))
        + _msg(invite(2, auth=True))
        + '  <recv response="100"/>\n'
        + '  <pause milliseconds="300"/>\n'  # the join (1 s) is now under way
        + _msg(cancel)
        + '  <recv response="200"/>\n'
        + '  <recv response="487"/>\n'
        + _plain_send(ack(2, branch="[branch-6]"))
        + '  <pause milliseconds="1500"/>\n'
    )
    code, log = await run_sipp(
        tmp_path, write_scenario(tmp_path / "s.xml", body), server.port, "slow"
    )
    assert code == 0, log
    assert len(gateway.joins) == 1
    assert gateway.leaves == [(gateway.joins[0][2], "cancelled")]
    assert server.calls == {}


async def test_options_and_unserved_methods(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    def request(method: str, cseq: int) -> str:
        return (
            f"{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n"
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
            "From: <sip:probe@[local_ip]:[local_port]>;tag=[call_number]x\n"
            "To: <sip:[service]@[remote_ip]:[remote_port]>\n"
            f"Call-ID: [call_id]\nCSeq: {cseq} {method}\nMax-Forwards: 70\n"
            "Contact: <sip:probe@[local_ip]:[local_port]>\nContent-Length: 0\n"
        )

    body = (
        _msg(request("OPTIONS", 1))
        + _check("200", "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS", "a1")
        + _msg(request("REGISTER", 2))
        + _check("405", "Allow: INVITE", "a2")
        + _msg(request("FROBNICATE", 3))
        + '  <recv response="501"/>\n'
        + _refs("a1", "a2")
    )
    code, log = await run_sipp(tmp_path, write_scenario(tmp_path / "s.xml", body), server.port, "r")
    assert code == 0, log


async def test_reinvite_hold_and_resume(
    tmp_path: Path, server: SipServer, gateway: MemoryGateway
) -> None:
    def reinvite(cseq: int, sdp: str, expect: str, var: str) -> str:
        return (
            _msg(in_dialog("INVITE", cseq, sdp))
            + '  <recv response="100" optional="true"/>\n'
            + _check("200", expect, var, "body")
            + _plain_send(ack(cseq, uri="[next_url]"))
        )

    body = (
        authenticated_invite_prologue()
        + reinvite(3, _sdp("sendonly"), "a=recvonly", "h1")
        + reinvite(4, _sdp("sendrecv"), "a=sendrecv", "h2")
        + reinvite(5, _sdp("sendrecv", connection="0.0.0.0"), "a=recvonly", "h3")
        + reinvite(6, _sdp("inactive"), "a=inactive", "h4")
        + _msg(in_dialog("BYE", 7))
        + '  <recv response="200"/>\n'
        + _refs("h1", "h2", "h3", "h4")
    )
    code, log = await run_sipp(tmp_path, write_scenario(tmp_path / "s.xml", body), server.port, "r")
    assert code == 0, log
    call_sid = gateway.joins[0][2]
    assert gateway.holds == [(call_sid, True), (call_sid, False), (call_sid, True)]
