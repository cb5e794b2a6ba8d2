"""Sans-I/O stream protocol: exact messages, counters, inbound parsing."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confstream.media.codecs import StreamCodec
from confstream.streams.protocol import (
    ClearIn,
    DtmfIn,
    InboundError,
    MarkIn,
    MediaIn,
    StreamProtocol,
    parse_inbound,
)
from confstream.streams.vocabulary import MediaTrack, Track

SID = "6f0b1c3e-8a42-4f7e-9a57-0f9d2b1e4c11"
ACC = "0c8d2a55-2d5e-4b8b-9a1e-7a3c5d9e1f20"
CONF = "b2e0a7c4-3f1d-4c6b-8e5a-1d2c3b4a5f60"


def proto(**kw: object) -> StreamProtocol:
    args: dict[str, object] = {
        "stream_sid": SID,
        "account_sid": ACC,
        "conference_sid": CONF,
        "tracks": ("inbound", "outbound"),
        "codec": "PCMU",
        "custom_parameters": {"b": "2", "a": "1"},
    }
    args.update(kw)
    return StreamProtocol(**args)  # type: ignore[arg-type]


def test_connected_and_start_exact() -> None:
    p = proto()
    assert json.loads(p.connected()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "0.2.0",
    }
    start = json.loads(p.start())
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": SID,
        "start": {
            "streamSid": SID,
            "accountSid": ACC,
            "callSid": CONF,
            "conferenceSid": CONF,
            "tracks": ["inbound", "outbound"],
            "customParameters": {"b": "2", "a": "1"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    # insertion order of custom parameters is kept on the wire
    assert list(start["start"]["customParameters"]) == ["b", "a"]


@pytest.mark.parametrize(
    ("codec", "encoding", "rate"),
    [
        ("PCMU", "audio/x-mulaw", 8000),
        ("PCMA", "audio/x-alaw", 8000),
        ("L16", "audio/x-L16", 8000),
        ("L16@16000h", "audio/x-L16", 16000),
        ("L16@24000h", "audio/x-L16", 24000),
    ],
)
def test_media_format_per_codec(codec: str, encoding: str, rate: int) -> None:
    fmt = json.loads(proto(codec=codec).start())["start"]["mediaFormat"]
    assert fmt == {"encoding": encoding, "sampleRate": rate, "channels": 1}
    assert isinstance(fmt["sampleRate"], int)
    assert StreamCodec(codec).frame_bytes == rate // 50 * (1 if codec.startswith("PCM") else 2)


def test_counters_media_dtmf_mark_stop() -> None:
    p = proto(custom_parameters={})
    p.connected()
    assert json.loads(p.start())["start"]["customParameters"] == {}
    m1 = json.loads(p.media(MediaTrack.INBOUND, b"\x01\x02", 0))
    m2 = json.loads(p.media(MediaTrack.OUTBOUND, b"\x03", 0))
    m3 = json.loads(p.media(MediaTrack.INBOUND, b"", 60))
    assert m1 == {
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": SID,
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(b"\x01\x02").decode(),
        },
    }
    assert (m2["sequenceNumber"], m2["media"]["chunk"], m2["media"]["track"]) == (
        "3",
        "1",
        "outbound",
    )
    assert (m3["sequenceNumber"], m3["media"]["chunk"], m3["media"]["timestamp"]) == (
        "4",
        "2",
        "60",
    )
    d = json.loads(p.dtmf("CALL1", "5", 200))
    assert d == {
        "event": "dtmf",
        "sequenceNumber": "5",
        "streamSid": SID,
        "dtmf": {"track": "inbound_track", "digit": "5", "duration": 200, "callSid": "CALL1"},
    }
    mk = json.loads(p.mark('he said "hi"\n'))
    assert mk == {
        "event": "mark",
        "sequenceNumber": "6",
        "streamSid": SID,
        "mark": {"name": 'he said "hi"\n'},
    }
    s = json.loads(p.stop())
    assert s == {
        "event": "stop",
        "sequenceNumber": "7",
        "streamSid": SID,
        "stop": {"accountSid": ACC, "callSid": CONF, "conferenceSid": CONF},
    }


def test_track_media_tracks() -> None:
    assert Track("inbound_track").media_tracks == ("inbound",)
    assert Track("outbound_track").media_tracks == ("outbound",)
    assert Track("both_tracks").media_tracks == (MediaTrack.INBOUND, MediaTrack.OUTBOUND)
    with pytest.raises(ValueError):
        Track("all")
    with pytest.raises(ValueError):
        proto(codec="OPUS")


@given(st.binary(max_size=1000), st.integers(min_value=0, max_value=10**9))
def test_media_string_building_equals_json(payload: bytes, ts: int) -> None:
    p = proto()
    msg = p.media(MediaTrack.OUTBOUND, payload, ts)
    obj = json.loads(msg)
    assert base64.b64decode(obj["media"]["payload"]) == payload
    assert obj["media"]["timestamp"] == str(ts)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=10))
def test_custom_parameters_roundtrip(params: dict[str, str]) -> None:
    start = json.loads(proto(custom_parameters=params).start())
    assert start["start"]["customParameters"] == params


def test_parse_inbound_events() -> None:
    pl = base64.b64encode(b"\xff" * 10).decode()
    assert parse_inbound(
        json.dumps({"event": "media", "streamSid": SID, "media": {"payload": pl}}), SID
    ) == MediaIn(b"\xff" * 10)
    assert parse_inbound('{"event":"mark","mark":{"name":"m1"}}', SID) == MarkIn("m1")
    assert parse_inbound(json.dumps({"event": "clear", "streamSid": SID}), SID) == ClearIn()
    assert parse_inbound('{"event":"dtmf","dtmf":{"digit":"5"}}') == DtmfIn("5", 200)
    assert parse_inbound('{"event":"dtmf","dtmf":{"digit":"#","duration":"100"}}') == DtmfIn(
        "#", 100
    )
    assert parse_inbound('{"event":"dtmf","dtmf":{"digit":"a","duration":99999}}') == DtmfIn(
        "A", 5000
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"event":"clear"}', "binary"),
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"x":1}', "no string 'event'"),
        ('{"event":"media"}', "'media' object"),
        ('{"event":"media","media":{"payload":5}}', "base64 string"),
        ('{"event":"media","media":{"payload":"@@@"}}', "not valid base64"),
        ('{"event":"mark","mark":{}}', "mark.name"),
        ('{"event":"dtmf","dtmf":{"digit":"55"}}', "dtmf.digit"),
        ('{"event":"dtmf","dtmf":{"digit":"5","duration":true}}', "dtmf.duration"),
        ('{"event":"clear","streamSid":"other"}', "not this stream"),
        ('{"event":"start"}', "unknown event"),
    ],
)
def test_parse_inbound_errors(data: str | bytes, match: str) -> None:
    with pytest.raises(InboundError, match=match):
        parse_inbound(data, SID)
