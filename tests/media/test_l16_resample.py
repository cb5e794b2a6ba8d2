from __future__ import annotations

import numpy as np
import pytest

from confstream.media.analysis import tone, tone_levels
from confstream.media.l16 import l16_decode, l16_encode
from confstream.media.resample import STREAM_LATENCY_MS, Resampler, resample


def test_l16_is_little_endian_and_round_trips() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768, 0x1234], dtype=np.int16)
    data = l16_encode(pcm)
    assert data[:4] == b"\x00\x00\x01\x00"
    assert data[-2:] == b"\x34\x12"
    assert data[6:10] == b"\xff\x7f\x00\x80"
    back = l16_decode(data)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, pcm)
    with pytest.raises(ValueError):
        l16_decode(b"\x00\x01\x02")


@pytest.mark.parametrize("rate", [16000, 24000])
def test_streamed_frames_have_exact_sizes_both_ways(rate: int) -> None:
    up, down = Resampler(8000, rate), Resampler(rate, 8000)
    src = tone(1000, 1.0)
    out_sizes, back_sizes = set(), set()
    back = []
    for i in range(0, src.size, 160):
        frame = up.process(src[i : i + 160])
        out_sizes.add(frame.size)
        b = down.process(frame)
        back_sizes.add(b.size)
        back.append(b)
    assert out_sizes == {rate // 50}
    assert back_sizes == {160}
    assert up.latency_ms == STREAM_LATENCY_MS
    # 1 kHz survives 8k -> rate -> 8k: the tone dominates, a distant frequency is absent, and
    # the level is kept (after the 2 x 10 ms latency, skip the start-up).
    y = np.concatenate(back)[800:]
    levels = tone_levels(y, [1000, 2500, 3500])
    assert levels[1000] > 0.95
    assert levels[2500] < 0.001 and levels[3500] < 0.001
    assert abs(np.sqrt(np.mean(y.astype(float) ** 2)) - 8000 / np.sqrt(2)) < 150
    # The delay is exactly the documented latency: compare with the source shifted.
    delay = up.latency_samples + down.latency_samples * 8000 // rate
    diff = y.astype(int) - src[800 - delay : 800 - delay + y.size].astype(int)
    assert np.max(np.abs(diff)) < 200


def test_stream_matches_one_shot_within_rounding() -> None:
    rng = np.random.default_rng(7)
    x = np.clip(rng.normal(0, 4000, 8000), -32768, 32767).astype(np.int16)
    r = Resampler(8000, 16000)
    y = np.concatenate([r.process(x[i : i + 160]) for i in range(0, x.size, 160)])
    ref = resample(np.concatenate([np.zeros(r.latency_samples, np.int16), x]), 8000, 16000)
    assert np.max(np.abs(y.astype(int) - ref[: y.size].astype(int))) <= 1


def test_arbitrary_chunks_and_flush_keep_every_sample() -> None:
    x = tone(500, 0.5, rate=16000)
    r = Resampler(16000, 8000)
    sizes = [1, 7, 333, 2, 999, 160, 4000 - 1502]
    pos, out = 0, []
    for s in sizes * 4:
        out.append(r.process(x[pos : pos + s]))
        pos += s
        if pos >= x.size:
            break
    out.append(r.process(x[pos:]))
    out.append(r.flush())
    total = np.concatenate(out)
    # latency (80 samples at 8 kHz) plus every input sample converted: 4000 + 80.
    assert total.size == x.size // 2 + r.latency_samples // 2
    assert tone_levels(total, [500])[500] > 0.9


def test_one_shot_resample_of_odd_rate_and_same_rate() -> None:
    x = tone(440, 1.0, rate=44100)
    y = resample(x, 44100, 8000)
    assert y.size == 8000
    assert tone_levels(y, [440])[440] > 0.95
    same = resample(y, 8000, 8000)
    np.testing.assert_array_equal(same, y)
    assert same is not y
    with pytest.raises(ValueError):
        resample(y, 0, 8000)
