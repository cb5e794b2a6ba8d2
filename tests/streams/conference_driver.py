"""A live conference for stream tests: the real Engine (its 20 ms clock and mixer) with
in-process participants, one of them playing a tone."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import numpy as np

from confstream.conference.base import FRAME_SAMPLES, Frame
from confstream.conference.engine import ConferenceMedia, Engine


class ToneParticipant:
    """Plays a sine tone (or silence with ``hz=0``); records what it hears and DTMF sent."""

    def __init__(self, hz: float, amplitude: int = 8000) -> None:
        self.call_sid = str(uuid.uuid4())
        self.muted = False
        self.hold = False
        self.hz = hz
        self.amplitude = amplitude
        self._n = 0
        self.heard: list[Frame] = []
        self.dtmf: list[tuple[str, int]] = []

    def read_frame(self) -> Frame | None:
        if not self.hz:
            return None
        n = np.arange(self._n, self._n + FRAME_SAMPLES)
        self._n += FRAME_SAMPLES
        return (np.sin(2 * np.pi * self.hz * n / 8000) * self.amplitude).astype(np.int16)

    def write_frame(self, frame: Frame) -> None:
        self.heard.append(frame)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf.append((digit, duration_ms))

    def hangup(self, reason: str) -> None:
        pass


class ToneConference:
    """One conference in a running Engine: ``talker`` plays :attr:`inbound_hz`, ``listener`` is
    silent (it hears platform audio plus the talker)."""

    inbound_hz = 440.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sid = str(uuid.uuid4())
        self.media: ConferenceMedia = engine.add_conference(self.sid)
        self.talker = ToneParticipant(self.inbound_hz)
        self.listener = ToneParticipant(0)
        self.media.add_participant(self.talker)
        self.media.add_participant(self.listener)

    @property
    def ticks(self) -> int:
        return self.media.ticks

    def press(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """A participant pressed a key (what the SIP edge reports)."""
        self.media.emit_dtmf(call_sid, digit, duration_ms)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[ToneConference]:
        engine = Engine()
        await engine.start()
        try:
            yield cls(engine)
        finally:
            await engine.stop()
