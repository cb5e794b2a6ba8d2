from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from confstream.media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def test_ulaw_encode_matches_audioop_for_every_sample() -> None:
    expected = np.frombuffer(audioop.lin2ulaw(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    got = g711.ulaw_encode(ALL_PCM)
    assert got.dtype == np.uint8
    mismatches = np.nonzero(got != expected)[0]
    assert mismatches.size == 0, ALL_PCM[mismatches[:10]]


def test_alaw_encode_matches_audioop_for_every_sample() -> None:
    expected = np.frombuffer(audioop.lin2alaw(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    got = g711.alaw_encode(ALL_PCM)
    mismatches = np.nonzero(got != expected)[0]
    assert mismatches.size == 0, ALL_PCM[mismatches[:10]]


@pytest.mark.parametrize(
    ("decode", "reference"),
    [(g711.ulaw_decode, audioop.ulaw2lin), (g711.alaw_decode, audioop.alaw2lin)],
)
def test_decode_matches_audioop_for_every_code(
    decode: Callable[[bytes | npt.NDArray[np.uint8]], npt.NDArray[np.int16]],
    reference: Callable[[bytes, int], bytes],
) -> None:
    codes = ALL_CODES.tobytes()
    expected = np.frombuffer(reference(codes, 2), dtype="<i2")
    from_bytes = decode(codes)
    from_array = decode(ALL_CODES)
    assert from_bytes.dtype == np.int16
    np.testing.assert_array_equal(from_bytes, expected)
    np.testing.assert_array_equal(from_array, expected)


def test_round_trip_is_stable_and_silence_codes() -> None:
    # decode(encode(decode(c))) == decode(c): decoded values are fixed points of the quantiser.
    for enc, dec in ((g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)):
        levels = dec(ALL_CODES)
        np.testing.assert_array_equal(dec(enc(levels)), levels)
    assert g711.ULAW_SILENCE == 0xFF
    assert g711.ALAW_SILENCE == 0xD5


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_ENCODE[0] = 1
