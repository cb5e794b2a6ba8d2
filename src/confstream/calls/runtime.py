"""The call runtime: runs a call's cXML (docs/voice.md, "Voice applications").

For an incoming call of an account with a voice URL, :meth:`VoiceRuntime.incoming_call`
(called by the services from the SIP edge's ``incoming_call``, after the 100 Trying and after
the call's record exists):

1. fetches the voice URL (:class:`~confstream.calls.webhook.WebhookFetcher`, standard
   parameters, ``CallStatus=ringing``). A failed request or a document that cannot run goes
   to the account's voice fallback URL, with ``ErrorCode`` and ``ErrorUrl`` added; when that
   fails too, or there is none, the call is refused unanswered with SIP **500**.
2. runs the script (:class:`confstream.voice.runner.CallScript`) up to its first action the
   caller would notice: warnings are logged, ``<Redirect>`` documents are fetched. A
   ``<Reject>`` met there refuses the call unanswered (SIP **603** Decline for
   ``reason="rejected"``, **486** Busy Here for ``busy``); a document that stops the call
   with an error there refuses it with **500**.
3. otherwise returns: the SIP edge answers 200; once the services have recorded the call
   ``in-progress`` they call :meth:`VoiceRuntime.call_answered`, and the rest of the script
   runs in one asyncio task per call (the first action included, so a first
   ``<Start><Stream>`` finds the call answered), with ``CallStatus=in-progress``.

How each action is done:

* ``Say`` (espeak-ng, :mod:`confstream.calls.speech`), ``Play`` (a WAV fetched like an
  announcement: through the outbound policy, any rate/format the announcements take),
  ``Pause``, ``Play digits`` (RFC 4733 to the caller; ``w`` waits 0.5 s): heard by the caller
  alone. A call that is not in a conference has an engine conference of its own, keyed by its
  CallSid (no record), where this audio is played; it is removed when the call joins a
  conference or ends.
* ``Gather``: keys pressed before the ``<Gather>`` starts are dropped; its prompts play until
  the first key; then each next key is awaited up to ``timeout`` seconds. It ends at a key of
  ``finishOnKey``, after ``numDigits`` keys, or at the timeout.
* ``Dial><Conference``: :meth:`Services.join` with the ``<Conference>`` attributes as
  :class:`~confstream.conference.gateway.JoinOptions`; then the script waits until the call
  leaves the conference: :meth:`VoiceRuntime.conference_left` (the services call it when a
  participant is taken out while its call goes on), ``*`` with ``hangupOnStar`` or
  ``timeLimit`` (the runtime takes the call out with :meth:`Services.leave_conference`).
  A refused join is ``DialCallStatus=failed``.
* ``Start``/``Stop`` ``Stream``: :meth:`Services.start_call_stream` /
  :meth:`Services.stop_call_stream`; a stream that cannot start is logged and the script goes
  on (its status callback reports it). ``Connect><Stream``: a bidirectional (realtime)
  stream; the script waits until :meth:`VoiceRuntime.stream_status` reports it stopped.
* ``Hangup``, and ``Reject`` once answered: the call is hung up (a BYE). A ``Hangup`` caused
  by an error (a document that cannot run, a failed fetch, a redirect loop) is reported: a log
  line at WARNING and ``confstream_voice_webhook_failures_total{reason}``; the BYE carries
  ``Reason: SIP;cause=200;text="application-error <code>"``.

:meth:`VoiceRuntime.redirect` (the Calls REST update) replaces the running script: the task is
cancelled, the call taken out of its conference and its prompts stopped, then the new
document (``Twiml``, or fetched from ``Url``) runs.

Errors never reach the SIP edge except as the documented refusals, and one call's failure
never touches another: each call's task catches everything and hangs its own call up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

from confstream import metrics
from confstream.calls.speech import Speaker, SpeechUnavailable
from confstream.calls.webhook import (
    REASON_DOCUMENT,
    CallContext,
    FetchedDocument,
    WebhookError,
    WebhookFetcher,
    call_parameters,
    describe,
)
from confstream.conference.base import Participant
from confstream.conference.gateway import IncomingCall, JoinOptions
from confstream.errors import ConfstreamError, JoinRefused
from confstream.netpolicy import redact_url
from confstream.store import Account, Stream
from confstream.store.models import STREAM_STOPPED
from confstream.streams.spec import StreamRequest
from confstream.streams.vocabulary import CallbackMethod, Track
from confstream.voice.cxml import ConferenceNoun, CxmlError, StreamNoun, parse
from confstream.voice.runner import (
    Action,
    CallScript,
    CollectDigits,
    ConnectStream,
    CxmlLoopError,
    FetchDocument,
    FetchFailed,
    Hangup,
    JoinConference,
    LeaveReason,
    Pause,
    PlayAudio,
    PromptAction,
    Reject,
    ReportWarning,
    Say,
    SendDigits,
    StartStream,
    StopStream,
)

log = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]

#: SIP statuses of the refusals (see the module docstring).
SIP_APPLICATION_ERROR: Final = 500
SIP_REJECTED: Final = 603
SIP_BUSY: Final = 486
#: Keys kept for a call that is not reading them (the oldest is dropped beyond).
MAX_QUEUED_DIGITS: Final = 32
#: ``<Play digits>``: how long each key sounds, and the gap after it; ``w`` waits 0.5 s.
DIGIT_MS: Final = 250
DIGIT_GAP_S: Final = 0.1
#: How often a playing prompt is checked for its end (one mixer tick).
POLL_S: Final = 0.02
#: WAV files kept per call for ``<Play>`` (by URL), so loops and repeats fetch once.
MAX_CACHED_WAVS: Final = 8
#: Failure counter reason for a redirect loop (the interpreter's 12199).
REASON_LOOP: Final = "loop"

STATUS_RINGING: Final = "ringing"
STATUS_IN_PROGRESS: Final = "in-progress"


class CallNotInProgress(ConfstreamError):
    """The call is not live under a voice application, so it cannot be redirected (21220)."""

    code = 21220


class Source(Protocol):
    @property
    def finished(self) -> bool: ...
    def stop(self) -> None: ...


class Media(Protocol):
    """What the runtime uses of an engine conference."""

    def add_participant(self, p: Participant) -> None: ...
    def remove_participant(self, call_sid: str) -> Participant | None: ...
    def play(self, pcm: npt.ArrayLike, target_call_sid: str | None = None) -> Source: ...


class Engine(Protocol):
    def add_conference(self, conference_sid: str) -> Media: ...
    def get(self, conference_sid: str) -> Media | None: ...
    def remove_conference(self, conference_sid: str) -> None: ...


class VoiceServices(Protocol):
    """What the runtime needs of :class:`confstream.services.Services` (it never imports
    it: the services are a layer above)."""

    async def join(
        self,
        account_sid: str,
        conference_name: str,
        participant: Participant,
        options: JoinOptions | None = None,
    ) -> str: ...

    async def leave_conference(self, call_sid: str, reason: str) -> None: ...

    async def start_call_stream(
        self, account: Account, call_sid: str, request: StreamRequest
    ) -> Stream: ...

    async def stop_call_stream(
        self, account: Account, call_sid: str, sid_or_name: str, reason: str
    ) -> Any: ...

    async def fetch_audio(self, url: str, method: str = "GET") -> Int16Array: ...

    def set_digit_listener(self, call_sid: str, listener: Callable[[str], None] | None) -> None: ...


@dataclass(eq=False)
class _Call:
    """One call run by the runtime."""

    account: Account
    context: CallContext
    participant: Participant
    script: CallScript
    status: str = STATUS_RINGING
    first: Action | None = None
    task: asyncio.Task[None] | None = None
    digits: asyncio.Queue[str] = field(
        default_factory=lambda: asyncio.Queue(maxsize=MAX_QUEUED_DIGITS)
    )
    #: the conference the call is in (its ConferenceSid), None when not in one
    conference_sid: str | None = None
    left: asyncio.Event = field(default_factory=asyncio.Event)
    #: True while the call has an engine conference of its own (keyed by its CallSid)
    solo: bool = False
    source: Source | None = None
    started_streams: list[str] = field(default_factory=list)
    connect_stream: str | None = None
    connect_done: asyncio.Event = field(default_factory=asyncio.Event)
    wavs: dict[str, Int16Array] = field(default_factory=dict)
    ended: bool = False

    @property
    def call_sid(self) -> str:
        return self.context.call_sid


def join_options(noun: ConferenceNoun) -> JoinOptions:
    """The ``<Conference>`` attributes as join options."""
    return JoinOptions(
        muted=noun.muted,
        beep=noun.beep,
        start_conference_on_enter=noun.start_conference_on_enter,
        end_conference_on_exit=noun.end_conference_on_exit,
        wait_url=noun.wait_url,
        wait_method=noun.wait_method,
        max_participants=noun.max_participants,
        status_callback=noun.status_callback,
        status_callback_method=noun.status_callback_method,
        status_callback_event=tuple(sorted(noun.status_callback_event)),
        label=noun.participant_label,
    )


def stream_request(noun: StreamNoun, *, realtime: bool) -> StreamRequest:
    """A ``<Stream>`` noun as a stream request (``realtime``: bidirectional ``<Connect>``)."""
    return StreamRequest(
        url=noun.url,
        name=noun.name,
        track=Track(noun.track),
        realtime=realtime,
        status_callback=noun.status_callback,
        status_callback_method=CallbackMethod(noun.status_callback_method),
        parameters=dict(noun.parameters),
    )


def _failure(reason: str) -> None:
    metrics.VOICE_WEBHOOK_FAILURES.labels(reason=reason).inc()


class VoiceRuntime:
    """Runs the cXML of every call answered by a voice application (module docstring)."""

    def __init__(
        self,
        services: VoiceServices,
        engine: Engine,
        fetcher: WebhookFetcher,
        speaker: Speaker | None = None,
    ) -> None:
        self.services = services
        self.engine = engine
        self.fetcher = fetcher
        self.speaker = speaker or Speaker()
        self._calls: dict[str, _Call] = {}
        self._closed = False

    # ------------------------------------------------------------------ queries
    def is_running(self, call_sid: str) -> bool:
        """True while ``call_sid`` is a live call run by the runtime."""
        call = self._calls.get(call_sid)
        return call is not None and not call.ended

    @property
    def calls(self) -> int:
        return len(self._calls)

    # ----------------------------------------------------------------- answer
    async def incoming_call(
        self, account: Account, incoming: IncomingCall, participant: Participant
    ) -> None:
        """Steps 1 to 3 of the module docstring. Raises :class:`JoinRefused` to refuse."""
        context = CallContext(
            call_sid=incoming.call_sid,
            account_sid=account.sid,
            from_=incoming.from_uri,
            to=incoming.to_uri,
            caller_name=incoming.caller_name,
            sip_headers=incoming.sip_headers,
        )
        script = await self._first_script(account, context)
        call = _Call(account, context, participant, script)
        self._calls[call.call_sid] = call
        self.services.set_digit_listener(call.call_sid, lambda key: self._on_digit(call, key))
        try:
            action = await self._until_answer(call)
        except BaseException:
            self._forget(call)
            raise
        if isinstance(action, Reject) and action.before_answer:
            self._forget(call)
            status = SIP_BUSY if action.reason == "busy" else SIP_REJECTED
            raise JoinRefused(f"<Reject reason={action.reason}>", status)
        if isinstance(action, Hangup) and action.error is not None:
            self._report_error(call, action.error)
            self._forget(call)
            raise JoinRefused(f"application error {action.error.code}", SIP_APPLICATION_ERROR)
        call.first = action
        call.status = STATUS_IN_PROGRESS
        metrics.VOICE_CALLS_ACTIVE.inc()

    def call_answered(self, call_sid: str) -> None:
        """The call accepted by :meth:`incoming_call` is answered (its record is
        ``in-progress``): the rest of its script starts running (step 3). Unknown or ended
        CallSids are ignored."""
        call = self._calls.get(call_sid)
        if call is None or call.ended or call.task is not None:
            return
        call.task = asyncio.get_running_loop().create_task(
            self._run(call), name=f"voice-{call.call_sid}"
        )

    def outbound_call(
        self,
        account: Account,
        context: CallContext,
        participant: Participant,
        *,
        url: str | None = None,
        method: str = "POST",
        twiml: str | None = None,
    ) -> None:
        """Run the cXML of an answered outbound call (``POST /Calls``, docs/api.md): ``twiml``,
        or the document at ``url`` fetched with ``method`` and ``CallStatus=in-progress``
        (like a ``<Redirect>``, so a failed fetch is reported and ends the call the same
        way). The call is answered already: nothing here can refuse it."""
        if twiml is not None:
            script = CallScript(twiml)
        else:
            if url is None:
                raise ValueError("an outbound call needs a url or twiml")
            verb = "GET" if method.upper() == "GET" else "POST"
            script = CallScript(
                f'<Response><Redirect method="{verb}">{escape(url)}</Redirect></Response>'
            )
        call = _Call(account, context, participant, script, status=STATUS_IN_PROGRESS)
        self._calls[call.call_sid] = call
        self.services.set_digit_listener(call.call_sid, lambda key: self._on_digit(call, key))
        metrics.VOICE_CALLS_ACTIVE.inc()
        call.task = asyncio.get_running_loop().create_task(
            self._run(call), name=f"voice-{call.call_sid}"
        )

    async def _first_script(self, account: Account, context: CallContext) -> CallScript:
        """The script of the voice URL, else of the fallback URL (module docstring, step 1)."""
        assert account.voice_url is not None
        params = call_parameters(context, STATUS_RINGING)
        try:
            return self._script_of(
                await self.fetcher.fetch(
                    account.voice_url, account.voice_method, params, account.auth_token
                )
            )
        except WebhookError as exc:
            error_code, problem = exc.code, describe(exc)
            _failure(exc.reason)
        except CxmlError as exc:
            error_code, problem = exc.code, f"{exc.code} {exc}"
            _failure(REASON_DOCUMENT)
        log.warning(
            "call %s: voice URL %s failed: %s",
            context.call_sid,
            redact_url(account.voice_url),
            problem,
        )
        if not account.voice_fallback_url:
            raise JoinRefused(f"voice URL failed: {problem}", SIP_APPLICATION_ERROR)
        params = {**params, "ErrorCode": str(error_code), "ErrorUrl": account.voice_url}
        try:
            return self._script_of(
                await self.fetcher.fetch(
                    account.voice_fallback_url,
                    account.voice_fallback_method,
                    params,
                    account.auth_token,
                )
            )
        except WebhookError as exc:
            problem = describe(exc)
            _failure(exc.reason)
        except CxmlError as exc:
            problem = f"{exc.code} {exc}"
            _failure(REASON_DOCUMENT)
        log.warning(
            "call %s: voice fallback URL %s failed too: %s; call refused",
            context.call_sid,
            redact_url(account.voice_fallback_url),
            problem,
        )
        raise JoinRefused(f"voice fallback URL failed: {problem}", SIP_APPLICATION_ERROR)

    @staticmethod
    def _script_of(doc: FetchedDocument) -> CallScript:
        """A script of ``doc``; raises :class:`CxmlError` when the document cannot run."""
        return CallScript(parse(doc.body, doc.url, doc.content_type))

    async def _until_answer(self, call: _Call) -> Action | None:
        """Warnings and fetches up to the first action the caller would notice."""
        while True:
            action = call.script.next_action()
            if isinstance(action, ReportWarning):
                self._warn(call, action)
            elif isinstance(action, FetchDocument):
                await self._fetch(call, action)
            else:
                return action

    # -------------------------------------------------------------------- run
    async def _run(self, call: _Call) -> None:
        """The call's task: every action in turn until the script ends."""
        try:
            action, call.first = call.first, None
            while not call.ended:
                if action is None:
                    action = call.script.next_action()
                    if action is None:
                        break  # finished: a Hangup or Reject has been done
                await self._do(call, action)
                action = None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: the voice application runtime failed", call.call_sid)
            self._hangup(call, "application-error")

    async def _do(self, call: _Call, action: Action) -> None:
        if isinstance(action, ReportWarning):
            self._warn(call, action)
        elif isinstance(action, Say | PlayAudio | SendDigits | Pause):
            await self._prompt(call, action, interruptible=False)
        elif isinstance(action, CollectDigits):
            call.script.digits_collected(await self._gather(call, action))
        elif isinstance(action, JoinConference):
            call.script.conference_left(await self._conference(call, action))
        elif isinstance(action, StartStream):
            await self._start_stream(call, action.stream)
        elif isinstance(action, StopStream):
            await self._stop_streams(call, action.name)
        elif isinstance(action, ConnectStream):
            await self._connect(call, action.stream)
            call.script.stream_ended()
        elif isinstance(action, FetchDocument):
            await self._fetch(call, action)
        elif isinstance(action, Hangup):
            if action.error is not None:
                self._report_error(call, action.error)
                self._hangup(call, f"application-error {action.error.code}")
            else:
                self._hangup(call, "hangup")
        elif isinstance(action, Reject):  # pragma: no branch - the Action union is closed
            self._hangup(call, f"rejected {action.reason}")

    # ----------------------------------------------------------------- fetch
    async def _fetch(self, call: _Call, action: FetchDocument) -> None:
        params = {**call_parameters(call.context, call.status), **action.params}
        try:
            doc = await self.fetcher.fetch(
                action.url, action.method, params, call.account.auth_token
            )
        except WebhookError as exc:
            _failure(exc.reason)
            log.warning(
                "call %s: %s document request failed: %s",
                call.call_sid,
                action.purpose,
                describe(exc),
            )
            call.script.fetch_failed(f"{exc.code} {exc.message}")
            return
        call.script.document_fetched(doc.body, doc.url, doc.content_type)

    # ----------------------------------------------------------------- audio
    def _solo(self, call: _Call) -> Media:
        """The call's own engine conference (made on first use, while not in a conference)."""
        media = self.engine.get(call.call_sid)
        if media is None:
            media = self.engine.add_conference(call.call_sid)
            media.add_participant(call.participant)
            call.solo = True
        return media

    def _drop_solo(self, call: _Call) -> None:
        if call.source is not None:
            call.source.stop()
            call.source = None
        if call.solo:
            call.solo = False
            media = self.engine.get(call.call_sid)
            if media is not None:
                media.remove_participant(call.call_sid)
                self.engine.remove_conference(call.call_sid)

    async def _prompt(self, call: _Call, action: PromptAction, *, interruptible: bool) -> bool:
        """Do one prompt; True when a key interrupted it (only when ``interruptible``)."""
        if isinstance(action, Pause):
            return await self._wait_or_key(call, float(action.seconds), interruptible)
        if isinstance(action, SendDigits):
            for key in action.digits:
                if key in "wW":
                    await asyncio.sleep(0.5)
                else:
                    call.participant.send_dtmf(key.upper(), DIGIT_MS)
                    await asyncio.sleep(DIGIT_MS / 1000 + DIGIT_GAP_S)
            return False
        pcm = await self._audio(call, action)
        if pcm is None or pcm.size == 0:
            return False
        for _ in range(action.loop):
            if await self._play(call, pcm, interruptible):
                return True
        return False

    async def _audio(self, call: _Call, action: Say | PlayAudio) -> Int16Array | None:
        if isinstance(action, Say):
            try:
                return await self.speaker.render(action.text, action.voice, action.language)
            except SpeechUnavailable as exc:
                log.warning("call %s: <Say> not spoken: %s", call.call_sid, exc)
                return None
        cached = call.wavs.get(action.url)
        if cached is not None:
            return cached
        try:
            pcm = await self.services.fetch_audio(action.url, "GET")
        except ConfstreamError as exc:
            log.warning(
                "call %s: <Play> %s skipped: %s (%d)",
                call.call_sid,
                redact_url(action.url),
                exc.message,
                exc.code,
            )
            return None
        if len(call.wavs) >= MAX_CACHED_WAVS:
            call.wavs.pop(next(iter(call.wavs)))
        call.wavs[action.url] = pcm
        return pcm

    async def _play(self, call: _Call, pcm: Int16Array, interruptible: bool) -> bool:
        """Play ``pcm`` to the caller, to its end (True: a key stopped it)."""
        source = self._solo(call).play(pcm)
        call.source = source
        try:
            while not source.finished:
                if interruptible and not call.digits.empty():
                    return True
                await asyncio.sleep(POLL_S)
            return False
        finally:
            source.stop()
            if call.source is source:
                call.source = None

    async def _wait_or_key(self, call: _Call, seconds: float, interruptible: bool) -> bool:
        self._solo(call)  # the caller hears silence from the platform, not nothing
        if not interruptible:
            await asyncio.sleep(seconds)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if not call.digits.empty():
                return True
            await asyncio.sleep(min(POLL_S * 5, max(0.0, deadline - loop.time())))
        return False

    # ---------------------------------------------------------------- digits
    def _on_digit(self, call: _Call, key: str) -> None:
        """The services' digit listener (RFC 4733 end events, duplicates removed)."""
        if call.ended:
            return
        if call.digits.full():
            call.digits.get_nowait()
        call.digits.put_nowait(key)

    def _clear_digits(self, call: _Call) -> None:
        while not call.digits.empty():
            call.digits.get_nowait()

    async def _gather(self, call: _Call, action: CollectDigits) -> str:
        """The keys of one ``<Gather>`` (module docstring), finishing key included."""
        self._clear_digits(call)
        for prompt in action.prompts:
            if await self._prompt(call, prompt, interruptible=True):
                break
        self._solo(call)
        keys = ""
        while True:
            try:
                key = await asyncio.wait_for(call.digits.get(), action.timeout)
            except TimeoutError:
                return keys
            keys += key
            if key in action.finish_on_key:
                return keys
            if action.num_digits is not None and len(keys) >= action.num_digits:
                return keys

    # ------------------------------------------------------------ conference
    async def _conference(self, call: _Call, action: JoinConference) -> LeaveReason:
        """Join, stay until the call leaves; ``left`` or ``failed`` (couldn't join)."""
        self._drop_solo(call)
        call.left.clear()
        try:
            conference_sid = await self.services.join(
                call.account.sid,
                action.conference.name,
                call.participant,
                join_options(action.conference),
            )
        except ConfstreamError as exc:
            log.info(
                "call %s: <Dial><Conference> %r failed: %s",
                call.call_sid,
                action.conference.name,
                exc.message,
            )
            return "failed"
        call.conference_sid = conference_sid
        self._clear_digits(call)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + action.time_limit
        reason: str | None = None
        while not call.left.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                reason = "time-limit"
                break
            key_task = asyncio.ensure_future(call.digits.get())
            left_task = asyncio.ensure_future(call.left.wait())
            try:
                done, _ = await asyncio.wait(
                    {key_task, left_task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                key_task.cancel()
                left_task.cancel()
            if key_task in done and key_task.result() == "*" and action.hangup_on_star:
                reason = "hangup-on-star"
                break
        if reason is not None and not call.left.is_set():
            await self.services.leave_conference(call.call_sid, reason)
        call.conference_sid = None
        return "left"

    def conference_left(self, call_sid: str) -> None:
        """The services took ``call_sid`` out of its conference and the call goes on (its
        ``<Dial>`` is over). Unknown CallSids are ignored."""
        call = self._calls.get(call_sid)
        if call is not None:
            call.left.set()

    # --------------------------------------------------------------- streams
    async def _start_stream(
        self, call: _Call, noun: StreamNoun, *, realtime: bool = False
    ) -> Stream | None:
        try:
            row = await self.services.start_call_stream(
                call.account, call.call_sid, stream_request(noun, realtime=realtime)
            )
        except (ConfstreamError, ValueError) as exc:
            log.warning(
                "call %s: <Stream> %s not started: %s",
                call.call_sid,
                redact_url(noun.url),
                getattr(exc, "message", str(exc)),
            )
            return None
        if not realtime:
            call.started_streams.append(row.sid)
        return row

    async def _stop_streams(self, call: _Call, name: str | None) -> None:
        targets = [name] if name is not None else list(call.started_streams)
        if name is None:
            call.started_streams.clear()
        for target in targets:
            try:
                await self.services.stop_call_stream(
                    call.account, call.call_sid, target, "Stream stopped by <Stop>"
                )
            except ConfstreamError as exc:
                log.info("call %s: <Stop><Stream> %s: %s", call.call_sid, target, exc.message)

    async def _connect(self, call: _Call, noun: StreamNoun) -> None:
        """``<Connect><Stream>``: until the stream stops (or the task is cancelled)."""
        self._solo(call)
        call.connect_done.clear()
        row = await self._start_stream(call, noun, realtime=True)
        if row is None or row.status == STREAM_STOPPED:
            return  # not started, or already over (its stop may have been reported already)
        sid = row.sid
        call.connect_stream = sid
        try:
            await call.connect_done.wait()
        finally:
            call.connect_stream = None
            if not call.connect_done.is_set() and not call.ended:
                with contextlib.suppress(ConfstreamError):
                    await self.services.stop_call_stream(
                        call.account, call.call_sid, sid, "Call redirected"
                    )

    def stream_status(self, stream_sid: str, status: str) -> None:
        """The stream manager's status change (through the services): ends a
        ``<Connect><Stream>`` when its stream has stopped."""
        if status != "stopped":
            return
        for call in self._calls.values():
            if call.connect_stream == stream_sid:
                call.connect_done.set()

    # ------------------------------------------------------------ redirects
    async def redirect(
        self,
        call_sid: str,
        url: str | None = None,
        method: str = "POST",
        twiml: str | None = None,
    ) -> None:
        """Replace the running script of a live call by ``twiml``, or by the document at
        ``url`` (fetched in the call's task, like a ``<Redirect>``). Raises
        :class:`CallNotInProgress` when the call is not one the runtime runs."""
        call = self._calls.get(call_sid)
        if call is None or call.ended or call.task is None:
            raise CallNotInProgress(f"Call {call_sid} is not in progress. Cannot redirect.")
        if twiml is not None:
            script = CallScript(twiml)
        else:
            if url is None:
                raise ValueError("redirect needs a url or twiml")
            verb = "GET" if method.upper() == "GET" else "POST"
            script = CallScript(
                f'<Response><Redirect method="{verb}">{escape(url)}</Redirect></Response>'
            )
        old = call.task
        old.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await old
        if call.ended:
            return
        if call.conference_sid is not None:
            call.conference_sid = None
            try:
                await self.services.leave_conference(call_sid, "redirected")
            except ConfstreamError as exc:
                log.info("call %s: leaving the conference to redirect: %s", call_sid, exc.message)
        if call.source is not None:
            call.source.stop()
            call.source = None
        call.script = script
        call.first = None
        call.task = asyncio.get_running_loop().create_task(
            self._run(call), name=f"voice-{call_sid}"
        )

    # ------------------------------------------------------------------ end
    def _hangup(self, call: _Call, reason: str) -> None:
        try:
            call.participant.hangup(reason)
        except Exception:
            log.exception("call %s: hang-up failed", call.call_sid)

    def call_ended(self, call_sid: str) -> None:
        """The call has ended (the services' ``leave``): its script stops, its own
        conference and digit listener go. Idempotent; unknown CallSids are ignored."""
        call = self._calls.get(call_sid)
        if call is None:
            return
        call.script.hung_up()
        self._forget(call)
        if call.task is not None and call.task is not asyncio.current_task():
            call.task.cancel()

    def _forget(self, call: _Call) -> None:
        if call.ended:
            return
        call.ended = True
        if call.status == STATUS_IN_PROGRESS:
            metrics.VOICE_CALLS_ACTIVE.dec()
        self._calls.pop(call.call_sid, None)
        self.services.set_digit_listener(call.call_sid, None)
        self._drop_solo(call)

    async def close(self) -> None:
        """Stop every call's task (shutdown: the SIP edge hangs the calls up), then close
        the webhook client."""
        self._closed = True
        tasks = [c.task for c in self._calls.values() if c.task is not None]
        for call in list(self._calls.values()):
            self._forget(call)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.fetcher.close()

    # ------------------------------------------------------------- reporting
    def _warn(self, call: _Call, action: ReportWarning) -> None:
        warning = action.warning
        where = redact_url(action.url) if action.url else "inline document"
        line = f" line {warning.line}" if warning.line is not None else ""
        log.warning(
            "call %s: cXML warning %d in %s%s: %s",
            call.call_sid,
            warning.code,
            where,
            line,
            warning.message,
        )

    def _report_error(self, call: _Call, error: CxmlError) -> None:
        """An error that ends the call. Fetch failures were counted when they happened."""
        if not isinstance(error, FetchFailed):
            _failure(REASON_LOOP if isinstance(error, CxmlLoopError) else REASON_DOCUMENT)
        where = redact_url(call.script.url) if call.script.url else "inline document"
        log.warning(
            "call %s: application error %d (%s): %s; the call is ended",
            call.call_sid,
            error.code,
            where,
            error,
        )


__all__ = [
    "CallNotInProgress",
    "VoiceRuntime",
    "VoiceServices",
    "join_options",
    "stream_request",
]
