"""DTMF as RFC 4733 telephone-events: payload format, a receiver and a sender. No I/O.

Payload (RFC 4733 §2.3), 4 bytes::

    | event (8) |E|R| volume (6) |        duration (16)          |

* ``duration`` counts timestamp units (8 kHz here) since the event began; every packet of one
  event carries the same RTP timestamp, the event's start.
* The first packet of an event has the RTP marker bit set. Updates follow at the packet
  interval (20 ms) with growing duration; the end packet (E bit) is sent three times
  (§2.5.1.4), each retransmission with a new sequence number but the same timestamp.

:class:`DtmfReceiver` reports each event once, when its first end packet arrives, and ignores
the retransmitted end packets and any later packet with an already reported timestamp.
:class:`DtmfSender` turns a queued digit into that packet sequence, one step per 20 ms tick,
so the session can send it in place of the audio packet of that tick.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from confstream.rtp.packet import RtpError, RtpPacket

__all__ = [
    "DIGITS",
    "DtmfEvent",
    "DtmfReceiver",
    "DtmfSender",
    "DtmfStep",
    "TelephoneEvent",
    "digit_to_event",
    "dtmf_packets",
    "event_to_digit",
]

#: RFC 4733 §3.2 event codes 0-15, in order.
DIGITS = "0123456789*#ABCD"
#: Clock rate of telephone-event as negotiated here (same as G.711).
CLOCK_RATE = 8000
#: Samples per update packet: one 20 ms tick.
SAMPLES_PER_TICK = 160
#: Shortest digit the sender plays (ms). Shorter tones are missed by many gateways.
MIN_DURATION_MS = 40
#: Longest digit the sender plays (ms); the 16-bit duration field holds at most ~8.19 s.
MAX_DURATION_MS = 8000
#: Volume sent, in -dBm0 (RFC 4733 §2.3.4); 10 is what common phones and gateways use.
DEFAULT_VOLUME = 10
#: How many end packets are sent for one event (RFC 4733 §2.5.1.4).
END_REPEATS = 3

_PAYLOAD = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """A digit (``0-9``, ``*``, ``#``, ``A-D``) to its event code; ValueError otherwise."""
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str | None:
    """The digit of event code 0-15, None for other events (flash, tones...)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The 4-byte RFC 4733 payload."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first 4 bytes (extra bytes are ignored); RtpError if shorter."""
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload of {len(payload)} bytes, need 4")
        event, flags, duration = _PAYLOAD.unpack_from(payload, 0)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def serialize(self) -> bytes:
        return _PAYLOAD.pack(
            self.event & 0xFF,
            (0x80 if self.end else 0) | (self.volume & 0x3F),
            min(max(self.duration, 0), 0xFFFF),
        )


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A completed key press: the digit and how long it lasted in milliseconds."""

    digit: str
    duration_ms: int


class DtmfReceiver:
    """Turns incoming telephone-event packets into one :class:`DtmfEvent` per key press.

    An event is reported when its first end packet arrives. Events are identified by (SSRC, RTP
    timestamp); the last :data:`REMEMBERED` reported identities are kept, so the retransmitted
    end packets and stray duplicates are ignored. If an event's end packets are all lost, the
    event is reported when the next event (a new timestamp) starts, with the last duration seen.
    Non-DTMF events (codes above 15) are ignored.
    """

    #: How many reported events are remembered for duplicate suppression.
    REMEMBERED = 16

    def __init__(self) -> None:
        # (plain lists, not deques: an empty deque takes 760 bytes, one per call)
        self._reported: list[tuple[int, int]] = []
        self._pending: tuple[int, int, int, int] | None = None  # ssrc, ts, event, duration

    def _remember(self, key: tuple[int, int]) -> None:
        reported = self._reported
        reported.append(key)
        if len(reported) > self.REMEMBERED:
            del reported[0]

    def feed(self, packet: RtpPacket) -> list[DtmfEvent]:
        """Feed one packet already known to carry telephone-event. Returns the events completed
        by it (usually none, at most two: an unfinished previous one and this one)."""
        try:
            te = TelephoneEvent.parse(packet.payload)
        except RtpError:
            return []
        key = (packet.ssrc, packet.timestamp)
        if key in self._reported:
            return []
        out: list[DtmfEvent] = []
        pending = self._pending
        if pending is not None and (pending[0], pending[1]) != key:
            # A new event began before the previous one's end packet arrived.
            self._pending = None
            self._remember((pending[0], pending[1]))
            done = self._make(pending[2], pending[3])
            if done is not None:
                out.append(done)
        if te.end:
            self._pending = None
            self._remember(key)
            done = self._make(te.event, te.duration)
            if done is not None:
                out.append(done)
        else:
            self._pending = (packet.ssrc, packet.timestamp, te.event, te.duration)
        return out

    @staticmethod
    def _make(event: int, duration: int) -> DtmfEvent | None:
        digit = event_to_digit(event)
        if digit is None:
            return None
        return DtmfEvent(digit, duration * 1000 // CLOCK_RATE)


@dataclass(frozen=True, slots=True)
class DtmfStep:
    """One telephone-event packet to send this tick: its payload, marker bit and timestamp
    (the event's start timestamp, not the tick's)."""

    payload: bytes
    marker: bool
    timestamp: int


class DtmfSender:
    """Plays queued digits as RFC 4733 packet sequences, one packet per 20 ms tick.

    For a digit of ``n`` ticks (duration rounded to 20 ms, clamped to
    :data:`MIN_DURATION_MS`-:data:`MAX_DURATION_MS`): tick 0 sends the start packet (marker,
    duration 160), ticks 1..n-2 send updates (duration grows by 160 per tick), and ticks
    n-1..n+1 send the end packet three times (E bit, full duration). The event's timestamp is
    the audio timestamp of its first tick; audio resumes after the last end packet. Digits
    queued while one plays follow it in order.
    """

    def __init__(self, volume: int = DEFAULT_VOLUME) -> None:
        self.volume = volume
        self._queue: list[tuple[int, int]] = []  # event, ticks
        self._event = 0
        self._ticks = 0
        self._step = 0
        self._start_ts = 0
        self._active = False
        #: True while a digit is playing or queued (a plain attribute: the RTP endpoint reads
        #: it for every packet it sends). Read it, never set it.
        self.busy = False

    def queue(self, digit: str, duration_ms: int) -> None:
        """Queue a digit; ValueError for anything but 0-9, *, #, A-D."""
        event = digit_to_event(digit)
        duration_ms = min(max(duration_ms, MIN_DURATION_MS), MAX_DURATION_MS)
        ticks = max(1, round(duration_ms / 20))
        self._queue.append((event, ticks))
        self.busy = True

    def next_step(self, timestamp: int) -> DtmfStep | None:
        """The packet for the tick whose audio timestamp is ``timestamp``, or None (send audio)."""
        if not self._active:
            if not self._queue:
                return None
            self._event, self._ticks = self._queue.pop(0)
            self._step = 0
            self._start_ts = timestamp
            self._active = True
        step = self._step
        self._step += 1
        last_update = self._ticks - 1
        end = step >= last_update
        duration = min(step + 1, self._ticks) * SAMPLES_PER_TICK
        if step >= last_update + END_REPEATS - 1:
            self._active = False
            self.busy = bool(self._queue)
        payload = TelephoneEvent(self._event, end, self.volume, duration).serialize()
        return DtmfStep(payload=payload, marker=step == 0, timestamp=self._start_ts)


def dtmf_packets(
    digit: str,
    duration_ms: int,
    *,
    payload_type: int,
    ssrc: int,
    sequence_number: int,
    timestamp: int,
    volume: int = DEFAULT_VOLUME,
) -> list[RtpPacket]:
    """The whole packet sequence :class:`DtmfSender` produces for one digit, as RTP packets
    (consecutive sequence numbers from ``sequence_number``, one per 20 ms tick)."""
    sender = DtmfSender(volume)
    sender.queue(digit, duration_ms)
    packets: list[RtpPacket] = []
    tick_ts = timestamp
    seq = sequence_number
    while (step := sender.next_step(tick_ts)) is not None:
        packets.append(
            RtpPacket(
                payload_type=payload_type,
                sequence_number=seq & 0xFFFF,
                timestamp=step.timestamp & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=step.payload,
                marker=step.marker,
            )
        )
        seq += 1
        tick_ts += SAMPLES_PER_TICK
    return packets
