"""The words of Conference Streams, defined once (docs/api.md, docs/protocol.md).

* :class:`Track` — the ``Track`` request parameter, also the ``StreamTrack`` callback
  parameter: ``inbound_track`` | ``outbound_track`` | ``both_tracks`` (default).
* :class:`MediaTrack` — the ``media.track`` of a message and the ``start.tracks`` entries:
  ``inbound`` | ``outbound`` (see "Tracks" in docs/protocol.md). ``both_tracks`` streams send
  ``inbound`` first.
* :class:`~confstream.media.codecs.StreamCodec` — ``PCMU`` (default) | ``PCMA`` | ``L16`` |
  ``L16@16000h`` | ``L16@24000h``, with rates and frame sizes (defined in
  :mod:`confstream.media.codecs`, re-exported here).
* :class:`CallbackMethod` — ``StatusCallbackMethod``: ``GET`` | ``POST`` (default).

Every member is a ``str`` whose value is the exact text on the API, on the wire and in the
records.
"""

from __future__ import annotations

from enum import StrEnum

from confstream.media.codecs import StreamCodec


class MediaTrack(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Track(StrEnum):
    INBOUND = "inbound_track"
    OUTBOUND = "outbound_track"
    BOTH = "both_tracks"

    @property
    def media_tracks(self) -> tuple[MediaTrack, ...]:
        """The ``start.tracks`` list: the media tracks this option streams, in wire order."""
        return _MEDIA_TRACKS[self]


_MEDIA_TRACKS: dict[Track, tuple[MediaTrack, ...]] = {
    Track.INBOUND: (MediaTrack.INBOUND,),
    Track.OUTBOUND: (MediaTrack.OUTBOUND,),
    Track.BOTH: (MediaTrack.INBOUND, MediaTrack.OUTBOUND),
}


class CallbackMethod(StrEnum):
    GET = "GET"
    POST = "POST"


#: Defaults of the optional request parameters.
DEFAULT_TRACK = Track.BOTH
DEFAULT_CODEC = StreamCodec.PCMU
DEFAULT_CALLBACK_METHOD = CallbackMethod.POST

__all__ = [
    "DEFAULT_CALLBACK_METHOD",
    "DEFAULT_CODEC",
    "DEFAULT_TRACK",
    "CallbackMethod",
    "MediaTrack",
    "StreamCodec",
    "Track",
]
