"""In-process participants and taps for engine tests (real objects implementing the seams)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from confstream.conference.base import FRAME_SAMPLES, AudioSource, Frame
from confstream.media.analysis import tone


class ToneParticipant:
    """Plays a continuous tone (or silence with freq None) and records what it hears."""

    def __init__(self, call_sid: str, freq: float | None, amplitude: float = 6000) -> None:
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self.freq = freq
        self.amplitude = amplitude
        self.sent = 0
        self.heard: list[Frame] = []
        self.dtmf: list[tuple[str, int]] = []
        self.hangups: list[str] = []

    def read_frame(self) -> Frame | None:
        if self.freq is None:
            return None
        t0 = self.sent * FRAME_SAMPLES / 8000
        self.sent += 1
        return tone(
            self.freq,
            FRAME_SAMPLES / 8000,
            amplitude=self.amplitude,
            phase=2 * np.pi * self.freq * t0,
        )

    def write_frame(self, frame: Frame) -> None:
        self.heard.append(frame)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf.append((digit, duration_ms))

    def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def heard_audio(self, last: int | None = None) -> npt.NDArray[np.int16]:
        frames = self.heard if last is None else self.heard[-last:]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


class RecordingTap:
    def __init__(self, own_source: AudioSource | None = None) -> None:
        self.own_source = own_source
        self.inbound: list[Frame] = []
        self.outbound: list[Frame] = []
        self.timestamps: list[int] = []
        self.dtmf: list[tuple[str, str, int]] = []

    def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
        self.inbound.append(inbound)
        self.outbound.append(outbound)
        self.timestamps.append(timestamp_ms)

    def on_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        self.dtmf.append((call_sid, digit, duration_ms))

    def audio(self, track: str, last: int | None = None) -> npt.NDArray[np.int16]:
        frames = self.inbound if track == "inbound" else self.outbound
        frames = frames if last is None else frames[-last:]
        return np.concatenate(frames)
