"""Shared payloads (confstream.streams.shared): one encode per source, codec, track and tick,
the same bytes a stream's own encoder would make; pure logic, no sockets."""

from __future__ import annotations

import base64

import numpy as np

from confstream.media.codecs import StreamCodec, get_encoder
from confstream.streams import shared
from confstream.streams.vocabulary import MediaTrack


def _frames(n: int) -> list[np.ndarray]:
    t = np.arange(n * 160) / 8000.0
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return [pcm[k * 160 : (k + 1) * 160] for k in range(n)]


def test_one_encode_per_tick_equals_a_private_encoder_for_stateful_codecs() -> None:
    codec = StreamCodec.L16_16K  # resampling: the encoder keeps state between frames
    a = shared.acquire("CFshared1", codec, MediaTrack.INBOUND)
    b = shared.acquire("CFshared1", codec, MediaTrack.INBOUND)
    other = shared.acquire("CFshared1", codec, MediaTrack.OUTBOUND)
    assert a is b and other is not a and shared.active() >= 2
    private = get_encoder(codec)
    try:
        for k, frame in enumerate(_frames(6)):
            ts = 20 * k
            first = a.encode(frame, ts)
            second = b.encode(frame.copy(), ts)  # an equal array is this tick's frame too
            assert first is not None and second is first
            assert first == base64.b64encode(private.encode(frame))
            # another frame at a cached timestamp is not the shared audio
            assert b.encode(frame // 2 + 1, ts) is None
    finally:
        for s in (a, b, other):
            shared.release(s)
    fresh = shared.acquire("CFshared1", codec, MediaTrack.INBOUND)
    assert fresh is not a  # the last release forgot it: a fresh encoder
    shared.release(fresh)
