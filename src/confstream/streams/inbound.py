"""Limits on what a receiver sends back on a stream, sans I/O (docs/protocol.md, "Limits on
what receivers send").

A receiver's messages cost the server memory and event-loop time, which the 20 ms mixer shares
with every conference; these bounds keep one receiver from taking more than its share. The
session (:mod:`confstream.streams.session`) applies them; the numbers come from settings
(docs/operations.md):

* Message size: at most ``stream_max_message_bytes`` (64 KiB) per message, enforced by the
  WebSocket layer (over it: close 1009, error 31924). A ``media`` message of 64 KiB carries
  about 48 KiB of audio: 6 s of PCMU/PCMA, 3 s of L16, 1 s of L16@24000h.
* Message rate: :class:`MessageRate`, a token bucket of ``stream_inbound_burst`` (1000) messages
  refilled at ``stream_inbound_rate`` (200) per second. A message that finds it empty stops the
  stream (close 1008, error 31924). Real time in 20 ms chunks is 50 messages/s, so a receiver
  may send four times faster than real time for as long as it likes, and 1000 messages at once.
* Returned audio: at most ``stream_return_audio_max_seconds`` (10 s) waiting to be played; what
  does not fit is dropped (the newest part) and counted, the stream goes on.
* Marks: at most ``stream_max_pending_marks`` (1000) waiting for their audio to play; further
  marks are dropped (never echoed) and counted. Mark names longer than :data:`MAX_MARK_NAME`
  characters are refused as malformed (:func:`confstream.streams.protocol.parse_inbound`).
* DTMF to the conference: :class:`DtmfBacklog`, at most :data:`MAX_DTMF_BACKLOG_S` seconds of
  digits waiting to be played; further digits are dropped and counted.

Nothing here touches sockets, clocks or metrics: the caller passes the time and counts.
"""

from __future__ import annotations

#: Longest mark name accepted, in characters.
MAX_MARK_NAME = 256
#: Seconds of DTMF a receiver may have waiting to be played to the participants.
MAX_DTMF_BACKLOG_S = 5.0

_EPSILON = 1e-9  # float sums of refills and durations must not lose a whole token or digit


class MessageRate:
    """Token bucket: ``burst`` messages at once, refilled at ``rate`` per second.

    :meth:`take` spends one token at time ``now`` (seconds, any monotonic origin) and returns
    False, spending nothing, when none is left."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0 - _EPSILON:
            return False
        self._tokens = max(0.0, self._tokens - 1.0)
        return True


class DtmfBacklog:
    """How much DTMF a receiver has queued for the participants: each digit plays for its
    duration after the previous one ends. :meth:`offer` accepts a digit at time ``now`` when the
    backlog stays within ``max_seconds`` (default :data:`MAX_DTMF_BACKLOG_S`)."""

    def __init__(self, max_seconds: float = MAX_DTMF_BACKLOG_S) -> None:
        self.max_seconds = max_seconds
        self._busy_until = 0.0

    def offer(self, now: float, duration_ms: int) -> bool:
        end = max(self._busy_until, now) + duration_ms / 1000
        if end - now > self.max_seconds + _EPSILON:
            return False
        self._busy_until = end
        return True


__all__ = ["MAX_DTMF_BACKLOG_S", "MAX_MARK_NAME", "DtmfBacklog", "MessageRate"]
