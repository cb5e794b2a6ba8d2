"""Application logic between the REST API, the SIP edge, the store, the engine and streams.

:class:`Services` is the one place that changes both live state (the engine's conferences and
participants, the stream manager) and records (the store), keeping them in step:

* **Conference lifecycle** (docs/sip.md, Joining a conference). A SIP ``join`` finds the
  account's live conference by friendly name or creates it ``in-progress`` (record + engine
  conference), then adds the participant (engine + record). ``leave`` removes the participant
  and completes its record; the conference ends when the last participant has left, or when
  the one leaving has ``end_conference_on_exit`` (the others are hung up): its streams are
  stopped, its engine conference removed and its record completed. ``end_conference`` (REST
  ``Status=completed``) hangs every participant up first. The record keeps why, with Twilio's
  ``reason_conference_ended`` values and the CallSid that ended it
  (:func:`confstream.store.models.end_reason`): ``conference-ended-via-api``,
  ``last-participant-left``/``-kicked`` (kicked: removed through the REST API),
  ``participant-with-end-conference-on-exit-left``/``-kicked``.
* **Participants**: REST mute/hold act on the live participant object (what the mixer reads)
  and on the record, ``end_conference_on_exit`` on the record (read when it leaves); delete
  hangs the participant up and completes its record at once.
* **Reads** for the REST API (conferences, participants, streams, account authentication) go
  through here too: the API never reaches into the store. A resource that is missing, or
  belongs to another account, raises :class:`~confstream.errors.NotFound`.
* **Dashboard** (docs/operations.md, Dashboard): :meth:`Services.dashboard_snapshot` is a
  read-only view of one account's live conferences (live participants with mute/hold and audio
  level, streams with status and counters); :meth:`Services.watching_levels` asks the engine to
  measure levels while a dashboard is connected.
* **Streams**: create validates against the conference's state, stores the record (never the
  bearer token) and hands a spec to the stream manager; the manager reports every status change
  through :meth:`Services.on_stream_status`, which persists it.

* **Cluster mode** (docs/cluster.md): with a ``placement``, a join first claims the conference
  for this node (:class:`~confstream.errors.JoinRefused` 503 when another node owns it or this
  one drains), a live record of that name this node does not host is ended as its dead node's,
  and joins, leaves and ends are published so Kamailio and the REST forwarding find the owner.

Lifecycle changes (join, leave, end) are serialised by one ``asyncio.Lock``: they are rare and
short, and the lock makes "last participant left" and "join creates the conference" race-free
within the process. The media clock never waits on it.

Refusals are domain errors (:mod:`confstream.errors`), never protocol answers: the REST API
and the SIP edge each map them to their own statuses.

:class:`Services` implements :class:`confstream.conference.gateway.ConferenceGateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from confstream.cluster.placement import Placement
from confstream.conference.base import Participant
from confstream.conference.gateway import IncomingCall
from confstream.errors import (
    AccountNotActive,
    AlreadyJoined,
    AnnouncementInvalid,
    AnnouncementUnavailable,
    ConferenceNotLive,
    NotFound,
    UrlRefused,
)
from confstream.logsetup import register_secret
from confstream.settings import Settings
from confstream.store import Account, Conference, ConferenceFilter, Store, Stream
from confstream.store import Participant as ParticipantRecord
from confstream.store.models import (
    CONFERENCE_COMPLETED,
    CONFERENCE_IN_PROGRESS,
    ENDED_END_ON_EXIT_KICKED,
    ENDED_END_ON_EXIT_LEFT,
    ENDED_LAST_KICKED,
    ENDED_LAST_LEFT,
    ENDED_VIA_API,
    PARTICIPANT_IN_PROGRESS,
    STREAM_ACTIVE_STATUSES,
    STREAM_STOPPED,
    end_reason,
)
from confstream.streams.spec import StreamRequest, StreamSpec

log = logging.getLogger(__name__)

RowT = TypeVar("RowT")

#: reason recorded for participants removed through the REST API
REASON_KICKED = "Participant removed via API"
#: reason recorded for streams stopped through the REST API
REASON_STREAM_API = "Stream stopped via API"


def _found(row: RowT | None, what: str) -> RowT:
    """``row``, or :class:`NotFound` naming ``what`` (e.g. ``Conference <sid>``)."""
    if row is None:
        raise NotFound(what)
    return row


class ConferenceMediaLike(Protocol):
    """What Services uses of the engine's per-conference object."""

    def add_participant(self, participant: Participant) -> Any: ...
    def remove_participant(self, call_sid: str) -> Any: ...
    def play(self, pcm: npt.NDArray[np.int16], target_call_sid: str | None = None) -> Any: ...
    def emit_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> Any: ...


class EngineLike(Protocol):
    def add_conference(self, sid: str) -> Any: ...
    def get(self, sid: str) -> Any: ...
    def remove_conference(self, sid: str) -> Any: ...


class StreamsLike(Protocol):
    async def start(self, spec: Any) -> Any: ...
    async def stop(self, sid: str, reason: str) -> Any: ...
    async def stop_conference(self, conference_sid: str) -> Any: ...


@dataclass
class LiveParticipant:
    participant: Participant
    conference_sid: str
    account_sid: str


#: At most this many conferences, and streams per conference, in a dashboard snapshot.
DASHBOARD_MAX_CONFERENCES = 50
DASHBOARD_MAX_STREAMS = 20
#: Levels at or below this are shown as silence (dBFS).
SILENCE_DBFS = -90.0


@dataclass(frozen=True)
class ParticipantView:
    """A live participant on the dashboard. ``level_dbfs``: RMS of what it contributes to the
    mix (0 when muted or on hold), None while not yet measured."""

    call_sid: str
    muted: bool
    hold: bool
    level_dbfs: float | None


@dataclass(frozen=True)
class StreamView:
    """A stream on the dashboard; the counters are None once its session has ended."""

    sid: str
    name: str | None
    status: str
    track: str
    codec: str
    error_code: int | None
    messages_sent: int | None  # last sequenceNumber built (docs/protocol.md)
    media_sent: int | None  # media messages built, all tracks
    frames_dropped: int | None  # audio frames dropped from the send queue (slow receiver)
    queued_frames: int | None


@dataclass(frozen=True)
class ConferenceView:
    sid: str
    friendly_name: str
    status: str
    participants: list[ParticipantView] = field(default_factory=list)
    streams: list[StreamView] = field(default_factory=list)


@dataclass(frozen=True)
class DashboardSnapshot:
    account_sid: str
    conferences: list[ConferenceView]

    @property
    def totals(self) -> dict[str, int]:
        """Counts over the snapshot: live conferences, participants, active streams, drops."""
        streams = [s for c in self.conferences for s in c.streams]
        return {
            "conferences": len(self.conferences),
            "participants": sum(len(c.participants) for c in self.conferences),
            "streams_active": sum(1 for s in streams if s.status in STREAM_ACTIVE_STATUSES),
            "frames_dropped": sum(s.frames_dropped or 0 for s in streams),
        }


def _dbfs(rms: float | None) -> float | None:
    if rms is None:
        return None
    if rms <= 0:
        return SILENCE_DBFS
    return round(max(SILENCE_DBFS, 20 * math.log10(rms / 32768)), 1)


class Services:
    """See the module docstring. ``streams`` may be attached later with :meth:`attach_streams`
    (the stream manager needs :meth:`on_stream_status` at construction)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: EngineLike,
        streams: StreamsLike | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.streams = streams
        self._live: dict[str, LiveParticipant] = {}
        self._lifecycle = asyncio.Lock()
        self._stream_create = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Cluster mode only (docs/cluster.md): who owns which conference.
        self.placement: Placement | None = None

    def attach_streams(self, streams: StreamsLike) -> None:
        self.streams = streams

    # ------------------------------------------------------------------ helpers
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background store update failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background record updates (hold changes) to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def live_participant(self, call_sid: str) -> Participant | None:
        live = self._live.get(call_sid)
        return live.participant if live is not None else None

    def live_call_sids(self, conference_sid: str) -> list[str]:
        return [sid for sid, live in self._live.items() if live.conference_sid == conference_sid]

    # --------------------------------------------------------------- accounts
    async def authenticate(self, account_sid: str, auth_token: str) -> Account | None:
        """The account when ``auth_token`` is its token (constant-time compare), else None."""
        account = await self.store.get_account(account_sid)
        if account is None or account.status != "active":
            # compare anyway so timing does not tell whether the account exists
            hmac.compare_digest(auth_token.encode(), b"x" * 32)
            return None
        if not hmac.compare_digest(auth_token.encode(), account.auth_token.encode()):
            return None
        return account

    # ------------------------------------------------------- ConferenceGateway
    async def auth_token(self, account_sid: str) -> str | None:
        account = await self.store.get_account(account_sid)
        if account is None or account.status != "active":
            return None
        return account.auth_token

    async def incoming_call(self, call: IncomingCall, participant: Participant) -> None:
        """The SIP edge's authenticated call (gateway seam): join the conference the
        Request-URI names (docs/sip.md, "Joining a conference")."""
        await self.join(call.account_sid, call.request_user, participant)

    async def join(self, account_sid: str, conference_name: str, participant: Participant) -> str:
        async with self._lifecycle:
            account = await self.store.get_account(account_sid)
            if account is None or account.status != "active":
                raise AccountNotActive()
            if participant.call_sid in self._live:
                raise AlreadyJoined()
            if self.placement is not None:
                # one owner per conference (docs/cluster.md): JoinRefused(503) when not us
                await self.placement.claim(account_sid, conference_name)
            conference = await self.store.find_live_conference(account_sid, conference_name)
            if (
                conference is not None
                and self.placement is not None
                and self.engine.get(conference.sid) is None
            ):
                # the live record of a node that died: end it, the caller gets a fresh one
                await self.placement.end_stale(conference.sid)
                conference = None
            if conference is None:
                conference = await self.store.create_conference(account_sid, conference_name)
            media = self.engine.get(conference.sid)
            if media is None:
                media = self.engine.add_conference(conference.sid)
            media.add_participant(participant)
            try:
                await self.store.add_participant(
                    participant.call_sid,
                    conference.sid,
                    account_sid,
                    muted=bool(participant.muted),
                    hold=bool(participant.hold),
                )
            except BaseException:
                media.remove_participant(participant.call_sid)
                if not self.live_call_sids(conference.sid):
                    await self._end_locked(conference.sid, "join failed")
                raise
            self._live[participant.call_sid] = LiveParticipant(
                participant, conference.sid, account_sid
            )
            if self.placement is not None:
                await self.placement.joined(
                    conference.sid, account_sid, conference_name, participant.call_sid
                )
            return conference.sid

    async def leave(self, call_sid: str, reason: str, *, kicked: bool = False) -> None:
        """The participant has left (``kicked``: removed through the REST API). The conference
        ends when it was the last one, or when it had ``end_conference_on_exit`` (see the
        module docstring for the reasons recorded)."""
        async with self._lifecycle:
            live = self._live.pop(call_sid, None)
            if live is None:
                await self.store.complete_participant(call_sid, reason)
                return
            media = self.engine.get(live.conference_sid)
            if media is not None:
                media.remove_participant(call_sid)
            record = await self.store.complete_participant(call_sid, reason)
            if self.placement is not None:
                await self.placement.left(call_sid)
            if record is not None and record.end_conference_on_exit:
                why = ENDED_END_ON_EXIT_KICKED if kicked else ENDED_END_ON_EXIT_LEFT
            elif not self.live_call_sids(live.conference_sid):
                why = ENDED_LAST_KICKED if kicked else ENDED_LAST_LEFT
            else:
                return
            await self._end_locked(live.conference_sid, end_reason(why, call_sid))

    def hold_changed(self, call_sid: str, hold: bool) -> None:
        live = self._live.get(call_sid)
        if live is None:
            return
        live.participant.hold = hold
        self._spawn(self.store.update_participant(call_sid, hold=hold))

    def dtmf_received(self, call_sid: str, digit: str, duration_ms: int) -> None:
        live = self._live.get(call_sid)
        if live is None:
            return
        media = self.engine.get(live.conference_sid)
        if media is not None:
            media.emit_dtmf(call_sid, digit, duration_ms)

    # ------------------------------------------------------------ conferences
    async def get_conference(self, account_sid: str, conference_sid: str) -> Conference:
        """The account's conference; :class:`NotFound` when missing or another account's."""
        conference = await self.store.get_conference(conference_sid, account_sid)
        return _found(conference, f"Conference {conference_sid}")

    async def list_conferences(
        self, account_sid: str, filters: ConferenceFilter, *, offset: int, limit: int
    ) -> list[Conference]:
        """A page of the account's conferences, newest first."""
        return await self.store.list_conferences(account_sid, filters, offset=offset, limit=limit)

    async def update_conference(
        self,
        conference: Conference,
        *,
        end: bool = False,
        announce_url: str | None = None,
        announce_method: str = "POST",
    ) -> Conference:
        """The REST update (docs/api.md, Conferences): play ``announce_url`` first (the
        conference must be in progress: :class:`ConferenceNotLive`), then end the conference
        when ``end`` (a completed one is left as it is). Returns the record as it is now."""
        if announce_url is not None:
            if conference.status != CONFERENCE_IN_PROGRESS:
                raise ConferenceNotLive(conference.sid)
            await self.announce(conference.sid, announce_url, announce_method)
        if end and conference.status != CONFERENCE_COMPLETED:
            await self.end_conference(conference.sid, ENDED_VIA_API)
        fresh = await self.store.get_conference(conference.sid)
        return fresh if fresh is not None else conference

    async def end_conference(self, conference_sid: str, reason: str = ENDED_VIA_API) -> None:
        """Hang every participant up, stop the streams, drop the media, complete the record
        with ``reason`` (stored as it is: a Twilio reason, or text such as a shutdown's)."""
        async with self._lifecycle:
            await self._end_locked(conference_sid, reason)

    async def _end_locked(self, conference_sid: str, reason: str) -> None:
        for call_sid in self.live_call_sids(conference_sid):
            live = self._live.pop(call_sid)
            try:
                live.participant.hangup(reason)
            except Exception:
                log.exception("hangup of %s failed", call_sid)
            media = self.engine.get(conference_sid)
            if media is not None:
                media.remove_participant(call_sid)
            await self.store.complete_participant(call_sid, reason)
            if self.placement is not None:
                await self.placement.left(call_sid)
        if self.streams is not None:
            try:
                await self.streams.stop_conference(conference_sid)
            except Exception:
                log.exception("stopping the streams of %s failed", conference_sid)
        # whatever the manager did not know about is stopped in the records too
        for stream in await self.store.list_streams_active(conference_sid):
            await self.store.set_stream_status(stream.sid, STREAM_STOPPED)
        if self.engine.get(conference_sid) is not None:
            self.engine.remove_conference(conference_sid)
        await self.store.complete_conference(conference_sid, reason)
        if self.placement is not None:
            await self.placement.ended(conference_sid)

    async def announce(
        self,
        conference_sid: str,
        url: str,
        method: str = "POST",
        target_call_sid: str | None = None,
    ) -> None:
        """Fetch a WAV file through the outbound policy and play it into the conference (or to
        one participant). Raises :class:`AnnouncementUnavailable` (11200, fetch failed),
        :class:`AnnouncementInvalid` (12300, not a usable WAV), :class:`UrlRefused` (21205) or
        :class:`ConferenceNotLive` (21220, no live media)."""
        from confstream import netpolicy
        from confstream.media.wav import WavError, parse_wav

        media = self.engine.get(conference_sid)
        if media is None:
            raise ConferenceNotLive(conference_sid)
        try:
            if method.upper() == "GET":
                response = await netpolicy.policy_get(
                    url,
                    self.settings.allowed_networks,
                    request_timeout=self.settings.callback_timeout,
                )
            else:
                async with netpolicy.policy_client(
                    self.settings.allowed_networks,
                    timeout=self.settings.callback_timeout,
                    follow_redirects=True,
                ) as client:
                    response = await client.post(url)
        except netpolicy.PolicyError as exc:
            raise UrlRefused(f"AnnounceUrl refused: {exc}") from exc
        except Exception as exc:
            perr = netpolicy.policy_error_of(exc)
            if perr is not None:
                raise UrlRefused(f"AnnounceUrl refused: {perr}") from exc
            raise AnnouncementUnavailable(f"AnnounceUrl could not be fetched: {exc}") from exc
        if response.status_code >= 400:
            raise AnnouncementUnavailable(f"AnnounceUrl answered HTTP {response.status_code}")
        try:
            pcm = parse_wav(response.content)
        except WavError as exc:
            raise AnnouncementInvalid(f"AnnounceUrl is not a supported WAV file: {exc}") from exc
        media.play(pcm, target_call_sid=target_call_sid)

    # ------------------------------------------------------------ participants
    async def get_participant(self, conference_sid: str, call_sid: str) -> ParticipantRecord:
        """The participant in the conference now; :class:`NotFound` when it is not there or
        has left (docs/api.md, Participants)."""
        row = await self.store.get_participant(call_sid, conference_sid)
        if row is None or row.status != PARTICIPANT_IN_PROGRESS:
            raise NotFound(f"Participant {call_sid}")
        return row

    async def list_participants(
        self,
        conference_sid: str,
        *,
        muted: bool | None = None,
        hold: bool | None = None,
        coaching: bool | None = None,
        offset: int,
        limit: int,
    ) -> list[ParticipantRecord]:
        """A page of the participants in the conference now, oldest first."""
        return await self.store.list_participants(
            conference_sid,
            muted=muted,
            hold=hold,
            coaching=coaching,
            offset=offset,
            limit=limit,
        )

    async def update_participant(
        self,
        call_sid: str,
        *,
        muted: bool | None = None,
        hold: bool | None = None,
        end_conference_on_exit: bool | None = None,
    ) -> ParticipantRecord | None:
        """Mute/hold the live participant (the mixer reads them at its next tick) and record
        the changes; None leaves a field as it is."""
        live = self._live.get(call_sid)
        if live is not None:
            if muted is not None:
                live.participant.muted = muted
            if hold is not None:
                live.participant.hold = hold
        return await self.store.update_participant(
            call_sid, muted=muted, hold=hold, end_conference_on_exit=end_conference_on_exit
        )

    async def kick(self, call_sid: str, reason: str = REASON_KICKED) -> None:
        """Hang the participant up and complete its record now (SIP's later ``leave`` is then
        a no-op); a conference this ends records a ``-kicked`` reason."""
        live = self._live.get(call_sid)
        if live is not None:
            try:
                live.participant.hangup(reason)
            except Exception:
                log.exception("hangup of %s failed", call_sid)
        await self.leave(call_sid, reason, kicked=True)

    # ---------------------------------------------------------------- streams
    async def get_stream(self, conference_sid: str, sid_or_name: str) -> Stream:
        """The conference's stream by SID, else by Name; :class:`NotFound` when none."""
        stream = await self.store.get_stream(conference_sid, sid_or_name)
        return _found(stream, f"Stream {sid_or_name}")

    async def list_streams(
        self, conference_sid: str, *, status: str | None = None, offset: int, limit: int
    ) -> list[Stream]:
        """A page of the conference's streams, oldest first, stopped ones included."""
        return await self.store.list_streams(
            conference_sid, status=status, offset=offset, limit=limit
        )

    async def create_stream(
        self, account: Account, conference: Conference, request: StreamRequest
    ) -> Stream:
        """Store a queued stream and start it. Raises :class:`ConferenceNotLive` (21220) or
        :class:`~confstream.errors.NameInUse` (20409, from the store)."""
        async with self._stream_create:
            current = await self.store.get_conference(conference.sid)
            if (
                current is None
                or current.status != CONFERENCE_IN_PROGRESS
                or self.engine.get(conference.sid) is None
            ):
                raise ConferenceNotLive(conference.sid)
            row = await self.store.create_stream(
                conference_sid=conference.sid,
                account_sid=account.sid,
                url=request.url,
                name=request.name,
                track=request.track,
                codec=request.codec,
                realtime=request.realtime,
                status_callback=request.status_callback,
                status_callback_method=request.status_callback_method,
            )
        if self.streams is None:
            await self.store.set_stream_status(row.sid, STREAM_STOPPED, 20500, "no stream manager")
        else:
            register_secret(request.bearer_token)  # never logged (docs/operations.md)
            spec = self._stream_spec(account, row, request)
            try:
                await self.streams.start(spec)
            except Exception as exc:
                log.exception("stream %s failed to start", row.sid)
                await self.store.set_stream_status(row.sid, STREAM_STOPPED, 20500, str(exc))
        fresh = await self.store.get_stream_by_sid(row.sid)
        return fresh if fresh is not None else row

    def _stream_spec(self, account: Account, row: Stream, request: StreamRequest) -> StreamSpec:
        return request.bind(
            sid=row.sid,
            account_sid=account.sid,
            auth_token=account.auth_token,
            conference_sid=row.conference_sid,
        )

    async def stop_stream(self, stream: Stream, reason: str = REASON_STREAM_API) -> Stream:
        """Stop an active stream; an already stopped one is returned as it is."""
        if stream.status in STREAM_ACTIVE_STATUSES:
            if self.streams is not None:
                try:
                    await self.streams.stop(stream.sid, reason)
                except Exception:
                    log.exception("stopping stream %s failed", stream.sid)
            await self.store.set_stream_status(stream.sid, STREAM_STOPPED)
        fresh = await self.store.get_stream_by_sid(stream.sid)
        return fresh if fresh is not None else stream

    async def on_stream_status(
        self,
        stream_sid: str,
        status: str,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> None:
        """The stream manager's status hook: persist the change (and its history row)."""
        await self.store.set_stream_status(stream_sid, status, error_code, error_message)

    # --------------------------------------------------------------- dashboard
    @contextlib.contextmanager
    def watching_levels(self) -> Iterator[None]:
        """Have the engine measure participant levels while inside (one per dashboard)."""
        engine: Any = self.engine
        watched = hasattr(engine, "level_watchers")
        if watched:
            engine.level_watchers += 1
        try:
            yield
        finally:
            if watched:
                engine.level_watchers -= 1

    async def dashboard_snapshot(self, account_sid: str) -> DashboardSnapshot:
        """Read-only: the account's live conferences (at most DASHBOARD_MAX_CONFERENCES, oldest
        first) with their live participants and their streams (at most DASHBOARD_MAX_STREAMS
        each, stopped ones included). Nothing of another account is ever included."""
        by_conference: dict[str, list[Participant]] = {}
        for live in self._live.values():
            if live.account_sid == account_sid:
                by_conference.setdefault(live.conference_sid, []).append(live.participant)
        levels_of: Any = getattr(self.engine, "levels", None)
        levels: dict[str, float] = levels_of() if callable(levels_of) else {}
        conferences: list[ConferenceView] = []
        for conference_sid, members in list(by_conference.items())[:DASHBOARD_MAX_CONFERENCES]:
            record = await self.store.get_conference(conference_sid, account_sid)
            if record is None:
                continue
            streams = await self.store.list_streams(
                conference_sid, offset=0, limit=DASHBOARD_MAX_STREAMS
            )
            conferences.append(
                ConferenceView(
                    sid=record.sid,
                    friendly_name=record.friendly_name,
                    status=record.status,
                    participants=[
                        ParticipantView(
                            call_sid=p.call_sid,
                            muted=bool(p.muted),
                            hold=bool(p.hold),
                            level_dbfs=_dbfs(levels.get(p.call_sid)),
                        )
                        for p in members
                    ],
                    streams=[self._stream_view(row) for row in streams],
                )
            )
        return DashboardSnapshot(account_sid, conferences)

    def _stream_view(self, row: Stream) -> StreamView:
        session_of: Any = getattr(self.streams, "session", None)
        session: Any = session_of(row.sid) if callable(session_of) else None
        counters: list[int | None] = [None, None, None, None]
        if session is not None:
            protocol: Any = getattr(session, "protocol", None)
            chunks: Any = getattr(protocol, "chunks", None)
            counters = [
                getattr(protocol, "sequence", None),
                sum(chunks.values()) if isinstance(chunks, dict) else None,
                getattr(session, "frames_dropped", None),
                getattr(session, "queued_ticks", None),
            ]
        return StreamView(
            row.sid,
            row.name,
            row.status,
            row.track,
            row.codec,
            row.error_code,
            *counters,
        )

    # --------------------------------------------------------------- start-up
    async def close_leftovers(self, reason: str = "confstream restarted") -> dict[str, int]:
        """Run at start-up, before any listener opens (see Store.close_leftovers)."""
        return await self.store.close_leftovers(reason)

    async def shutdown(self, reason: str = "confstream shutting down") -> None:
        """End every live conference (orderly shutdown)."""
        conferences: Iterable[str] = {live.conference_sid for live in self._live.values()}
        for conference_sid in list(conferences):
            await self.end_conference(conference_sid, reason)
        await self.drain()
