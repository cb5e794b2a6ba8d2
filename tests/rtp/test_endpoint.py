"""RtpEndpoint, the sans-I/O core: bytes in, frames/events out; frames in, bytes out."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from confstream.media.g711 import alaw_encode, ulaw_decode, ulaw_encode
from confstream.rtp.dtmf import DtmfEvent, TelephoneEvent, dtmf_packets
from confstream.rtp.endpoint import RtpEndpoint
from confstream.rtp.packet import RtpPacket

PEER = ("192.0.2.10", 4000)


def audio(seq: int, ts: int, value: int, n: int = 160, pt: int = 0, ssrc: int = 1) -> bytes:
    samples = np.full(n, value, np.int16)
    codes = ulaw_encode(samples) if pt == 0 else alaw_encode(samples)
    return RtpPacket(pt, seq, ts, ssrc, codes.tobytes()).serialize()


def level(frame: np.ndarray | None) -> int | None:
    return None if frame is None else int(np.median(frame))


def test_receive_decodes_pcmu_and_pcma() -> None:
    for pt in (0, 8):
        ep = RtpEndpoint()
        ep.set_remote(*PEER, pt, None)
        ep.receive(audio(1, 0, 1000, pt=pt), PEER, 0.0)
        frame = ep.read_frame()
        assert frame is not None and frame.dtype == np.int16 and len(frame) == 160
        assert abs(int(frame[0]) - 1000) < 40  # G.711 quantisation
    # The other law's packets are not negotiated: dropped.
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, None)
    ep.receive(audio(1, 0, 1000, pt=8), PEER, 0.0)
    assert ep.read_frame() is None
    assert ep.stats.discarded == 1 and ep.stats.packets_received == 0


def test_nothing_accepted_before_negotiation() -> None:
    ep = RtpEndpoint()
    assert ep.receive(audio(1, 0, 1000), PEER, 0.0) == []
    assert ep.stats.rejected == 1  # no source is allowed yet
    assert ep.stats.packets_received == 0
    # Even from the signalling IP, a packet before the SDP has no payload type to match.
    ep = RtpEndpoint(signalling_ip=PEER[0])
    assert ep.receive(audio(1, 0, 1000), PEER, 0.0) == []
    assert ep.stats.discarded == 1 and not ep.latched
    assert ep.write_frame(np.zeros(160, np.int16)) is None
    assert ep.stats.packets_sent == 0


def test_set_remote_validation_and_unspecified_address() -> None:
    ep = RtpEndpoint(signalling_ip=PEER[0])
    with pytest.raises(ValueError):
        ep.set_remote(*PEER, 18, None)
    ep.set_remote("0.0.0.0", 4000, 0, None)
    assert ep.remote is None
    assert ep.write_frame(np.zeros(160, np.int16)) is None
    # A packet from another IP does not latch; one from the signalling IP does.
    ep.receive(audio(1, 0, 0), ("203.0.113.66", 4000), 0.0)
    assert ep.remote is None and ep.stats.rejected == 1
    ep.receive(audio(1, 0, 0), PEER, 0.0)
    assert ep.remote == PEER
    assert ep.write_frame(np.zeros(160, np.int16)) is not None


def test_latch_kept_on_same_sdp_and_dropped_on_new_address() -> None:
    ep = RtpEndpoint(signalling_ip="198.51.100.7")  # the caller is behind NAT
    ep.set_remote(*PEER, 0, 101)
    ep.receive(audio(1, 0, 0), ("198.51.100.7", 6000), 0.0)
    assert ep.remote == ("198.51.100.7", 6000)
    ep.set_remote(*PEER, 0, 101)  # re-INVITE with the same address: stay latched
    assert ep.remote == ("198.51.100.7", 6000)
    ep.set_remote("192.0.2.99", 5000, 0, 101)  # moved: use the new SDP address until latched
    assert ep.remote == ("192.0.2.99", 5000)
    assert not ep.latched


def test_30ms_packets_are_recut_into_20ms_frames() -> None:
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, None)
    out = []
    # A 10 ms timeline: a 30 ms packet arrives every 3 steps, the mixer reads every 2.
    for step in range(14):
        if step % 3 == 0 and step // 3 < 4:
            i = step // 3
            ep.receive(audio(i, i * 240, 1000 * (i + 1), n=240), PEER, step * 0.01)
        if step % 2 == 1:
            frame = ep.read_frame()
            if frame is not None:
                out.append(frame)
    assert all(len(f) == 160 for f in out)
    joined = np.concatenate(out)[: 4 * 240]
    levels = [int(np.median(joined[k * 240 : (k + 1) * 240])) for k in range(4)]
    assert np.allclose(levels, [1000, 2000, 3000, 4000], rtol=0.04)  # G.711 quantisation
    assert ep.stats.lost == 0


def test_dtmf_in_the_middle_of_audio_is_not_loss() -> None:
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, 101)
    events: list[DtmfEvent] = []
    seq, ts, now = 100, 0, 0.0
    for _ in range(3):
        ep.receive(audio(seq, ts, 500), PEER, now)
        assert level(ep.read_frame()) is not None
        seq, ts, now = seq + 1, ts + 160, now + 0.02
    digit = dtmf_packets("7", 100, payload_type=101, ssrc=1, sequence_number=seq, timestamp=ts)
    for p in digit:
        events += ep.receive(p.serialize(), PEER, now)
        assert ep.read_frame() is None or level(ep.read_frame()) is not None
        seq, ts, now = seq + 1, ts + 160, now + 0.02
    ep.receive(audio(seq, ts, 500), PEER, now)
    assert events == [DtmfEvent("7", 100)]
    assert ep.stats.lost == 0
    assert ep.stats.discarded == 0
    assert ep.stats.packets_received == 3 + len(digit) + 1


def test_write_frame_replaces_audio_with_dtmf_then_resumes() -> None:
    ep = RtpEndpoint(ssrc=42)
    ep.set_remote(*PEER, 0, 101)
    assert ep.queue_dtmf("3", 60)
    frame = np.full(160, 1000, np.int16)
    packets = [RtpPacket.parse(d) for d in (ep.write_frame(frame) for _ in range(8)) if d]
    assert [p.payload_type for p in packets] == [101] * 5 + [0] * 3
    assert {p.ssrc for p in packets} == {42}
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    te = [TelephoneEvent.parse(p.payload) for p in packets[:5]]
    assert [e.end for e in te] == [False, False, True, True, True]
    assert te[-1].duration == 480
    assert len({p.timestamp for p in packets[:5]}) == 1
    # Audio resumes where the clock is, 5 ticks later, with the marker of the first audio.
    assert (packets[5].timestamp - packets[0].timestamp) & 0xFFFFFFFF == 5 * 160
    assert packets[5].marker and not packets[6].marker
    assert abs(int(ulaw_decode(packets[5].payload)[0]) - 1000) < 40
    # No telephone-event negotiated: refused.
    ep.set_remote(*PEER, 0, None)
    assert not ep.queue_dtmf("3", 60)


def test_garbage_never_raises() -> None:
    ep = RtpEndpoint()
    ep.set_remote(*PEER, 0, 101)
    rng = np.random.default_rng(3)
    for n in range(2000):
        data = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        if n % 2:
            data = bytes([0x80, (n % 3) * 101 % 128]) + data  # version 2, PT 0 or 101 often
        ep.receive(data, PEER, n * 0.001)
        ep.read_frame()
    assert ep.stats.discarded > 0
