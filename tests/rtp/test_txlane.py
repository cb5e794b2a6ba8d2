"""The compiled RTP send lane (confstream.rtp.txlane) with the real engine, real sessions and
real UDP sockets on 127.0.0.1: the packets are exactly those of the Python path, across every
switch between the two, and so are the counters."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np
import pytest

from confstream.conference.base import FRAME_SAMPLES
from confstream.conference.engine import Engine
from confstream.media.analysis import tone
from confstream.media.g711 import alaw_encode, ulaw_encode
from confstream.rtp import txlane
from confstream.rtp.endpoint import flush_metrics
from confstream.rtp.packet import RtpPacket
from confstream.rtp.reader import drain
from confstream.rtp.session import RtpSession
from confstream.sip.server import SipParticipant
from confstream.tools.metrics import sample

from .test_session import free_pool

HOST = "127.0.0.1"
HEADER = struct.Struct("!BBHII")
TICKS_TONE = 200
TONE = tone(700, TICKS_TONE * FRAME_SAMPLES / 8000, amplitude=6000)

pytestmark = pytest.mark.skipif(not txlane.available(), reason="numba not importable")


@pytest.fixture(params=[True, False], ids=["lane", "python"])
async def lane(request: pytest.FixtureRequest) -> AsyncIterator[txlane.TxLane | None]:
    """The loop's send lane, installed as the server does (None: the Python path only)."""
    loop = asyncio.get_running_loop()
    installed = txlane.install(loop) if request.param else None
    yield installed
    txlane.uninstall(loop)


class Peer:
    """A phone's RTP socket (non-blocking), collecting every datagram it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[bytes] = []

    def collect(self) -> list[bytes]:
        while True:
            try:
                self.packets.append(self.sock.recv(2048))
            except BlockingIOError:
                return self.packets

    def send_to(self, port: int, seq: int) -> None:
        packet = RtpPacket(0, seq, seq * 160, 4321, b"\xff" * 160)
        self.sock.sendto(packet.serialize(), (HOST, port))


@pytest.fixture
def peers() -> Iterator[Callable[[], Peer]]:
    made: list[Peer] = []

    def make() -> Peer:
        made.append(Peer())
        return made[-1]

    yield make
    for p in made:
        p.sock.close()


async def _until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if cond():
            return
        drain()
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


async def _one_call(
    engine: Engine, lane: txlane.TxLane | None
) -> tuple[RtpSession, SipParticipant]:
    session = RtpSession(call_sid="CA1", local_host=HOST, port_pool=free_pool())
    participant = SipParticipant("CA1", session, lambda reason: None)
    await session.open()
    assert (session.tx_key >= 0) == (lane is not None)
    conf = engine.add_conference("CF1")
    conf.add_participant(participant)
    conf.play(TONE)  # the caller hears a tone: every packet's payload differs
    return session, participant


def _engine(lane: txlane.TxLane | None) -> Engine:
    engine = Engine()
    if lane is not None:
        engine.tx_lane = lane.send
    return engine


async def test_packets_and_counters_across_every_switch(
    lane: txlane.TxLane | None, peers: Callable[[], Peer]
) -> None:
    """One call through: before the latch (Python, sendto), latched and connected (the lane),
    a DTMF digit (Python), a codec change to PCMA and back (Python, then the lane), a re-INVITE
    to another address (un-latched: Python), its latch (the lane). Every packet is checked:
    sequence numbers and timestamps continue, the SSRC stays, the marker bit only on the first
    audio packet, the payload is the tone's frame of that tick in the negotiated codec. The
    stats and ``confstream_rtp_packets_sent_total`` count every packet. Run with the lane and
    with the Python path only: the same packets."""
    engine = _engine(lane)
    a, b = peers(), peers()
    session, _ = await _one_call(engine, lane)
    port = session.local_port
    assert port is not None
    flush_metrics()
    sent_metric = sample("confstream_rtp_packets_sent_total")
    session.set_remote(HOST, a.port, 0, 101)
    lane_packets = 0

    def ticks(n: int) -> None:
        for _ in range(n):
            engine.tick()

    ticks(3)  # not latched: sendto from Python
    a.send_to(port, 1)
    await _until(lambda: session._conn is not None, "the connected socket")
    before = lane.packets if lane is not None else 0
    ticks(10)
    if lane is not None:
        assert lane.packets - before == 10  # the lane sent these
    session.send_dtmf("5", 100)  # 5 ticks of digit + 2 end repeats, from Python
    ticks(10)
    session.set_remote(HOST, a.port, 8, 101)  # re-INVITE: PCMA, still latched
    assert session.endpoint.latched
    ticks(4)
    session.set_remote(HOST, a.port, 0, 101)  # and back to PCMU
    ticks(4)
    session.set_remote(HOST, b.port, 0, 101)  # moved: un-latched
    assert session._conn is None
    ticks(3)
    b.send_to(port, 1)
    await _until(lambda: session._conn is not None, "the connected socket again")
    ticks(6)
    total = 3 + 10 + 10 + 4 + 4 + 3 + 6
    if lane is not None:
        lane_packets = lane.packets - before
        assert lane_packets == 10 + 3 + 4 + 6  # DTMF and PCMA and un-latched: Python

    await _until(lambda: len(a.collect()) + len(b.collect()) >= total, "every packet")
    got = a.packets + b.packets
    assert len(got) == total
    assert len(b.packets) == 3 + 6
    seq0, ts0, ssrc = HEADER.unpack_from(got[0])[2:]
    audio = 0
    dtmf = 0
    for k, data in enumerate(got):
        b0, b1, seq, ts, s = HEADER.unpack_from(data)
        assert b0 == 0x80 and s == ssrc
        assert seq == (seq0 + k) & 0xFFFF
        pt, marker = b1 & 0x7F, b1 >> 7
        if pt == 101:
            dtmf += 1
            continue
        audio += 1
        assert ts == (ts0 + 160 * k) & 0xFFFFFFFF
        assert marker == (k == 0)
        frame = TONE[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
        expected = alaw_encode(frame) if 23 <= k < 27 else ulaw_encode(frame)
        assert pt == (8 if 23 <= k < 27 else 0), k
        assert data[12:] == expected.tobytes(), k
    assert dtmf == 7 and audio == total - 7
    stats = session.stats
    assert stats.packets_sent == total
    assert stats.bytes_sent == 160 * audio + 4 * dtmf
    flush_metrics()
    assert sample("confstream_rtp_packets_sent_total") - sent_metric == total
    session.close()
    assert session.stats.packets_sent == total  # the lane's count stays after close
    if lane is not None:
        assert lane.taken == 0  # its slot given back


async def test_failed_send_is_dropped_and_counted(
    lane: txlane.TxLane | None, peers: Callable[[], Peer]
) -> None:
    """The peer goes away: the ICMP port unreachable makes the next send on the connected
    socket fail with ECONNREFUSED. That packet is dropped: counted in
    ``confstream_rtp_send_failures_total{reason="ECONNREFUSED"}`` and in the endpoint's
    ``packets_sent`` (its sequence number is used), not in
    ``confstream_rtp_packets_sent_total``; nothing raises into the tick. Same with the lane and
    without."""
    engine = _engine(lane)
    a = peers()
    session, _ = await _one_call(engine, lane)
    port = session.local_port
    assert port is not None
    session.set_remote(HOST, a.port, 0, None)
    a.send_to(port, 1)
    await _until(lambda: session._conn is not None, "the connected socket")
    engine.tick()
    await _until(lambda: len(a.collect()) == 1, "one packet")
    a.sock.close()  # gone: the next packet gets an ICMP port unreachable
    flush_metrics()
    refused = sample("confstream_rtp_send_failures_total", reason="ECONNREFUSED")
    sent_metric = sample("confstream_rtp_packets_sent_total")
    engine.tick()  # sent; the ICMP error comes back
    await asyncio.sleep(0.02)
    engine.tick()  # fails with ECONNREFUSED: dropped
    flush_metrics()
    assert sample("confstream_rtp_send_failures_total", reason="ECONNREFUSED") - refused == 1
    assert sample("confstream_rtp_packets_sent_total") - sent_metric == 1
    assert session.stats.packets_sent == 3
    if lane is not None:
        assert lane.packets >= 2
    session.close()


async def test_row_with_a_stale_key_is_not_sent_by_the_lane(peers: Callable[[], Peer]) -> None:
    """A key names a slot and its generation: after the slot is given back and taken again,
    the old key is refused (the row falls back to the Python path), the new one is sent."""
    lane = txlane.TxLane()
    a = peers()
    conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        conn.connect((HOST, a.port))
        old = lane.take(1)
        lane.release(old)
        new = lane.take(2)
        assert new & 0xFFFFFF == old & 0xFFFFFF and new != old
        lane.enable(new, conn.fileno(), 10, 1600, True)
        codes = np.full((3, 160), 0x55, dtype=np.uint8)
        done = lane.send(codes, np.array([old, -1, new], dtype=np.int64))
        assert done.tolist() == [0, 0, 1]
        await _until(lambda: len(a.collect()) == 1, "one packet")
        assert a.packets[0] == HEADER.pack(0x80, 0x80, 10, 1600, 2) + b"\x55" * 160
        assert lane.disable(new) == (11, 1760, False)
        assert lane.take_sent(new) == 1 and lane.take_sent(new) == 0
        assert lane.send(codes, np.array([new], dtype=np.int64)).tolist() == [0]
    finally:
        conn.close()


def test_without_numba_the_server_sends_from_python() -> None:
    """numba not importable: the lane says so, installs nothing, and sessions take no slot
    (every packet is sent from Python, as before)."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import asyncio\n"
        "from confstream.rtp import txlane\n"
        "assert not txlane.available() and txlane.warm_up() is None\n"
        "assert 'numba' in (txlane.unavailable_reason() or '')\n"
        "loop = asyncio.new_event_loop()\n"
        "assert txlane.install(loop) is None and txlane.lane_of(loop) is None\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
