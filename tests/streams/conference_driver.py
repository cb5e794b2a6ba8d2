"""A live conference for stream tests: the real Engine (its 20 ms clock and mixer) with
in-process participants (:mod:`confstream.tools.participants`), one of them playing a tone."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from confstream.conference.engine import ConferenceMedia, Engine
from confstream.tools.participants import ToneParticipant


class ToneConference:
    """One conference in a running Engine: ``talker`` plays :attr:`inbound_hz`, ``listener`` is
    silent (it hears platform audio plus the talker)."""

    inbound_hz = 440.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sid = str(uuid.uuid4())
        self.media: ConferenceMedia = engine.add_conference(self.sid)
        self.talker = ToneParticipant(None, self.inbound_hz, amplitude=8000)
        self.listener = ToneParticipant(None, None)
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
