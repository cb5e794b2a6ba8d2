"""The endpoint's source filter (docs/sip.md, "RTP security"): media only from the negotiated
address, latched once, and only to the SDP IP or the signalling IP; nothing else is mixed in,
nothing is sent elsewhere, every rejected datagram is counted."""

from __future__ import annotations

import numpy as np
import pytest

from confstream.media.g711 import ulaw_encode
from confstream.rtp.dtmf import dtmf_packets
from confstream.rtp.endpoint import PENDING, RtpEndpoint, flush_metrics
from confstream.rtp.packet import RtpPacket
from confstream.tools.metrics import sample

SDP = ("192.0.2.10", 4000)  # the caller's SDP c=/m= address
SIGNALLING_IP = "198.51.100.7"  # where its INVITE came from (its NAT)
ATTACKER = ("203.0.113.66", 4000)
SILENCE = np.zeros(160, np.int16)


def audio(seq: int, value: int, ssrc: int = 1) -> bytes:
    codes = ulaw_encode(np.full(160, value, np.int16)).tobytes()
    return RtpPacket(0, seq, seq * 160, ssrc, codes).serialize()


def heard(ep: RtpEndpoint) -> int | None:
    frame = ep.read_frame()
    return None if frame is None else int(np.median(frame))


def endpoint(latching: str = "signalling-ip") -> RtpEndpoint:
    ep = RtpEndpoint(signalling_ip=SIGNALLING_IP, latching=latching)
    ep.set_remote(*SDP, 0, 101)
    return ep


def test_attacker_before_the_caller_neither_latches_nor_is_heard() -> None:
    ep = endpoint()
    for seq in range(5):
        ep.receive(audio(seq, 3000, ssrc=666), ATTACKER, seq * 0.02)
    assert not ep.latched and ep.remote == SDP  # still sending to the SDP address only
    assert ep.stats.rejected == 5 and ep.stats.packets_received == 0
    assert heard(ep) is None
    # The caller's own packets latch and are heard.
    ep.receive(audio(10, 1000), SDP, 0.2)
    assert ep.latched and ep.remote == SDP
    level = heard(ep)
    assert level is not None and abs(level - 1000) < 40


def test_after_latching_only_the_latched_source_is_accepted() -> None:
    ep = endpoint()
    nat = (SIGNALLING_IP, 61000)
    ep.receive(audio(1, 1000), nat, 0.0)  # NAT: the media comes from the signalling IP
    assert ep.remote == nat
    level = heard(ep)
    assert level is not None and abs(level - 1000) < 40
    rejected = ep.stats.rejected
    # The same IP from another port, the SDP address itself, a stranger: none is accepted
    # any more, whatever the sequence numbers (the tone would otherwise be mixed in).
    for i, source in enumerate([(SIGNALLING_IP, 61002), SDP, ATTACKER]):
        ep.receive(audio(2 + i, 6000), source, 0.02 * (i + 1))
    assert ep.stats.rejected == rejected + 3
    assert ep.remote == nat  # no hijack
    assert ep.stats.packets_received == 1
    ep.receive(audio(2, 1000), nat, 0.1)
    level = heard(ep)
    assert level is not None and abs(level - 1000) < 40


def test_dtmf_and_garbage_from_a_stranger_are_rejected_unparsed() -> None:
    ep = endpoint()
    ep.receive(audio(1, 0), SDP, 0.0)
    packets = dtmf_packets("9", 100, payload_type=101, ssrc=1, sequence_number=2, timestamp=160)
    events = [e for p in packets for e in ep.receive(p.serialize(), ATTACKER, 0.02)]
    ep.receive(b"not rtp at all", ATTACKER, 0.04)
    assert events == []
    assert ep.stats.discarded == 0  # never parsed: counted as rejected, not as malformed
    assert ep.stats.rejected == len(packets) + 1


def test_other_ports_of_the_sdp_ip_may_latch_in_signalling_ip_mode() -> None:
    ep = endpoint()
    ep.receive(audio(1, 1000), (SDP[0], 4002), 0.0)
    assert ep.remote == (SDP[0], 4002)


def test_sdp_only_accepts_exactly_the_sdp_address() -> None:
    ep = endpoint("sdp-only")
    for source in [(SIGNALLING_IP, 61000), (SDP[0], 4002), ATTACKER]:
        ep.receive(audio(1, 1000), source, 0.0)
    assert ep.stats.rejected == 3 and not ep.latched
    assert ep.write_frame(SILENCE) is not None and ep.dest == SDP
    ep.receive(audio(1, 1000), SDP, 0.0)
    assert ep.latched and ep.remote == SDP
    assert ep.stats.packets_received == 1


def test_nothing_is_sent_before_a_known_good_address() -> None:
    ep = RtpEndpoint(signalling_ip=SIGNALLING_IP)
    ep.set_remote("0.0.0.0", 0, 0, None)  # no address in the SDP
    ep.receive(audio(1, 1000), ATTACKER, 0.0)
    assert ep.write_frame(SILENCE) is None and ep.write_ulaw(bytes(160)) is None
    assert ep.stats.packets_sent == 0
    ep.receive(audio(1, 1000), (SIGNALLING_IP, 50000), 0.0)
    assert ep.write_frame(SILENCE) is not None and ep.dest == (SIGNALLING_IP, 50000)


def test_reinvite_to_a_new_address_allows_one_new_latch() -> None:
    ep = endpoint()
    ep.receive(audio(1, 0), SDP, 0.0)
    moved = ("192.0.2.20", 7000)
    ep.set_remote(*moved, 0, 101)
    assert not ep.latched and ep.remote == moved
    ep.receive(audio(2, 0), SDP, 0.02)  # the old address is no longer allowed
    assert ep.stats.rejected == 1
    ep.receive(audio(3, 0), moved, 0.04)
    assert ep.latched and ep.remote == moved


def test_ipv4_mapped_and_ipv6_forms_match() -> None:
    ep = RtpEndpoint(signalling_ip="2001:db8::1")
    ep.set_remote("192.0.2.10", 4000, 0, None)
    ep.receive(audio(1, 0), ("::ffff:192.0.2.10", 4000, 0, 0), 0.0)
    assert ep.latched and ep.remote == ("::ffff:192.0.2.10", 4000)
    ep = RtpEndpoint(signalling_ip="2001:DB8:0::1")
    ep.set_remote("192.0.2.10", 4000, 0, None)
    ep.receive(audio(1, 0), ("2001:db8::1", 5000, 0, 0), 0.0)
    assert ep.remote == ("2001:db8::1", 5000)
    # The latched 4-tuple is compared as the socket reports it.
    ep.receive(audio(2, 0), ("2001:db8::1", 5000, 0, 0), 0.02)
    assert ep.stats.packets_received == 2 and ep.stats.rejected == 0


def test_invalid_latching_mode() -> None:
    with pytest.raises(ValueError):
        RtpEndpoint(latching="anything")


def test_rejections_reach_prometheus_batched() -> None:
    flush_metrics()

    def rejected() -> float:
        return sample("confstream_rtp_packets_rejected_total", reason="source")

    before = rejected()
    ep = endpoint()
    ep.receive(audio(1, 0), SDP, 0.0)
    for seq in range(7):
        ep.receive(audio(seq, 0), ATTACKER, 0.0)
    assert PENDING.rejected_source == 7
    assert rejected() == before  # not yet: counted in a plain integer first
    flush_metrics()
    assert rejected() == before + 7
    assert PENDING.rejected_source == 0
