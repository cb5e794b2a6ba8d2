"""The stream codecs: names, rates, and an encoder/decoder for each, looked up by name.

The engine mixes 20 ms frames of 8 kHz int16 PCM (:data:`PCM_RATE`). A Conference Stream
carries them in its ``StreamCodec`` (docs/api.md, docs/protocol.md):

==============  ====================  ===========  ===============
StreamCodec     ``mediaFormat``       sampleRate   bytes per 20 ms
==============  ====================  ===========  ===============
``PCMU``        ``audio/x-mulaw``     8000         160
``PCMA``        ``audio/x-alaw``      8000         160
``L16``         ``audio/x-L16``       8000         320
``L16@16000h``  ``audio/x-L16``       16000        640
``L16@24000h``  ``audio/x-L16``       24000        960
==============  ====================  ===========  ===============

L16 is signed 16-bit little-endian (:mod:`confstream.media.l16`); the ``@16000h``/``@24000h``
variants resample with :class:`confstream.media.resample.Resampler` (10 ms of added latency,
exact output sizes), so their encoders and decoders keep state: use one per direction and
track. :func:`get_encoder` and :func:`get_decoder` return a new one each call.

An encoder turns one 8 kHz int16 frame into the payload bytes. A decoder turns payload bytes
of any length (a bidirectional stream's ``media`` from the receiver) into 8 kHz int16 samples;
the L16 decoders keep an odd trailing byte for the next payload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Protocol

import numpy as np
import numpy.typing as npt

from confstream.media import g711
from confstream.media.l16 import l16_decode, l16_encode
from confstream.media.resample import Resampler

Int16Array = npt.NDArray[np.int16]

#: The sample rate of the PCM an encoder takes and a decoder gives (the engine's rate).
PCM_RATE = 8000
FRAME_MS = 20


class StreamCodec(StrEnum):
    """A ``StreamCodec`` value (the member's value is the name on the API and in records)."""

    PCMU = "PCMU"
    PCMA = "PCMA"
    L16 = "L16"
    L16_16K = "L16@16000h"
    L16_24K = "L16@24000h"

    @property
    def info(self) -> CodecInfo:
        return _INFO[self]

    @property
    def sample_rate(self) -> int:
        return _INFO[self].sample_rate

    @property
    def media_format(self) -> str:
        """The ``start.mediaFormat.encoding`` value."""
        return _INFO[self].media_format

    @property
    def frame_bytes(self) -> int:
        """Payload bytes of one 20 ms frame."""
        return _INFO[self].frame_bytes


@dataclass(frozen=True)
class CodecInfo:
    media_format: str
    sample_rate: int
    bytes_per_sample: int

    @property
    def frame_bytes(self) -> int:
        return self.sample_rate * FRAME_MS // 1000 * self.bytes_per_sample


_INFO: dict[StreamCodec, CodecInfo] = {
    StreamCodec.PCMU: CodecInfo("audio/x-mulaw", 8000, 1),
    StreamCodec.PCMA: CodecInfo("audio/x-alaw", 8000, 1),
    StreamCodec.L16: CodecInfo("audio/x-L16", 8000, 2),
    StreamCodec.L16_16K: CodecInfo("audio/x-L16", 16000, 2),
    StreamCodec.L16_24K: CodecInfo("audio/x-L16", 24000, 2),
}


class UnknownCodecError(ValueError):
    """The name is not a :class:`StreamCodec`."""


def codec_named(name: str) -> StreamCodec:
    """The :class:`StreamCodec` called ``name`` (exact spelling). Raises
    :class:`UnknownCodecError`."""
    try:
        return StreamCodec(name)
    except ValueError:
        raise UnknownCodecError(f"unknown StreamCodec {name!r}") from None


class Encoder(Protocol):
    """8 kHz int16 frames -> payload bytes in one codec."""

    @property
    def codec(self) -> StreamCodec: ...

    @property
    def sample_rate(self) -> int:
        """The payload's sample rate."""
        ...

    def encode(self, frame: Int16Array) -> bytes: ...


class Decoder(Protocol):
    """Payload bytes in one codec (any length) -> 8 kHz int16 samples."""

    @property
    def codec(self) -> StreamCodec: ...

    @property
    def sample_rate(self) -> int:
        """The payload's sample rate."""
        ...

    def decode(self, payload: bytes) -> Int16Array: ...


class _Base:
    def __init__(self, codec: StreamCodec) -> None:
        self._codec = codec

    @property
    def codec(self) -> StreamCodec:
        return self._codec

    @property
    def name(self) -> str:
        return self._codec.value

    @property
    def sample_rate(self) -> int:
        return self._codec.sample_rate


class PcmuEncoder(_Base):
    def __init__(self) -> None:
        super().__init__(StreamCodec.PCMU)

    def encode(self, frame: Int16Array) -> bytes:
        return g711.ulaw_encode(frame).tobytes()


class PcmuDecoder(_Base):
    def __init__(self) -> None:
        super().__init__(StreamCodec.PCMU)

    def decode(self, payload: bytes) -> Int16Array:
        return g711.ulaw_decode(payload)


class PcmaEncoder(_Base):
    def __init__(self) -> None:
        super().__init__(StreamCodec.PCMA)

    def encode(self, frame: Int16Array) -> bytes:
        return g711.alaw_encode(frame).tobytes()


class PcmaDecoder(_Base):
    def __init__(self) -> None:
        super().__init__(StreamCodec.PCMA)

    def decode(self, payload: bytes) -> Int16Array:
        return g711.alaw_decode(payload)


class L16Encoder(_Base):
    """L16 at the codec's rate; resamples from 8 kHz when that rate differs (stateful)."""

    def __init__(self, codec: StreamCodec = StreamCodec.L16) -> None:
        super().__init__(codec)
        rate = codec.sample_rate
        self._resampler = Resampler(PCM_RATE, rate) if rate != PCM_RATE else None

    def encode(self, frame: Int16Array) -> bytes:
        if self._resampler is not None:
            frame = self._resampler.process(frame)
        return l16_encode(frame)


class L16Decoder(_Base):
    """L16 at the codec's rate to 8 kHz; keeps a dangling odd byte for the next payload."""

    def __init__(self, codec: StreamCodec = StreamCodec.L16) -> None:
        super().__init__(codec)
        rate = codec.sample_rate
        self._resampler = Resampler(rate, PCM_RATE) if rate != PCM_RATE else None
        self._odd = b""

    def decode(self, payload: bytes) -> Int16Array:
        data = self._odd + payload
        if len(data) % 2:
            self._odd, data = data[-1:], data[:-1]
        else:
            self._odd = b""
        samples = l16_decode(data)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return samples


_ENCODERS: dict[StreamCodec, Callable[[], Encoder]] = {
    StreamCodec.PCMU: PcmuEncoder,
    StreamCodec.PCMA: PcmaEncoder,
    StreamCodec.L16: partial(L16Encoder, StreamCodec.L16),
    StreamCodec.L16_16K: partial(L16Encoder, StreamCodec.L16_16K),
    StreamCodec.L16_24K: partial(L16Encoder, StreamCodec.L16_24K),
}
_DECODERS: dict[StreamCodec, Callable[[], Decoder]] = {
    StreamCodec.PCMU: PcmuDecoder,
    StreamCodec.PCMA: PcmaDecoder,
    StreamCodec.L16: partial(L16Decoder, StreamCodec.L16),
    StreamCodec.L16_16K: partial(L16Decoder, StreamCodec.L16_16K),
    StreamCodec.L16_24K: partial(L16Decoder, StreamCodec.L16_24K),
}


def get_encoder(name: StreamCodec | str) -> Encoder:
    """A new encoder for the codec ``name``. Raises :class:`UnknownCodecError`."""
    return _ENCODERS[codec_named(name)]()


def get_decoder(name: StreamCodec | str) -> Decoder:
    """A new decoder for the codec ``name``. Raises :class:`UnknownCodecError`."""
    return _DECODERS[codec_named(name)]()


__all__ = [
    "PCM_RATE",
    "CodecInfo",
    "Decoder",
    "Encoder",
    "L16Decoder",
    "L16Encoder",
    "PcmaDecoder",
    "PcmaEncoder",
    "PcmuDecoder",
    "PcmuEncoder",
    "StreamCodec",
    "UnknownCodecError",
    "codec_named",
    "get_decoder",
    "get_encoder",
]
