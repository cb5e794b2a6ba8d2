"""Figures and the written report: ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

Pure functions over the typed results of :mod:`bench.run` (:class:`BenchResults` holding one
:class:`PointResult` per load point and, with ``--with-janus``, :class:`JanusPointResult`), so
they are unit-testable:

* :func:`percentile` — nearest-rank percentiles of measured samples (e2e and start latency);
* :func:`histogram_quantile` — quantiles of the server's ``confstream_tick_lateness_seconds``
  histogram from its bucket counts, interpolating linearly inside a bucket the way Prometheus'
  ``histogram_quantile`` does. The server is not changed for the benchmark; the price is that a
  quantile is only as fine as the buckets (0.5, 1, 2, 5, 10, 20, 50, 100, 500 ms) and the
  *max* is reported as the upper bound of the highest non-empty bucket ("≤ X ms");
* :func:`match_events` — pairs each marked event sent by a caller with the first burst onset
  of the same conference seen at the sink: end-to-end latency;
* :func:`write_report` — the markdown table per load point, the Janus comparison
  (:func:`janus_lines`) and the PNG plot.

The results are written as JSON by ``--json`` (:meth:`BenchResults.to_json`, the same keys as
the dataclass fields) and read back by ``--render`` (:meth:`BenchResults.from_json`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Typed results


@dataclass
class TickLateness:
    """The server's tick lateness over the window, from its histogram (seconds)."""

    p50: float | None
    p99: float | None
    #: Upper bound of the highest non-empty bucket (``inf``: the +Inf bucket).
    max_bound: float | None
    count: float
    mean: float | None
    #: Cumulative bucket counts over the window, ``str(le)`` -> count.
    buckets: dict[str, float]


@dataclass
class E2eLatency:
    """Marked event sent by a caller -> burst onset at the sink (seconds)."""

    p50: float | None
    p99: float | None
    max: float | None
    matched: int
    expected: int


@dataclass
class StreamStart:
    """REST create -> first ``media`` message at the sink (seconds)."""

    p50: float | None
    p99: float | None
    count: int


@dataclass
class PointResult:
    """The figures of one load point (one server process, N callers, K streams)."""

    callers: int
    answered: int
    conferences: int
    streams: int
    codec: str
    window_s: float
    cpu_seconds: float
    cpu_percent: float
    cpu_us_per_participant_frame: float | None
    rss_idle_mib: float
    rss_steady_mib: float
    rss_peak_mib: float | None
    rss_per_participant_kib: float | None
    tick_lateness: TickLateness
    ticks_skipped: float
    stream_frames_dropped: float
    rtp_discarded: dict[str, float]
    frames_dropped: float
    sink_gaps: int
    e2e: E2eLatency
    stream_start: StreamStart
    #: The load generator's own summary line (``bench.loadgen``), as it printed it.
    loadgen: dict[str, Any]
    profile: list[str]
    problems: list[str]
    #: "n" (the N sweep) or "streams" (the streams-per-core sweep).
    sweep: str = "n"
    #: ``confstream_gc_pause_seconds`` over the window per ``when`` label (after_tick,
    #: automatic): {"count", "p99", "max_bound"} (seconds).
    gc_pauses: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: The stream sink's CPU over the window, % of one core (None: not measured).
    sink_cpu_percent: float | None = None
    #: Of ``cpu_us_per_participant_frame``, the kernel's (system time); None in old results.
    kernel_us_per_participant_frame: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointResult:
        return cls(
            **{
                **data,
                "tick_lateness": TickLateness(**data["tick_lateness"]),
                "e2e": E2eLatency(**data["e2e"]),
                "stream_start": StreamStart(**data["stream_start"]),
            }
        )


@dataclass
class JanusPointResult:
    """The same RTP load against Janus AudioBridge (``--with-janus``)."""

    callers: int
    answered: int
    window_s: float
    cpu_percent: float
    cpu_us_per_participant_frame: float | None
    rss_steady_mib: float
    rtp_received_by_callers: int | None
    #: Of ``cpu_us_per_participant_frame``, the kernel's (system time); None in old results.
    kernel_us_per_participant_frame: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JanusPointResult:
        return cls(**data)


@dataclass
class ClusterLoadResult:
    """One load of the cluster series (``--cluster-points``): ``per_node`` callers on each of
    ``nodes`` nodes, and what each node showed over the window (lists in node order)."""

    nodes: int
    per_node: int
    answered: int
    window_s: float
    lateness_p99: list[float | None]
    drops: list[float]
    cpu_percent: list[float]
    #: CPU of each load generator process (one per loaded node), % of one core.
    loadgen_cpu_percent: list[float] = field(default_factory=list)
    #: Which repeat of this load it was (``--cluster-repeats``), from 0.
    repeat: int = 0

    @property
    def total(self) -> int:
        return self.nodes * self.per_node

    @property
    def at_targets(self) -> bool:
        """Every caller answered, no node dropped a frame or skipped a tick, and every node's
        tick lateness p99 under :data:`CLUSTER_P99_TARGET_S`."""
        return (
            self.answered == self.total
            and all(d == 0 for d in self.drops)
            and all(p is not None and p < CLUSTER_P99_TARGET_S for p in self.lateness_p99)
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterLoadResult:
        return cls(**data)


#: The single-node target a load must meet to count as carried (docs/benchmarks.md).
CLUSTER_P99_TARGET_S = 0.005
#: What the cluster must carry, as a multiple of one node, with one node per core on 2 cores.
CLUSTER_SCALE_TARGET = 1.8


def cluster_steps(
    loads: Sequence[ClusterLoadResult], nodes: int
) -> dict[int, list[ClusterLoadResult]]:
    """Every repeat of each ``nodes``-node load, by callers per node (ascending)."""
    out: dict[int, list[ClusterLoadResult]] = {}
    for x in sorted(loads, key=lambda x: (x.per_node, x.repeat)):
        if x.nodes == nodes:
            out.setdefault(x.per_node, []).append(x)
    return out


def carried(loads: Sequence[ClusterLoadResult], nodes: int) -> int:
    """The most participants a ``nodes``-node load carried at the targets in every one of its
    repeats (0: none did)."""
    steps = cluster_steps(loads, nodes)
    return max(
        (runs[0].total for runs in steps.values() if all(x.at_targets for x in runs)), default=0
    )


def first_missed(loads: Sequence[ClusterLoadResult], nodes: int) -> int | None:
    """The smallest ``nodes``-node load above :func:`carried` missed in some repeat (None: none
    above it was tried): the figure's limit lies below it, on this grid."""
    best = carried(loads, nodes)
    above = [
        runs[0].total
        for runs in cluster_steps(loads, nodes).values()
        if runs[0].total > best and not all(x.at_targets for x in runs)
    ]
    return min(above, default=None)


def missed_below(loads: Sequence[ClusterLoadResult], nodes: int) -> list[int]:
    """``nodes``-node loads below :func:`carried` missed in some repeat (the edge is not
    sharp there: noise, or a lucky pass above)."""
    best = carried(loads, nodes)
    return [
        runs[0].total
        for runs in cluster_steps(loads, nodes).values()
        if runs[0].total < best and not all(x.at_targets for x in runs)
    ]


def step_lines(loads: Sequence[ClusterLoadResult], nodes: int) -> list[str]:
    """Per load and node count, in how many repeats it met the targets, and the spread of its
    drops (summed over the nodes) and of its worst tick lateness p99."""
    counts = sorted({1, nodes})
    lines = [
        "| Participants per node | "
        + " | ".join(
            f"{n} node{'s' if n > 1 else ''}: clean / drops / p99 max (ms)" for n in counts
        )
        + " |",
        "|---|" + "---|" * len(counts),
    ]
    by_count = {n: cluster_steps(loads, n) for n in counts}
    for per_node in sorted({p for steps in by_count.values() for p in steps}):
        cells = []
        for n in counts:
            runs = by_count[n].get(per_node, [])
            if not runs:
                cells.append("not run")
                continue
            clean = sum(1 for x in runs if x.at_targets)
            drops = [sum(x.drops) for x in runs]
            p99s = [max((p for p in x.lateness_p99 if p is not None), default=None) for x in runs]
            spread = ", ".join(f"{d:.0f}" for d in drops)
            cells.append(
                f"{clean} of {len(runs)} / {spread} / " + ", ".join(_ms(p, 1) for p in p99s)
            )
        lines.append(f"| {per_node} | " + " | ".join(cells) + " |")
    return lines


def cluster_lines(loads: Sequence[ClusterLoadResult], setup: str) -> list[str]:
    """The report's cluster section: each load, then the cluster's figure against one
    node's, both from the same run."""
    if not loads:
        return [
            "Not part of this run: add `--cluster-points 200,400,600` (participants per node)",
            "to measure one node, then one node per core, on Redis, PostgreSQL and Kamailio",
            "(`confstream.tools.cluster`).",
        ]
    nodes = max(x.nodes for x in loads)
    lines = [
        setup,
        "",
        "| Nodes | Participants (per node) | Answered | Tick lateness p99 per node (ms) | "
        "Drops per node | CPU per node | CPU per load generator | At targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    repeats = max(x.repeat for x in loads) + 1
    for x in loads:
        p99 = ", ".join(_ms(p, 2) for p in x.lateness_p99)
        drops = ", ".join(f"{d:.0f}" for d in x.drops)
        cpu = ", ".join(f"{c:.0f}%" for c in x.cpu_percent)
        gen = ", ".join(f"{c:.0f}%" for c in x.loadgen_cpu_percent) or "n/a"
        lines.append(
            f"| {x.nodes}{f' (run {x.repeat + 1})' if repeats > 1 else ''} | {x.total} "
            f"({x.per_node}) | {x.answered} | {p99} | {drops} | {cpu} "
            f"| {gen} | {'yes' if x.at_targets else 'no'} |"
        )
    one, many = carried(loads, 1), carried(loads, nodes)
    lines.append("")
    if repeats > 1:
        lines += [
            f"Each load ran {repeats} times, one node's and {nodes} nodes' in turn; per load, "
            "the repeats that met the targets, the drops of each repeat (all nodes) and the "
            "worst node's tick lateness p99 of each:",
            "",
            *step_lines(loads, nodes),
            "",
        ]
    every = " in every repeat" if repeats > 1 else ""
    if one:
        ratio = many / one
        verdict = "meets" if ratio >= CLUSTER_SCALE_TARGET else "misses"
        lines.append(
            f"Carried at the targets{every} (every caller answered, 0 drops, tick lateness p99 "
            f"< {CLUSTER_P99_TARGET_S * 1000:.0f} ms on every node): one node **{one}**, "
            f"{nodes} nodes **{many}**: **{ratio:.2f}x** one node ({verdict} the "
            f"{CLUSTER_SCALE_TARGET}x target)."
        )
        above = first_missed(loads, 1)
        if above is not None and many:
            lines.append(
                f"On this grid one node's limit lies below {above} (missed there), so the "
                f"cluster carried at least **{many / above:.2f}x** one node's limit."
            )
        for count, name in ((1, "one node"), (nodes, f"{nodes} nodes")):
            below = missed_below(loads, count)
            if below:
                lines.append(
                    f"Not monotone: {name} missed {', '.join(map(str, below))} below its "
                    "figure (noise at the edge, or a lucky pass above it)."
                )
        for count, got, name in ((1, one, "One node"), (nodes, many, f"{nodes} nodes")):
            if got == max(x.total for x in loads if x.nodes == count):
                lines.append(
                    f"{name} carried the largest load tried: that figure is a lower bound "
                    "(add larger `--cluster-points`)."
                )
    else:
        lines.append("One node carried none of the loads tried at the targets: no ratio.")
    return lines


@dataclass
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    os: str
    python: str


@dataclass
class BenchResults:
    """One whole run: where and how it ran, its points, notes, profile and the Janus points
    (None when ``--with-janus`` was not given)."""

    date: str
    command: str
    machine: Machine
    pinning: str
    lateness_method: str
    points: list[PointResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    janus_points: list[JanusPointResult] | None = None
    #: The cluster series (``--cluster-points``) and how it was set up.
    cluster_loads: list[ClusterLoadResult] = field(default_factory=list)
    cluster_setup: str = ""

    def janus_section(self) -> list[str]:
        """The report's Janus section: the comparison table, or how to get one."""
        return janus_lines(self) if self.janus_points is not None else JANUS_STATUS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "date": self.date,
            "command": self.command,
            "machine": dataclasses.asdict(self.machine),
            "pinning": self.pinning,
            "lateness_method": self.lateness_method,
            "points": [p.to_json() for p in self.points],
            "notes": list(self.notes),
            "profile": list(self.profile),
            "janus": self.janus_section(),
        }
        if self.janus_points is not None:
            out["janus_points"] = [j.to_json() for j in self.janus_points]
        if self.cluster_loads:
            out["cluster_loads"] = [x.to_json() for x in self.cluster_loads]
            out["cluster_setup"] = self.cluster_setup
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResults:
        """Read :meth:`to_json`'s output back; the ``janus`` lines are derived, not read."""
        janus = data.get("janus_points")
        return cls(
            date=data["date"],
            command=data["command"],
            machine=Machine(**data["machine"]),
            pinning=data["pinning"],
            lateness_method=data["lateness_method"],
            points=[PointResult.from_json(p) for p in data["points"]],
            notes=list(data.get("notes", [])),
            profile=list(data.get("profile", [])),
            # an empty list (every Janus point failed) reads back as "not run", as before
            janus_points=[JanusPointResult.from_json(j) for j in janus] if janus else None,
            cluster_loads=[ClusterLoadResult.from_json(x) for x in data.get("cluster_loads", [])],
            cluster_setup=data.get("cluster_setup", ""),
        )


# --------------------------------------------------------------------------------------------
# Figures


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


def point_rows(p: PointResult) -> list[tuple[str, str, str]]:
    """(figure, value, how) rows of one load point."""
    lat = p.tick_lateness
    e2e = p.e2e
    start = p.stream_start
    rows = [
        ("callers answered / dialled", f"{p.answered} / {p.callers}", "load generator"),
        ("conferences / streams", f"{p.conferences} / {p.streams} ({p.codec})", ""),
        (
            "server CPU, % of one core",
            _num(p.cpu_percent),
            f"psutil user+system of the server pid over {p.window_s:.0f} s",
        ),
        (
            "CPU per participant-frame",
            _num(p.cpu_us_per_participant_frame, "{:.1f} µs"),
            "CPU seconds / (participants x 20 ms frames in the window)",
        ),
        (
            "server RSS, peak (MiB)",
            _num(p.rss_peak_mib),
            f"VmHWM; idle {_num(p.rss_idle_mib)} MiB, steady max {_num(p.rss_steady_mib)}",
        ),
        (
            "RSS growth per participant (KiB)",
            _num(p.rss_per_participant_kib),
            "(steady - idle) / participants, streams included",
        ),
        (
            "tick lateness p50 / p99 / max (ms)",
            f"{_ms(lat.p50, 2)} / {_ms(lat.p99, 2)} / ≤ {_ms(lat.max_bound, 1)}",
            f"histogram buckets, {lat.count:.0f} ticks; mean {_ms(lat.mean, 2)} ms; "
            f"ticks skipped {p.ticks_skipped:.0f}",
        ),
        (
            "frames dropped",
            f"{p.frames_dropped:.0f}",
            f"stream queue {p.stream_frames_dropped:.0f} + RTP discards "
            + (", ".join(f"{k} {v:.0f}" for k, v in sorted(p.rtp_discarded.items())) or "0")
            + f"; sink saw {p.sink_gaps} timeline gaps",
        ),
        (
            "end-to-end latency p50 / p99 / max (ms)",
            f"{_ms(e2e.p50)} / {_ms(e2e.p99)} / {_ms(e2e.max)}",
            f"{e2e.matched} of {e2e.expected} marked events matched at the sink",
        ),
        (
            "stream start p50 / p99 (ms)",
            f"{_ms(start.p50)} / {_ms(start.p99)}",
            f"REST create -> first media, {start.count} streams",
        ),
    ]
    if p.gc_pauses:
        rows.append(
            (
                "GC pauses: count, max (ms)",
                "; ".join(
                    f"{when} {v['count'] or 0:.0f}, ≤ {_ms(v['max_bound'], 1)}"
                    for when, v in sorted(p.gc_pauses.items())
                ),
                "`confstream_gc_pause_seconds{when}`: after_tick = run between ticks by the "
                "server, automatic = Python's own (may fall inside a tick)",
            )
        )
    return rows


#: The streams-per-core sweep's targets (the issue's N=1000 targets, per point).
SWEEP_TARGETS = {
    "cpu_percent": 75.0,  # server CPU below this, % of one core
    "tick_p99_s": 0.003,  # tick lateness p99 below this
    "e2e_p99_s": 0.035,  # end-to-end latency p99 at most this
}


def stream_tick_us(p: PointResult, base: PointResult | None) -> float | None:
    """Server CPU per stream-tick (µs) above the sweep's K=0 point: one stream, one 20 ms
    tick, both tracks."""
    if base is None or p.streams <= 0 or p.window_s <= 0 or base.window_s <= 0:
        return None
    extra = p.cpu_seconds / p.window_s - base.cpu_seconds / base.window_s
    return extra / (p.streams / 0.020) * 1e6


def inside_targets(p: PointResult) -> bool:
    """Whether a sweep point meets :data:`SWEEP_TARGETS` with no frame dropped or skipped."""
    lat, e2e = p.tick_lateness.p99, p.e2e.p99
    return (
        p.cpu_percent < SWEEP_TARGETS["cpu_percent"]
        and lat is not None
        and lat < SWEEP_TARGETS["tick_p99_s"]
        and (e2e is None or e2e <= SWEEP_TARGETS["e2e_p99_s"])
        and p.stream_frames_dropped == 0
        and p.ticks_skipped == 0
        and p.sink_gaps == 0
    )


def _codec_rows(sweep: list[PointResult], codec: str) -> list[PointResult]:
    """The sweep's points with streams in ``codec``, by K."""
    return sorted((p for p in sweep if p.codec == codec and p.streams > 0), key=lambda p: p.streams)


def sweep_lines(points: list[PointResult]) -> list[str]:
    """The streams-per-core section: one table per codec and the largest K inside targets."""
    sweep = [p for p in points if p.sweep == "streams"]
    if not sweep:
        return [
            "Not part of this run: `--streams-sweep 100,250,500,1000` (as `make bench` does)",
            "adds it.",
            "",
        ]
    base = next((p for p in sweep if p.streams == 0), None)
    t = SWEEP_TARGETS
    lines = [
        f"{sweep[0].callers} callers in {sweep[0].conferences} conferences of 10; K "
        "`both_tracks` streams spread evenly over the conferences (K / conferences per "
        "conference). CPU per stream-tick = (server CPU at K - server CPU at K=0) / (K streams "
        "x 50 ticks/s). Inside the targets: server CPU < "
        f"{t['cpu_percent']:.0f} % of one core, tick lateness p99 < {t['tick_p99_s'] * 1000:.0f}"
        f" ms, end-to-end p99 ≤ {t['e2e_p99_s'] * 1000:.0f} ms, no stream frame dropped, no "
        "tick skipped, no timeline gap at the sink. The first stream of each conference is "
        "analysed by the sink; the others are only counted, to keep the sink cheap. When the "
        "sink's CPU nears 100 % it cannot keep up and the drops are partly its own (TCP "
        "pushes back into the server's bounded send queues).",
        "",
    ]
    if base is not None:
        lines += [
            f"K=0 (callers only): server CPU {base.cpu_percent:.1f} %, tick lateness p99 "
            f"{_ms(base.tick_lateness.p99, 2)} ms.",
            "",
        ]
    for codec in dict.fromkeys(p.codec for p in sweep if p.streams > 0):
        rows = _codec_rows(sweep, codec)
        lines += [
            f"### {codec}",
            "",
            "| K streams | server CPU % | CPU per stream-tick (µs) | stream frames dropped | "
            "sink gaps | tick lateness p99 (ms) | e2e p50 / p99 (ms) | stream start p50 / p99 "
            "(ms) | sink CPU % | inside targets |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            cost = stream_tick_us(p, base)
            cells = [
                str(p.streams),
                f"{p.cpu_percent:.1f}",
                _num(cost),
                f"{p.stream_frames_dropped:.0f}",
                str(p.sink_gaps),
                _ms(p.tick_lateness.p99, 2),
                f"{_ms(p.e2e.p50)} / {_ms(p.e2e.p99)}",
                f"{_ms(p.stream_start.p50)} / {_ms(p.stream_start.p99)}",
                _num(p.sink_cpu_percent),
                "yes" if inside_targets(p) else "no",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        best = max((p.streams for p in rows if inside_targets(p)), default=None)
        lines += [
            "",
            f"Largest K inside the targets ({codec}): "
            + (f"**{best}** streams" if best is not None else "none of the points"),
            "",
        ]
    return lines


#: Where the hand-kept history of the performance work lives; the report includes it.
HISTORY = Path(__file__).resolve().parent / "history.md"


def janus_lines(results: BenchResults) -> list[str]:
    """The report's side-by-side table: CPU per participant-frame, confstream vs Janus."""
    ours = {p.callers: p for p in results.points if p.codec == "PCMU" and p.sweep == "n"}
    lines = [
        "Same RTP load (N callers in rooms of 10, 8 kHz PCMU, same audio, same window length),",
        "Janus 1.1.2 AudioBridge from Debian, only its HTTP transport and AudioBridge plugin",
        "loaded, pinned like the confstream server. confstream's figures include its streams",
        '(N/10 both-track wss:// streams); Janus has none. "joined" counts Janus participants',
        "joined by the end of the run. Where either side is near 100 % CPU the per-frame figure",
        "measures saturation, not cost (ticks are skipped, frames dropped). In brackets: the",
        "part of it spent in the kernel (system time: socket sends, receives and polls).",
        "",
        "| N | confstream CPU % | Janus CPU % | confstream µs / participant-frame | "
        "Janus µs / participant-frame | ratio confstream / Janus |",
        "|---|---|---|---|---|---|",
    ]
    for j in results.janus_points or []:
        o = ours.get(j.callers)
        ocpu = o.cpu_us_per_participant_frame if o else None
        jcpu = j.cpu_us_per_participant_frame
        ratio = f"{ocpu / jcpu:.2f}" if ocpu and jcpu else "n/a"
        cells = [
            f"{j.callers} ({j.answered} joined)",
            f"{o.cpu_percent:.1f}" if o else "n/a",
            f"{j.cpu_percent:.1f}",
            _with_kernel(ocpu, o.kernel_us_per_participant_frame if o else None),
            _with_kernel(jcpu, j.kernel_us_per_participant_frame),
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _with_kernel(us: float | None, kernel_us: float | None) -> str:
    if not us:
        return "n/a"
    return f"{us:.1f}" if kernel_us is None else f"{us:.1f} ({kernel_us:.1f})"


#: What the report says about the Janus AudioBridge comparison without ``--with-janus``.
JANUS_STATUS = [
    "Not part of this run: add `--with-janus` (needs the Debian package `janus`) to run the",
    "same RTP load against Janus AudioBridge after the confstream points and report the CPU",
    "ratio per participant-frame.",
]


def _point_key(p: PointResult) -> tuple[str, int, str, int]:
    return (p.sweep, p.callers, p.codec, p.streams)


#: (figure, how to read it off a point, format) of the run-to-run spread table.
SPREAD_FIGURES: list[tuple[str, Any, str]] = [
    ("server CPU %", lambda p: p.cpu_percent, "{:.1f}"),
    ("µs / participant-frame", lambda p: p.cpu_us_per_participant_frame, "{:.1f}"),
    ("tick lateness p99 (ms)", lambda p: _scaled(p.tick_lateness.p99), "{:.2f}"),
    ("e2e p50 (ms)", lambda p: _scaled(p.e2e.p50), "{:.1f}"),
    ("e2e p99 (ms)", lambda p: _scaled(p.e2e.p99), "{:.1f}"),
    ("stream start p50 (ms)", lambda p: _scaled(p.stream_start.p50), "{:.0f}"),
    ("stream start p99 (ms)", lambda p: _scaled(p.stream_start.p99), "{:.0f}"),
    ("RSS growth / participant (KiB)", lambda p: p.rss_per_participant_kib, "{:.1f}"),
]


def _scaled(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else seconds * 1000


def spread_lines(runs: list[BenchResults]) -> list[str]:
    """The same figures from several runs side by side, per point, with their spread (max -
    min): a target met in one run only is not met."""
    lines = [
        f"{len(runs)} runs: " + "; ".join(f"{r.date} (`{r.command}`)" for r in runs) + ".",
        "Spread = largest - smallest value over the runs.",
        "",
        "| point | figure | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
        + " | spread |",
        "|---|---|" + "---|" * len(runs) + "---|",
    ]  # fmt: skip
    keys = list(dict.fromkeys(_point_key(p) for r in runs for p in r.points))
    for key in keys:
        points = [next((p for p in r.points if _point_key(p) == key), None) for r in runs]
        sweep, callers, codec, streams = key
        label = f"N={callers}, {streams} streams {codec}" + (" (sweep)" if sweep != "n" else "")
        for name, get, fmt in SPREAD_FIGURES:
            values = [None if p is None else get(p) for p in points]
            known = [v for v in values if v is not None]
            spread = fmt.format(max(known) - min(known)) if len(known) > 1 else "n/a"
            cells = ["n/a" if v is None else fmt.format(v) for v in values]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + f" | {spread} |")
    return lines


def write_report(
    results: BenchResults,
    md_path: Path,
    png_path: Path | None,
    history: Path | None = HISTORY,
    earlier: Sequence[BenchResults] = (),
) -> None:
    """Write the markdown report (and the plots when ``png_path`` is given), with the spread
    over ``earlier`` runs of the same command when given, ending with the ``history`` file's
    text (bench/history.md: what each performance change bought)."""
    m = results.machine
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench.run` (`make bench`); rerun it to refresh this page. How the",
        "load is made and measured: `bench/__init__.py` and the module docstrings in `bench/`.",
        "",
        "## Run",
        "",
        f"- Date: {results.date}",
        f"- Command: `{results.command}`",
        f"- Machine: {m.cpu}, {m.cores} cores, {m.memory_gib:.0f} GiB RAM; "
        f"{m.os}; Python {m.python}",
        f"- Pinning: {results.pinning}",
        f"- Tick lateness quantiles: {results.lateness_method}",
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
    if results.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    lines += ["## Results", ""]
    if png_path is not None and results.points:
        lines += [f"![CPU and latency against load]({png_path.name})", ""]
    for p in (p for p in results.points if p.sweep != "streams"):
        lines += [
            f"### {p.callers} participants, {p.streams} streams {p.codec}",
            "",
            "| Figure | Value | How |",
            "|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in point_rows(p)]
        if p.problems:
            lines += ["", "Problems seen: " + "; ".join(p.problems)]
        lines.append("")
    lines += ["## Janus AudioBridge side by side", ""]
    lines += results.janus_section()
    lines.append("")
    if results.cluster_loads:
        lines += ["## Cluster: one node per core", ""]
        lines += cluster_lines(results.cluster_loads, results.cluster_setup)
        lines.append("")
    lines += ["## Streams per core", ""]
    if png_path is not None and any(p.sweep == "streams" for p in results.points):
        lines += [f"![Streams per core]({sweep_png(png_path).name})", ""]
    lines += sweep_lines(results.points)
    if results.profile:
        lines += ["## Where the server spends its time (py-spy)", "", "```"]
        lines += results.profile
        lines += ["```", ""]
    if earlier:
        lines += ["## Run to run", "", *spread_lines([*earlier, results]), ""]
    if history is not None and history.exists():
        lines += ["## History", ""]
        lines += history.read_text().splitlines()[1:]  # without its own title
        lines.append("")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines))
    if png_path is not None and results.points:  # a cluster-only run has no plot
        plot(results, png_path)
        if any(p.sweep == "streams" for p in results.points):
            plot_sweep(results, sweep_png(png_path))


def sweep_png(png_path: Path) -> Path:
    """The streams-per-core plot next to the main one."""
    return png_path.with_name(png_path.stem + "-streams.png")


def plot_sweep(results: BenchResults, png_path: Path) -> None:
    """Server CPU and CPU per stream-tick against K, one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [p for p in results.points if p.sweep == "streams"]
    base = next((p for p in sweep if p.streams == 0), None)
    fig, (ax_cpu, ax_cost) = plt.subplots(1, 2, figsize=(11, 4.2))
    for codec in dict.fromkeys(p.codec for p in sweep if p.streams > 0):
        rows = _codec_rows(sweep, codec)
        ks = [p.streams for p in rows]
        ax_cpu.plot(ks, [p.cpu_percent for p in rows], "o-", label=codec)
        costs = [stream_tick_us(p, base) for p in rows]
        ax_cost.plot(ks, [float("nan") if c is None else c for c in costs], "o-", label=codec)
    ax_cpu.axhline(SWEEP_TARGETS["cpu_percent"], color="grey", linestyle=":", label="target")
    ax_cpu.set_xlabel(f"streams (both tracks), {sweep[0].callers} callers")
    ax_cpu.set_ylabel("% of one core")
    ax_cpu.set_title("Server CPU")
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.legend()
    ax_cpu.grid(alpha=0.3)
    ax_cost.set_xlabel("streams")
    ax_cost.set_ylabel("µs per stream-tick")
    ax_cost.set_title("CPU per stream-tick (above K=0)")
    ax_cost.set_ylim(bottom=0)
    ax_cost.legend()
    ax_cost.grid(alpha=0.3)
    fig.suptitle(f"confstream streams per core, {results.date}")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def plot(results: BenchResults, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_points = [p for p in results.points if p.sweep != "streams"]
    points = [p for p in n_points if p.codec == "PCMU"] or n_points
    if not points:
        return
    xs = [p.callers for p in points]
    fig, (ax_cpu, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_cpu.plot(xs, [p.cpu_percent for p in points], "o-", label="server CPU")
    if results.janus_points:  # the side-by-side run: same RTP load, no streams
        janus = sorted(results.janus_points, key=lambda j: j.callers)
        ax_cpu.plot(
            [j.callers for j in janus],
            [j.cpu_percent for j in janus],
            "s--",
            label="Janus AudioBridge CPU (no streams)",
        )
    ax_cpu.axhline(85, color="grey", linestyle=":", label="85 % target")
    ax_cpu.set_xlabel("participants (streams = participants / 10)")
    ax_cpu.set_ylabel("% of one core")
    ax_cpu.set_title("Server CPU")
    ax_cpu.set_ylim(0, max(100.0, *(p.cpu_percent * 1.1 for p in points)))
    ax_cpu.legend()
    ax_cpu.grid(alpha=0.3)

    def ms_or_nan(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None or math.isinf(v) else v * 1000 for v in values]

    ax_lat.plot(xs, ms_or_nan([p.e2e.p50 for p in points]), "o-", label="e2e p50")
    ax_lat.plot(xs, ms_or_nan([p.e2e.p99 for p in points]), "s-", label="e2e p99")
    ax_lat.plot(
        xs, ms_or_nan([p.tick_lateness.p99 for p in points]), "^--", label="tick lateness p99"
    )
    ax_lat.set_xlabel("participants")
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("Latency")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    fig.suptitle(f"confstream, {results.date}, {results.machine.cpu}")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
