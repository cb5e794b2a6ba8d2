"""The conference engine: one 20 ms clock for the whole server and a vectorised mixer.

Clock
-----
One asyncio task (:meth:`Engine.start`) runs every conference. Deadlines are computed, never
accumulated: tick ``n`` is due at ``start + n * 20 ms`` on ``loop.time()``, so sleep error does
not drift the clock. Each tick records its lateness (actual minus scheduled start) in
``metrics.TICK_LATENESS`` and its duration in ``metrics.TICK_DURATION``; the last
:data:`LATENESS_HISTORY` lateness values are kept in :attr:`Engine.lateness_samples` for the
benchmark. The clock always yields to the event loop at least once per tick (so SIP and
WebSocket I/O keep flowing even when it runs late) and never awaits anything else.

RTP is read on this clock, not by event-loop callbacks: at the start of every tick, before any
participant's frame is read, the clock calls each of :attr:`Engine.io_hooks` with the tick's
scheduled time; the server registers the RTP reader's drain there
(:mod:`confstream.rtp.reader`), which reads every RTP socket once and puts what arrived during
the last 20 ms into the jitter buffers, so the tick mixes it at once (the same latency as when
every datagram woke the loop, without the per-datagram wake-ups). ``metrics.TICK_DURATION``
includes that drain. :meth:`Engine.tick` alone (tests, the benchmark) does not call the hooks;
:meth:`Engine.clock_tick` is the clock's whole step.

Falling behind: a tick that starts up to :data:`MAX_BEHIND_TICKS` frames (100 ms) late is run
at once and the following ones back to back, catching up without losing audio (jitter buffers
and stream queues absorb the burst). Beyond that the missed ticks are *skipped*: the schedule
jumps to the present, ``metrics.TICKS_SKIPPED`` counts the frames, and every conference's
timeline advances by them (:attr:`ConferenceMedia.skipped`), so stream timestamps show the gap
instead of a burst of stale audio.

Mixer
-----
Per tick, for all conferences at once (``P`` participants, ``C`` conferences):

1. every participant's :meth:`~confstream.conference.base.Participant.read_frame` goes into row
   ``i`` of one preallocated ``(P, 160)`` int32 matrix, grouped by conference; the row is zero
   when the frame is None, or the participant is muted or on hold (they contribute nothing);
2. ``inbound[c]`` = sum of conference ``c``'s rows. Conferences are laid out in order of size,
   so every run of equally sized conferences is one ``(n, size, 160)`` view summed over its
   middle axis in one call (one call per distinct size). Measured for P=1000 in 100
   conferences of 10 (NumPy 2.4, this machine): 24 µs, against ``np.add.reduceat`` over the
   groups 170 µs, cumsum differences 170 µs, an indicator-matrix product in float64 410 µs,
   ``np.add.at`` 650 µs;
3. platform sources (announcements, returned stream audio) are read once each: conference-wide
   ones summed into ``platform[c]``, targeted ones kept aside for their participant;
4. ``outbound[c] = inbound[c] + platform[c]``; each participant's mix-minus is
   ``outbound[c(i)] - row[i] + targeted[i]``, computed for all rows in one go and clipped to
   int16. A participant **on hold hears silence** (a zero frame: the SIP side may send comfort
   noise or nothing) and contributes nothing; a **muted** participant hears everything and
   contributes nothing. Targeted audio for a held participant is consumed but not heard;
5. taps receive ``inbound[c]`` and ``outbound[c]`` (clipped to int16); a tap whose
   ``own_source`` is a conference-wide source of that conference gets ``outbound`` minus that
   source's frame this tick.

The arrays handed to ``write_frame`` and ``on_frame`` are fresh every tick and read-only, so
receivers may keep them without copying (one row per participant that takes frames rather than
µ-law codes, one per conference with taps, one or two per tapped call); all intermediate
buffers are preallocated and grow by doubling, and the per-participant work runs in blocks of
:data:`_CHUNK_ROWS` rows, so no temporary of a tick reaches the server's fixed malloc mmap
threshold (256 KiB; the per-conference copies for taps would at about 400 conferences): a tick
costs no fresh mapping and no page fault (docs/operations.md, "Memory"; ``python -m
bench.memory --tick-faults N`` counts them).

Call taps (one caller's audio, docs/protocol.md, "Call streams")
----------------------------------------------------------------
A tap may also be attached to one *call* (:meth:`Engine.add_call_tap`, or through
:meth:`Engine.call_media`) instead of a conference. It is keyed by the CallSid, not by a
conference, so it follows the participant when it moves between engine conferences (a call's
solo room and a conference): on every tick where that participant is mixed somewhere, the tap
gets

* ``inbound``: what the caller sent this tick, even while it is muted or on hold in its
  conference (muting changes what the conference hears, not what the caller says); silence
  when it sent nothing;
* ``outbound``: what the caller hears this tick, exactly the frame written to it (its mix-minus
  with platform audio, targeted audio included; silence while on hold), minus the tap's own
  returned audio.

A call tap's ``own_source`` (a bidirectional call stream's returned audio) is read by the
engine itself, once per tick while the call is mixed somewhere, and heard by that caller only
(as targeted audio); nothing is read while the call is in no conference, so returned audio
waits. Timestamps of call taps run on the engine's own timeline (ticks run plus ticks skipped,
x 20 ms), which does not restart when the call moves. A tick where the call is mixed nowhere
delivers nothing (the stream's timestamps jump). DTMF from the caller reaches its call taps
through :meth:`Engine.emit_call_dtmf`. The per-tick cost is one dictionary lookup per tapped
call; untapped participants cost nothing more (the participant loop only keeps the frames of
rows that are muted or on hold, which it already singles out).

Fast path for G.711 participants
--------------------------------
Decoding and encoding µ-law one participant at a time costs more than the whole mix. A
participant may therefore offer, besides the :class:`~confstream.conference.base.Participant`
protocol (which stays the contract for every kind), the optional pair of :class:`UlawMedia`:
``read_ulaw()`` returns its next frame either as 160 µ-law codes (``bytes``) or as
``read_frame`` would, and ``write_ulaw(codes)`` takes its mix-minus already encoded as µ-law,
returning False when it cannot (then ``write_frame`` gets the samples as usual). The engine
joins every participant's codes (the ``bytes`` objects as read, a shared row of µ-law silence
for a row that contributes nothing) into one ``(P, 160)`` uint8 matrix with one ``b"".join``
and decodes it with one ``np.take`` from the 256-entry table, and encodes every mix-minus with
one ``np.take`` from the 65,536-entry table (about 0.1 µs per participant each, against about
1 µs for a per-frame lookup). The decoded and encoded values are those of
:mod:`confstream.media.g711`, so what is mixed and sent is bit-identical to the
per-participant path. The bound methods are looked up
once per membership change.

Send lane
---------
Sending one packet per participant from Python costs more than mixing it. :attr:`Engine.tx_lane`
(the server wires the RTP one, :mod:`confstream.rtp.txlane`; the engine knows nothing of RTP)
takes the whole tick's encoded µ-law matrix at once: a participant may offer ``tx_key`` (an
``int``, -1 for none; read once per layout rebuild), the key of its row in the lane; every tick
the engine encodes every row, calls the lane once with the codes and the rows' keys, and the
lane answers which rows it sent. Only the others go through ``write_ulaw``/``write_frame`` as
above. A row the lane does not take this tick (no key, a key it does not know, a session that
cannot take µ-law now) is simply written the usual way, so the lane may decline any row at any
time.

Levels (the dashboard, docs/operations.md)
------------------------------------------
While :attr:`Engine.level_watchers` is above zero, every :data:`LEVEL_EVERY_TICKS`-th tick
measures the RMS of every row of the participants' frame matrix (what each one contributes to
the mix: zero when muted or on hold) in one vectorised call, into a float array aligned with
the members. :meth:`Engine.levels` maps it to CallSids on demand. With no watcher nothing is
measured.

Waiting conferences (docs/voice.md, ``startConferenceOnEnter``)
-------------------------------------------------------------
A conference whose :attr:`ConferenceMedia.waiting` is true has not started: its participants'
rows are zeroed right after they are read (one fancy-indexed assignment over the rows of every
waiting conference, an index array rebuilt with the layout), so nobody hears anybody, taps get
silence on ``inbound``, and each participant hears only the platform audio (the looping wait
audio, beeps, announcements). Clearing ``waiting`` starts the mixing at the next tick.

Speech detection (conference ``speaker`` events)
-----------------------------------------------
Each level measurement (above) also runs a voice activity detector over all the measured rows
at once: a row is *loud* when its RMS is above :data:`SPEECH_THRESHOLD_RMS` (328, -40 dBFS); a
participant starts speaking on its first loud measurement and stops after
:data:`SPEECH_HANGOVER` (8, i.e. 800 ms) measurements in a row that are not loud. Rows are
matched to participants by CallSid when the layout changes, so a membership change keeps each
one's state. Only the changes reach :attr:`Engine.speech_listener` ``(conference_sid,
call_sid, speaking)``, called on the clock (it must not block). A muted or held participant
measures as silence, so it stops speaking after the hangover.

Timestamps: ``on_frame``'s ``timestamp_ms`` is ``(ticks + skipped) * 20`` for the frame being
delivered, i.e. 0 for the conference's first frame; a tap that starts later rebases to its
first timestamp.

Errors: an exception from a participant, source or tap is caught and logged (at most one log
line per object and kind every :data:`ERROR_LOG_INTERVAL` seconds). A participant whose
``read_frame`` fails is silent for that tick; a source that fails is dropped; a tap that fails
in ``on_frame`` is dropped (a stream session must never raise there). Nothing else is affected.

Threading: everything here runs on the event loop's thread; the API and SIP layers call the
``add_*``/``remove_*`` methods between ticks. A callback that changes membership during a tick
takes effect from the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from confstream import gcpolicy, metrics
from confstream.conference.base import FRAME_MS, FRAME_SAMPLES, AudioSource, Participant, Tap
from confstream.conference.sources import BufferSource, beep
from confstream.media.g711 import ULAW_DECODE, ULAW_ENCODE, ULAW_SILENCE

log = logging.getLogger(__name__)

TICK_SECONDS = FRAME_MS / 1000
#: Lateness (in frames) beyond which missed ticks are skipped rather than caught up.
MAX_BEHIND_TICKS = 5
#: How many recent lateness values :attr:`Engine.lateness_samples` keeps (60 s of ticks).
LATENESS_HISTORY = 3000
#: While levels are watched, they are measured on one tick in this many (100 ms).
LEVEL_EVERY_TICKS = 5
#: Speech detection (see the module docstring): RMS above this is loud (-40 dBFS) ...
SPEECH_THRESHOLD_RMS = 32768 * 10 ** (-40 / 20)
#: ... and this many quiet measurements in a row (8 x 100 ms) end speech.
SPEECH_HANGOVER = 8
#: Minimum seconds between two log lines about the same failing object.
ERROR_LOG_INTERVAL = 10.0

Int32Matrix = npt.NDArray[np.int32]
UInt8Matrix = npt.NDArray[np.uint8]
Frame = npt.NDArray[np.int16]

#: µ-law decode table widened to the mixer's int32, for ``np.take(..., out=frames)``.
_ULAW_DECODE_I32 = ULAW_DECODE.astype(np.int32)
assert _ULAW_DECODE_I32[ULAW_SILENCE] == 0
#: One row of µ-law silence (a row that contributes nothing to the mix).
_SILENCE_CODES = bytes((ULAW_SILENCE,)) * FRAME_SAMPLES


class UlawMedia(Protocol):
    """The optional fast path of a participant (see the module docstring)."""

    def read_ulaw(self) -> bytes | Frame | None:
        """160 µ-law codes, or what ``read_frame`` would return. Never blocks."""
        ...

    def write_ulaw(self, codes: bytes) -> bool:
        """Send this mix-minus given as 160 µ-law codes; False: not taken, use write_frame."""
        ...


class _ErrorLog:
    """Logs exceptions at most once per (kind, object) every ERROR_LOG_INTERVAL seconds."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def __call__(self, kind: str, obj: object, what: str) -> None:
        key = (kind, id(obj))
        now = time.monotonic()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < ERROR_LOG_INTERVAL:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) > 10_000:  # objects come and go; don't grow for ever
            self._last.clear()
        self._last[key] = (now, 0)
        extra = f" ({suppressed} similar errors not logged)" if suppressed else ""
        log.exception("%s failed in %s%s", what, kind, extra)


def _grow(buf: Int32Matrix, rows: int) -> Int32Matrix:
    if buf.shape[0] >= rows:
        return buf
    size = max(rows, 2 * buf.shape[0], 16)
    return np.zeros((size, FRAME_SAMPLES), dtype=np.int32)


def _grow_u8(buf: UInt8Matrix, rows: int) -> UInt8Matrix:
    if buf.shape[0] >= rows:
        return buf
    size = max(rows, 2 * buf.shape[0], 16)
    return np.zeros((size, FRAME_SAMPLES), dtype=np.uint8)


def _grow_i16(buf: npt.NDArray[np.int16], rows: int) -> npt.NDArray[np.int16]:
    if buf.shape[0] >= rows:
        return buf
    size = max(rows, 2 * buf.shape[0], 16)
    return np.zeros((size, FRAME_SAMPLES), dtype=np.int16)


#: Rows the tick decodes, encodes and slices at a time. Its temporaries then stay small at any
#: size: the joined codes and the encoded bytes are 5 KiB, and ``np.take``'s index, which NumPy
#: first converts to intp (8 bytes per sample), 40 KiB; for 1000 rows at once they were 160 KiB
#: and 1.3 MB. Under the server's fixed malloc mmap threshold (docs/operations.md, "Memory")
#: a temporary of 256 KiB or more is a fresh mapping, page faults included, every tick, and one
#: of over 100 KiB freed at the heap's top may be given back to the kernel and faulted in again.
_CHUNK_ROWS = 32


def _fresh_row(rows: npt.NDArray[np.int16], i: int) -> npt.NDArray[np.int16]:
    """Row ``i`` of a reused buffer as a fresh read-only frame (receivers may keep it)."""
    row: npt.NDArray[np.int16] = rows[i].copy()
    row.flags.writeable = False
    return row


def _to_int16(mix: Int32Matrix) -> npt.NDArray[np.int16]:
    np.clip(mix, -32768, 32767, out=mix)
    out = mix.astype(np.int16)
    out.flags.writeable = False
    return out


class ConferenceMedia:
    """The live media of one conference: participants, platform sources and taps.

    Created by :meth:`Engine.add_conference`; mixed by the engine's clock.
    """

    def __init__(self, engine: Engine, sid: str) -> None:
        self.sid = sid
        self._engine = engine
        #: Frames mixed since the conference started.
        self.ticks = 0
        #: Frames skipped by the clock while this conference existed (timeline gaps).
        self.skipped = 0
        self.participants: dict[str, Participant] = {}
        self.sources: list[AudioSource] = []
        self.taps: list[Tap] = []
        self.closed = False
        self._waiting = False

    @property
    def waiting(self) -> bool:
        """True while the conference has not started: no mixing between its participants
        (see the module docstring, Waiting conferences)."""
        return self._waiting

    @waiting.setter
    def waiting(self, value: bool) -> None:
        if value != self._waiting:
            self._waiting = value
            self._engine._layout_changed()

    @property
    def timestamp_ms(self) -> int:
        """The timeline position of the next frame, in ms since the conference started."""
        return (self.ticks + self.skipped) * FRAME_MS

    def add_participant(self, p: Participant) -> None:
        """Add (or replace, same ``call_sid``) a participant; it is mixed from the next tick."""
        if p.call_sid not in self.participants and not self.closed:
            metrics.PARTICIPANTS_ACTIVE.inc()
        self.participants[p.call_sid] = p
        self._engine._layout_changed()

    def remove_participant(self, call_sid: str) -> Participant | None:
        """Remove a participant (no hang-up is sent); returns it, or None if it was not here."""
        p = self.participants.pop(call_sid, None)
        if p is not None:
            if not self.closed:
                metrics.PARTICIPANTS_ACTIVE.dec()
            self._engine._layout_changed()
        return p

    def add_source(self, s: AudioSource) -> None:
        """Mix platform audio in from the next tick until the source reports ``finished``
        (adding the same source twice has no effect)."""
        if not any(x is s for x in self.sources):
            self.sources.append(s)

    def remove_source(self, s: AudioSource) -> None:
        """Stop mixing a source now (no error if it is not here)."""
        with contextlib.suppress(ValueError):
            self.sources.remove(s)

    def play(self, pcm: npt.ArrayLike, target_call_sid: str | None = None) -> BufferSource:
        """Play int16 8 kHz audio of any length once, to everyone or to one participant."""
        source = BufferSource(pcm, target_call_sid=target_call_sid)
        self.add_source(source)
        return source

    def beep(self, kind: str) -> BufferSource:
        """Play the ``enter`` or ``exit`` beep to the whole conference
        (:func:`confstream.conference.sources.beep`)."""
        return self.play(beep(kind))

    def add_tap(self, t: Tap) -> None:
        """Deliver this conference's mixes to ``t`` from the next tick.

        The tap's ``own_source`` (a bidirectional stream's returned audio), if any, is added to
        the conference's sources too, so the caller need not (it may: adding is idempotent).
        """
        if not any(x is t for x in self.taps):
            self.taps.append(t)
        if t.own_source is not None:
            self.add_source(t.own_source)

    def remove_tap(self, t: Tap) -> None:
        """Stop delivering to ``t`` and stop mixing its ``own_source`` (no error if absent)."""
        with contextlib.suppress(ValueError):
            self.taps.remove(t)
        if t.own_source is not None:
            self.remove_source(t.own_source)

    def emit_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """A participant pressed a key: tell every tap of the conference (a failing tap is
        logged, not dropped). The call's own taps hear it through
        :meth:`Engine.emit_call_dtmf`."""
        for t in list(self.taps):
            try:
                t.on_dtmf(call_sid, digit, duration_ms)
            except Exception:
                self._engine._log_error("on_dtmf", t, "tap")

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Play a DTMF digit to every participant (RFC 4733 for SIP callers)."""
        for p in list(self.participants.values()):
            try:
                p.send_dtmf(digit, duration_ms)
            except Exception:
                self._engine._log_error("send_dtmf", p, f"participant {p.call_sid}")


class CallMedia:
    """The tap point of one call, wherever it is mixed (see "Call taps" in the module
    docstring): what a call stream attaches to. Made by :meth:`Engine.call_media`."""

    def __init__(self, engine: Engine, call_sid: str) -> None:
        self.call_sid = call_sid
        self._engine = engine

    def add_tap(self, t: Tap) -> None:
        self._engine.add_call_tap(self.call_sid, t)

    def remove_tap(self, t: Tap) -> None:
        self._engine.remove_call_tap(self.call_sid, t)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Play a DTMF digit to this caller only (nothing when it is mixed nowhere)."""
        p = self._engine.participant(self.call_sid)
        if p is None:
            return
        try:
            p.send_dtmf(digit, duration_ms)
        except Exception:
            self._engine._log_error("send_dtmf", p, f"participant {self.call_sid}")


class Engine:
    """All live conferences and the clock that mixes them (see the module docstring)."""

    def __init__(self) -> None:
        self._conferences: dict[str, ConferenceMedia] = {}
        self._task: asyncio.Task[None] | None = None
        self._lateness: deque[float] = deque(maxlen=LATENESS_HISTORY)
        self._log_error = _ErrorLog()
        # Layout cache, rebuilt when membership changes.
        self._dirty = True
        self._order: list[ConferenceMedia] = []
        self._members: list[Participant] = []
        # Per member: the read method (read_ulaw when offered, else read_frame) and write_ulaw.
        self._reads: list[Callable[[], bytes | Frame | None]] = []
        self._writes: list[Callable[[bytes], bool] | None] = []
        self._any_ulaw_writer = False
        self._conf_of_row: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        # Runs of equally sized conferences: (first row, last row + 1, size, first conf, end).
        self._blocks: list[tuple[int, int, int, int, int]] = []
        # Call taps (by CallSid) and the row of every member (rebuilt with the layout).
        self._call_taps: dict[str, list[Tap]] = {}
        self._row_of_call: dict[str, int] = {}
        #: Ticks mixed and ticks skipped by the clock: the timeline of call taps.
        self.ticks_run = 0
        self.ticks_skipped = 0
        # Preallocated work buffers (grow by doubling).
        self._frames: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._mix: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._inbound: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._platform: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._outbound: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._codes_out: UInt8Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.uint8)
        self._heard: npt.NDArray[np.int16] = np.zeros((16, FRAME_SAMPLES), dtype=np.int16)
        #: Ticks run by the clock task (for tests and the benchmark).
        self.clock_ticks = 0
        #: When set (the server does), the clock asks it after every tick whether to run a
        #: garbage collection in the time left before the next (confstream.gcpolicy).
        self.gc_policy: gcpolicy.GcPolicy | None = None
        #: Called by the clock at the start of every tick, before any frame is read, with the
        #: tick's scheduled time on the loop clock: the server puts the RTP reader's drain here
        #: (confstream.rtp.reader), so packets that arrived since the last tick are read first.
        self.io_hooks: list[Callable[[float], object]] = []
        #: The send lane (see "Send lane" in the module docstring; the server wires the RTP
        #: one, confstream.rtp.txlane): called once per tick with every row's µ-law codes and
        #: the rows' lane keys, returns per row 1 when it sent that row, else 0.
        self.tx_lane: Callable[[UInt8Matrix, npt.NDArray[np.int64]], UInt8Matrix] | None = None
        self._tx_keys: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._any_tx_key = False
        #: How many readers want participant levels; none: levels are not measured.
        self.level_watchers = 0
        self._level_countdown = 0
        self._levels: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._level_members: list[Participant] = []
        #: Called with (conference_sid, call_sid, speaking) when a participant starts or stops
        #: speaking (measured only while levels are watched).
        self.speech_listener: Callable[[str, str, bool], None] | None = None
        self._speaking: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._quiet: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._speech_members: list[Participant] = []
        self._speech_confs: list[str] = []
        self._waiting_rows: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)

    # ----------------------------------------------------------------- conferences
    def add_conference(self, conference_sid: str) -> ConferenceMedia:
        """Create the media of a conference, or return the existing one (idempotent)."""
        conf = self._conferences.get(conference_sid)
        if conf is None:
            conf = ConferenceMedia(self, conference_sid)
            self._conferences[conference_sid] = conf
            metrics.CONFERENCES_ACTIVE.inc()
            self._dirty = True
        return conf

    def get(self, conference_sid: str) -> ConferenceMedia | None:
        return self._conferences.get(conference_sid)

    def remove_conference(self, conference_sid: str) -> None:
        """Forget a conference and its participants, sources and taps (no hang-ups sent)."""
        conf = self._conferences.pop(conference_sid, None)
        if conf is None:
            return
        metrics.CONFERENCES_ACTIVE.dec()
        metrics.PARTICIPANTS_ACTIVE.dec(len(conf.participants))
        conf.closed = True
        self._dirty = True

    @property
    def conferences(self) -> dict[str, ConferenceMedia]:
        return self._conferences

    # ----------------------------------------------------------------- calls
    def call_media(self, call_sid: str) -> CallMedia:
        """The tap point of call ``call_sid`` (it need not be mixed anywhere yet)."""
        return CallMedia(self, call_sid)

    def add_call_tap(self, call_sid: str, t: Tap) -> None:
        """Deliver call ``call_sid``'s own audio to ``t`` from the next tick (see "Call taps"
        in the module docstring); adding the same tap twice has no effect."""
        taps = self._call_taps.setdefault(call_sid, [])
        if not any(x is t for x in taps):
            taps.append(t)

    def remove_call_tap(self, call_sid: str, t: Tap) -> None:
        """Stop delivering to ``t`` (and reading its ``own_source``); no error if absent."""
        taps = self._call_taps.get(call_sid)
        if taps is None:
            return
        with contextlib.suppress(ValueError):
            taps.remove(t)
        if not taps:
            del self._call_taps[call_sid]

    def call_taps(self, call_sid: str) -> list[Tap]:
        return list(self._call_taps.get(call_sid, ()))

    def participant(self, call_sid: str) -> Participant | None:
        """The participant of ``call_sid`` in whichever conference mixes it, or None."""
        for conf in self._conferences.values():
            p = conf.participants.get(call_sid)
            if p is not None:
                return p
        return None

    def emit_call_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """The caller pressed a key: tell the call's own taps (a failing tap is logged)."""
        for t in list(self._call_taps.get(call_sid, ())):
            try:
                t.on_dtmf(call_sid, digit, duration_ms)
            except Exception:
                self._log_error("on_dtmf", t, f"tap of call {call_sid}")

    @property
    def lateness_samples(self) -> list[float]:
        """Recent tick lateness values in seconds, oldest first (at most LATENESS_HISTORY)."""
        return list(self._lateness)

    def levels(self) -> dict[str, float]:
        """CallSid to the RMS (int16 scale, 0 to 32768) of that participant's latest measured
        frame as mixed; empty while nobody watches (see the module docstring). Participants
        added since the last measurement are missing until the next one (at most 100 ms)."""
        if self.level_watchers <= 0:
            return {}
        values = self._levels.tolist()
        return {p.call_sid: v for p, v in zip(self._level_members, values, strict=False)}

    def _layout_changed(self) -> None:
        self._dirty = True

    def _rebuild_layout(self) -> None:
        # By size (stable), so that equally sized conferences are adjacent (see step 2).
        self._order = sorted(self._conferences.values(), key=lambda c: len(c.participants))
        members: list[Participant] = []
        conf_of_row: list[int] = []
        blocks: list[tuple[int, int, int, int, int]] = []
        waiting_rows: list[int] = []
        for ci, conf in enumerate(self._order):
            size = len(conf.participants)
            if not size:
                continue
            row = len(members)
            if conf.waiting:
                waiting_rows.extend(range(row, row + size))
            if blocks and blocks[-1][2] == size:
                r0, _, _, c0, _ = blocks[-1]
                blocks[-1] = (r0, row + size, size, c0, ci + 1)
            else:
                blocks.append((row, row + size, size, ci, ci + 1))
            members.extend(conf.participants.values())
            conf_of_row.extend([ci] * size)
        self._blocks = blocks
        self._members = members
        reads: list[Callable[[], bytes | Frame | None]] = []
        writes: list[Callable[[bytes], bool] | None] = []
        for p in members:
            read_ulaw = getattr(p, "read_ulaw", None)
            write_ulaw = getattr(p, "write_ulaw", None)
            reads.append(read_ulaw if callable(read_ulaw) else p.read_frame)
            writes.append(write_ulaw if callable(write_ulaw) else None)
        self._reads = reads
        self._writes = writes
        self._any_ulaw_writer = any(w is not None for w in writes)
        tx_keys: list[int] = []
        for p in members:
            key = getattr(p, "tx_key", -1)
            tx_keys.append(key if type(key) is int else -1)
        self._tx_keys = np.array(tx_keys, dtype=np.int64)
        self._any_tx_key = any(k >= 0 for k in tx_keys)
        self._conf_of_row = np.array(conf_of_row, dtype=np.intp)
        self._row_of_call = {p.call_sid: i for i, p in enumerate(members)}
        self._waiting_rows = np.array(waiting_rows, dtype=np.intp)
        n_p, n_c = len(members), len(self._order)
        self._frames = _grow(self._frames, n_p)
        self._mix = _grow(self._mix, n_p)
        self._inbound = _grow(self._inbound, n_c)
        self._platform = _grow(self._platform, n_c)
        self._outbound = _grow(self._outbound, n_c)
        self._codes_out = _grow_u8(self._codes_out, n_p)
        self._heard = _grow_i16(self._heard, n_p)
        self._dirty = False

    # ----------------------------------------------------------------- mixing
    def tick(self) -> None:
        """Mix one 20 ms frame for every conference (synchronous; the clock calls it)."""
        if self._dirty:
            self._rebuild_layout()
        order = self._order
        members = self._members
        n_p, n_c = len(members), len(order)
        if n_c == 0:
            return
        log_error = self._log_error

        # 1. participants' frames: µ-law codes into one matrix (decoded at once), other frames
        #    kept aside and copied in after the decode.
        frames = self._frames[:n_p]
        hold_rows: list[int] = []
        pcm_rows: list[tuple[int, Participant, Frame]] = []
        # rows muted or on hold: what they sent, for call taps (not mixed)
        unmixed: dict[int, bytes | Frame | None] = {}
        # every row's 160 µ-law codes (silence for a row that contributes none), joined into
        # one bytes object and decoded at once: list.append per row, one copy for all
        parts: list[bytes] = []
        add = parts.append
        i = 0
        for p, read in zip(members, self._reads, strict=True):
            frame: bytes | Frame | None = None
            try:
                frame = read()
                if p.hold:
                    hold_rows.append(i)
                    unmixed[i] = frame
                    frame = None
                elif frame is None:
                    pass
                elif p.muted:
                    unmixed[i] = frame
                    frame = None
                elif type(frame) is not bytes or len(frame) != FRAME_SAMPLES:
                    # ``type(frame) is bytes`` (faster than isinstance on this per-frame path)
                    # does not narrow for mypy: here frame is the int16 Frame.
                    pcm_rows.append((i, p, frame))  # type: ignore[arg-type]
                    frame = None
            except Exception:
                frame = None
                log_error("read_frame", p, f"participant {getattr(p, 'call_sid', '?')}")
            add(_SILENCE_CODES if frame is None else frame)
            i += 1
        for r0 in range(0, n_p, _CHUNK_ROWS):
            codes = np.frombuffer(b"".join(parts[r0 : r0 + _CHUNK_ROWS]), dtype=np.uint8)
            out_rows = frames[r0 : r0 + _CHUNK_ROWS]
            _ULAW_DECODE_I32.take(codes.reshape(out_rows.shape), out=out_rows, mode="wrap")
        for i, p, frame in pcm_rows:
            row = frames[i]
            try:
                row[:] = frame
            except Exception:
                row.fill(0)
                log_error("read_frame", p, f"participant {getattr(p, 'call_sid', '?')}")
        if self._waiting_rows.size:
            frames[self._waiting_rows] = 0
        if self.level_watchers > 0:
            self._level_countdown -= 1
            if self._level_countdown <= 0:
                self._level_countdown = LEVEL_EVERY_TICKS
                energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64)
                self._levels = np.sqrt(energy / FRAME_SAMPLES)
                self._level_members = members
                self._detect_speech(members)
        elif self._speech_members:
            self._speaking = np.zeros(0, dtype=np.bool_)
            self._quiet = np.zeros(0, dtype=np.int64)
            self._speech_members = []

        # 2. inbound per conference
        inbound = self._inbound[:n_c]
        inbound.fill(0)
        if n_p:
            for r0, r1, size, c0, c1 in self._blocks:
                np.add.reduce(
                    frames[r0:r1].reshape(c1 - c0, size, FRAME_SAMPLES), axis=1, out=inbound[c0:c1]
                )

        # 3. platform sources
        platform = self._platform[:n_c]
        platform.fill(0)
        targeted: list[tuple[str, ConferenceMedia, npt.NDArray[np.int16]]] = []
        source_frames: dict[int, npt.NDArray[np.int16]] = {}
        for ci, conf in enumerate(order):
            if not conf.sources:
                continue
            for s in list(conf.sources):
                try:
                    if s.finished:
                        conf.remove_source(s)
                        continue
                    frame = s.read_frame()
                    if frame is not None:
                        if frame.shape != (FRAME_SAMPLES,):
                            raise ValueError(f"source frame has shape {frame.shape}")
                        if s.target_call_sid is None:
                            platform[ci] += frame
                            source_frames[id(s)] = frame
                        else:
                            targeted.append((s.target_call_sid, conf, frame))
                    if s.finished:
                        conf.remove_source(s)
                except Exception:
                    conf.remove_source(s)
                    log_error("read_frame", s, "audio source")

        # 3b. returned audio of call taps, heard by that call only
        call_taps = self._call_taps
        row_of_call = self._row_of_call
        call_own: dict[int, tuple[int, npt.NDArray[np.int16]]] = {}  # id(tap) -> (row, frame)
        if call_taps:
            for call_sid, taps in call_taps.items():
                r = row_of_call.get(call_sid)
                if r is None:
                    continue
                for t in taps:
                    own = t.own_source
                    if own is None:
                        continue
                    try:
                        if own.finished:
                            continue
                        frame = own.read_frame()
                        if frame is not None:
                            if frame.shape != (FRAME_SAMPLES,):
                                raise ValueError(f"source frame has shape {frame.shape}")
                            call_own[id(t)] = (r, frame)
                    except Exception:
                        log_error("read_frame", own, f"returned audio of call {call_sid}")

        # 4. outbound and every participant's mix-minus
        outbound = self._outbound[:n_c]
        np.add(inbound, platform, out=outbound)
        # a call tap's outbound without its own returned audio (by id of the tap)
        own_removed: dict[int, npt.NDArray[np.int16]] = {}
        heard = self._heard[:n_p]  # what each participant hears, int16 (reused buffer)
        if n_p:
            mix = self._mix[:n_p]
            # mode "clip": with the default "raise" NumPy buffers ``out`` (a temporary copy).
            # The array methods, not ``np.take``: that wrapper costs ~1.5 µs of Python a call.
            outbound.take(self._conf_of_row, axis=0, out=mix, mode="clip")
            np.subtract(mix, frames, out=mix)
            if targeted:
                row_of = {
                    (id(order[self._conf_of_row[i]]), m.call_sid): i for i, m in enumerate(members)
                }
                for call_sid, conf, frame in targeted:
                    r = row_of.get((id(conf), call_sid))
                    if r is not None:
                        mix[r] += frame
            for r, frame in call_own.values():
                mix[r] += frame
            if hold_rows:
                mix[hold_rows] = 0
            for key, (r, frame) in call_own.items():
                if not members[r].hold:
                    own_removed[key] = _to_int16((mix[r] - frame)[np.newaxis, :])[0]
            np.clip(mix, -32768, 32767, out=mix)
            np.copyto(heard, mix, casting="unsafe")
            ulaw = self._any_ulaw_writer
            writes = self._writes
            tx_lane = self.tx_lane
            lane_writes = ulaw and tx_lane is not None and self._any_tx_key
            if lane_writes:
                assert tx_lane is not None
                self._write_with_lane(tx_lane, n_p, heard, members)
            blob = b""
            i = 0
            for r0 in range(0, 0 if lane_writes else n_p, _CHUNK_ROWS):
                if ulaw:
                    encoded = self._codes_out[r0 : min(r0 + _CHUNK_ROWS, n_p)]
                    codes16 = heard[r0 : r0 + _CHUNK_ROWS].view(np.uint16)
                    ULAW_ENCODE.take(codes16, out=encoded, mode="wrap")
                    blob = encoded.tobytes()
                chunk = writes[r0 : r0 + _CHUNK_ROWS]
                starts = range(0, len(chunk) * FRAME_SAMPLES, FRAME_SAMPLES)
                for write_ulaw, start in zip(chunk, starts, strict=True):
                    try:
                        if write_ulaw is None or not write_ulaw(
                            blob[start : start + FRAME_SAMPLES]
                        ):
                            members[i].write_frame(_fresh_row(heard, i))
                    except Exception:
                        p = members[i]
                        log_error("write_frame", p, f"participant {getattr(p, 'call_sid', '?')}")
                    i += 1

        # 5. taps
        inbound16: npt.NDArray[np.int16] | None = None
        outbound16: npt.NDArray[np.int16] | None = None
        for ci, conf in enumerate(order):
            if conf.taps:
                if inbound16 is None:
                    inbound16 = _to_int16(inbound.copy())
                    outbound16 = _to_int16(outbound.copy())
                assert outbound16 is not None
                ts = conf.timestamp_ms
                # one view per conference: every tap gets the very same arrays (streams encode
                # a frame once for all of them, confstream.streams.shared)
                in_c, out_c = inbound16[ci], outbound16[ci]
                for t in list(conf.taps):
                    try:
                        out_t = out_c
                        own = t.own_source
                        if own is not None and id(own) in source_frames:
                            own_mix = outbound[ci] - source_frames[id(own)]
                            out_t = _to_int16(own_mix[np.newaxis, :])[0]
                        t.on_frame(in_c, out_t, ts)
                    except Exception:
                        conf.remove_tap(t)
                        log_error("on_frame", t, f"tap of conference {conf.sid} (dropped)")
            conf.ticks += 1

        # 6. call taps: the caller's own audio and what it hears
        if call_taps and n_p:
            ts = (self.ticks_run + self.ticks_skipped) * FRAME_MS
            for call_sid, taps in list(call_taps.items()):
                r = row_of_call.get(call_sid)
                if r is None:
                    continue
                said = self._said(r, frames, unmixed)
                heard_r = _fresh_row(heard, r)
                for t in list(taps):
                    try:
                        out_t = own_removed.get(id(t), heard_r)
                        t.on_frame(said, out_t, ts)
                    except Exception:
                        self.remove_call_tap(call_sid, t)
                        log_error("on_frame", t, f"tap of call {call_sid} (dropped)")
        self.ticks_run += 1

    def _write_with_lane(
        self,
        tx_lane: Callable[[UInt8Matrix, npt.NDArray[np.int64]], UInt8Matrix],
        n_p: int,
        heard: npt.NDArray[np.int16],
        members: list[Participant],
    ) -> None:
        """Step 4's writes with a send lane: encode every row, let the lane send those it
        takes in one call, write the others as without it (see "Send lane")."""
        codes_out = self._codes_out
        for r0 in range(0, n_p, _CHUNK_ROWS):
            r1 = min(r0 + _CHUNK_ROWS, n_p)
            ULAW_ENCODE.take(heard[r0:r1].view(np.uint16), out=codes_out[r0:r1], mode="wrap")
        rest: list[int]
        try:
            done = tx_lane(codes_out[:n_p], self._tx_keys)
            rest = np.flatnonzero(done[:n_p] == 0).tolist()
        except Exception:  # a bug in the lane: nothing is known sent, write every row
            self._log_error("tx_lane", tx_lane, "send lane")
            rest = list(range(n_p))
        writes = self._writes
        for i in rest:
            write_ulaw = writes[i]
            try:
                if write_ulaw is None or not write_ulaw(codes_out[i].tobytes()):
                    members[i].write_frame(_fresh_row(heard, i))
            except Exception:
                p = members[i]
                self._log_error("write_frame", p, f"participant {getattr(p, 'call_sid', '?')}")

    @staticmethod
    def _said(
        r: int, frames: Int32Matrix, unmixed: dict[int, bytes | Frame | None]
    ) -> npt.NDArray[np.int16]:
        """What row ``r``'s caller sent this tick, as a fresh read-only int16 frame."""
        if r in unmixed:
            raw = unmixed[r]
            if raw is None:
                said = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            elif type(raw) is bytes:
                said = ULAW_DECODE[np.frombuffer(raw, dtype=np.uint8)]
            else:
                said = np.array(raw, dtype=np.int16)
        else:
            said = frames[r].astype(np.int16)
        said.flags.writeable = False
        return said

    def _detect_speech(self, members: list[Participant]) -> None:
        """Advance the speech detector by one measurement (see the module docstring)."""
        if self._speech_members is not members:
            # membership changed: carry each participant's state over by CallSid
            old = {
                p.call_sid: (bool(s), int(q))
                for p, s, q in zip(self._speech_members, self._speaking, self._quiet, strict=False)
            }
            carried = [old.get(p.call_sid, (False, SPEECH_HANGOVER)) for p in members]
            self._speaking = np.array([c[0] for c in carried], dtype=np.bool_)
            self._quiet = np.array([c[1] for c in carried], dtype=np.int64)
            self._speech_members = members
            self._speech_confs = [self._order[ci].sid for ci in self._conf_of_row.tolist()]
        loud = self._levels > SPEECH_THRESHOLD_RMS
        self._quiet = np.where(loud, 0, np.minimum(self._quiet + 1, SPEECH_HANGOVER))
        speaking = loud | (self._speaking & (self._quiet < SPEECH_HANGOVER))
        changed = np.flatnonzero(speaking != self._speaking)
        self._speaking = speaking
        listener = self.speech_listener
        if listener is None or not changed.size:
            return
        for i in changed.tolist():
            try:
                listener(self._speech_confs[i], members[i].call_sid, bool(speaking[i]))
            except Exception:
                self._log_error("speech_listener", listener, "speech listener")

    # ----------------------------------------------------------------- clock
    async def start(self) -> None:
        """Start the clock task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="confstream-mixer-clock"
            )

    async def stop(self) -> None:
        """Stop the clock task and wait for it to end (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            deadline = start + n * TICK_SECONDS
            delay = deadline - loop.time()
            # Always yield once, even when late, so I/O callbacks run between ticks.
            await asyncio.sleep(delay if delay > 0 else 0)
            now = loop.time()
            lateness = now - deadline
            behind = int(lateness / TICK_SECONDS)
            if behind > MAX_BEHIND_TICKS:
                n += behind
                self.ticks_skipped += behind
                metrics.TICKS_SKIPPED.inc(behind)
                for conf in self._conferences.values():
                    conf.skipped += behind
                deadline = start + n * TICK_SECONDS
                lateness = now - deadline
                log.warning("mixer clock %d frames behind; skipped them", behind)
            lateness = max(lateness, 0.0)
            metrics.TICK_LATENESS.observe(lateness)
            self._lateness.append(lateness)
            t0 = time.perf_counter()
            self.clock_tick(deadline)
            metrics.TICK_DURATION.observe(time.perf_counter() - t0)
            self.clock_ticks += 1
            n += 1
            policy = self.gc_policy
            if policy is not None:  # collect between ticks, in the time left (gcpolicy)
                gcpolicy.after_tick(policy, start + n * TICK_SECONDS - loop.time())

    def clock_tick(self, at: float) -> None:
        """One step of the clock: every :attr:`io_hooks` with the tick's scheduled time
        ``at``, then :meth:`tick`. Errors are logged; the clock goes on."""
        for hook in self.io_hooks:
            try:
                hook(at)
            except Exception:
                self._log_error("io_hook", hook, "tick I/O hook")
        try:
            self.tick()
        except Exception:
            # A bug in the mixer itself: keep the clock alive for the other conferences.
            self._log_error("tick", self, "mixer")

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Engine conferences={len(self._conferences)} running={self.running}>"


__all__ = ["CallMedia", "ConferenceMedia", "Engine", "UlawMedia"]
