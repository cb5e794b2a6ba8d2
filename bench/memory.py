"""Memory per participant and per stream: ``python -m bench.memory``.

Measured with :mod:`tracemalloc` (every Python object and NumPy buffer the server allocates;
not the kernel's socket buffers nor uvloop's C structures) and, for participants, the process
RSS growth as a cross-check:

* **participant**: ``-n`` (default 200) real :class:`~confstream.rtp.session.RtpSession`
  objects on UDP sockets wrapped in :class:`~confstream.sip.server.SipParticipant`, in
  conferences of 10 of a real :class:`~confstream.conference.engine.Engine`, after 100 ticks
  of traffic (one PCMU packet per participant per tick in, the mix-minus out): the RTP
  endpoint, its jitter buffer, DTMF state, the engine's rows. SIP dialogs are not included.
* **stream**: ``-k`` (default 100) ``both_tracks`` stream sessions
  (:class:`~confstream.streams.session.StreamSession`) attached to 20 conferences (5 per
  conference, sharing their payloads), fed by the engine's ticks without a connection:
  *steady* (the sender keeps up: the queue is emptied every tick) and *backlog* (the receiver
  stalls: the send queue full at its 50-tick bound, the worst case), per codec.

* **tick page faults** (``--tick-faults N``): :meth:`Engine.tick` with N participants that cost
  nothing (conferences of 10), minor page faults per tick over 200 ticks. With the server's
  fixed mmap threshold every temporary of 256 KiB or more a tick makes is a fresh mapping
  faulted in page by page, and one freed at the heap's top may be given back and faulted in
  again: the figure must stay 0 (docs/operations.md, "Memory").

* **full collection** (``--gc``): in a fresh process that imports what ``confstream serve``
  runs and builds the app object, then 1000 RTP endpoints, the objects a full garbage
  collection walks and its time (best of 5), without and with :func:`confstream.gcpolicy.
  freeze_startup` after the imports (what the server does once it is up).

Before measuring, the process sets glibc's malloc as ``confstream serve`` does (the arena cap
and the fixed mmap threshold of ``settings.malloc_mmap_threshold``, docs/operations.md,
"Memory"), so the RSS figures are the server's; ``--malloc-default`` leaves glibc's defaults.

Results are KiB per participant or stream; compare before/after a change (docs/benchmarks.md,
"History").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import struct
import sys
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import psutil

from bench.micro import _NullParticipant, speech_like
from confstream.conference.base import FRAME_SAMPLES
from confstream.conference.engine import Engine
from confstream.media.g711 import ulaw_encode

HOST = "127.0.0.1"
_HEADER = struct.Struct("!BBHII")


def _traced(build: Callable[[], Any]) -> tuple[Any, float, float]:
    """(what ``build`` returned, traced bytes it left allocated, RSS growth in bytes)."""
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    rss1 = psutil.Process().memory_info().rss
    return kept, float(after - before), float(rss1 - rss0)


async def participants(n: int, ticks: int = 100) -> tuple[float, float]:
    """KiB per participant: traced, RSS growth."""
    from confstream.rtp import reader as rtp_reader
    from confstream.rtp.ports import RtpPortPool
    from confstream.rtp.session import RtpSession
    from confstream.sip.server import SipParticipant
    from confstream.tools.net import rtp_port_bounds

    pool = RtpPortPool(*rtp_port_bounds(4 * n + 200))
    pcm = speech_like(1.0, seed=5)
    payloads = [ulaw_encode(pcm[k : k + 160]).tobytes() for k in range(0, 8000, 160)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sender.bind((HOST, 0))
    sender.setblocking(False)
    me = sender.getsockname()
    engine = Engine()
    sessions: list[RtpSession] = []

    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        s = RtpSession(call_sid=f"CA{i:032x}", local_host=HOST, port_pool=pool)
        await s.open()
        s.set_remote(me[0], me[1], 0, 101)
        engine.add_conference(f"CF{i // 10:032x}").add_participant(
            SipParticipant(s.call_sid, s, lambda reason: None)
        )
        sessions.append(s)
    for k in range(ticks):
        for i, s in enumerate(sessions):
            pkt = _HEADER.pack(0x80, 0, k, k * FRAME_SAMPLES, 0x1000 + i) + payloads[k % 50]
            sender.sendto(pkt, (HOST, s.local_port))
        rtp_reader.drain()  # as the engine's clock does at the start of every tick
        engine.tick()
        while True:
            try:
                sender.recv(2048)
            except BlockingIOError:
                break
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    rss = psutil.Process().memory_info().rss - rss0
    for s in sessions:
        s.close()
    sender.close()
    await asyncio.sleep(0.05)
    return traced / n / 1024, rss / n / 1024


def streams(k: int, codec: str, per_conference: int = 5) -> tuple[float, float]:
    """KiB per stream: steady (queue emptied every tick), backlog (queue full)."""
    from confstream.settings import Settings
    from confstream.streams.session import StreamSession
    from confstream.streams.spec import StreamSpec
    from confstream.streams.vocabulary import StreamCodec, Track

    confs_n = max(1, k // per_conference)
    engine = Engine()
    payloads = [bytes([i]) * 160 for i in range(10)]
    confs = []
    for c in range(confs_n):
        conf = engine.add_conference(f"CF{c:032x}")
        for i in range(10):
            conf.add_participant(_NullParticipant(f"CA{c:016x}{i:016x}", payloads[i]))
        confs.append(conf)
    settings = Settings()
    capacity = settings.stream_queue_ms // 20
    engine.tick()

    def build() -> list[StreamSession]:
        out = []
        for j in range(k):
            conf = confs[j % confs_n]
            spec = StreamSpec(
                sid=f"MZ{uuid.uuid4().hex}",
                account_sid=f"AC{uuid.uuid4().hex}",
                auth_token="t" * 32,
                conference_sid=conf.sid,
                url="wss://127.0.0.1:9/x",
                track=Track.BOTH,
                codec=StreamCodec(codec),
            )
            session = StreamSession(spec, settings, conf)
            session._attach()  # as when its WebSocket is up (no connection needed here)
            out.append(session)
        for _ in range(5):  # steady: the sender empties each queue every tick
            engine.tick()
            for s in out:
                while s._queue.pop() is not None:
                    pass
        engine.tick()  # one tick waiting, as when the sender has not run yet
        return out

    kept, steady, _ = _traced(build)

    def backlog() -> None:
        for _ in range(capacity + 5):
            engine.tick()

    _, extra, _ = _traced(backlog)
    for s in kept:
        s._detach()
    return steady / k / 1024, (steady + extra) / k / 1024


def tick_faults(n: int, ticks: int = 200) -> float:
    """Minor page faults per :meth:`Engine.tick` with ``n`` participants that cost nothing."""
    import resource

    engine = Engine()
    for c in range(max(1, n // 10)):
        conf = engine.add_conference(f"CF{c:032x}")
        for i in range(10):
            conf.add_participant(_NullParticipant(f"CA{c:016x}{i:016x}", bytes([i + 1]) * 160))
    for _ in range(20):
        engine.tick()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(ticks):
        engine.tick()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / ticks


def _full_collection(freeze: bool) -> str:
    """(child process) The full collection of a server-like heap, see the module docstring."""
    import time

    import alembic  # noqa: F401  (what the server imports)
    import httpx  # noqa: F401
    import sqlalchemy  # noqa: F401
    import uvicorn  # noqa: F401

    from confstream import gcpolicy
    from confstream.app import Server
    from confstream.rtp.endpoint import RtpEndpoint
    from confstream.settings import Settings

    server = Server(Settings())
    if freeze:
        gcpolicy.freeze_startup()
    endpoints = []
    for _ in range(1000):
        ep = RtpEndpoint()
        ep.set_remote(HOST, 5004, 0, 101)
        endpoints.append(ep)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t0)
    walked = len(gc.get_objects())
    del server, endpoints
    how = "frozen after start-up" if freeze else "not frozen"
    return f"  full collection, {how:22s}: {walked:7d} objects walked, {best * 1000:6.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--participants", type=int, default=200)
    ap.add_argument("-k", "--streams", type=int, default=100)
    ap.add_argument("--codecs", default="PCMU,L16@16000h")
    ap.add_argument("--gc", action="store_true", help="also time a full collection")
    ap.add_argument(
        "--tick-faults", type=int, default=0, metavar="N", help="page faults per tick at N"
    )
    ap.add_argument("--gc-child", choices=("freeze", "plain"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--malloc-default", action="store_true", help="leave glibc's malloc settings alone"
    )
    args = ap.parse_args(argv)
    if args.gc_child:
        print(_full_collection(args.gc_child == "freeze"))
        return 0
    if not args.malloc_default:
        from confstream.app import fix_mmap_threshold, limit_malloc_arenas
        from confstream.settings import Settings

        limit_malloc_arenas()
        fix_mmap_threshold(Settings().malloc_mmap_threshold)
    print(f"python -m bench.memory {' '.join(argv if argv is not None else sys.argv[1:])}")
    if args.tick_faults:
        faults = tick_faults(args.tick_faults)
        n = args.tick_faults
        print(f"  tick: {faults:.1f} minor page faults per Engine.tick ({n} participants)")
    import uvloop

    tracemalloc.start()
    traced, rss = uvloop.run(participants(args.participants))
    print(
        f"  participant: {traced:6.2f} KiB traced, {rss:6.2f} KiB RSS growth "
        f"({args.participants} RTP participants, 100 ticks)"
    )
    for codec in (c.strip() for c in args.codecs.split(",") if c.strip()):
        steady, backlog = streams(args.streams, codec)
        print(
            f"  stream {codec:11s}: {steady:6.2f} KiB steady, {backlog:6.2f} KiB with a full "
            f"send queue ({args.streams} both-track streams, 5 per conference)"
        )
    if args.gc:
        import subprocess

        for mode in ("plain", "freeze"):
            child = [sys.executable, "-m", "bench.memory", "--gc-child", mode]
            print(subprocess.run(child, capture_output=True, text=True, check=True).stdout.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
