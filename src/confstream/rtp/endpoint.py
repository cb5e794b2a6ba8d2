"""The sans-I/O core of one RTP session: datagrams in, frames and DTMF events out; frames in,
datagrams out. :mod:`confstream.rtp.session` wraps it with a UDP socket and timers.

Receiving (:meth:`RtpEndpoint.receive`):

* A datagram that is not RTP (:class:`~confstream.rtp.packet.RtpError`) is dropped as
  ``malformed``; one whose payload type is neither the negotiated audio type nor the negotiated
  telephone-event type as ``unknown_payload``; empty audio payloads as ``malformed``. Each drop
  counts ``confstream_rtp_discarded_total{reason}``. Nothing here raises.
* Audio is decoded (PCMU = payload type 0, PCMA = 8) and put in the :class:`JitterBuffer`.
* Telephone-events go to the :class:`DtmfReceiver`; their sequence numbers enter the jitter
  buffer as placeholders so the audio they replace is not mistaken for loss.
* Source filter (docs/sip.md, "RTP security"): every datagram is first checked against the
  sources allowed for the call, before it is parsed; any other source is dropped and counted in
  ``confstream_rtp_packets_rejected_total{reason="source"}`` (and :attr:`RtpStats.rejected`).
  Until the call is latched the allowed sources are the SDP ``c=``/``m=`` address and port and,
  with ``latching="signalling-ip"`` (the default, for callers behind NAT), any port of the SDP
  IP or of the IP the INVITE came from (``signalling_ip``). With ``latching="sdp-only"`` only
  the exact SDP address and port.
* Symmetric RTP, latched once (RFC 4961 style): the first valid packet from an allowed source
  fixes the one source accepted from then on and the address packets are sent to. A later
  :meth:`set_remote` with a different address un-latches (a re-INVITE moved the media).
* Nothing is sent before a known-good address: the SDP address (it came with the
  authenticated INVITE) or the latched source (it passed the filter). Without either
  (no SDP yet, ``c=0.0.0.0``), :meth:`write_frame` returns None.

Sending (:meth:`RtpEndpoint.write_frame`): one packet per call (the mixer's 20 ms tick). The
SSRC and the first sequence number and timestamp are random (RFC 3550 §5.1); the timestamp
advances by the frame's sample count every call, the marker is set on the first audio packet.
While a queued DTMF digit plays, its RFC 4733 packets replace the audio packets.

Hot path (every participant, every 20 ms; see ``bench/micro.py``):

* :meth:`RtpEndpoint.receive` handles the common packet (V=2, no padding, extension or CSRCs,
  the negotiated audio type) with one :func:`struct.unpack_from` and no packet object; anything
  else goes through :meth:`RtpPacket.parse <confstream.rtp.packet.RtpPacket.parse>`.
* PCMU payloads are buffered still encoded: :meth:`RtpEndpoint.read_ulaw` hands the conference
  engine the 160 µ-law codes of a whole 20 ms packet so that it decodes every participant in
  one table lookup; :meth:`RtpEndpoint.read_frame` decodes them itself. PCMA is decoded on
  arrival, as before.
* :meth:`RtpEndpoint.write_ulaw` packetises µ-law codes the engine encoded for everyone at once.
* The source check of a latched call is one tuple comparison with the datagram's address;
  the full check (:meth:`RtpEndpoint._admit`) runs only until the call is latched and, after
  that, answers False at once, so a flood from other sources costs little more than reading it.
* The packet counters ``confstream_rtp_packets_received_total``/``_sent_total`` and the
  rejected count are counted in
  plain integers (:data:`PENDING`) and added to the Prometheus counters by :func:`flush_metrics`,
  which the socket adapter schedules once per event-loop iteration: a Prometheus ``inc()`` takes
  a lock and costs more than the rest of the packet's bookkeeping. Discards are rare and still
  counted at once.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from confstream import metrics
from confstream.conference.base import FRAME_SAMPLES, Frame
from confstream.media.g711 import ULAW_DECODE, alaw_decode, alaw_encode, ulaw_encode
from confstream.rtp.dtmf import DtmfEvent, DtmfReceiver, DtmfSender
from confstream.rtp.jitter import JitterBuffer, PutResult
from confstream.rtp.packet import MAX_PAYLOAD, RtpError, RtpPacket

__all__ = [
    "LATCHING_MODES",
    "PCMA",
    "PCMU",
    "PENDING",
    "SUPPORTED_PAYLOAD_TYPES",
    "RtpEndpoint",
    "RtpStats",
    "SourceAddress",
    "flush_metrics",
]

log = logging.getLogger(__name__)

#: Static payload types (RFC 3551 table 4).
PCMU = 0
PCMA = 8
SUPPORTED_PAYLOAD_TYPES = (PCMU, PCMA)
CLOCK_RATE = 8000

Address = tuple[str, int]
#: A datagram's source as the socket reports it: (host, port), or (host, port, flowinfo,
#: scope_id) on an IPv6 socket.
SourceAddress = tuple[str, int] | tuple[str, int, int, int]

#: Values of ``latching`` (setting ``CONFSTREAM_RTP_LATCHING``, docs/operations.md).
LATCHING_MODES = ("signalling-ip", "sdp-only")

#: The fixed header after its first byte (marker/payload type, sequence, timestamp, SSRC).
_AFTER_B0 = struct.Struct("!BHII")
_HEADER = struct.Struct("!BBHII")
_FAST_MAX = 12 + MAX_PAYLOAD
_ACCEPTED = PutResult.ACCEPTED
_NO_EVENTS: list[DtmfEvent] = []


class _Pending:
    """Packet counts not yet added to the Prometheus counters (see :func:`flush_metrics`)."""

    __slots__ = ("packets_in", "packets_out", "rejected_source")

    def __init__(self) -> None:
        self.packets_in = 0
        self.packets_out = 0
        self.rejected_source = 0


#: Process-wide counts waiting for :func:`flush_metrics`.
PENDING = _Pending()
_discard_counters: dict[str, Counter] = {}
_REJECTED_SOURCE = metrics.RTP_REJECTED.labels(reason="source")


def flush_metrics() -> None:
    """Add the pending packet counts to ``confstream_rtp_packets_received_total``,
    ``confstream_rtp_packets_sent_total`` and ``confstream_rtp_packets_rejected_total``.
    Cheap when nothing is pending."""
    n_in, n_out, n_rejected = PENDING.packets_in, PENDING.packets_out, PENDING.rejected_source
    PENDING.packets_in = PENDING.packets_out = PENDING.rejected_source = 0
    if n_in:
        metrics.RTP_PACKETS_IN.inc(n_in)
    if n_out:
        metrics.RTP_PACKETS_OUT.inc(n_out)
    if n_rejected:
        _REJECTED_SOURCE.inc(n_rejected)


def _count_discard(reason: str, n: int = 1) -> None:
    counter = _discard_counters.get(reason)
    if counter is None:
        counter = _discard_counters[reason] = metrics.RTP_DISCARDED.labels(reason=reason)
    counter.inc(n)


@dataclass(slots=True)
class RtpStats:
    """Counters of one RTP session.

    Bytes are RTP payload octets (as in RFC 3550 sender reports), not datagram sizes.
    ``packets_received`` counts valid packets of the negotiated types (including duplicates and
    late ones); ``lost`` is RFC 3550's cumulative loss; ``late`` counts packets that arrived
    after their turn; ``discarded`` counts every datagram dropped for any reason (malformed,
    unknown payload type, duplicate, late, jitter buffer overflow) after it passed the source
    filter; ``rejected`` counts datagrams from sources not allowed for the call (never parsed).
    """

    packets_received: int = 0
    bytes_received: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    lost: int = 0
    late: int = 0
    discarded: int = 0
    rejected: int = 0


def _encode(payload_type: int, frame: Frame) -> bytes:
    codes = alaw_encode(frame) if payload_type == PCMA else ulaw_encode(frame)
    return codes.tobytes()


def _pcm(chunk: bytes | Frame) -> Frame:
    """A buffered item as samples: µ-law codes (bytes) are decoded, frames pass through."""
    if isinstance(chunk, bytes):
        return ULAW_DECODE[np.frombuffer(chunk, dtype=np.uint8)]
    return chunk


def _conceal(last: bytes | Frame) -> Frame:
    return (_pcm(last) >> 1).astype(np.int16)


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _ipv4_mapped(host: str) -> str | None:
    """``::ffff:a.b.c.d`` for an IPv4 address ``a.b.c.d``; None for anything else."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"::ffff:{ip}" if isinstance(ip, ipaddress.IPv4Address) else None


def _ip_forms(host: str | None) -> frozenset[str]:
    """The texts under which datagrams from ``host`` can arrive: its canonical form (what the
    kernel reports), plus the IPv4-mapped IPv6 form of an IPv4 address (a dual-stack socket)
    and the IPv4 form of an IPv4-mapped address. A name that is no IP address stays as is."""
    if not host:
        return frozenset()
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return frozenset((host,))
    forms = {str(ip)}
    if isinstance(ip, ipaddress.IPv4Address):
        forms.add(f"::ffff:{ip}")
    elif ip.ipv4_mapped is not None:
        forms.add(str(ip.ipv4_mapped))
    return frozenset(forms)


class RtpEndpoint:
    """One RTP session's state, without sockets or timers. See the module docstring.

    ``signalling_ip`` is the address the call's INVITE came from (its received address);
    ``latching`` one of :data:`LATCHING_MODES` (ValueError otherwise).
    """

    def __init__(
        self,
        *,
        ssrc: int | None = None,
        signalling_ip: str | None = None,
        latching: str = "signalling-ip",
    ) -> None:
        if latching not in LATCHING_MODES:
            raise ValueError(f"latching must be one of {LATCHING_MODES}, not {latching!r}")
        self.latching = latching
        self._signalling_ips = _ip_forms(signalling_ip) if latching == "signalling-ip" else None
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._first_audio = True
        self.payload_type: int | None = None
        self.telephone_event_pt: int | None = None
        self._sdp_remote: Address | None = None
        self._sdp_ips: frozenset[str] = frozenset()
        #: IPs whose datagrams may latch from any port (signalling-ip mode), until latched.
        self._latch_ips: frozenset[str] = self._signalling_ips or frozenset()
        #: The latched source exactly as the socket reported it (compared per packet) ...
        self._source: SourceAddress | None = None
        #: ... and as a (host, port) destination.
        self._latched: Address | None = None
        #: Where packets go now: :attr:`remote`, in the IPv4-mapped form on an IPv6 socket
        #: (:meth:`use_ipv6_socket`), kept as a plain attribute for the per-packet code. Read
        #: it, never set it.
        self.dest: Address | None = None
        #: The socket is IPv6 (dual-stack): an IPv4 SDP address is sent to as ``::ffff:a.b.c.d``.
        self._ipv6_socket = False
        #: Buffered items: µ-law codes (bytes) for PCMU, decoded frames for PCMA.
        #: Arrival times are quantised to the 20 ms tick (confstream.rtp.reader).
        self.jitter: JitterBuffer[bytes | Frame] = JitterBuffer(
            conceal=_conceal, arrival_quantum=FRAME_SAMPLES
        )
        self._put = self.jitter.put  # (bound once: called for every packet)
        self._dtmf_in = DtmfReceiver()
        self._dtmf_out = DtmfSender()
        self._pending: Frame | None = None  # samples cut off a longer packet, not yet played
        self._counts = RtpStats()
        self._overflow_seen = 0
        #: Time (the ``now`` passed to :meth:`receive`) of the last valid packet, or None.
        self.last_valid: float | None = None
        #: Called with the source when the call latches (the socket adapter's hook).
        self.on_latch: Callable[[SourceAddress], None] | None = None
        #: Called before :attr:`stats` is read: the socket adapter adds the packets its send
        #: lane made (confstream.rtp.txlane) with :meth:`count_sent`.
        self.before_stats: Callable[[], None] | None = None

    # -- negotiation -------------------------------------------------------------------------

    def set_remote(
        self, host: str, port: int, payload_type: int, telephone_event_pt: int | None
    ) -> None:
        """Apply the negotiated SDP: where to send until latched and which sources may latch
        (see the module docstring), the audio payload type (0 or 8; ValueError otherwise) and
        the telephone-event payload type (None: not negotiated). An unspecified address
        (``0.0.0.0``, old-style hold) means: do not send until latched."""
        if payload_type not in SUPPORTED_PAYLOAD_TYPES:
            raise ValueError(f"unsupported audio payload type {payload_type} (PCMU=0, PCMA=8)")
        remote = None if _is_unspecified(host) or port == 0 else (host, port)
        if remote != self._sdp_remote:
            self._latched = None
            self._source = None
        self._sdp_remote = remote
        self._sdp_ips = _ip_forms(host) if remote is not None else frozenset()
        if self._signalling_ips is not None:
            self._latch_ips = self._signalling_ips | self._sdp_ips
        self._set_dest()
        self.payload_type = payload_type
        self.telephone_event_pt = telephone_event_pt

    def use_ipv6_socket(self) -> None:
        """The session's socket is IPv6 (bound to ``::`` or another IPv6 address): until the
        call is latched, an IPv4 SDP address is sent to in its IPv4-mapped form
        (``::ffff:a.b.c.d``), the only form an IPv6 socket can send to (a dual-stack socket
        then sends IPv4). The latched source needs nothing: the socket reports it in that
        form."""
        self._ipv6_socket = True
        self._set_dest()

    def _set_dest(self) -> None:
        dest = self._latched or self._sdp_remote
        if dest is not None and self._ipv6_socket and self._latched is None:
            mapped = _ipv4_mapped(dest[0])
            if mapped is not None:
                dest = (mapped, dest[1])
        self.dest = dest

    @property
    def remote(self) -> Address | None:
        """Where packets go: the latched source address, else the SDP address, else None."""
        return self._latched or self._sdp_remote

    @property
    def latched(self) -> bool:
        return self._latched is not None

    # -- receiving ---------------------------------------------------------------------------

    def _admit(self, addr: SourceAddress) -> bool:
        """Whether a datagram from ``addr`` (not the latched source) may be handled: only
        before latching, from the SDP address and port or from an IP that may latch."""
        if self._source is not None:
            return False
        host = addr[0]
        if host in self._latch_ips:
            return True
        remote = self._sdp_remote
        return remote is not None and addr[1] == remote[1] and host in self._sdp_ips

    def _reject(self, addr: SourceAddress) -> None:
        counts = self._counts
        counts.rejected += 1
        PENDING.rejected_source += 1
        if counts.rejected == 1:
            log.info(
                "RTP from %s:%s dropped: not a source allowed for this call (latched to %s, "
                "SDP %s); later ones are only counted",
                addr[0],
                addr[1],
                self._latched,
                self._sdp_remote,
            )

    def _discard(self, reason: str) -> None:
        self._counts.discarded += 1
        _count_discard(reason)

    def receive(self, data: bytes, addr: SourceAddress, now: float) -> list[DtmfEvent]:
        """Handle one datagram from ``addr`` arriving at ``now`` (seconds, monotonic).
        Returns the DTMF key presses it completed. Never raises for bad input."""
        if addr != self._source and not self._admit(addr):
            self._reject(addr)
            return _NO_EVENTS
        size = len(data)
        if 12 < size <= _FAST_MAX and data[0] == 0x80:
            # The common case: V=2, no padding, no extension, no CSRC, a non-empty payload.
            b1, seq, ts, ssrc = _AFTER_B0.unpack_from(data, 1)
            pt = b1 & 0x7F
            if pt == self.payload_type:
                counts = self._counts
                counts.packets_received += 1
                counts.bytes_received += size - 12
                PENDING.packets_in += 1
                self.last_valid = now
                if self._source is None:
                    self._latch(addr)
                payload = data[12:]
                result = self._put(
                    seq,
                    ts,
                    ssrc,
                    payload if pt == PCMU else alaw_decode(payload),
                    now,
                    CLOCK_RATE,
                )
                if result != _ACCEPTED:
                    self._count_put(result)
                return _NO_EVENTS
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self._discard("malformed")
            return []
        pt = packet.payload_type
        if pt == self.payload_type and pt is not None:
            if not packet.payload:
                self._discard("malformed")
                return []
            self._accept(packet, addr, now)
            payload = packet.payload
            result = self.jitter.put(
                packet.sequence_number,
                packet.timestamp,
                packet.ssrc,
                payload if pt == PCMU else alaw_decode(payload),
                now,
                CLOCK_RATE,
            )
            self._count_put(result)
            return []
        if pt == self.telephone_event_pt and pt is not None:
            self._accept(packet, addr, now)
            if packet.ssrc == self.jitter.ssrc:
                result = self.jitter.put(packet.sequence_number, None, packet.ssrc, None, now)
                # Retransmitted end packets are normal here: do not count them as discards.
                if result == PutResult.OVERFLOW:
                    self._count_put(result)
            return self._dtmf_in.feed(packet)
        self._discard("unknown_payload")
        return []

    def _latch(self, addr: SourceAddress) -> None:
        self._source = addr
        self._latched = (addr[0], addr[1])
        self.dest = self._latched
        if self.on_latch is not None:
            self.on_latch(addr)

    @property
    def source(self) -> SourceAddress | None:
        """The latched source exactly as the socket reports it, or None before the latch."""
        return self._source

    def _accept(self, packet: RtpPacket, addr: SourceAddress, now: float) -> None:
        counts = self._counts
        counts.packets_received += 1
        counts.bytes_received += len(packet.payload)
        PENDING.packets_in += 1
        self.last_valid = now
        if self._source is None:
            self._latch(addr)

    def _count_put(self, result: str) -> None:
        if result == PutResult.ACCEPTED:
            return
        if result == PutResult.LATE:
            self._discard("late")
        elif result == PutResult.DUPLICATE:
            self._discard("duplicate")
        else:
            self._discard("overflow")
            self._overflow_seen += 1

    def read_frame(self) -> Frame | None:
        """The next 160-sample frame for the mixer, or None (nothing yet, or silence).
        Packets of other sizes than 20 ms are re-cut into 160-sample frames."""
        got = self.read_ulaw()
        if isinstance(got, bytes):
            return ULAW_DECODE[np.frombuffer(got, dtype=np.uint8)]
        return got

    def read_ulaw(self) -> bytes | Frame | None:
        """Like :meth:`read_frame`, but when the next 20 ms is exactly one PCMU packet it is
        returned as its 160 µ-law codes (``bytes``), undecoded, for the engine to decode with
        everyone else's; otherwise the frame or None that :meth:`read_frame` would return."""
        jb = self.jitter
        pending = self._pending
        if pending is None:
            chunk = jb.get()
            if jb.stats.overflow != self._overflow_seen:
                self._sync_overflow()
            if chunk is None or len(chunk) == FRAME_SAMPLES:
                return chunk
            pending = _pcm(chunk)
        # Re-cutting packets of other sizes than 20 ms.
        while len(pending) < FRAME_SAMPLES:
            chunk = jb.get()
            if chunk is None:
                pending = np.concatenate(
                    (pending, np.zeros(FRAME_SAMPLES - len(pending), np.int16))
                )
                break
            pending = np.concatenate((pending, _pcm(chunk)))
        self._pending = pending[FRAME_SAMPLES:] if len(pending) > FRAME_SAMPLES else None
        self._sync_overflow()
        return pending[:FRAME_SAMPLES]

    def _sync_overflow(self) -> None:
        # Frames dropped by the jitter buffer's latency control during get().
        dropped = self.jitter.stats.overflow - self._overflow_seen
        if dropped > 0:
            self._overflow_seen += dropped
            self._counts.discarded += dropped
            _count_discard("overflow", dropped)

    # -- sending -----------------------------------------------------------------------------

    def queue_dtmf(self, digit: str, duration_ms: int) -> bool:
        """Queue a digit to send as RFC 4733 (ValueError for a non-digit). Returns False, and
        queues nothing, when telephone-event was not negotiated."""
        if self.telephone_event_pt is None:
            return False
        self._dtmf_out.queue(digit, duration_ms)
        return True

    def write_ulaw(self, codes: bytes) -> bytes | None:
        """The datagram for this tick from audio the caller already encoded as µ-law (one
        packet's worth of codes), exactly as :meth:`write_frame` would have made it from the
        decoded samples. Returns None, and changes nothing, when that cannot be done here (the
        codec is not PCMU, no remote address yet, or a DTMF digit is playing): then call
        :meth:`write_frame` with the samples instead."""
        if self.payload_type != PCMU or self.dest is None or self._dtmf_out.busy:
            return None
        seq, ts = self._seq, self._ts
        data = _HEADER.pack(0x80, 0x80 if self._first_audio else 0, seq, ts, self.ssrc) + codes
        self._first_audio = False
        samples = len(codes)
        self._seq = (seq + 1) & 0xFFFF
        self._ts = (ts + samples) & 0xFFFFFFFF
        counts = self._counts
        counts.packets_sent += 1
        counts.bytes_sent += samples
        return data

    # -- the send lane's side (confstream.rtp.txlane) ----------------------------------------

    @property
    def ulaw_ready(self) -> bool:
        """Whether :meth:`write_ulaw` would make a packet now (PCMU, a remote address, no DTMF
        digit playing or queued)."""
        return self.payload_type == PCMU and self.dest is not None and not self._dtmf_out.busy

    def tx_state(self) -> tuple[int, int, bool]:
        """The next packet's sequence number and timestamp, and whether it is the first audio
        packet (marker bit): what a send lane carries on from."""
        return self._seq, self._ts, self._first_audio

    def set_tx_state(self, seq: int, ts: int, first_audio: bool) -> None:
        """Carry on from what a send lane made (see :meth:`tx_state`)."""
        self._seq = seq & 0xFFFF
        self._ts = ts & 0xFFFFFFFF
        self._first_audio = first_audio

    def count_sent(self, packets: int, payload_bytes: int) -> None:
        """Add packets a send lane made for this endpoint to :attr:`stats`."""
        counts = self._counts
        counts.packets_sent += packets
        counts.bytes_sent += payload_bytes

    def write_frame(self, frame: Frame) -> bytes | None:
        """The datagram to send for this tick, or None when there is no remote address or no
        negotiated payload type yet (the tick's timestamp still advances)."""
        samples = len(frame) or FRAME_SAMPLES
        pt = self.payload_type
        if pt is None or self.dest is None:
            self._ts = (self._ts + samples) & 0xFFFFFFFF
            return None
        step = None
        te_pt = self.telephone_event_pt
        if te_pt is not None and self._dtmf_out.busy:
            step = self._dtmf_out.next_step(self._ts)
        if step is not None and te_pt is not None:
            payload = step.payload
            data = RtpPacket(
                te_pt, self._seq, step.timestamp, self.ssrc, payload, step.marker
            ).serialize()
        else:
            payload = _encode(pt, frame)
            b1 = pt | (0x80 if self._first_audio else 0)
            data = _HEADER.pack(0x80, b1, self._seq, self._ts, self.ssrc) + payload
            self._first_audio = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + samples) & 0xFFFFFFFF
        counts = self._counts
        counts.packets_sent += 1
        counts.bytes_sent += len(payload)
        return data

    # -- stats -------------------------------------------------------------------------------

    @property
    def stats(self) -> RtpStats:
        """A snapshot of the counters."""
        if self.before_stats is not None:
            self.before_stats()
        counts = self._counts
        jstats = self.jitter.stats
        return RtpStats(
            packets_received=counts.packets_received,
            bytes_received=counts.bytes_received,
            packets_sent=counts.packets_sent,
            bytes_sent=counts.bytes_sent,
            lost=jstats.lost,
            late=jstats.late,
            discarded=counts.discarded,
            rejected=counts.rejected,
        )
