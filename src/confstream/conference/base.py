"""The seams of the conference engine: what plugs into a conference.

The engine mixes at 8 kHz, 16-bit signed mono, in 20 ms frames of 160 samples. Everything that
feeds audio in or takes audio out speaks in such frames (``numpy.int16`` arrays of length 160).

* A :class:`Participant` is a member of the conference (a SIP caller, later other kinds). Each
  tick the engine calls :meth:`Participant.read_frame` once and then
  :meth:`Participant.write_frame` once with that participant's mix-minus (everyone else plus
  platform audio). Both calls must return at once: they are on the 20 ms clock.
* An :class:`AudioSource` is audio the platform plays in (an announcement, audio returned by a
  bidirectional stream). It is heard by participants and appears on the ``outbound`` track but
  never on ``inbound``. A source may be aimed at one participant only (``target_call_sid``).
* A :class:`Tap` receives, once per tick, the conference's ``inbound`` mix (participants, not
  muted, not on hold) and ``outbound`` mix (inbound + platform audio, minus the tap's own
  returned audio when ``own_source`` is set), plus DTMF events. Stream sessions are taps.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160

Frame = npt.NDArray[np.int16]


class Participant(Protocol):
    call_sid: str
    muted: bool
    hold: bool

    def read_frame(self) -> Frame | None:
        """The participant's next 20 ms of audio, or None for silence. Never blocks."""
        ...

    def write_frame(self, frame: Frame) -> None:
        """What the participant hears this tick (its mix-minus). Never blocks."""
        ...

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Play a DTMF digit to this participant (RFC 4733 for SIP callers)."""
        ...

    def hangup(self, reason: str) -> None:
        """Ask the participant to leave (REST delete, conference end). Never blocks."""
        ...


class AudioSource(Protocol):
    #: None: heard by the whole conference; a CallSid: heard by that participant only.
    target_call_sid: str | None

    def read_frame(self) -> Frame | None:
        """The next 20 ms of platform audio, or None when there is nothing to play now."""
        ...

    @property
    def finished(self) -> bool:
        """True once the source has nothing more to play; the engine then drops it."""
        ...


@runtime_checkable
class Tap(Protocol):
    #: The tap's own returned audio (bidirectional stream), subtracted from its outbound mix.
    own_source: AudioSource | None

    def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
        """Called once per tick with the conference's mixes. Never blocks."""
        ...

    def on_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """A participant pressed a key (RFC 4733 end event)."""
        ...
