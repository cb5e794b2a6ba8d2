"""L16: signed 16-bit little-endian linear PCM (the stream codecs ``L16``, ``L16@16000h``,
``L16@24000h``), independent of the host's byte order."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_LE_INT16 = np.dtype("<i2")


def l16_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 samples to little-endian bytes (2 bytes per sample)."""
    return np.asarray(pcm, dtype=np.int16).astype(_LE_INT16, copy=False).tobytes()


def l16_decode(data: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    """Little-endian bytes to a new native int16 array.

    Raises ``ValueError`` for an odd number of bytes: callers that receive arbitrary chunks (a
    bidirectional stream's ``media`` payloads) keep the odd trailing byte for the next chunk.
    """
    if len(data) % 2:
        raise ValueError(f"L16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_LE_INT16).astype(np.int16)
