from __future__ import annotations

import numpy as np

from confstream.conference.engine import Engine
from confstream.conference.sources import BufferSource, QueueSource
from confstream.tools.participants import RecordingTap


def test_buffer_source_plays_once_with_padding() -> None:
    data = np.arange(1, 401, dtype=np.int16)
    s = BufferSource(data, target_call_sid="CA1")
    data[0] = 999  # the source keeps its own copy
    frames = []
    while not s.finished:
        f = s.read_frame()
        assert f is not None
        frames.append(f)
    assert [f.size for f in frames] == [160, 160, 160]
    out = np.concatenate(frames)
    np.testing.assert_array_equal(out[:400], np.arange(1, 401))
    assert not out[400:].any()
    assert s.read_frame() is None and s.played_samples == 400 and s.target_call_sid == "CA1"
    stopped = BufferSource(data)
    stopped.stop()
    assert stopped.finished and stopped.read_frame() is None


def test_queue_source_plays_appended_audio_in_order() -> None:
    q = QueueSource()
    assert q.read_frame() is None
    q.append(np.arange(100, dtype=np.int16))
    q.append(np.arange(100, 250, dtype=np.int16))
    f1 = q.read_frame()
    assert f1 is not None
    np.testing.assert_array_equal(f1, np.arange(160))
    f2 = q.read_frame()
    assert f2 is not None
    np.testing.assert_array_equal(f2[:90], np.arange(160, 250))
    assert not f2[90:].any()
    assert q.played_samples == 250 and q.queued_samples == 0
    assert q.read_frame() is None
    assert not q.finished
    q.close()
    assert q.finished


def test_marks_fire_when_their_audio_has_played() -> None:
    fired: list[str] = []
    q = QueueSource(on_mark=fired.append)
    q.add_mark("empty")  # nothing queued: fires at once
    assert fired == ["empty"]
    q.push(np.ones(200, np.int16))
    q.mark("a")
    q.push(np.ones(100, np.int16))
    q.mark("b")
    q.mark("c")
    q.read_frame()  # 160 of 200 played
    assert fired == ["empty"]
    q.read_frame()  # 300 played: a, b and c are all done
    assert fired == ["empty", "a", "b", "c"]
    assert q.pending_marks == []


def test_marks_without_callback_are_collected() -> None:
    q = QueueSource()
    q.append(np.ones(160, np.int16))
    q.add_mark("x")
    assert q.take_played_marks() == []
    q.read_frame()
    assert q.take_played_marks() == ["x"]
    assert q.take_played_marks() == []


def test_clear_drops_audio_and_releases_pending_marks() -> None:
    fired: list[str] = []
    q = QueueSource(on_mark=fired.append)
    q.append(np.ones(1000, np.int16))
    q.add_mark("m1")
    q.append(np.ones(1000, np.int16))
    q.add_mark("m2")
    q.read_frame()
    assert q.clear() == ["m1", "m2"]
    assert fired == ["m1", "m2"]
    assert q.queued_samples == 0 and q.read_frame() is None
    q.append(np.full(160, 3, np.int16))
    q.add_mark("m3")
    f = q.read_frame()
    assert f is not None and (f == 3).all()
    assert fired == ["m1", "m2", "m3"]


def test_max_samples_bounds_the_queue() -> None:
    q = QueueSource(max_samples=300)
    assert q.append(np.ones(200, np.int16)) == 0
    assert q.append(np.ones(200, np.int16)) == 100
    assert q.queued_samples == 300


def test_queue_source_paced_by_the_engine_fires_marks_in_real_ticks() -> None:
    engine = Engine()
    conf = engine.add_conference("CF")
    fired: list[tuple[str, int]] = []
    q = QueueSource(on_mark=lambda name: fired.append((name, conf.ticks)))
    conf.add_source(q)
    tap = RecordingTap()
    conf.add_tap(tap)
    q.append(np.full(480, 1000, np.int16))  # 60 ms
    q.add_mark("done")
    for _ in range(5):
        engine.tick()
    assert fired == [("done", 2)]  # during the third tick (ticks counts frames before it)
    assert [int(f[0]) for f in tap.outbound] == [1000, 1000, 1000, 0, 0]
    assert not any(f.any() for f in tap.inbound)
    assert q in conf.sources  # a queue stays until closed
    q.close()
    engine.tick()
    assert q not in conf.sources
