"""The Janus AudioBridge side of ``python -m bench.run --with-janus``.

After the confstream points, the same RTP load (same callers, rooms of 10, same audio, same
window) runs against Janus AudioBridge (Debian package ``janus``, only its HTTP transport and
AudioBridge plugin loaded, pinned like the server; callers join as plain-RTP participants
through the HTTP API: the load generator's ``--janus URL`` mode), and the report compares CPU
per participant-frame (:func:`bench.report.janus_lines`).

A Janus point has the phases of a confstream point that apply to it: *start server* (Janus),
*ramp callers*, *measure steady state* (CPU and RSS of the Janus pid over ``--duration``),
*stop*. There are no streams, so no latency figures.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import JanusPointResult
from bench.run import (
    FRAME_S,
    LineProc,
    Pinning,
    PointConfig,
    Window,
    log,
    sample_window,
    start_loadgen,
    stop_loadgen,
    wait_answered,
)
from confstream.tools.server import free_port, rtp_port_range

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


def start_janus(workdir: Path, pin: Pinning) -> tuple[subprocess.Popen[bytes], str]:
    """Phase *start server*: Janus up (its ``/info`` answers within 20 s); returns the process
    and its HTTP API URL."""
    http_port = free_port()
    conf = janus_config(workdir, http_port)
    with (workdir / "janus.log").open("ab") as jlog:
        janus = subprocess.Popen(
            [*pin.server, "janus", "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-o"],
            stdout=jlog, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}/janus"
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/info", timeout=1).status_code == 200:
                return janus, url
        if janus.poll() is not None or time.monotonic() > deadline:
            stop_janus(janus)
            raise RuntimeError("janus did not start; see janus.log")
        time.sleep(0.2)


def stop_janus(janus: subprocess.Popen[bytes]) -> None:
    janus.terminate()
    try:
        janus.wait(10)
    except subprocess.TimeoutExpired:
        janus.kill()
        janus.wait()


def janus_result(
    cfg: PointConfig, answered: int, window: Window, summary: dict[str, Any]
) -> JanusPointResult:
    """The Janus point's figures (pure): ``answered`` from the ramp unless the load
    generator's summary says otherwise."""
    answered = int(summary.get("answered", answered))
    frames = answered * window.seconds / FRAME_S
    return JanusPointResult(
        callers=cfg.callers,
        answered=answered,
        window_s=window.seconds,
        cpu_percent=100 * window.cpu_seconds / window.seconds,
        cpu_us_per_participant_frame=window.cpu_seconds / frames * 1e6 if frames else None,
        kernel_us_per_participant_frame=window.cpu_system_seconds / frames * 1e6
        if frames
        else None,
        rss_steady_mib=window.rss_max_mib,
        rtp_received_by_callers=summary.get("rtp_received"),
    )


def run_janus_point(cfg: PointConfig, workdir: Path, pin: Pinning) -> JanusPointResult:
    """The same RTP load against Janus AudioBridge: its CPU per participant-frame."""
    workdir.mkdir(parents=True, exist_ok=True)
    janus, url = start_janus(workdir, pin)
    gen: LineProc | None = None
    try:
        jproc = psutil.Process(janus.pid)
        gen = start_loadgen(
            cfg, workdir, pin, ["--sip", "127.0.0.1:9", "--account", "-", "--token", "-",
                                "--janus", url], [],
        )  # fmt: skip
        answered = wait_answered(gen, cfg).answered
        log(f"janus N={cfg.callers}: {answered} joined")
        time.sleep(cfg.settle + 1)
        window = sample_window(jproc, cfg.duration)
        summary = stop_loadgen(gen)
    finally:
        if gen is not None:
            gen.stop()
        stop_janus(janus)
    return janus_result(cfg, answered, window, summary)


def run_janus_points(
    points: list[int], args: argparse.Namespace, base: Path, pin: Pinning, notes: list[str]
) -> list[JanusPointResult]:
    """One Janus point per PCMU point N; a failed one becomes a note."""
    out: list[JanusPointResult] = []
    for n in points:
        log(f"janus N={n}")
        try:
            jp = run_janus_point(
                PointConfig(n, "PCMU", args.duration, args.ramp), base / f"janus-n{n}", pin
            )
        except Exception as exc:
            notes.append(f"Janus N={n} failed: {str(exc)[:300]!r}")
            continue
        log(f"janus N={n}: cpu {jp.cpu_percent:.1f}%")
        out.append(jp)
    return out
