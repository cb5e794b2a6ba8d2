"""The sans-I/O SIP core, unit by unit: every call state transition of the inbound table, and
the UAS behaviour of docs/sip.md (auth, limits, CANCEL, BYE, re-INVITE, timers) as messages in
and actions out, under a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from confstream.sip.call import (
    INBOUND,
    OUTBOUND,
    Call,
    CallEvent,
    CallState,
    CallStateError,
    Direction,
)
from confstream.sip.core import (
    AMPLIFICATION_LIMIT,
    ApplyMedia,
    CallEnded,
    CallIncoming,
    Discarded,
    LookupToken,
    OpenRtp,
    Send,
)
from confstream.sip.message import SipResponse

from .corekit import (
    ACCOUNT,
    T1,
    TOKEN,
    Harness,
    Phone,
    one_response,
    only,
    requests,
    sdp,
    statuses,
)

C, V = CallState, CallEvent


# -- every transition of the inbound table --------------------------------------------------


def _reach(h: Harness, phone: Phone, state: CallState) -> str:
    """Bring a new call into ``state``."""
    if state is C.OPENING:
        return h.to_opening(phone)
    if state is C.ABORT_OPENING:
        sid = h.to_opening(phone)
        h.hangup(sid, "first-reason")
        return sid
    if state is C.JOINING:
        return h.to_joining(phone)
    if state is C.ABORT_JOINING:
        sid = h.to_joining(phone)
        h.hangup(sid, "first-reason")
        return sid
    if state is C.WAIT_ACK:
        return h.to_wait_ack(phone)[0]
    if state is C.BYE_PENDING:
        sid = h.to_wait_ack(phone)[0]
        h.hangup(sid, "first-reason")
        return sid
    if state is C.CONFIRMED:
        return h.to_confirmed(phone)
    raise AssertionError(state)


def _fire(h: Harness, phone: Phone, sid: str, event: CallEvent) -> list[object]:
    """Deliver ``event`` to the call the way the outside world would."""
    if event is V.RTP_OPENED:
        return list(h.rtp_opened(sid))
    if event is V.RTP_FAILED:
        return list(h.rtp_failed(sid))
    if event is V.JOIN_OK:
        return list(h.joined(sid))
    if event is V.JOIN_REFUSED:
        return list(h.joined(sid, 486))
    if event is V.CANCEL:
        return list(h.feed(phone.cancel(), phone.flow))
    if event is V.HANGUP:
        return list(h.hangup(sid, "second-reason"))
    if event is V.ACK:
        txn = h.call(sid).invite_txn
        assert txn is not None
        invite = txn.last_response
        assert isinstance(invite, SipResponse)
        return list(h.feed(phone.ack_for(invite), phone.flow))
    if event is V.ACK_TIMEOUT:
        return list(h.advance(64 * T1 + 0.01))
    if event is V.BYE_IN:
        return list(h.feed(phone.bye(), phone.flow))
    if event is V.REINVITE_OK:
        return list(h.feed(phone.reinvite(sdp(direction="sendonly")), phone.flow))
    raise AssertionError(event)


@pytest.mark.parametrize(
    ("state", "event"), list(INBOUND), ids=[f"{s.value}-{e.value}" for s, e in INBOUND]
)
def test_inbound_transition(state: CallState, event: CallEvent) -> None:
    h, phone = Harness(), Phone()
    sid = _reach(h, phone, state)
    assert h.call(sid).state is state
    _fire(h, phone, sid, event)
    target = INBOUND[(state, event)]
    if target is C.ENDED:
        assert sid not in h.core.calls
        assert len(h.ended(h.log)) == 1
    else:
        assert h.call(sid).state is target
    # whatever happened, the call and every transaction end once the timers have run
    h.hangup(sid)
    h.feed(phone.bye(), phone.flow)
    if sid in h.core.calls:  # still waiting for an ACK, or for the RTP port / the join
        h.run_out()
        h.rtp_opened(sid)
        h.joined(sid)
    h.run_out()
    assert h.core.calls == {}
    assert h.core.live_transactions == 0
    assert len(h.ended(h.log)) == 1


def test_tables_refuse_what_they_do_not_list() -> None:
    phone = Phone()
    call = Call(
        "CA1",
        Direction.INBOUND,
        phone.flow,
        invite=None,  # type: ignore[arg-type]
        invite_txn=None,
        account_sid=ACCOUNT,
        request_user="room",
        dialog=None,  # type: ignore[arg-type]
    )
    with pytest.raises(CallStateError):
        call.move(V.ACK)
    assert call.state is C.OPENING
    assert call.move(V.RTP_OPENED) is C.JOINING
    # the outbound table has its own meaning for the same event
    call.direction, call.state = Direction.OUTBOUND, C.OPENING
    assert call.move(V.RTP_OPENED) is C.CALLING
    for table in (INBOUND, OUTBOUND):
        assert all(s is not C.ENDED for s, _ in table), "ENDED is final"


# -- setting a call up --------------------------------------------------------------------


def test_authenticated_invite_runs_the_setup_steps_in_order() -> None:
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    assert 'algorithm=MD5, qop="auth"' in (challenge.headers.get("www-authenticate") or "")
    h.feed(phone.ack_for(challenge), phone.flow)
    asked = h.feed(phone.invite(challenge, extra=("X-Ticket: 42",)), phone.flow)
    (lookup,) = only(asked, LookupToken)
    assert isinstance(lookup, LookupToken) and lookup.account_sid == ACCOUNT
    after = h.auth(asked)
    assert statuses(after) == [100]
    assert only(after, OpenRtp) == [OpenRtp("CA0001", "192.0.2.10")]
    assert h.call("CA0001").state is C.OPENING

    opened = h.rtp_opened("CA0001", 41000)
    (media,) = only(opened, ApplyMedia)
    assert isinstance(media, ApplyMedia)
    assert (media.set_remote, media.hold, media.joined) == (True, False, False)
    assert (media.negotiated.remote_host, media.negotiated.remote_port) == ("192.0.2.10", 4000)
    (incoming,) = only(opened, CallIncoming)
    assert isinstance(incoming, CallIncoming)
    call = incoming.incoming
    assert (call.call_sid, call.account_sid, call.request_user) == ("CA0001", ACCOUNT, "room")
    assert call.from_uri == "sip:alice@192.0.2.10" and call.caller_name == "Alice"
    assert call.sip_headers == (("x-ticket", "42"),)
    assert (call.source, call.transport) == (("192.0.2.10", 5062), "UDP")
    assert statuses(opened) == []

    ok = one_response(h.joined("CA0001"), 200)
    body = ok.body.decode()
    assert "m=audio 41000 RTP/AVP 0 101" in body and "c=IN IP4 203.0.113.5" in body
    assert ok.headers.get("contact") == "<sip:203.0.113.5:5060>"
    assert ok.to.tag
    assert h.call("CA0001").state is C.WAIT_ACK


def test_2xx_is_retransmitted_until_the_ack() -> None:
    h, phone = Harness(), Phone()
    sid, ok = h.to_wait_ack(phone)
    # Timer G: T1, 2·T1, 4·T1 ... capped at T2 (RFC 6026 §7.1)
    again = h.advance(T1 + 2 * T1 + 4 * T1 + 0.01)
    assert statuses(again) == [200, 200, 200]
    h.feed(phone.ack_for(ok), phone.flow)
    assert h.call(sid).state is C.CONFIRMED
    assert statuses(h.advance(10)) == []
    # the INVITE transaction lingers until Timer L, then goes
    h.run_out()
    assert h.core.live_transactions == 0 and sid in h.core.calls


def test_2xx_over_tcp_is_not_retransmitted() -> None:
    h, phone = Harness(), Phone(transport="TCP")
    h.to_wait_ack(phone)
    assert statuses(h.advance(10)) == []


def test_no_ack_within_timer_l_sends_bye() -> None:
    h, phone = Harness(), Phone()
    sid, _ = h.to_wait_ack(phone)
    out = h.advance(64 * T1 + 0.01)
    (bye,) = requests(out, "BYE")
    assert bye.headers.get("reason") == 'SIP;cause=200;text="no-ack"'
    assert bye.uri == "sip:alice@192.0.2.10:5062"
    assert h.ended(out) == [CallEnded(sid, "no-ack", True)]
    assert sid not in h.core.calls


def test_bye_before_ack_is_answered_and_ends_the_call() -> None:
    h, phone = Harness(), Phone()
    sid, _ = h.to_wait_ack(phone)
    out = h.feed(phone.bye(), phone.flow)
    assert statuses(out) == [200]
    assert h.ended(out) == [CallEnded(sid, "caller-bye", True)]
    assert sid not in h.core.calls
    h.run_out()
    assert h.core.live_transactions == 0


def test_hangup_before_ack_waits_for_it_to_send_bye() -> None:
    h, phone = Harness(), Phone()
    sid, ok = h.to_wait_ack(phone)
    out = h.hangup(sid, "api-delete")
    assert requests(out) == []  # RFC 3261 §15: no BYE before the ACK
    assert h.ended(out) == [CallEnded(sid, "api-delete", True)]  # the participant goes now
    assert h.call(sid).state is C.BYE_PENDING
    assert h.hangup(sid, "later") == []
    out = h.feed(phone.ack_for(ok), phone.flow)
    (bye,) = requests(out, "BYE")
    assert 'text="api-delete"' in (bye.headers.get("reason") or "")
    assert h.ended(out) == []
    # the BYE is retransmitted on Timer E until answered
    assert len(requests(h.advance(T1 + 0.01), "BYE")) == 1
    answer = SipResponse(bye.headers.copy(), b"", 200, "OK")
    assert only(h.feed(answer.serialize(), phone.flow), Send) == []
    assert requests(h.advance(10), "BYE") == []
    h.run_out()
    assert h.core.live_transactions == 0 and h.core.calls == {}


def test_hangup_before_ack_and_no_ack_sends_bye_on_timer_l() -> None:
    h, phone = Harness(), Phone()
    sid, _ = h.to_wait_ack(phone)
    h.hangup(sid, "conference-ended")
    out = h.advance(64 * T1 + 0.01)
    (bye,) = requests(out, "BYE")
    assert 'text="conference-ended"' in (bye.headers.get("reason") or "")
    assert h.ended(out) == []  # already reported at the hangup


def test_cancel_during_join() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_joining(phone)
    out = h.feed(phone.cancel(), phone.flow)
    assert sorted(statuses(out)) == [200, 487]
    assert h.call(sid).state is C.ABORT_JOINING
    done = h.joined(sid)  # the join finishes after all: leave again, never answer 200
    assert statuses(done) == []
    assert h.ended(done) == [CallEnded(sid, "cancelled", True)]
    assert sid not in h.core.calls
    # the caller ACKs the 487; the INVITE transaction absorbs it and ends
    assert only(h.feed(phone.ack_for(one_response(out, 487)), phone.flow), Send) == []
    h.run_out()
    assert h.core.live_transactions == 0


def test_cancel_during_join_that_is_refused() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_joining(phone)
    h.feed(phone.cancel(), phone.flow)
    done = h.joined(sid, 403)
    assert statuses(done) == []  # 487 was the final response
    assert h.ended(done) == [CallEnded(sid, "setup-failed", False)]


def test_cancel_while_the_rtp_port_opens() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_opening(phone)
    assert sorted(statuses(h.feed(phone.cancel(), phone.flow))) == [200, 487]
    done = h.rtp_opened(sid)
    assert only(done, CallIncoming) == [] and statuses(done) == []
    assert h.ended(done) == [CallEnded(sid, "setup-failed", False)]


def test_cancel_while_the_token_is_looked_up() -> None:
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    asked = h.feed(phone.invite(challenge), phone.flow)
    assert sorted(statuses(h.feed(phone.cancel(), phone.flow))) == [200, 487]
    assert h.auth(asked) == []
    assert h.core.calls == {}


def test_cancel_of_an_answered_or_unknown_invite() -> None:
    h, phone = Harness(), Phone()
    assert statuses(h.feed(phone.cancel(), phone.flow)) == [481]
    sid, _ = h.to_wait_ack(phone)
    assert statuses(h.feed(phone.cancel(), phone.flow)) == [200]
    assert h.call(sid).state is C.WAIT_ACK


def test_hangup_during_join_answers_480() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_joining(phone)
    assert h.hangup(sid, "server-shutdown") == []
    done = h.joined(sid)
    assert statuses(done) == [480]
    assert h.ended(done) == [CallEnded(sid, "server-shutdown", True)]


def test_hangup_while_the_rtp_port_opens_answers_480() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_opening(phone)
    h.hangup(sid, "server-shutdown")
    done = h.rtp_failed(sid)
    assert statuses(done) == [480]
    assert h.ended(done) == [CallEnded(sid, "setup-failed", False)]


def test_no_rtp_port_is_503() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_opening(phone)
    out = h.rtp_failed(sid)
    assert statuses(out) == [503]
    assert h.ended(out) == [CallEnded(sid, "setup-failed", False)]


@pytest.mark.parametrize(("refused", "sent"), [(486, 486), (603, 603), (482, 482), (200, 403)])
def test_join_refused_answers_its_status(refused: int, sent: int) -> None:
    h, phone = Harness(), Phone()
    sid = h.to_joining(phone)
    out = h.joined(sid, refused)
    assert statuses(out) == [sent]
    assert h.ended(out) == [CallEnded(sid, "setup-failed", False)]
    # a refusal after authentication is retransmitted on Timer G until the ACK
    assert statuses(h.advance(T1 + 0.01)) == [sent]


def test_invite_without_sdp_gets_an_offer_and_reads_the_answer_from_the_ack() -> None:
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(body=b""), phone.flow), 401)
    after = h.auth(h.feed(phone.invite(challenge, body=b""), phone.flow))
    (opening,) = only(after, OpenRtp)
    assert isinstance(opening, OpenRtp)
    opened = h.rtp_opened(opening.call_sid)
    assert only(opened, ApplyMedia) == []
    ok = one_response(h.joined(opening.call_sid), 200)
    assert b"m=audio 40000 RTP/AVP 0 8 101" in ok.body
    out = h.feed(phone.ack_for(ok, body=sdp(direction="sendonly")), phone.flow)
    (media,) = only(out, ApplyMedia)
    assert isinstance(media, ApplyMedia)
    assert (media.hold, media.set_remote, media.joined) == (True, False, True)


@pytest.mark.parametrize(("body", "reason"), [(b"", "no-sdp-answer"), (b"v=x", "bad-sdp-in-ack")])
def test_ack_without_a_usable_answer_hangs_up(body: bytes, reason: str) -> None:
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(body=b""), phone.flow), 401)
    (opening,) = only(h.auth(h.feed(phone.invite(challenge, body=b""), phone.flow)), OpenRtp)
    assert isinstance(opening, OpenRtp)
    h.rtp_opened(opening.call_sid)
    ok = one_response(h.joined(opening.call_sid), 200)
    out = h.feed(phone.ack_for(ok, body=body), phone.flow)
    (bye,) = requests(out, "BYE")
    assert f'text="{reason}"' in (bye.headers.get("reason") or "")


# -- requests refused before a call exists -------------------------------------------------


def test_no_credentials_401_is_sent_once_per_request() -> None:
    h, phone = Harness(), Phone()
    invite = phone.invite()
    assert statuses(h.feed(invite, phone.flow)) == [401]
    assert statuses(h.advance(64 * T1 + 1)) == []  # never on Timer G
    h2, phone2 = Harness(), Phone()
    invite = phone2.invite()
    h2.feed(invite, phone2.flow)
    assert statuses(h2.feed(invite, phone2.flow)) == [401]  # a copy gets it once more


def test_wrong_password_is_403_and_counts_towards_a_block() -> None:
    h = Harness(max_failures=2)
    for _ in range(2):
        phone = Phone()
        challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
        out = h.auth(h.feed(phone.invite(challenge, password="guess"), phone.flow))
        assert statuses(out) == [403]
        assert statuses(h.advance(T1 + 0.01)) == []  # sent once
    phone = Phone()
    assert h.feed(phone.invite(), phone.flow) == []  # UDP: dropped unread
    tcp = Phone(transport="TCP")
    refused = one_response(h.feed(tcp.invite(), tcp.flow), 403)
    assert refused.headers.get("retry-after") == "300"
    other = Phone(host="192.0.2.99")
    assert statuses(h.feed(other.invite(), other.flow)) == [401]


def test_unknown_account_and_stale_nonce_and_lookup_failure() -> None:
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    assert statuses(h.auth(h.feed(phone.invite(challenge), phone.flow), None)) == [403]

    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    h.now += 301
    stale = h.auth(h.feed(phone.invite(challenge), phone.flow))
    assert "stale=true" in (one_response(stale, 401).headers.get("www-authenticate") or "")

    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    (lookup,) = only(h.feed(phone.invite(challenge), phone.flow), LookupToken)
    assert isinstance(lookup, LookupToken)
    assert statuses(h.core.auth_error(lookup.lookup, h.now)) == [500]


def test_tiny_udp_invite_gets_no_oversized_answer() -> None:
    h, phone = Harness(algorithms=("MD5", "SHA-256")), Phone()
    tiny = (
        b"INVITE sip:r@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\nFrom: <sip:a@a>;tag=1"
        b"\r\nTo: <sip:r@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert only(h.feed(tiny, phone.flow), Send) == []
    big = phone.invite()
    answer = one_response(h.feed(big, phone.flow), 401)
    assert len(answer.serialize()) <= AMPLIFICATION_LIMIT * len(big)


@pytest.mark.parametrize(
    ("extra", "body", "status"),
    [
        (("Require: 100rel",), None, 420),
        (("Content-Type: text/plain",), b"hello", 415),
    ],
)
def test_unsupported_invites_are_refused_once(
    extra: tuple[str, ...], body: bytes | None, status: int
) -> None:
    h, phone = Harness(), Phone()
    data = phone.invite(extra=extra, body=body)
    if body == b"hello":
        data = data.replace(b"Content-Type: application/sdp\r\n", b"")
    assert statuses(h.feed(data, phone.flow)) == [status]
    assert statuses(h.advance(10)) == []


@pytest.mark.parametrize(
    ("room", "body", "status"),
    [
        ("", None, 404),
        ("room", sdp().replace(b"RTP/AVP 0 8 101", b"RTP/AVP 9"), 488),
        ("room", b"nonsense", 400),
    ],
)
def test_authenticated_invites_refused_before_a_call(
    room: str, body: bytes | None, status: int
) -> None:
    h, phone = Harness(), Phone(room=room)
    challenge = one_response(h.feed(phone.invite(body=body), phone.flow), 401)
    out = h.auth(h.feed(phone.invite(challenge, body=body), phone.flow))
    assert statuses(out)[-1] == status
    assert h.core.calls == {}
    h.run_out()
    assert h.core.live_transactions == 0


def test_other_methods_and_malformed_input() -> None:
    h, phone = Harness(), Phone()
    options = one_response(h.feed(phone.request("OPTIONS"), phone.flow), 200)
    assert options.headers.get_all("allow") == ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"]
    assert statuses(h.feed(phone.request("REGISTER"), phone.flow)) == [405]
    assert statuses(h.feed(phone.request("FROB"), phone.flow)) == [501]
    broken = phone.request("OPTIONS").replace(b"CSeq: ", b"CSeq: x")
    out = h.feed(broken, phone.flow)
    assert statuses(out) == [400] and only(out, Discarded)
    out = h.feed(b"\x00garbage\r\n\r\n", phone.flow)
    assert [type(a) for a in out] == [Discarded]
    bad_ack = phone.request("ACK").replace(b"CSeq: ", b"CSeq: x")
    assert [type(a) for a in h.feed(bad_ack, phone.flow)] == [Discarded]
    assert h.feed(b"\r\n\r\n", phone.flow) == []  # keep-alive
    h.run_out()
    assert h.core.live_transactions == 0


# -- in-dialog requests --------------------------------------------------------------------


def test_unknown_dialog_is_481() -> None:
    h, phone = Harness(), Phone(remote_tag="nope")
    assert statuses(h.feed(phone.bye(), phone.flow)) == [481]
    assert statuses(h.feed(phone.reinvite(sdp()), phone.flow)) == [481]
    assert statuses(h.advance(64 * T1 + 1)) == []  # the INVITE's 481 is sent once
    stray_ack = phone.request("ACK", to_tag="nope")
    assert h.feed(stray_ack, phone.flow) == []


def test_reinvite_hold_and_resume() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    out = h.feed(phone.reinvite(sdp(direction="sendonly")), phone.flow)
    (media,) = only(out, ApplyMedia)
    assert isinstance(media, ApplyMedia)
    assert (media.hold, media.set_remote, media.joined) == (True, False, True)
    ok = one_response(out, 200)
    assert b"a=recvonly" in ok.body
    assert h.call(sid).state is C.WAIT_ACK
    # another re-INVITE before the ACK: 500 with Retry-After (RFC 3261 §14.2)
    busy = one_response(h.feed(phone.reinvite(sdp()), phone.flow), 500)
    assert busy.headers.get("retry-after") == "1"
    h.feed(phone.ack_for(ok), phone.flow)
    assert h.call(sid).state is C.CONFIRMED
    out = h.feed(phone.reinvite(sdp(ip="192.0.2.77")), phone.flow)
    (media,) = only(out, ApplyMedia)
    assert isinstance(media, ApplyMedia)
    assert (media.hold, media.set_remote) == (False, True)
    assert media.negotiated.remote_host == "192.0.2.77"
    assert b"a=sendrecv" in one_response(out, 200).body


def test_reinvite_without_ack_gets_bye_on_timer_l() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    h.feed(phone.reinvite(sdp(direction="inactive")), phone.flow)
    out = h.advance(64 * T1 + 0.01)
    assert len(requests(out, "BYE")) == 1
    assert h.ended(out) == [CallEnded(sid, "no-ack", True)]


def test_reinvite_refusals_keep_the_call() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    bad_codec = sdp().replace(b"RTP/AVP 0 8 101", b"RTP/AVP 9")
    assert statuses(h.feed(phone.reinvite(bad_codec), phone.flow)) == [488]
    assert statuses(h.feed(phone.reinvite(b"junk"), phone.flow)) == [400]
    old = phone.request("INVITE", cseq=1, to_tag=phone.remote_tag, body=sdp())
    assert statuses(h.feed(old, phone.flow)) == [500]  # CSeq out of order
    assert h.call(sid).state is C.CONFIRMED


def test_reinvite_without_sdp_gets_an_offer() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    ok = one_response(h.feed(phone.reinvite(), phone.flow), 200)
    assert b"RTP/AVP 0 8 101" in ok.body
    out = h.feed(phone.ack_for(ok, body=sdp(direction="inactive")), phone.flow)
    assert [a.hold for a in only(out, ApplyMedia) if isinstance(a, ApplyMedia)] == [True]
    assert h.call(sid).state is C.CONFIRMED


def test_bye_ends_the_call_and_its_copy_gets_the_same_answer() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    bye = phone.bye()
    out = h.feed(bye, phone.flow)
    assert statuses(out) == [200]
    assert h.ended(out) == [CallEnded(sid, "caller-bye", True)]
    assert statuses(h.feed(bye, phone.flow)) == [200]
    assert h.ended(h.log) == [CallEnded(sid, "caller-bye", True)]
    out_of_order = phone.bye(cseq=1)
    assert statuses(h.feed(out_of_order, phone.flow)) == [481]  # the dialog is gone


def test_bye_with_an_old_cseq_is_500() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    assert statuses(h.feed(phone.bye(cseq=1), phone.flow)) == [500]
    assert h.call(sid).state is C.CONFIRMED


def test_server_hangup_sends_bye_retransmitted_until_timer_f() -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    out = h.hangup(sid, "api-delete")
    (bye,) = requests(out, "BYE")
    assert bye.headers.get("to") and phone.tag in (bye.headers.get("to") or "")
    assert bye.cseq.method == "BYE"
    assert h.ended(out) == [CallEnded(sid, "api-delete", True)]
    assert h.hangup(sid, "again") == []
    resent = requests(h.advance(64 * T1 + 0.01), "BYE")
    assert 5 <= len(resent) <= 11
    assert h.core.live_transactions == 0


def test_shutdown_hangs_up_every_call_in_every_state() -> None:
    h = Harness()
    confirmed = h.to_confirmed(Phone())
    waiting, _ = h.to_wait_ack(Phone())
    joining = h.to_joining(Phone())
    out = h.core.shutdown(h.now)
    assert len(requests(out, "BYE")) == 1
    ended = {e.call_sid: e.reason for e in h.ended(out)}
    assert ended == {confirmed: "server-shutdown", waiting: "server-shutdown"}
    assert h.call(joining).state is C.ABORT_JOINING


@pytest.mark.parametrize(
    "drive",
    [
        lambda h, p, sid: h.rtp_opened("CA-unknown"),
        lambda h, p, sid: h.joined("CA-unknown"),
        lambda h, p, sid: h.hangup("CA-unknown"),
        lambda h, p, sid: h.core.auth_result(999, TOKEN, h.now),
        lambda h, p, sid: h.rtp_opened(sid),  # twice
        lambda h, p, sid: h.joined(sid, 486),  # not joining any more
    ],
)
def test_stale_results_are_ignored(drive: Callable[[Harness, Phone, str], object]) -> None:
    h, phone = Harness(), Phone()
    sid = h.to_confirmed(phone)
    assert drive(h, phone, sid) == []
    assert h.call(sid).state is C.CONFIRMED


def test_responses_to_nothing_are_ignored() -> None:
    h, phone = Harness(), Phone()
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKnothing\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n"
    )
    assert h.feed(data, phone.flow) == []
    assert not any(isinstance(a, Send) for a in h.log)


def test_a_copy_of_an_invite_by_a_second_route_is_merged_482() -> None:
    """RFC 3261 §8.2.2.2: same Call-ID, From tag and CSeq as a live server transaction, other
    branch: 482, and no second call; the original's retransmission is absorbed as before."""
    h, phone = Harness(), Phone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    h.feed(phone.ack_for(challenge), phone.flow)
    authed = phone.invite(auth=challenge)
    assert only(h.auth(h.feed(authed, phone.flow)), OpenRtp)
    copy = authed.replace(phone.last_invite_branch.encode(), b"z9hG4bKsecondroute1")
    out = h.feed(copy, phone.flow)
    assert statuses(out) == [482]
    assert only(out, LookupToken) == [] and only(out, OpenRtp) == []
    assert len(h.core.calls) == 1
    assert statuses(h.feed(authed, phone.flow)) == [100]
    (sid,) = h.core.calls
    h.run_out()  # the 401's transaction ends; the authenticated one is still live
    assert list(h.core._merge_keys) == [(phone.call_id, phone.tag, 2)]
    h.rtp_opened(sid)
    h.joined(sid, 486)
    h.run_out()
    assert h.core._merge_keys == {} and h.core.live_transactions == 0
