"""The RTP reader (confstream.rtp.reader): sockets read once per mixer tick, over real UDP
sockets on uvloop (tests/rtp/conftest.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from confstream.conference.base import FRAME_SAMPLES
from confstream.conference.engine import Engine
from confstream.media.analysis import goertzel_power, tone
from confstream.media.g711 import ULAW_DECODE, ulaw_encode
from confstream.rtp import reader as rtp_reader
from confstream.rtp.packet import RtpPacket
from confstream.rtp.reader import MAX_PER_SOCKET, reader_for
from confstream.rtp.session import RtpSession
from confstream.sip.server import SipParticipant
from confstream.tools.metrics import sample

from .test_session import HOST, free_pool, make_session

__all__ = ["make_session"]  # the fixture, shared with test_session


class Peer:
    """A phone's RTP socket: sends 20 ms PCMU packets of one tone, reads what it was sent."""

    def __init__(self, freq: float = 0.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        # 1 s of a continuous tone (or silence), one 20 ms slice per packet
        pcm = tone(freq, 1.0, amplitude=8000.0) if freq else np.zeros(8000, np.int16)
        self.codes = ulaw_encode(pcm).tobytes()
        self.seq = 0

    def send(self, port: int) -> None:
        k = (self.seq % 50) * FRAME_SAMPLES
        codes = self.codes[k : k + FRAME_SAMPLES]
        pkt = RtpPacket(0, self.seq, self.seq * 160, 0x1234 + self.port, codes).serialize()
        self.sock.sendto(pkt, (HOST, port))
        self.seq += 1

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(2048))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[Callable[[float], Peer]]:
    made: list[Peer] = []

    def factory(freq: float = 0.0) -> Peer:
        made.append(Peer(freq))
        return made[-1]

    yield factory
    for p in made:
        p.close()


def heard(packets: list[bytes]) -> np.ndarray:
    """The PCMU audio of the packets, decoded."""
    return np.concatenate([ULAW_DECODE[np.frombuffer(p[12:], np.uint8)] for p in packets])


async def wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_without_an_engine_the_fallback_timer_reads(
    make_session: Callable[..., RtpSession], peers: Callable[[float], Peer]
) -> None:
    peer = peers(440.0)
    s = make_session()
    port = await s.open()
    s.set_remote(HOST, peer.port, 0, None)
    reader = reader_for(asyncio.get_running_loop())
    drains = reader.drains
    for _ in range(5):
        peer.send(port)
    await wait_for(lambda: s.stats.packets_received == 5)
    assert reader.drains > drains
    frames = [s.read_frame() for _ in range(5)]
    audio = np.concatenate([f for f in frames if f is not None])
    assert len(audio) == 5 * FRAME_SAMPLES
    assert goertzel_power(audio, 440.0) > 100 * goertzel_power(audio, 1000.0)


async def test_a_packet_sent_before_a_tick_is_mixed_in_that_tick(
    make_session: Callable[..., RtpSession], peers: Callable[[float], Peer]
) -> None:
    """The drain at the start of the tick reads what arrived since the last one: a caller's
    packet sent just before a tick is heard by the other caller in the packet of that tick."""
    pa, pb = peers(440.0), peers(0.0)
    a, b = make_session(), make_session()
    port_a, port_b = await a.open(), await b.open()
    a.set_remote(HOST, pa.port, 0, None)
    b.set_remote(HOST, pb.port, 0, None)
    engine = Engine()
    engine.io_hooks.append(rtp_reader.drain)
    conf = engine.add_conference("CF1")
    for s in (a, b):
        conf.add_participant(SipParticipant(s.call_sid, s, lambda reason: None))
    loop = asyncio.get_running_loop()
    for _ in range(3):
        pa.send(port_a)  # loopback: in a's socket when sendto returns
        pb.send(port_b)
        # the clock's step, with no await in between
        engine.clock_tick(loop.time())
    got = pb.received()  # loopback: delivered within the session's sendto
    assert len(got) == 3
    audio = heard(got)
    assert goertzel_power(audio, 440.0) > 0.02
    assert goertzel_power(audio, 440.0) > 100 * goertzel_power(audio, 1000.0)
    # The same through the running clock: b's phone keeps hearing a's tone.
    await engine.start()
    try:
        before = len(pb.received())
        for _ in range(10):
            pa.send(port_a)
            pb.send(port_b)
            await asyncio.sleep(0.02)
        await wait_for(lambda: engine.clock_ticks >= 10)
        await asyncio.sleep(0.05)
    finally:
        await engine.stop()
    got = pb.received()
    assert len(got) + before >= 8
    audio = heard(got)
    assert goertzel_power(audio, 440.0) > 100 * goertzel_power(audio, 1000.0)
    await wait_for(lambda: a.stats.packets_received == 13)
    assert a.stats.rejected == 0


async def test_a_flood_on_one_port_does_not_starve_the_others(
    make_session: Callable[..., RtpSession], peers: Callable[[float], Peer]
) -> None:
    """40 datagrams from a source not allowed for call a (more than a drain reads from one
    socket): b's audio is read and mixed every tick, and every datagram is counted exactly
    once, over the drains it takes."""
    pa, pb, attacker = peers(1000.0), peers(440.0), peers(300.0)
    a = make_session(latching="sdp-only")
    b = make_session(latching="sdp-only")
    port_a, port_b = await a.open(), await b.open()
    a.set_remote(HOST, pa.port, 0, None)
    b.set_remote(HOST, pb.port, 0, None)
    engine = Engine()
    conf = engine.add_conference("CF1")
    for s in (a, b):
        conf.add_participant(SipParticipant(s.call_sid, s, lambda reason: None))
    reader = reader_for(asyncio.get_running_loop())
    rejected0 = sample("confstream_rtp_packets_rejected_total", reason="source")
    received0 = sample("confstream_rtp_packets_received_total")
    capped0 = sample("confstream_rtp_drain_capped_total")
    flood = 40
    assert flood > 2 * MAX_PER_SOCKET
    for _ in range(flood):
        attacker.send(port_a)
    ticks = 5
    for k in range(ticks):
        pa.send(port_a)
        pb.send(port_b)
        reader.drain()
        assert b.stats.packets_received == k + 1  # b never waits behind a's flood
        engine.tick()
    assert sample("confstream_rtp_drain_capped_total") - capped0 >= 1
    # Everything sent was read and counted exactly once.
    assert a.stats.rejected == flood
    assert a.stats.packets_received == ticks
    assert sample("confstream_rtp_packets_rejected_total", reason="source") - rejected0 == flood
    assert sample("confstream_rtp_packets_received_total") - received0 == 2 * ticks
    # a's phone heard b's tone in every tick.
    got = pa.received()
    assert len(got) == ticks
    audio = heard(got)
    assert goertzel_power(audio, 440.0) > 100 * goertzel_power(audio, 300.0)


async def test_a_closed_sessions_port_is_free_at_once(
    make_session: Callable[..., RtpSession],
) -> None:
    pool = free_pool()
    s = make_session(port_pool=pool)
    port = await s.open()
    s.close()
    assert port not in pool._used
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((HOST, port))  # no loop iteration in between
    finally:
        probe.close()


async def test_sending_to_a_peer_that_went_away_raises_nothing(
    make_session: Callable[..., RtpSession], peers: Callable[[float], Peer]
) -> None:
    gone = peers(0.0)
    gone_port = gone.port
    gone.close()  # ICMP port unreachable from now on
    s = make_session()
    port = await s.open()
    s.set_remote(HOST, gone_port, 0, None)
    codes = bytes(160)
    for _ in range(5):
        assert s.write_ulaw(codes)
        await asyncio.sleep(0.01)  # ICMP errors come back; the fallback drains meanwhile
    s.write_frame(np.zeros(160, np.int16))
    rtp_reader.drain()
    # The session keeps going: a packet from the caller's new port latches and is answered.
    peer = peers(440.0)
    peer.send(port)
    await wait_for(lambda: s.stats.packets_received == 1)
    assert s.remote == (HOST, peer.port)
    assert s.write_ulaw(codes)
    assert len(peer.received()) == 1
    assert s.stats.packets_sent == 7
