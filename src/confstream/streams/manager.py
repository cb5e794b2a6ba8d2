"""Runs every stream of the server: start, stop, status, callbacks (docs/protocol.md).

A stream's source is a conference (its mixes) or one call (what that caller says and hears,
docs/protocol.md "Call streams"); both run the same
:class:`~confstream.streams.session.StreamSession`, attached to ``engine.get(conference_sid)``
or to ``engine.call_media(call_sid)``.

The REST/services layer calls exactly :class:`StreamManager`'s public methods. Guarantees:

* :meth:`StreamManager.start` returns quickly. A URL that is not an acceptable ``wss://`` URL is
  refused synchronously: ``on_status(sid, "stopped", 31922, message)`` is awaited, then the
  ``stream-error`` (``invalid_url``) and ``stream-stopped`` callbacks are queued; nothing
  connects. Otherwise a task runs the :class:`~confstream.streams.session.StreamSession`.
* Every stream ends with exactly one ``on_status(..., "stopped", code, message)`` and exactly one
  ``stream-stopped`` callback, whatever ended it (API stop, conference end, receiver close,
  failure, server shutdown). ``in-progress`` is reported (status hook, then ``stream-started``
  callback) only after the upgrade and the ``start`` message. A failure sends ``stream-error``
  with the SignalWire ``StreamError`` value before ``stream-stopped``.
* Callback parameters (docs/protocol.md, "Status callbacks"): ``AccountSid, ConferenceSid,
  CallSid (= ConferenceSid), StreamSid, StreamName (the Name, or the StreamSid when none),
  StreamEvent, StreamTrack, StreamError (stream-error only), Timestamp`` (ISO 8601 UTC). A
  call stream's have ``CallSid`` = its CallSid and no ``ConferenceSid``.
  Signed with the account's AuthToken; delivered in order per stream by
  :class:`~confstream.callbacks.webhooks.CallbackSender`.
* :meth:`StreamManager.stop` is idempotent and bounded (:data:`FLUSH_TIMEOUT_S` +
  ``settings.stream_close_timeout`` + :data:`STOP_MARGIN_S`, 6 s by default): past it the
  session task is cancelled and still reported stopped.
* After a crash the start-up closes the streams the previous run left open (status ``stopped``,
  error 31990, docs/operations.md) and hands them to :meth:`StreamManager.report_restarted`,
  which sends each one's ``stream-error`` and ``stream-stopped`` callbacks, signed and delivered
  like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from confstream.callbacks.webhooks import Callback, CallbackSender, iso_timestamp
from confstream.netpolicy import client_ssl_context
from confstream.settings import Settings
from confstream.streams.failures import Failure, Outcome, StreamError, StreamFailure
from confstream.streams.session import (
    FLUSH_TIMEOUT_S,
    ConferenceMediaLike,
    StreamSession,
    validate_stream_url,
)
from confstream.streams.spec import StreamSpec
from confstream.streams.vocabulary import CallbackMethod, StreamCodec, Track

__all__ = [
    "RESTARTED_MESSAGE",
    "STOP_MARGIN_S",
    "STOP_TIMEOUT_S",
    "StatusHook",
    "StreamManager",
    "StreamRecord",
    "StreamSpec",
    "spec_of_record",
]

log = logging.getLogger(__name__)

StatusHook = Callable[[str, str, int | None, str | None], Awaitable[None]]
#            (stream_sid, status "in-progress"|"stopped", error_code, error_message)

STOP_MARGIN_S = 2.0
#: :meth:`StreamManager.stop`'s bound with the default settings: flush (2 s) + stop/close (2 s)
#: + margin.
STOP_TIMEOUT_S = FLUSH_TIMEOUT_S + 2.0 + STOP_MARGIN_S
#: The ``error_message`` of streams closed at start-up after a crash (error 31990).
RESTARTED_MESSAGE = "the server restarted while the stream was open (it had stopped abnormally)"


class StreamRecord(Protocol):
    """The stored fields of a stream (``confstream.store.Stream``) a callback needs."""

    @property
    def sid(self) -> str: ...
    @property
    def account_sid(self) -> str: ...
    @property
    def conference_sid(self) -> str | None: ...
    @property
    def call_sid(self) -> str | None: ...
    @property
    def url(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def track(self) -> str: ...
    @property
    def codec(self) -> str: ...
    @property
    def realtime(self) -> bool: ...
    @property
    def status_callback(self) -> str | None: ...
    @property
    def status_callback_method(self) -> str: ...


def spec_of_record(record: StreamRecord, auth_token: str) -> StreamSpec:
    """The spec of a stored stream (no custom parameters or bearer token: they are not stored).
    ValueError when a stored value is not of the vocabulary."""
    return StreamSpec(
        sid=record.sid,
        account_sid=record.account_sid,
        auth_token=auth_token,
        conference_sid=record.conference_sid,
        call_sid=record.call_sid,
        url=record.url,
        name=record.name,
        track=Track(record.track),
        codec=StreamCodec(record.codec),
        realtime=record.realtime,
        status_callback=record.status_callback,
        status_callback_method=CallbackMethod(record.status_callback_method.upper()),
    )


class StreamManager:
    """All live streams of the server, by StreamSid, by ConferenceSid and by CallSid.

    ``engine`` must give a conference's live media: the manager calls
    ``engine.get(conference_sid)`` (None when it has no live media), and a call's tap point:
    ``engine.call_media(call_sid)`` (call streams; the caller checks that the call is live).
    Both must provide ``add_tap``, ``remove_tap`` and ``send_dtmf``
    (:class:`~confstream.streams.session.ConferenceMediaLike`). ``callbacks`` defaults to a
    :class:`CallbackSender` built from ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        on_status: StatusHook,
        *,
        callbacks: CallbackSender | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.on_status = on_status
        self.callbacks = callbacks or CallbackSender(settings)
        self._ssl = client_ssl_context(settings.stream_ca_file)
        self._sessions: dict[str, StreamSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._by_conference: dict[str, dict[str, None]] = {}  # ordered set of sids
        self._by_call: dict[str, dict[str, None]] = {}
        self._closing = False
        self.stop_timeout = FLUSH_TIMEOUT_S + settings.stream_close_timeout + STOP_MARGIN_S

    # ------------------------------------------------------------------ public API

    async def start(self, spec: StreamSpec) -> None:
        """Start ``spec`` (see the module docstring). A second start of a live sid is ignored."""
        if spec.sid in self._tasks:
            return
        try:
            validate_stream_url(spec.url)
        except StreamFailure as f:
            await self._finish(spec, f.outcome())
            return
        if self._closing:
            await self._finish(
                spec, Outcome.failed(Failure.SHUTTING_DOWN, "server is shutting down")
            )
            return
        media = self._media_of(spec)
        if media is None:
            what = "call" if spec.call_sid is not None else "conference"
            await self._finish(
                spec,
                Outcome.failed(
                    Failure.NO_LIVE_MEDIA, f"{what} has no live media (not in progress)"
                ),
            )
            return
        session = StreamSession(spec, self.settings, media, ssl_context=self._ssl)
        self._sessions[spec.sid] = session
        self._index(spec).setdefault(spec.source_sid, {})[spec.sid] = None
        self._tasks[spec.sid] = asyncio.create_task(
            self._run(spec, session), name=f"stream-{spec.sid}"
        )

    async def stop(self, stream_sid: str, reason: str = "api") -> None:
        """Stop a stream (``stop`` is sent if its socket is open) and wait for it to finish,
        at most :attr:`stop_timeout`. Unknown or already stopped sids are ignored."""
        session = self._sessions.get(stream_sid)
        task = self._tasks.get(stream_sid)
        if session is None or task is None:
            return
        session.request_stop(reason)
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
        if not done:
            log.warning(
                "stream %s did not stop within %.0f s; cancelling", stream_sid, self.stop_timeout
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop_conference(self, conference_sid: str) -> None:
        """Stop every stream of a conference (it ended), concurrently."""
        sids = list(self._by_conference.get(conference_sid, {}))
        await asyncio.gather(*(self.stop(sid, "conference-ended") for sid in sids))

    async def stop_call(self, call_sid: str, reason: str = "call-ended") -> None:
        """Stop every stream of a call (it ended), concurrently."""
        sids = list(self._by_call.get(call_sid, {}))
        await asyncio.gather(*(self.stop(sid, reason) for sid in sids))

    def active(self, conference_sid: str) -> list[str]:
        """StreamSids of the conference's streams not yet stopped, in start order."""
        return list(self._by_conference.get(conference_sid, {}))

    def active_for_call(self, call_sid: str) -> list[str]:
        """StreamSids of the call's streams not yet stopped, in start order."""
        return list(self._by_call.get(call_sid, {}))

    def session(self, stream_sid: str) -> StreamSession | None:
        """The live session of ``stream_sid`` (tests, metrics)."""
        return self._sessions.get(stream_sid)

    def report_restarted(self, records: Iterable[tuple[StreamRecord, str]]) -> None:
        """Queue ``stream-error`` (``general_error``) then ``stream-stopped`` for each stream a
        crashed run left open, given as (stream record, its account's AuthToken); the caller has
        already recorded them ``stopped`` with :attr:`Failure.SERVER_RESTARTED` (31990). Never
        blocks."""
        for record, auth_token in records:
            try:
                spec = spec_of_record(record, auth_token)
            except ValueError:
                log.exception("stream %s: cannot report it stopped", record.sid)
                continue
            log.warning(
                "stream %s was left open by a previous run: reported stopped (%d)",
                spec.sid,
                Failure.SERVER_RESTARTED.code,
            )
            self._callback(spec, "stream-error", Failure.SERVER_RESTARTED.stream_error)
            self._callback(spec, "stream-stopped")

    async def close(self, callback_timeout: float = 5.0) -> None:
        """Server shutdown: stop every stream concurrently, then flush callbacks (bounded)."""
        self._closing = True
        await asyncio.gather(*(self.stop(sid, "shutdown") for sid in list(self._tasks)))
        await self.callbacks.close(callback_timeout)

    # ------------------------------------------------------------------ internals

    def _index(self, spec: StreamSpec) -> dict[str, dict[str, None]]:
        return self._by_call if spec.call_sid is not None else self._by_conference

    def _media_of(self, spec: StreamSpec) -> ConferenceMediaLike | None:
        media: ConferenceMediaLike | None
        try:
            if spec.call_sid is not None:
                call_media = getattr(self.engine, "call_media", None)
                media = call_media(spec.call_sid) if callable(call_media) else None
            else:
                media = self.engine.get(spec.conference_sid)
        except KeyError:
            return None
        return media

    async def _run(self, spec: StreamSpec, session: StreamSession) -> None:
        outcome = Outcome()
        cancelled = False

        async def on_started() -> None:
            try:
                await self.on_status(spec.sid, "in-progress", None, None)
            except Exception:
                log.exception("stream %s: status hook failed", spec.sid)
            self._callback(spec, "stream-started")

        try:
            outcome = await session.run(on_started)
        except asyncio.CancelledError:
            cancelled = True
            session.request_stop("cancelled")
            outcome = Outcome(started=True)
        except Exception as exc:  # a bug: still end the stream properly
            log.exception("stream %s crashed", spec.sid)
            outcome = Outcome.failed(Failure.INTERNAL_ERROR, f"internal error: {exc!r}")
        finally:
            self._sessions.pop(spec.sid, None)
            self._tasks.pop(spec.sid, None)
            index = self._index(spec)
            owned = index.get(spec.source_sid)
            if owned is not None:
                owned.pop(spec.sid, None)
                if not owned:
                    index.pop(spec.source_sid, None)
        await self._finish(spec, outcome)
        if cancelled:
            raise asyncio.CancelledError

    async def _finish(self, spec: StreamSpec, outcome: Outcome) -> None:
        """The one place that reports a stream stopped."""
        if outcome.error_code is not None:
            log.info(
                "stream %s ended with error %s: %s",
                spec.sid,
                outcome.error_code,
                outcome.error_message,
            )
            self._callback(spec, "stream-error", outcome.stream_error or StreamError.GENERAL_ERROR)
        try:
            await self.on_status(spec.sid, "stopped", outcome.error_code, outcome.error_message)
        except Exception:
            log.exception("stream %s: status hook failed", spec.sid)
        self._callback(spec, "stream-stopped")

    def _callback(
        self, spec: StreamSpec, event: str, stream_error: StreamError | None = None
    ) -> None:
        if not spec.status_callback:
            return
        params = {"AccountSid": spec.account_sid}
        if spec.conference_sid is not None:
            params["ConferenceSid"] = spec.conference_sid
        params |= {
            "CallSid": spec.source_sid,
            "StreamSid": spec.sid,
            "StreamName": spec.name or spec.sid,
            "StreamEvent": event,
            "StreamTrack": spec.track.value,
        }
        if stream_error is not None:
            params["StreamError"] = stream_error.value
        params["Timestamp"] = iso_timestamp()
        method = spec.status_callback_method
        self.callbacks.send(
            spec.sid, Callback(spec.status_callback, method.value, params, spec.auth_token)
        )
