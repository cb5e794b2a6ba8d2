"""Media payloads encoded once per source, codec and track each tick, for every stream.

Several streams on one conference (transcription + recording + analytics, docs/protocol.md)
carry the same audio: every tap of a conference gets the same ``inbound`` and ``outbound``
frames each tick (a call's taps the same ``said`` and ``heard``). :class:`SharedPayloads`
encodes such a frame and base64-encodes it once; every other stream with the same codec and
track reuses the bytes (docs/benchmarks.md, "History").

A :class:`SharedPayloads` is taken with :func:`acquire` when a stream attaches and given back
with :func:`release` when it detaches; the last release forgets it, so a later stream starts
with a fresh encoder (the resampling codecs keep 10 ms of state). A stream that joins while
others run shares their encoder's state: its first frame's resampler context is the audio
before it instead of silence.

The tick is identified by the frame's timestamp: the first stream to ask for a timestamp
encodes, the others get the cached bytes when they pass the same frame (the engine passes
the very same array object; an equal array is accepted too). A different frame at a cached
timestamp is not this source's shared audio (a bidirectional stream's outbound has its own
returned audio removed): :meth:`SharedPayloads.encode` returns None and the stream encodes it
with its own encoder.
"""

from __future__ import annotations

import base64

import numpy as np

from confstream.conference.base import Frame
from confstream.media.codecs import Encoder, StreamCodec, get_encoder
from confstream.streams.vocabulary import MediaTrack

__all__ = ["SharedPayloads", "acquire", "active", "release"]

_b64encode = base64.b64encode


class SharedPayloads:
    """The shared encoder of one (source, codec, track); see the module docstring."""

    __slots__ = ("_b64", "_encoder", "_frame", "_timestamp", "codec", "key", "users")

    def __init__(self, key: tuple[str, StreamCodec, MediaTrack]) -> None:
        self.key = key
        self.codec = key[1]
        self._encoder: Encoder = get_encoder(self.codec)
        self._frame: Frame | None = None
        self._timestamp = -1
        self._b64 = b""
        self.users = 0

    def encode(self, frame: Frame, timestamp_ms: int) -> bytes | None:
        """The base64 payload of ``frame``, the source's frame at ``timestamp_ms``; None when
        another frame was already encoded for that timestamp (see the module docstring)."""
        if timestamp_ms == self._timestamp:
            cached = self._frame
            if frame is cached or np.array_equal(frame, cached):  # type: ignore[arg-type]
                return self._b64
            return None
        b64 = _b64encode(self._encoder.encode(frame))
        self._frame = frame
        self._timestamp = timestamp_ms
        self._b64 = b64
        return b64


_active: dict[tuple[str, StreamCodec, MediaTrack], SharedPayloads] = {}


def acquire(source_sid: str, codec: StreamCodec, track: MediaTrack) -> SharedPayloads:
    """The shared encoder of ``source_sid`` (a ConferenceSid or CallSid) for ``codec`` and
    ``track``, created when no stream holds it; pair every call with :func:`release`."""
    key = (source_sid, codec, track)
    shared = _active.get(key)
    if shared is None:
        shared = _active[key] = SharedPayloads(key)
    shared.users += 1
    return shared


def release(shared: SharedPayloads) -> None:
    """Give back what :func:`acquire` returned; the last user's release forgets it."""
    shared.users -= 1
    if shared.users <= 0 and _active.get(shared.key) is shared:
        del _active[shared.key]


def active() -> int:
    """How many shared encoders are held now (for tests and the memory benchmark)."""
    return len(_active)
