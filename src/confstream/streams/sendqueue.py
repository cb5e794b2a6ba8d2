"""A stream's bounded send queue: drops the oldest audio, keeps control messages in order.

Rules (docs/protocol.md, "Slow or broken receivers"):

* The queue holds at most ``media_capacity`` ticks of audio (the session uses
  ``settings.stream_queue_ms / 20``: 1000 ms = 50 ticks by default; each tick is one
  :class:`MediaItem` holding one frame per track). Pushing one more drops the **oldest** tick;
  :meth:`SendQueue.push_media` returns how many frames that was, and the timestamps of later
  frames show the gap.
* ``dtmf`` and ``mark`` messages (:class:`ControlItem`) are kept in order with the audio and
  never dropped to make room for it; at most ``control_capacity`` (default
  :data:`MAX_CONTROL_ITEMS`) may be pending, beyond which new ones are refused.
* :meth:`SendQueue.pop` gives items in the order they were pushed.

Pure and synchronous: no clock, no I/O, no metrics; the caller counts what was dropped. Pushing
is O(1) except when the oldest tick sits behind control items (then O(pending controls)).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from confstream.streams.vocabulary import MediaTrack

MAX_CONTROL_ITEMS = 1000


@dataclass(slots=True)
class MediaItem:
    """One tick of audio: its timestamp and one base64 payload (ASCII bytes) per track."""

    timestamp_ms: int
    payloads: list[tuple[MediaTrack, bytes]]


@dataclass
class ControlItem:
    """A ``dtmf`` (args: call_sid, digit) or ``mark`` (args: name) message to send."""

    kind: Literal["dtmf", "mark"]
    args: tuple[str, ...]
    duration_ms: int = 0


class SendQueue:
    """See the module docstring."""

    def __init__(self, media_capacity: int, control_capacity: int = MAX_CONTROL_ITEMS) -> None:
        if media_capacity < 1:
            raise ValueError("media_capacity must be at least 1")
        self.media_capacity = media_capacity
        self.control_capacity = control_capacity
        self._items: deque[MediaItem | ControlItem] = deque()
        self._media = 0
        self._control = 0
        #: Frames dropped so far (audio only).
        self.frames_dropped = 0

    @property
    def media_count(self) -> int:
        """Ticks of audio queued."""
        return self._media

    @property
    def control_count(self) -> int:
        return self._control

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push_media(self, item: MediaItem) -> int:
        """Queue one tick; when that makes more than ``media_capacity``, drop the oldest tick.
        Returns the number of frames dropped (0 or that tick's payload count)."""
        self._items.append(item)
        self._media += 1
        if self._media <= self.media_capacity:
            return 0
        for i, queued in enumerate(self._items):
            if isinstance(queued, MediaItem):
                del self._items[i]
                self._media -= 1
                n = len(queued.payloads)
                self.frames_dropped += n
                return n
        return 0  # pragma: no cover - unreachable: a media item was just appended

    def push_control(self, item: ControlItem) -> bool:
        """Queue a control message; False (not queued) when ``control_capacity`` are pending."""
        if self._control >= self.control_capacity:
            return False
        self._items.append(item)
        self._control += 1
        return True

    def pop(self) -> MediaItem | ControlItem | None:
        """The oldest item, or None when empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, MediaItem):
            self._media -= 1
        else:
            self._control -= 1
        return item


__all__ = ["MAX_CONTROL_ITEMS", "ControlItem", "MediaItem", "SendQueue"]
