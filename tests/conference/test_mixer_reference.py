"""The vectorised mixer against a plain per-conference reference, on random layouts."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from confstream.conference.base import Frame
from confstream.conference.engine import Engine
from confstream.conference.sources import BufferSource
from confstream.tools.participants import RecordingTap, ToneParticipant


class RandomParticipant(ToneParticipant):
    def __init__(self, call_sid: str, rng: np.random.Generator) -> None:
        super().__init__(call_sid, None)
        self.rng = rng
        self.last: Frame | None = None

    def read_frame(self) -> Frame | None:
        if self.rng.random() < 0.2:
            self.last = None
        else:
            self.last = self.rng.integers(-20000, 20000, 160).astype(np.int16)
        return self.last


def clip(x: npt.NDArray[np.int64]) -> Frame:
    return np.clip(x, -32768, 32767).astype(np.int16)


def test_random_layouts_match_reference() -> None:
    rng = np.random.default_rng(1234)
    engine = Engine()
    confs = [engine.add_conference(f"CF{c}") for c in range(7)]
    people: dict[str, list[RandomParticipant]] = {c.sid: [] for c in confs}
    taps = {c.sid: RecordingTap() for c in confs}
    for c in confs:
        c.add_tap(taps[c.sid])
    serial = 0
    for _ in range(40):
        # random membership and state changes between ticks
        for c in confs:
            if rng.random() < 0.3:
                p = RandomParticipant(f"P{serial}", rng)
                serial += 1
                c.add_participant(p)
                people[c.sid].append(p)
            if people[c.sid] and rng.random() < 0.15:
                gone = people[c.sid].pop(int(rng.integers(len(people[c.sid]))))
                c.remove_participant(gone.call_sid)
            for p in people[c.sid]:
                p.muted = bool(rng.random() < 0.2)
                p.hold = bool(rng.random() < 0.1)
            if rng.random() < 0.2:
                target = None
                if people[c.sid] and rng.random() < 0.5:
                    target = people[c.sid][0].call_sid
                c.add_source(BufferSource(rng.integers(-9000, 9000, 400), target))
        # what the sources will play this tick (peek without consuming)
        plays: dict[str, list[tuple[str | None, np.ndarray]]] = {}
        for c in confs:
            plays[c.sid] = []
            for s in c.sources:
                assert isinstance(s, BufferSource)
                if not s.finished:
                    pcm = s._pcm[s.played_samples : s.played_samples + 160]
                    frame = np.zeros(160, np.int64)
                    frame[: pcm.size] = pcm
                    plays[c.sid].append((s.target_call_sid, frame))
        engine.tick()
        for c in confs:
            contrib = {
                p.call_sid: (
                    np.zeros(160, np.int64)
                    if p.last is None or p.muted or p.hold
                    else p.last.astype(np.int64)
                )
                for p in people[c.sid]
            }
            inbound = sum(contrib.values(), np.zeros(160, np.int64))
            wide = sum((f for t, f in plays[c.sid] if t is None), np.zeros(160, np.int64))
            np.testing.assert_array_equal(taps[c.sid].inbound[-1], clip(inbound))
            np.testing.assert_array_equal(taps[c.sid].outbound[-1], clip(inbound + wide))
            for p in people[c.sid]:
                aimed = sum(
                    (f for t, f in plays[c.sid] if t == p.call_sid), np.zeros(160, np.int64)
                )
                expected = (
                    np.zeros(160, np.int64)
                    if p.hold
                    else inbound + wide - contrib[p.call_sid] + aimed
                )
                np.testing.assert_array_equal(p.heard[-1], clip(expected))
