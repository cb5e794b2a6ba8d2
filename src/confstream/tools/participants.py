"""In-process members of a conference for tests and measurements: real objects that plug into
the engine's seams (:mod:`confstream.conference.base`), no sockets.

* :class:`ToneParticipant` is a :class:`~confstream.conference.base.Participant` that plays a
  continuous sine tone (phase-continuous across frames) or silence, and records what it hears,
  the DTMF played to it and the hang-up reasons.
* :class:`RecordingTap` is a :class:`~confstream.conference.base.Tap` that records every tick's
  ``inbound`` and ``outbound`` mixes, their timestamps and DTMF events.

Both record without bound: they are for short, bounded runs (tests), not for services.
"""

from __future__ import annotations

import uuid

import numpy as np
import numpy.typing as npt

from confstream.conference.base import FRAME_SAMPLES, SAMPLE_RATE, AudioSource, Frame
from confstream.media.analysis import tone

#: Default tone amplitude: 6000 (peak about -14.7 dBFS), so four participants' tones plus a
#: platform tone at 8000 mix without clipping.
TONE_AMPLITUDE = 6000.0


class ToneParticipant:
    """Plays a sine tone of ``freq`` Hz (silence when ``freq`` is None or 0) and records what it
    hears. ``call_sid`` defaults to a new UUID."""

    def __init__(
        self, call_sid: str | None, freq: float | None, amplitude: float = TONE_AMPLITUDE
    ) -> None:
        self.call_sid = call_sid if call_sid is not None else str(uuid.uuid4())
        self.muted = False
        self.hold = False
        self.freq = freq
        self.amplitude = amplitude
        self.sent = 0
        self.heard: list[Frame] = []
        self.dtmf: list[tuple[str, int]] = []
        self.hangups: list[str] = []

    def read_frame(self) -> Frame | None:
        if not self.freq:
            return None
        t0 = self.sent * FRAME_SAMPLES / SAMPLE_RATE
        self.sent += 1
        return tone(
            self.freq,
            FRAME_SAMPLES / SAMPLE_RATE,
            rate=SAMPLE_RATE,
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
        """What it heard (the last ``last`` frames when given), as one array."""
        frames = self.heard if last is None else self.heard[-last:]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


class RecordingTap:
    """Records each tick's mixes and timestamps, and DTMF events; ``own_source`` is the tap's
    returned audio, subtracted from its outbound mix (docs/protocol.md: tracks)."""

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
        """The ``"inbound"`` or ``"outbound"`` track (the last ``last`` frames when given)."""
        frames = self.inbound if track == "inbound" else self.outbound
        frames = frames if last is None else frames[-last:]
        return np.concatenate(frames)
