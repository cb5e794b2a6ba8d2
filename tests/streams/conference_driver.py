"""A conference for stream tests: a 20 ms clock feeding taps with a tone.

Stand-in until the real engine is wired in: it mixes the same way the engine's seams describe
(inbound = participants' tone; outbound = inbound + platform sources minus the tap's own
source) and records what it was asked to do (dtmf sent to participants).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from confstream.conference.base import FRAME_SAMPLES, AudioSource, Frame, Tap


class _Engine:
    def __init__(self, conf: ToneConference) -> None:
        self.conf = conf

    def get(self, sid: str) -> ToneConference | None:
        return self.conf if sid == self.conf.sid else None


class ToneConference:
    inbound_hz = 440.0

    def __init__(self) -> None:
        self.sid = str(uuid.uuid4())
        self.engine = _Engine(self)
        self.taps: list[Tap] = []
        self.sources: list[AudioSource] = []
        self.dtmf_sent: list[tuple[str, int]] = []
        self.heard: list[Frame] = []  # what a participant hears: platform audio (sources)
        self.ticks = 0
        self._phase = 0

    # seams used by the stream session
    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)
        if tap.own_source is not None:
            self.sources.append(tap.own_source)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
        if tap.own_source is not None and tap.own_source in self.sources:
            self.sources.remove(tap.own_source)

    def add_source(self, src: AudioSource) -> None:
        self.sources.append(src)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf_sent.append((digit, duration_ms))

    # test controls
    def press(self, call_sid: str, digit: str, duration_ms: int) -> None:
        for tap in list(self.taps):
            tap.on_dtmf(call_sid, digit, duration_ms)

    def _tone(self) -> Frame:
        n = np.arange(self._phase, self._phase + FRAME_SAMPLES)
        self._phase += FRAME_SAMPLES
        return (np.sin(2 * np.pi * self.inbound_hz * n / 8000) * 8000).astype(np.int16)

    def tick(self) -> None:
        inbound = self._tone()
        platform: dict[int, Frame] = {}
        for src in list(self.sources):
            f = src.read_frame()
            if f is not None:
                platform[id(src)] = f.astype(np.int16)
        total = inbound.astype(np.int32)
        for f in platform.values():
            total = total + f
        self.heard.append(np.clip(total - inbound, -32768, 32767).astype(np.int16))
        ts = self.ticks * 20
        for tap in list(self.taps):
            out = total
            own = tap.own_source
            if own is not None and id(own) in platform:
                out = total - platform[id(own)]
            tap.on_frame(inbound, np.clip(out, -32768, 32767).astype(np.int16), ts)
        self.ticks += 1

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[ToneConference]:
        conf = cls()
        loop = asyncio.get_running_loop()

        async def clock() -> Any:
            start = loop.time()
            while True:
                conf.tick()
                nxt = start + conf.ticks * 0.02
                await asyncio.sleep(max(0.0, nxt - loop.time()))

        task = asyncio.create_task(clock())
        try:
            yield conf
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
