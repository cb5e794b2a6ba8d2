"""SDP (RFC 4566) offer/answer (RFC 3264) for one audio stream, sans-I/O.

What the server supports and why:

* Codecs: PCMU (static payload type 0) and PCMA (8), the G.711 pair every SIP UA has; the
  conference mixes at 8 kHz so nothing else is needed. The offerer's preference order decides
  which one is used. ``telephone-event/8000`` (RFC 4733) is accepted with the offerer's dynamic
  payload type and echoed with ``0-16`` (digits, ``*``, ``#``, A-D).
* One audio stream: the first ``m=audio`` with a common codec is accepted; every other media
  line (video, a second audio, or unsupported transports) is rejected with port 0 as RFC 3264
  §6 requires, keeping the line count equal.
* Direction: the answer mirrors the offer (``sendonly`` -> ``recvonly``, ``recvonly`` ->
  ``sendonly``, ``inactive`` -> ``inactive``, else ``sendrecv``).
* Hold (RFC 3264 §8.4, and the older RFC 2543 style): an offer whose direction is
  ``sendonly``/``inactive`` or whose connection address is ``0.0.0.0`` puts the caller on hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PCMU = 0
PCMA = 8
SUPPORTED_CODECS: dict[int, str] = {PCMU: "PCMU", PCMA: "PCMA"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
#: Upper bound on lines read from one SDP body (a real offer has about 20).
MAX_SDP_LINES = 512


class SdpError(ValueError):
    """The body is not SDP this server can read."""


class NoCommonCodec(SdpError):
    """No audio stream offers PCMU or PCMA: answer 488 Not Acceptable Here."""


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    direction: str | None = None
    rtpmap: dict[int, str] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None


@dataclass
class SessionDescription:
    origin: str = ""
    session_name: str = "-"
    connection: str | None = None
    direction: str | None = None
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes | str) -> SessionDescription:
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
        except UnicodeDecodeError:
            raise SdpError("SDP is not UTF-8") from None
        sdp = cls()
        lines = text.replace("\r\n", "\n").split("\n")
        if len(lines) > MAX_SDP_LINES:
            raise SdpError("SDP too long")
        current: MediaDescription | None = None
        seen_version = False
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"bad SDP line {line[:40]!r}")
            kind, value = line[0], line[2:]
            if kind == "v":
                if value.strip() != "0":
                    raise SdpError("unsupported SDP version")
                seen_version = True
            elif kind == "o":
                sdp.origin = value
            elif kind == "s":
                sdp.session_name = value
            elif kind == "c":
                addr = _parse_connection(value)
                if current is None:
                    sdp.connection = addr
                else:
                    current.connection = addr
            elif kind == "m":
                current = _parse_media(value)
                sdp.media.append(current)
            elif kind == "a":
                name, _, attr = value.partition(":")
                name = name.strip().lower()
                if name in DIRECTIONS:
                    if current is None:
                        sdp.direction = name
                    else:
                        current.direction = name
                elif current is not None and name in ("rtpmap", "fmtp"):
                    pt_text, _, rest = attr.partition(" ")
                    if pt_text.isdigit() and int(pt_text) < 128:
                        target = current.rtpmap if name == "rtpmap" else current.fmtp
                        target[int(pt_text)] = rest.strip()
                elif current is not None and name == "ptime" and attr.strip().isdigit():
                    current.ptime = int(attr.strip()[:6])
        if not seen_version:
            raise SdpError("missing v= line")
        return sdp


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    return parts[2].split("/")[0]


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError("bad m= line")
    port_text = parts[1].split("/")[0]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError("bad m= port")
    return MediaDescription(parts[0].lower(), int(port_text), parts[2], parts[3:])


@dataclass(frozen=True)
class Negotiated:
    """The result of answering an offer: what the RTP session must be told."""

    remote_host: str
    remote_port: int
    payload_type: int
    telephone_event_pt: int | None
    #: Direction written in our answer.
    direction: str
    #: True when the offer puts us on hold (sendonly/inactive/0.0.0.0 or port 0).
    hold: bool
    #: Index of the accepted m= line in the offer.
    media_index: int


def _codec_of(m: MediaDescription, fmt: str) -> int | None:
    """The static payload type (0/8) ``fmt`` stands for, or None. Dynamic payload types for
    G.711 are not accepted: the RTP layer sends the static numbers."""
    if not fmt.isdigit() or int(fmt) not in SUPPORTED_CODECS:
        return None
    pt = int(fmt)
    name = m.rtpmap.get(pt)
    if name is not None:
        enc, _, rate = name.partition("/")
        if enc.upper() != SUPPORTED_CODECS[pt] or rate.split("/")[0] not in ("", "8000"):
            return None
    return pt


def _telephone_event_pt(m: MediaDescription) -> int | None:
    for pt, name in m.rtpmap.items():
        if name.lower().startswith("telephone-event/8000"):
            return pt
    return None


def negotiate(offer: SessionDescription) -> Negotiated:
    """Pick the audio stream and codec; raises :class:`NoCommonCodec` when none fits."""
    for index, m in enumerate(offer.media):
        if m.media != "audio" or m.port == 0 or "RTP/AVP" not in m.proto.upper():
            continue
        if m.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
            continue  # SRTP profiles are not supported
        chosen: int | None = None
        for fmt in m.formats:
            codec = _codec_of(m, fmt)
            if codec is not None:
                chosen = int(fmt)
                break
        if chosen is None:
            continue
        host = m.connection or offer.connection
        if host is None:
            raise SdpError("no c= line for the audio stream")
        direction = m.direction or offer.direction or "sendrecv"
        null_address = host in ("0.0.0.0", "::")
        hold = direction in ("sendonly", "inactive") or null_address
        answer_direction = _ANSWER_DIRECTION[direction]
        if null_address:  # RFC 2543 hold: never send to 0.0.0.0
            answer_direction = "inactive" if direction in ("inactive", "recvonly") else "recvonly"
        return Negotiated(
            remote_host=host,
            remote_port=m.port,
            payload_type=chosen,
            telephone_event_pt=_telephone_event_pt(m),
            direction=answer_direction,
            hold=hold,
            media_index=index,
        )
    raise NoCommonCodec("no audio stream with PCMU or PCMA")


class LocalSdp:
    """Our side of one dialog's SDP: the origin line's session id and version (RFC 3264 §8:
    the version increases by one each time the description changes)."""

    def __init__(self, address: str, port: int, session_id: int | None = None) -> None:
        self.address = address
        self.port = port
        self.session_id = session_id if session_id is not None else int(time.time() * 1000)
        self.version = self.session_id
        self._last: tuple[object, ...] | None = None

    def _lines_head(self) -> list[str]:
        ip = "IP6" if ":" in self.address else "IP4"
        return [
            "v=0",
            f"o=confstream {self.session_id} {self.version} IN {ip} {self.address}",
            "s=confstream",
            f"c=IN {ip} {self.address}",
            "t=0 0",
        ]

    def _bump(self, key: tuple[object, ...]) -> None:
        if self._last is not None and key != self._last:
            self.version += 1
        self._last = key

    def answer(self, offer: SessionDescription, neg: Negotiated) -> bytes:
        """The answer to ``offer``: our port on the accepted line, 0 on every other one."""
        self._bump(("answer", neg.payload_type, neg.telephone_event_pt, neg.direction))
        lines = self._lines_head()
        for index, m in enumerate(offer.media):
            if index != neg.media_index:
                fmt = " ".join(m.formats) or "0"
                lines.append(f"m={m.media} 0 {m.proto} {fmt}")
                continue
            fmts = [str(neg.payload_type)]
            if neg.telephone_event_pt is not None:
                fmts.append(str(neg.telephone_event_pt))
            lines.append(f"m=audio {self.port} RTP/AVP {' '.join(fmts)}")
            lines.append(f"a=rtpmap:{neg.payload_type} {SUPPORTED_CODECS[neg.payload_type]}/8000")
            if neg.telephone_event_pt is not None:
                lines.append(f"a=rtpmap:{neg.telephone_event_pt} telephone-event/8000")
                lines.append(f"a=fmtp:{neg.telephone_event_pt} 0-16")
            lines.append("a=ptime:20")
            lines.append(f"a={neg.direction}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def offer(self, telephone_event_pt: int = 101, direction: str = "sendrecv") -> bytes:
        """An offer (for a 200 to an INVITE without SDP): PCMU, PCMA, telephone-event."""
        self._bump(("offer", direction))
        lines = self._lines_head()
        lines.append(f"m=audio {self.port} RTP/AVP 0 8 {telephone_event_pt}")
        lines.append("a=rtpmap:0 PCMU/8000")
        lines.append("a=rtpmap:8 PCMA/8000")
        lines.append(f"a=rtpmap:{telephone_event_pt} telephone-event/8000")
        lines.append(f"a=fmtp:{telephone_event_pt} 0-16")
        lines.append("a=ptime:20")
        lines.append(f"a={direction}")
        return ("\r\n".join(lines) + "\r\n").encode()


def negotiate_answer(answer: SessionDescription) -> Negotiated:
    """Read the peer's answer to our :meth:`LocalSdp.offer` (same rules as an offer)."""
    return negotiate(answer)
