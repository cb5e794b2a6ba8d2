"""The cluster series of ``python -m bench.run --cluster-points 200,400,600`` (docs/cluster.md,
docs/benchmarks.md "Cluster: one node per core").

One cluster serves the whole series, started from the Debian packages as ``make cluster``
starts it (:class:`confstream.tools.cluster.LocalCluster`: Redis, PostgreSQL, Kamailio and
``--cluster-nodes`` nodes, default one per core), each node pinned to its own core with
``taskset``. For each N of ``--cluster-points`` (callers per node), two loads, one after the
other, so that one node's figure and the cluster's come from the same run:

1. *one node*: N callers on node 1 (the other nodes idle);
2. *every node*: N callers on each node.

The load generator (:mod:`bench.loadgen`, one process per loaded node, rooms of 10 named after
the node) runs on the same machine: not pinned, or with ``--cluster-loadgen-with-node`` (what
``make bench`` uses) pinned to the core of the node it calls; with ``--cluster-realtime`` at a
real-time priority above the nodes' (:data:`LOADGEN_REALTIME_PREFIX`). It dials each node's
SIP port **directly, not through Kamailio** (which node a conference lands on is Kamailio's
job, tested in tests/cluster; the figure here is what the nodes carry). No streams. Per node,
over ``--cluster-duration`` seconds after the ramp and a settling time: tick lateness p99 (from
the ``confstream_tick_lateness_seconds`` buckets, as for the single-node points), drops
(``confstream_rtp_discarded_total``, every reason: the single-node points' frames dropped
without streams) and CPU. A load is *carried* when every caller is answered and every node
has 0 drops and p99 < 5 ms (:class:`bench.report.ClusterLoadResult`).

``--cluster-repeats R`` runs the whole grid R times (:func:`load_order`); a load then counts as
carried only when it met the targets in every repeat (:func:`bench.report.carried`), and the
report gives each load's spread over the repeats.

While a window runs, each node is scraped and each load generator's progress line read once a
second (:class:`Timeline`): a second with discards, a tick 20 ms late, a send slot of the load
generator 10 ms late or more, or VM steal is logged, so a failed load shows where its drops came
from (docs/cluster-bench.md section 6).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import ClusterLoadResult, histogram_delta, histogram_quantile
from bench.run import (
    LineProc,
    Pinning,
    PointConfig,
    ServerMetrics,
    log,
    parse_metrics,
    start_loadgen,
    stop_loadgen,
    wait_answered,
)
from confstream.tools.cluster import REALTIME_PREFIX, LocalCluster, NodeProcess
from confstream.tools.server import Account

#: With ``--cluster-realtime``: the load generators' real-time priority, *above* the nodes'
#: (10). The callers stand for phones on a network, whose packets keep coming while a node is
#: busy. Below the node, a load generator on the node's core was starved by every late tick
#: and the node's catch-up ticks after it, then sent the frames it owed back to back: a node
#: 40 ms late (3 packets waiting per caller, no discard) became a send gap of 100-200 ms and
#: thousands of jitter-buffer overflow discards (docs/cluster-bench.md section 6).
LOADGEN_REALTIME_PREFIX = ["chrt", "-f", "20"]


def setup_text(
    nodes: int, pinned: bool, realtime: bool = False, loadgen_with_node: bool = False
) -> str:
    where = "each pinned to its own core (taskset)" if pinned else "not pinned (no taskset)"
    if realtime:
        where += (
            ", with real-time scheduling (`chrt -f 10`, SCHED_FIFO, for both loads: the "
            "opt-in setting of docs/operations.md); the load generators run at the higher "
            "real-time priority 20 (`chrt -f 20`: like phones on a network, their packets keep "
            "coming on time while a node is busy; nothing else on the machine delays them)"
        )
    generators = (
        "pinned to its node's core (`--cluster-loadgen-with-node`: every core carries one node "
        "and the load of that node, for one node alone as for all of them)"
        if loadgen_with_node and pinned
        else "not pinned (it shares the cores with the nodes)"
    )
    return (
        f"{nodes} confstream nodes, {where}, on one Redis, one PostgreSQL and Kamailio, started "
        "by `confstream.tools.cluster` (what `make cluster` runs). The load generator (one "
        f"process per loaded node) runs on the same machine, {generators}, "
        "and dials each node's SIP port directly, not through Kamailio; rooms "
        "of 10, no streams. It sends each conference's packets of a frame with one `sendmmsg` "
        "and does not read the audio the nodes send back (`--discard-returned-rtp`: a small "
        "receive buffer, the kernel drops it; the nodes' sending is unchanged). Each "
        "participant count is first put on one node alone, then on every node, in the same run. "
        "CPU is % of one core over the window: each node, and each load generator process."
    )


def run_cluster_series(
    points: list[int],
    nodes: int,
    duration: float,
    ramp: float | None,
    base: Path,
    notes: list[str],
    realtime: bool = False,
    loadgen_with_node: bool = False,
    repeats: int = 1,
) -> tuple[list[ClusterLoadResult], str]:
    """Every load of the series (a load that fails is noted and skipped) and the setup text;
    ``realtime``: the nodes run under SCHED_FIFO (:data:`REALTIME_PREFIX`);
    ``loadgen_with_node``: each load generator is pinned to the core of the node it calls;
    ``repeats``: the whole grid runs that many times, one node's load and every node's in
    turn (:func:`load_order`)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = bool(cores) and shutil.which("taskset") is not None
    rt = list(REALTIME_PREFIX) if realtime else []
    prefixes = [
        [*rt, *(["taskset", "-c", str(cores[k % len(cores)])] if pinned else [])]
        for k in range(nodes)
    ]
    gen_rt = list(LOADGEN_REALTIME_PREFIX) if realtime else []
    gen_prefixes = [
        [*gen_rt, *(["taskset", "-c", str(cores[k % len(cores)])] if pinned else [])]
        if loadgen_with_node
        else gen_rt
        for k in range(nodes)
    ]
    cluster = LocalCluster(
        base / "cluster",
        nodes=nodes,
        heartbeat=1.0,
        lease=5.0,
        env={"CONFSTREAM_LOG_LEVEL": "warning"},
        node_prefixes=prefixes,
    )
    loads: list[ClusterLoadResult] = []
    try:
        cluster.start()
        account = cluster.create_account()
        for repeat, per_node, count in load_order(points, nodes, repeats):
            label = f"cluster {count} node(s) x {per_node}, repeat {repeat + 1}/{repeats}"
            log(f"{label}: starting")
            try:
                load = run_load(
                    cluster, account, per_node, count, duration, ramp, base, gen_prefixes,
                    tag=f"r{repeat}",
                )  # fmt: skip
            except Exception as exc:
                log(f"{label} failed: {exc}")
                notes.append(f"{label}: the load failed ({str(exc)[:300]!r})")
                continue
            load.repeat = repeat
            log(
                f"{label}: {load.answered}/{load.total} answered, p99 "
                f"{load.lateness_p99}, drops {load.drops}, node CPU {load.cpu_percent}, "
                f"loadgen CPU {load.loadgen_cpu_percent}, at targets: {load.at_targets}"
            )
            loads.append(load)
    finally:
        cluster.stop()
    return loads, setup_text(nodes, pinned, realtime, loadgen_with_node)


def load_order(points: list[int], nodes: int, repeats: int) -> list[tuple[int, int, int]]:
    """(repeat, callers per node, nodes loaded) in the order they run: the grid upwards once
    per repeat, so that the repeats of one load lie minutes apart; within a step one node's
    load and every node's alternate which goes first, so that a drift of the machine during
    the run does not always favour the same side."""
    out = []
    for repeat in range(repeats):
        for k, per_node in enumerate(points):
            first_alone = (repeat + k) % 2 == 0
            counts = (1, nodes) if first_alone else (nodes, 1)
            out += [(repeat, per_node, count) for count in counts]
    return out


def _late_ticks(m: ServerMetrics) -> float:
    """Ticks that started 20 ms or more late, since the node started."""
    return m.lateness_buckets.get(float("inf"), 0.0) - m.lateness_buckets.get(0.02, 0.0)


@dataclass
class Second:
    """One second of a load's window (:class:`Timeline`): per node, RTP discards and ticks
    started 20 ms or more late; per load generator, its latest send slot (ms) and slots started
    20 ms or more late; per core, VM steal (ms)."""

    t: float
    discards: list[float]
    late_ticks: list[float]
    send_late_ms: list[float]
    slots_late_20ms: list[float]
    steal_ms: list[float]
    #: Every load generator sent a progress line this second (else its pacing reads 0).
    reported: bool = True

    @property
    def eventful(self) -> bool:
        """Anything that can set a load's verdict, or explain it."""
        return (
            any(self.discards)
            or any(self.late_ticks)
            or any(self.slots_late_20ms)
            or any(x >= 10.0 for x in self.send_late_ms)
            or any(x >= 10.0 for x in self.steal_ms)
        )

    def text(self) -> str:
        def f(xs: list[float]) -> str:
            return "/".join(f"{x:.0f}" for x in xs)

        return (
            f"  t={self.t:4.0f}s discards {f(self.discards)}, ticks >= 20 ms late "
            f"{f(self.late_ticks)}, loadgen latest slot {f(self.send_late_ms)} ms, slots >= 20 ms "
            f"late {f(self.slots_late_20ms)}, steal {f(self.steal_ms)} ms per core"
            + (" (no loadgen line this second)" if not self.reported else "")
        )


class Timeline:
    """The window of one load second by second: where the discards fall and what else
    happened in the same second (docs/cluster-bench.md section 6)."""

    def __init__(self, nodes: list[str], first: list[ServerMetrics], steal: list[float]) -> None:
        self.nodes = nodes
        self._last = first
        self._steal = steal
        self._slots = [0.0] * len(nodes)
        self.seconds: list[Second] = []

    def add(
        self,
        t: float,
        scrapes: list[ServerMetrics],
        steal: list[float],
        pacing: list[dict[str, Any] | None],
    ) -> Second:
        """One sample: the nodes' scrapes, the cores' steal counters (seconds, since boot)
        and each load generator's pacing since the last sample (None: no progress line)."""
        slots = [
            float(p["slots_late_20ms"]) if p and "slots_late_20ms" in p else old
            for p, old in zip(pacing, self._slots, strict=True)
        ]
        row = Second(
            t=t,
            discards=[
                sum(m.rtp_discarded.values()) - sum(o.rtp_discarded.values())
                for m, o in zip(scrapes, self._last, strict=True)
            ],
            late_ticks=[
                _late_ticks(m) - _late_ticks(o) for m, o in zip(scrapes, self._last, strict=True)
            ],
            send_late_ms=[float(p.get("send_late_max_ms", 0.0)) if p else 0.0 for p in pacing],
            slots_late_20ms=[a - b for a, b in zip(slots, self._slots, strict=True)],
            steal_ms=[1000 * (a - b) for a, b in zip(steal, self._steal, strict=True)],
            reported=all(p is not None for p in pacing),
        )
        self._last, self._steal, self._slots = scrapes, steal, slots
        self.seconds.append(row)
        return row

    def summary(self) -> str:
        """Totals over the window, and how many seconds held the discards."""
        n = len(self.nodes)
        with_discards = [sum(1 for x in self.seconds if x.discards[k]) for k in range(n)]
        total = [sum(x.discards[k] for x in self.seconds) for k in range(n)]
        top = [max((x.discards[k] for x in self.seconds), default=0.0) for k in range(n)]
        worst = [max((x.send_late_ms[k] for x in self.seconds), default=0.0) for k in range(n)]
        steal = sum(sum(x.steal_ms) for x in self.seconds)
        return (
            f"{len(self.seconds)} s sampled: discards {'/'.join(f'{x:.0f}' for x in total)} in "
            f"{'/'.join(map(str, with_discards))} seconds (worst second "
            f"{'/'.join(f'{x:.0f}' for x in top)}); loadgen latest slot "
            f"{'/'.join(f'{x:.1f}' for x in worst)} ms; steal {steal:.0f} ms"
        )


def _steal() -> list[float]:
    """Each core's VM steal time since boot, seconds (/proc/stat; empty elsewhere)."""
    out: list[float] = []
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if fields and fields[0].startswith("cpu") and fields[0] != "cpu" and len(fields) > 8:
            out.append(int(fields[8]) / hz)
    return out


def _rt_throttled() -> int:
    """How many "RT throttling activated" messages the kernel log holds (-1: unreadable)."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return -1
    return text.count("RT throttling activated")


def _last_progress(gen: LineProc) -> dict[str, Any] | None:
    """The load generator's pacing since the last call: its progress lines merged (the
    latest slot is the worst of them, the counters the last one's)."""
    lines = [x for x in gen.drain() if x.get("event") == "progress"]
    if not lines:
        return None
    out = dict(lines[-1])
    out["send_late_max_ms"] = max(float(x.get("send_late_max_ms", 0.0)) for x in lines)
    return out


def _scrape(node: NodeProcess) -> ServerMetrics:
    return parse_metrics(httpx.get(f"{node.base}/metrics", timeout=10).text)


def run_load(
    cluster: LocalCluster,
    account: Account,
    per_node: int,
    count: int,
    duration: float,
    ramp: float | None,
    base: Path,
    loadgen_prefixes: list[list[str]] | None = None,
    tag: str = "",
) -> ClusterLoadResult:
    """``per_node`` callers on each of the first ``count`` nodes; the window; everyone hangs
    up and the nodes are idle again before it returns. ``loadgen_prefixes[k]`` goes before
    the command of the load generator of node ``k`` (:data:`LOADGEN_REALTIME_PREFIX`,
    ``taskset``); ``tag`` ends the conference names (one per repeat)."""
    members = cluster.members[:count]
    cfg = PointConfig(per_node, duration=duration, ramp=ramp)
    gens: list[LineProc] = []
    try:
        for k, node in enumerate(members):
            workdir = base / f"cluster-{count}x{per_node}-{node.node_id}"
            workdir.mkdir(parents=True, exist_ok=True)
            target = ["--sip", f"127.0.0.1:{node.sip_port}", "--account", account.sid,
                      "--token", account.token]  # fmt: skip
            # the cluster loads do not analyse the returned audio: the kernel drops it
            room = f"{node.node_id}-{count}x{per_node}{tag}"
            extra = ["--room-prefix", room, "--discard-returned-rtp"]
            prefix = loadgen_prefixes[k] if loadgen_prefixes else []
            gens.append(start_loadgen(cfg, workdir, Pinning(load=prefix), target, extra))
        answered = sum(wait_answered(gen, cfg).answered for gen in gens)
        time.sleep(cfg.settle)
        procs = [psutil.Process(node.proc.pid) for node in members if node.proc is not None]
        gen_procs = [psutil.Process(gen.proc.pid) for gen in gens]
        before = [_scrape(node) for node in members]
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        gen0 = [sum(p.cpu_times()[:2]) for p in gen_procs]
        t0 = time.monotonic()
        timeline = Timeline([node.node_id for node in members], before, _steal())
        throttled0 = _rt_throttled()
        while time.monotonic() - t0 < duration:
            time.sleep(1.0)
            for node in members:
                if node.proc is None or node.proc.poll() is not None:
                    raise RuntimeError(f"{node.node_id} died:\n{node.log_tail()}")
            pacing = [_last_progress(gen) for gen in gens]
            row = timeline.add(time.monotonic() - t0, [_scrape(n) for n in members], _steal(),
                               pacing)  # fmt: skip
            if row.eventful:
                log(row.text())
        window = time.monotonic() - t0
        throttled = _rt_throttled() - throttled0
        log(f"{timeline.summary()}; new RT throttling messages in dmesg: {throttled}")
        cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
        gen1 = [sum(p.cpu_times()[:2]) for p in gen_procs]
        after = [_scrape(node) for node in members]
    finally:
        for gen in gens:
            stop_loadgen(gen)
    p99: list[float | None] = []
    drops: list[float] = []
    for node, m0, m1 in zip(members, before, after, strict=True):
        buckets = histogram_delta(m0.lateness_buckets, m1.lateness_buckets)
        p99.append(histogram_quantile(buckets, 0.99))
        # as the single-node points' "frames dropped" (no streams here: RTP discards only)
        discards = {k: v - m0.rtp_discarded.get(k, 0.0) for k, v in m1.rtp_discarded.items()}
        drops.append(sum(discards.values()))
        skipped = m1.ticks_skipped - m0.ticks_skipped
        # the tail p99 does not show: ticks that started 20 ms or more late (a whole frame
        # waiting in every socket) and Python's own collections (they may fall inside a tick)
        late = buckets.get(float("inf"), 0.0) - buckets.get(0.02, 0.0)
        gc = histogram_delta(m0.gc_buckets.get("automatic", {}), m1.gc_buckets.get("automatic", {}))
        log(
            f"{node.node_id}: RTP discarded {discards}, ticks skipped {skipped:.0f}, "
            f"ticks >= 20 ms late {late:.0f}, automatic GC {gc.get(float('inf'), 0.0):.0f}"
        )
    _wait_idle(members)
    return ClusterLoadResult(
        nodes=count,
        per_node=per_node,
        answered=answered,
        window_s=window,
        lateness_p99=p99,
        drops=drops,
        cpu_percent=[100.0 * (b - a) / window for a, b in zip(cpu0, cpu1, strict=True)],
        loadgen_cpu_percent=[100.0 * (b - a) / window for a, b in zip(gen0, gen1, strict=True)],
    )


def _wait_idle(members: list[NodeProcess], within: float = 60.0) -> None:
    """Until every node carries no participant (the callers hung up with BYE)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(_scrape(node).participants_active == 0 for node in members):
            return
        time.sleep(0.5)
    raise RuntimeError("participants still active after the callers hung up")
