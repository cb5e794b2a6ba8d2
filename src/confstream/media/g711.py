"""G.711 µ-law and A-law (ITU-T G.711), vectorised with NumPy lookup tables.

The tables are computed once at import from the G.711 segment rules:

* encode: 65,536 entries indexed by the int16 sample viewed as uint16 (so ``-1`` is entry
  ``0xFFFF``), giving the 8-bit code;
* decode: 256 entries indexed by the code, giving the int16 sample.

The results are bit-exact with Python's ``audioop.lin2ulaw``/``ulaw2lin``/``lin2alaw``/
``alaw2lin`` (checked in tests for every input), which is what SIP phones and the stream
receivers expect: µ-law quantises the sample shifted to 14 bits, A-law to 13 bits, and decoding
returns the midpoint of each quantisation step scaled back to 16 bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # largest 14-bit magnitude before the bias is added
# Upper bound (inclusive) of each of the eight segments, in the 14-bit (µ) / 13-bit (A) domain.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (the table index)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> UInt8Array:
    pcm = _all_int16() >> 2  # 14-bit, arithmetic shift like the reference
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    mag = np.where(negative, -pcm, pcm)
    mag = np.minimum(mag, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")
    safe_seg = np.minimum(seg, 7)
    code = (safe_seg << 4) | ((mag >> (safe_seg + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> UInt8Array:
    pcm = _all_int16() >> 3  # 13-bit
    nonneg = pcm >= 0
    mask = np.where(nonneg, 0xD5, 0x55)
    mag = np.where(nonneg, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    safe_seg = np.minimum(seg, 7)
    shift = np.where(safe_seg < 2, 1, safe_seg)
    code = (safe_seg << 4) | ((mag >> shift) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE: UInt8Array = _build_ulaw_encode()
ULAW_DECODE: Int16Array = _build_ulaw_decode()
ALAW_ENCODE: UInt8Array = _build_alaw_encode()
ALAW_DECODE: Int16Array = _build_alaw_decode()
for _table in (ULAW_ENCODE, ULAW_DECODE, ALAW_ENCODE, ALAW_DECODE):
    _table.flags.writeable = False

#: The µ-law and A-law codes of digital silence (what a 0 sample encodes to).
ULAW_SILENCE = int(ULAW_ENCODE[0])
ALAW_SILENCE = int(ALAW_ENCODE[0])


def _as_index(pcm: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    return np.asarray(pcm, dtype=np.int16).view(np.uint16)


def _as_codes(codes: bytes | bytearray | memoryview | npt.ArrayLike) -> UInt8Array:
    if isinstance(codes, bytes | bytearray | memoryview):
        return np.frombuffer(codes, dtype=np.uint8)
    return np.asarray(codes, dtype=np.uint8)


def ulaw_encode(pcm: npt.ArrayLike) -> UInt8Array:
    """int16 samples to µ-law codes (a new uint8 array; ``.tobytes()`` for the wire)."""
    return ULAW_ENCODE[_as_index(pcm)]


def ulaw_decode(codes: bytes | bytearray | memoryview | npt.ArrayLike) -> Int16Array:
    """µ-law codes (bytes or a uint8 array) to int16 samples (a new array)."""
    return ULAW_DECODE[_as_codes(codes)]


def alaw_encode(pcm: npt.ArrayLike) -> UInt8Array:
    """int16 samples to A-law codes (a new uint8 array; ``.tobytes()`` for the wire)."""
    return ALAW_ENCODE[_as_index(pcm)]


def alaw_decode(codes: bytes | bytearray | memoryview | npt.ArrayLike) -> Int16Array:
    """A-law codes (bytes or a uint8 array) to int16 samples (a new array)."""
    return ALAW_DECODE[_as_codes(codes)]
