"""Pure parts of the session: URL validation and the stream codecs."""

from __future__ import annotations

import numpy as np
import pytest

from confstream.media import g711
from confstream.streams.session import StreamFailure, _Decoder, _Encoder, validate_stream_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://example.com/a", ("example.com", 443)),
        ("WSS://Example.com:8443/a?b=c", ("example.com", 8443)),
        ("wss://[::1]:9/", ("::1", 9)),
    ],
)
def test_valid_urls(url: str, expected: tuple[str, int]) -> None:
    assert validate_stream_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ws://example.com/a",
        "https://example.com/a",
        "wss://example.com/a ",
        " wss://example.com/a",
        "wss://exa mple.com/",
        "wss:///nohost",
        "wss://example.com:99999/",
        "",
        "example.com/a",
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(StreamFailure) as info:
        validate_stream_url(url)
    assert info.value.code == 31922
    assert info.value.stream_error == "invalid_url"


def test_l16_decoder_keeps_odd_bytes_across_payloads() -> None:
    samples = np.array([1, -2, 300, -32768, 32767], dtype=np.int16)
    raw = samples.astype("<i2").tobytes()
    dec = _Decoder("L16")
    out = np.concatenate([dec.decode(raw[:3]), dec.decode(raw[3:7]), dec.decode(raw[7:])])
    assert out.tolist() == samples.tolist()


@pytest.mark.parametrize(("codec", "size"), [("PCMU", 160), ("PCMA", 160), ("L16", 320)])
def test_encoder_frame_sizes(codec: str, size: int) -> None:
    frame = (np.arange(160) * 100 - 8000).astype(np.int16)
    payload = _Encoder(codec).encode(frame)
    assert isinstance(payload, bytes) and len(payload) == size
    if codec == "PCMU":
        assert payload == g711.ulaw_encode(frame).tobytes()


@pytest.mark.parametrize(("codec", "size"), [("L16@16000h", 640), ("L16@24000h", 960)])
def test_resampling_encoders_give_exact_frames(codec: str, size: int) -> None:
    enc = _Encoder(codec)
    frame = np.zeros(160, dtype=np.int16)
    assert all(len(enc.encode(frame)) == size for _ in range(5))
