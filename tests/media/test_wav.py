from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from confstream.media.analysis import goertzel_power, rms_dbfs, tone, tone_levels
from confstream.media.g711 import alaw_decode, alaw_encode, ulaw_decode
from confstream.media.wav import WavError, parse_wav, parse_wav_native, wav_bytes, write_wav


def _wav(tag: int, channels: int, rate: int, bits: int, body: bytes, extra: bytes = b"") -> bytes:
    width = bits // 8
    fmt = struct.pack(
        "<HHIIHH", tag, channels, rate, rate * width * channels, width * channels, bits
    )
    chunks = b"LIST" + struct.pack("<I", 3) + b"abc\0"  # odd chunk before fmt, padded
    chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += extra + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def test_pcm16_mono_8k_round_trip(tmp_path: Path) -> None:
    x = tone(440, 0.3)
    path = write_wav(tmp_path / "t.wav", x)
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and struct.unpack_from("<H", data, 20)[0] == 1
    np.testing.assert_array_equal(parse_wav(data), x)


def test_ulaw_file_has_tag_7_and_parses(tmp_path: Path) -> None:
    x = tone(660, 0.3)
    data = write_wav(tmp_path / "u.wav", x, format="ulaw").read_bytes()
    tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, 20)
    assert (tag, channels, rate, align, bits) == (7, 1, 8000, 1, 8)
    y = parse_wav(data)
    assert y.size == x.size
    # µ-law is lossy; the tone is intact and the error small
    assert np.max(np.abs(y.astype(int) - x)) < 300
    assert tone_levels(y, [660])[660] > 0.99


def test_alaw_stereo_16k_is_downmixed_and_resampled() -> None:
    left = tone(880, 0.5, rate=16000)
    right = np.zeros_like(left)
    codes = np.column_stack([alaw_encode(left), alaw_encode(right)]).ravel()
    y = parse_wav(_wav(6, 2, 16000, 8, codes.tobytes()))
    assert y.size == 4000
    assert tone_levels(y, [880])[880] > 0.95
    # average of the channels: half the amplitude, about -6 dB
    assert abs(rms_dbfs(y) - (rms_dbfs(alaw_decode(alaw_encode(left))) - 6.02)) < 0.3


def test_pcm16_stereo_44k_and_extensible_and_other_widths() -> None:
    x = tone(1000, 0.2, rate=44100)
    stereo = np.column_stack([x, x]).ravel().astype("<i2").tobytes()
    y = parse_wav(_wav(1, 2, 44100, 16, stereo))
    assert y.size == 1600
    assert tone_levels(y, [1000])[1000] > 0.95
    # WAVE_FORMAT_EXTENSIBLE with the µ-law SubFormat GUID
    codes = bytes(range(256))
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 8000, 1, 8, 22, 8, 1)
    fmt += struct.pack("<H", 7) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 256) + codes
    data = b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks
    np.testing.assert_array_equal(parse_wav(data), ulaw_decode(codes))
    # 8-bit unsigned and 24-bit signed PCM
    pcm8 = parse_wav_native(_wav(1, 1, 8000, 8, bytes([128, 255, 0])))[0]
    np.testing.assert_array_equal(pcm8, [0, 127 * 256, -32768])
    pcm24 = parse_wav_native(_wav(1, 1, 8000, 24, b"\x00\x00\x80\xff\xff\x7f\x00\x01\x00"))[0]
    np.testing.assert_array_equal(pcm24, [-32768, 32767, 1])


def test_truncated_data_chunk_is_cut_to_whole_frames() -> None:
    body = np.arange(10, dtype="<i2").tobytes()
    data = _wav(1, 1, 8000, 16, body)[:-3]  # header says 20 bytes, 17 present
    np.testing.assert_array_equal(parse_wav(data), np.arange(8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RIFF"),
        (b"ID3\x03\x00garbage that is an mp3 maybe" * 3, "RIFF"),
        (b"RIFF\x04\x00\x00\x00WAVE", "fmt"),
        (_wav(1, 1, 8000, 16, b"")[: -8 - 0], "data"),
        (_wav(2, 1, 8000, 4, b"\x00" * 10), "format tag 2"),
        (_wav(1, 1, 8000, 12, b"\x00" * 10), "12 bits"),
        (_wav(1, 0, 8000, 16, b"\x00" * 10), "channel"),
        (_wav(1, 1, 0, 16, b"\x00" * 10), "sample rate"),
        (_wav(7, 1, 8000, 16, b"\x00" * 10), "8 bits"),
    ],
)
def test_bad_input_raises_wav_error(data: bytes, message: str) -> None:
    with pytest.raises(WavError, match=message):
        parse_wav(data)


def test_wav_bytes_rejects_unknown_format() -> None:
    with pytest.raises(ValueError):
        wav_bytes(np.zeros(4, np.int16), format="mp3")  # type: ignore[arg-type]  # an invalid format on purpose


def test_analysis_helpers() -> None:
    assert rms_dbfs(np.zeros(10, np.int16)) == float("-inf")
    assert abs(rms_dbfs(tone(1000, 1, amplitude=32767)) + 3.01) < 0.05
    assert abs(goertzel_power(tone(1000, 1, amplitude=32767), 1000) - 1.0) < 0.01
    assert goertzel_power(tone(1000, 1), 1200) < 1e-5
    assert tone_levels(np.zeros(100, np.int16), [440]) == {440: 0.0}
