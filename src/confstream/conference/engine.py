"""The conference engine: one 20 ms clock for the whole server and a vectorised mixer.

Clock
-----
One asyncio task (:meth:`Engine.start`) runs every conference. Deadlines are computed, never
accumulated: tick ``n`` is due at ``start + n * 20 ms`` on ``loop.time()``, so sleep error does
not drift the clock. Each tick records its lateness (actual minus scheduled start) in
``metrics.TICK_LATENESS`` and its duration in ``metrics.TICK_DURATION``; the last
:data:`LATENESS_HISTORY` lateness values are kept in :attr:`Engine.lateness_samples` for the
benchmark. The clock always yields to the event loop at least once per tick (so RTP and
WebSocket I/O keep flowing even when it runs late) and never awaits anything else.

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
2. ``inbound[c]`` = sum of conference ``c``'s rows, with ``np.add.reduceat`` over the groups.
   Measured for P=1000 in 100 conferences (NumPy 2.4, this machine): reduceat 95 µs, cumsum
   differences 200 µs, an indicator-matrix product in float64 410 µs, ``np.add.at`` 650 µs;
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
receivers may keep them without copying (one allocation per tick for all participants, one per
conference with taps); all intermediate buffers are preallocated and grow by doubling.

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

import numpy as np
import numpy.typing as npt

from confstream import metrics
from confstream.conference.base import FRAME_MS, FRAME_SAMPLES, AudioSource, Participant, Tap
from confstream.conference.sources import BufferSource

log = logging.getLogger(__name__)

TICK_SECONDS = FRAME_MS / 1000
#: Lateness (in frames) beyond which missed ticks are skipped rather than caught up.
MAX_BEHIND_TICKS = 5
#: How many recent lateness values :attr:`Engine.lateness_samples` keeps (60 s of ticks).
LATENESS_HISTORY = 3000
#: Minimum seconds between two log lines about the same failing object.
ERROR_LOG_INTERVAL = 10.0

Int32Matrix = npt.NDArray[np.int32]
Frame = npt.NDArray[np.int16]


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
        """A participant pressed a key: tell every tap (a failing tap is logged, not dropped)."""
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
        self._conf_of_row: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._group_starts: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._nonempty: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        # Preallocated work buffers (grow by doubling).
        self._frames: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._mix: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._inbound: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._platform: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        self._outbound: Int32Matrix = np.zeros((16, FRAME_SAMPLES), dtype=np.int32)
        #: Ticks run by the clock task (for tests and the benchmark).
        self.clock_ticks = 0

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

    @property
    def lateness_samples(self) -> list[float]:
        """Recent tick lateness values in seconds, oldest first (at most LATENESS_HISTORY)."""
        return list(self._lateness)

    def _layout_changed(self) -> None:
        self._dirty = True

    def _rebuild_layout(self) -> None:
        self._order = list(self._conferences.values())
        members: list[Participant] = []
        conf_of_row: list[int] = []
        starts: list[int] = []
        nonempty: list[int] = []
        for ci, conf in enumerate(self._order):
            if conf.participants:
                nonempty.append(ci)
                starts.append(len(members))
                members.extend(conf.participants.values())
                conf_of_row.extend([ci] * len(conf.participants))
        self._members = members
        self._conf_of_row = np.array(conf_of_row, dtype=np.intp)
        self._group_starts = np.array(starts, dtype=np.intp)
        self._nonempty = np.array(nonempty, dtype=np.intp)
        n_p, n_c = len(members), len(self._order)
        self._frames = _grow(self._frames, n_p)
        self._mix = _grow(self._mix, n_p)
        self._inbound = _grow(self._inbound, n_c)
        self._platform = _grow(self._platform, n_c)
        self._outbound = _grow(self._outbound, n_c)
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

        # 1. participants' frames
        frames = self._frames[:n_p]
        hold_rows: list[int] = []
        for i, p in enumerate(members):
            row = frames[i]
            try:
                frame = p.read_frame()
                silent = p.muted or p.hold or frame is None
                if p.hold:
                    hold_rows.append(i)
                if silent:
                    row.fill(0)
                else:
                    row[:] = frame
            except Exception:
                row.fill(0)
                log_error("read_frame", p, f"participant {getattr(p, 'call_sid', '?')}")

        # 2. inbound per conference
        inbound = self._inbound[:n_c]
        inbound.fill(0)
        if n_p:
            inbound[self._nonempty] = np.add.reduceat(frames, self._group_starts, axis=0)

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

        # 4. outbound and every participant's mix-minus
        outbound = self._outbound[:n_c]
        np.add(inbound, platform, out=outbound)
        if n_p:
            mix = self._mix[:n_p]
            np.take(outbound, self._conf_of_row, axis=0, out=mix)
            np.subtract(mix, frames, out=mix)
            if targeted:
                row_of = {
                    (id(order[self._conf_of_row[i]]), m.call_sid): i for i, m in enumerate(members)
                }
                for call_sid, conf, frame in targeted:
                    r = row_of.get((id(conf), call_sid))
                    if r is not None:
                        mix[r] += frame
            if hold_rows:
                mix[hold_rows] = 0
            heard = _to_int16(mix)
            for i, p in enumerate(members):
                try:
                    p.write_frame(heard[i])
                except Exception:
                    log_error("write_frame", p, f"participant {getattr(p, 'call_sid', '?')}")

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
                for t in list(conf.taps):
                    try:
                        out_t = outbound16[ci]
                        own = t.own_source
                        if own is not None and id(own) in source_frames:
                            own_mix = outbound[ci] - source_frames[id(own)]
                            out_t = _to_int16(own_mix[np.newaxis, :])[0]
                        t.on_frame(inbound16[ci], out_t, ts)
                    except Exception:
                        conf.remove_tap(t)
                        log_error("on_frame", t, f"tap of conference {conf.sid} (dropped)")
            conf.ticks += 1

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
            try:
                self.tick()
            except Exception:
                # A bug in the mixer itself: keep the clock alive for the other conferences.
                self._log_error("tick", self, "mixer")
            metrics.TICK_DURATION.observe(time.perf_counter() - t0)
            self.clock_ticks += 1
            n += 1

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Engine conferences={len(self._conferences)} running={self.running}>"


__all__ = ["ConferenceMedia", "Engine"]
