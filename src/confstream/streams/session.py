"""One Conference Stream: the WebSocket client connection and the tap feeding it (CONTRACT §2).

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
3. Send ``connected`` and ``start``, attach to the conference as a tap, report "started".
4. Stream: each engine tick calls :meth:`on_frame` (encode + enqueue, never blocks, never
   awaits); a sender task builds messages and writes them. WebSocket pings every
   ``settings.stream_ping_interval`` (20 s); no pong within ``stream_ping_timeout`` (20 s) ends
   the stream with an error.
5. End: on :meth:`request_stop` (API stop, conference end, shutdown) queued audio is flushed for
   at most :data:`FLUSH_TIMEOUT_S`, then ``stop`` is sent and the socket closed (1000). When the
   receiver closed the socket or it broke, there is nothing to send ``stop`` on.

Send queue: at most ``settings.stream_queue_ms / 20`` ticks of audio (default 1000 ms = 50
ticks; each tick holds one frame per track). On overflow the oldest tick is dropped and its
frames counted in ``metrics.STREAM_FRAMES_DROPPED``; the timestamps of later frames show the gap.
``dtmf`` and ``mark`` messages are queued in order with the audio and never dropped (at most
:data:`MAX_CONTROL_ITEMS` pending, beyond which they are dropped and counted too).

Bidirectional (``realtime``): ``media`` from the receiver is decoded to 8 kHz int16 and queued in
a :class:`~confstream.conference.sources.QueueSource` that is this tap's ``own_source`` (so the
engine keeps it out of this stream's outbound track); a ``mark`` is echoed once the audio queued
before it has played; ``clear`` drops queued audio and echoes pending marks; ``dtmf`` is played
to the conference's participants. Not realtime: such messages are ignored, logged once per
stream, counted in ``metrics.STREAM_INBOUND_IGNORED``. Malformed messages are ignored and
counted the same way in both modes (Twilio's warning 31951).

Outcome codes (error_code, StreamError) when the stream ends on a failure:

=========================================  ======  =======================================
Failure                                    code    StreamError
=========================================  ======  =======================================
URL not ``wss://``/malformed, address      31922   invalid_url
refused by the policy
Host name does not resolve                 31902   connection_refused
TCP connection refused / unreachable       31902   connection_refused
Connect timeout (any phase)                31901   connection_refused_timeout_or_ssl_error
TLS failure (certificate, protocol)        31910   connection_refused_timeout_or_ssl_error
Non-101 answer to the upgrade              31920   connection_refused
Other handshake failure                    31920   general_error
Receiver closed with a code other than     31921   general_error
1000/1001
Connection lost without a close frame      31903   general_error
No pong in time                            31903   general_error
WebSocket protocol violation by receiver   31924   general_error
Internal error                             31903   general_error
=========================================  ======  =======================================

A receiver closing with 1000 (normal) or 1001 (going away) ends the stream without an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from confstream import metrics
from confstream.conference.base import AudioSource, Frame, Tap
from confstream.conference.sources import QueueSource
from confstream.media import g711
from confstream.media.l16 import l16_decode, l16_encode
from confstream.media.resample import Resampler
from confstream.netpolicy import PolicyError, client_ssl_context, resolve_checked
from confstream.settings import Settings
from confstream.streams.protocol import (
    CODECS,
    ClearIn,
    DtmfIn,
    InboundError,
    MarkIn,
    MediaIn,
    StreamProtocol,
    Track,
    parse_inbound,
    tracks_for,
)

log = logging.getLogger(__name__)

FRAME_MS = 20
FLUSH_TIMEOUT_S = 2.0  # how long a stopping stream may spend sending queued audio
CLOSE_TIMEOUT_S = 2.0  # closing handshake bound
MAX_CONTROL_ITEMS = 1000
MAX_INBOUND_MESSAGE = 1 << 20  # 1 MiB per receiver message (websockets' default)

StreamErrorValue = Literal[
    "invalid_url",
    "connection_refused",
    "connection_refused_timeout_or_ssl_error",
    "general_error",
]


@dataclass(frozen=True)
class StreamSpec:
    """Everything needed to run one stream (built by the REST layer)."""

    sid: str
    account_sid: str
    auth_token: str
    conference_sid: str
    url: str  # as given by the user after relative resolution (may be ws://, http:// etc.)
    name: str | None
    track: Literal["inbound_track", "outbound_track", "both_tracks"]
    codec: Literal["PCMU", "PCMA", "L16", "L16@16000h", "L16@24000h"]
    realtime: bool
    parameters: dict[str, str]  # insertion-ordered custom parameters
    bearer_token: str | None
    status_callback: str | None
    status_callback_method: Literal["GET", "POST"]


@dataclass(frozen=True)
class Outcome:
    """How a session ended: ``error_code`` None means no error."""

    error_code: int | None = None
    error_message: str | None = None
    stream_error: StreamErrorValue | None = None
    started: bool = False  # connected and ``start`` sent


class StreamFailure(Exception):
    def __init__(self, code: int, stream_error: StreamErrorValue, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.stream_error = stream_error
        self.message = message


class ConferenceMediaLike(Protocol):
    """What a session needs from the conference's live media (``ConferenceMedia``)."""

    def add_tap(self, tap: Tap) -> None: ...

    def remove_tap(self, tap: Tap) -> None: ...

    def send_dtmf(self, digit: str, duration_ms: int) -> None: ...


def validate_stream_url(url: str) -> tuple[str, int]:
    """Return (host, port) of an acceptable stream URL or raise :class:`StreamFailure` 31922.

    Acceptable: scheme ``wss`` (any case), a host, a valid port, no whitespace anywhere (a
    trailing or embedded space is a common copy/paste mistake SignalWire also refuses).
    """
    if not url or any(ch.isspace() for ch in url):
        raise StreamFailure(31922, "invalid_url", f"invalid stream URL {url!r}: contains spaces")
    parts = urlsplit(url)
    if parts.scheme.lower() != "wss":
        raise StreamFailure(
            31922, "invalid_url", f"invalid stream URL {url!r}: only wss:// is supported"
        )
    if not parts.hostname:
        raise StreamFailure(31922, "invalid_url", f"invalid stream URL {url!r}: no host")
    try:
        port = parts.port or 443
    except ValueError:
        raise StreamFailure(31922, "invalid_url", f"invalid stream URL {url!r}: bad port") from None
    return parts.hostname, port


# ------------------------------------------------------------------------- audio codecs


class _Encoder:
    """8 kHz int16 frames -> one track's payload bytes in the stream codec (stateful for the
    resampling codecs, so one encoder per track)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        info = CODECS[codec]
        self._resampler = Resampler(8000, info.sample_rate) if info.sample_rate != 8000 else None

    def encode(self, frame: Frame) -> bytes:
        if self.codec == "PCMU":
            return g711.ulaw_encode(frame).tobytes()
        if self.codec == "PCMA":
            return g711.alaw_encode(frame).tobytes()
        if self._resampler is not None:
            frame = self._resampler.process(frame)
        return l16_encode(frame)


class _Decoder:
    """Receiver payloads in the stream codec -> 8 kHz int16 samples (any length)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        info = CODECS[codec]
        self._resampler = Resampler(info.sample_rate, 8000) if info.sample_rate != 8000 else None
        self._odd = b""  # a dangling byte of L16 split across messages

    def decode(self, payload: bytes) -> Frame:
        if self.codec == "PCMU":
            return g711.ulaw_decode(payload)
        if self.codec == "PCMA":
            return g711.alaw_decode(payload)
        data = self._odd + payload
        if len(data) % 2:
            self._odd, data = data[-1:], data[:-1]
        else:
            self._odd = b""
        samples = l16_decode(data)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return samples


# ------------------------------------------------------------------------- the session


@dataclass
class _MediaItem:
    timestamp_ms: int
    payloads: list[tuple[Track, str]]  # (track, base64 payload)


@dataclass
class _ControlItem:
    kind: Literal["dtmf", "mark"]
    args: tuple[str, ...]
    duration_ms: int = 0


class _NoRedirectConnect(connect):
    """websockets' connect() without redirect following: a redirect could lead to a host the
    policy never checked, so a 3xx is a handshake failure like any non-101 answer."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


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
        self.tracks = tracks_for(spec.track)
        self.protocol = StreamProtocol(
            stream_sid=spec.sid,
            account_sid=spec.account_sid,
            conference_sid=spec.conference_sid,
            tracks=self.tracks,
            codec=spec.codec,
            custom_parameters=spec.parameters,
        )
        self._ssl = ssl_context
        self._encoders = {t: _Encoder(spec.codec) for t in self.tracks}
        self._queue: deque[_MediaItem | _ControlItem] = deque()
        self._media_count = 0
        self._control_count = 0
        self._capacity = max(1, settings.stream_queue_ms // FRAME_MS)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_reason = "api"
        self._attached = False
        self._t0: int | None = None
        self._ws: ClientConnection | None = None
        self._warned_inbound = False
        self.frames_dropped = 0
        self.source: QueueSource | None = None
        self._decoder: _Decoder | None = None
        if spec.realtime:
            self._decoder = _Decoder(spec.codec)
            self.source = QueueSource(on_mark=self._mark_played)
            self.own_source = self.source
        else:
            self.own_source = None

    # ------------------------------------------------------------------ tap (engine side)

    def on_frame(self, inbound: Frame, outbound: Frame, timestamp_ms: int) -> None:
        """Encode this tick's frames and enqueue them; drops the oldest tick when full.
        Never raises (the engine drops a tap that raises)."""
        if not self._attached:
            return
        if self._t0 is None:
            self._t0 = timestamp_ms
        payloads: list[tuple[Track, str]] = []
        try:
            for track in self.tracks:
                frame = inbound if track == "inbound" else outbound
                raw = self._encoders[track].encode(frame)
                payloads.append((track, base64.b64encode(raw).decode("ascii")))
        except Exception:  # pragma: no cover - a codec bug; lose the frame, keep the stream
            log.exception("stream %s: encoding a frame failed", self.spec.sid)
            return
        self._queue.append(_MediaItem(timestamp_ms - self._t0, payloads))
        self._media_count += 1
        if self._media_count > self._capacity:
            self._drop_oldest_media()
        self._wake.set()

    def on_dtmf(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """Queue a ``dtmf`` message (only for streams carrying the inbound track)."""
        if self._attached and "inbound" in self.tracks:
            self._push_control(_ControlItem("dtmf", (call_sid, digit), int(duration_ms)))

    def _drop_oldest_media(self) -> None:
        for i, item in enumerate(self._queue):
            if isinstance(item, _MediaItem):
                del self._queue[i]
                self._media_count -= 1
                n = len(item.payloads)
                self.frames_dropped += n
                metrics.STREAM_FRAMES_DROPPED.inc(n)
                return

    def _push_control(self, item: _ControlItem) -> None:
        if self._control_count >= MAX_CONTROL_ITEMS:
            metrics.STREAM_FRAMES_DROPPED.inc()
            return
        self._queue.append(item)
        self._control_count += 1
        self._wake.set()

    def _mark_played(self, name: str) -> None:
        """QueueSource callback: the audio queued before mark ``name`` has played (or was
        cleared). Called from the engine tick or from :meth:`_handle_inbound`."""
        self._push_control(_ControlItem("mark", (name,)))

    @property
    def queued_ticks(self) -> int:
        return self._media_count

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
            return Outcome(f.code, f.message, f.stream_error)
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
            metrics.STREAM_CONNECT_FAILURES.labels(reason=f.stream_error).inc()
            return Outcome(f.code, f.message, f.stream_error)
        self._ws = ws
        try:
            return await self._stream(ws, on_started)
        finally:
            self._detach()
            if ws.state is not State.CLOSED:
                ws.transport.abort()

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
                    host=ip,
                    port=port,
                    server_hostname=host,
                    ssl=ctx,
                    proxy=None,
                    additional_headers=headers,
                    user_agent_header="confstream/0.1",
                    compression=None,
                    open_timeout=None,
                    ping_interval=self.settings.stream_ping_interval,
                    ping_timeout=self.settings.stream_ping_timeout,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=MAX_INBOUND_MESSAGE,
                )
        except PolicyError as exc:
            raise StreamFailure(31922, "invalid_url", f"stream URL refused: {exc}") from exc
        except TimeoutError as exc:
            raise StreamFailure(
                31901,
                "connection_refused_timeout_or_ssl_error",
                f"connection to {host}:{port} timed out after {timeout:g} s",
            ) from exc
        except socket.gaierror as exc:
            raise StreamFailure(
                31902, "connection_refused", f"cannot resolve host {host!r}: {exc.strerror}"
            ) from exc
        except ssl.SSLError as exc:
            raise StreamFailure(
                31910,
                "connection_refused_timeout_or_ssl_error",
                f"TLS handshake with {host}:{port} failed: {exc.reason or exc}",
            ) from exc
        except InvalidStatus as exc:
            raise StreamFailure(
                31920,
                "connection_refused",
                f"WebSocket handshake failed: server answered HTTP "
                f"{exc.response.status_code} instead of 101",
            ) from exc
        except InvalidURI as exc:
            raise StreamFailure(31922, "invalid_url", f"invalid stream URL: {exc}") from exc
        except InvalidHandshake as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                raise StreamFailure(
                    31910,
                    "connection_refused_timeout_or_ssl_error",
                    f"TLS handshake with {host}:{port} failed: {exc.__cause__}",
                ) from exc
            raise StreamFailure(
                31920, "general_error", f"WebSocket handshake failed: {exc}"
            ) from exc
        except OSError as exc:
            raise StreamFailure(
                31902,
                "connection_refused",
                f"connection to {host}:{port} refused: {exc.strerror or exc}",
            ) from exc
        except Exception as exc:  # e.g. a host name that cannot be IDNA-encoded
            raise StreamFailure(31920, "general_error", f"cannot connect: {exc}") from exc

    async def _stream(
        self, ws: ClientConnection, on_started: Callable[[], Awaitable[None]]
    ) -> Outcome:
        try:
            await self._send(ws, self.protocol.connected(), "connected")
            await self._send(ws, self.protocol.start(), "start")
        except ConnectionClosed as exc:
            return self._closed_outcome(ws, exc, started=False)
        self._attached = True
        self.media.add_tap(self)
        metrics.STREAMS_ACTIVE.inc()
        try:
            try:
                await on_started()
            except Exception:
                log.exception("stream %s: on_started hook failed", self.spec.sid)
            sender: asyncio.Future[None] = asyncio.ensure_future(self._sender(ws))
            receiver: asyncio.Future[None] = asyncio.ensure_future(self._receiver(ws))
            stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait(
                    {sender, receiver, stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                for t in (sender, receiver):
                    if t.done() and not t.cancelled():
                        err = t.exception()
                        if err is not None and not isinstance(err, ConnectionClosed):
                            # A bug on our side: end the stream properly anyway.
                            log.error("stream %s: task failed: %r", self.spec.sid, err)
                            self._detach()
                            await self._stop_and_close(ws, 1011, "internal error")
                            return Outcome(31903, f"internal error: {err!r}", "general_error", True)
                if ws.state is State.OPEN:
                    # Stop requested (or, defensively, a task ended while the socket is open).
                    return await self._graceful_stop(ws, sender)
                # The receiver closed the connection or it broke: no ``stop`` can be sent.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), CLOSE_TIMEOUT_S)
                return self._closed_outcome(ws, None, started=True)
            finally:
                for t in (sender, receiver, stop_wait):
                    if not t.done():
                        t.cancel()
                for t in (sender, receiver, stop_wait):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        finally:
            metrics.STREAMS_ACTIVE.dec()

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
            await self._stop_and_close(ws, 1000, self._stop_reason)
            return Outcome(started=True)
        return self._closed_outcome(ws, None, started=True)

    async def _stop_and_close(self, ws: ClientConnection, code: int, reason: str) -> None:
        """Send ``stop`` and close the socket, within :data:`FLUSH_TIMEOUT_S`."""
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                await self._send(ws, self.protocol.stop(), "stop")
                await ws.close(code, reason.encode("utf-8")[:120].decode("utf-8", "ignore"))
        except (TimeoutError, ConnectionClosed, OSError):
            pass

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            with contextlib.suppress(Exception):
                self.media.remove_tap(self)
            if self.source is not None:
                self.source.close()

    def _closed_outcome(
        self, ws: ClientConnection, exc: ConnectionClosed | None, *, started: bool
    ) -> Outcome:
        rcvd = ws.protocol.close_rcvd
        sent = ws.protocol.close_sent
        if rcvd is not None:
            if rcvd.code in (1000, 1001):
                return Outcome(started=started)
            return Outcome(
                31921,
                f"receiver closed the WebSocket with code {rcvd.code}"
                + (f" ({rcvd.reason})" if rcvd.reason else ""),
                "general_error",
                started,
            )
        if sent is not None and sent.code == 1011 and "ping" in sent.reason:
            return Outcome(
                31903,
                f"no pong from the receiver within {self.settings.stream_ping_timeout:g} s",
                "general_error",
                started,
            )
        if sent is not None and sent.code == 1002:
            return Outcome(
                31924, f"WebSocket protocol error: {sent.reason}", "general_error", started
            )
        if sent is not None and sent.code == 1009:
            return Outcome(31924, "receiver sent a message over 1 MiB", "general_error", started)
        return Outcome(
            31903, "connection to the receiver lost without a close frame", "general_error", started
        )

    async def _send(self, ws: ClientConnection, text: str, event: str) -> None:
        await ws.send(text)
        metrics.STREAM_MESSAGES.labels(event=event).inc()
        metrics.STREAM_BYTES.inc(len(text))

    async def _sender(self, ws: ClientConnection) -> None:
        """Drain the queue into the socket. Returns when stopping and the queue is empty."""
        proto = self.protocol
        q = self._queue
        while True:
            while q:
                item = q.popleft()
                if isinstance(item, _MediaItem):
                    self._media_count -= 1
                    for track, b64 in item.payloads:
                        await self._send(
                            ws, proto.media_b64(track, b64, item.timestamp_ms), "media"
                        )
                else:
                    self._control_count -= 1
                    if item.kind == "dtmf":
                        call_sid, digit = item.args
                        await self._send(ws, proto.dtmf(call_sid, digit, item.duration_ms), "dtmf")
                    else:
                        await self._send(ws, proto.mark(item.args[0]), "mark")
            if not self._attached and self._stop.is_set():
                return
            self._wake.clear()
            await self._wake.wait()

    async def _receiver(self, ws: ClientConnection) -> None:
        async for message in ws:
            self._handle_inbound(message)

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
            samples = self._decoder.decode(event.payload)
            if len(samples):
                self.source.push(samples)
        elif isinstance(event, MarkIn):
            self.source.mark(event.name)
        elif isinstance(event, ClearIn):
            self.source.clear()
        elif isinstance(event, DtmfIn):
            self.media.send_dtmf(event.digit, event.duration_ms)
