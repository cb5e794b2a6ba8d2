"""Instruction counts of the hot paths under callgrind: ``python -m bench.icount``.

CPU time on a shared 2-core machine moves by tens of percent with the neighbours' load; the
number of instructions a piece of code executes does not. This tool runs each scenario twice
under ``valgrind --tool=callgrind`` (install ``valgrind``: ``scripts/ensure-sysdeps.sh
--bench``), once with ``--short`` and once with ``--long`` iterations, and reports

    (instructions(long) - instructions(short)) / ((long - short) x units per iteration)

so start-up, imports and set-up cancel out and only the steady state is left. Only user-space
instructions of this process are counted: the kernel's share of ``sendto``/``recvfrom`` and
anything in other processes (the stream sink) are not. Use it to compare before/after a change
(docs/benchmarks.md, "History"); the absolute CPU figures come from :mod:`bench.run`.

Scenarios (``--scenario``, several allowed; default all):

* ``rtp``: one participant-frame of the RTP path without sockets: ``RtpEndpoint.receive`` of a
  20 ms PCMU packet, ``read_ulaw`` and ``write_ulaw`` (100 endpoints); unit: participant-frame.
* ``jitter``: ``JitterBuffer.put`` + ``get`` of one packet (100 buffers); unit: packet.
* ``tick``: ``Engine.tick`` with 200 participants that cost nothing (20 conferences of 10);
  unit: participant-tick.
* ``rtp-io``: the real thing for 100 participants: RtpSessions on UDP sockets, the event loop
  (uvloop) delivering one packet per participant per tick, ``Engine.tick`` mixing and sending
  back (through the compiled send lane, as the server does, unless
  ``CONFSTREAM_RTP_SEND_LANE=false``); includes the harness's own ``sendto`` of the 100
  packets; unit: participant-frame.
* ``stream``: ``--streams`` (default 20) ``both_tracks`` streams in ``--codec`` (default PCMU)
  over real TLS WebSockets to :mod:`bench.sink` (its own process, not counted), spread over
  ``--stream-conferences`` (default 20: one stream each; 4: five streams per conference, which
  share their payloads) of 20 conferences of 10 participants that cost nothing; the same with
  no streams is subtracted;
  unit: stream-tick (one stream, one 20 ms tick, both tracks encoded, framed, encrypted and
  written).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.micro import _NullParticipant, speech_like
from confstream.conference.base import FRAME_SAMPLES
from confstream.conference.engine import Engine
from confstream.media.g711 import ulaw_encode

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
_HEADER = struct.Struct("!BBHII")
SCENARIOS = ("rtp", "jitter", "tick", "rtp-io", "stream")


@dataclass(frozen=True)
class Plan:
    """Iterations of the short and long run of a scenario and the units per iteration."""

    short: int
    long: int
    units: int
    unit: str


def _frames(n: int) -> list[bytes]:
    """``n`` distinct 20 ms PCMU payloads of speech-like audio."""
    pcm = speech_like(n * 0.02 + 0.02, seed=3)
    return [ulaw_encode(pcm[k * 160 : (k + 1) * 160]).tobytes() for k in range(n)]


def _null_engine(conferences: int, size: int) -> tuple[Engine, list[Any]]:
    engine = Engine()
    payloads = _frames(50)
    confs = []
    for c in range(conferences):
        conf = engine.add_conference(f"CF{c:032x}")
        for i in range(size):
            conf.add_participant(
                _NullParticipant(f"CA{c:016x}{i:016x}", payloads[(c * size + i) % 50])
            )
        confs.append(conf)
    return engine, confs


# --------------------------------------------------------------------------------------------
# Child scenarios: each runs ``iterations`` steady-state iterations after a fixed set-up.

N_ENDPOINTS = 100
PREPARED = 400  # datagrams prepared per endpoint, whatever the iteration count


def child_rtp(iterations: int, _args: argparse.Namespace) -> None:
    from confstream.rtp.endpoint import RtpEndpoint

    payloads = _frames(50)
    datagrams = [
        _HEADER.pack(0x80, 0, k & 0xFFFF, (k * FRAME_SAMPLES) & 0xFFFFFFFF, 1234) + payloads[k % 50]
        for k in range(PREPARED)
    ]
    addr = (HOST, 5004)
    eps = []
    for _ in range(N_ENDPOINTS):
        ep = RtpEndpoint()
        ep.set_remote(HOST, 5004, 0, 101)
        eps.append(ep)
    out = payloads[7]
    for k in range(min(iterations + 5, PREPARED)):
        data = datagrams[k]
        now = k * 0.02
        for ep in eps:
            ep.receive(data, addr, now)
            ep.read_ulaw()
            ep.write_ulaw(out)


def child_jitter(iterations: int, _args: argparse.Namespace) -> None:
    from confstream.rtp.jitter import JitterBuffer

    payloads = _frames(50)
    buffers: list[JitterBuffer[bytes]] = [
        JitterBuffer(conceal=lambda b: None) for _ in range(N_ENDPOINTS)
    ]
    for k in range(iterations + 5):
        payload = payloads[k % 50]
        seq = k & 0xFFFF
        ts = (k * FRAME_SAMPLES) & 0xFFFFFFFF
        now = k * 0.02
        for jb in buffers:
            jb.put(seq, ts, 1234, payload, now)
            jb.get()


def child_tick(iterations: int, _args: argparse.Namespace) -> None:
    engine, _ = _null_engine(20, 10)
    for _ in range(iterations + 5):
        engine.tick()


async def _rtp_io(iterations: int) -> None:
    from confstream.rtp import reader as rtp_reader
    from confstream.rtp.ports import RtpPortPool
    from confstream.rtp.session import RtpSession
    from confstream.sip.server import SipParticipant
    from confstream.tools.net import rtp_port_bounds

    n = N_ENDPOINTS
    pool = RtpPortPool(*rtp_port_bounds(4 * n + 200))
    engine = Engine()
    if os.environ.get("CONFSTREAM_RTP_SEND_LANE", "true").lower() not in ("0", "false", "no"):
        # the compiled send lane, installed as the server does (confstream.rtp.txlane)
        try:
            from confstream.rtp import txlane
        except ImportError:  # a tree from before the lane
            pass
        else:
            txlane.warm_up()
            lane = txlane.install(asyncio.get_running_loop())
            if lane is not None:
                engine.tx_lane = lane.send
    sessions = []
    for i in range(n):
        s = RtpSession(call_sid=f"CA{i:032x}", local_host=HOST, port_pool=pool)
        await s.open()
        sessions.append(s)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sender.bind((HOST, 0))
    sender.setblocking(False)
    me = sender.getsockname()
    for i, s in enumerate(sessions):
        s.set_remote(me[0], me[1], 0, 101)
        engine.add_conference(f"CF{i // 10:032x}").add_participant(
            SipParticipant(s.call_sid, s, lambda reason: None)
        )
    payloads = _frames(50)
    addrs = [(HOST, s.local_port) for s in sessions]
    packets = [
        [_HEADER.pack(0x80, 0, k, k * 160, 0x10000 + i) + payloads[(i + k) % 50] for k in range(50)]
        for i in range(n)
    ]
    for k in range(iterations + 5):
        for i in range(n):
            # the sequence numbers repeat every 50 packets: rebuild the header's seq/ts cheaply
            pkt = bytearray(packets[i][k % 50])
            struct.pack_into("!HI", pkt, 2, k & 0xFFFF, (k * 160) & 0xFFFFFFFF)
            sender.sendto(pkt, addrs[i])
        rtp_reader.drain()  # as the engine's clock does at the start of every tick
        engine.tick()
        if k < 5:  # warm-up: let the sessions latch and connect (the clock yields every tick)
            await asyncio.sleep(0)
        while True:
            try:
                sender.recv(2048)
            except BlockingIOError:
                break
    for s in sessions:
        s.close()
    sender.close()
    await asyncio.sleep(0.05)


def child_rtp_io(iterations: int, _args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(_rtp_io(iterations))


async def _stream(iterations: int, streams: int, codec: str, conferences: int) -> None:
    from bench.run import LineProc, bench_env, make_sink_tls
    from confstream.settings import Settings
    from confstream.streams.session import StreamSession
    from confstream.streams.spec import StreamSpec
    from confstream.streams.vocabulary import StreamCodec, Track

    work = Path(tempfile.mkdtemp(prefix="confstream-icount-"))
    engine, confs = _null_engine(20, 10)
    sink = None
    tasks: list[asyncio.Task[Any]] = []
    sessions: list[StreamSession] = []
    try:
        if streams:
            tls = make_sink_tls(work)
            sink = LineProc(
                [sys.executable, "-m", "bench.sink", "--cert", str(tls.cert_file),
                 "--key", str(tls.key_file), "--out", str(work / "sink.json")],
                cwd=ROOT, log=work / "sink.log",
                env=bench_env(),
            )  # fmt: skip
            port = (await asyncio.to_thread(sink.wait_for, "listening", 120))["port"]
            # generous timeouts: under callgrind everything runs ~50x slower
            settings = Settings(
                allowed_networks=["127.0.0.0/8"],
                stream_ca_file=tls.ca_file,
                stream_connect_timeout=600.0,
                stream_ping_interval=3600.0,
                stream_close_timeout=60.0,
            )
            started = asyncio.Event()

            async def on_started() -> None:
                started.set()

            # one at a time: under callgrind, concurrent TLS handshakes run into uvloop's
            # 60 s handshake timeout
            for k in range(streams):
                spec = StreamSpec(
                    sid=f"MZ{uuid.uuid4().hex}",
                    account_sid=f"AC{uuid.uuid4().hex}",
                    auth_token="t" * 32,
                    conference_sid=confs[k % conferences].sid,
                    url=f"wss://127.0.0.1:{port}/s{k}",
                    track=Track.BOTH,
                    codec=StreamCodec(codec),
                    parameters={"room": f"r{k}"},
                )
                session = StreamSession(spec, settings, confs[k % conferences])
                sessions.append(session)
                started.clear()
                task = asyncio.ensure_future(session.run(on_started))
                tasks.append(task)
                waiter = asyncio.ensure_future(started.wait())
                await asyncio.wait([waiter, task], return_when="FIRST_COMPLETED")
                if not started.is_set():
                    raise RuntimeError(f"stream {k} did not start: {task.result()}")

        async def drain() -> None:
            for _ in range(1000):
                await asyncio.sleep(0)
                if all(s.queued_ticks == 0 for s in sessions):
                    return

        for _ in range(iterations + 5):
            engine.tick()
            await drain()
        short = [s.spec.sid for s in sessions if s.protocol.sequence < 2 * iterations]
        if short:
            raise RuntimeError(f"{len(short)} streams did not send every tick")
    finally:
        for s in sessions:
            s.request_stop("icount")
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        if sink is not None:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)


def child_stream(iterations: int, args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(_stream(iterations, args.streams, args.codec, args.stream_conferences))


CHILDREN: dict[str, Callable[[int, argparse.Namespace], None]] = {
    "rtp": child_rtp,
    "jitter": child_jitter,
    "tick": child_tick,
    "rtp-io": child_rtp_io,
    "stream": child_stream,
}


# --------------------------------------------------------------------------------------------
# The parent: callgrind runs and the differences


def plan_of(scenario: str, args: argparse.Namespace) -> Plan:
    if scenario == "rtp":
        return Plan(50, 250, N_ENDPOINTS, "participant-frame")
    if scenario == "jitter":
        return Plan(50, 250, N_ENDPOINTS, "packet")
    if scenario == "tick":
        return Plan(50, 250, 200, "participant-tick")
    if scenario == "rtp-io":
        return Plan(30, 130, N_ENDPOINTS, "participant-frame")
    return Plan(20, 70, max(args.streams, 1), "stream-tick")


_TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def callgrind_instructions(child_args: list[str], workdir: Path) -> int:
    """Instructions executed by ``python -m bench.icount --child ...`` under callgrind."""
    out = workdir / f"callgrind.{uuid.uuid4().hex}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "bench.icount", "--child", *child_args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, timeout=3600, env=os.environ.copy())
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"callgrind run failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    match = _TOTAL.search(out.read_bytes())
    out.unlink()
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def measure(scenario: str, args: argparse.Namespace, workdir: Path) -> float:
    """Instructions per unit of ``scenario`` (see the module docstring)."""
    plan = plan_of(scenario, args)

    def per_iteration(streams: int) -> float:
        opts = [scenario, "--streams", str(streams), "--codec", args.codec,
                "--stream-conferences", str(args.stream_conferences)]  # fmt: skip
        short = callgrind_instructions([*opts, "--iterations", str(plan.short)], workdir)
        long = callgrind_instructions([*opts, "--iterations", str(plan.long)], workdir)
        return (long - short) / (plan.long - plan.short)

    if scenario == "stream":
        return (per_iteration(args.streams) - per_iteration(0)) / plan.units
    return per_iteration(args.streams) / plan.units


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all")
    p.add_argument("--streams", type=int, default=20, help="streams of the stream scenario")
    p.add_argument("--codec", default="PCMU", help="StreamCodec of the stream scenario")
    p.add_argument(
        "--stream-conferences",
        type=int,
        default=20,
        choices=range(1, 21),
        metavar="1-20",
        help="conferences the streams are spread over",
    )
    p.add_argument("--child", default=None, choices=SCENARIOS, help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        CHILDREN[args.child](args.iterations, args)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found: bash scripts/ensure-sysdeps.sh --bench", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="confstream-icount-"))
    print(f"python -m bench.icount {' '.join(argv if argv is not None else sys.argv[1:])}")
    try:
        for scenario in args.scenario or SCENARIOS:
            plan = plan_of(scenario, args)
            what = scenario
            if scenario == "stream":
                what = (
                    f"stream ({args.codec}, {args.streams} streams on "
                    f"{args.stream_conferences} conferences)"
                )
            value = measure(scenario, args, workdir)
            print(f"  {what:32s} {value:12,.0f} instructions per {plan.unit}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
