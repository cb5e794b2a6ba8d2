"""The sans-I/O core as a user-agent client (dial-out, docs/sip.md "Calling out"): every
transition of the outbound call table, the client INVITE transaction's timers, digest answers,
CANCEL and its races, ACK/BYE, routing, early media and re-INVITEs from the far end, as
messages in and actions out under a fake clock."""

from __future__ import annotations

import pytest

from confstream.sip.call import OUTBOUND, CallEvent, CallState
from confstream.sip.core import (
    Action,
    Answered,
    ApplyMedia,
    ArmTimer,
    CallEnded,
    DialFailed,
    Dialing,
    OpenRtp,
    Ringing,
    Send,
    TimerKey,
    dial_outcome,
)
from confstream.sip.digest import compute_response, parse_authorization
from confstream.sip.flow import Flow
from confstream.sip.message import SipRequest
from confstream.sip.sdp import SessionDescription
from confstream.sip.transaction import TIMER_D_UNRELIABLE, TimerConfig

from .corekit import T1, Callee, Harness, only, requests, sdp, statuses, wire

C, V = CallState, CallEvent
SID = "CAout"


def _failed(actions: list[Action]) -> list[DialFailed]:
    return [a for a in actions if isinstance(a, DialFailed)]


def _sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def _ended(h: Harness) -> list[CallEnded]:
    return h.ended(h.log)


def _drain(h: Harness) -> None:
    """Let every timer fire; nothing may be left."""
    h.run_out()
    assert h.core.calls == {}
    assert h.core.live_transactions == 0
    assert h.core.armed == {}


# -- placing the call ---------------------------------------------------------------------


def test_dial_opens_rtp_then_sends_an_invite_with_our_offer() -> None:
    h, callee = Harness(), Callee()
    opened = h.dial(callee)
    assert only(opened, OpenRtp) == [OpenRtp(SID, callee.host)]
    assert requests(opened) == []
    after = h.rtp_opened(SID, 41000)
    (invite,) = requests(after, "INVITE")
    assert invite.uri == f"sip:bob@{callee.host}:{callee.port}"
    assert only(after, Dialing) == [Dialing(SID)]
    assert h.call(SID).state is C.CALLING
    offer = SessionDescription.parse(invite.body)
    (m,) = offer.media
    assert (m.port, m.formats) == (41000, ["0", "8", "101"])
    assert m.rtpmap[101].startswith("telephone-event/8000")
    assert offer.connection == "203.0.113.5"
    assert invite.from_.tag and invite.to.tag is None
    assert str(invite.from_.uri) == "sip:+15550001111@198.51.100.1"
    assert invite.contact is not None and str(invite.contact.uri) == "sip:203.0.113.5:5060"
    assert invite.top_via.branch and invite.top_via.branch.startswith("z9hG4bK")
    assert invite.cseq.method == "INVITE"
    # the ring timeout is armed
    assert any(isinstance(a, ArmTimer) and a.key.kind == "ring" for a in after)


def test_provisionals_report_ringing_once_and_the_2xx_is_acked() -> None:
    h, callee = Harness(), Callee()
    invite = h.to_calling(callee)
    assert only(h.answer(callee, 100), Ringing) == []
    assert h.call(SID).state is C.EARLY
    assert only(h.answer(callee, 180), Ringing) == [Ringing(SID, 180)]
    assert only(h.answer(callee, 183, body=b""), Ringing) == []
    answered = h.answer(callee, 200)
    (ack,) = requests(answered, "ACK")
    assert ack.cseq.number == invite.cseq.number and ack.cseq.method == "ACK"
    assert ack.top_via.branch != invite.top_via.branch  # a 2xx's ACK is a new request
    assert ack.to.tag == callee.tag and ack.uri == f"sip:bob@{callee.host}:{callee.port}"
    (media,) = only(answered, ApplyMedia)
    assert isinstance(media, ApplyMedia)
    assert (media.negotiated.remote_host, media.negotiated.remote_port) == (callee.host, 4000)
    assert media.set_remote and not media.hold
    assert only(answered, Answered) == [Answered(SID)]
    assert h.call(SID).state is C.CONFIRMED
    assert TimerKey("ring", SID) not in h.core.armed  # no ring timeout once answered
    # a retransmitted 2xx gets the same ACK again and nothing else
    again = h.answer(callee, 200)
    assert [m.serialize() for m in requests(again)] == [ack.serialize()]
    assert only(again, Answered) == []


def test_invite_is_retransmitted_on_timer_a_then_timer_b_fails_the_call() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    # Timer A: T1, 2·T1, 4·T1, ... (no cap), until Timer B at 64·T1
    resent = h.advance(64 * T1 - 0.01)
    assert len(requests(resent, "INVITE")) == 6
    timed_out = h.advance(0.02)
    assert _failed(timed_out) == [DialFailed(SID, 408, "no-answer")]
    assert [(e.call_sid, e.joined) for e in _ended(h)] == [(SID, False)]
    _drain(h)


def test_no_retransmissions_over_tcp() -> None:
    h, callee = Harness(), Callee(transport="TCP")
    h.to_calling(callee, flow=callee.flow)
    assert requests(h.advance(10 * T1)) == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(486, "busy"), (600, "busy"), (480, "no-answer"), (404, "failed"), (503, "failed")],
)
def test_a_refusal_is_acked_with_the_invite_branch_and_fails_the_call(
    status: int, outcome: str
) -> None:
    h, callee = Harness(), Callee()
    invite = h.to_calling(callee)
    h.answer(callee, 180)
    refused = h.answer(callee, status)
    (ack,) = requests(refused, "ACK")
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.to.tag == callee.tag and ack.uri == invite.uri
    assert _failed(refused) == [DialFailed(SID, status, outcome)]
    assert dial_outcome(status) == outcome
    # a retransmission of the refusal is ACKed again by the transaction, nothing more
    again = h.answer(callee, status)
    assert len(requests(again, "ACK")) == 1 and _failed(again) == []
    # Timer D (32 s over UDP) ends the transaction
    assert h.core.live_transactions == 1
    h.advance(TIMER_D_UNRELIABLE + 0.01)
    _drain(h)
    assert len(_ended(h)) == 1


# -- digest authentication to the far end -------------------------------------------------


def _challenge(realm: str, *algorithms: str, stale: bool = False) -> tuple[tuple[str, str], ...]:
    extra = ", stale=true" if stale else ""
    return tuple(
        (
            "www-authenticate",
            f'Digest realm="{realm}", nonce="n-{alg}", algorithm={alg}, qop="auth"{extra}',
        )
        for alg in algorithms
    )


@pytest.mark.parametrize(
    ("offered", "used"),
    [(("MD5",), "MD5"), (("SHA-256",), "SHA-256"), (("MD5", "SHA-256"), "SHA-256")],
)
def test_401_is_answered_with_digest_credentials(offered: tuple[str, ...], used: str) -> None:
    h, callee = Harness(), Callee()
    first = h.to_calling(callee, auth_username="bob", auth_password="s3cret")
    again = h.answer(callee, 401, extra=_challenge("far", *offered))
    assert len(requests(again, "ACK")) == 1
    (invite,) = requests(again, "INVITE")
    assert invite.cseq.number == first.cseq.number + 1
    assert invite.call_id == first.call_id and invite.from_.tag == first.from_.tag
    assert invite.top_via.branch != first.top_via.branch
    creds = parse_authorization(invite.headers.get("authorization") or "")
    assert (creds.username, creds.realm, creds.algorithm, creds.qop) == ("bob", "far", used, "auth")
    assert creds.uri == first.uri
    expected = compute_response(
        algorithm=used,
        username="bob",
        realm="far",
        password="s3cret",
        method="INVITE",
        uri=first.uri,
        nonce=f"n-{used}",
        nc=creds.nc,
        cnonce=creds.cnonce,
        qop="auth",
    )
    assert creds.response == expected
    assert h.call(SID).state is C.CALLING
    callee.invite = invite
    h.answer(callee, 180)
    (ack,) = requests(h.answer(callee, 200), "ACK")
    assert ack.cseq.number == invite.cseq.number
    assert ack.headers.get("authorization") == invite.headers.get("authorization")


def test_407_is_answered_with_proxy_authorization() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee, auth_username="bob", auth_password="pw")
    challenge = (("proxy-authenticate", 'Digest realm="proxy", nonce="abc", algorithm=MD5'),)
    (invite,) = requests(h.answer(callee, 407, extra=challenge), "INVITE")
    creds = parse_authorization(invite.headers.get("proxy-authorization") or "")
    assert (creds.realm, creds.qop) == ("proxy", None)
    assert invite.headers.get("authorization") is None


def test_wrong_credentials_or_none_fail_the_call_with_the_challenge_status() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee, auth_username="bob", auth_password="wrong")
    (invite,) = requests(h.answer(callee, 401, extra=_challenge("far", "MD5")), "INVITE")
    callee.invite = invite
    refused = h.answer(callee, 401, extra=_challenge("far", "MD5"))
    assert requests(refused, "INVITE") == []
    assert _failed(refused) == [DialFailed(SID, 401, "failed")]
    # without credentials the first challenge ends the call
    h2, callee2 = Harness(), Callee()
    h2.to_calling(callee2)
    assert _failed(h2.answer(callee2, 407)) == [DialFailed(SID, 407, "failed")]


def test_a_stale_nonce_is_answered_again() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee, auth_username="bob", auth_password="pw")
    (invite,) = requests(h.answer(callee, 401, extra=_challenge("far", "MD5")), "INVITE")
    callee.invite = invite
    stale = _challenge("far", "MD5", stale=True)
    (third,) = requests(h.answer(callee, 401, extra=stale), "INVITE")
    assert third.cseq.number == invite.cseq.number + 1


# -- cancelling -----------------------------------------------------------------------------


def test_ring_timeout_cancels_and_the_487_reports_no_answer() -> None:
    h, callee = Harness(), Callee()
    invite = h.to_calling(callee, ring_timeout=5.0)
    h.answer(callee, 180)
    timed = h.advance(5.01)
    (cancel,) = requests(timed, "CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch
    assert (cancel.cseq.number, cancel.cseq.method) == (invite.cseq.number, "CANCEL")
    assert cancel.uri == invite.uri and cancel.to.tag is None
    assert h.call(SID).state is C.CANCELLING
    assert _failed(h.feed(callee.respond(cancel, 200), callee.flow)) == []
    terminated = h.answer(callee, 487)
    assert len(requests(terminated, "ACK")) == 1
    assert _failed(terminated) == [DialFailed(SID, 487, "no-answer")]
    h.advance(TIMER_D_UNRELIABLE + 1)
    _drain(h)


def test_timeout_before_any_provisional_waits_for_one_to_cancel() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee, ring_timeout=1.0)
    timed = h.advance(1.01)
    assert requests(timed, "CANCEL") == []
    assert h.call(SID).state is C.CANCELLING
    (cancel,) = requests(h.answer(callee, 100), "CANCEL")
    assert cancel.cseq.method == "CANCEL"
    # the far end never answers the INVITE: 64·T1 after the CANCEL the call is over
    gone = h.advance(64 * T1 + 0.01)
    assert _failed(gone) == [DialFailed(SID, 408, "no-answer")]
    _drain(h)


def test_a_2xx_crossing_the_cancel_is_acked_and_byed() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    h.answer(callee, 180)
    (cancel,) = requests(h.hangup(SID, "api-delete"), "CANCEL")
    h.feed(callee.respond(cancel, 200), callee.flow)
    crossed = h.answer(callee, 200)
    assert [m.method for m in requests(crossed)] == ["ACK", "BYE"]
    assert _failed(crossed) == [DialFailed(SID, 200, "canceled")]
    assert [(e.reason, e.joined) for e in _ended(h)] == [("api-delete", False)]
    (bye,) = requests(crossed, "BYE")
    h.feed(callee.respond(bye, 200), callee.flow)
    h.advance(TIMER_D_UNRELIABLE + 1)
    _drain(h)


def test_hangup_while_opening_sends_nothing() -> None:
    h, callee = Harness(), Callee()
    h.dial(callee)
    h.hangup(SID)
    assert h.call(SID).state is C.ABORT_OPENING
    after = h.rtp_opened(SID)
    assert requests(after) == []
    assert _failed(after) == [DialFailed(SID, None, "canceled")]
    _drain(h)


def test_rtp_failure_fails_the_call() -> None:
    h, callee = Harness(), Callee()
    h.dial(callee)
    assert _failed(h.rtp_failed(SID)) == [DialFailed(SID, None, "failed")]
    _drain(h)


# -- in the dialog --------------------------------------------------------------------------


def _confirmed(h: Harness, callee: Callee, **options: object) -> None:
    h.to_calling(callee, **options)
    h.answer(callee, 180)
    h.answer(callee, 200)
    assert h.call(SID).state is C.CONFIRMED


def test_far_end_bye_ends_the_answered_call() -> None:
    h, callee = Harness(), Callee()
    _confirmed(h, callee)
    bye = h.feed(callee.request("BYE"), callee.flow)
    assert statuses(bye) == [200]
    assert [(e.reason, e.joined) for e in _ended(h)] == [("callee-bye", True)]
    _drain(h)


def test_our_bye_goes_to_the_contact_when_allowed() -> None:
    h, callee = Harness(), Callee()
    h.core.target_allowed = lambda ip: ip == "192.0.2.99"
    h.to_calling(callee)
    answered = h.feed(
        callee.respond(
            callee.invite,  # type: ignore[arg-type]
            200,
            extra=(),
        ).replace(b"<sip:bob@192.0.2.50:5080>", b"<sip:bob@192.0.2.99:6000>"),
        callee.flow,
    )
    assert [a.flow.remote for a in _sends(answered)] == [("192.0.2.99", 6000)]
    (bye,) = _sends(h.hangup(SID))
    assert bye.flow.remote == ("192.0.2.99", 6000)
    assert isinstance(bye.message, SipRequest) and bye.message.uri == "sip:bob@192.0.2.99:6000"


def test_a_contact_not_allowed_gets_its_requests_where_the_invite_went() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    h.feed(
        callee.respond(callee.invite, 200).replace(  # type: ignore[arg-type]
            b"<sip:bob@192.0.2.50:5080>", b"<sip:bob@10.9.9.9:6000>"
        ),
        callee.flow,
    )
    (bye,) = _sends(h.hangup(SID))
    assert bye.flow == callee.flow


def test_record_route_becomes_the_route_set_loose_routing() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    rr = (
        ("record-route", "<sip:192.0.2.50:5080;lr>"),
        ("record-route", "<sip:198.51.100.77;lr>"),
    )
    h.answer(callee, 200, extra=rr)
    (bye,) = _sends(h.hangup(SID))
    message = bye.message
    assert isinstance(message, SipRequest)
    # the route set is the Record-Route reversed; the first route is the next hop
    assert message.headers.get_all("route") == [
        "<sip:198.51.100.77;lr>",
        "<sip:192.0.2.50:5080;lr>",
    ]
    assert message.uri == callee.contact.strip("<>")
    assert bye.flow == callee.flow  # 198.51.100.77 is not allowed: where the INVITE went


def test_a_strict_router_gets_the_request_uri() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    h.answer(callee, 200, extra=(("record-route", "<sip:192.0.2.50:5080>"),))
    (bye,) = requests(h.hangup(SID), "BYE")
    assert bye.uri == "sip:192.0.2.50:5080"
    assert bye.headers.get_all("route") == [callee.contact]


def test_far_end_reinvite_puts_the_call_on_hold() -> None:
    h, callee = Harness(), Callee()
    _confirmed(h, callee)
    held = h.feed(callee.request("INVITE", sdp(callee.host, "sendonly")), callee.flow)
    (media,) = only(held, ApplyMedia)
    assert isinstance(media, ApplyMedia) and media.hold and media.joined
    (ok,) = [m for m in wire(held) if not isinstance(m, SipRequest)]
    assert b"a=recvonly" in ok.body
    assert h.call(SID).state is C.WAIT_ACK
    h.feed(callee.request("ACK", branch=None), callee.flow)
    assert h.call(SID).state is C.CONFIRMED


def test_early_media_only_when_asked() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    assert only(h.answer(callee, 183, body=sdp(callee.host)), ApplyMedia) == []
    h2, callee2 = Harness(), Callee()
    h2.to_calling(callee2, early_media=True)
    (media,) = only(h2.answer(callee2, 183, body=sdp(callee2.host)), ApplyMedia)
    assert isinstance(media, ApplyMedia) and media.set_remote and not media.joined


def test_time_limit_hangs_up_an_answered_call() -> None:
    h, callee = Harness(), Callee()
    _confirmed(h, callee, time_limit=30.0)
    assert requests(h.advance(29.9), "BYE") == []
    (bye,) = requests(h.advance(0.2), "BYE")
    assert 'text="time-limit"' in (bye.headers.get("reason") or "")
    assert [e.reason for e in _ended(h)] == ["time-limit"]


def test_a_2xx_without_sdp_is_acked_then_byed() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    out = h.answer(callee, 200, body=b"")
    assert [m.method for m in requests(out)] == ["ACK", "BYE"]
    assert _failed(out) == [DialFailed(SID, 488, "failed")]
    assert only(out, Answered) == []


def test_an_invite_looping_back_to_us_is_refused_482() -> None:
    h, callee = Harness(), Callee()
    invite = h.to_calling(callee)
    looped = h.feed(invite.serialize(), Flow("UDP", ("203.0.113.5", 5060)))
    assert statuses(looped) == [482]
    assert only(looped, OpenRtp) == []


def test_shutdown_cancels_ringing_calls() -> None:
    h, callee = Harness(), Callee()
    h.to_calling(callee)
    h.answer(callee, 180)
    (cancel,) = requests(h._seen(h.core.shutdown(h.now)), "CANCEL")
    assert cancel.cseq.method == "CANCEL"


# -- every transition of the outbound table ---------------------------------------------------


def _reach(h: Harness, callee: Callee, state: CallState) -> None:
    if state is C.OPENING:
        h.dial(callee)
    elif state is C.ABORT_OPENING:
        h.dial(callee)
        h.hangup(SID, "first-reason")
    elif state is C.CALLING:
        h.to_calling(callee, auth_username="bob", auth_password="pw")
    elif state is C.EARLY:
        h.to_calling(callee, auth_username="bob", auth_password="pw")
        h.answer(callee, 180)
    elif state is C.CANCELLING:
        h.to_calling(callee, auth_username="bob", auth_password="pw")
        h.answer(callee, 180)
        h.hangup(SID, "first-reason")
    elif state is C.CONFIRMED:
        _confirmed(h, callee)
    elif state is C.WAIT_ACK:
        _confirmed(h, callee)
        h.feed(callee.request("INVITE", sdp(callee.host)), callee.flow)
    elif state is C.BYE_PENDING:
        _reach(h, callee, C.WAIT_ACK)
        h.hangup(SID, "first-reason")
    else:
        raise AssertionError(state)


def _fire(h: Harness, callee: Callee, event: CallEvent) -> None:
    if event is V.RTP_OPENED:
        callee.invite = next(iter(requests(h.rtp_opened(SID), "INVITE")), None)
    elif event is V.RTP_FAILED:
        h.rtp_failed(SID)
    elif event is V.CHALLENGED:
        h.answer(callee, 401, extra=_challenge("far", "MD5"))
    elif event is V.PROVISIONAL:
        h.answer(callee, 183)
    elif event is V.ANSWERED:
        h.answer(callee, 200)
    elif event is V.REJECTED:
        h.answer(callee, 486)
    elif event is V.HANGUP:
        h.hangup(SID, "second-reason")
    elif event is V.TIMEOUT:
        h.advance(20.01)
    elif event is V.ACK:
        h.feed(callee.request("ACK"), callee.flow)
    elif event is V.ACK_TIMEOUT:
        h.advance(64 * T1 + 0.01)
    elif event is V.BYE_IN:
        h.feed(callee.request("BYE"), callee.flow)
    elif event is V.REINVITE_OK:
        h.feed(callee.request("INVITE", sdp(callee.host, "sendonly")), callee.flow)
    else:
        raise AssertionError(event)


@pytest.mark.parametrize(
    ("state", "event"), list(OUTBOUND), ids=[f"{s.value}-{e.value}" for s, e in OUTBOUND]
)
def test_outbound_transition(state: CallState, event: CallEvent) -> None:
    h = Harness(timers=TimerConfig(t1=T1, t2=4.0, t4=5.0))
    callee = Callee()
    _reach(h, callee, state)
    assert h.call(SID).state is state
    _fire(h, callee, event)
    target = OUTBOUND[(state, event)]
    if target is C.ENDED:
        assert SID not in h.core.calls
        assert len(_ended(h)) == 1
    else:
        assert h.call(SID).state is target
    # whatever happened, the call and every transaction end
    h.hangup(SID)
    if SID in h.core.calls and h.call(SID).state is C.ABORT_OPENING:
        h.rtp_opened(SID)
    for _ in range(3):
        if callee.invite is None:
            break
        if SID in h.core.calls and h.call(SID).state is C.CANCELLING:
            h.answer(callee, 100)
            h.answer(callee, 487)
        h.feed(callee.request("ACK"), callee.flow)
        h.run_out()
    h.run_out()
    assert h.core.calls == {}
    assert h.core.live_transactions == 0
    assert h.core.armed == {}
    assert len(_ended(h)) == 1


def test_responses_reach_only_the_transaction_of_their_branch() -> None:
    h, callee = Harness(), Callee()
    invite = h.to_calling(callee)
    stray = callee.respond(invite, 200).replace(
        (invite.top_via.branch or "").encode(), b"z9hG4bKnotours"
    )
    assert h.feed(stray, callee.flow) == []
    assert h.call(SID).state is C.CALLING
    # a response whose CSeq method differs (same branch) is not the INVITE's either
    wrong_method = callee.respond(invite, 200).replace(b" INVITE\r\n", b" BYE\r\n", 1)
    assert h.feed(wrong_method, callee.flow) == []
    assert only(h.answer(callee, 200), Answered) == [Answered(SID)]
