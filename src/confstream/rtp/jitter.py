"""Adaptive jitter buffer for one incoming RTP audio stream. No I/O, no clock of its own.

The network side calls :meth:`JitterBuffer.put` with each packet's sequence number, timestamp,
SSRC, decoded samples and arrival time; the mixer's 20 ms clock calls :meth:`JitterBuffer.get`
once per packet interval to take the next packet's samples.

Rules:

* **Ordering** is by sequence number, extended to more than 16 bits by taking the value
  closest to the highest one seen (RFC 3550 Appendix A.1 style), so wraparound at 65535 is
  transparent.
* **Depth.** After a start, an SSRC change or an underrun, playout waits until ``target``
  packets are buffered. ``target`` follows the RFC 3550 §6.4.1 interarrival jitter estimate
  ``J``: ``target = 1 + ceil((3·J - 2 ms) / frame)`` clamped to ``min_depth``-``max_depth``
  (defaults 1 and 8 frames: 20-160 ms). Three mean deviations cover nearly all arrivals
  without adding latency when the network is calm.
* **Latency control.** When more than ``target + 2`` packets wait (the sender's clock runs a
  little fast, or jitter has calmed down), the oldest is dropped and counted ``overflow``.
* **Late** packets (their turn has passed) and **duplicates** are discarded and counted.
* **Loss.** When the packet due is missing but later ones are buffered, it is skipped. The
  missing frame, and an underrun, are concealed by repeating the last frame at half amplitude
  once, then silence (None).
* **Restart.** A new SSRC, a sequence jump of more than :data:`MAX_JUMP`, or
  :data:`MAX_LATE_RUN` late packets in a row reset the buffer (counters are kept).
* A frame of ``None`` in :meth:`put` is a placeholder: a sequence number used by a packet
  that carries no audio (RFC 4733 events replace audio packets). It plays as silence and is
  not counted as loss.
* **Window.** The buffer is a preallocated ring of :attr:`JitterBuffer.ring_size` slots (the
  next power of two above the capacity, 32 by default) indexed by the extended sequence number,
  so it holds packets of at most that many consecutive sequence numbers: a packet that far
  ahead of the oldest waiting one pushes the older ones out (counted ``overflow``), one that
  far behind the newest is dropped as ``overflow``. Duplicates of played packets are found in
  a ring of the last :data:`PLAYED_HISTORY` played sequence numbers.

Arrival times quantised to the tick (the server's case, :mod:`confstream.rtp.reader`): RTP
sockets are read once per 20 ms mixer tick, and every packet read gets the tick's scheduled
time as its arrival. The estimate ``J`` then measures the jitter *the mixer sees*: a caller
that sends on time lands one packet in every tick, each transit difference is 0 and ``J``
stays at 0 (the clock's own lateness does not enter, the scheduled time does not carry it), so
the depth stays at ``min_depth``. A caller whose packets move across a tick boundary (network
jitter, or its send phase close to the tick's) shows a transit difference of a whole frame
(160 units) for each packet that misses its tick and for the one that catches up, which is
what such a packet costs the playout (it missed its tick). Taken whole, such steps would
count a packet a millisecond late across the boundary like 20 ms of jitter, and the 3·J rule
would ask for up to 4 frames of depth where 2 always do; so with ``arrival_quantum`` (the
step of the arrival times in timestamp units: the RTP endpoint passes one frame) half a step
is taken off every transit difference: a boundary crossing counts as half a frame. ``J`` then
grows by 5 units per crossing: a caller crossing now and then stays at the minimum depth
(its ``J`` is above 0: seen), one crossing on more than about one packet in 30 gets 2 frames,
on most packets 3. Jitter much larger than a tick is estimated as before, less up to half a
frame per packet. Nothing else uses the arrival time
besides the endpoint's ``last_valid`` (the inactivity timeout), which a tick's resolution
does not change.

Memory and cost (docs/benchmarks.md, "History"): two lists of ``ring_size`` entries and an
``array('q')`` of :data:`PLAYED_HISTORY` integers, allocated once (about 2.6 KiB per buffer;
the dict and set of earlier versions took about 10 KiB at steady state), and no allocation per
packet besides the caller's payload.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

import numpy as np

from confstream.conference.base import FRAME_SAMPLES, Frame

__all__ = ["MAX_JUMP", "MAX_LATE_RUN", "JitterBuffer", "JitterStats", "PutResult"]

T = TypeVar("T")

#: A sequence number further than this from the expected one means the stream restarted.
MAX_JUMP = 1000
#: This many late packets in a row mean the sender restarted its sequence numbers.
MAX_LATE_RUN = 50
#: Jitter spread (timestamp units, 2 ms at 8 kHz) ignored when sizing the target, so that a
#: calm network with sub-millisecond noise keeps the minimum depth.
TOLERANCE = 16.0
#: Extra packets tolerated above the target before the oldest is dropped.
SLACK = 2
#: Played sequence numbers remembered to tell a duplicate from a late packet.
PLAYED_HISTORY = 64
_PLAYED_MASK = PLAYED_HISTORY - 1
#: Marks an empty slot (no extended sequence number is this low).
_EMPTY = -(1 << 62)


class PutResult:
    """What :meth:`JitterBuffer.put` did with a packet (string constants)."""

    ACCEPTED = "accepted"
    LATE = "late"
    DUPLICATE = "duplicate"
    OVERFLOW = "overflow"


@dataclass(slots=True)
class JitterStats:
    """Counters since creation (kept across resets).

    ``received`` counts unique packets accepted; ``lost`` is RFC 3550's cumulative loss
    (expected minus received, per SSRC run, never negative); ``late``, ``duplicate`` and
    ``overflow`` count discarded packets; ``concealed`` counts frames played by concealment.
    """

    received: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    overflow: int = 0
    concealed: int = 0
    underruns: int = 0
    resets: int = 0


class JitterBuffer(Generic[T]):
    """See the module docstring. ``frame_samples`` is the timestamp increment of one packet
    (160 for 20 ms at 8 kHz) and sets the unit of the depth; ``min_depth``/``max_depth`` bound
    the target depth in packets (defaults 1 and 8).

    The buffer does not look at what it stores: by default int16 frames, but the RTP endpoint
    stores still-encoded µ-law payloads (``bytes``) and decodes them for the whole conference
    at once. ``conceal`` turns the last played item into the concealment frame; the default,
    for int16 frames, halves the amplitude.

    Cost: :meth:`put` and :meth:`get` are O(1) per packet (a ring slot indexed by the
    extended sequence number; a scan of the ring only on start and overflow), and the target
    depth is only computed when the buffer holds more than ``min_depth + 2`` packets or is
    waiting to start. The common packet (same SSRC, the sequence number after the highest
    seen) takes a straight-line path in :meth:`put` (bench/history.md, section 4).
    """

    # Without ``conceal`` the buffer holds int16 frames (the default concealment halves them),
    # so ``JitterBuffer()`` is a ``JitterBuffer[Frame]``; any other item type needs ``conceal``.
    @overload
    def __init__(
        self: JitterBuffer[Frame],
        *,
        frame_samples: int = ...,
        min_depth: int = ...,
        max_depth: int = ...,
        conceal: None = None,
        arrival_quantum: float = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        frame_samples: int = ...,
        min_depth: int = ...,
        max_depth: int = ...,
        conceal: Callable[[T], Frame | None],
        arrival_quantum: float = ...,
    ) -> None: ...

    def __init__(
        self,
        *,
        frame_samples: int = FRAME_SAMPLES,
        min_depth: int = 1,
        max_depth: int = 8,
        conceal: Callable[[T], Frame | None] | None = None,
        arrival_quantum: float = 0.0,
    ) -> None:
        if not 1 <= min_depth <= max_depth:
            raise ValueError("need 1 <= min_depth <= max_depth")
        self.frame_samples = frame_samples
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.stats = JitterStats()
        #: RFC 3550 interarrival jitter estimate, in timestamp units.
        self.jitter = 0.0
        #: Half the step of the arrival times (timestamp units), taken off every transit
        #: difference (see "Arrival times quantised to the tick" in the module docstring).
        self._dead = arrival_quantum / 2.0
        # The overloads above make T Frame whenever ``conceal`` is None; the implementation
        # body cannot see that link, hence the ignore on the default ``_half``.
        self._conceal_fn: Callable[[T], Frame | None] = (
            conceal if conceal is not None else _half  # type: ignore[assignment]
        )
        self._capacity = max_depth + SLACK + 8
        #: Slots in the ring (a power of two above the capacity).
        self.ring_size = 1 << self._capacity.bit_length()
        self._mask = self.ring_size - 1
        self._slots: list[T | None] = [None] * self.ring_size
        self._seqs: list[int] = [_EMPTY] * self.ring_size  # extended seq held by each slot
        self._played = array("q", [_EMPTY]) * PLAYED_HISTORY  # recently played extended seqs
        self._count = 0
        self._ssrc: int | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        if self._count:
            for i in range(self.ring_size):
                self._slots[i] = None
                self._seqs[i] = _EMPTY
            self._count = 0
        played = self._played
        for i in range(PLAYED_HISTORY):
            played[i] = _EMPTY
        self._highest: int | None = None  # highest extended seq seen
        self._base = 0  # first extended seq of this run (for loss)
        self._received_run = 0
        self._lost_before = self.stats.lost  # loss of earlier runs
        self._last_out: int | None = None  # extended seq last played or skipped
        self._playing = False
        self._last_frame: T | None = None
        self._late_run = 0
        self._transit: float | None = None

    def reset(self) -> None:
        """Forget buffered packets and the sequence state (counters and jitter are kept)."""
        self.stats.resets += 1
        self._reset_state()

    @property
    def ssrc(self) -> int | None:
        return self._ssrc

    @property
    def target(self) -> int:
        """Target depth in packets, from the jitter estimate."""
        spread = max(3.0 * self.jitter - TOLERANCE, 0.0)
        want = 1 + math.ceil(spread / self.frame_samples)
        return min(max(want, self.min_depth), self.max_depth)

    @property
    def depth(self) -> int:
        """Packets waiting now."""
        return self._count

    def _oldest(self) -> int:
        """The lowest extended seq waiting (the buffer is not empty)."""
        return min(seq for seq in self._seqs if seq != _EMPTY)

    def _drop(self, ext: int) -> None:
        """Drop the waiting packet ``ext`` as overflow; later packets play after it."""
        idx = ext & self._mask
        self._slots[idx] = None
        self._seqs[idx] = _EMPTY
        self._count -= 1
        self.stats.overflow += 1

    def _observe(self, transit: float) -> None:
        """One packet's relative transit time (arrival in timestamp units minus its
        timestamp) into the jitter estimate, RFC 3550 §6.4.1 / A.8: J += (|D| - J) / 16."""
        last_transit = self._transit
        if last_transit is not None:
            d = transit - last_transit
            if d < 0:
                d = -d
            d -= self._dead
            if d < 0:
                d = 0.0
            # A timestamp wrap shows up as a jump of ~2**32; ignore that one sample.
            if d < 2147483648.0:
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    def _extend(self, seq: int) -> int:
        highest = self._highest
        if highest is None:
            return seq
        delta = (seq - highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        return highest + delta

    def put(
        self,
        sequence_number: int,
        timestamp: int | None,
        ssrc: int,
        frame: T | None,
        arrival: float,
        clock_rate: int = 8000,
    ) -> str:
        """Add one packet; ``arrival`` in seconds (any monotonic origin). A ``timestamp`` of
        None leaves the jitter estimate alone (for placeholders: RFC 4733 packets carry the
        event's start timestamp, not the audio clock). Returns a :class:`PutResult` constant."""
        highest = self._highest
        if (
            ssrc == self._ssrc
            and highest is not None
            and sequence_number == (highest + 1) & 0xFFFF
            and timestamp is not None
        ):
            # The common case, in order: the next sequence number of the same source. It cannot
            # be late (nothing after ``highest`` was played) nor a restart; its slot is free
            # unless a packet a whole ring older still waits (then the general path below).
            ext = highest + 1
            idx = ext & self._mask
            seqs = self._seqs
            if seqs[idx] == _EMPTY:
                # _observe, inlined (the same arithmetic)
                transit = arrival * clock_rate - timestamp
                last_transit = self._transit
                if last_transit is not None:
                    d = transit - last_transit
                    if d < 0:
                        d = -d
                    d -= self._dead
                    if d < 0:
                        d = 0.0
                    if d < 2147483648.0:
                        self.jitter += (d - self.jitter) / 16.0
                self._transit = transit
                self._late_run = 0
                self._highest = ext
                self._slots[idx] = frame
                seqs[idx] = ext
                count = self._count = self._count + 1
                self._received_run += 1
                self.stats.received += 1
                # ``stats.lost`` is unchanged: the highest sequence number and the packets
                # received in this run both grow by one (every path that moves either one
                # sets ``stats.lost`` from both, see the general path below).
                if count > self._capacity:
                    oldest = self._oldest()
                    self._drop(oldest)
                    self._last_out = oldest
                    return PutResult.OVERFLOW if oldest == ext else PutResult.ACCEPTED
                return PutResult.ACCEPTED
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                self.reset()
            self._ssrc = ssrc
            self._transit = None
        highest = self._highest
        if highest is None:
            ext = sequence_number
            self._highest = highest = ext
            self._base = ext
        else:
            delta = (sequence_number - highest) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            ext = highest + delta
            if delta > MAX_JUMP or delta < -MAX_JUMP:
                self.reset()
                ext = sequence_number
                self._highest = highest = ext
                self._base = ext
        if timestamp is not None:
            self._observe(arrival * clock_rate - timestamp)

        last_out = self._last_out
        if last_out is not None and ext <= last_out:
            self._late_run += 1
            if self._late_run >= MAX_LATE_RUN:
                self.reset()
                return self.put(sequence_number, timestamp, ssrc, frame, arrival, clock_rate)
            if self._played[ext & _PLAYED_MASK] == ext:
                self.stats.duplicate += 1
                return PutResult.DUPLICATE
            self.stats.late += 1
            return PutResult.LATE
        self._late_run = 0
        seqs = self._seqs
        stats = self.stats
        idx = ext & self._mask
        held = seqs[idx]
        if held != _EMPTY:
            if held == ext:
                stats.duplicate += 1
                return PutResult.DUPLICATE
            if held > ext:  # a whole ring behind the newest waiting packet: no room
                stats.overflow += 1
                return PutResult.OVERFLOW
            # A whole ring ahead of waiting packets: those too far behind make room.
            limit = ext - self._mask
            for old in sorted(x for x in seqs if x != _EMPTY and x < limit):
                self._drop(old)
                self._last_out = old
        if ext > highest:
            self._highest = highest = ext
        self._slots[idx] = frame
        seqs[idx] = ext
        self._count += 1
        received = self._received_run = self._received_run + 1
        stats.received += 1
        lost = highest - self._base + 1 - received
        stats.lost = self._lost_before + lost if lost > 0 else self._lost_before
        if self._count > self._capacity:
            oldest = self._oldest()
            self._drop(oldest)
            self._last_out = oldest
            return PutResult.OVERFLOW if oldest == ext else PutResult.ACCEPTED
        return PutResult.ACCEPTED

    def get(self) -> T | Frame | None:
        """The next packet's item, a concealment frame, or None (silence / not started)."""
        if not self._playing:
            if not self._count or self._count < self.target:
                return self._conceal()
            self._playing = True
            self._last_out = self._oldest() - 1
        last_out = self._last_out
        assert last_out is not None
        # Latency control: drop the oldest while well above target (the target is at least
        # min_depth, so below min_depth + SLACK there is nothing to compute).
        if self._count > self.min_depth + SLACK:
            limit = self.target + SLACK
            while self._count > limit:
                last_out = self._oldest()
                self._drop(last_out)
        due = last_out + 1
        idx = due & self._mask
        seqs = self._seqs
        if seqs[idx] == due:
            slots = self._slots
            frame = slots[idx]
            slots[idx] = None
            seqs[idx] = _EMPTY
            self._count -= 1
            self._last_out = due
            self._played[due & _PLAYED_MASK] = due
            self._last_frame = frame
            return frame
        self._last_out = last_out
        if self._count:
            # The due packet is missing and later ones wait: skip it.
            self._last_out = due
            return self._conceal()
        # Underrun: nothing to play. Rebuffer without advancing, the due packet may be late.
        self.stats.underruns += 1
        self._playing = False
        return self._conceal()

    def _conceal(self) -> Frame | None:
        last = self._last_frame
        if last is None:
            return None
        self.stats.concealed += 1
        self._last_frame = None
        return self._conceal_fn(last)


def _half(frame: Frame) -> Frame:
    """The default concealment: the last frame at half amplitude."""
    return (frame >> 1).astype(np.int16)
