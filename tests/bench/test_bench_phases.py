"""The benchmark's phases, typed results and report, without a server.

``tests/bench/data/results.json`` holds the results of a real 10-caller smoke run plus
hand-made rows (an L16 point with problems, a ``+Inf`` lateness bucket, missing figures, Janus
points, a profile); ``tests/bench/data/report.md`` is what the report code wrote from it
before the results became typed. The report must keep rendering that page byte for byte: the
format of docs/benchmarks.md is what readers compare across runs.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from bench.janus import janus_result
from bench.loadgen import (
    LOOP_FRAMES,
    LoadGenerator,
    burst_signal,
    pcmu_frames,
    rtp_packet,
    voice_signal,
)
from bench.report import (
    JANUS_STATUS,
    BenchResults,
    E2eLatency,
    JanusPointResult,
    Machine,
    PointResult,
    StreamStart,
    TickLateness,
    janus_lines,
    spread_lines,
    write_report,
)
from bench.run import (
    ROOT,
    LineProc,
    PointConfig,
    Ramp,
    ServerMetrics,
    Steady,
    Stopped,
    Streams,
    Window,
    build_parser,
    collect_point,
    parse_metrics,
    plan_points,
    progress_line,
    sample_window,
    stop_loadgen,
    wait_answered,
)

DATA = Path(__file__).parent / "data"


def _results() -> BenchResults:
    return BenchResults.from_json(json.loads((DATA / "results.json").read_text()))


# --------------------------------------------------------------------------------------------
# Report


def test_report_renders_typed_results_in_the_established_format(tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    write_report(_results(), md, tmp_path / "report.png", history=None)
    assert md.read_text() == (DATA / "report.md").read_text()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_command_rewrites_the_report_from_json(tmp_path: Path) -> None:
    from bench.run import main

    md = tmp_path / "report.md"
    assert main(["--render", str(DATA / "results.json"), "--output", str(md)]) == 0
    report, history = md.read_text().split("\n## History\n", 1)  # bench/history.md follows
    assert report == (DATA / "report.md").read_text()
    assert history.strip()


def test_spread_over_runs_is_largest_minus_smallest() -> None:
    first, second = _results(), _results()
    second.points[0].cpu_percent = first.points[0].cpu_percent + 2.5
    lines = spread_lines([first, second])
    row = next(x for x in lines if x.startswith("| N=10, 1 streams PCMU | server CPU % |"))
    cpu = first.points[0].cpu_percent
    assert row == f"| N=10, 1 streams PCMU | server CPU % | {cpu:.1f} | {cpu + 2.5:.1f} | 2.5 |"


def test_results_survive_the_json_round_trip() -> None:
    results = _results()
    assert math.isinf(results.points[1].tick_lateness.max_bound or 0.0)
    text = json.dumps(results.to_json(), indent=1, default=str)
    again = BenchResults.from_json(json.loads(text))
    assert again == results
    assert isinstance(again.points[0].e2e, E2eLatency)
    data = results.to_json()
    assert data["janus"] == janus_lines(results)
    assert [j["callers"] for j in data["janus_points"]] == [10, 20]
    assert data["points"][0]["tick_lateness"]["count"] == results.points[0].tick_lateness.count


def test_without_janus_points_the_report_says_how_to_get_them() -> None:
    results = _results()
    results.janus_points = None
    data = results.to_json()
    assert "janus_points" not in data
    assert data["janus"] == JANUS_STATUS
    # every Janus point failed: the run shows an empty table, a re-render the status
    results.janus_points = []
    data = results.to_json()
    assert data["janus"][-1] == "|---|---|---|---|---|---|"
    assert BenchResults.from_json(data).janus_section() == JANUS_STATUS


def _point(callers: int, codec: str, cpu_us: float | None, cpu_percent: float) -> PointResult:
    return PointResult(
        callers=callers, answered=callers, conferences=1, streams=1, codec=codec,
        window_s=5.0, cpu_seconds=1.0, cpu_percent=cpu_percent,
        cpu_us_per_participant_frame=cpu_us, rss_idle_mib=1.0, rss_steady_mib=2.0,
        rss_peak_mib=3.0, rss_per_participant_kib=4.0,
        tick_lateness=TickLateness(None, None, None, 0.0, None, {}), ticks_skipped=0.0,
        stream_frames_dropped=0.0, rtp_discarded={}, frames_dropped=0.0, sink_gaps=0,
        e2e=E2eLatency(None, None, None, 0, 0), stream_start=StreamStart(None, None, 0),
        loadgen={}, profile=[], problems=[],
    )  # fmt: skip


def test_janus_table_compares_pcmu_points_per_participant_frame() -> None:
    results = BenchResults(
        date="d",
        command="c",
        machine=Machine("cpu", 2, 1.0, "os", "3.11"),
        pinning="p",
        lateness_method="m",
        points=[_point(10, "L16@16000h", 50.0, 9.0), _point(10, "PCMU", 100.0, 20.0)],
        janus_points=[
            JanusPointResult(10, 10, 5.0, 8.0, 40.0, 20.0, 100),
            JanusPointResult(30, 3, 5.0, 1.0, 80.0, 20.0, None),
        ],
    )
    rows = janus_lines(results)[-2:]
    assert rows[0] == "| 10 (10 joined) | 20.0 | 8.0 | 100.0 | 40.0 | 2.50 |"
    assert rows[1] == "| 30 (3 joined) | n/a | 1.0 | n/a | 80.0 | n/a |"


# --------------------------------------------------------------------------------------------
# Phase outputs -> PointResult


METRICS_TEXT = textwrap.dedent(
    """\
    # TYPE confstream_tick_lateness_seconds histogram
    confstream_tick_lateness_seconds_bucket{le="0.001"} 40.0
    confstream_tick_lateness_seconds_bucket{le="0.005"} 48.0
    confstream_tick_lateness_seconds_bucket{le="+Inf"} 50.0
    confstream_tick_lateness_seconds_sum 0.1
    confstream_tick_lateness_seconds_count 50.0
    # TYPE confstream_rtp_discarded_total counter
    confstream_rtp_discarded_total{reason="late",conference="a"} 2.0
    confstream_rtp_discarded_total{reason="late",conference="b"} 3.0
    confstream_rtp_discarded_total{reason="overflow",conference="a"} 7.0
    # TYPE confstream_stream_frames_dropped_total counter
    confstream_stream_frames_dropped_total 4.0
    # TYPE confstream_ticks_skipped_total counter
    confstream_ticks_skipped_total 1.0
    # TYPE confstream_participants_active gauge
    confstream_participants_active 10.0
    # TYPE confstream_streams_active gauge
    confstream_streams_active 1.0
    """
)


def test_parse_metrics_reads_the_figures_the_benchmark_needs() -> None:
    m = parse_metrics(METRICS_TEXT)
    assert m.lateness_buckets == {0.001: 40.0, 0.005: 48.0, math.inf: 50.0}
    assert (m.lateness_sum, m.lateness_count) == (0.1, 50.0)
    assert m.rtp_discarded == {"late": 5.0, "overflow": 7.0}  # summed over other labels
    assert m.stream_frames_dropped == 4.0 and m.ticks_skipped == 1.0
    assert (m.participants_active, m.streams_active) == (10.0, 1.0)
    assert parse_metrics("") == ServerMetrics()


def _sink_stream(room: str, first_media_at: float | None, gaps: int) -> dict[str, Any]:
    return {
        "room": room,
        "first_media_at": first_media_at,
        "tracks": {"inbound": {"gaps": gaps}, "outbound": {"gaps": 1}},
    }


def _phases() -> tuple[Ramp, Streams, Steady, Stopped]:
    before = ServerMetrics(
        lateness_buckets={0.001: 40.0, 0.005: 48.0, math.inf: 50.0},
        lateness_sum=0.1,
        lateness_count=50.0,
        stream_frames_dropped=4.0,
        rtp_discarded={"late": 5.0},
        ticks_skipped=1.0,
    )
    after = ServerMetrics(
        lateness_buckets={0.001: 140.0, 0.005: 248.0, math.inf: 250.0},
        lateness_sum=0.5,
        lateness_count=250.0,
        stream_frames_dropped=6.0,
        rtp_discarded={"late": 8.0, "overflow": 2.0},
        ticks_skipped=4.0,
    )
    window = Window(
        cpu_seconds=1.0, cpu_system_seconds=0.4, seconds=10.0, t0=100.0, t1=110.0, rss_max_mib=150.0
    )
    streams = Streams(created={"MZ1": 99.0, "MZ2": 99.5}, first_media={"MZ1": 99.25})
    sink = {
        "streams": [
            _sink_stream("bench-0", 99.25, 2),
            _sink_stream("bench-1", None, 5),  # never sent media: its gaps do not count
            _sink_stream("bench-2", 111.0, 5),  # started after the window
        ],
        "onsets": [
            {"room": "bench-0", "track": "inbound", "t": 101.02},
            {"room": "bench-0", "track": "inbound", "t": 102.04},
            {"room": "bench-0", "track": "inbound", "t": 105.0},  # no event: stray
        ],
    }
    events = [
        {"room": "bench-0", "t": 101.0, "caller": 0},
        {"room": "bench-0", "t": 102.0, "caller": 1},
        {"room": "bench-0", "t": 103.0, "caller": 2},  # lost
        {"room": "bench-0", "t": 109.8, "caller": 3},  # last 0.5 s: not expected
        {"room": "bench-9", "t": 104.0, "caller": 90},  # no stream for this room
    ]
    stopped = Stopped(loadgen={"answered": 10, "rtp_sent": 5000}, sink=sink, events=events)
    return Ramp(9, 1), streams, Steady(window, before, after, 160.0), stopped


def test_collect_point_computes_the_figures_from_the_phases() -> None:
    ramp, streams, steady, stopped = _phases()
    problems = ["1 callers failed to connect"]
    cfg = PointConfig(10, "PCMU", 10.0)
    p = collect_point(cfg, 100.0, ramp, streams, steady, stopped, ["prof"], problems)
    assert (p.callers, p.answered, p.conferences, p.streams) == (10, 10, 1, 2)
    assert p.cpu_percent == pytest.approx(10.0)
    assert p.cpu_us_per_participant_frame == pytest.approx(200.0)  # 1 s / (10 x 500 frames)
    assert p.kernel_us_per_participant_frame == pytest.approx(80.0)  # 0.4 s of the 1 s
    assert (p.rss_idle_mib, p.rss_steady_mib, p.rss_peak_mib) == (100.0, 150.0, 160.0)
    assert p.rss_per_participant_kib == pytest.approx(50 * 1024 / 10)
    lat = p.tick_lateness
    assert lat.count == 200.0 and lat.mean == pytest.approx(0.002)
    assert lat.buckets == {"0.001": 100.0, "0.005": 200.0, "inf": 200.0}
    assert lat.p50 == pytest.approx(0.001) and lat.max_bound == 0.005
    assert p.ticks_skipped == 3.0
    assert p.rtp_discarded == {"late": 3.0, "overflow": 2.0}
    assert (p.stream_frames_dropped, p.frames_dropped) == (2.0, 7.0)
    assert p.sink_gaps == 3
    assert (p.e2e.matched, p.e2e.expected) == (2, 3)
    assert p.e2e.p50 == pytest.approx(0.02) and p.e2e.max == pytest.approx(0.04)
    assert p.stream_start.p50 == p.stream_start.p99 == pytest.approx(0.25)
    assert p.stream_start.count == 1
    assert p.loadgen["rtp_sent"] == 5000 and p.profile == ["prof"]
    assert p.problems == [
        "1 callers failed to connect",
        "1 burst onsets at the sink matched no event",
    ]


def test_collect_point_falls_back_to_the_ramp_count_without_a_summary() -> None:
    ramp, streams, steady, stopped = _phases()
    stopped.loadgen = {}
    p = collect_point(PointConfig(10), 100.0, ramp, streams, steady, stopped, [], [])
    assert p.answered == 9
    assert p.cpu_us_per_participant_frame == pytest.approx(1e6 / (9 * 500))
    ramp.answered = 0
    p = collect_point(PointConfig(10), 100.0, ramp, streams, steady, stopped, [], [])
    assert p.cpu_us_per_participant_frame is None and p.rss_per_participant_kib is None


def test_janus_result_per_participant_frame() -> None:
    window = Window(
        cpu_seconds=0.5, cpu_system_seconds=0.2, seconds=10.0, t0=0.0, t1=10.0, rss_max_mib=30.0
    )
    j = janus_result(PointConfig(20), 18, window, {"answered": 20, "rtp_received": 7})
    assert (j.answered, j.cpu_percent, j.rss_steady_mib) == (20, 5.0, 30.0)
    assert j.cpu_us_per_participant_frame == pytest.approx(0.5 / (20 * 500) * 1e6)
    assert j.kernel_us_per_participant_frame == pytest.approx(0.2 / (20 * 500) * 1e6)
    assert j.rtp_received_by_callers == 7
    assert janus_result(PointConfig(20), 0, window, {}).cpu_us_per_participant_frame is None


# --------------------------------------------------------------------------------------------
# Plan and progress


def test_point_config_derives_ramp_rooms_and_streams() -> None:
    assert PointConfig(10).ramp_seconds == 2.0
    assert PointConfig(1000).ramp_seconds == 20.0
    assert PointConfig(1000, ramp=3.0).ramp_seconds == 3.0
    assert PointConfig(95).rooms == 10 and PointConfig(95).stream_count == 10
    assert PointConfig(95, streams=3).stream_count == 3
    assert PointConfig(5, streams=3).stream_count == 1


def test_plan_profiles_the_largest_point_and_adds_the_l16_point() -> None:
    args = build_parser().parse_args(["--points", "250,100,500", "--duration", "7"])
    plan = plan_points(args)
    assert [(c.callers, c.codec) for c in plan] == [
        (250, "PCMU"),
        (100, "PCMU"),
        (500, "PCMU"),
        (100, "L16@16000h"),
    ]
    assert [c.profile_seconds for c in plan] == [0.0, 0.0, 20.0, 0.0]
    assert all(c.duration == 7.0 for c in plan)
    args = build_parser().parse_args(
        ["--points", "20", "--l16-point", "0", "--profile-seconds", "0"]
    )
    assert [(c.callers, c.profile_seconds) for c in plan_points(args)] == [(20, 0.0)]


def test_plan_of_the_streams_sweep_has_a_base_point_and_every_k_per_codec() -> None:
    args = build_parser().parse_args(
        ["--points", "", "--streams-sweep", "100,250", "--sweep-callers", "200"]
    )
    plan = plan_points(args)
    assert [(c.sweep, c.callers, c.codec, c.stream_count) for c in plan] == [
        ("streams", 200, "PCMU", 0),
        ("streams", 200, "PCMU", 100),
        ("streams", 200, "PCMU", 250),
        ("streams", 200, "L16@16000h", 100),
        ("streams", 200, "L16@16000h", 250),
    ]
    assert plan[2].rooms == 20 and plan[2].create_budget >= 50  # 12.5 streams per conference


def test_progress_line_per_point() -> None:
    p = _point(10, "PCMU", 100.0, 5.25)
    p.e2e = E2eLatency(0.0217, 0.03, 0.03, 4, 4)
    p.problems = ["a", "b"]
    line = progress_line(2, 5, PointConfig(10), 12.4, 90.0, p)
    assert line == (
        "point 2/5 N=10 PCMU done in 12 s (run 1.5 min so far): 10/10 answered, cpu 5.2%, "
        "e2e p50 21.7 ms, drops 0, problems: a; b"
    )
    failed = progress_line(3, 5, PointConfig(20, "L16@16000h"), 3.0, 93.0, None)
    assert failed == "point 3/5 N=20 L16@16000h failed in 3 s (run 1.6 min so far)"


# --------------------------------------------------------------------------------------------
# Shared phase pieces against real processes

FAKE_LOADGEN = r"""
import json, os, signal, sys, time
def bye(*_):  # os.write: the signal may land inside print()
    os.write(1, json.dumps({"event": "summary", "answered": 9, "rtp_sent": 1}).encode() + b"\n")
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
for answered, failed in ((3, 0), (9, 1)):
    print(json.dumps({"event": "progress", "answered": answered, "failed": failed}), flush=True)
    time.sleep(0.05)
time.sleep(30)
"""


def test_ramp_phase_follows_progress_until_all_callers_are_settled(tmp_path: Path) -> None:
    gen = LineProc([sys.executable, "-c", FAKE_LOADGEN], cwd=ROOT, log=tmp_path / "gen.log", env={})
    try:
        assert wait_answered(gen, PointConfig(10, ramp=1.0)) == Ramp(9, 1)
        assert stop_loadgen(gen) == {"event": "summary", "answered": 9, "rtp_sent": 1}
    finally:
        gen.stop()


def test_sample_window_measures_and_can_be_aborted() -> None:
    me = psutil.Process()
    w = sample_window(me, 0.6)
    assert w.seconds >= 0.6 and w.t1 - w.t0 >= 0.6
    assert w.rss_max_mib > 10 and w.cpu_seconds >= 0.0

    def died() -> None:
        raise RuntimeError("server died")

    t = time.monotonic()
    with pytest.raises(RuntimeError, match="server died"):
        sample_window(me, 30.0, died)
    assert time.monotonic() - t < 5


async def test_loadgen_ramp_spreads_callers_evenly() -> None:
    gen = LoadGenerator(
        server=("127.0.0.1", 9), account="a", token="t", callers=5, room_size=2, ramp=0.4
    )
    try:
        seen = [caller async for caller in gen._ramp()]
    finally:
        for room in gen.rooms:
            room.sock.close()
    assert [c.index for c in seen] == [0, 1, 2, 3, 4]
    assert all(c.state == "inviting" for c in seen)
    starts = [c.invite_started for c in seen]
    assert starts == sorted(starts)
    assert starts[-1] - starts[0] >= 0.3  # 4 gaps of 80 ms
    assert starts[-1] - starts[0] < 2.0


def test_loadgen_batches_are_the_packets_of_one_sendto_each() -> None:
    """A conference's packets of a frame leave in one batch (sendmmsg on Linux) over a real
    socket: header, payload (voice, then the marked burst) and counters as rtp_packet builds
    them, frame after frame."""
    gen = LoadGenerator(server=("127.0.0.1", 9), account="a", token="t", callers=3, room_size=3)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for caller, rx in zip(gen.callers, receivers, strict=True):
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(5)
            caller.remote_rtp = rx.getsockname()
            caller.state = "answered"
        room = gen.rooms[0]
        voices = [pcmu_frames(voice_signal(i)) for i in range(3)]
        burst = pcmu_frames(burst_signal())
        firsts = [(int(gen._seq[i]), int(gen._ts[i])) for i in range(3)]
        for frame in range(2):
            gen._start_frame(frame)  # room 0's marked event starts at frame 0: caller 0
            gen._send_room(room)
            for i, rx in enumerate(receivers):
                seq, ts = firsts[i]
                payload = burst[frame] if i == 0 else voices[i][(frame + i * 37) % LOOP_FRAMES]
                want = rtp_packet(
                    seq + frame, ts + 160 * frame, gen.callers[i].ssrc, payload, frame == 0
                )
                assert rx.recv(2048) == want
        assert gen.rtp_sent == 6 and gen.events_sent == 1 and not gen.unexpected
        assert json.loads(gen._pending_events[0])["caller"] == 0
    finally:
        for sock in [*receivers, *(r.sock for r in gen.rooms)]:
            sock.close()
