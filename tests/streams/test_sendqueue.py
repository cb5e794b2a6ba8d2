"""The bounded drop-oldest send queue (pure)."""

from __future__ import annotations

import pytest

from confstream.streams.sendqueue import MAX_CONTROL_ITEMS, ControlItem, MediaItem, SendQueue
from confstream.streams.vocabulary import MediaTrack

IN, OUT = MediaTrack.INBOUND, MediaTrack.OUTBOUND


def tick(ts: int, tracks: tuple[MediaTrack, ...] = (IN, OUT)) -> MediaItem:
    return MediaItem(ts, [(t, f"{t}-{ts}".encode()) for t in tracks])


def drain(q: SendQueue) -> list[MediaItem | ControlItem]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_fifo_and_counts() -> None:
    q = SendQueue(3)
    assert q.pop() is None and not q and len(q) == 0
    assert q.push_media(tick(0)) == 0
    assert q.push_control(ControlItem("mark", ("m",)))
    assert q.push_media(tick(20)) == 0
    assert (len(q), q.media_count, q.control_count) == (3, 2, 1)
    items = drain(q)
    assert [type(i).__name__ for i in items] == ["MediaItem", "ControlItem", "MediaItem"]
    assert (q.media_count, q.control_count, q.frames_dropped) == (0, 0, 0)


def test_overflow_drops_the_oldest_tick_and_counts_its_frames() -> None:
    q = SendQueue(3)
    for ts in (0, 20, 40):
        assert q.push_media(tick(ts)) == 0
    assert q.push_media(tick(60)) == 2  # two tracks in the dropped tick
    assert q.push_media(tick(80, (OUT,))) == 2
    assert q.media_count == 3 and q.frames_dropped == 4
    kept = [i.timestamp_ms for i in drain(q) if isinstance(i, MediaItem)]
    assert kept == [40, 60, 80]  # the gap shows in the timestamps


def test_control_items_are_never_dropped_for_audio_and_keep_their_place() -> None:
    q = SendQueue(2)
    q.push_media(tick(0))
    q.push_control(ControlItem("dtmf", ("CA1", "5"), 200))
    q.push_media(tick(20))
    q.push_control(ControlItem("mark", ("m1",)))
    assert q.push_media(tick(40)) == 2  # drops tick 0, which sits before the dtmf
    assert q.push_media(tick(60)) == 2  # drops tick 20, behind the dtmf
    order = [i.timestamp_ms if isinstance(i, MediaItem) else i.kind for i in drain(q)]
    assert order == ["dtmf", "mark", 40, 60]


def test_control_capacity_refuses_beyond_the_limit() -> None:
    q = SendQueue(1, control_capacity=2)
    assert q.push_control(ControlItem("mark", ("a",)))
    assert q.push_control(ControlItem("mark", ("b",)))
    assert not q.push_control(ControlItem("mark", ("c",)))
    assert q.control_count == 2 and q.frames_dropped == 0
    assert q.pop() == ControlItem("mark", ("a",))
    assert q.push_control(ControlItem("mark", ("d",)))
    assert [i.args for i in drain(q) if isinstance(i, ControlItem)] == [("b",), ("d",)]
    assert SendQueue(1).control_capacity == MAX_CONTROL_ITEMS == 1000


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SendQueue(0)
