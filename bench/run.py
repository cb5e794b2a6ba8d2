"""The benchmark: ``python -m bench.run`` (``make bench``) writes docs/benchmarks.md and .png.

For each load point N (default 100, 250, 500, 1000), in a fresh temporary directory:

1. ``confstream serve`` starts as a subprocess with its own SQLite file, ports and a trustme CA
   (``CONFSTREAM_STREAM_CA_FILE``); an account is made with ``confstream accounts create``.
   Where the machine has two or more cores the server is pinned to core 0 with ``taskset`` and
   the load generator and sink to the other cores.
2. :mod:`bench.sink` (``wss://`` with a certificate from the same CA) and :mod:`bench.loadgen`
   (N SIP callers in conferences of 10, dialled over ``--ramp`` seconds) start as their own
   processes.
3. When every caller is answered, one ``both_tracks`` stream per conference (K = N / 10) is
   created through the REST API with the chosen ``StreamCodec``; each create's wall time is
   kept, and the sink reports each stream's first ``media`` message: the stream start latency.
4. After a settling second, the steady-state window of ``--duration`` seconds (default 60):
   ``/metrics`` and the server's CPU times (psutil, the server pid only) are read at both ends,
   RSS sampled every 0.5 s, and VmHWM read at the end. Marked events sent inside the window are
   matched to burst onsets at the sink for end-to-end latency.
5. With ``--profile`` (default: at the largest point) ``py-spy record`` samples the server for
   ``--profile-seconds`` *after* the window, so profiling never touches the figures.
6. Everything is stopped (callers hang up with BYE, the server gets SIGTERM).

``--with-janus``: after the confstream points, the same RTP load (same callers, rooms of 10,
same audio, same window) runs against Janus AudioBridge (Debian package ``janus``, only its
HTTP transport and AudioBridge plugin loaded, pinned like the server; callers join as plain-RTP
participants through the HTTP API) and the report compares CPU per participant-frame.

One more run with ``StreamCodec=L16@16000h`` follows at ``--l16-point`` (default: the
smallest point; ``--l16-point 0`` skips it). ``--quick`` is a smoke run (N=20, 5 s).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
import trustme
from prometheus_client.parser import text_string_to_metric_families

from bench.report import (
    histogram_delta,
    histogram_max_bound,
    histogram_quantile,
    match_events,
    percentile,
    write_report,
)
from confstream.tools.server import Account, ServerProcess, free_port, rtp_port_range

ROOT = Path(__file__).resolve().parent.parent
ROOM_SIZE = 10


# --------------------------------------------------------------------------------------------
# Small helpers


def machine_info() -> dict[str, Any]:
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
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "os": os_name,
        "python": platform.python_version(),
    }


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
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(workdir: Path) -> Tls:
    """A trustme CA and a certificate for 127.0.0.1/localhost, written as PEM files."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = Tls(workdir / "ca.pem", workdir / "sink-chain.pem", workdir / "sink-key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    with tls.cert_file.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(tls.key_file))
    return tls


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

    def __init__(self, workdir: Path, tls: Tls, prefix: list[str]) -> None:
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

    def metrics(self) -> dict[str, Any]:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, Any]:
    """The figures the benchmark needs from a Prometheus text exposition."""
    out: dict[str, Any] = {
        "lateness_buckets": {},
        "lateness_sum": 0.0,
        "lateness_count": 0.0,
        "stream_frames_dropped": 0.0,
        "rtp_discarded": defaultdict(float),
        "ticks_skipped": 0.0,
        "participants_active": 0.0,
        "streams_active": 0.0,
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "confstream_tick_lateness_seconds_bucket":
                out["lateness_buckets"][float(s.labels["le"])] = s.value
            elif s.name == "confstream_tick_lateness_seconds_sum":
                out["lateness_sum"] = s.value
            elif s.name == "confstream_tick_lateness_seconds_count":
                out["lateness_count"] = s.value
            elif s.name == "confstream_stream_frames_dropped_total":
                out["stream_frames_dropped"] = s.value
            elif s.name == "confstream_rtp_discarded_total":
                out["rtp_discarded"][s.labels.get("reason", "")] += s.value
            elif s.name == "confstream_ticks_skipped_total":
                out["ticks_skipped"] = s.value
            elif s.name == "confstream_participants_active":
                out["participants_active"] = s.value
            elif s.name == "confstream_streams_active":
                out["streams_active"] = s.value
    out["rtp_discarded"] = dict(out["rtp_discarded"])
    return out


def vm_hwm_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# --------------------------------------------------------------------------------------------
# One load point


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


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_point(cfg: PointConfig, workdir: Path, pin: Pinning) -> dict[str, Any]:
    """Run one load point end to end and return its figures (see bench.report.point_rows)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tls = make_tls(workdir)
    n = cfg.callers
    rooms = max(1, -(-n // ROOM_SIZE))
    k = rooms if cfg.streams is None else min(cfg.streams, rooms)
    ramp = cfg.ramp if cfg.ramp is not None else max(2.0, n / 50)
    problems: list[str] = []
    server = Server(workdir, tls, pin.server)
    sink: LineProc | None = None
    gen: LineProc | None = None
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        server.start()
        assert server.proc is not None
        sproc = psutil.Process(server.proc.pid)
        time.sleep(0.5)
        rss_idle = sproc.memory_info().rss / 2**20
        log(f"N={n}: server up (pid {server.proc.pid}), idle RSS {rss_idle:.1f} MiB")
        sink = LineProc(
            [*pin.load, sys.executable, "-m", "bench.sink", "--cert", str(tls.cert_file),
             "--key", str(tls.key_file), "--out", str(workdir / "sink.json")],
            cwd=ROOT, log=workdir / "sink.log", env=env,
        )  # fmt: skip
        sink_port = sink.wait_for("listening", 20)["port"]
        sid, token = server.account.sid, server.account.token
        gen = LineProc(
            [*pin.load, sys.executable, "-m", "bench.loadgen", "--sip",
             f"127.0.0.1:{server.sip_port}", "--account", sid, "--token", token,
             "--callers", str(n), "--room-size", str(ROOM_SIZE), "--ramp", str(ramp),
             "--events", str(workdir / "events.jsonl")],
            cwd=ROOT, log=workdir / "loadgen.log", env=env,
        )  # fmt: skip
        # 1. every caller answered
        deadline = time.monotonic() + ramp + 40
        answered = failed = 0
        while time.monotonic() < deadline:
            line = gen.wait_for("progress", 10)
            answered, failed = line["answered"], line["failed"]
            if answered + failed >= n:
                break
        if failed:
            problems.append(f"{failed} callers failed to connect")
        log(f"N={n}: {answered} answered, {failed} failed")
        if answered == 0:
            raise RuntimeError(f"no caller was answered; server log:\n{server.log_tail()}")
        # 2. streams, one per conference
        api = server.api(server.account)
        confs = api.get(
            "/Conferences.json", params={"Status": "in-progress", "PageSize": 1000}
        ).json()
        by_name = {c["friendly_name"]: c["sid"] for c in confs.get("conferences", [])}
        names = [f"bench-{r}" for r in range(rooms) if f"bench-{r}" in by_name][:k]
        if len(names) < k:
            problems.append(f"only {len(names)} of {k} conferences found in-progress")
        created: dict[str, float] = {}
        budget = time.monotonic() + cfg.create_budget
        for name in names:
            if time.monotonic() > budget:
                problems.append(
                    f"stream creation stopped after {cfg.create_budget:.0f} s: "
                    f"{len(created)} of {len(names)} created"
                )
                break
            t = time.time()
            try:
                r = api.post(
                    f"/Conferences/{by_name[name]}/Streams.json",
                    data={
                        "Url": f"wss://127.0.0.1:{sink_port}/{name}",
                        "Track": "both_tracks",
                        "StreamCodec": cfg.codec,
                        "Parameter1.Name": "room",
                        "Parameter1.Value": name,
                    },
                )
            except httpx.HTTPError as exc:
                problems.append(f"stream create for {name}: {exc!r}")
                continue
            if r.status_code >= 300:
                problems.append(f"stream create for {name}: {r.status_code} {r.text[:200]}")
                continue
            created[r.json()["sid"]] = t
        first_media: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while len(first_media) < len(created) and time.monotonic() < deadline:
            try:
                line = sink.wait_for("first_media", max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            first_media[line["stream_sid"]] = line["t"]
        if len(first_media) < len(created):
            problems.append(f"only {len(first_media)} of {len(created)} streams sent media")
        starts = [first_media[s] - created[s] for s in created if s in first_media]
        log(f"N={n}: {len(created)} streams created, {len(first_media)} with media")
        # 3. steady-state window
        time.sleep(cfg.settle)
        m0 = server.metrics()
        c0 = sproc.cpu_times()
        t0, w0 = time.time(), time.monotonic()
        rss_max = 0.0
        while time.monotonic() - w0 < cfg.duration:
            rss_max = max(rss_max, sproc.memory_info().rss / 2**20)
            time.sleep(0.5)
            if server.proc.poll() is not None:
                raise RuntimeError(f"server died during the run:\n{server.log_tail()}")
        c1 = sproc.cpu_times()
        t1, w1 = time.time(), time.monotonic()
        m1 = server.metrics()
        hwm = vm_hwm_mib(server.proc.pid)
        window = w1 - w0
        log(f"N={n}: window of {window:.1f} s done")
        # 4. optional profile, after the window
        profile: list[str] = []
        if cfg.profile_seconds > 0:
            profile = py_spy_top(server.proc.pid, cfg.profile_seconds, workdir)
        # 5. stop
        gen.stop()
        summary = next((x for x in gen.drain() if x.get("event") == "summary"), {})
        sink.stop()
        sink_result = json.loads((workdir / "sink.json").read_text())
    finally:
        for proc in (gen, sink):
            if proc is not None:
                proc.stop()
        code = server.stop()
        if code not in (0, None, -signal.SIGTERM):
            log(f"server exited with {code}:\n{server.log_tail()}")

    cpu_s = (c1.user + c1.system) - (c0.user + c0.system)
    buckets = histogram_delta(m0["lateness_buckets"], m1["lateness_buckets"])
    count = m1["lateness_count"] - m0["lateness_count"]
    discards = {
        reason: v - m0["rtp_discarded"].get(reason, 0.0)
        for reason, v in m1["rtp_discarded"].items()
    }
    stream_drops = m1["stream_frames_dropped"] - m0["stream_frames_dropped"]
    events = [
        json.loads(x) for x in (workdir / "events.jsonl").read_text().splitlines() if x.strip()
    ]
    streamed_rooms = {s["room"] for s in sink_result["streams"] if s["room"]}
    lat, expected, stray = match_events(events, sink_result["onsets"], t0, t1 - 0.5, streamed_rooms)
    if stray:
        problems.append(f"{stray} burst onsets at the sink matched no event")
    gaps = sum(
        tr["gaps"]
        for s in sink_result["streams"]
        for tr in s["tracks"].values()
        if s["first_media_at"] and s["first_media_at"] < t1
    )
    rss_steady = rss_max
    answered_n = int(summary.get("answered", answered))
    frames = answered_n * window / 0.020
    return {
        "callers": n,
        "answered": answered_n,
        "conferences": rooms,
        "streams": len(created),
        "codec": cfg.codec,
        "window_s": window,
        "cpu_seconds": cpu_s,
        "cpu_percent": 100.0 * cpu_s / window,
        "cpu_us_per_participant_frame": (cpu_s / frames * 1e6) if frames else None,
        "rss_idle_mib": rss_idle,
        "rss_steady_mib": rss_steady,
        "rss_peak_mib": hwm,
        "rss_per_participant_kib": (rss_steady - rss_idle) * 1024 / answered_n
        if answered_n
        else None,
        "tick_lateness": {
            "p50": histogram_quantile(buckets, 0.50),
            "p99": histogram_quantile(buckets, 0.99),
            "max_bound": histogram_max_bound(buckets),
            "count": count,
            "mean": (m1["lateness_sum"] - m0["lateness_sum"]) / count if count else None,
            "buckets": {str(k_): v for k_, v in buckets.items()},
        },
        "ticks_skipped": m1["ticks_skipped"] - m0["ticks_skipped"],
        "stream_frames_dropped": stream_drops,
        "rtp_discarded": discards,
        "frames_dropped": stream_drops + sum(discards.values()),
        "sink_gaps": gaps,
        "e2e": {
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "max": max(lat) if lat else None,
            "matched": len(lat),
            "expected": expected,
        },
        "stream_start": {
            "p50": percentile(starts, 50),
            "p99": percentile(starts, 99),
            "count": len(starts),
        },
        "loadgen": summary,
        "profile": profile,
        "problems": problems,
    }


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


JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")


def janus_config(workdir: Path, http_port: int) -> Path:
    """A Janus config folder with only the HTTP transport and the AudioBridge plugin."""
    conf = workdir / "janus"
    for sub in ("plugins", "transports", "events", "loggers"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    for sub, name in (("plugins", "libjanus_audiobridge.so"), ("transports", "libjanus_http.so")):
        link = conf / sub / name
        if not link.exists():
            link.symlink_to(JANUS_LIB / sub / name)
    ports = rtp_port_range()
    (conf / "janus.jcfg").write_text(
        f"""general: {{
  configs_folder = "{conf}"
  plugins_folder = "{conf / "plugins"}"
  transports_folder = "{conf / "transports"}"
  events_folder = "{conf / "events"}"
  loggers_folder = "{conf / "loggers"}"
  debug_level = 3
  session_timeout = 0
}}
media: {{ rtp_port_range = "{ports}" }}
nat: {{ }}
"""
    )
    (conf / "janus.transport.http.jcfg").write_text(
        f'general: {{ base_path = "/janus" http = true port = {http_port} https = false }}\n'
        "admin: { admin_http = false }\n"
    )
    (conf / "janus.plugin.audiobridge.jcfg").write_text(
        f'general: {{ rtp_port_range = "{ports}" local_ip = "127.0.0.1" }}\n'
    )
    return conf


def run_janus_point(cfg: PointConfig, workdir: Path, pin: Pinning) -> dict[str, Any]:
    """The same RTP load against Janus AudioBridge: its CPU per participant-frame."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    conf = janus_config(workdir, http_port)
    n = cfg.callers
    ramp = cfg.ramp if cfg.ramp is not None else max(2.0, n / 50)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with (workdir / "janus.log").open("ab") as jlog:
        janus = subprocess.Popen(
            [*pin.server, "janus", "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-o"],
            stdout=jlog, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    gen: LineProc | None = None
    try:
        url = f"http://127.0.0.1:{http_port}/janus"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/info", timeout=1).status_code == 200:
                    break
            if janus.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("janus did not start; see janus.log")
            time.sleep(0.2)
        jproc = psutil.Process(janus.pid)
        gen = LineProc(
            [*pin.load, sys.executable, "-m", "bench.loadgen", "--sip", "127.0.0.1:9",
             "--account", "-", "--token", "-", "--janus", url, "--callers", str(n),
             "--room-size", str(ROOM_SIZE), "--ramp", str(ramp)],
            cwd=ROOT, log=workdir / "loadgen.log", env=env,
        )  # fmt: skip
        deadline = time.monotonic() + ramp + 40
        answered = 0
        while time.monotonic() < deadline:
            answered = gen.wait_for("progress", 10)["answered"]
            if answered >= n:
                break
        log(f"janus N={n}: {answered} joined")
        time.sleep(cfg.settle + 1)
        c0, w0 = jproc.cpu_times(), time.monotonic()
        rss_max = 0.0
        while time.monotonic() - w0 < cfg.duration:
            rss_max = max(rss_max, jproc.memory_info().rss / 2**20)
            time.sleep(0.5)
        c1, window = jproc.cpu_times(), time.monotonic() - w0
        gen.stop()
        summary = next((x for x in gen.drain() if x.get("event") == "summary"), {})
    finally:
        if gen is not None:
            gen.stop()
        janus.terminate()
        try:
            janus.wait(10)
        except subprocess.TimeoutExpired:
            janus.kill()
            janus.wait()
    cpu_s = (c1.user + c1.system) - (c0.user + c0.system)
    answered = int(summary.get("answered", answered))
    frames = answered * window / 0.020
    return {
        "callers": n,
        "answered": answered,
        "window_s": window,
        "cpu_percent": 100 * cpu_s / window,
        "cpu_us_per_participant_frame": cpu_s / frames * 1e6 if frames else None,
        "rss_steady_mib": rss_max,
        "rtp_received_by_callers": summary.get("rtp_received"),
    }


def janus_lines(results: dict[str, Any]) -> list[str]:
    """The report's side-by-side table: CPU per participant-frame, confstream vs Janus."""
    ours = {p["callers"]: p for p in results["points"] if p["codec"] == "PCMU"}
    lines = [
        "Same RTP load (N callers in rooms of 10, 8 kHz PCMU, same audio, same window length),",
        "Janus 1.1.2 AudioBridge from Debian, only its HTTP transport and AudioBridge plugin",
        "loaded, pinned like the confstream server. confstream's figures include its streams",
        '(N/10 both-track wss:// streams); Janus has none. "joined" counts Janus participants',
        "joined by the end of the run. Where either side is near 100 % CPU the per-frame figure",
        "measures saturation, not cost (ticks are skipped, frames dropped).",
        "",
        "| N | confstream CPU % | Janus CPU % | confstream µs / participant-frame | "
        "Janus µs / participant-frame | ratio confstream / Janus |",
        "|---|---|---|---|---|---|",
    ]
    for j in results.get("janus_points", []):
        o = ours.get(j["callers"])
        ocpu = o["cpu_us_per_participant_frame"] if o else None
        jcpu = j["cpu_us_per_participant_frame"]
        ratio = f"{ocpu / jcpu:.2f}" if ocpu and jcpu else "n/a"
        cells = [
            f"{j['callers']} ({j['answered']} joined)",
            f"{o['cpu_percent']:.1f}" if o else "n/a",
            f"{j['cpu_percent']:.1f}",
            f"{ocpu:.1f}" if ocpu else "n/a",
            f"{jcpu:.1f}" if jcpu else "n/a",
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: What the report says about the Janus AudioBridge comparison of BENCHMARK.md.
JANUS_STATUS = [
    "Not part of this run: add `--with-janus` (needs the Debian package `janus`) to run the",
    "same RTP load against Janus AudioBridge after the confstream points and report the CPU",
    "ratio per participant-frame.",
]


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
        "--render",
        default=None,
        metavar="JSON",
        help="only rewrite the report from the raw results of an earlier --json",
    )
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    if args.render:
        rendered: dict[str, Any] = json.loads(Path(args.render).read_text())
        rendered["janus"] = janus_lines(rendered) if rendered.get("janus_points") else JANUS_STATUS
        write_report(rendered, out, png)
        log(f"wrote {out} and {png} from {args.render}")
        return 0
    if args.quick:
        args.points, args.duration, args.profile_seconds = "20", 5.0, 0.0
        args.l16_point = args.l16_point if args.l16_point is not None else 0
    points = [int(x) for x in args.points.split(",") if x.strip()]
    server_prefix, load_prefix, pin_text = pinning()
    pin = Pinning(server_prefix, load_prefix)
    l16 = min(points) if args.l16_point is None else args.l16_point
    plan = [PointConfig(n, "PCMU", args.duration, args.ramp, args.streams) for n in points]
    if args.profile_seconds > 0:
        plan[points.index(max(points))].profile_seconds = args.profile_seconds
    if l16:
        plan.append(PointConfig(l16, "L16@16000h", args.duration, args.ramp, args.streams))
    base = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="confstream-bench-"))
    )
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "pinning": pin_text,
        "lateness_method": "computed by the benchmark from the server's "
        "`confstream_tick_lateness_seconds` histogram buckets (difference of two scrapes, "
        "linear interpolation inside a bucket); max is the upper bound of the highest "
        "non-empty bucket. Nothing was added to the server for the benchmark.",
        "points": [],
        "notes": [],
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    results["notes"].append(f"1-minute load average when the run started: {load:.2f}")
    profile: list[str] = []
    for cfg in plan:
        log(f"point N={cfg.callers} codec={cfg.codec} duration={cfg.duration}s")
        workdir = base / f"n{cfg.callers}-{cfg.codec.replace('@', '-')}"
        try:
            point = run_point(cfg, workdir, pin)
        except Exception as exc:
            log(f"N={cfg.callers} {cfg.codec} failed: {exc}")
            results["notes"].append(
                f"N={cfg.callers} {cfg.codec}: the run failed ({str(exc)[:300]!r}); "
                f"logs were in {workdir}"
            )
            continue
        if point["profile"]:
            profile = [
                f"N={cfg.callers}, {cfg.profile_seconds:.0f} s after the window",
                *point["profile"],
            ]
        results["points"].append(point)
        log(
            f"N={cfg.callers}: cpu {point['cpu_percent']:.1f}%, e2e p50 "
            f"{point['e2e']['p50']}, drops {point['frames_dropped']:.0f}, "
            f"problems {point['problems']}"
        )
    results["profile"] = profile
    results["janus"] = JANUS_STATUS
    if args.with_janus:
        results["janus_points"] = []
        for n in points:
            log(f"janus N={n}")
            try:
                jp = run_janus_point(
                    PointConfig(n, "PCMU", args.duration, args.ramp), base / f"janus-n{n}", pin
                )
            except Exception as exc:
                results["notes"].append(f"Janus N={n} failed: {str(exc)[:300]!r}")
                continue
            log(f"janus N={n}: cpu {jp['cpu_percent']:.1f}%")
            results["janus_points"].append(jp)
        results["janus"] = janus_lines(results)
    write_report(results, out, png)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log(f"wrote {out} and {png} (logs in {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
