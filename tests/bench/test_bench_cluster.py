"""The cluster series of the benchmark (bench/cluster.py, ``--cluster-points``): what counts
as carried at the single-node targets, the ratio in the report, the JSON round trip. Pure
logic; the series itself runs real nodes (``python -m bench.run --cluster-points ...``)."""

from __future__ import annotations

from pathlib import Path

from bench.report import (
    BenchResults,
    ClusterLoadResult,
    Machine,
    carried,
    cluster_lines,
    write_report,
)


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
