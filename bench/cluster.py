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
the node) runs on the same machine, **not pinned**: it shares the cores with the nodes. It dials
each node's SIP port **directly, not through Kamailio** (which node a conference lands on is
Kamailio's job, tested in tests/cluster; the figure here is what the nodes carry). No streams.
Per node, over ``--duration`` seconds after the ramp and a settling time: tick lateness p99
(from the ``confstream_tick_lateness_seconds`` buckets, as for the single-node points), drops
(``confstream_rtp_discarded_total``, every reason: the single-node points' frames dropped
without streams) and CPU. A load is *carried* when every caller is
answered and every node has 0 drops and p99 < 5 ms (:class:`bench.report.ClusterLoadResult`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

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

#: With ``--cluster-realtime``: the load generators' real-time priority, below the nodes'.
LOADGEN_REALTIME_PREFIX = ["chrt", "-f", "5"]


def setup_text(
    nodes: int, pinned: bool, realtime: bool = False, loadgen_with_node: bool = False
) -> str:
    where = "each pinned to its own core (taskset)" if pinned else "not pinned (no taskset)"
    if realtime:
        where += (
            ", with real-time scheduling (`chrt -f 10`, SCHED_FIFO, for both loads: the "
            "opt-in setting of docs/operations.md); the load generators run at the lower "
            "real-time priority 5 (`chrt -f 5`: a node always preempts them, other work on the "
            "machine never delays their packets)"
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
) -> tuple[list[ClusterLoadResult], str]:
    """Every load of the series (a load that fails is noted and skipped) and the setup text;
    ``realtime``: the nodes run under SCHED_FIFO (:data:`REALTIME_PREFIX`);
    ``loadgen_with_node``: each load generator is pinned to the core of the node it calls."""
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
        for per_node in points:
            for count in (1, nodes):
                label = f"cluster {count} node(s) x {per_node}"
                log(f"{label}: starting")
                try:
                    load = run_load(
                        cluster, account, per_node, count, duration, ramp, base, gen_prefixes
                    )
                except Exception as exc:
                    log(f"{label} failed: {exc}")
                    notes.append(f"{label}: the load failed ({str(exc)[:300]!r})")
                    continue
                log(
                    f"{label}: {load.answered}/{load.total} answered, p99 "
                    f"{load.lateness_p99}, drops {load.drops}, node CPU {load.cpu_percent}, "
                    f"loadgen CPU {load.loadgen_cpu_percent}, at targets: {load.at_targets}"
                )
                loads.append(load)
    finally:
        cluster.stop()
    return loads, setup_text(nodes, pinned, realtime, loadgen_with_node)


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
) -> ClusterLoadResult:
    """``per_node`` callers on each of the first ``count`` nodes; the window; everyone hangs
    up and the nodes are idle again before it returns. ``loadgen_prefixes[k]`` goes before
    the command of the load generator of node ``k`` (:data:`LOADGEN_REALTIME_PREFIX`,
    ``taskset``)."""
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
            room = f"{node.node_id}-{count}x{per_node}"
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
        while time.monotonic() - t0 < duration:
            time.sleep(0.5)
            for node in members:
                if node.proc is None or node.proc.poll() is not None:
                    raise RuntimeError(f"{node.node_id} died:\n{node.log_tail()}")
        window = time.monotonic() - t0
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
