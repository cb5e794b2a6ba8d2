"""Call taps: one caller's own audio (inbound) and what it hears (outbound), following the
CallSid between engine conferences (docs/protocol.md, "Call streams")."""

from __future__ import annotations

import numpy as np

from confstream.conference.base import Frame
from confstream.conference.engine import Engine
from confstream.conference.sources import QueueSource
from confstream.media.analysis import tone, tone_levels
from confstream.media.g711 import ulaw_encode
from confstream.tools.participants import RecordingTap, ToneParticipant

FREQS = (440.0, 660.0, 880.0, 1200.0)
PRESENT = 0.15
ABSENT = 0.01


def run(engine: Engine, ticks: int) -> None:
    for _ in range(ticks):
        engine.tick()


def levels(pcm: Frame) -> dict[float, float]:
    return tone_levels(pcm, FREQS)


class UlawTone(ToneParticipant):
    """A tone participant on the engine's µ-law fast path (reads codes, not samples)."""

    def read_ulaw(self) -> bytes | Frame | None:
        frame = self.read_frame()
        return None if frame is None else ulaw_encode(frame).tobytes()


def room(engine: Engine, sid: str, *people: ToneParticipant) -> None:
    conf = engine.add_conference(sid)
    for p in people:
        conf.add_participant(p)


def test_inbound_is_the_caller_and_outbound_what_it_hears() -> None:
    engine = Engine()
    a, b, c = UlawTone("A", 440.0), ToneParticipant("B", 660.0), ToneParticipant("C", 880.0)
    room(engine, "CF", a, b, c)
    tap = RecordingTap()
    engine.call_media("A").add_tap(tap)
    run(engine, 25)
    said, heard = levels(tap.audio("inbound", last=20)), levels(tap.audio("outbound", last=20))
    assert said[440.0] > 0.9 and said[660.0] < ABSENT and said[880.0] < ABSENT, said
    assert heard[440.0] < ABSENT and heard[660.0] > PRESENT and heard[880.0] > PRESENT, heard
    # outbound is exactly what A was sent
    np.testing.assert_array_equal(tap.outbound[-1], a.heard[-1])
    assert tap.timestamps[:3] == [0, 20, 40]
    assert all(not f.flags.writeable for f in (*tap.inbound, *tap.outbound))
    # the others' taps are untouched: no conference tap was added
    assert engine.get("CF") is not None and engine.get("CF").taps == []  # type: ignore[union-attr]


def test_muted_or_held_caller_still_heard_on_its_own_inbound() -> None:
    engine = Engine()
    a, b = UlawTone("A", 440.0), ToneParticipant("B", 660.0)
    room(engine, "CF", a, b)
    tap = RecordingTap()
    engine.add_call_tap("A", tap)
    a.muted = True
    run(engine, 20)
    assert levels(tap.audio("inbound", last=15))[440.0] > 0.9
    assert levels(b.heard_audio(last=15))[440.0] < ABSENT  # the conference does not hear it
    a.muted, a.hold = False, True
    run(engine, 20)
    assert levels(tap.audio("inbound", last=15))[440.0] > 0.9
    assert not np.any(tap.audio("outbound", last=15))  # on hold it hears silence


def test_tap_follows_the_call_between_conferences() -> None:
    engine = Engine()
    a, b, c = ToneParticipant("A", 440.0), ToneParticipant("B", 660.0), ToneParticipant("C", 880.0)
    room(engine, "solo-A", a)
    room(engine, "CF", b, c)
    tap = RecordingTap()
    engine.call_media("A").add_tap(tap)
    run(engine, 20)
    assert not np.any(tap.audio("outbound", last=15))  # alone: hears nothing
    solo = engine.get("solo-A")
    assert solo is not None
    solo.remove_participant("A")
    engine.tick()  # mixed nowhere: nothing delivered
    assert len(tap.inbound) == 20
    conf = engine.get("CF")
    assert conf is not None
    conf.add_participant(a)
    run(engine, 25)
    heard = levels(tap.audio("outbound", last=20))
    assert heard[660.0] > PRESENT and heard[880.0] > PRESENT and heard[440.0] < ABSENT
    assert levels(tap.audio("inbound", last=20))[440.0] > 0.9
    # one timeline across the move, with a gap for the tick mixed nowhere
    assert tap.timestamps[19:22] == [380, 420, 440]


def test_returned_audio_is_heard_by_that_caller_only_and_kept_off_its_outbound() -> None:
    engine = Engine()
    a, b = ToneParticipant("A", 440.0), ToneParticipant("B", 660.0)
    room(engine, "CF", a, b)
    returned = QueueSource(target_call_sid="A")
    returned.append(tone(1200.0, 1.0, amplitude=8000))
    tap = RecordingTap(own_source=returned)
    engine.call_media("A").add_tap(tap)
    other = RecordingTap()
    conf = engine.get("CF")
    assert conf is not None
    conf.add_tap(other)
    run(engine, 30)
    assert levels(a.heard_audio(last=20))[1200.0] > PRESENT
    assert levels(b.heard_audio(last=20))[1200.0] < ABSENT
    out = levels(tap.audio("outbound", last=20))
    assert out[1200.0] < ABSENT and out[660.0] > 0.9, out
    assert levels(other.audio("outbound", last=20))[1200.0] < ABSENT  # targeted: not the room's
    # nothing is read while the call is mixed nowhere
    conf.remove_participant("A")
    played = returned.played_samples
    run(engine, 5)
    assert returned.played_samples == played


def test_dtmf_and_send_dtmf_reach_only_that_call() -> None:
    engine = Engine()
    a, b = ToneParticipant("A", 440.0), ToneParticipant("B", 660.0)
    room(engine, "CF", a, b)
    tap = RecordingTap()
    media = engine.call_media("A")
    media.add_tap(tap)
    engine.emit_call_dtmf("A", "5", 160)
    engine.emit_call_dtmf("B", "7", 160)
    assert tap.dtmf == [("A", "5", 160)]
    media.send_dtmf("9", 200)
    assert a.dtmf == [("9", 200)] and b.dtmf == []
    media.remove_tap(tap)
    engine.tick()
    assert tap.inbound == [] and engine.call_taps("A") == []
    engine.call_media("nobody").send_dtmf("1", 100)  # mixed nowhere: nothing happens


def test_failing_call_tap_is_dropped_alone() -> None:
    engine = Engine()
    a, b = ToneParticipant("A", 440.0), ToneParticipant("B", 660.0)
    room(engine, "CF", a, b)

    class Broken(RecordingTap):
        def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
            raise RuntimeError("boom")

    good = RecordingTap()
    engine.add_call_tap("A", Broken())
    engine.add_call_tap("A", good)
    run(engine, 3)
    assert len(good.inbound) == 3 and len(engine.call_taps("A")) == 1
    assert len(a.heard) == 3 and len(b.heard) == 3
