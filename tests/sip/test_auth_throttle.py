"""Pure logic with injected time: the failed-digest throttle, and final responses sent once
(``retransmit=False``) by the server INVITE transaction."""

from __future__ import annotations

import pytest

from confstream.sip.digest import FailureThrottle
from confstream.sip.message import SipRequest, build_response, parse_message
from confstream.sip.transaction import (
    ServerInviteTransaction,
    State,
    TimedOut,
    TimerConfig,
    Transmit,
)


def test_blocks_at_the_nth_failure_within_the_window() -> None:
    t = FailureThrottle(max_failures=3, window=10.0, block_seconds=30.0)
    assert [t.failure("10.0.0.1", float(n)) for n in range(3)] == [False, False, True]
    assert t.blocked("10.0.0.1", 2.0)
    assert t.blocked("10.0.0.1", 31.9)
    assert not t.blocked("10.0.0.1", 32.0)
    assert not t.blocked("10.0.0.2", 5.0)  # other sources are not affected


def test_failures_spread_over_windows_do_not_block() -> None:
    t = FailureThrottle(max_failures=3, window=10.0, block_seconds=30.0)
    now = 0.0
    for _ in range(20):
        assert not t.failure("10.0.0.1", now)
        now += 5.1  # two per window at most
    assert not t.blocked("10.0.0.1", now)


def test_failures_while_blocked_neither_count_nor_extend() -> None:
    t = FailureThrottle(max_failures=2, window=10.0, block_seconds=30.0)
    t.failure("a", 0.0)
    assert t.failure("a", 1.0)
    assert not t.failure("a", 2.0)  # an attempt checked before the block began
    assert not t.blocked("a", 31.0)  # block ran from 1.0, not extended
    assert not t.failure("a", 31.0)  # a fresh window after the block
    assert t.failure("a", 32.0)


def test_tracking_table_is_bounded() -> None:
    t = FailureThrottle(max_failures=2, window=60.0, block_seconds=600.0, max_sources=100)
    t.failure("attacker", 0.0)
    assert t.failure("attacker", 0.5)
    for n in range(10_000):
        t.failure(f"10.1.{n // 256}.{n % 256}", 1.0 + n * 0.001)
        assert t.blocked("attacker", 1.0 + n * 0.001)  # kept: still active
        assert len(t) <= 100
    assert len(t) == 100


def test_expired_records_are_dropped() -> None:
    t = FailureThrottle(max_failures=5, window=10.0, block_seconds=30.0)
    for n in range(50):
        t.failure(f"s{n}", 0.0)
    t.failure("late", 11.0)
    assert len(t) == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FailureThrottle(max_failures=0)


T = TimerConfig()  # T1 = 0.5 s


def invite() -> SipRequest:
    msg = parse_message(
        b"INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1"
        b"\r\nTo: <sip:x@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert isinstance(msg, SipRequest)
    return msg


def drain(txn: ServerInviteTransaction, end: float) -> list[object]:
    out: list[object] = []
    while (deadline := txn.next_deadline()) is not None and deadline <= end:
        out += txn.on_timer(deadline)
    return out


@pytest.mark.parametrize("status", [401, 403, 407, 481])
def test_final_sent_once_is_not_retransmitted_on_timer_g(status: int) -> None:
    request = invite()
    txn = ServerInviteTransaction(request, reliable=False, timers=T)
    sent = txn.send_response(build_response(request, status), 0.0, retransmit=False)
    assert [type(o) for o in sent] == [Transmit]
    outputs = drain(txn, 64 * T.t1 + 1)
    assert not any(isinstance(o, Transmit) for o in outputs)
    assert any(isinstance(o, TimedOut) for o in outputs)  # Timer H still ends it
    assert txn.terminated


def test_final_sent_once_is_answered_again_only_per_retransmitted_request() -> None:
    request = invite()
    txn = ServerInviteTransaction(request, reliable=False, timers=T)
    response = build_response(request, 401)
    txn.send_response(response, 0.0, retransmit=False)
    assert drain(txn, 3.0) == []
    assert txn.on_request(3.0) == [Transmit(response)]  # one answer per copy received
    assert drain(txn, 10.0) == []
    assert txn.on_ack(10.0) == []
    assert txn.state is State.CONFIRMED


def test_default_finals_still_retransmit() -> None:
    request = invite()
    txn = ServerInviteTransaction(request, reliable=False, timers=T)
    txn.send_response(build_response(request, 486), 0.0)
    transmits = [o for o in drain(txn, 64 * T.t1) if isinstance(o, Transmit)]
    assert len(transmits) >= 10
