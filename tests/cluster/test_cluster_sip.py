"""SIP through the real Kamailio (docs/sip.md "Behind a proxy", docs/cluster.md): the node
keeps Kamailio in the dialog (Record-Route in its 200), so the caller's ACK and BYE and the
node's own BYE all go through Kamailio; the node believes Kamailio's Via record of the caller's
address, so a caller guessing passwords is blocked, not Kamailio (and not every caller behind
it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from confstream.sip.message import SipRequest, SipResponse, parse_message
from confstream.tools.cluster import LocalCluster
from confstream.tools.server import Account

from ..integration.peers import await_for
from ..sip.test_server_hardening import RawUac
from .conftest import GUESSES_BEFORE_BLOCK
from .helpers import apis, conference, owner_of, participants, start_hung_up_caller


async def test_a_caller_kicked_through_the_other_node_gets_the_bye_through_kamailio(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    account = cluster.create_account()
    # the node holds its BYE until the caller's ACK arrives (or 32 s pass): a BYE within 25 s
    # of the ACK means the ACK went through Kamailio too
    proc = await start_hung_up_caller(tmp_path, cluster, account, "kicked", 25.0)
    clients = apis(cluster, account)
    try:
        conf = await await_for(lambda: conference(clients["node-1"], "kicked"), within=20)
        owner = owner_of(cluster, conf["sid"])
        other = clients["node-2" if owner == "node-1" else "node-1"]
        (caller,) = participants(other, conf["sid"])
        kicked = await asyncio.to_thread(
            other.delete, f"/Conferences/{conf['sid']}/Participants/{caller['call_sid']}.json"
        )
        assert kicked.status_code == 204, kicked.text
        _, stderr = await asyncio.wait_for(proc.communicate(), 40)
        assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    finally:
        for client in clients.values():
            client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _ack(uac: RawUac, invite: bytes, response: bytes) -> None:
    """The ACK of a final non-2xx (RFC 3261 §17.1.1.3), so Kamailio stops resending it."""
    request, answer = parse_message(invite), parse_message(response)
    assert isinstance(request, SipRequest) and isinstance(answer, SipResponse)
    lines = [
        f"ACK {request.uri} SIP/2.0",
        f"Via: {request.headers.get('via')}",
        f"From: {request.headers.get('from')}",
        f"To: {answer.headers.get('to')}",
        f"Call-ID: {request.call_id}",
        "CSeq: 1 ACK",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    uac.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), ("127.0.0.1", uac.port))


def _final(uac: RawUac, invite: bytes) -> bytes:
    answer = uac.final(10.0)
    assert answer is not None, "no answer through Kamailio"
    if not answer.startswith(b"SIP/2.0 2"):
        _ack(uac, invite, answer)
    return answer


def _guess(port: int, account: Account, room: str) -> tuple[list[bytes], bytes]:
    """From 127.0.0.2 through Kamailio: wrong passwords until blocked, then one more INVITE."""
    uac = RawUac(port, source="127.0.0.2")
    try:
        invite = uac.invite(room)
        challenge = _final(uac, invite)
        assert challenge.startswith(b"SIP/2.0 401 "), challenge
        answers = []
        for n in range(1, GUESSES_BEFORE_BLOCK + 1):
            auth = uac.authorization(challenge, room, account.sid, f"guess-{n}", n)
            invite = uac.invite(room, auth)
            answers.append(_final(uac, invite))
        invite = uac.invite(room)
        return answers, _final(uac, invite)
    finally:
        uac.close()


def _join(port: int, account: Account, room: str) -> bytes:
    """From 127.0.0.3 through Kamailio, with the right password."""
    uac = RawUac(port, source="127.0.0.3")
    try:
        invite = uac.invite(room)
        challenge = _final(uac, invite)
        assert challenge.startswith(b"SIP/2.0 401 "), challenge
        auth = uac.authorization(challenge, room, account.sid, account.token, 1)
        return _final(uac, uac.invite(room, auth))
    finally:
        uac.close()


async def test_a_caller_guessing_passwords_behind_kamailio_is_blocked_not_kamailio(
    cluster: LocalCluster,
) -> None:
    account = cluster.create_account()
    room = "guarded"
    answers, blocked = await asyncio.to_thread(_guess, cluster.sip_port, account, room)
    assert all(a.startswith(b"SIP/2.0 403 ") for a in answers), answers
    # blocked by its own address: refused at once, even without credentials (Kamailio tries
    # no other node: a 403 is final)
    assert blocked.startswith(b"SIP/2.0 403 "), blocked
    assert b"Retry-After: 300" in blocked
    blocks = {
        node.node_id: node.metric("confstream_sip_auth_blocks_total") for node in cluster.members
    }
    assert sorted(blocks.values()) == [0.0, 1.0], blocks
    guarded_by = next(node for node, count in blocks.items() if count == 1)
    # another caller behind the same Kamailio joins that conference, on the same node
    joined = await asyncio.to_thread(_join, cluster.sip_port, account, room)
    assert joined.startswith(b"SIP/2.0 200 "), joined
    clients = apis(cluster, account)
    try:
        conf = conference(clients[guarded_by], room)
        assert conf is not None
        assert owner_of(cluster, conf["sid"]) == guarded_by
        (caller,) = participants(clients[guarded_by], conf["sid"])
        kicked = await asyncio.to_thread(
            clients[guarded_by].delete,
            f"/Conferences/{conf['sid']}/Participants/{caller['call_sid']}.json",
        )
        assert kicked.status_code == 204
    finally:
        for client in clients.values():
            client.close()
