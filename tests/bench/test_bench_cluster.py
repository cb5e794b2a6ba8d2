"""The cluster series of the benchmark (bench/cluster.py, ``--cluster-points``): what counts
as carried at the single-node targets, the ratio in the report, the JSON round trip. Pure
logic; the series itself runs real nodes (``python -m bench.run --cluster-points ...``)."""

from __future__ import annotations

from pathlib import Path

from bench.cluster import Timeline, load_order
from bench.loadgen import Pacing
from bench.report import (
    BenchResults,
    ClusterLoadResult,
    Machine,
    carried,
    cluster_lines,
    cluster_steps,
    first_missed,
    missed_below,
    write_report,
)
from bench.run import ServerMetrics


def _load(nodes: int, per_node: int, p99_ms: float, drops: float = 0.0) -> ClusterLoadResult:
    return ClusterLoadResult(
        nodes=nodes,
        per_node=per_node,
        answered=nodes * per_node,
        window_s=60.0,
        lateness_p99=[p99_ms / 1000] * nodes,
        drops=[0.0] * (nodes - 1) + [drops],
        cpu_percent=[50.0] * nodes,
        loadgen_cpu_percent=[12.0] * nodes,
    )


LOADS = [
    _load(1, 400, 1.2),
    _load(2, 400, 1.5),
    _load(1, 800, 4.0),
    _load(2, 800, 4.5),
    _load(1, 1200, 9.0),  # one node misses at 1200
    _load(2, 1200, 4.8, drops=3),  # a drop on the second node: not carried
]


def test_a_load_is_carried_only_at_every_target_on_every_node() -> None:
    assert [x.at_targets for x in LOADS] == [True, True, True, True, False, False]
    short = _load(2, 400, 1.0)
    short.answered -= 1
    assert not short.at_targets
    unknown = _load(1, 400, 1.0)
    unknown.lateness_p99 = [None]
    assert not unknown.at_targets
    assert carried(LOADS, 1) == 800 and carried(LOADS, 2) == 1600
    assert carried(LOADS[4:], 1) == 0


def test_the_report_states_the_ratio_and_survives_json(tmp_path: Path) -> None:
    results = BenchResults(
        date="2026-12-03 07:00 UTC",
        command="python -m bench.run --points '' --cluster-points 400,800,1200",
        machine=Machine("cpu", 2, 4.0, "Debian", "3.11"),
        pinning="",
        lateness_method="",
        cluster_loads=LOADS,
        cluster_setup="2 confstream nodes, each pinned to its own core.",
    )
    again = BenchResults.from_json(results.to_json())
    assert again.cluster_loads == LOADS and again.cluster_setup == results.cluster_setup
    out = tmp_path / "bench.md"
    write_report(again, out, tmp_path / "bench.png")
    text = out.read_text()
    assert "## Cluster: one node per core" in text
    assert "| 2 | 1600 (800) | 1600 | 4.50, 4.50 | 0, 0 | 50%, 50% | 12%, 12% | yes |" in text
    assert "one node **800**, 2 nodes **1600**: **2.00x** one node (meets the 1.8x target)" in text
    assert "lower bound" not in text  # both limits were found
    assert not (tmp_path / "bench.png").exists()  # no single-node points: no plot
    # without the series, no section (and the section's text says how to get one)
    write_report(BenchResults("d", "c", results.machine, "", ""), out, None)
    assert "## Cluster" not in out.read_text()
    assert "--cluster-points" in cluster_lines([], "")[0]


def test_results_of_runs_without_the_load_generator_cpu_still_read_back() -> None:
    old = LOADS[0].to_json()
    del old["loadgen_cpu_percent"]
    assert ClusterLoadResult.from_json(old).loadgen_cpu_percent == []
    assert "| n/a |" in "\n".join(cluster_lines([ClusterLoadResult.from_json(old)], ""))


def _rep(nodes: int, per_node: int, repeat: int, drops: float = 0.0) -> ClusterLoadResult:
    load = _load(nodes, per_node, 1.5, drops)
    load.repeat = repeat
    return load


# two repeats of a 600/675/750 grid: one node clean up to 675 in both repeats, 750 clean once;
# two nodes clean at 675 and 750 in both repeats but missed 600 once
REPEATED = [
    _rep(1, 600, 0), _rep(2, 600, 0, drops=53), _rep(2, 675, 0), _rep(1, 675, 0),
    _rep(1, 750, 0), _rep(2, 750, 0),
    _rep(2, 600, 1), _rep(1, 600, 1), _rep(1, 675, 1), _rep(2, 675, 1),
    _rep(2, 750, 1), _rep(1, 750, 1, drops=355),
]  # fmt: skip


def test_a_load_counts_as_carried_only_when_clean_in_every_repeat() -> None:
    assert carried(REPEATED, 1) == 675  # 750 missed in the second repeat
    assert first_missed(REPEATED, 1) == 750
    assert missed_below(REPEATED, 1) == []
    assert carried(REPEATED, 2) == 1500
    assert first_missed(REPEATED, 2) is None
    assert missed_below(REPEATED, 2) == [1200]  # 2 x 600 missed once: not monotone
    steps = cluster_steps(REPEATED, 2)
    assert list(steps) == [600, 675, 750] and [x.repeat for x in steps[600]] == [0, 1]


def test_the_report_gives_the_spread_of_the_repeats_and_the_ratio_bound() -> None:
    text = "\n".join(cluster_lines(REPEATED, "setup"))
    assert "Each load ran 2 times" in text
    assert "| 1 (run 2) | 750 (750) | 750 |" in text
    assert "| 600 | 2 of 2 / 0, 0 / 1.5, 1.5 | 1 of 2 / 53, 0 / 1.5, 1.5 |" in text
    assert "| 750 | 1 of 2 / 0, 355 / 1.5, 1.5 | 2 of 2 / 0, 0 / 1.5, 1.5 |" in text
    assert "one node **675**, 2 nodes **1500**: **2.22x** one node (meets" in text
    assert "in every repeat" in text
    # one node's limit is below 750, so the cluster carried at least 1500 / 750
    assert "at least **2.00x** one node's limit" in text
    assert "Not monotone: 2 nodes missed 1200 below its figure" in text
    assert "2 nodes carried the largest load tried" in text
    # one repeat: the table and the sentence as before
    single = "\n".join(cluster_lines(LOADS, "setup"))
    assert "(run 1)" not in single and "Each load ran" not in single
    assert "in every repeat" not in single


def test_repeats_run_the_grid_upwards_and_alternate_which_load_goes_first() -> None:
    assert load_order([600, 675], 2, 2) == [
        (0, 600, 1), (0, 600, 2), (0, 675, 2), (0, 675, 1),
        (1, 600, 2), (1, 600, 1), (1, 675, 1), (1, 675, 2),
    ]  # fmt: skip
    assert load_order([500], 2, 1) == [(0, 500, 1), (0, 500, 2)]


def _metrics(discards: float, late: float) -> ServerMetrics:
    return ServerMetrics(
        lateness_buckets={0.005: 100.0, 0.02: 100.0, float("inf"): 100.0 + late},
        rtp_discarded={"overflow": discards, "late": 0.0},
    )


def test_the_timeline_puts_each_seconds_discards_next_to_what_happened() -> None:
    line = Timeline(["node-1", "node-2"], [_metrics(0, 0), _metrics(10, 1)], [1.0, 2.0])
    quiet = line.add(1.0, [_metrics(0, 0), _metrics(10, 1)], [1.0, 2.0], [None, None])
    assert not quiet.eventful and not quiet.reported  # no progress line: pacing unknown
    assert "(no loadgen line this second)" in quiet.text()
    pacing = {"send_late_max_ms": 41.5, "slots_late_20ms": 3}
    burst = line.add(2.0, [_metrics(0, 0), _metrics(60, 3)], [1.0, 2.05], [None, pacing])
    assert burst.discards == [0, 50] and burst.late_ticks == [0, 2]
    assert burst.send_late_ms == [0.0, 41.5] and burst.slots_late_20ms == [0.0, 3.0]
    assert [round(x) for x in burst.steal_ms] == [0, 50]
    assert burst.eventful
    assert "discards 0/50, ticks >= 20 ms late 0/2" in burst.text()
    # the counters of the load generator are cumulative: no line, no change
    again = line.add(3.0, [_metrics(0, 0), _metrics(60, 3)], [1.0, 2.05], [None, None])
    assert again.slots_late_20ms == [0.0, 0.0] and not again.eventful
    assert line.summary().startswith(
        "3 s sampled: discards 0/50 in 0/1 seconds (worst second 0/50)"
    )


def test_pacing_counts_late_slots_and_restarts_its_worst_each_line() -> None:
    pacing = Pacing()
    for late in (0.001, 0.006, 0.025, 0.002):
        pacing.record(late)
    assert pacing.take() == {
        "send_late_max_ms": 25.0, "slots_late_5ms": 2, "slots_late_20ms": 1, "gc_max_ms": 0.0,
    }  # fmt: skip
    pacing.record(0.0)
    assert pacing.take()["send_late_max_ms"] == 0.0
    assert pacing.take()["slots_late_20ms"] == 1  # cumulative
