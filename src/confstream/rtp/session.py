"""The asyncio adapter of one RTP session: a UDP socket, an inactivity timer, and an
:class:`~confstream.rtp.endpoint.RtpEndpoint` that does all the protocol work.

This is the only RTP module that touches sockets. Sending is paced by the caller: the
conference's 20 ms mixer clock calls :meth:`RtpSession.write_frame` (one packet, sent at once
with a non-blocking ``sendto``) and :meth:`RtpSession.read_frame`; the session has no audio
timer of its own. The inactivity check is one ``loop.call_later`` that re-arms itself for the
remaining time, so it costs nothing per packet.

The packet counters are batched (see :mod:`confstream.rtp.endpoint`): the first packet handled
in an event-loop iteration schedules one :func:`~confstream.rtp.endpoint.flush_metrics` with
``loop.call_soon``, so ``/metrics`` is at most one loop iteration behind.

The conference engine's fast path (:meth:`RtpSession.read_ulaw`, :meth:`RtpSession.write_ulaw`)
moves µ-law codes instead of samples so that it can decode and encode every participant in one
NumPy lookup per tick.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from confstream import metrics
from confstream.conference.base import Frame
from confstream.rtp.dtmf import DtmfEvent
from confstream.rtp.endpoint import PENDING, RtpEndpoint, RtpStats, SourceAddress, flush_metrics
from confstream.rtp.ports import RtpPortPool

__all__ = ["RtpSession", "RtpStats"]

log = logging.getLogger(__name__)


def _bind_errno(exc: OSError) -> int | None:
    """The errno of a failed bind. uvloop raises a new OSError without one ("could not bind
    to local_addr") chained to the original, so look at the cause too."""
    if exc.errno is None and isinstance(exc.__cause__, OSError):
        return exc.__cause__.errno
    return exc.errno


#: The loop on which a :func:`flush_metrics` is scheduled and not yet run, else None. A loop
#: that closes before running it leaves it set; the next packet on another loop re-schedules.
_flush_loop: asyncio.AbstractEventLoop | None = None


def _flush() -> None:
    global _flush_loop
    _flush_loop = None
    flush_metrics()


def _schedule_flush(loop: asyncio.AbstractEventLoop) -> None:
    global _flush_loop
    _flush_loop = loop
    loop.call_soon(_flush)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self._session = session
        self._endpoint = session.endpoint

    def datagram_received(self, data: bytes, addr: SourceAddress) -> None:
        session = self._session
        loop = session._loop
        if session._closed or loop is None:
            return
        try:
            events = self._endpoint.receive(data, addr, loop.time())
        except Exception:  # defensive: one bad datagram must never kill the session
            log.exception("call %s: unexpected error handling an RTP datagram", session.call_sid)
            metrics.RTP_DISCARDED.labels(reason="malformed").inc()
            return
        if _flush_loop is not loop:
            _schedule_flush(loop)
        if events:
            session._dtmf_events(events)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable after the peer went away) are not fatal:
        # the inactivity timeout decides when the peer is gone.
        log.debug("rtp socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        # The socket is really closed now (asyncio closes it one loop iteration after
        # transport.close()): only now can the port be bound again.
        self._session._release_port()


class RtpSession:
    """One participant's RTP: receive into a jitter buffer, send what the mixer gives.

    ``inactivity_timeout`` (default 30 s, CONTRACT §5): when no valid RTP packet arrives for
    that long, ``on_timeout`` is called once. ``on_dtmf(digit, duration_ms)`` is called once per
    RFC 4733 key press. Callbacks run in the event loop and must not block; exceptions they raise
    are logged, never propagated into the socket handler.

    ``signalling_ip`` (the address the call's INVITE came from) and ``latching``
    (``"signalling-ip"`` or ``"sdp-only"``) decide which sources the endpoint accepts
    (:mod:`confstream.rtp.endpoint`, docs/sip.md "RTP security").
    """

    def __init__(
        self,
        *,
        call_sid: str,
        local_host: str,
        port_pool: RtpPortPool,
        inactivity_timeout: float = 30.0,
        on_dtmf: Callable[[str, int], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
        signalling_ip: str | None = None,
        latching: str = "signalling-ip",
    ) -> None:
        self.call_sid = call_sid
        self.local_host = local_host
        self.port_pool = port_pool
        self.inactivity_timeout = inactivity_timeout
        self.on_dtmf = on_dtmf
        self.on_timeout = on_timeout
        self.endpoint = RtpEndpoint(signalling_ip=signalling_ip, latching=latching)
        self.local_port: int | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = 0.0
        self._timed_out = False
        self._inactivity_suspended = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> int:
        """Bind a UDP socket on a port from the pool and return the port. A port another
        process holds (EADDRINUSE) goes back to the pool and the next one is tried.
        Raises :class:`~confstream.rtp.ports.RtpPortsExhausted` or OSError."""
        if self._closed:
            raise RuntimeError("RTP session already closed")
        if self._transport is not None:
            assert self.local_port is not None
            return self.local_port
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(max(self.port_pool.size, 1)):
            port = self.port_pool.allocate()
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self.local_host, port)
                )
            except OSError as exc:
                self.port_pool.release(port)
                if _bind_errno(exc) in (errno.EADDRINUSE, errno.EACCES):
                    last_error = exc
                    continue
                raise
            except BaseException:
                self.port_pool.release(port)
                raise
            self.local_port = port
            if self._closed:  # closed while binding: connection_lost releases the port
                transport.close()
                raise RuntimeError("RTP session closed while opening")
            self._transport = transport
            self._loop = loop
            self._opened_at = loop.time()
            self._arm(self.inactivity_timeout)
            return port
        raise OSError(errno.EADDRINUSE, f"no bindable RTP port in the pool: {last_error}")

    def close(self) -> None:
        """Close the socket, stop the timer and return the port to the pool. Idempotent.

        asyncio closes the socket on the next loop iteration; the port goes back to the pool
        then, so it is never handed out while still bound."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()  # connection_lost then releases the port
            self._transport = None
        else:
            self._release_port()

    def _release_port(self) -> None:
        if self.local_port is not None:
            self.port_pool.release(self.local_port)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- negotiation -------------------------------------------------------------------------

    def set_remote(
        self, host: str, port: int, payload_type: int, telephone_event_pt: int | None
    ) -> None:
        """Apply the SDP offer/answer: the peer's address (used until the first packet from an
        allowed source latches it), the audio payload type (0 = PCMU, 8 = PCMA) and the
        telephone-event payload type (None when not negotiated). Can be called again on a
        re-INVITE; a changed address un-latches."""
        self.endpoint.set_remote(host, port, payload_type, telephone_event_pt)

    def suspend_inactivity(self, suspended: bool) -> None:
        """Pause the inactivity timeout (e.g. while the peer holds with ``inactive`` or
        ``sendonly`` and may legitimately send nothing). Resuming restarts the countdown."""
        self._inactivity_suspended = suspended
        if not suspended and self._loop is not None:
            self._opened_at = self._loop.time()
            self.endpoint.last_valid = None

    @property
    def remote(self) -> tuple[str, int] | None:
        """Where packets are sent now (latched source address, else the SDP address)."""
        return self.endpoint.remote

    @property
    def stats(self) -> RtpStats:
        """Counters (packets/bytes received and sent, lost, late, discarded); a snapshot."""
        return self.endpoint.stats

    # -- media, on the mixer clock ------------------------------------------------------------

    def read_frame(self) -> Frame | None:
        """The next 160-sample 8 kHz frame from the jitter buffer, or None (nothing/silence)."""
        return self.endpoint.read_frame()

    def read_ulaw(self) -> bytes | Frame | None:
        """:meth:`read_frame` for the engine's fast path: a whole 20 ms PCMU packet comes back
        as its 160 µ-law codes (``bytes``), undecoded; anything else as :meth:`read_frame`."""
        return self.endpoint.read_ulaw()

    def write_frame(self, frame: Frame) -> None:
        """Encode with the negotiated codec and send one packet now (or the DTMF packet that
        replaces it). Does nothing before :meth:`open`/:meth:`set_remote` or after close."""
        endpoint = self.endpoint
        data = endpoint.write_frame(frame)
        if data is not None:
            self._send(data, endpoint.dest)

    def write_ulaw(self, codes: bytes) -> bool:
        """:meth:`write_frame` for the engine's fast path, from the frame already encoded as
        µ-law. Returns False, having done nothing, when this session cannot take µ-law now
        (another codec, no remote yet, a DTMF digit playing): call :meth:`write_frame`."""
        endpoint = self.endpoint
        data = endpoint.write_ulaw(codes)
        if data is None:
            return False
        transport = self._transport
        if transport is not None:  # (_send, inlined: this runs for every participant)
            try:
                transport.sendto(data, endpoint.dest)
            except OSError as exc:  # pragma: no cover - asyncio reports via error_received
                log.debug("rtp sendto failed: %s", exc)
                return True
            PENDING.packets_out += 1
            loop = self._loop
            if _flush_loop is not loop and loop is not None:
                _schedule_flush(loop)
        return True

    def _send(self, data: bytes, dest: tuple[str, int] | None) -> None:
        transport = self._transport
        if transport is None or dest is None:
            return
        try:
            transport.sendto(data, dest)
        except OSError as exc:  # pragma: no cover - asyncio normally reports via error_received
            log.debug("rtp sendto failed: %s", exc)
            return
        PENDING.packets_out += 1
        loop = self._loop
        if _flush_loop is not loop and loop is not None:
            _schedule_flush(loop)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Queue an RFC 4733 digit; its packets replace audio packets on the next ticks.
        ValueError for a non-digit. Without negotiated telephone-event it is logged and
        dropped."""
        if not self.endpoint.queue_dtmf(digit, duration_ms):
            log.info(
                "call %s: telephone-event not negotiated, DTMF %r dropped", self.call_sid, digit
            )

    # -- internals ----------------------------------------------------------------------------

    def _dtmf_events(self, events: list[DtmfEvent]) -> None:
        if self.on_dtmf is not None:
            for event in events:
                try:
                    self.on_dtmf(event.digit, event.duration_ms)
                except Exception:
                    log.exception("call %s: on_dtmf callback failed", self.call_sid)

    def _arm(self, delay: float) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(max(delay, 0.01), self._check_inactivity)

    def _check_inactivity(self) -> None:
        self._timer = None
        if self._closed or self._timed_out or self._loop is None:
            return
        now = self._loop.time()
        if self._inactivity_suspended:
            self._arm(self.inactivity_timeout)
            return
        last = self.endpoint.last_valid
        since = now - (self._opened_at if last is None else max(last, self._opened_at))
        if since < self.inactivity_timeout:
            self._arm(self.inactivity_timeout - since)
            return
        self._timed_out = True
        log.info("call %s: no RTP for %.1f s", self.call_sid, since)
        if self.on_timeout is not None:
            try:
                self.on_timeout()
            except Exception:
                log.exception("call %s: on_timeout callback failed", self.call_sid)
