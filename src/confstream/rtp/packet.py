"""RTP packets (RFC 3550 §5.1): parse and serialize, nothing else.

Wire layout::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |                             SSRC                              |
    |                     CSRC list (CC x 32 bits)                  |
    | ext profile (16)              | ext length in 32-bit words    |  (when X)
    |                     extension data ...                        |
    |                     payload ...          | padding | pad count|  (when P)

Parsing is strict about what would make the packet meaningless (version other than 2, a header
longer than the datagram, a padding count that eats into the header, a payload above
:data:`MAX_PAYLOAD` bytes) and raises :class:`RtpError` for those, never anything else, so a
datagram handler needs exactly one ``except``. It is cheap: one :func:`struct.unpack_from` for the
fixed header and slices for the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "MAX_PAYLOAD", "RtpError", "RtpPacket"]

#: Size of the fixed RTP header, without CSRCs or extension.
HEADER_SIZE = 12
#: Largest payload accepted (bytes). An Ethernet MTU's worth: G.711 at 20 ms needs 160, and
#: anything near this size is not telephony audio but garbage or an attack.
MAX_PAYLOAD = 1500

_FIXED = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")


class RtpError(ValueError):
    """A datagram is not a valid RTP packet (the message says why)."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet.

    ``extension_profile`` is None when the packet has no header extension; ``extension`` holds
    the extension's data words (a multiple of 4 bytes). ``padding`` is the number of padding
    bytes (RFC 3550 §5.1, P bit) carried after the payload; it is kept on parse so that
    ``parse(serialize(p)) == p``.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram. Raises :class:`RtpError` (only) when it is not valid RTP."""
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpError(f"datagram too short for RTP: {size} bytes")
        b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
        version = b0 >> 6
        if version != 2:
            raise RtpError(f"RTP version {version}, expected 2")
        offset = HEADER_SIZE
        cc = b0 & 0x0F
        csrc: tuple[int, ...] = ()
        if cc:
            end = offset + 4 * cc
            if end > size:
                raise RtpError(f"CSRC count {cc} exceeds the datagram")
            csrc = struct.unpack_from(f"!{cc}I", data, offset)
            offset = end
        profile: int | None = None
        ext = b""
        if b0 & 0x10:
            if offset + 4 > size:
                raise RtpError("header extension exceeds the datagram")
            profile, words = _EXT.unpack_from(data, offset)
            offset += 4
            end = offset + 4 * words
            if end > size:
                raise RtpError(f"header extension of {words} words exceeds the datagram")
            ext = bytes(data[offset:end])
            offset = end
        end = size
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or size - padding < offset:
                raise RtpError(f"invalid padding count {padding}")
            end = size - padding
        if end - offset > MAX_PAYLOAD:
            raise RtpError(f"payload of {end - offset} bytes exceeds {MAX_PAYLOAD}")
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension=ext,
            padding=padding,
        )

    def serialize(self) -> bytes:
        """The packet's wire form. Raises :class:`RtpError` for fields that do not fit."""
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} out of range 0-127")
        if len(self.csrc) > 15:
            raise RtpError(f"{len(self.csrc)} CSRCs, at most 15")
        if len(self.extension) % 4:
            raise RtpError("header extension data must be a multiple of 4 bytes")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} out of range 0-255")
        b0 = 0x80 | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension_profile is not None:
            b0 |= 0x10
        b1 = self.payload_type | (0x80 if self.marker else 0)
        try:
            parts = [
                _FIXED.pack(
                    b0, b1, self.sequence_number & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc
                )
            ]
            if self.csrc:
                parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
            if self.extension_profile is not None:
                parts.append(_EXT.pack(self.extension_profile, len(self.extension) // 4))
                parts.append(self.extension)
        except struct.error as exc:
            raise RtpError(f"field out of range: {exc}") from None
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)
