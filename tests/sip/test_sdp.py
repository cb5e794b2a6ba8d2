"""SDP offer/answer: codec choice, telephone-event, directions, hold, rejected streams."""

from __future__ import annotations

import pytest

from confstream.sip.sdp import LocalSdp, NoCommonCodec, SdpError, SessionDescription, negotiate


def offer(fmts: str = "8 0 101", direction: str = "sendrecv", conn: str = "192.0.2.5") -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {conn}\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\n"
        f"m=audio 4000 RTP/AVP {fmts}\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=fmtp:101 0-15\r\na={direction}\r\n"
    )


def test_answer_follows_offerer_preference_and_rejects_video() -> None:
    sdp = SessionDescription.parse(offer())
    neg = negotiate(sdp)
    assert (neg.payload_type, neg.telephone_event_pt, neg.media_index) == (8, 101, 1)
    assert (neg.remote_host, neg.remote_port, neg.hold) == ("192.0.2.5", 4000, False)
    local = LocalSdp("198.51.100.1", 30000, session_id=7)
    body = local.answer(sdp, neg).decode()
    assert "m=video 0 RTP/AVP 96" in body
    assert "m=audio 30000 RTP/AVP 8 101" in body
    assert "a=rtpmap:8 PCMA/8000" in body and "a=sendrecv" in body
    assert "c=IN IP4 198.51.100.1" in body and "o=confstream 7 7 " in body
    # a changed answer bumps the origin version
    body2 = local.answer(sdp, negotiate(SessionDescription.parse(offer(direction="sendonly"))))
    assert "o=confstream 7 8 " in body2.decode() and "a=recvonly" in body2.decode()


@pytest.mark.parametrize(
    ("direction", "conn", "answer", "hold"),
    [
        ("sendrecv", "192.0.2.5", "sendrecv", False),
        ("sendonly", "192.0.2.5", "recvonly", True),
        ("recvonly", "192.0.2.5", "sendonly", False),
        ("inactive", "192.0.2.5", "inactive", True),
        ("sendrecv", "0.0.0.0", "recvonly", True),
    ],
)
def test_directions_and_hold(direction: str, conn: str, answer: str, hold: bool) -> None:
    neg = negotiate(SessionDescription.parse(offer(direction=direction, conn=conn)))
    assert (neg.direction, neg.hold) == (answer, hold)


def test_no_common_codec_and_bad_sdp() -> None:
    with pytest.raises(NoCommonCodec):
        negotiate(SessionDescription.parse(offer("18 101")))
    with pytest.raises(NoCommonCodec):  # PCMU announced at a dynamic payload type
        negotiate(
            SessionDescription.parse(
                offer("96").replace("a=rtpmap:101", "a=rtpmap:96 PCMU/8000\r\na=x:101")
            )
        )
    for bad in ["", "x", "v=1\r\n", "v=0\r\nc=IN IP4\r\n", "v=0\r\nm=audio x RTP/AVP 0\r\n"]:
        with pytest.raises(SdpError):
            negotiate(SessionDescription.parse(bad))
