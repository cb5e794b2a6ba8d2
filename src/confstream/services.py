"""Application logic between the REST API, the SIP edge, the store, the engine and streams.

:class:`Services` is the one place that changes both live state (the engine's conferences and
participants, the stream manager) and records (the store), keeping them in step:

* **Conference lifecycle** (docs/sip.md, Joining a conference). A SIP ``join`` finds the
  account's live conference by friendly name or creates it ``in-progress`` (record + engine
  conference), then adds the participant (engine + record). ``leave`` (the call has ended) and
  ``leave_conference`` (the call goes on, e.g. to its next cXML verb) remove the participant
  and complete its record; the conference ends when the last participant has left, or when
  the one leaving has ``end_conference_on_exit`` (the others are hung up): its streams are
  stopped, its engine conference removed and its record completed. ``end_conference`` (REST
  ``Status=completed``) hangs every participant up first. The record keeps why, with Twilio's
  ``reason_conference_ended`` values and the CallSid that ended it
  (:func:`confstream.store.models.end_reason`): ``conference-ended-via-api``,
  ``last-participant-left``/``-kicked`` (kicked: removed through the REST API),
  ``participant-with-end-conference-on-exit-left``/``-kicked``. A participant whose call
  runs a voice application is never hung up by a conference's end or a REST delete: it
  leaves the conference and the call runtime goes on with its script
  (:meth:`VoiceRuntime.conference_left`: ``<Dial action>``, else the next verb).
* **Join options** (:class:`~confstream.conference.gateway.JoinOptions`, docs/voice.md,
  "Conference options"): ``muted``; ``beep`` (``true``/``onEnter``: the enter beep is played to
  the conference when the participant enters, ``true``/``onExit``: the exit beep when it
  leaves a conference that goes on); ``start_conference_on_enter`` (a conference created by a
  participant without it is ``init`` and *waits*: no mixing, everyone hears the looping
  ``wait_url`` WAV, or silence; the first participant with it starts the conference:
  ``in-progress``, ``conference-start``); ``end_conference_on_exit`` (its leave, however it
  happens, ends the conference); ``max_participants`` (a join beyond it raises
  :class:`~confstream.errors.ConferenceFull`); ``label`` (stored on the participant; REST
  lookups accept it where they accept a CallSid). Coaching is refused
  (:class:`~confstream.errors.CoachingRefused`). The conference-level fields (``wait_url``,
  ``max_participants``, ``status_callback*``) are the creating participant's. ``options=None``
  is a plain SIP caller's: :data:`PLAIN_SIP_JOIN` (no beep), today's behaviour.
* **Conference status callbacks** (docs/voice.md, "Conference status callbacks";
  :mod:`confstream.callbacks.conference`): the events the conference's
  ``status_callback_event`` words select, signed and delivered by the stream callbacks'
  :class:`~confstream.callbacks.webhooks.CallbackSender` on one ordered queue per conference,
  numbered when emitted (always under the lifecycle lock or synchronously on the loop, so the
  numbers follow the order of the changes). Order: ``participant-join`` then, when that join
  starts the conference, ``conference-start``; on the end, a ``participant-leave`` per
  participant then ``conference-end``. Mute and hold changes (REST, SIP re-INVITE) emit
  ``participant-(un)mute``/``-(un)hold``; a conference with ``speaker`` keeps the engine
  measuring levels and reports the engine's speech detector (docs/voice.md).
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
* **Voice applications** (docs/voice.md): an incoming call of an account with a voice URL is
  handed to the call runtime (``voice``, :class:`confstream.calls.runtime.VoiceRuntime`,
  attached with :meth:`Services.attach_voice`), which fetches and runs its cXML; without a
  voice URL the caller joins the conference its Request-URI names, as before. The runtime
  hears the call's keys through a per-call digit listener (:meth:`set_digit_listener`), the
  call's end through :meth:`leave` and its streams' ends through :meth:`on_stream_status`.
* **Streams**: create validates against the conference's state, stores the record (never the
  bearer token) and hands a spec to the stream manager; the manager reports every status change
  through :meth:`Services.on_stream_status`, which persists it.
* **Calls** (docs/api.md, Calls): every SIP call has a Call record, created ``ringing`` by
  :meth:`Services.incoming_call` before anything else happens to the call, ``in-progress``
  (``start_time``) when the call is accepted, ``busy`` (SIP 486/600) or ``failed`` (any other
  refusal) when it is refused, ``completed`` (``end_time``, ``duration``) by
  :meth:`Services.leave`, which is the call's end: it also stops the call's streams. A live
  call (answered or being answered, not yet ended) is known with its audio wherever it is
  mixed, so :meth:`Services.hangup_call` (``Status=completed``/``canceled``) can hang it up;
  :meth:`Services.redirect_call` (``Url``/``Twiml``) hands it to the voice runtime
  (``Services.voice``, :class:`~confstream.calls.runtime.VoiceRuntime`); without one it answers
  :class:`~confstream.errors.CallControlUnavailable`.
* **Call streams** (docs/protocol.md, "Call streams"): :meth:`Services.start_call_stream` and
  :meth:`Services.stop_call_stream` are the conference streams' create and stop for one live
  call; the engine's call tap gives what that caller says (``inbound``) and hears
  (``outbound``).

* **Cluster mode** (docs/cluster.md): with a ``placement``, a join first claims the conference
  for this node (:class:`~confstream.errors.JoinRefused` 503 when another node owns it or this
  one drains), a live record of that name this node does not host is ended as its dead node's,
  and calls, joins, leaves and ends are published so Kamailio and the REST forwarding find the
  owner, and a survivor can end this node's calls and conferences if it dies.

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
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from confstream.callbacks import conference as confevents
from confstream.callbacks.webhooks import Callback, CallbackSender
from confstream.cluster.placement import Placement
from confstream.conference.base import Participant
from confstream.conference.gateway import IncomingCall, JoinOptions
from confstream.conference.sources import LoopSource
from confstream.errors import (
    AccountNotActive,
    AlreadyJoined,
    AnnouncementInvalid,
    AnnouncementUnavailable,
    CallControlUnavailable,
    CallNotLive,
    CoachingRefused,
    ConferenceFull,
    ConferenceNotLive,
    JoinRefused,
    NotFound,
    OwnerUnavailable,
    UrlRefused,
)
from confstream.logsetup import register_secret
from confstream.settings import Settings
from confstream.store import (
    Account,
    Call,
    CallFilter,
    Conference,
    ConferenceFilter,
    Store,
    Stream,
)
from confstream.store import Participant as ParticipantRecord
from confstream.store.models import (
    CALL_BUSY,
    CALL_CANCELED,
    CALL_COMPLETED,
    CALL_FAILED,
    CALL_IN_PROGRESS,
    CALL_INBOUND,
    CALL_QUEUED,
    CALL_RINGING,
    CONFERENCE_COMPLETED,
    CONFERENCE_IN_PROGRESS,
    CONFERENCE_INIT,
    ENDED_END_ON_EXIT_KICKED,
    ENDED_END_ON_EXIT_LEFT,
    ENDED_LAST_KICKED,
    ENDED_LAST_LEFT,
    ENDED_VIA_API,
    PARTICIPANT_DIALING,
    PARTICIPANT_FAILED,
    PARTICIPANT_IN_PROGRESS,
    STREAM_ACTIVE_STATUSES,
    STREAM_STOPPED,
    end_reason,
    split_end_reason,
    utcnow,
)
from confstream.streams.spec import StreamRequest, StreamSpec

if TYPE_CHECKING:
    from confstream.calls.runtime import VoiceRuntime

log = logging.getLogger(__name__)

RowT = TypeVar("RowT")

#: reason recorded for participants removed through the REST API
REASON_KICKED = "Participant removed via API"
#: reason recorded for streams stopped through the REST API
REASON_STREAM_API = "Stream stopped via API"
#: reason recorded for calls hung up through the REST API (Calls ``Status=completed``)
REASON_CALL_API = "Call ended via API"
#: SIP refusals recorded as a ``busy`` call; any other refusal is ``failed``.
BUSY_SIP_STATUSES = frozenset({486, 600})
#: Participant statuses a fetch by CallSid finds: in the conference, being dialled, or a callee
#: that never answered (docs/api.md, Participants).
PARTICIPANT_FETCHABLE = (PARTICIPANT_IN_PROGRESS, *PARTICIPANT_DIALING, PARTICIPANT_FAILED)
#: How a plain SIP caller (no voice application) joins: Twilio's defaults without the beep,
#: i.e. confstream's behaviour before voice applications (docs/sip.md).
PLAIN_SIP_JOIN = JoinOptions(beep="false")


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
    def emit_call_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> Any: ...


class StreamsLike(Protocol):
    async def start(self, spec: Any) -> Any: ...
    async def stop(self, sid: str, reason: str) -> Any: ...
    async def stop_conference(self, conference_sid: str) -> Any: ...
    async def stop_call(self, call_sid: str) -> Any: ...


@dataclass
class LiveCall:
    """A call from its Call record's creation to its end: its audio and account."""

    participant: Participant
    account_sid: str


@dataclass
class LiveParticipant:
    participant: Participant
    conference_sid: str
    account_sid: str
    options: JoinOptions = PLAIN_SIP_JOIN


@dataclass
class LiveConference:
    """The live, engine-side state of a conference: what its creator's JoinOptions set for
    the whole conference, whether it has started, its status callback queue numbering."""

    sid: str
    account_sid: str
    friendly_name: str
    auth_token: str
    started: bool
    max_participants: int = 250
    wait_url: str | None = None
    wait_method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    events: frozenset[str] = frozenset()
    sequence: int = 0
    wait_source: LoopSource | None = None
    watching_speech: bool = False


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
        callbacks: CallbackSender | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.streams = streams
        self._callbacks = callbacks
        self._own_callbacks = callbacks is None
        self._live: dict[str, LiveParticipant] = {}
        self._calls: dict[str, LiveCall] = {}
        self._conferences: dict[str, LiveConference] = {}
        media_engine: Any = engine
        if hasattr(media_engine, "speech_listener"):
            media_engine.speech_listener = self._on_speech
        self._lifecycle = asyncio.Lock()
        self._stream_create = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the call runtime of voice applications (None: every call joins by Request-URI)
        self.voice: VoiceRuntime | None = None
        #: per-call key listeners of the call runtime (``<Gather>``, ``hangupOnStar``)
        self._digit_listeners: dict[str, Callable[[str], None]] = {}
        #: Cluster mode only (docs/cluster.md): who owns which conference.
        self.placement: Placement | None = None

    def attach_streams(self, streams: StreamsLike) -> None:
        self.streams = streams

    def attach_voice(self, voice: VoiceRuntime) -> None:
        self.voice = voice

    def _runs_voice_app(self, call_sid: str) -> bool:
        """True when ``call_sid`` is a live call whose voice application goes on after its
        ``<Dial><Conference>`` (it is taken out of a conference, never hung up, by a kick or
        a conference's end)."""
        return self.voice is not None and self.voice.is_running(call_sid)

    def set_digit_listener(self, call_sid: str, listener: Callable[[str], None] | None) -> None:
        """Have ``listener`` called with each key ``call_sid`` presses (None: no longer)."""
        if listener is None:
            self._digit_listeners.pop(call_sid, None)
        else:
            self._digit_listeners[call_sid] = listener

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

    async def update_account(self, account: Account, **changes: str) -> Account:
        """Set account fields (``Store.update_account`` keywords, already validated by the
        caller); returns the account as it is now."""
        updated = await self.store.update_account(account.sid, **changes)
        return _found(updated, f"Account {account.sid}")

    # ------------------------------------------------------- ConferenceGateway
    async def auth_token(self, account_sid: str) -> str | None:
        account = await self.store.get_account(account_sid)
        if account is None or account.status != "active":
            return None
        return account.auth_token

    async def incoming_call(self, call: IncomingCall, participant: Participant) -> None:
        """The SIP edge's authenticated call (gateway seam). Its Call record is created first
        (``ringing``); then the caller joins the conference the Request-URI names (docs/sip.md,
        "Joining a conference"). Accepted: the call is ``in-progress``; refused: ``busy`` or
        ``failed`` (see the module docstring) and the refusal is raised on."""
        await self.open_call(call, participant)
        try:
            voice_account = None
            if self.voice is not None:
                account = await self.store.get_account(call.account_sid)
                if account is not None and account.status == "active" and account.voice_url:
                    voice_account = account
            if voice_account is not None and self.voice is not None:
                # the account's voice application (docs/voice.md); a refusal raises JoinRefused
                await self.voice.incoming_call(voice_account, call, participant)
            else:
                await self.join(call.account_sid, call.request_user, participant, PLAIN_SIP_JOIN)
        except BaseException as exc:
            await self.call_refused(call.call_sid, exc)
            raise
        await self.call_answered(call.call_sid)
        if voice_account is not None and self.voice is not None:
            self.voice.call_answered(call.call_sid)  # its script runs on the answered call

    # ------------------------------------------------------------------ calls
    async def open_call(self, call: IncomingCall, participant: Participant) -> Call:
        """Create the inbound call's record (``ringing``) and know it as live."""
        record = await self.store.create_call(
            call.account_sid,
            sid=call.call_sid,
            from_uri=call.from_uri,
            to_uri=call.to_uri,
            caller_name=call.caller_name,
        )
        self._calls[call.call_sid] = LiveCall(participant, call.account_sid)
        if self.placement is not None:
            await self.placement.call_started(call.call_sid)
        return record

    async def call_answered(self, call_sid: str) -> None:
        """The call is accepted (the SIP edge answers 200): ``in-progress``, ``start_time``."""
        await self.store.update_call(call_sid, status=CALL_IN_PROGRESS)

    async def call_refused(self, call_sid: str, exc: BaseException) -> None:
        """The call is refused before it was answered (no ``leave`` follows): ``busy`` for
        SIP 486/600, ``canceled`` when the set-up was cancelled, else ``failed``; the SIP
        status is kept in ``sip_response_code``."""
        self._calls.pop(call_sid, None)
        if self.placement is not None:
            await self.placement.call_ended(call_sid)
        if isinstance(exc, JoinRefused):
            sip = exc.sip_status
            status = CALL_BUSY if sip in BUSY_SIP_STATUSES else CALL_FAILED
        elif isinstance(exc, asyncio.CancelledError):
            sip, status = 487, CALL_CANCELED
        else:
            sip, status = 500, CALL_FAILED
        try:
            await self.store.update_call(call_sid, status=status, sip_response_code=sip)
        except Exception:
            log.exception("recording the refusal of call %s failed", call_sid)

    async def open_outbound_call(
        self, call_sid: str, account_sid: str, participant: Participant
    ) -> None:
        """Know an outbound call being placed as live (docs/api.md, "Making calls"): a REST
        hang-up cancels it; in cluster mode it is published as this node's, so requests about
        it are forwarded here and a survivor ends it if this node dies (docs/cluster.md)."""
        self._calls[call_sid] = LiveCall(participant, account_sid)
        if self.placement is not None:
            await self.placement.call_started(call_sid)

    async def forget_call(self, call_sid: str) -> None:
        """An outbound call that was never answered is over (no ``leave`` follows)."""
        self._calls.pop(call_sid, None)
        if self.placement is not None:
            await self.placement.call_ended(call_sid)

    def callbacks(self) -> CallbackSender:
        """The server's status callback sender (one ordered queue per key)."""
        return self._sender()

    async def ensure_conference(
        self, account_sid: str, friendly_name: str, options: JoinOptions
    ) -> Conference:
        """The account's live conference ``friendly_name``, created ``init`` when there is
        none (a callee being dialled for it, ``POST …/Participants``): it starts when a
        participant with ``start_conference_on_enter`` joins. The conference-level options
        (status callback) are ``options``'. In a cluster the room is claimed and the
        conference published as this node's at once (docs/cluster.md), so that a caller
        dialling in meanwhile lands on this node."""
        async with self._lifecycle:
            account = await self.store.get_account(account_sid)
            if account is None or account.status != "active":
                raise AccountNotActive()
            if self.placement is not None:
                try:
                    await self.placement.claim(account_sid, friendly_name)
                except JoinRefused as exc:  # another node holds the room: 503, retry
                    raise OwnerUnavailable(f"conference {friendly_name!r}: {exc}") from exc
            conference = await self.store.find_live_conference(account_sid, friendly_name)
            if conference is not None and self._stale(conference.sid):
                assert self.placement is not None
                await self.placement.end_stale(conference.sid)
                conference = None
            if conference is None:
                conference = await self.store.create_conference(
                    account_sid,
                    friendly_name,
                    status=CONFERENCE_INIT,
                    status_callback=options.status_callback,
                    status_callback_method=options.status_callback_method,
                    status_callback_event=" ".join(options.status_callback_event) or None,
                )
            if self.placement is not None:
                await self.placement.hosted(conference.sid, account_sid, friendly_name)
            return conference

    def _stale(self, conference_sid: str) -> bool:
        """In a cluster: a live record of a room this node has just claimed that it neither
        mixes nor has published (its node died)."""
        return (
            self.placement is not None
            and self.engine.get(conference_sid) is None
            and not self.placement.holds(conference_sid)
        )

    async def end_unjoined_conference(self, conference_sid: str, reason: str) -> None:
        """End a live conference nobody is in (created for callees that never answered)."""
        async with self._lifecycle:
            if self.live_call_sids(conference_sid):
                return
            record = await self.store.get_conference(conference_sid)
            if record is None or record.status == CONFERENCE_COMPLETED:
                return
            await self._end_locked(conference_sid, reason)

    def live_call(self, call_sid: str) -> Participant | None:
        """The audio of a live call (answered or being answered, not ended), or None."""
        live = self._calls.get(call_sid)
        return live.participant if live is not None else None

    async def get_call(self, account_sid: str, call_sid: str) -> Call:
        """The account's call; :class:`NotFound` when missing or another account's."""
        return _found(await self.store.get_call(call_sid, account_sid), f"Call {call_sid}")

    async def list_calls(
        self, account_sid: str, filters: CallFilter, *, offset: int, limit: int
    ) -> list[Call]:
        """A page of the account's calls, newest first."""
        return await self.store.list_calls(account_sid, filters, offset=offset, limit=limit)

    async def _live_call_of(self, account: Account | str, call_sid: str) -> tuple[Account, Call]:
        """The account and its call, which must be live and answered: :class:`NotFound`,
        :class:`CallNotLive`."""
        owner = await self._account(account)
        call = await self.get_call(owner.sid, call_sid)
        if call.status != CALL_IN_PROGRESS or call_sid not in self._calls:
            raise CallNotLive(call_sid)
        return owner, call

    async def _account(self, account: Account | str) -> Account:
        if isinstance(account, Account):
            return account
        return _found(await self.store.get_account(account), f"Account {account}")

    async def hangup_call(
        self, account: Account | str, call_sid: str, reason: str = REASON_CALL_API
    ) -> Call:
        """Hang a live call up (REST ``Status=completed``/``canceled``) and complete its
        records now (the SIP edge's later ``leave`` changes nothing). A call that has ended
        is returned as it is. :class:`NotFound` for another account's call."""
        owner = await self._account(account)
        call = await self.get_call(owner.sid, call_sid)
        live = self._calls.get(call_sid)
        if live is None:
            return call
        try:
            live.participant.hangup(reason)
        except Exception:
            log.exception("hangup of %s failed", call_sid)
        if call.direction != CALL_INBOUND and call.status in (CALL_QUEUED, CALL_RINGING):
            # an outbound call not answered yet: the hang-up CANCELs it (docs/api.md)
            self._calls.pop(call_sid, None)
            await self.store.update_call(call_sid, status=CALL_CANCELED)
            return await self.get_call(owner.sid, call_sid)
        await self.leave(call_sid, reason)
        return await self.get_call(owner.sid, call_sid)

    async def redirect_call(
        self,
        account: Account | str,
        call_sid: str,
        url: str | None = None,
        method: str = "POST",
        twiml: str | None = None,
    ) -> Call:
        """Move a live call to the cXML document at ``url`` (fetched with ``method``) or to
        ``twiml`` (REST ``Url``/``Twiml``): handed to the voice runtime, which ends what the
        call is doing and runs the new document. :class:`NotFound`, :class:`CallNotLive`
        (21220), :class:`CallControlUnavailable` (20501) when no voice runtime is attached."""
        owner, _call = await self._live_call_of(account, call_sid)
        if self.voice is None:
            raise CallControlUnavailable(
                "Url and Twiml need the voice application runtime, which this server does "
                "not run; only Status=completed can change a call"
            )
        await self.voice.redirect(call_sid, url=url, method=method, twiml=twiml)
        if url is not None:
            await self.store.update_call(call_sid, url=url, method=method)
        return await self.get_call(owner.sid, call_sid)

    async def _call_ended(self, call_sid: str) -> None:
        """The call is over: forget it, stop its streams, complete its record (idempotent)."""
        self._calls.pop(call_sid, None)
        if self.placement is not None:
            await self.placement.call_ended(call_sid)
        if self.streams is not None:
            try:
                await self.streams.stop_call(call_sid)
            except Exception:
                log.exception("stopping the streams of call %s failed", call_sid)
        for stream in await self.store.list_streams_active(None, call_sid=call_sid):
            await self.store.set_stream_status(stream.sid, STREAM_STOPPED)
        await self.store.update_call(call_sid, status=CALL_COMPLETED)

    async def join(
        self,
        account_sid: str,
        conference_name: str,
        participant: Participant,
        options: JoinOptions | None = None,
    ) -> str:
        """Put ``participant`` in the account's live conference ``conference_name`` (created
        when there is none) as ``options`` say (None: :data:`PLAIN_SIP_JOIN`); returns the
        ConferenceSid. Raises :class:`AccountNotActive`, :class:`AlreadyJoined`,
        :class:`ConferenceFull` or :class:`CoachingRefused` (all ``JoinRefused``)."""
        opts = options if options is not None else PLAIN_SIP_JOIN
        if opts.coaching or opts.call_sid_to_coach:
            raise CoachingRefused()
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
            if conference is not None and self._stale(conference.sid):
                # the live record of a node that died: end it, the caller gets a fresh one
                assert self.placement is not None
                await self.placement.end_stale(conference.sid)
                conference = None
            created = conference is None
            if conference is None:
                words = " ".join(opts.status_callback_event) or None
                conference = await self.store.create_conference(
                    account_sid,
                    conference_name,
                    status=CONFERENCE_IN_PROGRESS
                    if opts.start_conference_on_enter
                    else CONFERENCE_INIT,
                    status_callback=opts.status_callback,
                    status_callback_method=opts.status_callback_method,
                    status_callback_event=words,
                )
            state = self._conferences.get(conference.sid)
            if state is None:
                state = self._new_conference_state(conference, account, opts)
            if len(self.live_call_sids(conference.sid)) >= state.max_participants:
                raise ConferenceFull(
                    f"conference {conference_name!r} already has its "
                    f"{state.max_participants} participants"
                )
            media = self.engine.get(conference.sid)
            if media is None:
                media = self.engine.add_conference(conference.sid)
            if hasattr(media, "waiting"):
                media.waiting = not state.started
            if opts.muted:
                participant.muted = True
            try:
                await self.store.add_participant(
                    participant.call_sid,
                    conference.sid,
                    account_sid,
                    muted=bool(participant.muted),
                    hold=bool(participant.hold),
                    label=opts.label,
                    start_conference_on_enter=opts.start_conference_on_enter,
                    end_conference_on_exit=opts.end_conference_on_exit,
                )
            except BaseException:
                if not self.live_call_sids(conference.sid):
                    await self._end_locked(conference.sid, "join failed")
                raise
            # into the mix only now, with nothing awaited until the join event is queued: the
            # engine's speech events for it must find it live and come after participant-join
            media.add_participant(participant)
            live = LiveParticipant(participant, conference.sid, account_sid, opts)
            self._live[participant.call_sid] = live
            self._emit(state, confevents.PARTICIPANT_JOIN, live)
            if not state.started and opts.start_conference_on_enter:
                await self._start_locked(state, media)
            elif created and state.started:
                self._emit(state, confevents.CONFERENCE_START)
            if opts.beep in ("true", "onEnter") and hasattr(media, "beep"):
                media.beep("enter")
            if created and not state.started and state.wait_url is not None:
                self._spawn(self._play_wait_audio(state))
            if self.placement is not None:
                await self.placement.joined(
                    conference.sid, account_sid, conference_name, participant.call_sid
                )
            return conference.sid

    def _new_conference_state(
        self, conference: Conference, account: Account, opts: JoinOptions
    ) -> LiveConference:
        """The live state of a conference, from its record and its creator's options."""
        events = (
            confevents.selected_events(conference.status_callback_event)
            if conference.status_callback
            else frozenset()
        )
        state = LiveConference(
            sid=conference.sid,
            account_sid=conference.account_sid,
            friendly_name=conference.friendly_name,
            auth_token=account.auth_token,
            started=conference.status != CONFERENCE_INIT,
            max_participants=max(1, opts.max_participants),
            wait_url=opts.wait_url,
            wait_method=opts.wait_method,
            status_callback=conference.status_callback,
            status_callback_method=conference.status_callback_method,
            events=events,
        )
        if events & {confevents.PARTICIPANT_SPEECH_START, confevents.PARTICIPANT_SPEECH_STOP}:
            engine: Any = self.engine
            if hasattr(engine, "level_watchers"):
                engine.level_watchers += 1
                state.watching_speech = True
        self._conferences[conference.sid] = state
        return state

    async def _start_locked(self, state: LiveConference, media: Any) -> None:
        """A participant with ``start_conference_on_enter`` entered a waiting conference."""
        state.started = True
        if hasattr(media, "waiting"):
            media.waiting = False
        if state.wait_source is not None:
            state.wait_source.stop()
            state.wait_source = None
        await self.store.start_conference(state.sid)
        self._emit(state, confevents.CONFERENCE_START)

    async def _play_wait_audio(self, state: LiveConference) -> None:
        """Fetch the conference's ``wait_url`` WAV and loop it while it waits; a failed
        fetch leaves silence (logged)."""
        assert state.wait_url is not None
        try:
            pcm = await self._fetch_wav(state.wait_url, state.wait_method, "WaitUrl")
        except Exception as exc:
            log.warning("wait audio of conference %s unavailable: %s", state.sid, exc)
            return
        media = self.engine.get(state.sid)
        if state.started or media is None or self._conferences.get(state.sid) is not state:
            return
        if len(pcm) == 0:
            return
        state.wait_source = LoopSource(pcm)
        media.add_source(state.wait_source)

    async def leave(self, call_sid: str, reason: str, *, kicked: bool = False) -> None:
        """The call has ended (gateway seam; ``kicked``: removed through the REST API): the
        participant leaves its conference, which ends when it was the last one, or when it had
        ``end_conference_on_exit`` (see the module docstring for the reasons recorded); the
        call's streams stop and its Call record is completed. Idempotent."""
        if self.voice is not None:
            self.voice.call_ended(call_sid)
        try:
            async with self._lifecycle:
                await self._leave_locked(call_sid, reason, kicked=kicked)
        finally:
            await self._call_ended(call_sid)

    async def leave_conference(self, call_sid: str, reason: str) -> None:
        """Take a live participant out of its conference WITHOUT ending its call (no hang-up):
        the voice runtime goes on with the call's script. The same conference-ending rules as
        :meth:`leave` apply. No effect when the call is in no conference."""
        async with self._lifecycle:
            if call_sid in self._live:
                await self._leave_locked(call_sid, reason, kicked=False)

    async def _leave_locked(self, call_sid: str, reason: str, *, kicked: bool) -> None:
        live = self._live.pop(call_sid, None)
        if live is None:
            await self.store.complete_participant(call_sid, reason)
            return
        media = self.engine.get(live.conference_sid)
        if media is not None:
            media.remove_participant(call_sid)
        record = await self.store.complete_participant(call_sid, reason)
        if self.placement is not None and call_sid not in self._calls:
            await self.placement.left(call_sid)
        state = self._conferences.get(live.conference_sid)
        if state is not None:
            self._emit(state, confevents.PARTICIPANT_LEAVE, live, record)
        end_on_exit = (
            record.end_conference_on_exit
            if record is not None
            else live.options.end_conference_on_exit
        )
        if end_on_exit:
            why = ENDED_END_ON_EXIT_KICKED if kicked else ENDED_END_ON_EXIT_LEFT
        elif not self.live_call_sids(live.conference_sid):
            why = ENDED_LAST_KICKED if kicked else ENDED_LAST_LEFT
        else:
            if live.options.beep in ("true", "onExit") and hasattr(media, "beep"):
                media.beep("exit")
            return
        await self._end_locked(live.conference_sid, end_reason(why, call_sid))

    def hold_changed(self, call_sid: str, hold: bool) -> None:
        live = self._live.get(call_sid)
        if live is None:
            return
        was = bool(live.participant.hold)
        live.participant.hold = hold
        self._spawn(self.store.update_participant(call_sid, hold=hold))
        if was != hold:
            self._emit_change(
                live, confevents.PARTICIPANT_HOLD if hold else confevents.PARTICIPANT_UNHOLD
            )

    # ------------------------------------------------------ status callbacks
    def _sender(self) -> CallbackSender:
        if self._callbacks is None:
            self._callbacks = CallbackSender(self.settings)
        return self._callbacks

    def _emit(
        self,
        state: LiveConference,
        event: str,
        live: LiveParticipant | None = None,
        record: ParticipantRecord | None = None,
        *,
        reason_ended: str | None = None,
    ) -> None:
        """Queue the conference status callback ``event`` when the conference selected it
        (numbered now: see the module docstring). Never blocks."""
        if state.status_callback is None or event not in state.events:
            return
        participant = None
        if live is not None:
            p = live.participant
            participant = confevents.ParticipantState(
                call_sid=p.call_sid,
                muted=bool(p.muted),
                hold=bool(p.hold),
                coaching=False,
                end_conference_on_exit=(
                    record.end_conference_on_exit
                    if record is not None
                    else live.options.end_conference_on_exit
                ),
                start_conference_on_enter=live.options.start_conference_on_enter,
                label=live.options.label,
            )
        reason, ending = split_end_reason(reason_ended)
        state.sequence += 1
        params = confevents.event_params(
            event,
            account_sid=state.account_sid,
            conference_sid=state.sid,
            friendly_name=state.friendly_name,
            sequence=state.sequence,
            when=utcnow(),
            participant=participant,
            reason_ended=reason,
            call_sid_ending=ending,
        )
        callback = Callback(
            state.status_callback, state.status_callback_method, params, state.auth_token
        )
        self._sender().send(f"conference-{state.sid}", callback)

    def _emit_change(self, live: LiveParticipant, event: str) -> None:
        state = self._conferences.get(live.conference_sid)
        if state is not None:
            self._emit(state, event, live)

    def _on_speech(self, conference_sid: str, call_sid: str, speaking: bool) -> None:
        """The engine's speech detector (docs/voice.md): runs on the clock, only queues."""
        live = self._live.get(call_sid)
        if live is None or live.conference_sid != conference_sid:
            return
        event = (
            confevents.PARTICIPANT_SPEECH_START if speaking else confevents.PARTICIPANT_SPEECH_STOP
        )
        self._emit_change(live, event)

    def dtmf_received(self, call_sid: str, digit: str, duration_ms: int) -> None:
        listener = self._digit_listeners.get(call_sid)
        if listener is not None:
            try:
                listener(digit)
            except Exception:
                log.exception("digit listener of %s failed", call_sid)
        self.engine.emit_call_dtmf(call_sid, digit, duration_ms)  # the call's own streams
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
        state = self._conferences.get(conference_sid)
        for call_sid in self.live_call_sids(conference_sid):
            live = self._live.pop(call_sid)
            goes_on = self._runs_voice_app(call_sid)
            if not goes_on:
                try:
                    live.participant.hangup(reason)
                except Exception:
                    log.exception("hangup of %s failed", call_sid)
            media = self.engine.get(conference_sid)
            if media is not None:
                media.remove_participant(call_sid)
            record = await self.store.complete_participant(call_sid, reason)
            if state is not None:
                self._emit(state, confevents.PARTICIPANT_LEAVE, live, record)
            if self.placement is not None and call_sid not in self._calls:
                await self.placement.left(call_sid)
            if goes_on and self.voice is not None:
                self.voice.conference_left(call_sid)  # its <Dial> is over: the script goes on
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
        completed = await self.store.complete_conference(conference_sid, reason)
        if self.placement is not None:
            await self.placement.ended(conference_sid)
        if state is not None:
            self._conferences.pop(conference_sid, None)
            if state.wait_source is not None:
                state.wait_source.stop()
            if state.watching_speech:
                engine: Any = self.engine
                engine.level_watchers -= 1
            stored = completed.reason_ended if completed is not None else reason
            self._emit(state, confevents.CONFERENCE_END, reason_ended=stored)

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
        media = self.engine.get(conference_sid)
        if media is None:
            raise ConferenceNotLive(conference_sid)
        pcm = await self._fetch_wav(url, method, "AnnounceUrl")
        media.play(pcm, target_call_sid=target_call_sid)

    async def fetch_audio(self, url: str, method: str = "GET") -> npt.NDArray[np.int16]:
        """A WAV file fetched through the outbound policy, as int16 8 kHz mono (cXML
        ``<Play>``); the errors of :meth:`announce`, naming the Play URL."""
        return await self._fetch_wav(url, method, "Play URL")

    async def _fetch_wav(self, url: str, method: str, what: str) -> npt.NDArray[np.int16]:
        """Fetch a WAV file through the outbound policy as 8 kHz int16 samples (``what``
        names the parameter in the errors; see :meth:`announce`)."""
        from confstream import netpolicy
        from confstream.media.wav import WavError, parse_wav

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
            raise UrlRefused(f"{what} refused: {exc}") from exc
        except Exception as exc:
            perr = netpolicy.policy_error_of(exc)
            if perr is not None:
                raise UrlRefused(f"{what} refused: {perr}") from exc
            raise AnnouncementUnavailable(f"{what} could not be fetched: {exc}") from exc
        if response.status_code >= 400:
            raise AnnouncementUnavailable(f"{what} answered HTTP {response.status_code}")
        try:
            pcm: npt.NDArray[np.int16] = parse_wav(response.content)
        except WavError as exc:
            raise AnnouncementInvalid(f"{what} is not a supported WAV file: {exc}") from exc
        return pcm

    # ------------------------------------------------------------ participants
    async def get_participant(self, conference_sid: str, call_sid: str) -> ParticipantRecord:
        """The participant in the conference now, by CallSid or else by label (docs/api.md,
        Participants); :class:`NotFound` when it is not there or has left. A CallSid is
        looked up first, so a label can never hide a participant's CallSid. By CallSid, a
        callee being dialled (``queued``, ``connecting``, ``ringing``) or that never answered
        (``failed``) is found too."""
        row = await self.store.get_participant(call_sid, conference_sid)
        if row is not None and row.status in PARTICIPANT_FETCHABLE:
            return row
        row = await self.store.find_participant_by_label(conference_sid, call_sid)
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
        beep_on_exit: bool | None = None,
    ) -> ParticipantRecord | None:
        """Mute/hold the live participant (the mixer reads them at its next tick) and record
        the changes; None leaves a field as it is. A change of mute or hold emits its status
        callback event; ``beep_on_exit`` changes whether the exit beep plays when it leaves."""
        live = self._live.get(call_sid)
        events: list[str] = []
        if live is not None:
            if muted is not None and muted != bool(live.participant.muted):
                live.participant.muted = muted
                events.append(
                    confevents.PARTICIPANT_MUTE if muted else confevents.PARTICIPANT_UNMUTE
                )
            if hold is not None and hold != bool(live.participant.hold):
                live.participant.hold = hold
                events.append(
                    confevents.PARTICIPANT_HOLD if hold else confevents.PARTICIPANT_UNHOLD
                )
            if end_conference_on_exit is not None:
                live.options = replace(live.options, end_conference_on_exit=end_conference_on_exit)
            if beep_on_exit is not None:
                on_enter = live.options.beep in ("true", "onEnter")
                beep = {
                    (True, True): "true",
                    (True, False): "onEnter",
                    (False, True): "onExit",
                    (False, False): "false",
                }[(on_enter, beep_on_exit)]
                live.options = replace(live.options, beep=beep)
            for event in events:
                self._emit_change(live, event)
        return await self.store.update_participant(
            call_sid, muted=muted, hold=hold, end_conference_on_exit=end_conference_on_exit
        )

    async def kick(self, call_sid: str, reason: str = REASON_KICKED) -> None:
        """Hang the participant up and complete its record now (SIP's later ``leave`` is then
        a no-op); a conference this ends records a ``-kicked`` reason. A call run by a voice
        application is not hung up: it leaves the conference and its script goes on after
        its ``<Dial>`` (as on Twilio). A callee still being dialled is cancelled instead (its
        call ``canceled``, the participant ``failed``)."""
        if self._runs_voice_app(call_sid):
            async with self._lifecycle:
                if call_sid in self._live:
                    await self._leave_locked(call_sid, reason, kicked=True)
            if self.voice is not None:
                self.voice.conference_left(call_sid)
            return
        live = self._live.get(call_sid)
        dialing = self._calls.get(call_sid) if live is None else None
        if dialing is not None:
            record = await self.store.get_participant(call_sid)
            if record is not None and record.status in PARTICIPANT_DIALING:
                self._calls.pop(call_sid, None)
                dialing.participant.hangup(reason)
                await self.store.update_call(call_sid, status=CALL_CANCELED)
                return
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
        return await self._start_stream(account, row, request)

    async def _start_stream(self, account: Account, row: Stream, request: StreamRequest) -> Stream:
        """Hand a stored queued stream to the stream manager; the record as it is now."""
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
            call_sid=row.call_sid,
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

    # ----------------------------------------------------------- call streams
    async def start_call_stream(
        self, account: Account | str, call_sid: str, request: StreamRequest
    ) -> Stream:
        """Store a queued stream of one live call and start it (docs/protocol.md, "Call
        streams"): ``inbound`` is what the caller says, ``outbound`` what it hears; audio a
        bidirectional (``realtime``) stream returns is heard by that caller only. Raises
        :class:`NotFound`, :class:`CallNotLive` (21220) or
        :class:`~confstream.errors.NameInUse` (20409, a Name active on the same call)."""
        owner = await self._account(account)
        async with self._stream_create:
            await self._live_call_of(owner, call_sid)
            row = await self.store.create_stream(
                call_sid=call_sid,
                account_sid=owner.sid,
                url=request.url,
                name=request.name,
                track=request.track,
                codec=request.codec,
                realtime=request.realtime,
                status_callback=request.status_callback,
                status_callback_method=request.status_callback_method,
            )
        return await self._start_stream(owner, row, request)

    async def get_call_stream(self, call_sid: str, sid_or_name: str) -> Stream:
        """The call's stream by SID, else by Name; :class:`NotFound` when none."""
        stream = await self.store.get_stream(None, sid_or_name, call_sid=call_sid)
        return _found(stream, f"Stream {sid_or_name}")

    async def list_call_streams(
        self, call_sid: str, *, status: str | None = None, offset: int, limit: int
    ) -> list[Stream]:
        """A page of the call's streams, oldest first, stopped ones included."""
        return await self.store.list_streams(
            None, call_sid=call_sid, status=status, offset=offset, limit=limit
        )

    async def stop_call_stream(
        self,
        account: Account | str,
        call_sid: str,
        sid_or_name: str,
        reason: str = REASON_STREAM_API,
    ) -> Stream:
        """Stop the call's stream named by SID or Name (``<Stop><Stream>``, REST
        ``Status=stopped``); a stopped one is returned as it is. :class:`NotFound` when the
        call is not the account's or has no such stream."""
        owner = await self._account(account)
        await self.get_call(owner.sid, call_sid)
        return await self.stop_stream(await self.get_call_stream(call_sid, sid_or_name), reason)

    async def on_stream_status(
        self,
        stream_sid: str,
        status: str,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> None:
        """The stream manager's status hook: persist the change (and its history row); a
        stopped stream also ends the ``<Connect><Stream>`` of a voice call."""
        await self.store.set_stream_status(stream_sid, status, error_code, error_message)
        if self.voice is not None:
            self.voice.stream_status(stream_sid, status)

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
        """End every live conference, then hang up the calls still live (orderly shutdown)."""
        conferences: Iterable[str] = {live.conference_sid for live in self._live.values()}
        for conference_sid in list(conferences):
            await self.end_conference(conference_sid, reason)
        for call_sid in list(self._calls):
            live = self._calls.get(call_sid)
            if live is not None:
                await self.hangup_call(live.account_sid, call_sid, reason)
        await self.drain()
        if self._callbacks is not None and self._own_callbacks:
            await self._callbacks.close()
