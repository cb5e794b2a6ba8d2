"""The benchmark: ``python -m bench.run`` (``make bench``) writes docs/benchmarks.md and .png.

For each load point N (default 100, 250, 500, 1000), in a fresh temporary directory,
:class:`PointRun` runs these named phases and :func:`collect_point` turns what they measured
into a :class:`bench.report.PointResult`:

1. *start server* — ``confstream serve`` starts as a subprocess with its own SQLite file,
   ports and a trustme CA (``CONFSTREAM_STREAM_CA_FILE``); an account is made with
   ``confstream accounts create``. Where the machine has two or more cores the server is
   pinned to core 0 with ``taskset`` and the load generator and sink to the other cores.
2. *start sink* — :mod:`bench.sink` (``wss://`` with a certificate from the same CA) starts as
   its own process.
3. *ramp callers* — :mod:`bench.loadgen` (N SIP callers in conferences of 10, dialled over
   ``--ramp`` seconds) starts as its own process; the phase ends when every caller is
   answered or failed.
4. *create streams* — one ``both_tracks`` stream per conference (K = N / 10) is created
   through the REST API with the chosen ``StreamCodec``; each create's wall time is kept, and
   the sink reports each stream's first ``media`` message: the stream start latency.
5. *measure steady state* — after a settling second, the window of ``--duration`` seconds
   (default 60): ``/metrics`` and the server's CPU times (psutil, the server pid only) are read
   at both ends, RSS sampled every 0.5 s, and VmHWM read at the end. Marked events sent inside
   the window are matched to burst onsets at the sink for end-to-end latency.
6. *profile* — with ``--profile`` (default: at the largest point) ``py-spy record`` samples
   the server for ``--profile-seconds`` *after* the window, so profiling never touches the
   figures.
7. *stop* — callers hang up with BYE and report their summary, the sink writes its results,
   the server gets SIGTERM.

A line per point on stderr says which point of how many is running and, when it is done, its
headline figures and the run's elapsed time.

``--with-janus``: after the confstream points, the same RTP load (same callers, rooms of 10,
same audio, same window) runs against Janus AudioBridge (:mod:`bench.janus`) and the report
compares CPU per participant-frame.

``--cluster-points 300,600,...`` (callers per node): then the cluster series
(:mod:`bench.cluster`): on one local cluster of ``--cluster-nodes`` nodes (one per core), each
load on one node alone, then on every node; the report gives what each carried at the
single-node targets. ``--points ""`` runs no single-node point.

One more run with ``StreamCodec=L16@16000h`` follows at ``--l16-point`` (default: the
smallest point; ``--l16-point 0`` skips it). ``--quick`` is a smoke run (N=20, 5 s).

``--streams-sweep K1,K2,...`` (``make bench``: 100,250,500,1000): streams per core. At a fixed
``--sweep-callers`` (default 200, in conferences of 10: 20 conferences) one point per K with K
``both_tracks`` streams spread evenly over the conferences (several per conference, as
transcription + recording + analytics consumers do), plus a K=0 point for the cost of the
callers alone; for each codec of ``--sweep-codecs`` (default PCMU and L16@16000h). The first
stream of each conference carries the ``room`` parameter and is analysed by the sink (burst
onsets: end-to-end latency); the others are only counted (messages, bytes, timeline gaps), so
the sink stays cheap at 1000 streams. The report gives per K the server CPU, the CPU per
stream-tick above the K=0 point, drops, tick lateness and end-to-end latency, and the largest
K inside the targets (:data:`bench.report.SWEEP_TARGETS`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.report import (
    BenchResults,
    E2eLatency,
    Machine,
    PointResult,
    StreamStart,
    TickLateness,
    histogram_delta,
    histogram_max_bound,
    histogram_quantile,
    match_events,
    percentile,
    write_report,
)
from confstream.tools.server import Account, ServerProcess, free_port
from confstream.tools.tls import make_tls

ROOT = Path(__file__).resolve().parent.parent
ROOM_SIZE = 10
#: One RTP frame (s): participant-frames in a window = participants x window / FRAME_S.
FRAME_S = 0.020


# --------------------------------------------------------------------------------------------
# Small helpers


def machine_info() -> Machine:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        memory_gib=psutil.virtual_memory().total / 2**30,
        os=os_name,
        python=platform.python_version(),
    )


def pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and for the load side, and a sentence for the report."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2 and shutil.which("taskset"):
        server = [str(cores[0])]
        load = [str(c) for c in cores[1:]]
        return (
            ["taskset", "-c", ",".join(server)],
            ["taskset", "-c", ",".join(load)],
            f"server on core {server[0]} (taskset), load generator and sink on core(s) "
            f"{','.join(load)}",
        )
    return [], [], "not pinned (fewer than 2 cores or no taskset)"


@dataclass
class SinkTls:
    """The run's CA file (trusted by the server) and the sink's certificate files."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_sink_tls(workdir: Path) -> SinkTls:
    """A trustme CA and a certificate for 127.0.0.1/localhost, written as PEM files."""
    tls = make_tls(workdir, ("127.0.0.1", "localhost"))
    cert, key = tls.write_server_pem(workdir, "127.0.0.1", "localhost", name="sink")
    return SinkTls(tls.ca_file, cert, key)


class LineProc:
    """A subprocess whose stdout carries JSON lines, read by a thread into a queue."""

    def __init__(self, argv: list[str], *, cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.log_file: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=self.log_file
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(raw))

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} from {self.proc.args!r}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    msg = f"{self.proc.args!r} exited with {self.proc.returncode}"
                    raise RuntimeError(msg) from None
                continue
            if line.get("event") == event:
                return line

    def drain(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.lines.get_nowait())
        return out

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(2)
        self.log_file.close()


# --------------------------------------------------------------------------------------------
# The server


class Server(ServerProcess):
    """The server under test: quiet logs, the sink's CA trusted, pinned with ``prefix``."""

    def __init__(self, workdir: Path, tls: SinkTls, prefix: list[str]) -> None:
        super().__init__(
            workdir,
            env={
                "CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file),
                "CONFSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
                "CONFSTREAM_LOG_LEVEL": "warning",
            },
            prefix=prefix,
        )
        self.account = Account("", "")

    def start(self, healthy_within: float = 30.0) -> None:
        self.http_port, self.sip_port = free_port(), free_port()
        self.account = self.create_account()
        super().start(healthy_within)

    def metrics(self) -> ServerMetrics:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return parse_metrics(text)


@dataclass
class ServerMetrics:
    """The figures the benchmark reads from one scrape of the server's ``/metrics``."""

    lateness_buckets: dict[float, float] = field(default_factory=dict)
    lateness_sum: float = 0.0
    lateness_count: float = 0.0
    stream_frames_dropped: float = 0.0
    rtp_discarded: dict[str, float] = field(default_factory=dict)
    ticks_skipped: float = 0.0
    participants_active: float = 0.0
    streams_active: float = 0.0
    #: ``confstream_gc_pause_seconds`` buckets summed over generations, per ``when`` label.
    gc_buckets: dict[str, dict[float, float]] = field(default_factory=dict)


#: Plain (unlabelled) samples -> the :class:`ServerMetrics` field they fill.
_SCALARS = {
    "confstream_tick_lateness_seconds_sum": "lateness_sum",
    "confstream_tick_lateness_seconds_count": "lateness_count",
    "confstream_stream_frames_dropped_total": "stream_frames_dropped",
    "confstream_ticks_skipped_total": "ticks_skipped",
    "confstream_participants_active": "participants_active",
    "confstream_streams_active": "streams_active",
}


def parse_metrics(text: str) -> ServerMetrics:
    """The figures the benchmark needs from a Prometheus text exposition."""
    out = ServerMetrics()
    discarded: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "confstream_tick_lateness_seconds_bucket":
                out.lateness_buckets[float(s.labels["le"])] = s.value
            elif s.name == "confstream_gc_pause_seconds_bucket":
                per_when = out.gc_buckets.setdefault(s.labels.get("when", ""), {})
                le = float(s.labels["le"])
                per_when[le] = per_when.get(le, 0.0) + s.value
            elif s.name == "confstream_rtp_discarded_total":
                discarded[s.labels.get("reason", "")] += s.value
            elif s.name in _SCALARS:
                setattr(out, _SCALARS[s.name], s.value)
    out.rtp_discarded = dict(discarded)
    return out


def vm_hwm_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# --------------------------------------------------------------------------------------------
# Pieces shared by the confstream and the Janus points


@dataclass
class PointConfig:
    callers: int
    codec: str = "PCMU"
    duration: float = 60.0
    ramp: float | None = None
    streams: int | None = None
    profile_seconds: float = 0.0
    settle: float = 2.0
    #: Seconds allowed for creating all streams (an overloaded server answers slowly).
    create_budget: float = 60.0
    #: Which report section the point belongs to: "n" (the N sweep) or "streams" (the
    #: streams-per-core sweep: ``streams`` may exceed the conferences).
    sweep: str = "n"

    @property
    def ramp_seconds(self) -> float:
        """Dial-in time: ``--ramp``, else N / 50 s (at least 2 s)."""
        return self.ramp if self.ramp is not None else max(2.0, self.callers / 50)

    @property
    def rooms(self) -> int:
        """Conferences of :data:`ROOM_SIZE` callers (the last one may be smaller)."""
        return max(1, -(-self.callers // ROOM_SIZE))

    @property
    def stream_count(self) -> int:
        """Streams to create: one per conference unless ``--streams`` asks for fewer; in the
        streams sweep exactly ``streams``, spread over the conferences."""
        if self.sweep == "streams":
            return self.streams or 0
        return self.rooms if self.streams is None else min(self.streams, self.rooms)


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_env() -> dict[str, str]:
    """The environment of the harness's own processes: ``bench`` importable from ROOT."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_loadgen(
    cfg: PointConfig, workdir: Path, pin: Pinning, target: list[str], extra: list[str]
) -> LineProc:
    """:mod:`bench.loadgen` for ``cfg.callers`` callers in rooms of :data:`ROOM_SIZE`;
    ``target`` says where they call (``--sip ...`` or ``--janus ...``)."""
    return LineProc(
        [*pin.load, sys.executable, "-m", "bench.loadgen", *target,
         "--callers", str(cfg.callers), "--room-size", str(ROOM_SIZE),
         "--ramp", str(cfg.ramp_seconds), *extra],
        cwd=ROOT, log=workdir / "loadgen.log", env=bench_env(),
    )  # fmt: skip


@dataclass
class Ramp:
    """Phase *ramp callers*: callers answered and failed when the phase ended."""

    answered: int
    failed: int


def wait_answered(gen: LineProc, cfg: PointConfig) -> Ramp:
    """Follow the load generator's progress lines until every caller is answered or failed,
    for at most the ramp time + 40 s."""
    deadline = time.monotonic() + cfg.ramp_seconds + 40
    ramp = Ramp(0, 0)
    while time.monotonic() < deadline:
        line = gen.wait_for("progress", 10)
        ramp = Ramp(line["answered"], line["failed"])
        if ramp.answered + ramp.failed >= cfg.callers:
            break
    return ramp


def stop_loadgen(gen: LineProc) -> dict[str, Any]:
    """Stop the callers (they hang up) and return their summary line ({} if none came)."""
    gen.stop()
    return next((x for x in gen.drain() if x.get("event") == "summary"), {})


@dataclass
class Window:
    """Phase *measure steady state*: one process's CPU and RSS over the window."""

    cpu_seconds: float
    #: Of which in the kernel (system time: the sockets' sends and receives, polls).
    cpu_system_seconds: float
    #: Window length (monotonic clock).
    seconds: float
    #: Wall-clock ends, to match the callers' marked events (``time.time()``) against.
    t0: float
    t1: float
    rss_max_mib: float


def sample_window(
    proc: psutil.Process, duration: float, check: Callable[[], None] | None = None
) -> Window:
    """CPU times at both ends of ``duration`` seconds, RSS every 0.5 s; ``check`` runs after
    each sample and raises to abort (the server died)."""
    c0 = proc.cpu_times()
    t0, w0 = time.time(), time.monotonic()
    rss_max = 0.0
    while time.monotonic() - w0 < duration:
        rss_max = max(rss_max, proc.memory_info().rss / 2**20)
        time.sleep(0.5)
        if check is not None:
            check()
    c1 = proc.cpu_times()
    t1, w1 = time.time(), time.monotonic()
    cpu_s = (c1.user + c1.system) - (c0.user + c0.system)
    return Window(cpu_s, c1.system - c0.system, w1 - w0, t0, t1, rss_max)


# --------------------------------------------------------------------------------------------
# One load point, phase by phase


@dataclass
class Streams:
    """Phase *create streams*: stream sid -> wall time its create request left the harness,
    and stream sid -> wall time of its first ``media`` message at the sink."""

    created: dict[str, float] = field(default_factory=dict)
    first_media: dict[str, float] = field(default_factory=dict)

    def start_latencies(self) -> list[float]:
        return [self.first_media[s] - t for s, t in self.created.items() if s in self.first_media]


@dataclass
class Steady:
    """Phase *measure steady state* for the server: its window and ``/metrics`` at both ends."""

    window: Window
    before: ServerMetrics
    after: ServerMetrics
    #: VmHWM at the end of the window (None where /proc has none).
    rss_peak_mib: float | None
    #: The sink's CPU over the window, % of one core (None: not measured).
    sink_cpu_percent: float | None = None


@dataclass
class Stopped:
    """Phase *stop*: what the load generator and the sink reported once stopped."""

    #: The load generator's summary line.
    loadgen: dict[str, Any]
    #: The sink's ``--out`` file: ``streams`` and burst ``onsets``.
    sink: dict[str, Any]
    #: The callers' marked events (``--events``): ``{"room", "t", "caller"}``.
    events: list[dict[str, Any]]


class PointRun:
    """One load point against a fresh confstream server; :meth:`run` calls the phases in
    order and always stops every process it started."""

    def __init__(self, cfg: PointConfig, workdir: Path, pin: Pinning) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.pin = pin
        self.problems: list[str] = []
        workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_sink_tls(workdir)
        self.server = Server(workdir, self.tls, pin.server)
        self.sink: LineProc | None = None
        self.gen: LineProc | None = None
        self.label = f"N={cfg.callers}"

    def run(self) -> PointResult:
        try:
            sproc, rss_idle = self.start_server()
            sink_port = self.start_sink()
            ramp = self.ramp_callers()
            streams = self.create_streams(sink_port)
            steady = self.measure_steady_state(sproc)
            profile = self.profile_server(sproc.pid)
            stopped = self.stop_load()
        finally:
            self.stop_all()
        return collect_point(
            self.cfg, rss_idle, ramp, streams, steady, stopped, profile, self.problems
        )

    # -- phases ------------------------------------------------------------------------------
    def start_server(self) -> tuple[psutil.Process, float]:
        """The server up and healthy; returns its process and its idle RSS (MiB)."""
        self.server.start()
        assert self.server.proc is not None
        sproc = psutil.Process(self.server.proc.pid)
        time.sleep(0.5)
        rss_idle = sproc.memory_info().rss / 2**20
        log(f"{self.label}: server up (pid {sproc.pid}), idle RSS {rss_idle:.1f} MiB")
        return sproc, rss_idle

    def start_sink(self) -> int:
        """The ``wss://`` sink listening; returns its port."""
        self.sink = LineProc(
            [*self.pin.load, sys.executable, "-m", "bench.sink", "--cert",
             str(self.tls.cert_file), "--key", str(self.tls.key_file), "--out",
             str(self.workdir / "sink.json")],
            cwd=ROOT, log=self.workdir / "sink.log", env=bench_env(),
        )  # fmt: skip
        port: int = self.sink.wait_for("listening", 20)["port"]
        return port

    def ramp_callers(self) -> Ramp:
        """Dial every caller; fails the point when none is answered."""
        account = self.server.account
        self.gen = start_loadgen(
            self.cfg,
            self.workdir,
            self.pin,
            ["--sip", f"127.0.0.1:{self.server.sip_port}", "--account", account.sid,
             "--token", account.token],
            ["--events", str(self.workdir / "events.jsonl")],
        )  # fmt: skip
        ramp = wait_answered(self.gen, self.cfg)
        if ramp.failed:
            self.problems.append(f"{ramp.failed} callers failed to connect")
        log(f"{self.label}: {ramp.answered} answered, {ramp.failed} failed")
        if ramp.answered == 0:
            raise RuntimeError(f"no caller was answered; server log:\n{self.server.log_tail()}")
        return ramp

    def create_streams(self, sink_port: int) -> Streams:
        """One stream per conference, one create after the other within
        ``cfg.create_budget``; then wait (up to 20 s) for each one's first media."""
        assert self.sink is not None
        cfg, problems = self.cfg, self.problems
        k = cfg.stream_count
        api = self.server.api(self.server.account)
        confs = api.get(
            "/Conferences.json", params={"Status": "in-progress", "PageSize": 1000}
        ).json()
        by_name = {c["friendly_name"]: c["sid"] for c in confs.get("conferences", [])}
        rooms = [f"bench-{r}" for r in range(cfg.rooms) if f"bench-{r}" in by_name]
        if len(rooms) < min(k, cfg.rooms):
            problems.append(f"only {len(rooms)} of {cfg.rooms} conferences found in-progress")
        # stream i on conference i mod rooms: the first one of each conference is analysed
        names = [rooms[i % len(rooms)] for i in range(k)] if rooms else []
        streams = Streams()
        created = streams.created
        budget = time.monotonic() + cfg.create_budget
        for i, name in enumerate(names):
            if time.monotonic() > budget:
                problems.append(
                    f"stream creation stopped after {cfg.create_budget:.0f} s: "
                    f"{len(created)} of {len(names)} created"
                )
                break
            data = {
                "Url": f"wss://127.0.0.1:{sink_port}/{name}",
                "Track": "both_tracks",
                "StreamCodec": cfg.codec,
            }
            if i < len(rooms):  # the first stream of its conference: analysed by the sink
                data.update({"Parameter1.Name": "room", "Parameter1.Value": name})
            t = time.time()
            try:
                r = api.post(f"/Conferences/{by_name[name]}/Streams.json", data=data)
            except httpx.HTTPError as exc:
                problems.append(f"stream create for {name}: {exc!r}")
                continue
            if r.status_code >= 300:
                problems.append(f"stream create for {name}: {r.status_code} {r.text[:200]}")
                continue
            created[r.json()["sid"]] = t
        first_media = streams.first_media
        deadline = time.monotonic() + 20 + len(created) / 50
        while len(first_media) < len(created) and time.monotonic() < deadline:
            try:
                line = self.sink.wait_for("first_media", max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            first_media[line["stream_sid"]] = line["t"]
        if len(first_media) < len(created):
            problems.append(f"only {len(first_media)} of {len(created)} streams sent media")
        log(f"{self.label}: {len(created)} streams created, {len(first_media)} with media")
        return streams

    def measure_steady_state(self, sproc: psutil.Process) -> Steady:
        """After ``cfg.settle`` s: the window, with ``/metrics`` scraped at both ends."""
        time.sleep(self.cfg.settle)
        before = self.server.metrics()
        assert self.sink is not None
        sink = psutil.Process(self.sink.proc.pid)
        s0 = sink.cpu_times()
        window = sample_window(sproc, self.cfg.duration, self._check_server)
        s1 = sink.cpu_times()
        after = self.server.metrics()
        hwm = vm_hwm_mib(sproc.pid)
        sink_cpu = (s1.user + s1.system - s0.user - s0.system) / window.seconds * 100
        log(f"{self.label}: window of {window.seconds:.1f} s done")
        return Steady(window, before, after, hwm, sink_cpu)

    def profile_server(self, pid: int) -> list[str]:
        """``py-spy`` after the window when this point profiles; else nothing."""
        if self.cfg.profile_seconds <= 0:
            return []
        return py_spy_top(pid, self.cfg.profile_seconds, self.workdir)

    def stop_load(self) -> Stopped:
        """Callers hang up and report; the sink stops and writes its results."""
        assert self.gen is not None and self.sink is not None
        summary = stop_loadgen(self.gen)
        self.sink.stop()
        sink_result = json.loads((self.workdir / "sink.json").read_text())
        lines = (self.workdir / "events.jsonl").read_text().splitlines()
        events = [json.loads(x) for x in lines if x.strip()]
        return Stopped(summary, sink_result, events)

    def stop_all(self) -> None:
        """Every process of the point stopped, whatever happened (idempotent)."""
        for proc in (self.gen, self.sink):
            if proc is not None:
                proc.stop()
        code = self.server.stop()
        if code not in (0, None, -signal.SIGTERM):
            log(f"server exited with {code}:\n{self.server.log_tail()}")

    def _check_server(self) -> None:
        assert self.server.proc is not None
        if self.server.proc.poll() is not None:
            raise RuntimeError(f"server died during the run:\n{self.server.log_tail()}")


def run_point(cfg: PointConfig, workdir: Path, pin: Pinning) -> PointResult:
    """Run one load point end to end and return its figures (see bench.report.point_rows)."""
    return PointRun(cfg, workdir, pin).run()


def collect_point(
    cfg: PointConfig,
    rss_idle: float,
    ramp: Ramp,
    streams: Streams,
    steady: Steady,
    stopped: Stopped,
    profile: list[str],
    problems: list[str],
) -> PointResult:
    """The point's figures from what its phases measured (pure: no I/O).

    Appends to ``problems`` the burst onsets at the sink that matched no marked event."""
    window, m0, m1 = steady.window, steady.before, steady.after
    buckets = histogram_delta(m0.lateness_buckets, m1.lateness_buckets)
    count = m1.lateness_count - m0.lateness_count
    discards = {
        reason: v - m0.rtp_discarded.get(reason, 0.0) for reason, v in m1.rtp_discarded.items()
    }
    stream_drops = m1.stream_frames_dropped - m0.stream_frames_dropped
    sink = stopped.sink
    streamed_rooms = {s["room"] for s in sink["streams"] if s["room"]}
    # events sent in the last 0.5 s of the window may arrive after it: not expected
    lat, expected, stray = match_events(
        stopped.events,
        [o for o in sink["onsets"] if o["room"] in streamed_rooms],
        window.t0,
        window.t1 - 0.5,
        streamed_rooms,
    )
    if stray:
        problems.append(f"{stray} burst onsets at the sink matched no event")
    gaps = sum(
        tr["gaps"]
        for s in sink["streams"]
        for tr in s["tracks"].values()
        if s["first_media_at"] and s["first_media_at"] < window.t1
    )
    answered = int(stopped.loadgen.get("answered", ramp.answered))
    frames = answered * window.seconds / FRAME_S
    starts = streams.start_latencies()
    rss_steady = window.rss_max_mib
    gc_pauses: dict[str, dict[str, float | None]] = {}
    for when, after in m1.gc_buckets.items():
        delta = histogram_delta(m0.gc_buckets.get(when, {}), after)
        gc_pauses[when] = {
            "count": max(delta.values(), default=0.0),
            "p99": histogram_quantile(delta, 0.99),
            "max_bound": histogram_max_bound(delta),
        }
    return PointResult(
        sink_cpu_percent=steady.sink_cpu_percent,
        sweep=cfg.sweep,
        gc_pauses=gc_pauses,
        callers=cfg.callers,
        answered=answered,
        conferences=cfg.rooms,
        streams=len(streams.created),
        codec=cfg.codec,
        window_s=window.seconds,
        cpu_seconds=window.cpu_seconds,
        cpu_percent=100.0 * window.cpu_seconds / window.seconds,
        cpu_us_per_participant_frame=(window.cpu_seconds / frames * 1e6) if frames else None,
        kernel_us_per_participant_frame=(window.cpu_system_seconds / frames * 1e6)
        if frames
        else None,
        rss_idle_mib=rss_idle,
        rss_steady_mib=rss_steady,
        rss_peak_mib=steady.rss_peak_mib,
        rss_per_participant_kib=(rss_steady - rss_idle) * 1024 / answered if answered else None,
        tick_lateness=TickLateness(
            p50=histogram_quantile(buckets, 0.50),
            p99=histogram_quantile(buckets, 0.99),
            max_bound=histogram_max_bound(buckets),
            count=count,
            mean=(m1.lateness_sum - m0.lateness_sum) / count if count else None,
            buckets={str(le): v for le, v in buckets.items()},
        ),
        ticks_skipped=m1.ticks_skipped - m0.ticks_skipped,
        stream_frames_dropped=stream_drops,
        rtp_discarded=discards,
        frames_dropped=stream_drops + sum(discards.values()),
        sink_gaps=gaps,
        e2e=E2eLatency(
            p50=percentile(lat, 50),
            p99=percentile(lat, 99),
            max=max(lat) if lat else None,
            matched=len(lat),
            expected=expected,
        ),
        stream_start=StreamStart(
            p50=percentile(starts, 50), p99=percentile(starts, 99), count=len(starts)
        ),
        loadgen=stopped.loadgen,
        profile=profile,
        problems=problems,
    )


def py_spy_top(pid: int, seconds: float, workdir: Path, top: int = 25) -> list[str]:
    """``py-spy record`` the server for ``seconds`` and return its hottest functions."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return ["py-spy not installed (pip install py-spy)"]
    raw = workdir / "profile.txt"
    proc = subprocess.run(
        [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
         "--output", str(raw), "--nonblocking", "--rate", "200"],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    if proc.returncode != 0 or not raw.exists():
        return [f"py-spy failed: {proc.stderr.strip()[-500:]}"]
    return summarize_collapsed(raw.read_text(), top)


def summarize_collapsed(text: str, top: int = 25) -> list[str]:
    """Self and total sample shares per function from py-spy's collapsed-stack output."""
    self_counts: dict[str, int] = defaultdict(int)
    total_counts: dict[str, int] = defaultdict(int)
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # "func (path/file.py:123)" -> "func (path/file.py)": aggregate lines of a function
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if not total:
        return ["no samples"]
    lines = [
        f"{total} samples; self% = time in the function itself, total% = with callees;",
        "self time of the event loop's run() is uvloop's C code (socket I/O, scheduling).",
        "",
    ]
    lines.append("self%  total%  function")
    for name, c in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * c / total:5.1f}  {100 * total_counts[name] / total:6.1f}  {name}")
    return lines


# --------------------------------------------------------------------------------------------
# Entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--points", default="100,250,500,1000", help="participant counts N")
    p.add_argument("--duration", type=float, default=60.0, help="steady-state seconds per point")
    p.add_argument("--ramp", type=float, default=None, help="dial-in seconds (default N/50)")
    p.add_argument("--streams", type=int, default=None, help="streams per point (default N/10)")
    p.add_argument(
        "--l16-point",
        type=int,
        default=None,
        help="N for the extra L16@16000h run (default the smallest; 0 skips)",
    )
    p.add_argument(
        "--profile-seconds",
        type=float,
        default=20.0,
        help="py-spy the server this long after the largest point's window (0: no)",
    )
    p.add_argument(
        "--streams-sweep",
        default="",
        metavar="K,...",
        help="streams-per-core sweep: K streams at --sweep-callers (make bench: "
        "100,250,500,1000; a K=0 point is added)",
    )
    p.add_argument("--sweep-callers", type=int, default=200, help="callers of the sweep")
    p.add_argument("--sweep-codecs", default="PCMU,L16@16000h", help="StreamCodecs of the sweep")
    p.add_argument("--quick", action="store_true", help="smoke run: N=20, 5 s, no profile")
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--plot", default=None, help="PNG path (default next to --output)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--workdir", default=None, help="keep logs here (default: a temp dir)")
    p.add_argument(
        "--with-janus",
        action="store_true",
        help="also run the same RTP load against Janus AudioBridge (Debian package janus)",
    )
    p.add_argument(
        "--cluster-points",
        default="",
        help="callers per node for the cluster series, e.g. 200,400,600 (bench/cluster.py)",
    )
    p.add_argument(
        "--cluster-nodes",
        type=int,
        default=os.cpu_count() or 2,
        help="nodes of the cluster series (default: one per core)",
    )
    p.add_argument(
        "--cluster-realtime",
        action="store_true",
        help="run the cluster series' nodes with real-time scheduling (chrt -f 10)",
    )
    p.add_argument(
        "--cluster-repeats",
        type=int,
        default=1,
        help="run the cluster grid this many times; a load counts as carried only when it met "
        "the targets in every repeat",
    )
    p.add_argument(
        "--cluster-duration",
        type=float,
        default=None,
        help="steady-state seconds per cluster load (default: --duration)",
    )
    p.add_argument(
        "--cluster-loadgen-with-node",
        action="store_true",
        help="pin each load generator of the cluster series to the core of the node it calls",
    )
    p.add_argument(
        "--compare",
        default="",
        metavar="JSON,...",
        help="raw results (--json) of earlier runs: the report shows every figure of every run "
        "and the spread",
    )
    p.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only rewrite the report from the raw results of an earlier --json",
    )
    return p  # fmt: skip


def progress_line(
    index: int,
    total: int,
    cfg: PointConfig,
    seconds: float,
    elapsed: float,
    result: PointResult | None,
) -> str:
    """The stderr line ending point ``index`` of ``total`` (1-based): its headline figures, or
    that it failed (``result`` None); ``seconds`` it took, ``elapsed`` since the run began."""
    head = f"point {index}/{total} N={cfg.callers} {cfg.codec}"
    if cfg.sweep == "streams":
        head += f" K={cfg.stream_count}"
    took = f"in {seconds:.0f} s (run {elapsed / 60:.1f} min so far)"
    if result is None:
        return f"{head} failed {took}"
    p50 = result.e2e.p50
    e2e = "n/a" if p50 is None else f"{p50 * 1000:.1f} ms"
    problems = "; ".join(result.problems) or "none"
    return (
        f"{head} done {took}: {result.answered}/{result.callers} answered, "
        f"cpu {result.cpu_percent:.1f}%, e2e p50 {e2e}, drops {result.frames_dropped:.0f}, "
        f"problems: {problems}"
    )


def plan_points(args: argparse.Namespace) -> list[PointConfig]:
    """The confstream points of a run, in order: the PCMU points (the largest profiled) and
    the L16 point."""
    points = [int(x) for x in args.points.split(",") if x.strip()]
    l16 = (min(points) if points else 0) if args.l16_point is None else args.l16_point
    plan = [PointConfig(n, "PCMU", args.duration, args.ramp, args.streams) for n in points]
    if args.profile_seconds > 0 and points:
        plan[points.index(max(points))].profile_seconds = args.profile_seconds
    if l16:
        plan.append(PointConfig(l16, "L16@16000h", args.duration, args.ramp, args.streams))
    ks = [k for k in (int(x) for x in args.streams_sweep.split(",") if x.strip()) if k > 0]
    if ks:
        n = args.sweep_callers
        codecs = [c.strip() for c in args.sweep_codecs.split(",") if c.strip()]
        base = PointConfig(n, codecs[0], args.duration, args.ramp, 0, sweep="streams")
        plan.append(base)  # K=0: the callers alone
        for codec in codecs:
            for k in ks:
                budget = max(60.0, 0.2 * k)  # creates go one after the other
                cfg = PointConfig(n, codec, args.duration, args.ramp, k, create_budget=budget)
                cfg.sweep = "streams"
                plan.append(cfg)
    return plan


def run_cluster(args: argparse.Namespace, base: Path, results: BenchResults) -> None:
    """The cluster series (``--cluster-points``, :mod:`bench.cluster`) into ``results``."""
    from bench.cluster import run_cluster_series

    points = [int(x) for x in args.cluster_points.split(",") if x.strip()]
    results.cluster_loads, results.cluster_setup = run_cluster_series(
        points, args.cluster_nodes, args.cluster_duration or args.duration, args.ramp, base,
        results.notes, args.cluster_realtime, args.cluster_loadgen_with_node,
        args.cluster_repeats,
    )  # fmt: skip


LATENESS_METHOD = (
    "computed by the benchmark from the server's "
    "`confstream_tick_lateness_seconds` histogram buckets (difference of two scrapes, "
    "linear interpolation inside a bucket); max is the upper bound of the highest "
    "non-empty bucket. Nothing was added to the server for the benchmark."
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    earlier = [
        BenchResults.from_json(json.loads(Path(x).read_text()))
        for x in args.compare.split(",")
        if x.strip()
    ]
    if args.render:
        rendered = BenchResults.from_json(json.loads(Path(args.render).read_text()))
        write_report(rendered, out, png, earlier=earlier)
        log(f"wrote {out} and {png} from {args.render}")
        return 0
    if args.quick:
        args.points, args.duration, args.profile_seconds = "20", 5.0, 0.0
        args.l16_point = args.l16_point if args.l16_point is not None else 0
    plan = plan_points(args)
    server_prefix, load_prefix, pin_text = pinning()
    pin = Pinning(server_prefix, load_prefix)
    base = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="confstream-bench-"))
    )
    results = BenchResults(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=" ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        machine=machine_info(),
        pinning=pin_text,
        lateness_method=LATENESS_METHOD,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    results.notes.append(f"1-minute load average when the run started: {load:.2f}")
    began = time.monotonic()
    for index, cfg in enumerate(plan, 1):
        log(
            f"point {index}/{len(plan)} N={cfg.callers} codec={cfg.codec} "
            f"streams={cfg.stream_count} duration={cfg.duration}s"
        )
        tag = f"-k{cfg.stream_count}" if cfg.sweep == "streams" else ""
        workdir = base / f"n{cfg.callers}{tag}-{cfg.codec.replace('@', '-')}"
        started = time.monotonic()
        point: PointResult | None = None
        try:
            point = run_point(cfg, workdir, pin)
        except Exception as exc:
            log(f"N={cfg.callers} {cfg.codec} failed: {exc}")
            results.notes.append(
                f"N={cfg.callers} {cfg.codec}: the run failed ({str(exc)[:300]!r}); "
                f"logs were in {workdir}"
            )
        now = time.monotonic()
        log(progress_line(index, len(plan), cfg, now - started, now - began, point))
        if point is None:
            continue
        if point.profile:
            results.profile = [
                f"N={cfg.callers}, {cfg.profile_seconds:.0f} s after the window",
                *point.profile,
            ]
        results.points.append(point)
    if args.with_janus:
        from bench.janus import run_janus_points

        pcmu = [cfg.callers for cfg in plan if cfg.codec == "PCMU" and cfg.sweep == "n"]
        results.janus_points = run_janus_points(pcmu, args, base, pin, results.notes)
    if args.cluster_points:
        run_cluster(args, base, results)
    write_report(results, out, png, earlier=earlier)
    if args.json:
        Path(args.json).write_text(json.dumps(results.to_json(), indent=1, default=str))
    log(f"wrote {out} and {png} (logs in {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
