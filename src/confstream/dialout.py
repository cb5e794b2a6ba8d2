"""Dial-out: calls placed through the REST API (docs/api.md, "Making calls"; docs/sip.md,
"Calling out").

``POST …/Calls`` (:meth:`Dialout.create_call`) and ``POST …/Conferences/{Sid or
FriendlyName}/Participants`` (:meth:`Dialout.add_participant`) both come here. A call is
checked, then placed by the SIP edge (:class:`~confstream.conference.gateway.Dialer`):

1. ``To`` must be ``sip:user@host[:port][;transport=udp]`` (21211); ``From`` a SIP URI or a
   caller ID of letters, digits and ``+-_.`` (21212). The host is resolved once and the address
   checked against the outbound policy (``allowed_networks``, :mod:`confstream.netpolicy`);
   a refused address, or one of the server's own SIP listeners, is 21215.
2. Per account, at most ``dial_max_calls_per_account`` calls being placed or in progress, and
   at most ``dial_calls_per_second`` new ones per second (a token bucket holding as many);
   beyond either: 20429. Nothing is dialled then.
3. The Call record is created ``queued`` (direction ``outbound-api``) and, for a participant,
   its participant record ``queued`` in the conference, which is created (``init``) when the
   FriendlyName has no live conference. The call is live from then on: a REST hang-up
   (``Status=canceled``/``completed``) cancels it before the answer.
4. Progress, from the SIP edge (:class:`_Outbound`): the INVITE went (participant
   ``connecting``; callback ``initiated``), the far end rings (call and participant
   ``ringing``; ``ringing``), it answers (call ``in-progress``; ``answered``): a participant
   joins its conference with the request's options, a call runs its ``Url``/``Twiml`` through
   the voice runtime. The end: the call ``completed`` and the participant ``complete``
   (``completed``, with ``CallDuration``); or, never answered, the call ``busy``,
   ``no-answer``, ``canceled`` or ``failed`` with ``sip_response_code``, the participant
   ``failed`` (``completed`` with ``SipResponseCode``). A conference created for a callee that
   never answered, and left empty, is ended.

Status callbacks (``StatusCallback``, ``StatusCallbackEvent`` among ``initiated ringing answered
completed``, ``completed`` alone by default) are Twilio's call progress events, signed and
sent once each, in order, on one queue per call by the server's
:class:`~confstream.callbacks.webhooks.CallbackSender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from confstream import metrics
from confstream.callbacks.conference import rfc2822
from confstream.callbacks.webhooks import Callback
from confstream.calls.webhook import CallContext
from confstream.conference.base import Participant
from confstream.conference.gateway import Dialer, JoinOptions, OutboundCall
from confstream.errors import (
    ConferenceNotLive,
    DialFromInvalid,
    DialLimitReached,
    DialRefused,
    DialTargetInvalid,
)
from confstream.netpolicy import PolicyError, resolve_checked
from confstream.services import Services
from confstream.settings import Settings
from confstream.sip.message import SipParseError, SipUri, format_host
from confstream.store import Account, Call
from confstream.store import Participant as ParticipantRecord
from confstream.store.models import (
    CALL_IN_PROGRESS,
    CALL_OUTBOUND_API,
    CALL_QUEUED,
    CALL_RINGING,
    CONFERENCE_COMPLETED,
    ENDED_LAST_LEFT,
    PARTICIPANT_CONNECTING,
    PARTICIPANT_FAILED,
    PARTICIPANT_QUEUED,
    PARTICIPANT_RINGING,
    utcnow,
)

log = logging.getLogger(__name__)

#: Twilio's call progress events, in the order they happen.
CALL_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
#: ``Timeout`` bounds (seconds; Twilio's default and maximum).
DEFAULT_TIMEOUT: Final = 60
MAX_TIMEOUT: Final = 600
#: ``TimeLimit`` bound (seconds; Twilio's maximum, 24 hours).
MAX_TIME_LIMIT: Final = 86400
#: Reason recorded when a conference created for a callee that never answered is ended (the
#: callee "left" without joining: Twilio's reason for the last participant leaving).
REASON_NO_ANSWER = ENDED_LAST_LEFT
_CALLER_ID = re.compile(r"^[A-Za-z0-9+_.\-]{1,64}$")


@dataclass(frozen=True)
class SipTarget:
    """A checked ``To``: the Request-URI to send and where it goes (host not resolved)."""

    uri: str
    host: str
    port: int


def parse_sip_target(to: str) -> SipTarget:
    """``sip:user@host[:port][;transport=udp]`` (21211 otherwise). Other URI parameters and
    headers are dropped; the Request-URI keeps user, host and port."""
    text = to.strip()
    if not text.lower().startswith("sip:"):
        raise DialTargetInvalid(f"To must be a sip: URI (sip:user@host[:port]), not {to!r}")
    try:
        uri = SipUri.parse(text)
    except SipParseError as exc:
        raise DialTargetInvalid(f"To is not a valid SIP URI: {exc}") from None
    transport = (uri.params.get("transport") or "udp").lower()
    if transport != "udp":
        raise DialTargetInvalid("only transport=udp is supported for calls placed by confstream")
    if not uri.user or uri.password:
        raise DialTargetInvalid("To needs a user part: sip:user@host[:port]")
    port = uri.port or 5060
    request_uri = f"sip:{uri.user}@{format_host(uri.host)}" + (f":{uri.port}" if uri.port else "")
    return SipTarget(request_uri, uri.host, port)


def parse_from(value: str, host: str) -> tuple[str, str | None]:
    """``From`` as (SIP URI, display name): a ``sip:`` URI as given, a caller ID (a phone
    number, a name) as ``sip:<it>@<host>`` (21212 otherwise)."""
    text = value.strip()
    if text.lower().startswith("sip:"):
        try:
            uri = SipUri.parse(text)
        except SipParseError as exc:
            raise DialFromInvalid(f"From is not a valid SIP URI: {exc}") from None
        uri.params.clear()
        uri.headers = ""
        return str(uri), None
    if not _CALLER_ID.match(text):
        raise DialFromInvalid(
            "From must be a sip: URI or a caller ID of letters, digits and +-_. (at most 64)"
        )
    return f"sip:{text}@{format_host(host)}", None


@dataclass(frozen=True)
class DialRequest:
    """What the REST API asks for (its parameters, validated)."""

    to: str
    from_: str
    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: tuple[str, ...] = ("completed",)
    timeout: float = DEFAULT_TIMEOUT
    time_limit: float | None = None
    sip_auth_username: str | None = None
    sip_auth_password: str | None = None
    early_media: bool = False
    #: A participant's join options (``POST …/Participants``); None for ``POST /Calls``.
    options: JoinOptions | None = None


class DialLimits:
    """Per account: calls being placed or in progress, and a token bucket of new calls."""

    def __init__(self, max_calls: int, per_second: float) -> None:
        self.max_calls = max_calls
        self.per_second = per_second
        self.burst = max(1.0, per_second)
        self._active: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    def active(self, account_sid: str) -> int:
        return self._active.get(account_sid, 0)

    def take(self, account_sid: str, now: float) -> None:
        """Count one more call, or raise :class:`DialLimitReached`."""
        if self.active(account_sid) >= self.max_calls:
            raise DialLimitReached(
                f"The account already has {self.max_calls} outbound calls in progress"
            )
        tokens, at = self._buckets.get(account_sid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_second)
        if tokens < 1.0:
            raise DialLimitReached(
                f"Too many calls: at most {self.per_second:g} new outbound calls per second"
            )
        self._buckets[account_sid] = (tokens - 1.0, now)
        self._active[account_sid] = self.active(account_sid) + 1

    def release(self, account_sid: str) -> None:
        left = self.active(account_sid) - 1
        if left > 0:
            self._active[account_sid] = left
        else:
            self._active.pop(account_sid, None)


class Dialout:
    """Places the calls of the REST API (module docstring)."""

    def __init__(self, services: Services, dialer: Dialer, settings: Settings) -> None:
        self.services = services
        self.dialer = dialer
        self.settings = settings
        self.limits = DialLimits(
            settings.dial_max_calls_per_account, settings.dial_calls_per_second
        )
        #: Calls being placed for each conference (a conference created for them is ended
        #: when none answers and nobody else is in it).
        self._pending: dict[str, int] = {}
        self._calls: dict[str, _Outbound] = {}
        #: The host written in a caller-ID From (``sip:+1555…@host``).
        self.from_host = "127.0.0.1"

    async def create_call(self, account: Account, request: DialRequest) -> Call:
        """``POST /Calls``: the Call record, ``queued``."""
        call, _ = await self._place(account, request, None)
        return call

    async def add_participant(
        self, account: Account, conference: str, request: DialRequest
    ) -> ParticipantRecord:
        """``POST …/Participants``: the participant record, ``queued``. ``conference`` is a
        ConferenceSid (its conference must be live: 21220) or a FriendlyName (its live
        conference, created when there is none)."""
        options = request.options or JoinOptions()
        row = await self.services.store.get_conference(conference, account.sid)
        if row is not None:
            if row.status == CONFERENCE_COMPLETED:
                raise ConferenceNotLive(row.sid)
            name = row.friendly_name
        else:
            name = conference
        _, participant = await self._place(account, replace(request, options=options), name)
        assert participant is not None
        return participant

    async def _place(
        self, account: Account, request: DialRequest, conference_name: str | None
    ) -> tuple[Call, ParticipantRecord | None]:
        target = parse_sip_target(request.to)
        from_uri, display = parse_from(request.from_, self.from_host)
        try:
            ip = await resolve_checked(target.host, target.port, self.settings.allowed_networks)
        except PolicyError as exc:
            raise DialRefused(f"Calls to {target.host} are not permitted: {exc}") from None
        except OSError:
            raise DialTargetInvalid(f"The host of To ({target.host}) cannot be resolved") from None
        if self.dialer.is_own_listener(ip, target.port):
            raise DialRefused(f"{target.host}:{target.port} is this server's own SIP listener")
        self.limits.take(account.sid, time.monotonic())
        try:
            return await self._start(
                account, request, conference_name, target, ip, from_uri, display
            )
        except BaseException:
            self.limits.release(account.sid)
            raise

    async def _start(
        self,
        account: Account,
        request: DialRequest,
        conference_name: str | None,
        target: SipTarget,
        ip: str,
        from_uri: str,
        display: str | None,
    ) -> tuple[Call, ParticipantRecord | None]:
        services, store = self.services, self.services.store
        conference_sid: str | None = None
        if conference_name is not None and request.options is not None:
            conference = await services.ensure_conference(
                account.sid, conference_name, request.options
            )
            conference_sid = conference.sid
        record = await store.create_call(
            account.sid,
            from_uri=request.from_,
            to_uri=request.to,
            direction=CALL_OUTBOUND_API,
            status=CALL_QUEUED,
            url=request.url,
            method=request.method,
            status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            status_callback_event=" ".join(request.status_callback_event),
        )
        participant_row: ParticipantRecord | None = None
        if conference_sid is not None and request.options is not None:
            opts = request.options
            participant_row = await store.add_participant(
                record.sid,
                conference_sid,
                account.sid,
                muted=opts.muted,
                label=opts.label,
                start_conference_on_enter=opts.start_conference_on_enter,
                end_conference_on_exit=opts.end_conference_on_exit,
                status=PARTICIPANT_QUEUED,
            )
            self._pending[conference_sid] = self._pending.get(conference_sid, 0) + 1
        outbound = _Outbound(self, account, record, request, conference_name, conference_sid)
        self._calls[record.sid] = outbound
        call = OutboundCall(
            call_sid=record.sid,
            account_sid=account.sid,
            to_uri=target.uri,
            address=(ip, target.port),
            from_uri=from_uri,
            from_display=display,
            ring_timeout=request.timeout,
            time_limit=request.time_limit,
            auth_username=request.sip_auth_username,
            auth_password=request.sip_auth_password,
            early_media=request.early_media,
        )
        try:
            participant = self.dialer.dial(call, outbound)
        except BaseException:
            self._calls.pop(record.sid, None)
            await outbound.not_placed()
            raise
        await services.open_outbound_call(record.sid, account.sid, participant)
        return record, participant_row

    def _done(self, outbound: _Outbound) -> None:
        self._calls.pop(outbound.record.sid, None)
        self.limits.release(outbound.account.sid)

    async def _conference_done(self, conference_sid: str, answered: bool) -> None:
        """A call placed for ``conference_sid`` is answered or over: when none is left and
        the conference is empty and was never joined, it is ended."""
        left = self._pending.get(conference_sid, 1) - 1
        if left > 0:
            self._pending[conference_sid] = left
            return
        self._pending.pop(conference_sid, None)
        if not answered:
            await self.services.end_unjoined_conference(conference_sid, REASON_NO_ANSWER)


class _Outbound:
    """One call being placed: the SIP edge's :class:`DialListener`. Record updates run one
    after another in the order of the events (:meth:`_then`); callbacks are queued at once."""

    def __init__(
        self,
        dialout: Dialout,
        account: Account,
        record: Call,
        request: DialRequest,
        conference_name: str | None,
        conference_sid: str | None,
    ) -> None:
        self.dialout = dialout
        self.account = account
        self.record = record
        self.request = request
        self.conference_name = conference_name
        self.conference_sid = conference_sid
        self.events = frozenset(request.status_callback_event)
        self.sequence = 0
        self.answered_at: float | None = None
        self.hung_up = False
        self.finished = False
        self._last: asyncio.Task[None] | None = None

    @property
    def services(self) -> Services:
        return self.dialout.services

    # -- ordering ------------------------------------------------------------------------------
    def _then(self, step: Callable[[], Awaitable[None]]) -> None:
        previous = self._last

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await step()
            except Exception:
                log.exception("outbound call %s: recording its progress failed", self.record.sid)

        self._last = asyncio.get_running_loop().create_task(run())

    async def settle(self) -> None:
        """Wait for the record updates queued so far."""
        while self._last is not None and not self._last.done():
            await asyncio.shield(self._last)

    # -- DialListener ----------------------------------------------------------------------------
    def dialing(self) -> None:
        self._callback("initiated", "initiated")
        self._participant_status(PARTICIPANT_CONNECTING)

    def ringing(self) -> None:
        self._callback("ringing", CALL_RINGING)
        store = self.services.store
        sid = self.record.sid

        async def step() -> None:
            await store.update_call(sid, status=CALL_RINGING)

        self._then(step)
        self._participant_status(PARTICIPANT_RINGING)

    async def answered(self, participant: Participant) -> None:
        self.answered_at = time.monotonic()
        self._callback("answered", CALL_IN_PROGRESS)
        await self.settle()
        sid = self.record.sid
        await self.services.call_answered(sid)
        if self.conference_sid is not None:
            assert self.conference_name is not None and self.request.options is not None
            try:
                await self.services.join(
                    self.account.sid, self.conference_name, participant, self.request.options
                )
            finally:
                await self.dialout._conference_done(self.conference_sid, answered=True)
            if self.hung_up:  # hung up while joining: leave again now that the join is done
                await self.services.leave(sid, "hangup")
        else:
            voice = self.services.voice
            if voice is None:
                raise RuntimeError("no voice runtime to run the call's document")
            context = CallContext(
                call_sid=sid,
                account_sid=self.account.sid,
                from_=self.record.from_uri,
                to=self.record.to_uri,
                direction=CALL_OUTBOUND_API,
            )
            voice.outbound_call(
                self.account,
                context,
                participant,
                url=self.request.url,
                method=self.request.method,
                twiml=self.request.twiml,
            )

    def failed(self, sip_status: int | None, outcome: str) -> None:
        metrics.DIAL_CALLS.labels(outcome=outcome).inc()
        self._callback("completed", outcome, sip_status=sip_status)
        sid = self.record.sid

        async def step() -> None:
            await self.services.forget_call(sid)
            await self.services.store.update_call(sid, status=outcome, sip_response_code=sip_status)
            if self.conference_sid is not None:
                await self.services.store.set_dialing_status(sid, PARTICIPANT_FAILED)
                await self.dialout._conference_done(self.conference_sid, answered=False)
            self._finish()

        self._then(step)

    async def ended(self, reason: str) -> None:
        self.hung_up = True
        await self.settle()
        await self.services.leave(self.record.sid, reason)
        duration = 0
        if self.answered_at is not None:
            duration = max(0, round(time.monotonic() - self.answered_at))
        metrics.DIAL_CALLS.labels(outcome="completed").inc()
        self._callback("completed", "completed", duration=duration)
        self._finish()

    async def not_placed(self) -> None:
        """The SIP edge refused the call before dialling (a loop): record it failed."""
        await self.services.forget_call(self.record.sid)
        await self.services.store.update_call(self.record.sid, status="failed")
        if self.conference_sid is not None:
            await self.services.store.set_dialing_status(self.record.sid, PARTICIPANT_FAILED)
            await self.dialout._conference_done(self.conference_sid, answered=False)

    # -- helpers ---------------------------------------------------------------------------------
    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.dialout._done(self)

    def _participant_status(self, status: str) -> None:
        if self.conference_sid is None:
            return
        store, sid = self.services.store, self.record.sid

        async def step() -> None:
            await store.set_dialing_status(sid, status)

        self._then(step)

    def _callback(
        self,
        event: str,
        status: str,
        *,
        sip_status: int | None = None,
        duration: int | None = None,
    ) -> None:
        """Queue the call progress event ``event`` when the request asked for it."""
        url = self.request.status_callback
        if url is None or event not in self.events:
            return
        record = self.record
        params = {
            "AccountSid": self.account.sid,
            "ApiVersion": "2010-04-01",
            "CallSid": record.sid,
            "CallStatus": status,
            "Direction": CALL_OUTBOUND_API,
            "From": record.from_uri,
            "To": record.to_uri,
            "Caller": record.from_uri,
            "Called": record.to_uri,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(self.sequence),
            "Timestamp": rfc2822(utcnow()),
        }
        if self.conference_sid is not None:
            params["ConferenceSid"] = self.conference_sid
        if sip_status is not None:
            params["SipResponseCode"] = str(sip_status)
        if duration is not None:
            params["CallDuration"] = str(duration)
            params["Duration"] = str(max(1, (duration + 59) // 60))
        self.sequence += 1
        callback = Callback(
            url, self.request.status_callback_method, params, self.account.auth_token
        )
        self.services.callbacks().send(f"call-{record.sid}", callback)


__all__ = [
    "CALL_EVENTS",
    "DialLimits",
    "DialRequest",
    "Dialout",
    "SipTarget",
    "parse_from",
    "parse_sip_target",
]
