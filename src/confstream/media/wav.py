"""WAV (RIFF/WAVE) reading for announcements, and writing for tests and tools.

:func:`parse_wav` accepts what announcement URLs usually serve: linear PCM (8/16/24/32-bit
integer, 32-bit float), G.711 µ-law (format tag 7) and A-law (format tag 6), mono or multi-
channel, any sample rate, including ``WAVE_FORMAT_EXTENSIBLE`` wrappers. It returns int16 mono at
8 kHz (channels averaged, then resampled with soxr), ready for ``ConferenceMedia.play``.

Anything else raises :class:`WavError` with a message saying what was wrong. Truncated ``data``
chunks (streamed files whose header sizes were never fixed up) are accepted up to the last whole
sample frame, as most players do.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from confstream.media.g711 import alaw_decode, ulaw_decode, ulaw_encode
from confstream.media.resample import resample

Int16Array = npt.NDArray[np.int16]
#: What :func:`write_wav` writes: 16-bit PCM or G.711 µ-law (tag 7).
WavFormat = Literal["pcm16", "ulaw"]

FORMAT_PCM = 1
FORMAT_FLOAT = 3
FORMAT_ALAW = 6
FORMAT_MULAW = 7
FORMAT_EXTENSIBLE = 0xFFFE

#: Output rate of :func:`parse_wav` (the engine's rate).
TARGET_RATE = 8000
#: Refuse absurd headers (rates above this are not audio we can use).
MAX_RATE = 384_000
MAX_CHANNELS = 16


class WavError(ValueError):
    """The bytes are not a WAV file this server can play; the message says why."""


def _read_chunks(data: bytes) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]  # may be short: truncated file
        chunks.setdefault(cid, body)
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return chunks


def parse_wav_native(data: bytes) -> tuple[Int16Array, int]:
    """Decode a WAV to int16 mono at its own rate. Returns ``(samples, rate)``."""
    chunks = _read_chunks(bytes(data))
    fmt = chunks.get(b"fmt ")
    if fmt is None or len(fmt) < 16:
        raise WavError("WAV file has no valid 'fmt ' chunk")
    if b"data" not in chunks:
        raise WavError("WAV file has no 'data' chunk")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise WavError("WAVE_FORMAT_EXTENSIBLE header is too short")
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the SubFormat GUID
    if not 1 <= channels <= MAX_CHANNELS:
        raise WavError(f"unsupported channel count {channels}")
    if not 1 <= rate <= MAX_RATE:
        raise WavError(f"unsupported sample rate {rate}")
    raw = chunks[b"data"]

    width = {FORMAT_PCM: bits // 8, FORMAT_FLOAT: 4, FORMAT_ALAW: 1, FORMAT_MULAW: 1}.get(tag)
    if width is None:
        raise WavError(f"unsupported WAV format tag {tag} (PCM, float, A-law or µ-law only)")
    if tag == FORMAT_PCM and bits not in (8, 16, 24, 32):
        raise WavError(f"unsupported PCM sample size {bits} bits")
    if tag == FORMAT_FLOAT and bits != 32:
        raise WavError(f"unsupported float sample size {bits} bits")
    if tag in (FORMAT_ALAW, FORMAT_MULAW) and bits != 8:
        raise WavError(f"G.711 WAV must have 8 bits per sample, not {bits}")
    if block_align and block_align != width * channels:
        raise WavError(f"inconsistent block alignment {block_align}")
    frame_bytes = width * channels
    raw = raw[: len(raw) - len(raw) % frame_bytes]

    samples: npt.NDArray[np.float64]
    if tag == FORMAT_MULAW:
        samples = ulaw_decode(raw).astype(np.float64)
    elif tag == FORMAT_ALAW:
        samples = alaw_decode(raw).astype(np.float64)
    elif tag == FORMAT_FLOAT:
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float64) * 32768.0
        samples = np.nan_to_num(samples)
    elif bits == 8:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif bits == 16:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        samples = v.astype(np.float64) / 256.0
    else:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    mono = samples.reshape(-1, channels).mean(axis=1)
    out: Int16Array = np.clip(np.rint(mono), -32768, 32767).astype(np.int16)
    return out, rate


def parse_wav(data: bytes) -> Int16Array:
    """Decode a WAV to int16 mono at 8 kHz (see the module docstring). Raises WavError."""
    pcm, rate = parse_wav_native(data)
    if rate == TARGET_RATE:
        return pcm
    return resample(pcm, rate, TARGET_RATE)


def wav_bytes(pcm: npt.ArrayLike, rate: int = TARGET_RATE, format: WavFormat = "pcm16") -> bytes:
    """A mono WAV file as bytes: 16-bit PCM (tag 1) or G.711 µ-law (tag 7, 8 bits)."""
    samples = np.asarray(pcm, dtype=np.int16)
    if format == "pcm16":
        body = samples.astype("<i2").tobytes()
        tag, width = FORMAT_PCM, 2
        fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * width, width, 16)
    elif format == "ulaw":
        body = ulaw_encode(samples).tobytes()
        tag, width = FORMAT_MULAW, 1
        # Non-PCM formats carry cbSize (0) after the 16-byte header.
        fmt = struct.pack("<HHIIHHH", tag, 1, rate, rate * width, width, 8, 0)
    else:
        raise ValueError(f"unknown WAV format {format!r}")
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if format == "ulaw":
        chunks += b"fact" + struct.pack("<II", 4, samples.size)
    chunks += b"data" + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def write_wav(
    path: str | Path,
    pcm: npt.ArrayLike,
    rate: int = TARGET_RATE,
    format: WavFormat = "pcm16",
) -> Path:
    """Write a mono WAV: ``"pcm16"`` (baresip's ``aufile``) or ``"ulaw"`` (sipp's
    ``rtp_stream``, which wants tag 7, 8 kHz mono). Returns the path."""
    p = Path(path)
    p.write_bytes(wav_bytes(pcm, rate, format))
    return p
