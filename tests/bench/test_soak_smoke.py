"""The soak tool (bench/soak.py, ``make soak``) works: a real 20 s soak against a real server
subprocess, 10 SIP callers, 3 streams to the real chaos sink (trustme TLS), every chaos action
forced at least once through ``--script``; plus the chaos sink's seeded draws.

No memory or speed verdict is asserted here (20 s says nothing about leaks): the test checks
that the tool measures, re-creates streams and writes a report with its rows.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from bench.chaos_sink import ChaosSink
from bench.soak import SoakResult, write_soak_report
from bench.soak import main as soak_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_soak_smoke_forces_every_chaos_action_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "soak.md"
    raw = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "20", "--callers", "10",
         "--streams", "3", "--sample", "2", "--ramp", "1",
         "--script", "normal,return-paced,stall,return-burst,disconnect",
         "--normal", "1,2", "--stall", "2,3", "--return", "2,3",
         "--output", str(out), "--json", str(raw), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(raw.read_text())
    counts = res["chaos_counts"]
    # every action happened: the script forces them on each connection (return only on the
    # bidirectional slot 1)
    assert counts.get("normal", 0) >= 3
    assert counts.get("stall", 0) >= 3
    assert counts.get("return-paced", 0) >= 1 and counts.get("return-burst", 0) >= 1
    assert counts.get("disconnect-reset", 0) + counts.get("disconnect-fin", 0) >= 3
    assert res["seconds_returned"] > 2 and res["marks_sent"] >= 2 and res["marks_echoed"] >= 1
    # each disconnect ended its stream with an error code and the slot got a new stream
    assert res["streams_created"] >= 3 + 3
    ends = res["stream_ends"]
    assert len(ends) >= 3
    assert all(e["error_code"] is not None for e in ends if e["last_action"].startswith("dis"))
    assert res["streams_active_at_end"] >= 1
    assert res["answered"] == 10
    # samples every 2 s with real figures
    samples = res["samples"]
    assert len(samples) >= 8
    assert all(s["rss_mib"] > 10 and s["ticks"] > 40 for s in samples)
    assert all(s["callers_live"] == 10 for s in samples)
    shares = [s["caller_audio_share"] for s in samples if s["caller_audio_share"] is not None]
    assert shares and max(shares) > 0.5  # the callers heard the conference
    text = out.read_text()
    assert "**Memory: " in text and "**Callers kept their audio: " in text
    assert "| t (s) | RSS (MiB) |" in text
    assert text.count("\n| ") >= len(samples) + 5  # a row per window, chaos and end rows
    for name in ("| stall |", "| return-paced |", "| return-burst |", "| 3190"):
        assert name in text, name
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --render rewrites the same page from the raw results
    again = tmp_path / "again" / "soak.md"
    assert soak_main(["--render", str(raw), "--output", str(again)]) == 0
    assert again.read_text() == text


def test_chaos_draws_are_seeded_per_connection_and_follow_the_script() -> None:
    sink = ChaosSink(seed=7, script=["stall", "return-burst", "disconnect"])

    def plan(path: str, realtime: bool, steps: int = 12) -> list[tuple[str, str]]:
        rng = random.Random(f"{sink.seed}:{path}")
        return [sink.draw(rng, i, realtime) for i in range(steps)]

    a = plan("/bench-0/s1g1", True)
    assert a == plan("/bench-0/s1g1", True)  # reproducible
    assert a[:3] == [("stall", ""), ("return", "burst"), ("disconnect", a[2][1])]
    assert a[2][1] in ("reset", "fin")
    one_way = plan("/bench-0/s0g1", False, 200)
    assert ("normal", "") == one_way[1]  # return is never done on a one-way stream
    assert all(action != "return" for action, _ in one_way)
    drawn = {action for action, _ in plan("/bench-1/s3g2", True, 200)}
    assert drawn == {"normal", "stall", "return", "disconnect"}


def test_memory_verdict_compares_the_end_with_the_sample_after_ramp_up(tmp_path: Path) -> None:
    from bench.report import Machine
    from bench.soak import Sample

    def sample(t: float, rss: float) -> Sample:
        return Sample(t, rss, 10.0, 0.001, 0.002, 0.005, 500, 0, 0, 0, 20, 200, 200, 1.0, 1.0)

    machine = Machine("cpu", 2, 4.0, "os", "3.11")
    config = {"warmup": 60.0, "bound_mib": 16.0, "callers": 200, "streams": 20,
              "duration": 300.0, "sample": 10.0, "seed": 1, "script": "", "normal": "10,40",
              "stall": "5,60", "returning": "5,30"}  # fmt: skip
    flat = SoakResult("d", "c", machine, "p", config, callers=200, answered=200)
    flat.samples = [
        sample(t, 100.0 if t < 60 else 120.0 + (t % 30) / 10) for t in range(10, 310, 10)
    ]
    assert flat.baseline() is not None and flat.baseline().t == 60  # type: ignore[union-attr]
    assert flat.memory_pass() and flat.callers_kept_audio()
    leaky = SoakResult("d", "c", machine, "p", config, callers=200, answered=200)
    leaky.samples = [sample(t, 120.0 + t / 10) for t in range(10, 310, 10)]
    assert not leaky.memory_pass()
    assert leaky.slope_mib_per_10min() == pytest.approx(60.0)
    md = tmp_path / "soak.md"
    write_soak_report(leaky, md, None)
    assert "**Memory: FAIL**" in md.read_text()
