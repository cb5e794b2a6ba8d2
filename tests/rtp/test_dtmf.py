"""RFC 4733: payload format, receiver de-duplication, sender packet sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

from confstream.rtp.dtmf import (
    DtmfEvent,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
    digit_to_event,
    dtmf_packets,
    event_to_digit,
)
from confstream.rtp.packet import RtpError, RtpPacket

from ._pcap import udp_payloads

SIPP_DIR = Path("/usr/share/sip-tester")


def test_payload_round_trip_and_bits() -> None:
    te = TelephoneEvent(event=11, end=True, volume=10, duration=800)
    raw = te.serialize()
    assert raw == bytes([11, 0x80 | 10, 800 >> 8, 800 & 0xFF])
    assert TelephoneEvent.parse(raw) == te
    with pytest.raises(RtpError):
        TelephoneEvent.parse(b"\x01\x02")


def test_digit_mapping() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(11) == "#"
    assert event_to_digit(16) is None
    for bad in ("", "E", "12", " "):
        with pytest.raises(ValueError):
            digit_to_event(bad)


def _pcap_packets(name: str) -> list[RtpPacket]:
    path = SIPP_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not installed")
    return [RtpPacket.parse(p) for p in udp_payloads(path)]


@pytest.mark.parametrize(
    ("name", "digit"),
    [("dtmf_2833_1.pcap", "1"), ("dtmf_2833_pound.pcap", "#"), ("dtmf_2833_star.pcap", "*")],
)
def test_receiver_on_sipp_capture(name: str, digit: str) -> None:
    packets = _pcap_packets(name)
    assert all(p.payload_type == 101 for p in packets)
    ends = [p for p in packets if TelephoneEvent.parse(p.payload).end]
    assert len(ends) == 3  # the capture retransmits its end packet
    receiver = DtmfReceiver()
    events = [e for p in packets for e in receiver.feed(p)]
    last = TelephoneEvent.parse(packets[-1].payload)
    assert events == [DtmfEvent(digit, last.duration // 8)]
    # Replaying the whole capture (a network duplicate) reports nothing more.
    assert [e for p in packets for e in receiver.feed(p)] == []


def _digit(digit: str, ts: int, seq: int, ms: int = 100) -> list[RtpPacket]:
    return dtmf_packets(digit, ms, payload_type=101, ssrc=7, sequence_number=seq, timestamp=ts)


def test_receiver_one_event_per_digit_and_same_digit_twice() -> None:
    receiver = DtmfReceiver()
    packets = _digit("5", 1000, 1) + _digit("5", 3000, 20) + _digit("9", 5000, 40, 200)
    events = [e for p in packets for e in receiver.feed(p)]
    assert events == [DtmfEvent("5", 100), DtmfEvent("5", 100), DtmfEvent("9", 200)]


def test_receiver_reports_event_whose_end_packets_were_all_lost() -> None:
    receiver = DtmfReceiver()
    first = [p for p in _digit("3", 1000, 1) if not TelephoneEvent.parse(p.payload).end]
    events = [e for p in first + _digit("4", 3000, 20) for e in receiver.feed(p)]
    assert events == [DtmfEvent("3", 80), DtmfEvent("4", 100)]


def test_receiver_ignores_non_dtmf_events_and_garbage() -> None:
    receiver = DtmfReceiver()
    flash = RtpPacket(101, 1, 10, 7, TelephoneEvent(16, True, 10, 800).serialize())
    short = RtpPacket(101, 2, 20, 7, b"\x01")
    assert receiver.feed(flash) == []
    assert receiver.feed(short) == []


def test_sender_sequence() -> None:
    packets = _digit("7", 100_000, 65534, ms=100)
    # 5 ticks: start + 3 updates + end, then 2 more end packets.
    assert len(packets) == 7
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1, 2, 3, 4]
    assert {p.timestamp for p in packets} == {100_000}
    assert [p.marker for p in packets] == [True] + [False] * 6
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert {e.event for e in events} == {7}
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.volume for e in events} == {10}


def test_sender_clamps_and_queues() -> None:
    sender = DtmfSender()
    sender.queue("1", 5)  # clamped up to 40 ms: 2 ticks + 2 repeats
    sender.queue("#", 60_000)  # clamped down to 8 s
    steps = []
    ts = 0
    while (step := sender.next_step(ts)) is not None:
        steps.append(step)
        ts += 160
    assert not sender.busy
    first = [TelephoneEvent.parse(s.payload) for s in steps[:4]]
    assert [e.duration for e in first] == [160, 320, 320, 320]
    second = steps[4:]
    assert len(second) == 400 + 2
    assert second[0].marker and second[0].timestamp == 4 * 160
    assert TelephoneEvent.parse(second[-1].payload).duration == 64000
    with pytest.raises(ValueError):
        sender.queue("x", 100)
