"""Parser/serializer: compact forms, folding, multi-valued headers, limits, garbage, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confstream.sip.message import (
    MAX_HEADERS,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    build_response,
    parse_message,
    stamp_via,
)

INVITE = (
    b"INVITE sip:my%20room@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKa;rport, SIP/2.0/TCP p.example;branch=z9hG4bKb\r\n"
    b'f: "Alice, A." <sip:alice@example.com>;tag=abc\r\n'
    b"t: <sip:my%20room@example.com>\r\n"
    b"i: call-1@host\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"m: <sip:alice@10.0.0.1:5062;transport=udp>\r\n"
    b"Subject: a long\r\n \t folded subject\r\n"
    b"Allow: INVITE, ACK\r\nAllow: BYE\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n\r\nv=0\r\nEXTRA"
)


def test_compact_forms_folding_and_multi_values() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.request_uri.user_unescaped == "my room"
    vias = msg.vias
    assert [v.branch for v in vias] == ["z9hG4bKa", "z9hG4bKb"]
    assert vias[0].port == 5062 and vias[1].transport == "TCP"
    assert msg.from_.tag == "abc" and msg.from_.display == "Alice, A."
    assert msg.to.tag is None
    assert msg.call_id == "call-1@host"
    assert (msg.cseq.number, msg.cseq.method) == (7, "INVITE")
    assert msg.contact is not None and msg.contact.uri.port == 5062
    assert msg.headers.get("subject") == "a long folded subject"
    assert msg.headers.get_all("allow") == ["INVITE", "ACK", "BYE"]
    assert msg.content_type == "application/sdp"
    assert msg.body == b"v=0\r"  # truncated to Content-Length


def test_serialize_round_trip_and_response() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    again = parse_message(msg.serialize())
    assert isinstance(again, SipRequest)
    assert again.headers.get_all("via") == msg.headers.get_all("via")
    assert b"Call-ID: call-1@host\r\n" in msg.serialize()
    stamp_via(msg, "192.0.2.9", 40000)
    assert msg.top_via.params["rport"] == "40000"
    assert msg.top_via.params["received"] == "192.0.2.9"
    resp = build_response(msg, 200, to_tag="xyz", body=b"hi")
    data = resp.serialize()
    assert data.startswith(b"SIP/2.0 200 OK\r\n")
    parsed = parse_message(data)
    assert isinstance(parsed, SipResponse)
    assert parsed.to.tag == "xyz" and parsed.body == b"hi"
    assert len(parsed.vias) == 2


def test_uri_and_name_addr() -> None:
    uri = SipUri.parse("sip:user:pw@[::1]:5070;transport=tcp?x=y")
    assert (uri.user, uri.password, uri.host, uri.port) == ("user", "pw", "::1", 5070)
    assert uri.params == {"transport": "tcp"}
    assert str(uri) == "sip:user:pw@[::1]:5070;transport=tcp?x=y"
    addr = NameAddr.parse("sip:bob@h;tag=1")
    assert addr.tag == "1" and addr.uri.params == {}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"INVITE sip:x SIP/2.0\r\n",
        b"INVITE sip:x SIP/1.0\r\n\r\n",
        b"INVITE  sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 99 Low\r\n\r\n",
        b"SIP/2.0 700 High\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nbad header\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n folded first\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\ni: b\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nX: \xff\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n\r\n" + b"x" * 70000,
    ],
)
def test_garbage_raises_parse_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(data)


@pytest.mark.parametrize(
    ("header", "attr"),
    [
        ("Via: SIP/2.0/UDP", "top_via"),
        ("Via: SIP/2.0/UDP h:99999;branch=x", "top_via"),
        ("CSeq: 1", "cseq"),
        ("CSeq: 99999999999 INVITE", "cseq"),
        ("From: <sip:a@b", "from_"),
        ("From: <http://x>", "from_"),
    ],
)
def test_bad_header_values(header: str, attr: str) -> None:
    msg = parse_message(f"OPTIONS sip:x SIP/2.0\r\n{header}\r\n\r\n".encode())
    with pytest.raises(SipParseError):
        getattr(msg, attr)


def test_stream_framer_splits_by_content_length() -> None:
    framer = StreamFramer()
    one = b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n\r\nabc"
    two = b"OPTIONS sip:y SIP/2.0\r\n\r\n"
    data = b"\r\n\r\n" + one + two
    out: list[bytes] = []
    for i in range(0, len(data), 7):
        out += framer.feed(data[i : i + 7])
    assert out == [one, two]
    with pytest.raises(SipParseError):
        StreamFramer().feed(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 9999999\r\n\r\n")
    with pytest.raises(SipParseError):
        StreamFramer().feed(b"X" * 40000)


HEADER_NAMES = ["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
                "Content-Length", "l", "X-Junk"]  # fmt: skip


@st.composite
def sip_like(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from([b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"BYE x SIP/2.0"]))
    lines = [start]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(HEADER_NAMES)).encode()
        value = draw(st.binary(max_size=40))
        lines.append(name + b":" + value)
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), sip_like()))
def test_fuzz_parser_only_raises_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    for attr in ("top_via", "vias", "from_", "to", "cseq", "call_id", "contact"):
        try:
            getattr(msg, attr)
        except SipParseError:
            pass
    if isinstance(msg, SipRequest):
        try:
            msg.request_uri  # noqa: B018
        except SipParseError:
            pass
    msg.serialize()
    framer = StreamFramer()
    try:
        framer.feed(data)
    except SipParseError:
        pass
