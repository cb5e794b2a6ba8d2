"""Transaction state tables with injected time (no sockets, no asyncio)."""

from __future__ import annotations

from confstream.sip.message import SipRequest, build_response, parse_message
from confstream.sip.transaction import (
    ClientNonInviteTransaction,
    Deliver,
    Event,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimedOut,
    TimerConfig,
    Transmit,
)

T = TimerConfig()  # T1 = 0.5, T2 = 4, T4 = 5


def req(method: str) -> SipRequest:
    msg = parse_message(
        f"{method} sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1"
        f"\r\nTo: <sip:x@h>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n".encode()
    )
    assert isinstance(msg, SipRequest)
    return msg


def run_until(txn, end: float, step: float = 0.01) -> list[tuple[float, object]]:  # type: ignore[no-untyped-def]
    out = []
    now = 0.0
    while now <= end:
        deadline = txn.next_deadline()
        if deadline is None or deadline > end:
            break
        now = deadline
        out += [(round(now, 3), o) for o in txn.on_timer(now)]
    return out


def test_server_invite_error_response_retransmits_until_ack() -> None:
    invite = req("INVITE")
    txn = ServerInviteTransaction(invite, reliable=False, timers=T)
    assert txn.state is State.PROCEEDING
    assert txn.on_request(0.0) == []  # nothing sent yet
    txn.send_response(build_response(invite, 100), 0.0)
    assert isinstance(txn.on_request(0.1)[0], Transmit)  # retransmitted INVITE -> resend 100
    txn.send_response(build_response(invite, 401), 0.0)
    assert txn.state is State.COMPLETED  # type: ignore[comparison-overlap]  # mypy keeps the narrowing across the call
    fired = run_until(txn, 3.6)
    # Timer G: 0.5, 1.5, 3.5 (intervals 0.5, 1, 2)
    assert [t for t, o in fired if isinstance(o, Transmit)] == [0.5, 1.5, 3.5]
    txn.on_ack(3.6)
    assert txn.state is State.CONFIRMED
    assert txn.next_deadline() == 3.6 + 5.0  # Timer I = T4
    txn.on_timer(8.6)
    assert txn.terminated


def test_server_invite_timer_h_without_ack() -> None:
    invite = req("INVITE")
    txn = ServerInviteTransaction(invite, reliable=True, timers=T)
    txn.send_response(build_response(invite, 486), 0.0)
    assert txn.next_deadline() == 32.0  # no Timer G on TCP; Timer H = 64*T1
    assert txn.on_timer(32.0) == [TimedOut(Event.TIMER_H)]
    assert txn.terminated


def test_server_invite_2xx_retransmitted_until_ack_then_timer_l() -> None:
    invite = req("INVITE")
    txn = ServerInviteTransaction(invite, reliable=False, timers=T)
    txn.send_response(build_response(invite, 200), 0.0)
    assert txn.state is State.ACCEPTED
    fired = run_until(txn, 16.0)
    times = [t for t, o in fired if isinstance(o, Transmit)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # doubling, capped at T2 = 4
    assert txn.on_request(16.0) == []  # INVITE retransmission absorbed
    txn.on_ack(16.0)
    assert txn.ack_received and txn.next_deadline() == 32.0
    assert txn.on_timer(32.0) == []  # Timer L after an ACK: no timeout
    assert txn.terminated


def test_server_invite_2xx_never_acked_times_out() -> None:
    invite = req("INVITE")
    txn = ServerInviteTransaction(invite, reliable=False, timers=T)
    txn.send_response(build_response(invite, 200), 0.0)
    fired = run_until(txn, 40.0)
    assert any(isinstance(o, TimedOut) for _, o in fired)
    assert txn.terminated


def test_server_non_invite_timer_j() -> None:
    bye = req("BYE")
    txn = ServerNonInviteTransaction(bye, reliable=False, timers=T)
    assert txn.on_request(0.0) == []
    out = txn.send_response(build_response(bye, 200), 0.0)
    assert isinstance(out[0], Transmit)
    assert isinstance(txn.on_request(1.0)[0], Transmit)  # retransmission -> resend 200
    assert txn.next_deadline() == 32.0
    txn.on_timer(32.0)
    assert txn.terminated
    tcp = ServerNonInviteTransaction(bye, reliable=True, timers=T)
    tcp.send_response(build_response(bye, 200), 5.0)
    assert tcp.next_deadline() == 5.0  # Timer J = 0 on reliable transports


def test_client_non_invite_retransmits_and_completes() -> None:
    bye = req("BYE")
    txn = ClientNonInviteTransaction(bye, reliable=False, timers=T)
    assert txn.start(0.0) == [Transmit(bye)]
    fired = run_until(txn, 8.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5]  # Timer E
    out = txn.on_response(build_response(bye, 200), 8.0)
    assert out == [Deliver(out[0].response)]  # type: ignore[union-attr]
    assert txn.state is State.COMPLETED
    assert txn.on_response(build_response(bye, 200), 8.1) == []  # absorbed
    txn.on_timer(13.0)  # Timer K = T4
    assert txn.terminated


def test_client_non_invite_timer_f() -> None:
    txn = ClientNonInviteTransaction(req("BYE"), reliable=True, timers=T)
    txn.start(0.0)
    assert txn.next_deadline() == 32.0  # no Timer E over TCP
    assert any(isinstance(o, TimedOut) for o in txn.on_timer(32.0))
    assert txn.terminated
