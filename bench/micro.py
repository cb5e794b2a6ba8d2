"""In-process micro-benchmark of the server's per-participant hot path: ``python -m bench.micro``.

What runs is the real code: ``N`` :class:`~confstream.rtp.session.RtpSession` objects on
127.0.0.1 (real UDP sockets, the event loop the server uses: uvloop unless ``--loop asyncio``),
wrapped in the real :class:`~confstream.sip.server.SipParticipant`, in conferences of
``--size`` (default 10) in a real :class:`~confstream.conference.engine.Engine`. One sender
socket plays every caller: each tick it sends one 20 ms PCMU packet of a speech-like signal
(harmonics under a syllable envelope, different per caller) to every session, the event loop
delivers them, and ``engine.tick()`` mixes and sends every participant's mix-minus back (the
sessions latch onto the sender's address, as they would onto a phone's). The sessions' sockets
are read as the server reads them: one drain of the RTP reader (:mod:`confstream.rtp.reader`)
at the start of every tick.

Ticks are paced on the loop clock at 20 ms (back to back when the work takes longer), so the
jitter buffers see realistic arrival times. CPU is ``time.process_time`` (user + system of this
process), measured around each phase and reported per participant-frame (one participant for
one 20 ms tick):

* ``receive``: the RTP reader's drain of every socket (``epoll`` + ``recvfrom``) -> parse ->
  jitter buffer (before bench/history.md section 7: the event loop waking up for the datagrams
  and ``datagram_received``);
* ``tick``: ``engine.tick()``: every participant's ``read_frame``, the mix, and every
  ``write_frame`` (encode, packetise, ``sendto``);
* ``all-in``: the sum. The sender's sends and the draining of the packets sent back are not
  counted (in the real benchmark they are the load generator's CPU).

Afterwards (unless ``--no-components``) each Python piece of the hot path is timed alone,
without sockets, to show where the time goes: ``RtpEndpoint.receive`` + ``read_ulaw`` (the
engine's µ-law fast path, one packet in and one frame out), ``receive`` + ``read_frame`` (the
per-participant path other participant kinds use), ``write_ulaw`` and ``write_frame``, and
``Engine.tick`` per participant with participants that cost nothing (the mixer and its
per-participant loop alone).

What is left outside Python (measured on this machine, 2026-11): a loopback ``sendto`` of a
172-byte datagram costs about 3 µs of the sender's CPU (the kernel delivers to the receiving
socket within the call), a ``recvfrom`` about 0.8 µs (uvloop's datagram transport cost about
2 µs more per received datagram with a do-nothing protocol, before the reader).

The packets of a tick are all sent before the drain here, so a drain finds every socket ready
at once; in the server phones' packets arrive spread over the tick, which made the event loop
wake up per datagram before the reader (bench/history.md, section 7).

Figures vary by ±1 µs between runs on a 2-core VM; compare before/after interleaved, and never
while the full benchmark (``bench.run``) is running.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from confstream.conference.base import FRAME_SAMPLES
from confstream.conference.engine import Engine
from confstream.media.g711 import ulaw_encode
from confstream.rtp.ports import RtpPortPool
from confstream.rtp.session import RtpSession
from confstream.sip.server import SipParticipant
from confstream.tools.net import rtp_port_bounds

try:  # absent before bench/history.md section 7: run this harness against older sources too
    from confstream.rtp import reader as rtp_reader
except ImportError:  # pragma: no cover
    rtp_reader = None  # type: ignore[assignment]

HOST = "127.0.0.1"
TICK = 0.020
_HEADER = struct.Struct("!BBHII")


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Pitched harmonics under a 4 Hz syllable envelope: int16 at 8 kHz, about -12 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000.0
    f0 = 110.0 + 60.0 * rng.random()
    sig = sum(np.sin(2 * math.pi * f0 * k * t + rng.random() * 6.28) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * math.pi * 4.0 * t + rng.random() * 6.28)
    out = np.asarray(sig * env, dtype=np.float64)
    out *= 8000.0 / max(float(np.max(np.abs(out))), 1e-9)
    return out.astype(np.int16)


@dataclass
class Result:
    participants: int
    ticks: int
    receive_s: float
    tick_s: float
    received: int
    sent: int
    tick_wall_max: float

    def per_pf(self, seconds: float) -> float:
        return seconds / (self.participants * self.ticks) * 1e6


def _drain_rtp() -> None:
    """What the engine's clock does at the start of every tick (nothing in older sources,
    where the event loop read every datagram as it came)."""
    if rtp_reader is not None:
        rtp_reader.drain()


async def run(n: int, size: int, ticks: int, warmup: int, spread: int = 1) -> Result:
    loop = asyncio.get_running_loop()
    pool = RtpPortPool(*rtp_port_bounds(4 * n + 200))
    engine = Engine()
    sessions: list[RtpSession] = []
    for i in range(n):
        s = RtpSession(call_sid=f"CA{i:032x}", local_host=HOST, port_pool=pool)
        await s.open()
        sessions.append(s)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sender.bind((HOST, 0))
    sender.setblocking(False)
    me = sender.getsockname()
    for i, s in enumerate(sessions):
        s.set_remote(me[0], me[1], 0, 101)
        conf = engine.add_conference(f"CF{i // size:032x}")
        conf.add_participant(SipParticipant(s.call_sid, s, lambda reason: None))

    # Per caller: 50 distinct frames (1 s) of its own speech-like signal, PCMU-encoded.
    payloads = []
    for i in range(n):
        pcm = speech_like(1.0, seed=i)
        payloads.append([ulaw_encode(pcm[k : k + 160]).tobytes() for k in range(0, 8000, 160)])
    addrs = [(HOST, s.local_port) for s in sessions]
    ssrcs = [0x10000 + i for i in range(n)]

    def blast(k: int, part: int = 0, parts: int = 1) -> None:
        seq, ts = k & 0xFFFF, (k * FRAME_SAMPLES) & 0xFFFFFFFF
        for i in range(part, n, parts):
            pkt = _HEADER.pack(0x80, 0, seq, ts, ssrcs[i]) + payloads[i][k % 50]
            while True:
                try:
                    sender.sendto(pkt, addrs[i])
                    break
                except BlockingIOError:
                    drain()

    def drain() -> int:
        got = 0
        while True:
            try:
                sender.recv(2048)
            except BlockingIOError:
                return got
            got += 1

    def received() -> int:
        return sum(s.endpoint._counts.packets_received for s in sessions)

    pt = time.process_time
    recv_cpu = tick_cpu = 0.0
    wall_max = 0.0
    start = loop.time()
    recv0 = sent0 = 0
    gc.collect()
    for k in range(warmup + ticks):
        if k == warmup:
            recv_cpu = tick_cpu = wall_max = 0.0
            recv0 = received()
            sent0 = sum(s.endpoint._counts.packets_sent for s in sessions)
        deadline = start + k * TICK
        delay = deadline - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if spread <= 1:
            blast(k)
            c0 = pt()
            # The packets are already in the sockets (loopback delivers within sendto): the
            # drain the engine's clock runs at the start of every tick reads them all.
            for _ in range(3):  # (older sources: the event loop hands them over)
                await asyncio.sleep(0)
            _drain_rtp()
            c1 = pt()
        else:
            # As phones send: the tick's packets in ``spread`` bursts over the previous tick.
            # Everything this process spends between the bursts except the sends is receiving.
            send_cpu = 0.0
            c_start = pt()
            for part in range(spread):
                s0 = pt()
                blast(k, part, spread)
                send_cpu += pt() - s0
                await asyncio.sleep(TICK / spread / 2)
            _drain_rtp()
            c1 = pt()
            c0 = c_start + send_cpu
        w0 = time.perf_counter()
        engine.tick()
        w1 = time.perf_counter()
        c2 = pt()
        recv_cpu += c1 - c0
        tick_cpu += c2 - c1
        wall_max = max(wall_max, w1 - w0)
        drain()
    got = received() - recv0
    sent = sum(s.endpoint._counts.packets_sent for s in sessions) - sent0
    for s in sessions:
        s.close()
    sender.close()
    await asyncio.sleep(0.05)
    return Result(n, ticks, recv_cpu, tick_cpu, got, sent, wall_max)


class _NullParticipant:
    """A participant with the µ-law fast path that costs nothing: isolates the engine."""

    def __init__(self, call_sid: str, codes: bytes) -> None:
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self._codes = codes

    def read_frame(self) -> np.ndarray | None:  # pragma: no cover - the fast path is used
        return None

    def read_ulaw(self) -> bytes:
        return self._codes

    def write_ulaw(self, codes: bytes) -> bool:
        return True

    def write_frame(self, frame: np.ndarray) -> None:  # pragma: no cover
        pass

    def send_dtmf(self, digit: str, duration_ms: int) -> None:  # pragma: no cover
        pass

    def hangup(self, reason: str) -> None:  # pragma: no cover
        pass


def components(repeat: int, n: int, size: int) -> dict[str, float]:
    """µs per call (per participant for the engine) of the hot-path pieces, each timed alone
    without sockets: best of 5 runs of ``repeat`` calls."""
    from confstream.rtp.endpoint import RtpEndpoint

    pcm = speech_like(1.0, seed=7)
    frames = [pcm[k : k + 160] for k in range(0, 8000, 160)]
    payloads = [ulaw_encode(f).tobytes() for f in frames]
    addr = (HOST, 5004)
    out: dict[str, float] = {}

    def best_of(body: Callable[[], None], calls: int) -> float:
        best = math.inf
        for _ in range(5):
            c0 = time.perf_counter()
            body()
            best = min(best, time.perf_counter() - c0)
        return best / calls * 1e6

    ep = RtpEndpoint()
    ep.set_remote(HOST, 5004, 0, 101)
    datagrams = [
        _HEADER.pack(0x80, 0, k & 0xFFFF, (k * 160) & 0xFFFFFFFF, 1234) + payloads[k % 50]
        for k in range(repeat * 5)
    ]
    pos = [0]

    def receive() -> None:  # steady state: one in, one out, depth constant
        j0 = pos[0]
        for j in range(j0, j0 + repeat):
            ep.receive(datagrams[j], addr, j * TICK)
            ep.read_ulaw()
        pos[0] = j0 + repeat

    out["RtpEndpoint.receive+read_ulaw"] = best_of(receive, repeat)

    def read_frame() -> None:
        for _ in range(repeat):
            ep.receive(datagrams[pos[0]], addr, pos[0] * TICK)
            ep.read_frame()
            pos[0] += 1

    pos[0] = 0
    ep = RtpEndpoint()
    ep.set_remote(HOST, 5004, 0, 101)
    out["RtpEndpoint.receive+read_frame"] = best_of(read_frame, repeat)

    codes = payloads[3]
    frame = frames[3]

    def write_ulaw() -> None:
        for _ in range(repeat):
            ep.write_ulaw(codes)

    def write_frame() -> None:
        for _ in range(repeat):
            ep.write_frame(frame)

    out["RtpEndpoint.write_ulaw"] = best_of(write_ulaw, repeat)
    out["RtpEndpoint.write_frame"] = best_of(write_frame, repeat)

    engine = Engine()
    for i in range(n):
        conf = engine.add_conference(f"CF{i // size}")
        conf.add_participant(_NullParticipant(f"CA{i}", payloads[i % 50]))
    engine.tick()
    ticks = max(repeat // n, 20)

    def tick() -> None:
        for _ in range(ticks):
            engine.tick()

    out[f"Engine.tick per participant (n={n})"] = best_of(tick, ticks * n)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--participants", type=int, default=1000)
    ap.add_argument("--size", type=int, default=10, help="participants per conference")
    ap.add_argument("-k", "--ticks", type=int, default=500, help="measured ticks (20 ms each)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--no-components", action="store_true", help="skip the per-call timings")
    ap.add_argument(
        "--spread",
        type=int,
        default=1,
        help="send each tick's packets in this many bursts spread over half the tick, as "
        "phones do (1: all at once before the tick)",
    )
    args = ap.parse_args(argv)

    if args.loop == "uvloop":
        import uvloop

        res = uvloop.run(run(args.participants, args.size, args.ticks, args.warmup, args.spread))
    else:
        res = asyncio.run(run(args.participants, args.size, args.ticks, args.warmup, args.spread))
    load = os.getloadavg()[0]
    print(f"python -m bench.micro {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(
        f"{res.participants} participants in conferences of {args.size}, {res.ticks} ticks, "
        f"loop {args.loop}, load average {load:.2f}"
    )
    expected = res.participants * res.ticks
    print(f"packets received {res.received}/{expected}, sent {res.sent}/{expected}")
    total = res.receive_s + res.tick_s
    print("CPU µs per participant-frame:")
    print(f"  receive  {res.per_pf(res.receive_s):6.2f}")
    print(f"  tick     {res.per_pf(res.tick_s):6.2f}   (read + mix + write/send)")
    print(f"  all-in   {res.per_pf(total):6.2f}")
    print(
        f"  one core holds ~{1e6 / 50 / max(res.per_pf(total), 1e-9):.0f} participants; "
        f"longest tick {res.tick_wall_max * 1e3:.1f} ms wall"
    )
    if not args.no_components:
        print("components without sockets, µs per call (best of 5):")
        for name, us in components(2000, args.participants, args.size).items():
            print(f"  {name:40s} {us:6.2f}")


if __name__ == "__main__":
    main()
