"""The Conference Streams WebSocket protocol, sans I/O (docs/protocol.md).

:class:`StreamProtocol` builds the exact JSON text messages the server sends on one stream
connection and keeps its counters; :func:`parse_inbound` turns the text a receiver sends back
into events. Nothing here touches sockets or clocks: bytes/strings in, strings/events out.

Rules (one place):

* ``connected`` is the first message and carries no ``sequenceNumber``.
* A conference stream's ``start`` and ``stop`` carry ``callSid`` = ``conferenceSid`` = the
  ConferenceSid; a call stream's (``call_sid`` given) carry ``callSid`` = that CallSid and no
  ``conferenceSid`` (docs/protocol.md, "Call streams").
* ``sequenceNumber`` counts every later message on the connection from ``"1"`` (``start`` is
  1), in the order the messages are **built**; the session builds a message right before sending
  it, so numbers have no gaps even when queued audio is dropped.
* ``chunk`` counts ``media`` messages per track from ``"1"`` (also assigned when built).
* ``timestamp`` is what the caller passes: milliseconds since the stream started, of the frame's
  place in the conference timeline, so dropped frames show as jumps.
* Counters are JSON strings; ``sampleRate``, ``channels`` and ``duration`` are numbers.
* ``media`` messages are built as UTF-8 bytes from a template made once per stream and track
  (:meth:`StreamProtocol.media_bytes`: one ``bytes % (...)`` per message, the base64 payload
  going in as the bytes :mod:`confstream.streams.shared` made once for every stream; about 9x
  cheaper than ``json.dumps``, and nothing to encode again before the WebSocket frame). That is
  safe because every interpolated value is a UUID, a decimal counter, a fixed track name or
  base64 text. Every message carrying user-chosen text (custom parameters, mark names, digits)
  goes through ``json.dumps``.

Inbound (receiver → server) messages understood: ``media`` (``media.payload`` base64 in the
stream's codec, any length), ``mark`` (``mark.name``, at most
:data:`~confstream.streams.inbound.MAX_MARK_NAME` characters), ``clear``, ``dtmf``
(``dtmf.digit``, an optional numeric ``dtmf.duration`` in ms, default 200, clamped to
40..5000). A ``streamSid``, when present, must be this stream's. Anything else raises
:class:`InboundError` with a message saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confstream.media.codecs import StreamCodec, codec_named
from confstream.streams.inbound import MAX_MARK_NAME
from confstream.streams.vocabulary import MediaTrack, Track

PROTOCOL_NAME = "Call"
PROTOCOL_VERSION = "0.2.0"

DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
DTMF_DEFAULT_MS = 200
DTMF_MIN_MS = 40
DTMF_MAX_MS = 5000


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class StreamProtocol:
    """Message builder and counters for one stream connection."""

    def __init__(
        self,
        *,
        stream_sid: str,
        account_sid: str,
        conference_sid: str | None,
        tracks: Sequence[MediaTrack],
        codec: StreamCodec | str,
        custom_parameters: Mapping[str, str] | None = None,
        call_sid: str | None = None,
    ) -> None:
        if (conference_sid is None) == (call_sid is None):
            raise ValueError("a stream's source is exactly one conference or one call")
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.conference_sid = conference_sid
        self.call_sid = call_sid
        self.tracks = tuple(MediaTrack(t) for t in tracks)
        self.codec = codec_named(codec)  # UnknownCodecError (a ValueError) for other names
        self.custom_parameters = dict(custom_parameters or {})
        self.sequence = 0  # last sequenceNumber built
        self.chunks: dict[MediaTrack, int] = dict.fromkeys(MediaTrack, 0)
        # Precomputed templates of media messages, one per track (see module docstring).
        sid_json = _dumps(stream_sid).encode()
        self._media_tpl = {
            track: b'{"event":"media","sequenceNumber":"%d","streamSid":'
            + sid_json
            + b',"media":{"track":"'
            + track.value.encode()
            + b'","chunk":"%d","timestamp":"%d","payload":"%b"}}'
            for track in MediaTrack
        }

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def connected(self) -> str:
        """The first message; carries no sequenceNumber."""
        return _dumps(
            {"event": "connected", "protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION}
        )

    def _source(self) -> dict[str, str]:
        """``callSid`` (and ``conferenceSid`` for a conference stream)."""
        if self.call_sid is not None:
            return {"callSid": self.call_sid}
        assert self.conference_sid is not None
        return {"callSid": self.conference_sid, "conferenceSid": self.conference_sid}

    def start(self) -> str:
        return _dumps(
            {
                "event": "start",
                "sequenceNumber": str(self._next()),
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": self.account_sid,
                    **self._source(),
                    "tracks": [t.value for t in self.tracks],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {
                        "encoding": self.codec.media_format,
                        "sampleRate": self.codec.sample_rate,
                        "channels": 1,
                    },
                },
            }
        )

    def media_bytes(self, track: MediaTrack, payload_b64: bytes, timestamp_ms: int) -> bytes:
        """A ``media`` message (UTF-8 JSON) from an already base64-encoded payload."""
        self.sequence = seq = self.sequence + 1
        chunks = self.chunks
        chunks[track] = chunk = chunks[track] + 1
        return self._media_tpl[track] % (seq, chunk, int(timestamp_ms), payload_b64)

    def media_b64(self, track: MediaTrack, payload_b64: str, timestamp_ms: int) -> str:
        """:meth:`media_bytes` as text."""
        return self.media_bytes(track, payload_b64.encode("ascii"), timestamp_ms).decode()

    def media(self, track: MediaTrack, payload: bytes, timestamp_ms: int) -> str:
        """A ``media`` message; ``payload`` is one frame in the stream's codec."""
        return self.media_bytes(track, base64.b64encode(payload), timestamp_ms).decode()

    def dtmf(self, call_sid: str, digit: str, duration_ms: int) -> str:
        return _dumps(
            {
                "event": "dtmf",
                "sequenceNumber": str(self._next()),
                "streamSid": self.stream_sid,
                "dtmf": {
                    "track": Track.INBOUND.value,
                    "digit": digit,
                    "duration": int(duration_ms),
                    "callSid": call_sid,
                },
            }
        )

    def mark(self, name: str) -> str:
        return _dumps(
            {
                "event": "mark",
                "sequenceNumber": str(self._next()),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    def stop(self) -> str:
        return _dumps(
            {
                "event": "stop",
                "sequenceNumber": str(self._next()),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, **self._source()},
            }
        )


# --------------------------------------------------------------------------- inbound


class InboundError(ValueError):
    """A receiver message that cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class MediaIn:
    payload: bytes


@dataclass(frozen=True)
class MarkIn:
    name: str


@dataclass(frozen=True)
class ClearIn:
    pass


@dataclass(frozen=True)
class DtmfIn:
    digit: str
    duration_ms: int


InboundEvent = MediaIn | MarkIn | ClearIn | DtmfIn


def _section(msg: dict[str, object], key: str) -> dict[str, object]:
    sec = msg.get(key)
    if not isinstance(sec, dict):
        raise InboundError(f"{key!r} event needs a {key!r} object")
    return sec


def parse_inbound(data: str | bytes, stream_sid: str | None = None) -> InboundEvent:
    """Parse one text message from the receiver. Raises :class:`InboundError`.

    Binary frames are refused (the protocol is JSON text frames only).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raise InboundError("binary frames are not part of the protocol; send JSON text")
    try:
        msg = json.loads(data)
    except ValueError as exc:
        raise InboundError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise InboundError("message must be a JSON object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise InboundError("message has no string 'event'")
    sid = msg.get("streamSid")
    if stream_sid is not None and sid is not None and sid != stream_sid:
        raise InboundError(f"streamSid {sid!r} is not this stream's")
    if event == "media":
        media = _section(msg, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise InboundError("media.payload must be a base64 string")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InboundError(f"media.payload is not valid base64: {exc}") from None
        return MediaIn(raw)
    if event == "mark":
        mark = _section(msg, "mark")
        name = mark.get("name")
        if not isinstance(name, str):
            raise InboundError("mark.name must be a string")
        if len(name) > MAX_MARK_NAME:
            raise InboundError(f"mark.name is longer than {MAX_MARK_NAME} characters")
        return MarkIn(name)
    if event == "clear":
        return ClearIn()
    if event == "dtmf":
        dtmf = _section(msg, "dtmf")
        digit = dtmf.get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise InboundError("dtmf.digit must be one of 0-9 * # A-D")
        duration = dtmf.get("duration", DTMF_DEFAULT_MS)
        if isinstance(duration, str) and duration.isdigit():
            duration = int(duration)
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise InboundError("dtmf.duration must be a number of milliseconds")
        ms = max(DTMF_MIN_MS, min(DTMF_MAX_MS, int(duration)))
        return DtmfIn(digit.upper(), ms)
    raise InboundError(f"unknown event {event!r} (expected media, mark, clear or dtmf)")
