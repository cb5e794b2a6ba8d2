"""The benchmark harness (bench/) produces sane numbers: a real, very short run against a real
server subprocess, plus the pure logic it rests on.

No speed assertions here: speed lives in docs/benchmarks.md. The harness modules are loaded by
file path because this test package is itself named ``bench`` under ``tests/``; the smoke run
starts ``python -m bench.run`` in a subprocess from the project root, exactly as ``make bench``
does.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from confstream.media.g711 import ulaw_encode
from confstream.sip.digest import DigestAuthenticator, DigestOutcome, parse_authorization

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load("report")
sink_mod = _load("sink")
loadgen = _load("loadgen")


@pytest.mark.timeout(240)
def test_smoke_run_gives_sane_numbers(tmp_path: Path) -> None:
    """One N point and a tiny streams-per-core sweep (K=0 and K=3 on 10 callers in one
    conference: 3 streams on the same conference share their payloads)."""
    out = tmp_path / "bench.md"
    raw = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--points", "10", "--streams", "1",
         "--duration", "5", "--ramp", "1", "--l16-point", "0", "--profile-seconds", "0",
         "--streams-sweep", "3", "--sweep-callers", "10", "--sweep-codecs", "PCMU",
         "--output", str(out), "--json", str(raw), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "point 1/3 N=10 PCMU done in " in proc.stderr  # the progress line per point
    assert "point 3/3 N=10 PCMU K=3 done in " in proc.stderr
    results = json.loads(raw.read_text())
    point, base, swept = results["points"]
    assert (base["sweep"], base["streams"]) == ("streams", 0)
    assert (swept["sweep"], swept["streams"], swept["answered"]) == ("streams", 3, 10)
    assert swept["stream_start"]["count"] == 3  # every stream sent media
    assert swept["e2e"]["matched"] >= swept["e2e"]["expected"] - 1  # the analysed stream
    assert "automatic" in swept["gc_pauses"]  # the GC pause figures are read
    assert point["answered"] == 10, point["loadgen"]
    assert point["loadgen"]["rtp_sent"] > 10 * 5 * 40  # 50 packets/s each, minus ramp
    assert point["loadgen"]["rooms_receiving"] == 1  # the callers heard the server
    assert point["streams"] == 1
    assert point["stream_start"]["count"] == 1 and point["stream_start"]["p50"] > 0
    e2e = point["e2e"]
    assert e2e["expected"] >= 3 and e2e["matched"] >= e2e["expected"] - 1
    assert 0 < e2e["p50"] <= e2e["max"] < 1.0
    assert point["cpu_percent"] > 0 and point["cpu_us_per_participant_frame"] > 0
    assert point["rss_peak_mib"] > 10
    assert point["tick_lateness"]["count"] > 150  # ~250 ticks in 5 s
    assert point["tick_lateness"]["p50"] is not None
    assert point["frames_dropped"] >= 0
    text = out.read_text()
    assert "| server CPU, % of one core |" in text and "10 participants" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Streams per core" in text and "Largest K inside the targets (PCMU)" in text
    assert "| 3 | " in text  # the K=3 row
    assert "## History" in text
    sweep_png = out.with_name("bench-streams.png")
    assert sweep_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_quantiles_interpolate_inside_buckets() -> None:
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert report.histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert report.histogram_quantile(buckets, 0.7) == pytest.approx(0.0015)
    assert report.histogram_quantile(buckets, 0.99) == pytest.approx(0.0047)
    assert report.histogram_max_bound(buckets) == 0.005
    assert report.histogram_quantile({0.001: 0.0, float("inf"): 0.0}, 0.5) is None
    over = {0.5: 1.0, float("inf"): 3.0}
    assert report.histogram_quantile(over, 0.99) == 0.5
    assert report.histogram_max_bound(over) == float("inf")
    delta = report.histogram_delta({0.001: 5.0, float("inf"): 5.0}, {0.001: 7.0, float("inf"): 9.0})
    assert delta == {0.001: 2.0, float("inf"): 4.0}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile([3.0], 99) == 3.0
    assert report.percentile([], 50) is None


def test_events_match_the_first_onset_of_their_room() -> None:
    events = [
        {"room": "a", "t": 10.0},
        {"room": "a", "t": 11.0},
        {"room": "b", "t": 10.5},
        {"room": "c", "t": 10.2},  # no stream for c: not expected
    ]
    onsets = [
        {"room": "a", "track": "inbound", "t": 10.03},
        {"room": "a", "track": "outbound", "t": 10.02},
        {"room": "a", "track": "inbound", "t": 11.9},  # too late for the 11.0 event: stray
        {"room": "b", "track": "inbound", "t": 10.51},
    ]
    lat, expected, stray = report.match_events(events, onsets, 9.0, 13.0, {"a", "b"})
    assert expected == 3
    assert lat == pytest.approx([0.03, 0.01])
    assert stray == 1


def _media(track: str, ts: int, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> str:
    payload = base64.b64encode(ulaw_encode(pcm).tobytes()).decode()
    return json.dumps(
        {"event": "media", "streamSid": "S", "media": {"track": track, "timestamp": str(ts),
                                                       "payload": payload}}
    )  # fmt: skip


def test_sink_finds_burst_onsets_over_mixed_speech_and_counts_gaps() -> None:
    sink = sink_mod.Sink()
    rec = sink_mod.StreamRecord()
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "S",
             "start": {"customParameters": {"room": "bench-0"}, "mediaFormat": fmt}}  # fmt: skip
    sink.on_message(rec, json.dumps(start), 1.0)
    speech = sum(loadgen.voice_signal(i).astype(np.int32) for i in range(10))
    burst = loadgen.burst_signal()
    t = 2.0
    for frame in range(100):
        pcm = speech[frame * 160 : (frame + 1) * 160]
        if frame in (20, 21, 22, 70, 71, 72):
            k = (frame % 10) % 3
            pcm = pcm + burst[k * 160 : (k + 1) * 160]
        pcm16 = np.clip(pcm, -32768, 32767).astype(np.int16)
        ts = frame * 20 + (40 if frame >= 50 else 0)  # two frames dropped before frame 50
        sink.on_message(rec, _media("inbound", ts, pcm16), t + frame * 0.02)
    assert rec.room == "bench-0" and rec.encoding == "audio/x-mulaw"
    assert [round(o.t, 2) for o in sink.onsets] == [2.4, 3.4]
    assert rec.tracks["inbound"].media == 100
    assert rec.tracks["inbound"].gaps == 1 and rec.tracks["inbound"].gap_ms == 40
    assert rec.first_media_at == 2.0


def test_loadgen_digest_answer_is_accepted_by_the_server_side_check() -> None:
    auth = DigestAuthenticator(secret=b"k" * 32, realm="confstream")
    now = time.time()
    challenge = auth.challenges(now)[0]
    uri = "sip:bench-0@127.0.0.1:5060"
    header = loadgen.digest_authorization(
        challenge, username="AC1", password="tok", method="INVITE", uri=uri, cnonce="abc"
    )
    creds = parse_authorization(header)
    ok = auth.verify(creds, method="INVITE", request_uri=uri, password="tok", now=now)
    assert ok is DigestOutcome.OK
    wrong = loadgen.digest_authorization(
        challenge, username="AC1", password="bad", method="INVITE", uri=uri, cnonce="abd"
    )
    outcome = auth.verify(parse_authorization(wrong), method="INVITE", request_uri=uri,
                          password="tok", now=now)  # fmt: skip
    assert outcome is DigestOutcome.FORBIDDEN


def test_loadgen_signals_stay_below_the_burst_level() -> None:
    mix = sum(loadgen.voice_signal(i).astype(np.int32) for i in range(10))
    assert np.abs(mix).max() < sink_mod.LOUD_LEVEL
    assert sink_mod.loud_share("audio/x-mulaw", ulaw_encode(loadgen.burst_signal()).tobytes()) > 0.5
    frames = loadgen.pcmu_frames(loadgen.voice_signal(0))
    assert len(frames) == loadgen.LOOP_FRAMES and all(len(f) == 160 for f in frames)
