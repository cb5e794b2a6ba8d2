"""Figures and the written report: ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

Pure functions over plain data (dicts from :mod:`bench.run`), so they are unit-testable:

* :func:`percentile` — nearest-rank percentiles of measured samples (e2e and start latency);
* :func:`histogram_quantile` — quantiles of the server's ``confstream_tick_lateness_seconds``
  histogram from its bucket counts, interpolating linearly inside a bucket the way Prometheus'
  ``histogram_quantile`` does. The server is not changed for the benchmark; the price is that a
  quantile is only as fine as the buckets (0.5, 1, 2, 5, 10, 20, 50, 100, 500 ms) and the
  *max* is reported as the upper bound of the highest non-empty bucket ("≤ X ms");
* :func:`match_events` — pairs each marked event sent by a caller with the first burst onset
  of the same conference seen at the sink: end-to-end latency;
* :func:`write_report` — the markdown table per load point and the PNG plot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def histogram_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """Cumulative bucket counts (``le`` -> count) accumulated between two scrapes."""
    return {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Quantile ``q`` (0-1) from cumulative buckets ``{le: count}`` (``inf`` included).

    Linear interpolation inside the bucket holding the rank; a rank in the ``+Inf`` bucket
    returns the highest finite bound. None when the histogram is empty."""
    items = sorted(buckets.items())
    if not items:
        return None
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def histogram_max_bound(buckets: dict[float, float]) -> float | None:
    """Upper bound of the highest non-empty bucket (``inf`` when the +Inf bucket has any)."""
    items = sorted(buckets.items())
    prev = 0.0
    bound: float | None = None
    for le, count in items:
        if count > prev:
            bound = le
        prev = count
    return bound


def match_events(
    events: list[dict[str, Any]],
    onsets: list[dict[str, Any]],
    t0: float,
    t1: float,
    rooms: set[str],
    track: str = "inbound",
    window: float = 0.5,
) -> tuple[list[float], int, int]:
    """Latencies of events sent in ``[t0, t1)`` in ``rooms``: for each, the first onset of the
    same room and track arriving within ``window`` seconds after it. Returns (latencies,
    events expected, onsets that matched no event)."""
    by_room: dict[str, list[float]] = defaultdict(list)
    for o in onsets:
        if o["track"] == track:
            by_room[o["room"]].append(o["t"])
    for times in by_room.values():
        times.sort()
    latencies: list[float] = []
    expected = 0
    used: set[tuple[str, float]] = set()
    for e in events:
        if not (t0 <= e["t"] < t1) or e["room"] not in rooms:
            continue
        expected += 1
        for t in by_room.get(e["room"], []):
            if e["t"] < t <= e["t"] + window:
                latencies.append(t - e["t"])
                used.add((e["room"], t))
                break
    stray = sum(
        1
        for room, times in by_room.items()
        for t in times
        if t0 + window <= t < t1 and (room, t) not in used
    )
    return latencies, expected, stray


#: Fixed remarks on what the figures mean, printed with every report.
METHOD_NOTES = [
    "End-to-end latency starts when the burst's first RTP packet leaves the caller, so a real "
    "phone's 20 ms packetisation is not in it; it ends when the sink has the `media` message "
    "decoded (TLS, WebSocket, JSON, base64), on the `inbound` track.",
    "Server CPU and RSS are the server process only (psutil on its pid). The load generator "
    "and the sink run in their own processes; on a 2-core machine they share the core the "
    "server is not pinned to, so at high load their own delays can add to the measured "
    "latencies.",
    "Frames dropped adds the server's own counters over the window: "
    "`confstream_stream_frames_dropped_total` (full stream send queues) and "
    "`confstream_rtp_discarded_total` by reason (late, duplicate, overflow, malformed...). "
    "`overflow` means a jitter buffer held more than its target + 2 packets, which happens when "
    "the mixer clock runs late and skips ticks. The sink independently counts timeline gaps "
    "(`timestamp` steps other than 20 ms).",
    "Stream start latency: wall time of the REST create request leaving the harness to the "
    "first `media` message at the sink, streams created one after the other.",
    "Every point runs a fresh server process with a fresh SQLite file. Other work on the "
    "machine during the run (see the load average below) is not controlled.",
]


def _ms(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "> 500"
    return f"{value * 1000:.{digits}f}"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def point_rows(p: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, how) rows of one load point."""
    lat = p["tick_lateness"]
    e2e = p["e2e"]
    start = p["stream_start"]
    rows = [
        ("callers answered / dialled", f"{p['answered']} / {p['callers']}", "load generator"),
        ("conferences / streams", f"{p['conferences']} / {p['streams']} ({p['codec']})", ""),
        (
            "server CPU, % of one core",
            _num(p["cpu_percent"]),
            f"psutil user+system of the server pid over {p['window_s']:.0f} s",
        ),
        (
            "CPU per participant-frame",
            _num(p["cpu_us_per_participant_frame"], "{:.1f} µs"),
            "CPU seconds / (participants x 20 ms frames in the window)",
        ),
        (
            "server RSS, peak (MiB)",
            _num(p["rss_peak_mib"]),
            f"VmHWM; idle {_num(p['rss_idle_mib'])} MiB, steady max {_num(p['rss_steady_mib'])}",
        ),
        (
            "RSS growth per participant (KiB)",
            _num(p["rss_per_participant_kib"]),
            "(steady - idle) / participants, streams included",
        ),
        (
            "tick lateness p50 / p99 / max (ms)",
            f"{_ms(lat['p50'], 2)} / {_ms(lat['p99'], 2)} / ≤ {_ms(lat['max_bound'], 1)}",
            f"histogram buckets, {lat['count']:.0f} ticks; mean {_ms(lat['mean'], 2)} ms; "
            f"ticks skipped {p['ticks_skipped']:.0f}",
        ),
        (
            "frames dropped",
            f"{p['frames_dropped']:.0f}",
            f"stream queue {p['stream_frames_dropped']:.0f} + RTP discards "
            + (", ".join(f"{k} {v:.0f}" for k, v in sorted(p["rtp_discarded"].items())) or "0")
            + f"; sink saw {p['sink_gaps']} timeline gaps",
        ),
        (
            "end-to-end latency p50 / p99 / max (ms)",
            f"{_ms(e2e['p50'])} / {_ms(e2e['p99'])} / {_ms(e2e['max'])}",
            f"{e2e['matched']} of {e2e['expected']} marked events matched at the sink",
        ),
        (
            "stream start p50 / p99 (ms)",
            f"{_ms(start['p50'])} / {_ms(start['p99'])}",
            f"REST create -> first media, {start['count']} streams",
        ),
    ]
    return rows


def write_report(results: dict[str, Any], md_path: Path, png_path: Path | None) -> None:
    """Write the markdown report (and the plot when ``png_path`` is given)."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench.run` (`make bench`); rerun it to refresh this page. How the",
        "load is made and measured: `bench/__init__.py` and the module docstrings in `bench/`.",
        "",
        "## Run",
        "",
        f"- Date: {results['date']}",
        f"- Command: `{results['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB RAM; "
        f"{m['os']}; Python {m['python']}",
        f"- Pinning: {results['pinning']}",
        f"- Tick lateness quantiles: {results['lateness_method']}",
        "",
        "## Workload",
        "",
        "Callers: SIP over UDP with digest auth, 20 ms PCMU RTP of a speech-like signal (pitched",
        "harmonics under a syllable envelope), in conferences of 10. Every second, per",
        "conference, one caller in turn sends a 60 ms loud 1 kHz burst (the marked event) and",
        "logs its send time. Streams: one `both_tracks` conference stream per conference to a",
        "local `wss://` sink (TLS with a trustme CA handed to the server via",
        "`CONFSTREAM_STREAM_CA_FILE`). End-to-end latency is the burst's arrival at the sink",
        "(onset on the `inbound` track) minus its send time, on the same host clock.",
        "",
    ]
    lines += ["## Method notes", ""] + [f"- {n}" for n in METHOD_NOTES] + [""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += ["## Results", ""]
    if png_path is not None:
        lines += [f"![CPU and latency against load]({png_path.name})", ""]
    for p in results["points"]:
        lines += [
            f"### {p['callers']} participants, {p['streams']} streams {p['codec']}",
            "",
            "| Figure | Value | How |",
            "|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in point_rows(p)]
        if p.get("problems"):
            lines += ["", "Problems seen: " + "; ".join(p["problems"])]
        lines.append("")
    if results.get("janus"):
        lines += ["## Janus AudioBridge side by side", ""]
        lines += results["janus"]
        lines.append("")
    if results.get("profile"):
        lines += ["## Where the server spends its time (py-spy)", "", "```"]
        lines += results["profile"]
        lines += ["```", ""]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines))
    if png_path is not None:
        plot(results, png_path)


def plot(results: dict[str, Any], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in results["points"] if p["codec"] == "PCMU"] or results["points"]
    xs = [p["callers"] for p in points]
    fig, (ax_cpu, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_cpu.plot(xs, [p["cpu_percent"] for p in points], "o-", label="server CPU")
    ax_cpu.axhline(85, color="grey", linestyle=":", label="85 % target")
    ax_cpu.set_xlabel("participants (streams = participants / 10)")
    ax_cpu.set_ylabel("% of one core")
    ax_cpu.set_title("Server CPU")
    ax_cpu.set_ylim(0, max(100.0, *(p["cpu_percent"] * 1.1 for p in points)))
    ax_cpu.legend()
    ax_cpu.grid(alpha=0.3)

    def series(key: str, q: str) -> list[float]:
        out = []
        for p in points:
            v = p[key][q]
            out.append(float("nan") if v is None or math.isinf(v) else v * 1000)
        return out

    ax_lat.plot(xs, series("e2e", "p50"), "o-", label="e2e p50")
    ax_lat.plot(xs, series("e2e", "p99"), "s-", label="e2e p99")
    ax_lat.plot(xs, series("tick_lateness", "p99"), "^--", label="tick lateness p99")
    ax_lat.set_xlabel("participants")
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("Latency")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    fig.suptitle(f"confstream, {results['date']}, {results['machine']['cpu']}")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
