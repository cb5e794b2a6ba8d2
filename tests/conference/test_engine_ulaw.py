"""The engine's µ-law fast path gives exactly what the per-participant path gives.

Two engines get the same participants' audio: in one every participant offers
``read_ulaw``/``write_ulaw``, in the other only ``read_frame``/``write_frame``. What each
participant hears must be bit-identical (compared as µ-law codes), with muted, held, silent and
non-µ-law participants and conferences of different sizes mixed in.
"""

from __future__ import annotations

import numpy as np

from confstream.conference.base import FRAME_SAMPLES, Frame
from confstream.conference.engine import Engine
from confstream.media.g711 import ulaw_decode, ulaw_encode


class Scripted:
    """Plays a scripted sequence of frames; with ``fast`` it also offers the µ-law pair.

    ``kind`` says how a fast participant hands its audio over: ``"codes"`` (µ-law bytes),
    ``"pcm"`` (decoded samples, as for a PCMA caller) or ``"refuse"`` (write_ulaw says no)."""

    def __init__(self, call_sid: str, script: list[Frame | None], fast: bool, kind: str) -> None:
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self.script = script
        self.kind = kind
        self.n = 0
        self.heard: list[bytes] = []
        self.paths: list[str] = []
        if fast:
            self.read_ulaw = self._read_ulaw
            self.write_ulaw = self._write_ulaw

    def _next(self) -> Frame | None:
        frame = self.script[self.n % len(self.script)]
        self.n += 1
        return frame

    def read_frame(self) -> Frame | None:
        return self._next()

    def _read_ulaw(self) -> bytes | Frame | None:
        frame = self._next()
        if frame is None or self.kind == "pcm":
            return frame
        return ulaw_encode(frame).tobytes()

    def write_frame(self, frame: Frame) -> None:
        assert frame.shape == (FRAME_SAMPLES,)
        self.heard.append(ulaw_encode(frame).tobytes())
        self.paths.append("frame")

    def _write_ulaw(self, codes: bytes) -> bool:
        assert len(codes) == FRAME_SAMPLES
        if self.kind == "refuse":
            return False
        self.heard.append(codes)
        self.paths.append("ulaw")
        return True

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        pass

    def hangup(self, reason: str) -> None:
        pass


def _scripts(rng: np.random.Generator, count: int) -> list[list[Frame | None]]:
    scripts: list[list[Frame | None]] = []
    for i in range(count):
        frames: list[Frame | None] = []
        for k in range(12):
            if (i + k) % 7 == 3:
                frames.append(None)
            else:
                loud = 30000 if i % 5 == 0 else 9000  # some sums clip
                pcm = rng.integers(-loud, loud, FRAME_SAMPLES).astype(np.int16)
                # What arrives over PCMU is already µ-law quantised.
                frames.append(ulaw_decode(ulaw_encode(pcm)))
        scripts.append(frames)
    return scripts


def _reference(people: list[Scripted], sizes: list[int], tick: int) -> list[bytes]:
    """What each participant must hear at ``tick`` (no membership change yet), from scratch."""
    out: list[bytes] = []
    i = 0
    for size in sizes:
        group = people[i : i + size]
        rows = []
        for p in group:
            frame = p.script[tick % len(p.script)]
            if frame is None or p.muted or p.hold:
                rows.append(np.zeros(FRAME_SAMPLES, np.int32))
            else:
                rows.append(frame.astype(np.int32))
        total = np.sum(rows, axis=0)
        for p, row in zip(group, rows, strict=True):
            heard = np.zeros(FRAME_SAMPLES, np.int32) if p.hold else total - row
            out.append(ulaw_encode(np.clip(heard, -32768, 32767).astype(np.int16)).tobytes())
        i += size
    return out


SIZES = [3, 10, 1, 10, 4, 10, 3]  # uneven, with repeats, in no particular order


def _build(fast: bool, scripts: list[list[Frame | None]]) -> tuple[Engine, list[Scripted]]:
    engine = Engine()
    sizes = SIZES
    people: list[Scripted] = []
    i = 0
    for c, size in enumerate(sizes):
        conf = engine.add_conference(f"CF{c}")
        for _ in range(size):
            kind = "pcm" if i % 9 == 4 else "refuse" if i % 11 == 6 else "codes"
            p = Scripted(f"CA{i}", scripts[i], fast, kind)
            p.muted = i % 8 == 2
            p.hold = i % 13 == 5
            conf.add_participant(p)
            people.append(p)
            i += 1
    engine.add_conference("CF-empty")
    return engine, people


def test_fast_path_is_bit_identical_to_the_frame_path() -> None:
    rng = np.random.default_rng(5)
    scripts = _scripts(rng, 41)
    fast_engine, fast = _build(True, scripts)
    slow_engine, slow = _build(False, scripts)
    for tick in range(30):
        if tick == 15:  # membership change mid-call: layout rebuilt
            for engine in (fast_engine, slow_engine):
                conf = engine.get("CF1")
                assert conf is not None
                conf.remove_participant("CA5")
        fast_engine.tick()
        slow_engine.tick()
    for tick in range(15):
        expected = _reference(fast, SIZES, tick)
        assert [p.heard[tick] for p in fast] == expected, tick
    for f, s in zip(fast, slow, strict=True):
        assert len(f.heard) == len(s.heard) > 0
        assert f.heard == s.heard, f.call_sid
        assert set(s.paths) == {"frame"}
        if f.kind != "refuse":
            assert set(f.paths) == {"ulaw"}
    # Someone heard something loud enough to clip, and held participants heard silence.
    assert any(max(ulaw_decode(b).max() for b in p.heard) >= 32000 for p in fast)
    held = [p for p in fast if p.hold]
    assert held
    assert all(not ulaw_decode(b).any() for p in held for b in p.heard)


def test_a_failing_fast_participant_is_silent_and_others_carry_on() -> None:
    engine = Engine()
    conf = engine.add_conference("CF")
    good = Scripted("CA1", [np.full(FRAME_SAMPLES, 1000, np.int16)], True, "codes")
    other = Scripted("CA3", [None], True, "codes")
    bad = Scripted("CA2", [None], True, "codes")

    def wrong_size() -> bytes:
        return b"\xff" * 10

    bad.read_ulaw = wrong_size
    for p in (good, bad, other):
        conf.add_participant(p)
    engine.tick()
    heard = ulaw_decode(other.heard[-1])
    assert abs(int(np.median(heard)) - 1000) < 40  # good is heard, bad adds nothing
