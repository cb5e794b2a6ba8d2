"""RtpSession over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confstream.conference.base import FRAME_SAMPLES, Frame
from confstream.media.analysis import goertzel_power, tone
from confstream.rtp.dtmf import dtmf_packets
from confstream.rtp.packet import RtpPacket
from confstream.rtp.ports import RtpPortPool
from confstream.rtp.session import RtpSession
from confstream.tools.metrics import sample
from confstream.tools.net import free_media_port, free_udp_port, rtp_port_bounds

from ._pcap import udp_payloads

HOST = "127.0.0.1"
SIPP_DTMF_1 = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")


def free_pool(count: int = 8) -> RtpPortPool:
    """``count`` even ports outside the kernel's ephemeral range, the first free right now
    (the session retries taken ones)."""
    low, _ = rtp_port_bounds(2 * count)
    return RtpPortPool(low, low + 2 * count - 1)


def tone_frames(freq: float, n_frames: int, amplitude: float = 8000.0) -> list[Frame]:
    """``n_frames`` consecutive 20 ms frames of a continuous tone."""
    return np.split(tone(freq, n_frames * FRAME_SAMPLES / 8000, amplitude=amplitude), n_frames)


@pytest.fixture
async def make_session() -> AsyncIterator[Callable[..., RtpSession]]:
    sessions: list[RtpSession] = []

    def factory(**kwargs: Any) -> RtpSession:  # RtpSession keyword arguments
        kwargs.setdefault("call_sid", f"call-{len(sessions)}")
        kwargs.setdefault("local_host", HOST)
        kwargs.setdefault("port_pool", free_pool())
        session = RtpSession(**kwargs)
        sessions.append(session)
        return session

    yield factory
    for session in sessions:
        session.close()


class Receiver(asyncio.DatagramProtocol):
    """A plain UDP socket for the test side."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, tuple[str, int]]] = []
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((data, addr))
        self.got.set()


async def udp_peer() -> tuple[asyncio.DatagramTransport, Receiver, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Receiver, local_addr=(HOST, 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


async def run_clock(
    ticks: int, a: RtpSession, b: RtpSession, frames: list[np.ndarray]
) -> list[np.ndarray | None]:
    """A stand-in mixer clock: every 20 ms, a writes one frame and b reads one."""
    heard: list[np.ndarray | None] = []
    for i in range(ticks):
        a.write_frame(frames[i] if i < len(frames) else np.zeros(160, np.int16))
        await asyncio.sleep(0.02)
        heard.append(b.read_frame())
    return heard


@pytest.mark.parametrize("payload_type", [0, 8])
async def test_tone_between_two_sessions(
    make_session: Callable[..., RtpSession], payload_type: int
) -> None:
    a = make_session()
    b = make_session()
    port_a = await a.open()
    port_b = await b.open()
    assert port_a % 2 == 0 and port_b % 2 == 0
    a.set_remote(HOST, port_b, payload_type, 101)
    b.set_remote(HOST, port_a, payload_type, 101)
    out_before = sample("confstream_rtp_packets_sent_total")
    heard = await run_clock(60, a, b, tone_frames(440.0, 50))
    frames = [f for f in heard if f is not None]
    assert len(frames) >= 40
    assert all(f.dtype == np.int16 and len(f) == 160 for f in frames)
    audio = np.concatenate(frames[5:35])
    p440 = goertzel_power(audio, 440.0)
    assert p440 > 0.03  # amplitude 8000 sine: (8000 / 32768) ** 2 = 0.06
    for other in (300.0, 700.0, 1000.0, 2000.0):
        assert p440 > 100 * goertzel_power(audio, other)
    assert a.stats.packets_sent == 60
    assert a.stats.bytes_sent == 60 * 160
    assert b.stats.packets_received >= 55
    assert b.stats.lost == 0 and b.stats.discarded == 0
    assert sample("confstream_rtp_packets_sent_total") - out_before >= 60


async def test_first_packet_has_marker_and_fields_advance(
    make_session: Callable[..., RtpSession],
) -> None:
    transport, peer, peer_port = await udp_peer()
    try:
        a = make_session()
        await a.open()
        a.set_remote(HOST, peer_port, 8, None)
        for frame in tone_frames(440.0, 3):
            a.write_frame(frame)
        for _ in range(50):
            if len(peer.packets) == 3:
                break
            await asyncio.sleep(0.01)
        packets = [RtpPacket.parse(d) for d, _ in peer.packets]
        assert [p.marker for p in packets] == [True, False, False]
        assert {p.payload_type for p in packets} == {8}
        assert len({p.ssrc for p in packets}) == 1
        seqs = [p.sequence_number for p in packets]
        assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2]
        tss = [p.timestamp for p in packets]
        assert [(t - tss[0]) & 0xFFFFFFFF for t in tss] == [0, 160, 320]
    finally:
        transport.close()


async def test_dtmf_both_ways(make_session: Callable[..., RtpSession]) -> None:
    digits: list[tuple[str, int]] = []
    a = make_session()
    b = make_session(on_dtmf=lambda d, ms: digits.append((d, ms)))
    port_a, port_b = await a.open(), await b.open()
    a.set_remote(HOST, port_b, 0, 101)
    b.set_remote(HOST, port_a, 0, 101)
    a.send_dtmf("5", 100)
    a.send_dtmf("#", 60)
    await run_clock(20, a, b, tone_frames(440.0, 20))
    assert digits == [("5", 100), ("#", 60)]
    assert b.stats.lost == 0
    # Without negotiated telephone-event nothing is sent (and nothing breaks).
    a.set_remote(HOST, port_b, 0, None)
    a.send_dtmf("1", 100)
    await run_clock(10, a, b, [])
    assert digits == [("5", 100), ("#", 60)]


async def test_latching_to_actual_source(make_session: Callable[..., RtpSession]) -> None:
    sdp_t, sdp_peer, sdp_port = await udp_peer()
    real_t, real_peer, _ = await udp_peer()
    try:
        s = make_session()
        port = await s.open()
        s.set_remote(HOST, sdp_port, 0, 101)
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(sdp_peer.got.wait(), 2)
        assert not s.endpoint.latched
        # The peer's RTP actually comes from another port (NAT): latch onto it.
        pkt = RtpPacket(0, 1, 0, 1234, b"\xff" * 160, marker=True).serialize()
        real_t.sendto(pkt, (HOST, port))
        for _ in range(100):
            if s.stats.packets_received:
                break
            await asyncio.sleep(0.01)
        assert s.remote == real_t.get_extra_info("sockname")[:2]
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(real_peer.got.wait(), 2)
        assert len(sdp_peer.packets) == 1
        # Packets from a third address do not steal the latch.
        sdp_t.sendto(RtpPacket(0, 2, 160, 1234, b"\xff" * 160).serialize(), (HOST, port))
        await asyncio.sleep(0.05)
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.sleep(0.05)
        assert len(real_peer.packets) == 2
        assert len(sdp_peer.packets) == 1
    finally:
        sdp_t.close()
        real_t.close()


async def test_inactivity_timeout_fires_once(make_session: Callable[..., RtpSession]) -> None:
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    s = make_session(inactivity_timeout=0.2, on_timeout=lambda: fired.append(loop.time()))
    start = loop.time()
    await s.open()
    await asyncio.sleep(0.6)
    assert len(fired) == 1
    assert fired[0] - start >= 0.2


async def test_traffic_keeps_session_alive(make_session: Callable[..., RtpSession]) -> None:
    fired: list[int] = []
    a = make_session()
    b = make_session(inactivity_timeout=0.15, on_timeout=lambda: fired.append(1))
    port_a, port_b = await a.open(), await b.open()
    a.set_remote(HOST, port_b, 0, None)
    b.set_remote(HOST, port_a, 0, None)
    await run_clock(20, a, b, [])  # 0.4 s of packets
    assert fired == []
    await asyncio.sleep(0.4)  # then silence
    assert fired == [1]


async def test_suspended_inactivity(make_session: Callable[..., RtpSession]) -> None:
    fired: list[int] = []
    s = make_session(inactivity_timeout=0.1, on_timeout=lambda: fired.append(1))
    await s.open()
    s.suspend_inactivity(True)
    await asyncio.sleep(0.3)
    assert fired == []
    s.suspend_inactivity(False)
    await asyncio.sleep(0.3)
    assert fired == [1]


async def test_bad_datagrams_do_not_break_a_live_session(
    make_session: Callable[..., RtpSession],
) -> None:
    a = make_session()
    b = make_session()
    port_a, port_b = await a.open(), await b.open()
    a.set_remote(HOST, port_b, 0, 101)
    b.set_remote(HOST, port_a, 0, 101)
    t, _, _ = await udp_peer()
    malformed = sample("confstream_rtp_discarded_total", reason="malformed")
    unknown = sample("confstream_rtp_discarded_total", reason="unknown_payload")
    try:
        bad = [
            b"\x80",
            b"hello world, not rtp",
            bytes.fromhex("4000000100000001000000ff") + bytes(160),  # version 1
            bytes.fromhex("8f00000100000001000000ff"),  # CSRCs missing
            bytes.fromhex("a000000100000001000000ff") + b"\x00\xff",  # bad padding
            RtpPacket(0, 9, 0, 5, bytes(1501)).serialize(),  # payload too big
            RtpPacket(0, 9, 0, 5, b"").serialize(),  # empty audio
        ]
        wrong_pt = [RtpPacket(pt, 9, 0, 5, bytes(160)).serialize() for pt in (8, 18, 96, 127)]
        for data in bad + wrong_pt:
            t.sendto(data, (HOST, port_b))
        # asyncio's sendto skips empty datagrams: send that one with a plain socket.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b"", (HOST, port_b))
        bad.append(b"")
        await asyncio.sleep(0.05)
        assert b.stats.discarded == len(bad) + len(wrong_pt)
        assert b.stats.packets_received == 0
        assert not b.endpoint.latched  # garbage never moves the latch
        assert sample("confstream_rtp_discarded_total", reason="malformed") - malformed == len(bad)
        assert sample("confstream_rtp_discarded_total", reason="unknown_payload") - unknown == len(
            wrong_pt
        )
        heard = await run_clock(20, a, b, tone_frames(440.0, 20))
        assert sum(f is not None for f in heard) >= 15
        assert b.remote == (HOST, port_a)
    finally:
        t.close()


async def test_open_skips_ports_in_use_and_close_releases(
    make_session: Callable[..., RtpSession],
) -> None:
    pool = free_pool(4)
    first = pool.low
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            blocker.bind((HOST, first))
        except OSError as exc:  # pragma: no cover - raced by another process
            assert exc.errno == errno.EADDRINUSE
        s = make_session(port_pool=pool)
        port = await s.open()
        assert port != first and port % 2 == 0
        assert pool.in_use == 1
        s.close()
        s.close()
        await asyncio.sleep(0)  # the socket really closes on the next loop iteration
        await asyncio.sleep(0)
        assert pool.in_use == 0
        s.write_frame(np.zeros(160, np.int16))  # after close: no error
    finally:
        blocker.close()


async def test_open_exhausted_pool(make_session: Callable[..., RtpSession]) -> None:
    pool = free_pool(1)
    a = make_session(port_pool=pool)
    await a.open()
    b = make_session(port_pool=pool)
    with pytest.raises(RuntimeError):
        await b.open()
    a.close()
    await asyncio.sleep(0.01)
    assert await b.open() == pool.low


@pytest.fixture
def sipp_dtmf_1() -> list[bytes]:
    """The UDP payloads of sipp's RFC 4733 capture of digit 1 (skip when not installed)."""
    if not SIPP_DTMF_1.exists():
        pytest.skip("sipp's pcap files not installed")
    return udp_payloads(SIPP_DTMF_1)


async def test_dtmf_from_sipp_capture_at_live_session(
    make_session: Callable[..., RtpSession], sipp_dtmf_1: list[bytes]
) -> None:
    """Replay the 'digit 1' packets sipp ships, as sipp's play_pcap_audio would."""
    payloads = sipp_dtmf_1
    digits: list[tuple[str, int]] = []
    s = make_session(on_dtmf=lambda d, ms: digits.append((d, ms)))
    port = await s.open()
    s.set_remote(HOST, 9, 0, 101)
    t, _, _ = await udp_peer()
    try:
        for data in payloads:
            t.sendto(data, (HOST, port))
            await asyncio.sleep(0.002)
        # And our own sender's packets for another digit.
        for p in dtmf_packets("9", 120, payload_type=101, ssrc=3, sequence_number=1, timestamp=5):
            t.sendto(p.serialize(), (HOST, port))
        await asyncio.sleep(0.05)
    finally:
        t.close()
    assert digits == [("1", 280), ("9", 120)]


@pytest.mark.skipif(not Path("/usr/bin/sipp").exists(), reason="sipp not installed")
async def test_tone_through_sipp_rtp_echo(make_session: Callable[..., RtpSession]) -> None:
    """sipp's RTP echo (a real, independent RTP implementation) returns our 440 Hz tone."""
    media_port = free_media_port()
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/sipp",
        "-sn",
        "uas",
        "-rtp_echo",
        "-mp",
        str(media_port),
        "-p",
        str(free_udp_port()),
        "-i",
        HOST,
        "-nostdin",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        s = make_session()
        await s.open()
        s.set_remote(HOST, media_port, 0, None)
        # Wait until sipp echoes (it needs a moment to bind).
        for _ in range(100):
            s.write_frame(np.zeros(160, np.int16))
            await asyncio.sleep(0.02)
            if s.stats.packets_received:
                break
        assert s.stats.packets_received, "sipp never echoed"
        assert s.remote == (HOST, media_port)
        frames = tone_frames(440.0, 60)
        heard = []
        for frame in frames:
            s.write_frame(frame)
            await asyncio.sleep(0.02)
            got = s.read_frame()
            if got is not None:
                heard.append(got)
        audio = np.concatenate(heard[-40:])
        p440 = goertzel_power(audio, 440.0)
        assert p440 > 0.03
        assert p440 > 100 * goertzel_power(audio, 1000.0)
    finally:
        proc.kill()
        await proc.wait()


async def test_dual_stack_session_sends_to_ipv4_sdp_address(
    make_session: Callable[..., RtpSession],
) -> None:
    """A session bound to ``::`` (the SIP side listens on ``::``) answers an IPv4 caller: the
    SDP address is sent to in its IPv4-mapped form before latching, then it latches."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    peer_t, peer, peer_port = await udp_peer()
    try:
        s = make_session(local_host="::")
        port = await s.open()
        s.set_remote(HOST, peer_port, 0, None)
        assert s.remote == (HOST, peer_port)
        failures = sample("confstream_rtp_send_failures_total", reason="other")
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(peer.got.wait(), 5)
        assert RtpPacket.parse(peer.packets[0][0]).payload_type == 0
        assert s.stats.packets_sent == 1
        assert sample("confstream_rtp_send_failures_total", reason="other") == failures
        # The caller's packet (IPv4, to the dual-stack socket) latches as usual.
        peer.got.clear()
        peer_t.sendto(RtpPacket(0, 1, 0, 1234, b"\xff" * 160).serialize(), (HOST, port))
        for _ in range(200):
            if s.stats.packets_received:
                break
            await asyncio.sleep(0.01)
        assert s.endpoint.latched and s.stats.rejected == 0
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(peer.got.wait(), 5)
        assert len(peer.packets) == 2 and s.stats.packets_sent == 2
    finally:
        peer_t.close()


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _stray_socket(port: int) -> socket.socket:
    """A blocking socket *connected* to the session's port: Linux reports an ICMP port
    unreachable to it as ECONNREFUSED on its next recv (an unconnected one never sees it)."""
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind((HOST, 0))
    stray.connect((HOST, port))
    stray.settimeout(0.3)
    return stray


async def test_latched_session_is_connected_and_strays_are_counted_never_answered(
    make_session: Callable[..., RtpSession],
) -> None:
    """After the latch the session sends and receives on a second socket connected to the
    latched source (same port); datagrams from any other source still reach the first one:
    each is counted as rejected and nothing (no ICMP) goes back. A re-INVITE that moves the
    media un-latches, the next source latches and gets the connected socket."""
    peer_t, peer, peer_port = await udp_peer()
    peer2_t, peer2, peer2_port = await udp_peer()
    s = make_session()
    port = await s.open()
    stray = _stray_socket(port)
    try:
        s.set_remote(HOST, peer_port, 0, 101)
        rejected = sample("confstream_rtp_packets_rejected_total", reason="source")
        peer_t.sendto(RtpPacket(0, 1, 0, 1234, b"\xff" * 160).serialize(), (HOST, port))
        await _until(lambda: s._conn is not None, "the connected socket")
        for k in range(2, 22):
            peer_t.sendto(RtpPacket(0, k, k * 160, 1234, b"\xff" * 160).serialize(), (HOST, port))
            stray.send(RtpPacket(0, k, k * 160, 99, b"\x7f" * 160).serialize())
        await _until(lambda: s.stats.packets_received == 21, "21 packets")
        await _until(lambda: s.stats.rejected == 20, "20 rejected")
        assert sample("confstream_rtp_packets_rejected_total", reason="source") - rejected == 20
        with pytest.raises(TimeoutError):  # not ConnectionRefusedError: nothing answered
            stray.recv(2048)
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(peer.got.wait(), 5)
        assert peer.packets[-1][1] == (HOST, port)  # sent from the session's port
        assert s.stats.packets_received == 21 and s.stats.rejected == 20

        # re-INVITE to another address: un-latched, the new source latches and is connected.
        s.set_remote(HOST, peer2_port, 0, 101)
        assert s._conn is None and not s.endpoint.latched
        peer2_t.sendto(RtpPacket(0, 7, 0, 555, b"\xff" * 160).serialize(), (HOST, port))
        await _until(lambda: s._conn is not None, "the connected socket again")
        assert s.remote == (HOST, peer2_port)
        peer_t.sendto(RtpPacket(0, 30, 4800, 1234, b"\xff" * 160).serialize(), (HOST, port))
        await _until(lambda: s.stats.rejected == 21, "the old source rejected")
        s.write_frame(np.zeros(160, np.int16))
        await asyncio.wait_for(peer2.got.wait(), 5)
        assert peer2.packets[-1][1] == (HOST, port)
        assert s.stats.packets_received == 22
        assert len(peer.packets) == 1  # the old address got nothing more
    finally:
        stray.close()
        peer_t.close()
        peer2_t.close()
