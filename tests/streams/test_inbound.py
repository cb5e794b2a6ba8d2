"""The limits on what receivers send (pure parts): rate bucket, DTMF backlog, mark names."""

from __future__ import annotations

import json

import pytest

from confstream.settings import Settings
from confstream.streams.inbound import MAX_DTMF_BACKLOG_S, MAX_MARK_NAME, DtmfBacklog, MessageRate
from confstream.streams.protocol import InboundError, MarkIn, parse_inbound


def test_rate_allows_a_burst_then_the_sustained_rate() -> None:
    bucket = MessageRate(rate=10, burst=5)
    assert all(bucket.take(100.0) for _ in range(5))
    assert not bucket.take(100.0)  # burst spent, no time passed
    assert not bucket.take(100.05)  # half a token
    assert bucket.take(100.1)  # one token refilled
    assert not bucket.take(100.1)
    # Ten per second for a long time is fine.
    t = 101.0
    for _ in range(100):
        t += 0.1
        assert bucket.take(t)


def test_rate_refill_is_capped_at_the_burst() -> None:
    bucket = MessageRate(rate=100, burst=3)
    bucket.take(0.0)
    # An hour of silence buys only the burst.
    assert [bucket.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_rate_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError):
        MessageRate(0, 10)
    with pytest.raises(ValueError):
        MessageRate(10, 0)


def test_dtmf_backlog_bounds_seconds_of_digits_waiting() -> None:
    backlog = DtmfBacklog()
    accepted = sum(backlog.offer(0.0, 200) for _ in range(100))
    assert accepted == int(MAX_DTMF_BACKLOG_S / 0.2)  # 25 digits of 200 ms
    assert not backlog.offer(0.0, 200)
    # Once they have played, there is room again.
    assert backlog.offer(MAX_DTMF_BACKLOG_S, 200)
    # A digit longer than the whole backlog is never accepted.
    assert not DtmfBacklog(1.0).offer(0.0, 2000)


def test_mark_names_are_bounded() -> None:
    ok = "m" * MAX_MARK_NAME
    assert parse_inbound(json.dumps({"event": "mark", "mark": {"name": ok}})) == MarkIn(ok)
    with pytest.raises(InboundError, match="longer than 256"):
        parse_inbound(json.dumps({"event": "mark", "mark": {"name": ok + "m"}}))


def test_limit_settings_defaults_and_validation() -> None:
    s = Settings()
    assert s.stream_max_message_bytes == 65536
    assert (s.stream_inbound_rate, s.stream_inbound_burst) == (200.0, 1000)
    assert s.stream_return_audio_max_seconds == 10.0
    assert s.stream_max_pending_marks == 1000
    assert s.stream_close_timeout == 2.0
    with pytest.raises(ValueError):
        Settings(stream_inbound_burst=0)
    with pytest.raises(ValueError):
        Settings(stream_close_timeout=-1)
