"""The checks of confstream.dialout that need no network: To and From, and the per-account
limits (concurrent calls, calls per second) under an explicit clock."""

from __future__ import annotations

import pytest

from confstream.dialout import DialLimits, SipTarget, parse_from, parse_sip_target
from confstream.errors import DialFromInvalid, DialLimitReached, DialTargetInvalid


@pytest.mark.parametrize(
    ("to", "target"),
    [
        ("sip:bob@192.0.2.7", SipTarget("sip:bob@192.0.2.7", "192.0.2.7", 5060)),
        ("sip:bob@192.0.2.7:5080", SipTarget("sip:bob@192.0.2.7:5080", "192.0.2.7", 5080)),
        (
            " SIP:bob@pbx.example.com;transport=UDP?X-A=1",
            SipTarget("sip:bob@pbx.example.com", "pbx.example.com", 5060),
        ),
        (
            "sip:+15551234@[2001:db8::1]:5062",
            SipTarget("sip:+15551234@[2001:db8::1]:5062", "2001:db8::1", 5062),
        ),
    ],
)
def test_sip_targets(to: str, target: SipTarget) -> None:
    assert parse_sip_target(to) == target


@pytest.mark.parametrize(
    "to",
    [
        "+15551234",
        "tel:+15551234",
        "sips:bob@192.0.2.7",
        "sip:192.0.2.7",  # no user
        "sip:bob:secret@192.0.2.7",
        "sip:bob@192.0.2.7;transport=tcp",
        "sip:bob@192.0.2.7:99999",
        "sip:bob@",
    ],
)
def test_bad_sip_targets_are_21211(to: str) -> None:
    with pytest.raises(DialTargetInvalid) as caught:
        parse_sip_target(to)
    assert caught.value.code == 21211


def test_from_is_a_sip_uri_or_a_caller_id() -> None:
    assert parse_from("+15550001111", "203.0.113.5") == ("sip:+15550001111@203.0.113.5", None)
    assert parse_from("sip:alice@example.com;tag=x", "h") == ("sip:alice@example.com", None)
    for bad in ("", "two words", "a" * 65, "<sip:x@y>", "sip:"):
        with pytest.raises(DialFromInvalid):
            parse_from(bad, "h")


def test_concurrent_calls_per_account_are_capped() -> None:
    limits = DialLimits(max_calls=2, per_second=100)
    limits.take("A", 0.0)
    limits.take("A", 0.0)
    with pytest.raises(DialLimitReached) as caught:
        limits.take("A", 0.0)
    assert caught.value.code == 20429
    limits.take("B", 0.0)  # another account is not affected
    limits.release("A")
    limits.take("A", 0.0)
    assert limits.active("A") == 2


def test_calls_per_second_is_a_token_bucket() -> None:
    limits = DialLimits(max_calls=100, per_second=2)
    limits.take("A", 10.0)
    limits.take("A", 10.0)  # a burst of as many as the rate
    with pytest.raises(DialLimitReached):
        limits.take("A", 10.1)
    limits.take("A", 10.5)  # one token back after half a second
    with pytest.raises(DialLimitReached):
        limits.take("A", 10.6)
    # a refused call is not counted as in progress
    assert limits.active("A") == 3
