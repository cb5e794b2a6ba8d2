"""The engine's waiting state, the looping source, the beeps and the speech detector, ticked
by hand (no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from confstream.conference.engine import LEVEL_EVERY_TICKS, SPEECH_HANGOVER, Engine
from confstream.conference.sources import BEEP_ENTER_HZ, BEEP_EXIT_HZ, LoopSource, beep
from confstream.media.analysis import tone_levels
from confstream.tools.participants import RecordingTap, ToneParticipant


def test_loop_source_wraps_and_stops() -> None:
    s = LoopSource(np.arange(100, dtype=np.int16))
    first, second = s.read_frame(), s.read_frame()
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, np.arange(160) % 100)
    np.testing.assert_array_equal(second, (np.arange(160, 320)) % 100)
    assert not s.finished
    s.stop()
    assert s.finished and s.read_frame() is None
    with pytest.raises(ValueError):
        LoopSource([])


def test_beeps_are_distinct_tones() -> None:
    enter, leave = beep("enter"), beep("exit")
    assert enter.size == leave.size == 2000 and abs(int(enter[0])) < 100
    assert tone_levels(enter, [BEEP_ENTER_HZ])[BEEP_ENTER_HZ] > 0.8
    assert tone_levels(leave, [BEEP_EXIT_HZ, BEEP_ENTER_HZ])[BEEP_ENTER_HZ] < 0.01
    with pytest.raises(ValueError):
        beep("loud")


def test_waiting_conference_mixes_nobody_but_plays_platform_audio() -> None:
    engine = Engine()
    media = engine.add_conference("c")
    a, b = ToneParticipant("a", 500.0), ToneParticipant("b", 600.0)
    tap = RecordingTap()
    for p in (a, b):
        media.add_participant(p)
    media.add_tap(tap)
    media.waiting = True
    media.add_source(LoopSource(np.full(80, 1000, dtype=np.int16)))
    for _ in range(5):
        engine.tick()
    for p in (a, b):
        heard = p.heard_audio(last=5)
        assert (heard == 1000).all()  # the wait audio only, not the other participant
    assert not tap.audio("inbound", last=5).any()
    media.waiting = False
    for _ in range(10):
        engine.tick()
    assert tone_levels(a.heard_audio(last=10), [600.0])[600.0] > 0.3


def test_speech_detector_start_and_hangover() -> None:
    engine = Engine()
    events: list[tuple[str, str, bool]] = []
    engine.speech_listener = lambda c, s, speaking: events.append((c, s, speaking))
    media = engine.add_conference("c")
    talker = ToneParticipant("t", 440.0)
    media.add_participant(talker)
    media.add_participant(ToneParticipant("quiet", None))
    for _ in range(20):
        engine.tick()
    assert events == []  # nobody watches levels: nothing measured
    engine.level_watchers = 1
    for _ in range(LEVEL_EVERY_TICKS):
        engine.tick()
    assert events == [("c", "t", True)]
    # a late joiner keeps the talker's state (matched by CallSid)
    media.add_participant(ToneParticipant("late", None))
    talker.muted = True
    for _ in range(LEVEL_EVERY_TICKS * (SPEECH_HANGOVER - 1)):
        engine.tick()
    assert events == [("c", "t", True)]  # still in the hangover
    for _ in range(LEVEL_EVERY_TICKS):
        engine.tick()
    assert events == [("c", "t", True), ("c", "t", False)]
