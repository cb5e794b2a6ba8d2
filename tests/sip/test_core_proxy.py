"""The sans-I/O core behind a SIP proxy such as Kamailio (docs/sip.md "Behind a proxy"): the
2xx keeps the proxy in the dialog (Record-Route copied, RFC 3261 §12.1.1), our BYE carries the
route set, and a trusted proxy's Via record names the caller for the password-guessing
throttle and RTP latching. Pure unit tests (the real Kamailio: tests/cluster)."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any

from confstream.sip.core import LookupToken, OpenRtp, Send
from confstream.sip.flow import Flow

from .corekit import Harness, Phone, one_response, only, requests, statuses

PROXY = ("198.51.100.7", 5070)
RECORD_ROUTE = f"<sip:{PROXY[0]}:{PROXY[1]};lr=on;ftag=x>"


@dataclass
class ProxiedPhone(Phone):
    """A phone whose requests reach the core through a proxy at :data:`PROXY` that
    record-routes and stamps the phone's Via with ``received``/``rport`` (the phone is behind
    NAT: its Via names a private address)."""

    public: tuple[str, int] = ("192.0.2.44", 31000)

    @property
    def flow(self) -> Flow:
        return Flow("UDP", PROXY)

    def request(self, method: str, **fields: Any) -> bytes:
        """The phone's request as the proxy forwards it (the fields are :meth:`Phone.request`'s)."""
        raw = super().request(method, **fields)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        via = next(n for n, line in enumerate(lines) if line.startswith("Via:"))
        lines[via] += f";received={self.public[0]}"
        lines[via] = lines[via].replace(";rport", f";rport={self.public[1]}")
        lines.insert(
            via,
            f"Via: SIP/2.0/UDP {PROXY[0]}:{PROXY[1]};branch=z9hG4bK{secrets.token_hex(6)}",
        )
        if method == "INVITE" and not fields.get("to_tag"):
            lines.insert(via + 2, f"Record-Route: {RECORD_ROUTE}")
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def _trusting(*networks: str) -> Harness:
    h = Harness(max_failures=2)
    h.core.trusted_proxies = tuple(ipaddress.ip_network(n) for n in networks)
    return h


def _opening(h: Harness, phone: ProxiedPhone) -> str:
    """Harness.to_opening through a trusted proxy (the 100 comes before the lookup)."""
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    asked = h.feed(phone.invite(challenge), phone.flow)
    assert statuses(asked) == [100]
    (opening,) = only(h.auth(asked), OpenRtp)
    assert isinstance(opening, OpenRtp)
    return opening.call_sid


def test_the_2xx_keeps_the_proxy_in_the_dialog_and_our_bye_routes_through_it() -> None:
    h, phone = _trusting(), ProxiedPhone(host="10.0.0.8")
    sid, ok = h.to_wait_ack(phone)
    assert ok.headers.get_all("record-route") == [RECORD_ROUTE]
    h.feed(phone.ack_for(ok), phone.flow)
    out = h.hangup(sid)
    (bye,) = requests(out, "BYE")
    assert bye.headers.get_all("route") == [RECORD_ROUTE]
    assert bye.uri == "sip:alice@10.0.0.8:5062"  # the caller's Contact (loose routing)
    (send,) = only(out, Send)
    assert isinstance(send, Send) and send.flow.remote == PROXY


def test_a_trusted_proxy_names_the_caller_for_rtp_latching() -> None:
    h, phone = _trusting("198.51.100.0/24"), ProxiedPhone(host="10.0.0.8")
    sid = _opening(h, phone)
    (opening,) = [a for a in h.log if isinstance(a, OpenRtp)]
    assert opening == OpenRtp(sid, "192.0.2.44")
    assert h.call(sid).source == ("192.0.2.44", 31000)


def test_an_untrusted_proxy_is_the_caller() -> None:
    h, phone = _trusting("203.0.113.0/24"), ProxiedPhone(host="10.0.0.8")
    sid = h.to_opening(phone)
    assert h.call(sid).source == PROXY
    # no proxy configured at all: the same
    h, phone = _trusting(), ProxiedPhone(host="10.0.0.8")
    assert h.call(h.to_opening(phone)).source == PROXY


def test_guessing_behind_a_trusted_proxy_blocks_the_caller_not_the_proxy() -> None:
    h = _trusting("198.51.100.7/32")
    for _ in range(2):
        guesser = ProxiedPhone()
        challenge = one_response(h.feed(guesser.invite(), guesser.flow), 401)
        out = h.auth(h.feed(guesser.invite(challenge, password="guess"), guesser.flow))
        assert statuses(out) == [403]
    # the guesser is blocked: answered 403 at once (the proxy would try another node after a
    # silent drop), its password never checked
    guesser = ProxiedPhone()
    refused = one_response(h.feed(guesser.invite(), guesser.flow), 403)
    assert refused.headers.get("retry-after") == "300"
    # another caller behind the same proxy still gets in
    other = ProxiedPhone(public=("192.0.2.45", 31000))
    assert h.call(_opening(h, other)).source == ("192.0.2.45", 31000)


def test_a_trusted_proxy_gets_100_trying_before_the_token_lookup() -> None:
    h, phone = _trusting("198.51.100.7/32"), ProxiedPhone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    asked = h.feed(phone.invite(challenge), phone.flow)
    assert statuses(asked) == [100] and only(asked, LookupToken)
    after = h.auth(asked)
    assert statuses(after) == []  # no second 100
    assert only(after, OpenRtp)
    # anyone else: the 100 follows the lookup
    h, phone = _trusting(), ProxiedPhone()
    challenge = one_response(h.feed(phone.invite(), phone.flow), 401)
    asked = h.feed(phone.invite(challenge), phone.flow)
    assert statuses(asked) == []
    assert statuses(h.auth(asked)) == [100]
