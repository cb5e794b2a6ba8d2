from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from confstream.conference.base import Frame, Tap
from confstream.conference.engine import MAX_BEHIND_TICKS, Engine
from confstream.conference.sources import QueueSource
from confstream.media.analysis import tone, tone_levels
from confstream.tools.metrics import sample
from confstream.tools.participants import RecordingTap, ToneParticipant

FREQS = (440.0, 660.0, 880.0)
PRESENT = 0.15  # a tone making up a share of the signal's power above this is "heard"
ABSENT = 0.01  # below this it is "not heard"


def run(engine: Engine, ticks: int) -> None:
    for _ in range(ticks):
        engine.tick()


def levels(pcm: Frame, freqs: tuple[float, ...] = FREQS) -> dict[float, float]:
    return tone_levels(pcm, freqs)


def three_party(engine: Engine, sid: str = "CF1") -> tuple[list[ToneParticipant], RecordingTap]:
    conf = engine.add_conference(sid)
    people = [ToneParticipant(f"CA{sid}{i}", f) for i, f in enumerate(FREQS)]
    for p in people:
        conf.add_participant(p)
    tap = RecordingTap()
    conf.add_tap(tap)
    return people, tap


def gauge(name: str) -> float:
    return sample(f"confstream_{name}_active")


def test_mix_minus_holds_the_others_and_not_self() -> None:
    engine = Engine()
    people, tap = three_party(engine)
    run(engine, 25)
    for p in people:
        lv = levels(p.heard_audio(last=20))
        others = [f for f in FREQS if f != p.freq]
        assert all(lv[f] > PRESENT for f in others), (p.freq, lv)
        assert p.freq is not None and lv[p.freq] < ABSENT, (p.freq, lv)
        assert all(f.dtype == np.int16 and f.shape == (160,) for f in p.heard)
    inbound = levels(tap.audio("inbound", last=20))
    assert all(inbound[f] > PRESENT for f in FREQS)
    assert tap.timestamps[:3] == [0, 20, 40]
    np.testing.assert_array_equal(tap.inbound[-1], tap.outbound[-1])


def test_mix_is_exact_sum_minus_own() -> None:
    engine = Engine()
    conf = engine.add_conference("CF")
    frames = {n: np.full(160, v, np.int16) for n, v in (("a", 100), ("b", -7), ("c", 30000))}

    class Const(ToneParticipant):
        def read_frame(self) -> Frame | None:
            return frames[self.call_sid]

    people = {n: Const(n, None) for n in frames}
    for p in people.values():
        conf.add_participant(p)
    tap = RecordingTap()
    conf.add_tap(tap)
    engine.tick()
    assert int(tap.inbound[0][0]) == 30093 and int(tap.outbound[0][0]) == 30093
    assert int(people["a"].heard[0][0]) == 29993
    assert int(people["b"].heard[0][0]) == 30100
    assert int(people["c"].heard[0][0]) == 93
    # clipping: two loud ones overflow int16 and are clipped, not wrapped
    frames["b"] = np.full(160, 30000, np.int16)
    engine.tick()
    assert int(tap.inbound[1][0]) == 32767
    assert int(people["a"].heard[1][0]) == 32767
    assert int(people["c"].heard[1][0]) == 30100
    with pytest.raises(ValueError):
        people["a"].heard[1][0] = 5  # read-only: receivers may keep frames without copying


@pytest.mark.parametrize("attr", ["muted", "hold"])
def test_muted_or_held_participant_contributes_nothing(attr: str) -> None:
    engine = Engine()
    people, tap = three_party(engine)
    run(engine, 5)
    setattr(people[0], attr, True)
    run(engine, 20)
    gone = people[0].freq
    assert gone is not None
    assert levels(tap.audio("inbound", last=20))[gone] < ABSENT
    assert levels(tap.audio("outbound", last=20))[gone] < ABSENT
    for p in people[1:]:
        lv = levels(p.heard_audio(last=20))
        assert lv[gone] < ABSENT, (attr, p.freq, lv)
        other = next(f for f in FREQS if f not in (gone, p.freq))
        assert lv[other] > PRESENT
    heard = people[0].heard_audio(last=20)
    if attr == "muted":  # hears everyone else
        lv = levels(heard)
        assert lv[660.0] > PRESENT and lv[880.0] > PRESENT
    else:  # on hold: silence
        assert not heard.any()
    setattr(people[0], attr, False)
    run(engine, 20)
    assert levels(tap.audio("inbound", last=20))[gone] > PRESENT


def test_announcement_in_outbound_and_mixes_but_not_inbound() -> None:
    engine = Engine()
    people, tap = three_party(engine)
    conf = engine.get("CF1")
    assert conf is not None
    source = conf.play(tone(1500, 0.4))
    run(engine, 20)
    assert source.finished and source not in conf.sources
    assert levels(tap.audio("inbound", last=20), (1500.0,))[1500.0] < ABSENT
    assert levels(tap.audio("outbound", last=20), (1500.0,))[1500.0] > PRESENT
    for p in people:
        assert levels(p.heard_audio(last=20), (1500.0,))[1500.0] > PRESENT
    run(engine, 20)  # finished: gone from the mix
    assert levels(tap.audio("outbound", last=20), (1500.0,))[1500.0] < ABSENT


def test_targeted_announcement_reaches_only_its_target() -> None:
    engine = Engine()
    people, tap = three_party(engine)
    conf = engine.get("CF1")
    assert conf is not None
    conf.play(tone(1500, 0.4), target_call_sid=people[1].call_sid)
    run(engine, 20)
    assert levels(people[1].heard_audio(last=20), (1500.0,))[1500.0] > PRESENT
    for p in (people[0], people[2]):
        assert levels(p.heard_audio(last=20), (1500.0,))[1500.0] < ABSENT
    for track in ("inbound", "outbound"):
        assert levels(tap.audio(track, last=20), (1500.0,))[1500.0] < ABSENT


def test_tap_with_own_source_does_not_get_its_own_audio() -> None:
    engine = Engine()
    people, plain_tap = three_party(engine)
    conf = engine.get("CF1")
    assert conf is not None
    returned = QueueSource()
    returned.append(tone(1500, 0.4))
    conf.add_source(returned)
    bidi_tap = RecordingTap(own_source=returned)
    conf.add_tap(bidi_tap)
    conf.play(tone(2000, 0.4))  # another platform source: the bidi tap must still get it
    run(engine, 20)
    probe = (1500.0, 2000.0, 440.0)
    own = levels(bidi_tap.audio("outbound"), probe)
    assert own[1500.0] < ABSENT and own[2000.0] > 0.05 and own[440.0] > 0.05
    plain = levels(plain_tap.audio("outbound", last=20), probe)
    assert plain[1500.0] > 0.05 and plain[2000.0] > 0.05
    for p in people:  # participants hear the returned audio
        assert levels(p.heard_audio(last=20), probe)[1500.0] > 0.05


def test_two_conferences_do_not_leak() -> None:
    engine = Engine()
    a = engine.add_conference("CFa")
    b = engine.add_conference("CFb")
    a1, a2 = ToneParticipant("a1", 440), ToneParticipant("a2", 660)
    b1, b2 = ToneParticipant("b1", 880), ToneParticipant("b2", 1200)
    empty = engine.add_conference("CFempty")  # no participants, between/after others
    for conf, p in ((a, a1), (b, b1), (a, a2), (b, b2)):
        conf.add_participant(p)
    ta, tb, te = RecordingTap(), RecordingTap(), RecordingTap()
    a.add_tap(ta)
    b.add_tap(tb)
    empty.add_tap(te)
    b.play(tone(1500, 1))
    run(engine, 20)
    probe = (440.0, 660.0, 880.0, 1200.0, 1500.0)
    la, lb = levels(ta.audio("outbound"), probe), levels(tb.audio("outbound"), probe)
    assert la[440.0] > PRESENT and la[660.0] > PRESENT
    assert max(la[880.0], la[1200.0], la[1500.0]) < ABSENT
    assert lb[880.0] > 0.1 and lb[1200.0] > 0.1 and lb[1500.0] > 0.1
    assert max(lb[440.0], lb[660.0]) < ABSENT
    assert levels(a1.heard_audio(), probe)[880.0] < ABSENT
    assert not te.audio("outbound").any()
    assert a.ticks == b.ticks == empty.ticks == 20


def test_membership_changes_and_gauges() -> None:
    engine = Engine()
    c0, p0 = gauge("conferences"), gauge("participants")
    people, tap = three_party(engine)
    assert gauge("conferences") == c0 + 1
    assert gauge("participants") == p0 + 3
    conf = engine.get("CF1")
    assert conf is not None and engine.add_conference("CF1") is conf
    run(engine, 3)
    assert conf.remove_participant(people[2].call_sid) is people[2]
    assert conf.remove_participant("nobody") is None
    assert gauge("participants") == p0 + 2
    run(engine, 20)
    assert len(people[2].heard) == 3
    assert levels(tap.audio("inbound", last=20))[880.0] < ABSENT
    late = ToneParticipant("late", 1200)
    conf.add_participant(late)
    run(engine, 20)
    assert levels(people[0].heard_audio(last=20), (1200.0,))[1200.0] > PRESENT
    conf.remove_tap(tap)
    run(engine, 1)
    assert len(tap.inbound) == 43
    engine.remove_conference("CF1")
    engine.remove_conference("CF1")
    assert engine.get("CF1") is None
    assert gauge("conferences") == c0
    assert gauge("participants") == p0
    run(engine, 2)
    assert len(late.heard) == 21


def test_dtmf_to_taps_and_to_participants() -> None:
    engine = Engine()
    people, tap = three_party(engine)
    conf = engine.get("CF1")
    assert conf is not None

    class BadTap(RecordingTap):
        def on_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
            raise RuntimeError("boom")

    conf.add_tap(BadTap())
    conf.emit_dtmf(people[0].call_sid, "5", 200)
    assert tap.dtmf == [(people[0].call_sid, "5", 200)]
    conf.send_dtmf("#", 160)
    assert all(p.dtmf == [("#", 160)] for p in people)


def test_failures_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine()
    people, tap = three_party(engine)
    other_people, other_tap = three_party(engine, "CF2")
    conf = engine.get("CF1")
    assert conf is not None

    class Broken(ToneParticipant):
        def read_frame(self) -> Frame | None:
            raise RuntimeError("read boom")

        def write_frame(self, frame: Frame) -> None:
            raise RuntimeError("write boom")

    class WrongSize(ToneParticipant):
        def read_frame(self) -> Frame | None:
            return np.zeros(100, np.int16)

    class BrokenTap(RecordingTap):
        def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
            raise RuntimeError("tap boom")

    class BrokenSource:
        target_call_sid: str | None = None
        finished = False

        def read_frame(self) -> Frame | None:
            raise RuntimeError("source boom")

    broken_tap: Tap = BrokenTap()
    conf.add_participant(Broken("broken", 300))
    conf.add_participant(WrongSize("wrong", 300))
    conf.add_tap(broken_tap)
    conf.add_source(BrokenSource())
    with caplog.at_level(logging.ERROR, logger="confstream.conference.engine"):
        run(engine, 25)
    assert broken_tap not in conf.taps and not conf.sources
    assert len(tap.inbound) == 25 and len(other_tap.inbound) == 25
    for p in people + other_people:
        lv = levels(p.heard_audio(last=20))
        assert all(lv[f] > PRESENT for f in FREQS if f != p.freq)
    # rate-limited: one line per failing object and kind, not one per tick
    messages = [r.getMessage() for r in caplog.records]
    assert 3 <= len(messages) <= 6, messages


async def test_real_clock_runs_about_25_ticks_in_half_a_second() -> None:
    engine = Engine()
    people, tap = three_party(engine)
    before = sample("confstream_tick_lateness_seconds_count")
    await engine.start()
    await engine.start()  # idempotent
    assert engine.running
    await asyncio.sleep(0.5)
    await engine.stop()
    await engine.stop()
    assert not engine.running
    n = engine.clock_ticks
    assert 15 <= n <= 30, n
    assert len(tap.inbound) == n and len(people[0].heard) == n
    assert tap.timestamps == [20 * i for i in range(n)]
    assert len(engine.lateness_samples) == n
    assert all(x >= 0 for x in engine.lateness_samples)
    assert sample("confstream_tick_lateness_seconds_count") - before >= n  # one per tick
    await asyncio.sleep(0.06)
    assert engine.clock_ticks == n  # really stopped


async def test_clock_skips_ahead_when_far_behind() -> None:
    engine = Engine()
    conf = engine.add_conference("CF")
    tap = RecordingTap()
    conf.add_tap(tap)
    skipped_before = sample("confstream_ticks_skipped_total")
    await engine.start()
    await asyncio.sleep(0.1)
    # A callback that blocks the event loop for 300 ms: ~15 frames missed.
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)
    await asyncio.sleep(0.5)
    await engine.stop()
    skipped = sample("confstream_ticks_skipped_total") - skipped_before
    assert skipped >= 8
    assert conf.skipped == skipped
    jumps = np.diff(tap.timestamps)
    assert jumps.max() >= 20 * 9  # the gap shows in the timeline
    # by construction: anything later than MAX_BEHIND_TICKS + 1 frames is skipped
    assert max(engine.lateness_samples) < (MAX_BEHIND_TICKS + 1) * 0.02


def test_add_tap_mixes_its_own_source_and_remove_tap_stops_it() -> None:
    engine = Engine()
    people, plain_tap = three_party(engine)
    conf = engine.get("CF1")
    assert conf is not None
    returned = QueueSource()
    returned.append(tone(1500, 2.0))
    bidi = RecordingTap(own_source=returned)
    conf.add_tap(bidi)
    conf.add_source(returned)  # idempotent: not mixed twice
    assert conf.sources == [returned]
    run(engine, 10)
    assert levels(people[0].heard_audio(last=10), (1500.0,))[1500.0] > 0.05
    assert levels(bidi.audio("outbound"), (1500.0,))[1500.0] < ABSENT
    # exact: the plain tap's outbound is the bidi tap's outbound plus the returned audio
    diff = plain_tap.outbound[-1].astype(int) - bidi.outbound[-1].astype(int)
    np.testing.assert_array_equal(diff, tone(1500, 2.0)[9 * 160 : 10 * 160])
    conf.remove_tap(bidi)
    assert conf.sources == []
    run(engine, 10)
    assert levels(plain_tap.audio("outbound", last=10), (1500.0,))[1500.0] < ABSENT
