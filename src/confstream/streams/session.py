"""One Conference Stream: the WebSocket client connection and the tap feeding it (docs/protocol.md).

This is the only stream module that touches sockets; message building and parsing live in
:mod:`confstream.streams.protocol`.

Life of a session (:meth:`StreamSession.run`):

1. Resolve the URL's host and check the address with :mod:`confstream.netpolicy`; connect to
   that exact IP (the host name is still used for SNI, certificate verification and the
   ``Host`` header), so there is no DNS-rebinding window. Redirects are never followed.
2. TLS is verified with :func:`confstream.netpolicy.client_ssl_context` (system store,
   ``SSL_CERT_FILE``, ``settings.stream_ca_file``). ``Authorization: Bearer <token>`` is sent on
   the upgrade when a token is given. Resolution + TCP + TLS + upgrade must finish within
   ``settings.stream_connect_timeout`` (default 5 s).
3. Send ``connected`` and ``start``, attach to the source as a tap, report "started". The
   source is the conference's media, or one call's tap point for a call stream (the engine's
   call taps, docs/protocol.md "Call streams"): one session type serves both.
4. Stream: each engine tick calls :meth:`on_frame` (encode, then write or enqueue; never
   blocks, never awaits, never raises); a sender task writes what was queued. A keepalive
   task (ours, not websockets': its ping waits for the socket to drain with no deadline, so a
   receiver that stops reading would hang it) pings every ``settings.stream_ping_interval``
   (20 s); when the ping cannot even be written (TCP window full) or no pong comes within
   ``stream_ping_timeout`` (20 s), the stream ends with 31903. A receiver that stops reading or
   answering therefore ends at most ping interval + ping timeout + close timeout after it
   stopped (20 + 20 + 2 s by default).
5. End: on :meth:`request_stop` (API stop, conference end, shutdown) queued audio is flushed for
   at most :data:`FLUSH_TIMEOUT_S`, then ``stop`` is sent and the socket closed (1000). On a
   failure the socket is still open for (no pong, too many messages, an internal error)
   ``stop`` is sent and the socket closed with the failure's close code. Sending ``stop`` plus
   the closing handshake take at most ``settings.stream_close_timeout`` (2 s); past it, or when
   the close frame cannot be written, the TCP connection is aborted. When the receiver closed
   the socket or it broke, there is nothing to send ``stop`` on.

Send queue: at most ``settings.stream_queue_ms / 20`` ticks of audio (default 1000 ms = 50
ticks), oldest dropped first and counted in ``metrics.STREAM_FRAMES_DROPPED``; ``dtmf`` and
``mark`` kept in order and never dropped for audio; beyond
:data:`~confstream.streams.sendqueue.MAX_CONTROL_ITEMS` (1000) pending they are dropped and
counted in ``metrics.STREAM_MARKS_DROPPED`` / ``STREAM_DTMF_DROPPED{direction="to_receiver"}``
(rules in :mod:`confstream.streams.sendqueue`).

Audio is encoded once per tick for every stream of the same source, codec and track
(:mod:`confstream.streams.shared`; a bidirectional stream's outbound track, which has its own
returned audio removed, with its own :func:`~confstream.media.codecs.get_encoder`), and
returned audio decoded with :func:`~confstream.media.codecs.get_decoder`.

Sending: each message is built as UTF-8 bytes
(:meth:`~confstream.streams.protocol.StreamProtocol.media_bytes`), framed as a WebSocket text
frame, and all the frames of one write go to the TLS transport in one ``write`` (one TLS
record and one ``send`` system call per stream per tick, both tracks, instead of one per
message). Two paths:

* From the tick (the common case): when nothing is queued, the sender task is not in the
  middle of a batch and the connection can take a write now (open, no fragmented message
  being sent by websockets, the transport neither paused for writing, i.e. over its
  high-water mark, nor closing: the checks in :meth:`on_frame`), :meth:`on_frame` builds the
  tick's messages, frames them itself (:mod:`confstream.streams.wsframe`: the bytes
  websockets would produce for a final text frame with no extension, the masking keys from a
  pool of ``os.urandom`` bytes instead of one system call per frame) and writes them
  (:meth:`_write_now`): no queue item, no task wake-up, no ``send_context``, no websockets
  ``Frame``. That is everything ``send_context`` and ``Protocol.send_text`` do for an open
  connection whose write needs no ``drain`` (websockets hands its own frames to the transport
  in the same event loop callback that made them, so none wait in its buffer while the tick
  runs); a write that fails marks the connection broken and aborts it, as ``send_context``
  does, so the receiver and keepalive tasks see it closed and the stream ends as after any
  lost connection. The message and byte counters of these writes are added once per tick for
  every stream (:data:`PENDING`, :func:`flush_metrics`, scheduled with ``call_soon`` by the
  tick's first write: at most one tick's counts are pending when a scrape runs, none lost).
* Through the queue otherwise (a receiver that fell behind, a ``dtmf`` or ``mark`` waiting, a
  batch in progress): the sender task takes everything queued since it last ran and writes it
  as one batch inside websockets' ``send_context``, which waits for the transport to drain
  when its buffer is above the high-water mark, framed by websockets' sans-I/O protocol
  (:class:`_BatchingConnection`: the batch's frames in one ``write``), its counters added
  once per batch. Backpressure, drops and the flush on stop happen only here. Because audio
  goes through the queue while anything is queued, messages keep the order in which they were
  produced and are numbered in that order.

Bidirectional (``realtime``): ``media`` from the receiver is decoded to 8 kHz int16 and queued in
a :class:`~confstream.conference.sources.QueueSource` that is this tap's ``own_source`` (so the
engine keeps it out of this stream's outbound track; a call stream's is heard by that caller
only); a ``mark`` is echoed once the audio queued before it has played; ``clear`` drops queued
audio and echoes pending marks; ``dtmf`` is played to the conference's participants (to the
caller of a call stream). Not realtime: such messages are ignored, logged once per
stream, counted in ``metrics.STREAM_INBOUND_IGNORED``. Malformed messages are ignored and
counted the same way in both modes (Twilio's warning 31951).

What a receiver sends is bounded (rules and numbers in :mod:`confstream.streams.inbound`):
messages over ``stream_max_message_bytes`` (64 KiB) are refused by websockets before they are
read (1009), at most :data:`INBOUND_QUEUE` received messages wait in websockets (then TCP pushes
back), a message beyond the rate limit stops the stream (1008), returned audio beyond
``stream_return_audio_max_seconds`` (10 s) is dropped and counted
(``metrics.STREAM_RETURN_AUDIO_DROPPED``), marks beyond ``stream_max_pending_marks`` and DTMF
beyond :data:`~confstream.streams.inbound.MAX_DTMF_BACKLOG_S` too. Messages are handled one at a
time on the receiver task, yielding to the event loop after each, so the 20 ms clock never waits
for more than one message's decoding (at most 64 KiB); the engine tick itself only copies
already decoded samples.

How a failure becomes ``error_code``, ``StreamError`` and a close code is one table in
:mod:`confstream.streams.failures`. A receiver closing with 1000 (normal) or 1001 (going away)
ends the stream without an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode
from websockets.protocol import State

from confstream import gcpolicy, metrics
from confstream.conference.base import AudioSource, Frame, Tap
from confstream.conference.sources import QueueSource
from confstream.media.codecs import PCM_RATE, Decoder, Encoder, get_decoder, get_encoder
from confstream.netpolicy import (
    PolicyError,
    client_ssl_context,
    resolve_checked,
    tls_failure_message,
)
from confstream.settings import Settings
from confstream.streams.failures import (
    STOP_CLOSE_CODE,
    Failure,
    Outcome,
    StreamFailure,
    failure_of_close,
)
from confstream.streams.inbound import DtmfBacklog, MessageRate
from confstream.streams.protocol import (
    ClearIn,
    DtmfIn,
    InboundError,
    MarkIn,
    MediaIn,
    StreamProtocol,
    parse_inbound,
)
from confstream.streams.sendqueue import ControlItem, MediaItem, SendQueue
from confstream.streams.shared import SharedPayloads, acquire, release
from confstream.streams.spec import StreamSpec
from confstream.streams.vocabulary import MediaTrack
from confstream.streams.wsframe import MASKS, apply_mask, frame_head

__all__ = [
    "FLUSH_TIMEOUT_S",
    "INBOUND_QUEUE",
    "ConferenceMediaLike",
    "Outcome",
    "StreamFailure",
    "StreamSession",
    "StreamSpec",
    "validate_stream_url",
]

log = logging.getLogger(__name__)

FRAME_MS = 20
FLUSH_TIMEOUT_S = 2.0  # how long a stopping stream may spend sending queued audio
INBOUND_QUEUE = 16  # received messages websockets buffers before it stops reading the socket


class ConferenceMediaLike(Protocol):
    """What a session needs from its source: a conference's live media (``ConferenceMedia``)
    or one call's tap point (``CallMedia``, docs/protocol.md "Call streams"): attach and
    detach the session as a tap, play DTMF the receiver sends (to the conference, or to that
    caller only)."""

    def add_tap(self, tap: Tap) -> None: ...

    def remove_tap(self, tap: Tap) -> None: ...

    def send_dtmf(self, digit: str, duration_ms: int) -> None: ...


def validate_stream_url(url: str) -> tuple[str, int]:
    """Return (host, port) of an acceptable stream URL or raise :class:`StreamFailure`
    (:attr:`Failure.INVALID_URL`).

    Acceptable: scheme ``wss`` (any case), a host, a valid port, no whitespace anywhere (a
    trailing or embedded space is a common copy/paste mistake SignalWire also refuses).
    """
    if not url or any(ch.isspace() for ch in url):
        raise StreamFailure(Failure.INVALID_URL, f"invalid stream URL {url!r}: contains spaces")
    parts = urlsplit(url)
    if parts.scheme.lower() != "wss":
        raise StreamFailure(
            Failure.INVALID_URL, f"invalid stream URL {url!r}: only wss:// is supported"
        )
    if not parts.hostname:
        raise StreamFailure(Failure.INVALID_URL, f"invalid stream URL {url!r}: no host")
    try:
        port = parts.port or 443
    except ValueError:
        raise StreamFailure(Failure.INVALID_URL, f"invalid stream URL {url!r}: bad port") from None
    return parts.hostname, port


# ------------------------------------------------------------------------- the session


class _NoRedirectConnect(connect):
    """websockets' connect() without redirect following: a redirect could lead to a host the
    policy never checked, so a 3xx is a handshake failure like any non-101 answer."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class _BatchingConnection(ClientConnection):
    """A client connection that hands every frame websockets produced since the last write to
    the transport in one ``write`` (see the module docstring, Sending)."""

    def send_data(self) -> None:
        chunks = self.protocol.data_to_send()
        if len(chunks) > 1 and all(chunks):
            self.transport.write(b"".join(chunks))
            return
        for data in chunks:
            if data:
                self.transport.write(data)
            else:  # end of data: half-close (plain TCP) or close (TLS), as websockets does
                if self.transport.can_write_eof():
                    with contextlib.suppress(Exception):
                        self.transport.write_eof()
                else:
                    self.transport.close()


_MEDIA_MESSAGES = metrics.STREAM_MESSAGES.labels(event="media")
_OPEN = State.OPEN


class _Pending:
    """Media messages and bytes written from the tick, not yet added to the Prometheus
    counters (see :func:`flush_metrics`)."""

    __slots__ = ("media", "scheduled", "size")

    def __init__(self) -> None:
        self.media = 0
        self.size = 0
        self.scheduled = False


#: Process-wide counts waiting for :func:`flush_metrics`.
PENDING = _Pending()


def flush_metrics() -> None:
    """Add the pending counts of the tick's direct writes to
    ``confstream_stream_messages_total{event="media"}`` and ``confstream_stream_bytes_total``.
    Scheduled with ``loop.call_soon`` by the first direct write of a tick, so it runs once per
    tick, right after it (before any scrape can be answered). Cheap when nothing is pending."""
    p = PENDING
    media, size = p.media, p.size
    p.media = p.size = 0
    p.scheduled = False
    if media:
        _MEDIA_MESSAGES.inc(media)
    if size:
        metrics.STREAM_BYTES.inc(size)


class StreamSession:
    """One stream: a :class:`~confstream.conference.base.Tap` plus the WebSocket it feeds."""

    own_source: AudioSource | None

    def __init__(
        self,
        spec: StreamSpec,
        settings: Settings,
        media: ConferenceMediaLike,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.media = media
        self.tracks = spec.track.media_tracks
        self.protocol = StreamProtocol(
            stream_sid=spec.sid,
            account_sid=spec.account_sid,
            conference_sid=spec.conference_sid,
            tracks=self.tracks,
            codec=spec.codec,
            custom_parameters=spec.parameters,
            call_sid=spec.call_sid,
        )
        self._ssl = ssl_context
        #: Per track: the shared encoder (while attached) and this stream's own encoder (for
        #: audio that is not the source's shared frame; made when first needed).
        self._shared: list[tuple[MediaTrack, SharedPayloads | None]] = []
        self._encoders: dict[MediaTrack, Encoder] = {}
        self._queue = SendQueue(max(1, settings.stream_queue_ms // FRAME_MS))
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_reason = "api"
        self._attached = False
        self._t0: int | None = None
        self._ws: ClientConnection | None = None
        #: True while the sender task writes a batch (on_frame then queues, to keep order).
        self._sending = False
        #: Ticks whose audio was written from the tick itself, without the queue.
        self.direct_ticks = 0
        self._warned_inbound = False
        self._rate = MessageRate(settings.stream_inbound_rate, settings.stream_inbound_burst)
        self._dtmf_backlog = DtmfBacklog()
        self._marks_pending = 0
        #: Returned audio dropped (8 kHz samples) and marks dropped so far (inbound limits).
        self.return_audio_dropped = 0
        self.marks_dropped = 0
        self.source: QueueSource | None = None
        self._decoder: Decoder | None = None
        if spec.realtime:
            self._decoder = get_decoder(spec.codec)
            self.source = QueueSource(
                # a call stream's returned audio is heard by that caller only
                target_call_sid=spec.call_sid,
                on_mark=self._mark_played,
                max_samples=max(1, int(settings.stream_return_audio_max_seconds * PCM_RATE)),
            )
            self.own_source = self.source
        else:
            self.own_source = None

    # ------------------------------------------------------------------ tap (engine side)

    def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
        """Encode this tick's frames and write them now, or enqueue them (dropping the oldest
        tick when full): see the module docstring, Sending. Never raises (the engine drops a
        tap that raises)."""
        if not self._attached:
            return
        if self._t0 is None:
            self._t0 = timestamp_ms
        payloads: list[tuple[MediaTrack, bytes]] = []
        try:
            for track, shared in self._shared:
                frame = inbound if track is MediaTrack.INBOUND else outbound
                b64 = None if shared is None else shared.encode(frame, timestamp_ms)
                if b64 is None:
                    b64 = base64.b64encode(self._own_encoder(track).encode(frame))
                payloads.append((track, b64))
        except Exception:  # pragma: no cover - a codec bug; lose the frame, keep the stream
            log.exception("stream %s: encoding a frame failed", self.spec.sid)
            return
        ts = timestamp_ms - self._t0
        ws = self._ws
        if (
            not self._queue
            and not self._sending
            and ws is not None
            # Writable now, without waiting: what websockets' send/send_context check before
            # writing (the connection open, no fragmented message being sent) plus its flow
            # control (the transport not paused for writing, i.e. its buffer under the
            # high-water mark, so drain would not wait) and the transport not closing.
            and ws.protocol.state is _OPEN
            and ws.send_in_progress is None
            and not ws.protocol.expect_continuation_frame
            and not ws.paused
            and not ws.transport.is_closing()
        ):
            self._write_now(ws, payloads, ts)
            return
        dropped = self._queue.push_media(MediaItem(ts, payloads))
        if dropped:
            metrics.STREAM_FRAMES_DROPPED.inc(dropped)
        self._wake.set()

    def _write_now(
        self, ws: ClientConnection, payloads: list[tuple[MediaTrack, bytes]], ts: int
    ) -> None:
        """Write this tick's media messages from the tick (see the module docstring, Sending).
        The caller checked that the connection is writable now. What websockets'
        ``send_context`` does on an error is done here too: the connection is marked broken
        and aborted, so the sender, receiver and keepalive tasks see it closed as they would
        after a failed batch."""
        try:
            media_bytes = self.protocol.media_bytes
            take = MASKS.take
            frames: list[bytes] = []
            size = 0
            for track, b64 in payloads:
                data = media_bytes(track, b64, ts)
                n = len(data)
                size += n
                mask = take()
                frames.append(frame_head(n) + mask + apply_mask(data, mask))
            ws.transport.write(b"".join(frames))
        except Exception as exc:
            ws.set_connection_exc(exc)
            with contextlib.suppress(Exception):
                ws.transport.abort()
            return
        self.direct_ticks += 1
        p = PENDING
        p.media += len(payloads)
        p.size += size
        if not p.scheduled:
            p.scheduled = True
            ws.loop.call_soon(flush_metrics)

    def _own_encoder(self, track: MediaTrack) -> Encoder:
        encoder = self._encoders.get(track)
        if encoder is None:
            encoder = self._encoders[track] = get_encoder(self.spec.codec)
        return encoder

    def _attach(self) -> None:
        """Take the shared encoders and start receiving frames (a realtime stream's outbound
        track has its own returned audio removed: never shared)."""
        source = self.spec.source_sid
        self._shared = [
            (t, None if t is MediaTrack.OUTBOUND and self.own_source is not None else
             acquire(source, self.spec.codec, t))
            for t in self.tracks
        ]  # fmt: skip
        self._attached = True
        self.media.add_tap(self)

    def on_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """Queue a ``dtmf`` message (only for streams carrying the inbound track)."""
        if self._attached and MediaTrack.INBOUND in self.tracks:
            if not self._push_control(ControlItem("dtmf", (call_sid, digit), int(duration_ms))):
                metrics.STREAM_DTMF_DROPPED.labels(direction="to_receiver").inc()

    def _push_control(self, item: ControlItem) -> bool:
        if not self._queue.push_control(item):
            return False
        self._wake.set()
        return True

    def _mark_played(self, name: str) -> None:
        """QueueSource callback: the audio queued before mark ``name`` has played (or was
        cleared). Called from the engine tick or from :meth:`_handle_inbound`."""
        self._marks_pending = max(0, self._marks_pending - 1)
        if not self._push_control(ControlItem("mark", (name,))):
            self._drop_mark()

    def _drop_mark(self) -> None:
        self.marks_dropped += 1
        metrics.STREAM_MARKS_DROPPED.inc()

    @property
    def queued_ticks(self) -> int:
        return self._queue.media_count

    @property
    def frames_dropped(self) -> int:
        """Audio frames dropped from the send queue so far."""
        return self._queue.frames_dropped

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "api") -> None:
        """Ask the session to end (sends ``stop`` if the socket is open). Never blocks."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
            self._wake.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ the task

    async def run(self, on_started: Callable[[], Awaitable[None]]) -> Outcome:
        """Connect, stream until stopped or failed; returns how it ended. Never raises except
        ``CancelledError``. ``on_started`` is awaited once ``start`` has been sent."""
        try:
            host, port = validate_stream_url(self.spec.url)
        except StreamFailure as f:
            return f.outcome()
        connect_task = asyncio.ensure_future(self._connect(host, port))
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connect_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: leave nothing behind
            connect_task.cancel()
            raise
        finally:
            stop_wait.cancel()
        if not connect_task.done():
            connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connect_task
            return Outcome()  # stopped before the connection was up: no error
        try:
            ws = connect_task.result()
        except StreamFailure as f:
            metrics.STREAM_CONNECT_FAILURES.labels(reason=f.stream_error.value).inc()
            return f.outcome()
        self._ws = ws
        try:
            return await self._stream(ws, on_started)
        finally:
            self._detach()
            if ws.state is not State.CLOSED:
                ws.transport.abort()
            # the closed connection's cycle holds native buffers until a full collection
            gcpolicy.note_native_garbage(gcpolicy.TLS_CONNECTION_BYTES)

    async def _connect(self, host: str, port: int) -> ClientConnection:
        timeout = self.settings.stream_connect_timeout
        headers: list[tuple[str, str]] = []
        if self.spec.bearer_token:
            headers.append(("Authorization", f"Bearer {self.spec.bearer_token}"))
        ctx = self._ssl or client_ssl_context(self.settings.stream_ca_file)
        try:
            async with asyncio.timeout(timeout):
                ip = await resolve_checked(host, port, self.settings.allowed_networks)
                return await _NoRedirectConnect(
                    self.spec.url,
                    create_connection=_BatchingConnection,
                    host=ip,
                    port=port,
                    server_hostname=host,
                    ssl=ctx,
                    proxy=None,
                    additional_headers=headers,
                    user_agent_header="confstream/0.1",
                    compression=None,
                    open_timeout=None,
                    ping_interval=None,  # our own keepalive: see _keepalive
                    ping_timeout=None,
                    close_timeout=self.settings.stream_close_timeout,
                    max_size=self.settings.stream_max_message_bytes,
                    max_queue=INBOUND_QUEUE,
                )
        except PolicyError as exc:
            raise StreamFailure(Failure.INVALID_URL, f"stream URL refused: {exc}") from exc
        except TimeoutError as exc:
            raise StreamFailure(
                Failure.CONNECT_TIMEOUT,
                f"connection to {host}:{port} timed out after {timeout:g} s",
            ) from exc
        except socket.gaierror as exc:
            raise StreamFailure(
                Failure.UNRESOLVED_HOST, f"cannot resolve host {host!r}: {exc.strerror}"
            ) from exc
        except ssl.SSLError as exc:
            raise StreamFailure(
                Failure.TLS_FAILED,
                tls_failure_message(exc, host, port),
            ) from exc
        except InvalidStatus as exc:
            raise StreamFailure(
                Failure.HANDSHAKE_REJECTED,
                f"WebSocket handshake failed: server answered HTTP "
                f"{exc.response.status_code} instead of 101",
            ) from exc
        except InvalidURI as exc:
            raise StreamFailure(Failure.INVALID_URL, f"invalid stream URL: {exc}") from exc
        except InvalidHandshake as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                raise StreamFailure(
                    Failure.TLS_FAILED,
                    tls_failure_message(exc, host, port),
                ) from exc
            raise StreamFailure(
                Failure.HANDSHAKE_FAILED, f"WebSocket handshake failed: {exc}"
            ) from exc
        except OSError as exc:
            raise StreamFailure(
                Failure.CONNECTION_REFUSED,
                f"connection to {host}:{port} refused: {exc.strerror or exc}",
            ) from exc
        except Exception as exc:  # e.g. a host name that cannot be IDNA-encoded
            raise StreamFailure(Failure.HANDSHAKE_FAILED, f"cannot connect: {exc}") from exc

    async def _stream(
        self, ws: ClientConnection, on_started: Callable[[], Awaitable[None]]
    ) -> Outcome:
        try:
            await self._send(ws, self.protocol.connected(), "connected")
            await self._send(ws, self.protocol.start(), "start")
        except ConnectionClosed as exc:
            return self._closed_outcome(ws, exc, started=False)
        self._attach()
        metrics.STREAMS_ACTIVE.inc()
        try:
            try:
                await on_started()
            except Exception:
                log.exception("stream %s: on_started hook failed", self.spec.sid)
            sender: asyncio.Future[None] = asyncio.ensure_future(self._sender(ws))
            receiver: asyncio.Future[None] = asyncio.ensure_future(self._receiver(ws))
            keepalive: asyncio.Future[None] = asyncio.ensure_future(self._keepalive(ws))
            stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            tasks = (sender, receiver, keepalive)
            try:
                await asyncio.wait({*tasks, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    if t.done() and not t.cancelled():
                        err = t.exception()
                        if isinstance(err, StreamFailure):
                            # The receiver broke a limit or stopped responding.
                            return await self._fail(ws, sender, err)
                        if err is not None and not isinstance(err, ConnectionClosed):
                            # A bug on our side: end the stream properly anyway.
                            log.error("stream %s: task failed: %r", self.spec.sid, err)
                            return await self._fail(
                                ws,
                                sender,
                                StreamFailure(Failure.INTERNAL_ERROR, f"internal error: {err!r}"),
                            )
                if ws.state is State.OPEN:
                    # Stop requested (or, defensively, a task ended while the socket is open).
                    return await self._graceful_stop(ws, sender)
                # The receiver closed the connection or it broke: no ``stop`` can be sent.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), self.settings.stream_close_timeout)
                return self._closed_outcome(ws, None, started=True)
            finally:
                for t in (*tasks, stop_wait):
                    if not t.done():
                        t.cancel()
                for t in (*tasks, stop_wait):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        finally:
            metrics.STREAMS_ACTIVE.dec()

    async def _fail(
        self, ws: ClientConnection, sender: asyncio.Future[None], failure: StreamFailure
    ) -> Outcome:
        """End the stream on ``failure``: detach, stop sending audio, send ``stop`` and close
        with the failure's close code (bounded, then aborted)."""
        self._detach()
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        reason = _STOPPED_REASONS.get(failure.failure)
        if reason is not None:
            metrics.STREAM_RECEIVERS_STOPPED.labels(reason=reason).inc()
        code = failure.failure.close_code or CloseCode.INTERNAL_ERROR
        if ws.state is State.OPEN:
            await self._stop_and_close(ws, code, failure.failure.description)
        return failure.outcome(started=True)

    async def _graceful_stop(self, ws: ClientConnection, sender: asyncio.Future[None]) -> Outcome:
        """Detach, flush queued audio (bounded), send ``stop``, close with 1000."""
        self._detach()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(sender), FLUSH_TIMEOUT_S)
        except (TimeoutError, ConnectionClosed):
            pass
        except Exception:
            log.exception("stream %s: flushing failed", self.spec.sid)
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        if ws.state is State.OPEN:
            await self._stop_and_close(ws, STOP_CLOSE_CODE, self._stop_reason)
            return Outcome(started=True)
        return self._closed_outcome(ws, None, started=True)

    async def _stop_and_close(self, ws: ClientConnection, code: CloseCode, reason: str) -> None:
        """Send ``stop`` and close the socket, within ``settings.stream_close_timeout``; past
        it (e.g. the receiver stopped reading, so the close frame cannot even be written) the
        TCP connection is aborted."""
        try:
            async with asyncio.timeout(self.settings.stream_close_timeout):
                await self._send(ws, self.protocol.stop(), "stop")
                await ws.close(code, reason.encode("utf-8")[:120].decode("utf-8", "ignore"))
        except (TimeoutError, ConnectionClosed, OSError):
            pass
        if ws.state is not State.CLOSED:
            ws.transport.abort()

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            with contextlib.suppress(Exception):
                self.media.remove_tap(self)
            for _, shared in self._shared:
                if shared is not None:
                    release(shared)
            self._shared = []
            if self.source is not None:
                self.source.close()

    def _closed_outcome(
        self, ws: ClientConnection, exc: ConnectionClosed | None, *, started: bool
    ) -> Outcome:
        rcvd = ws.protocol.close_rcvd
        sent = ws.protocol.close_sent
        failure = failure_of_close(rcvd, sent)
        if failure is None:
            return Outcome(started=started)
        if failure is Failure.RECEIVER_CLOSED and rcvd is not None:
            message = f"receiver closed the WebSocket with code {rcvd.code}" + (
                f" ({rcvd.reason})" if rcvd.reason else ""
            )
        elif failure is Failure.PING_TIMEOUT:
            message = f"no pong from the receiver within {self.settings.stream_ping_timeout:g} s"
        elif failure is Failure.PROTOCOL_ERROR and sent is not None:
            message = f"WebSocket protocol error: {sent.reason}"
        elif failure is Failure.MESSAGE_TOO_BIG:
            metrics.STREAM_RECEIVERS_STOPPED.labels(reason="message_too_big").inc()
            message = f"receiver sent a message over {self.settings.stream_max_message_bytes} bytes"
        else:
            message = "connection to the receiver lost without a close frame"
        return Outcome.failed(failure, message, started=started)

    async def _send(self, ws: ClientConnection, text: str, event: str) -> None:
        await ws.send(text)
        metrics.STREAM_MESSAGES.labels(event=event).inc()
        metrics.STREAM_BYTES.inc(len(text))

    async def _sender(self, ws: ClientConnection) -> None:
        """Drain the queue into the socket, everything queued in one batch (see the module
        docstring, Sending). Returns when stopping and the queue is empty."""
        proto = self.protocol
        q = self._queue
        while True:
            if q:
                self._sending = True
                try:
                    while q:
                        await self._send_batch(ws, proto, q)
                finally:
                    self._sending = False
            if not self._attached and self._stop.is_set():
                return
            self._wake.clear()
            await self._wake.wait()

    async def _send_batch(self, ws: ClientConnection, proto: StreamProtocol, q: SendQueue) -> None:
        """Build every queued message and write them with one flush. Messages are numbered as
        they are built, so a batch that fails leaves no gap for later ones to notice."""
        media = size = 0
        async with ws.send_context():
            send_text = ws.protocol.send_text
            while (item := q.pop()) is not None:
                if isinstance(item, MediaItem):
                    ts = item.timestamp_ms
                    for track, b64 in item.payloads:
                        data = proto.media_bytes(track, b64, ts)
                        send_text(data)
                        size += len(data)
                        media += 1
                    continue
                if item.kind == "dtmf":
                    call_sid, digit = item.args
                    text = proto.dtmf(call_sid, digit, item.duration_ms)
                else:
                    text = proto.mark(item.args[0])
                data = text.encode()
                send_text(data)
                metrics.STREAM_MESSAGES.labels(event=item.kind).inc()
                size += len(data)
        if media:
            _MEDIA_MESSAGES.inc(media)
        metrics.STREAM_BYTES.inc(size)

    async def _receiver(self, ws: ClientConnection) -> None:
        """Handle the receiver's messages one at a time, yielding to the event loop after each
        (websockets hands out buffered messages without suspending). Raises
        :class:`StreamFailure` (:attr:`Failure.RECEIVER_FLOOD`) past the rate limit."""
        rate = self._rate
        async for message in ws:
            if not rate.take(time.monotonic()):
                raise StreamFailure(
                    Failure.RECEIVER_FLOOD,
                    f"receiver sent messages faster than {rate.rate:g}/s beyond a burst of "
                    f"{rate.burst} (error 31924)",
                )
            self._handle_inbound(message)
            await asyncio.sleep(0)

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ``stream_ping_interval``; raise :class:`StreamFailure`
        (:attr:`Failure.PING_TIMEOUT`) when writing the ping and getting its pong take longer
        than ``stream_ping_timeout``. ``ConnectionClosed`` when the connection ends."""
        interval = self.settings.stream_ping_interval
        timeout = self.settings.stream_ping_timeout
        while True:
            await asyncio.sleep(interval)
            written = False
            try:
                async with asyncio.timeout(timeout):
                    # ping() returns once the frame is handed to the kernel, which waits while
                    # the receiver's TCP window is full; hence one deadline for both steps.
                    pong = await ws.ping()
                    written = True
                    await pong
            except TimeoutError:
                why = "no pong" if written else "receiver stopped reading (ping not sent)"
                raise StreamFailure(
                    Failure.PING_TIMEOUT, f"{why}: no pong from the receiver within {timeout:g} s"
                ) from None

    def _ignore(self, why: str) -> None:
        metrics.STREAM_INBOUND_IGNORED.inc()
        if not self._warned_inbound:
            self._warned_inbound = True
            log.warning(
                "stream %s: receiver message ignored (31951, logged once per stream): %s",
                self.spec.sid,
                why,
            )

    def _handle_inbound(self, message: str | bytes) -> None:
        try:
            event = parse_inbound(message, self.spec.sid)
        except InboundError as exc:
            self._ignore(str(exc))
            return
        if self.source is None or self._decoder is None:
            self._ignore(f"{type(event).__name__} on a stream that is not bidirectional")
            return
        if not self._attached:
            return
        if isinstance(event, MediaIn):
            self._return_audio(self.source, self._decoder, event.payload)
        elif isinstance(event, MarkIn):
            if self._marks_pending >= self.settings.stream_max_pending_marks:
                self._drop_mark()
                return
            self._marks_pending += 1
            self.source.mark(event.name)  # may fire (and be echoed) at once
        elif isinstance(event, ClearIn):
            self.source.clear()
        elif isinstance(event, DtmfIn):
            if self._dtmf_backlog.offer(time.monotonic(), event.duration_ms):
                self.media.send_dtmf(event.digit, event.duration_ms)
            else:
                metrics.STREAM_DTMF_DROPPED.labels(direction="to_conference").inc()

    def _return_audio(self, source: QueueSource, decoder: Decoder, payload: bytes) -> None:
        """Decode returned audio into the bounded buffer; what does not fit is counted (and not
        even decoded when nothing fits)."""
        if source.max_samples is not None and source.queued_samples >= source.max_samples:
            info = self.spec.codec.info
            dropped = len(payload) // info.bytes_per_sample * PCM_RATE // info.sample_rate
        else:
            samples = decoder.decode(payload)
            dropped = source.push(samples) if len(samples) else 0
        if dropped:
            self.return_audio_dropped += dropped
            metrics.STREAM_RETURN_AUDIO_DROPPED.inc(dropped / PCM_RATE)


#: Failures that count as a receiver stopped for breaking a limit or not responding
#: (``metrics.STREAM_RECEIVERS_STOPPED``); MESSAGE_TOO_BIG is counted in ``_closed_outcome``.
_STOPPED_REASONS = {
    Failure.RECEIVER_FLOOD: "message_rate",
    Failure.PING_TIMEOUT: "unresponsive",
}
