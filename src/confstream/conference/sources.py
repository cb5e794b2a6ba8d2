"""Platform audio sources: what the platform plays into a conference.

* :class:`BufferSource` plays one buffer once (an announcement) and then reports ``finished``.
* :class:`QueueSource` is fed audio of any length at any time (the audio a bidirectional stream
  returns), plays it at real time (one 20 ms frame per tick), counts what has played, and
  reports *marks*: a mark added after some audio fires once all the audio queued before it has
  been played (read by the mixer).
* :class:`LoopSource` plays one buffer over and over until stopped (the wait audio of a
  conference that has not started, docs/voice.md).

:func:`beep` makes the join/leave beeps (``<Conference beep>``). Twilio does not document what
its beeps sound like; confstream's are short sine tones, different for entering and leaving so
a listener (and a test) can tell them apart: **enter** 1000 Hz, **exit** 700 Hz, each
:data:`BEEP_SECONDS` (250 ms) at amplitude :data:`BEEP_AMPLITUDE` (6000, about -15 dBFS), with
10 ms raised-cosine fades so they do not click.

Both hand the engine fresh int16 frames of 160 samples (the last partial frame padded with
silence) and run on the event loop's thread, like the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from confstream.conference.base import FRAME_SAMPLES

Frame = npt.NDArray[np.int16]


#: Beep tones (see the module docstring).
BEEP_ENTER_HZ = 1000.0
BEEP_EXIT_HZ = 700.0
BEEP_SECONDS = 0.25
BEEP_AMPLITUDE = 6000
BEEP_FADE_SECONDS = 0.01


def beep(kind: str) -> Frame:
    """The ``enter`` or ``exit`` beep as int16 8 kHz samples (a fresh array)."""
    if kind not in ("enter", "exit"):
        raise ValueError(f"beep kind must be enter or exit, not {kind!r}")
    freq = BEEP_ENTER_HZ if kind == "enter" else BEEP_EXIT_HZ
    n = round(BEEP_SECONDS * 8000)
    t = np.arange(n, dtype=np.float64) / 8000
    envelope = np.ones(n)
    fade = round(BEEP_FADE_SECONDS * 8000)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    envelope[:fade] = ramp
    envelope[n - fade :] = ramp[::-1]
    wave = BEEP_AMPLITUDE * envelope * np.sin(2 * np.pi * freq * t)
    out: Frame = np.rint(wave).astype(np.int16)
    return out


class BufferSource:
    """Plays ``pcm`` (int16, 8 kHz, any length) once.

    ``target_call_sid`` None: the whole conference hears it; otherwise only that participant.
    """

    def __init__(self, pcm: npt.ArrayLike, target_call_sid: str | None = None) -> None:
        self.target_call_sid = target_call_sid
        self._pcm = np.array(pcm, dtype=np.int16).ravel()  # private copy
        self._pos = 0
        self._stopped = False

    @property
    def played_samples(self) -> int:
        return self._pos

    @property
    def duration_samples(self) -> int:
        return int(self._pcm.size)

    @property
    def finished(self) -> bool:
        return self._stopped or self._pos >= self._pcm.size

    def stop(self) -> None:
        """Stop playing; the engine drops the source at its next tick."""
        self._stopped = True

    def read_frame(self) -> Frame | None:
        if self.finished:
            return None
        chunk = self._pcm[self._pos : self._pos + FRAME_SAMPLES]
        self._pos += chunk.size
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame[: chunk.size] = chunk
        return frame


class LoopSource:
    """Plays ``pcm`` (int16, 8 kHz, at least one sample) again and again until :meth:`stop`.

    Each frame is cut from the buffer with one ``np.take`` of wrapped indices, so a buffer
    shorter than a frame loops within the frame too. ``target_call_sid`` as for
    :class:`BufferSource`.
    """

    def __init__(self, pcm: npt.ArrayLike, target_call_sid: str | None = None) -> None:
        self.target_call_sid = target_call_sid
        self._pcm = np.array(pcm, dtype=np.int16).ravel()
        if self._pcm.size == 0:
            raise ValueError("a looping source needs at least one sample")
        self._pos = 0
        self._stopped = False
        self._steps = np.arange(FRAME_SAMPLES)

    @property
    def finished(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Stop playing; the engine drops the source at its next tick."""
        self._stopped = True

    def read_frame(self) -> Frame | None:
        if self._stopped:
            return None
        frame: Frame = np.take(self._pcm, self._pos + self._steps, mode="wrap")
        self._pos = (self._pos + FRAME_SAMPLES) % self._pcm.size
        return frame


class QueueSource:
    """A FIFO of int16 8 kHz audio, played one frame per tick, with marks.

    * :meth:`append` queues audio of any length (copied);
    * :meth:`add_mark` records a mark at the current end of the queue; it fires (``on_mark``
      is called with its name, or, without a callback, it is collected for
      :meth:`take_played_marks`) as soon as every sample queued before it has been read by the
      mixer — at once when nothing is queued;
    * :meth:`clear` drops queued audio; the marks not yet played fire at once, in order (a
      bidirectional stream echoes them, as Twilio does), and their names are also returned;
    * :attr:`played_samples` / :attr:`queued_samples` tell how much has played / is waiting.

    When the queue is empty :meth:`read_frame` returns None (nothing mixed). ``on_mark`` runs on
    the mixer clock and must not block. :meth:`close` ends the source (the engine drops it).
    ``max_samples`` (default None: unbounded) caps the queue: :meth:`append` then keeps only
    what fits and returns the number of samples dropped, so a misbehaving peer cannot use
    unbounded memory.
    """

    def __init__(
        self,
        target_call_sid: str | None = None,
        on_mark: Callable[[str], None] | None = None,
        max_samples: int | None = None,
    ) -> None:
        self.target_call_sid = target_call_sid
        self.on_mark = on_mark
        self.max_samples = max_samples
        self._chunks: deque[Frame] = deque()
        self._head = 0  # samples already read from _chunks[0]
        self._queued = 0
        self._appended = 0  # total samples ever accepted
        self._played = 0
        self._marks: deque[tuple[int, str]] = deque()  # (position in _appended, name)
        self._played_marks: list[str] = []
        self._closed = False

    @property
    def played_samples(self) -> int:
        """Samples read by the mixer so far (partial last frames count their real samples)."""
        return self._played

    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def pending_marks(self) -> list[str]:
        return [name for _, name in self._marks]

    @property
    def finished(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def append(self, pcm: npt.ArrayLike) -> int:
        """Queue audio; returns how many samples were dropped by ``max_samples`` (usually 0)."""
        data = np.array(pcm, dtype=np.int16).ravel()
        dropped = 0
        if self.max_samples is not None:
            room = max(self.max_samples - self._queued, 0)
            if data.size > room:
                dropped = data.size - room
                data = data[:room]
        if data.size:
            self._chunks.append(data)
            self._queued += data.size
            self._appended += data.size
        return dropped

    def add_mark(self, name: str) -> None:
        self._marks.append((self._appended, name))
        self._fire_marks()

    def take_played_marks(self) -> list[str]:
        """Marks played so far (when there is no ``on_mark`` callback), oldest first."""
        marks, self._played_marks = self._played_marks, []
        return marks

    def clear(self) -> list[str]:
        """Drop queued audio and fire every pending mark now; returns their names, in order."""
        self._chunks.clear()
        self._head = 0
        self._queued = 0
        self._appended = self._played
        pending = [name for _, name in self._marks]
        self._marks = deque((self._played, name) for name in pending)
        self._fire_marks()
        return pending

    # Names used by the stream session.
    push = append
    mark = add_mark

    def read_frame(self) -> Frame | None:
        if self._queued == 0:
            self._fire_marks()
            return None
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._chunks:
            chunk = self._chunks[0]
            take = min(FRAME_SAMPLES - filled, chunk.size - self._head)
            frame[filled : filled + take] = chunk[self._head : self._head + take]
            filled += take
            self._head += take
            if self._head >= chunk.size:
                self._chunks.popleft()
                self._head = 0
        self._queued -= filled
        self._played += filled
        self._fire_marks()
        return frame

    def _fire_marks(self) -> None:
        while self._marks and self._marks[0][0] <= self._played:
            _, name = self._marks.popleft()
            if self.on_mark is not None:
                self.on_mark(name)
            else:
                self._played_marks.append(name)
