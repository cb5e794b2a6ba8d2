"""The asyncio adapter of one RTP session: a UDP socket, an inactivity timer, and an
:class:`~confstream.rtp.endpoint.RtpEndpoint` that does all the protocol work.

This module and :mod:`confstream.rtp.reader` are the only RTP modules that touch sockets
(:mod:`confstream.rtp.txlane` sends on the file descriptors the sessions hand it). The
session owns a plain non-blocking UDP socket bound on a port of the pool; it is not watched by
the event loop but registered with the loop's :class:`~confstream.rtp.reader.RtpReader`, which
reads every RTP socket once per mixer tick (at the start of the tick, before frames are read;
a fallback timer when no clock runs) and hands each datagram to
:meth:`RtpEndpoint.receive <confstream.rtp.endpoint.RtpEndpoint.receive>` with the drain's
time as its arrival time; DTMF key presses reach ``on_dtmf`` from there, once per drain.

Sending is paced by the caller: the conference's 20 ms mixer clock calls
:meth:`RtpSession.write_frame` (one packet, sent at once with a non-blocking ``sendto`` on the
session's own socket, or ``send`` on the connected one, below) and
:meth:`RtpSession.read_frame`; the session has no audio timer of its own. A send that fails
(``EAGAIN``, ``ENOBUFS``, ``ECONNREFUSED`` after an ICMP error...) drops that packet, counts
``confstream_rtp_send_failures_total{reason}`` and never raises into the tick. The inactivity
check is one ``loop.call_later`` that re-arms itself for the remaining time, so it costs
nothing per packet.

The packet counters are batched (see :mod:`confstream.rtp.endpoint`) and flushed to Prometheus
by the reader once per drain, so ``/metrics`` is at most one tick behind.

Closing unregisters the socket from the reader and closes it at once: nothing of it is pending
in the event loop, so its port goes back to the pool (and its cool-down) immediately.

Connected after the latch (bench/history.md, section 10): a connected UDP socket sends without
an address (no address parsing, the kernel's route cached) and receives without one (no source
address built per datagram, no source check), about 2 µs less per participant-frame on
loopback. But a plain ``connect()`` of the session's only socket would make the kernel answer
every other source with ICMP port unreachable and hide its datagrams from the source filter
(docs/sip.md, "RTP security": counted, never answered). So once the endpoint latches, the
session sets ``SO_REUSEPORT`` on its bound socket and opens a *second* socket on the same
address and port, connected to the latched source: the kernel delivers that source's datagrams
to the connected socket (an exact match) and everything else to the first one (it never picks
a connected socket for another source), which still counts and drops them. The reader reads
the connected socket with ``recv`` and hands its datagrams over as coming from the latched
source. Datagrams that reached the second socket before its ``connect`` are read at once,
as the first socket's. A re-INVITE that un-latches closes the second socket (what waits in it
is read first); the next latch opens a new one. Both close together; the port pool, cool-down
and quarantine see one port as before. The first socket is bound without ``SO_REUSEPORT`` (a
port another process holds is still EADDRINUSE and skipped); while latched, another process of
the *same user* could join the port, which that user could do to the process anyway. When the
second socket cannot be made (e.g. ``EMFILE``: it needs one more file descriptor per call) the
call stays on its one socket, as before.

The conference engine's fast path (:meth:`RtpSession.read_ulaw`, :meth:`RtpSession.write_ulaw`)
moves µ-law codes instead of samples so that it can decode and encode every participant in one
NumPy lookup per tick.

The send lane (:mod:`confstream.rtp.txlane`, bench/history.md section 11): when the server
installed one on the loop, the session takes a slot in it when it opens (``tx_key``, read by
the engine) and keeps it for life. While the session is connected to its latched source, has
PCMU negotiated and plays no DTMF digit, the slot is enabled and the lane sends its packets
from the connected socket (the engine no longer calls :meth:`write_ulaw` for it); every change
of those conditions (:meth:`_lane_update`: the connect, the disconnect, a re-INVITE, a digit
queued or finished, close) enables or disables it, carrying the sequence number, timestamp,
first-audio flag and the packets sent over, so the packets and the counters are those of the
Python path. The slot is disabled before the connected socket's fd is closed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

from confstream import metrics
from confstream.conference.base import Frame
from confstream.rtp.dtmf import DtmfEvent
from confstream.rtp.endpoint import PENDING, RtpEndpoint, RtpStats, SourceAddress
from confstream.rtp.ports import RtpPortPool
from confstream.rtp.reader import RtpReader, reader_for
from confstream.rtp.txlane import PAYLOAD, TxLane, lane_of

__all__ = ["RtpSession", "RtpStats"]

log = logging.getLogger(__name__)

#: Datagrams read from the connected socket when it opens or closes (those the kernel handed
#: it while it was not registered with the reader).
_PENDING_READ = 64

Address = tuple[str, int]


async def _local_address(loop: asyncio.AbstractEventLoop, host: str) -> tuple[int, str]:
    """The address family and IP to bind for ``host`` (an IP, or a name resolved once)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve RTP bind host {host!r}") from None
        family, _, _, _, sockaddr = infos[0]
        return int(family), str(sockaddr[0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), host


def _bind(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _send_failed(exc: OSError) -> None:
    """A packet not sent (non-blocking socket full, no buffer, an ICMP error reported on this
    send...): dropped and counted, never raised into the tick."""
    reason = errno.errorcode.get(exc.errno or 0, "other") if exc.errno else type(exc).__name__
    metrics.RTP_SEND_FAILURES.labels(reason=reason).inc()
    log.debug("rtp sendto failed: %s", exc)


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
        self.endpoint.on_latch = self._latched
        self.local_port: int | None = None
        self._sock: socket.socket | None = None
        #: The socket's bound ``sendto`` while open, else None (the per-packet send).
        self._sendto: Callable[[bytes, Address], int] | None = None
        #: The second socket, on the same port and connected to the latched source, while
        #: latched (see "Connected after the latch" in the module docstring), and its ``send``.
        self._conn: socket.socket | None = None
        self._send: Callable[[bytes], int] | None = None
        self._reader: RtpReader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = 0.0
        self._timed_out = False
        self._inactivity_suspended = False
        self._closed = False
        #: The loop's send lane (confstream.rtp.txlane), when the server installed one, and
        #: this session's key in it (-1: none); the conference engine reads ``tx_key``.
        self._lane: TxLane | None = None
        self.tx_key = -1
        #: True while the lane sends this session's packets (see :meth:`_lane_update`).
        self._lane_on = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> int:
        """Bind a UDP socket on a port from the pool, register it with the loop's RTP reader
        and return the port. A port another process holds (EADDRINUSE) goes back to the pool
        and the next one is tried. Raises :class:`~confstream.rtp.ports.RtpPortsExhausted` or
        OSError."""
        if self._closed:
            raise RuntimeError("RTP session already closed")
        if self._sock is not None:
            assert self.local_port is not None
            return self.local_port
        loop = asyncio.get_running_loop()
        family, host = await _local_address(loop, self.local_host)
        if self._closed:
            raise RuntimeError("RTP session closed while opening")
        last_error: OSError | None = None
        for _ in range(max(self.port_pool.size, 1)):
            port = self.port_pool.allocate()
            try:
                sock = _bind(family, host, port)
            except OSError as exc:
                self.port_pool.release(port)
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    last_error = exc
                    continue
                raise
            except BaseException:
                self.port_pool.release(port)
                raise
            self.local_port = port
            self._sock = sock
            if family == socket.AF_INET6:  # an IPv4 SDP address is sent to as ::ffff:a.b.c.d
                self.endpoint.use_ipv6_socket()
            self._sendto = sock.sendto
            self._loop = loop
            self._reader = reader_for(loop)
            self._reader.register(sock, self.endpoint.receive, self._dtmf_events)
            lane = lane_of(loop)
            if lane is not None:  # a slot for life; enabled once connected (_lane_update)
                self._lane = lane
                self.tx_key = lane.take(self.endpoint.ssrc)
                self.endpoint.before_stats = self._fold_sent
            self._opened_at = loop.time()
            self._arm(self.inactivity_timeout)
            return port
        raise OSError(errno.EADDRINUSE, f"no bindable RTP port in the pool: {last_error}")

    def close(self) -> None:
        """Stop reading, close the socket, stop the timer and return the port to the pool
        (at once: nothing of the socket is pending in the event loop). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._disconnect()
        lane = self._lane
        if lane is not None:
            self._lane_update()  # disabled (closed), counts folded in
            self._fold_sent()
            lane.release(self.tx_key)
            self.endpoint.before_stats = None
            self._lane, self.tx_key = None, -1
        sock, self._sock, self._sendto = self._sock, None, None
        if sock is not None:
            if self._reader is not None:
                self._reader.unregister(sock)
                self._reader = None
            sock.close()
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
        if not self.endpoint.latched:
            self._disconnect()
        self._lane_update()  # the codec may have changed

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
        if self._lane_on:  # (not the engine's way: it lets the lane send these rows)
            self._lane_set(False)
            self.write_frame(frame)
            self._lane_update()
            return
        endpoint = self.endpoint
        data = endpoint.write_frame(frame)
        if data is not None:
            self._send_to(data, endpoint.dest)
        if self._lane is not None:  # a DTMF digit may have ended: back to the lane
            self._lane_update()

    def write_ulaw(self, codes: bytes) -> bool:
        """:meth:`write_frame` for the engine's fast path, from the frame already encoded as
        µ-law. Returns False, having done nothing, when this session cannot take µ-law now
        (another codec, no remote yet, a DTMF digit playing): call :meth:`write_frame`."""
        if self._lane_on:  # (not the engine's way: it lets the lane send these rows)
            self._lane_set(False)
            taken = self.write_ulaw(codes)
            self._lane_update()
            return taken
        endpoint = self.endpoint
        data = endpoint.write_ulaw(codes)
        if data is None:
            return False
        # (_send_to, inlined: this runs for every participant)
        try:
            send = self._send
            if send is not None:  # connected to the latched source
                send(data)
            else:
                sendto = self._sendto
                if sendto is None:
                    return True
                sendto(data, endpoint.dest)  # type: ignore[arg-type]  # not None: data was made
        except OSError as exc:
            _send_failed(exc)
            return True
        PENDING.packets_out += 1
        return True

    def _send_to(self, data: bytes, dest: Address | None) -> None:
        try:
            send = self._send
            if send is not None:
                send(data)
            else:
                sendto = self._sendto
                if sendto is None or dest is None:
                    return
                sendto(data, dest)
        except OSError as exc:
            _send_failed(exc)
            return
        PENDING.packets_out += 1

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Queue an RFC 4733 digit; its packets replace audio packets on the next ticks.
        ValueError for a non-digit. Without negotiated telephone-event it is logged and
        dropped."""
        if not self.endpoint.queue_dtmf(digit, duration_ms):
            log.info(
                "call %s: telephone-event not negotiated, DTMF %r dropped", self.call_sid, digit
            )
        self._lane_update()  # the digit's packets are sent from Python

    # -- the send lane (confstream.rtp.txlane) -------------------------------------------------

    def _lane_update(self) -> None:
        """Enable or disable this session's lane slot: enabled while the lane can send its
        packets (connected socket, PCMU, no DTMF digit playing)."""
        if self._lane is None:
            return
        want = self._conn is not None and not self._closed and self.endpoint.ulaw_ready
        if want != self._lane_on:
            self._lane_set(want)

    def _lane_set(self, on: bool) -> None:
        lane = self._lane
        if lane is None or on == self._lane_on:
            return
        endpoint = self.endpoint
        if on:
            assert self._conn is not None
            seq, ts, first = endpoint.tx_state()
            lane.enable(self.tx_key, self._conn.fileno(), seq, ts, first)
        else:
            seq, ts, first = lane.disable(self.tx_key)
            endpoint.set_tx_state(seq, ts, first)
            self._fold_sent()
        self._lane_on = on

    def _fold_sent(self) -> None:
        """Add the packets the lane sent for this session to the endpoint's stats."""
        lane = self._lane
        if lane is not None:
            n = lane.take_sent(self.tx_key)
            if n:
                self.endpoint.count_sent(n, n * PAYLOAD)

    # -- internals ----------------------------------------------------------------------------

    def _latched(self, source: SourceAddress) -> None:
        """The endpoint latched, in the middle of a datagram's handling: connect after it."""
        if self._loop is not None and not self._closed:
            self._loop.call_soon(self._connect, source)

    def _connect(self, source: SourceAddress) -> None:
        """Open the socket connected to ``source``, if the call is still latched to it."""
        sock, reader = self._sock, self._reader
        if sock is None or reader is None or self._closed or self._conn is not None:
            return
        if self.endpoint.source != source:  # un-latched (or latched again) meanwhile
            return
        conn: socket.socket | None = None
        try:
            # SO_REUSEPORT on the bound socket now, then a second socket on the same port,
            # connected: the kernel delivers the latched source's datagrams to it, everything
            # else to the first one (it never picks a connected socket for another source).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            conn = socket.socket(sock.family, socket.SOCK_DGRAM)
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            conn.bind(sock.getsockname())
            conn.connect(source)
        except OSError as exc:  # stay on the one socket (sendto), as without this
            log.debug("call %s: no connected RTP socket: %s", self.call_sid, exc)
            if conn is not None:
                conn.close()
            return
        self._conn = conn
        self._send = conn.send
        # Bound but not yet connected, it may have been handed datagrams from anyone: read
        # them as the first socket's (checked against the source), then only the peer's.
        reader.read_pending(conn, self.endpoint.receive, self._dtmf_events, _PENDING_READ)
        reader.register(conn, self.endpoint.receive, self._dtmf_events, source)
        self._lane_update()

    def _disconnect(self) -> None:
        """Close the connected socket (un-latched, or closing). What waits in it is read first
        (counted as usual); from then on the first socket receives everything again."""
        conn, self._conn, self._send = self._conn, None, None
        if conn is None:
            return
        self._lane_update()  # disabled before its fd is closed
        reader = self._reader
        if reader is not None:
            reader.unregister(conn)
            if not self._closed:
                reader.read_pending(conn, self.endpoint.receive, self._dtmf_events, _PENDING_READ)
        conn.close()

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
