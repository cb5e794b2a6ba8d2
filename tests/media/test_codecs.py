"""The public stream codec module: lookup, frame sizes, round trips, state across payloads."""

from __future__ import annotations

import audioop

import numpy as np
import pytest

from confstream.media.analysis import tone, tone_levels
from confstream.media.codecs import (
    PCM_RATE,
    StreamCodec,
    UnknownCodecError,
    codec_named,
    get_decoder,
    get_encoder,
)

EXPECTED = {
    # name: (media format, sample rate, bytes per 20 ms)
    "PCMU": ("audio/x-mulaw", 8000, 160),
    "PCMA": ("audio/x-alaw", 8000, 160),
    "L16": ("audio/x-L16", 8000, 320),
    "L16@16000h": ("audio/x-L16", 16000, 640),
    "L16@24000h": ("audio/x-L16", 24000, 960),
}


def test_the_vocabulary_is_exactly_the_documented_codecs() -> None:
    assert [c.value for c in StreamCodec] == list(EXPECTED)
    for name, (fmt, rate, size) in EXPECTED.items():
        codec = codec_named(name)
        assert (codec.media_format, codec.sample_rate, codec.frame_bytes) == (fmt, rate, size)
        assert get_encoder(name).sample_rate == rate
        assert get_decoder(codec).codec is codec


@pytest.mark.parametrize("name", ["OPUS", "pcmu", "L16@8000h", "", "L16 "])
def test_lookup_errors(name: str) -> None:
    with pytest.raises(UnknownCodecError, match="unknown StreamCodec"):
        get_encoder(name)
    with pytest.raises(UnknownCodecError):
        get_decoder(name)
    with pytest.raises(ValueError):  # UnknownCodecError is a ValueError
        codec_named(name)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_frame_has_the_documented_size(name: str) -> None:
    enc = get_encoder(name)
    src = tone(700, 0.2)
    sizes = {len(enc.encode(src[i : i + 160])) for i in range(0, src.size, 160)}
    assert sizes == {EXPECTED[name][2]}


@pytest.mark.parametrize(
    ("name", "reference"),
    [("PCMU", audioop.lin2ulaw), ("PCMA", audioop.lin2alaw)],
)
def test_g711_encoders_match_the_reference(name: str, reference: object) -> None:
    frame = (np.arange(160) * 400 - 32000).astype(np.int16)
    assert callable(reference)
    assert get_encoder(name).encode(frame) == reference(frame.tobytes(), 2)


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_round_trip_is_within_one_quantisation_step(name: str) -> None:
    frame = (np.arange(160) * 400 - 32000).astype(np.int16)
    back = get_decoder(name).decode(get_encoder(name).encode(frame))
    assert back.dtype == np.int16 and back.size == 160
    err = np.abs(back.astype(int) - frame.astype(int))
    # G.711 steps grow with the magnitude: at most 1/16 of it (plus the smallest step)
    assert np.all(err <= np.abs(frame.astype(int)) // 16 + 16)
    assert not np.array_equal(back, np.zeros(160, np.int16))


def test_l16_round_trip_is_exact_and_little_endian() -> None:
    frame = np.array([0, 1, -1, 32767, -32768] * 32, dtype=np.int16)
    payload = get_encoder("L16").encode(frame)
    assert payload[:6] == b"\x00\x00\x01\x00\xff\xff"
    np.testing.assert_array_equal(get_decoder("L16").decode(payload), frame)


def test_l16_decoder_keeps_odd_bytes_across_payloads() -> None:
    samples = np.array([1, -2, 300, -32768, 32767], dtype=np.int16)
    raw = samples.astype("<i2").tobytes()
    dec = get_decoder(StreamCodec.L16)
    out = np.concatenate([dec.decode(raw[:3]), dec.decode(raw[3:7]), dec.decode(raw[7:])])
    assert out.tolist() == samples.tolist()


@pytest.mark.parametrize("name", ["L16@16000h", "L16@24000h"])
def test_resampling_codecs_round_trip_a_tone(name: str) -> None:
    enc, dec = get_encoder(name), get_decoder(name)
    src = tone(1000, 1.0)
    back = []
    for i in range(0, src.size, 160):
        payload = enc.encode(src[i : i + 160])
        # a receiver may split payloads anywhere, even inside a sample
        cut = 101
        back.append(dec.decode(payload[:cut]))
        back.append(dec.decode(payload[cut:]))
    y = np.concatenate(back)
    assert y.size == src.size  # 20 ms in, 20 ms out, from the first frame on
    levels = tone_levels(y[800:], [1000, 2500], rate=PCM_RATE)
    assert levels[1000] > 0.95 and levels[2500] < 0.001


def test_encoders_are_independent_objects() -> None:
    # one per track: the resampling codecs keep state, so the lookup never shares one
    assert get_encoder("L16@16000h") is not get_encoder("L16@16000h")
    assert get_decoder("L16") is not get_decoder("L16")
