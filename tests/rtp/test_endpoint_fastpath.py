"""RtpEndpoint's hot path: the header fast path, µ-law in and out, batched packet counters.

Every fast path is checked against the general one on the same input: same frames out, same
datagrams out, same counters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from confstream.conference.base import Frame
from confstream.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from confstream.rtp.endpoint import PENDING, RtpEndpoint, flush_metrics
from confstream.rtp.packet import RtpPacket
from confstream.tools.metrics import sample

PEER = ("192.0.2.10", 4000)


def speech(k: int, n: int = 160) -> Frame:
    t = np.arange(k * n, (k + 1) * n) / 8000
    wave: npt.NDArray[np.float64] = (
        6000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    )
    return wave.astype(np.int16)


def packets(pt: int, count: int, n: int = 160, **extra: Any) -> list[bytes]:
    """``count`` speech packets; ``extra`` are further RtpPacket fields (csrc, padding...)."""
    out = []
    for k in range(count):
        pcm = speech(k, n)
        codes = (ulaw_encode(pcm) if pt == 0 else alaw_encode(pcm)).tobytes()
        out.append(RtpPacket(pt, 100 + k, 5000 + k * n, 77, codes, **extra).serialize())
    return out


def play(ep: RtpEndpoint, datagrams: list[bytes], read: str) -> list[object]:
    got = []
    for k, data in enumerate(datagrams):
        ep.receive(data, PEER, k * 0.02)
        got.append(getattr(ep, read)())
    for _ in range(3):
        got.append(getattr(ep, read)())
    return got


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_plain_and_general_headers_give_the_same_frames() -> None:
    for pt in (0, 8):
        plain = RtpEndpoint()
        plain.set_remote(*PEER, pt, 101)
        general = RtpEndpoint()
        general.set_remote(*PEER, pt, 101)
        a = play(plain, packets(pt, 20), "read_frame")
        b = play(
            general,
            packets(pt, 20, csrc=(1, 2), extension_profile=0xBEDE, extension=b"\0" * 4, padding=3),
            "read_frame",
        )
        assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        assert sum(x is not None for x in a) >= 19
        assert plain.stats == general.stats
        assert plain.stats.bytes_received == general.stats.bytes_received == 20 * 160
        assert plain.remote == general.remote == PEER


def test_read_ulaw_hands_over_pcmu_codes_and_frames_otherwise() -> None:
    # PCMU 20 ms: the codes themselves, which decode to what read_frame gives.
    fast, slow = RtpEndpoint(), RtpEndpoint()
    for ep in (fast, slow):
        ep.set_remote(*PEER, 0, None)
    data = packets(0, 10)
    codes = play(fast, data, "read_ulaw")
    frames = play(slow, data, "read_frame")
    assert [type(c) for c in codes[:10]] == [bytes] * 10
    assert codes[0] == RtpPacket.parse(data[0]).payload
    for c, f in zip(codes, frames, strict=True):
        if isinstance(c, bytes):
            assert same(ulaw_decode(c), f)
        else:  # concealment and silence after the end
            assert same(c, f)
    # PCMA and 10 ms PCMU: frames, exactly as read_frame.
    for pt, n in ((8, 160), (0, 80), (0, 240)):
        fast, slow = RtpEndpoint(), RtpEndpoint()
        for ep in (fast, slow):
            ep.set_remote(*PEER, pt, None)
        data = packets(pt, 12, n=n)
        a, b = play(fast, data, "read_ulaw"), play(slow, data, "read_frame")
        assert all(not isinstance(x, bytes) for x in a)
        assert all(same(x, y) for x, y in zip(a, b, strict=True))
        assert sum(x is not None for x in a) >= 5


def test_concealment_of_a_buffered_pcmu_packet_is_half_the_decoded_frame() -> None:
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, None)
    data = packets(0, 3)
    ep.receive(data[0], PEER, 0.0)
    first = ep.read_ulaw()
    assert isinstance(first, bytes)
    ep.receive(data[2], PEER, 0.04)  # 1 is missing, 2 waits: 1 is concealed
    concealed = ep.read_ulaw()
    assert isinstance(concealed, np.ndarray)
    assert same(concealed, (ulaw_decode(first) >> 1).astype(np.int16))


def test_write_ulaw_makes_the_datagrams_write_frame_makes() -> None:
    fast, slow = RtpEndpoint(ssrc=9), RtpEndpoint(ssrc=9)
    for ep in (fast, slow):
        ep.set_remote(*PEER, 0, 101)
    a = []
    b = []
    for k in range(5):
        codes = ulaw_encode(speech(k)).tobytes()
        da = fast.write_ulaw(codes)
        db = slow.write_frame(ulaw_decode(codes))
        assert da is not None and db is not None
        a.append(RtpPacket.parse(da))
        b.append(RtpPacket.parse(db))
    for pa, pb in zip(a, b, strict=True):
        assert (pa.payload_type, pa.payload, pa.marker, pa.ssrc) == (
            pb.payload_type,
            pb.payload,
            pb.marker,
            pb.ssrc,
        )
    assert [p.marker for p in a] == [True, False, False, False, False]
    assert [(p.sequence_number - a[0].sequence_number) & 0xFFFF for p in a] == [0, 1, 2, 3, 4]
    assert [(p.timestamp - a[0].timestamp) & 0xFFFFFFFF for p in a] == [0, 160, 320, 480, 640]
    assert fast.stats == slow.stats and fast.stats.bytes_sent == 5 * 160


def test_write_ulaw_declines_when_write_frame_must_do_it() -> None:
    codes = ulaw_encode(speech(0)).tobytes()
    nowhere = RtpEndpoint()
    assert nowhere.write_ulaw(codes) is None  # nothing negotiated
    pcma = RtpEndpoint()
    pcma.set_remote(*PEER, 8, None)
    assert pcma.write_ulaw(codes) is None
    pkt = pcma.write_frame(ulaw_decode(codes))
    assert pkt is not None
    assert same(
        alaw_decode(RtpPacket.parse(pkt).payload), alaw_decode(alaw_encode(ulaw_decode(codes)))
    )
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, 101)
    assert ep.queue_dtmf("5", 100)
    seq_before = ep.stats.packets_sent
    assert ep.write_ulaw(codes) is None  # a digit is playing: its packets replace audio
    assert ep.stats.packets_sent == seq_before
    dtmf = ep.write_frame(ulaw_decode(codes))
    assert dtmf is not None and RtpPacket.parse(dtmf).payload_type == 101


def test_packet_counts_reach_prometheus_on_flush() -> None:
    flush_metrics()
    before_in = sample("confstream_rtp_packets_received_total")
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, None)
    for k, data in enumerate(packets(0, 7)):
        ep.receive(data, PEER, k * 0.02)
    ep.receive(b"garbage", PEER, 1.0)
    assert PENDING.packets_in == 7
    flush_metrics()
    assert PENDING.packets_in == 0
    assert sample("confstream_rtp_packets_received_total") - before_in == 7
