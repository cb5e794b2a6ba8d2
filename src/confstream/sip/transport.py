"""The only SIP module that touches sockets: one UDP endpoint and one TCP listener.

Received messages are handed to ``on_message(data, flow)`` as raw bytes (one datagram, or one
Content-Length-framed message from a TCP stream); it returns whether they were a valid SIP
message. The :class:`~confstream.sip.flow.Flow` is where answers go: responses are always sent
back on the flow they came from (symmetric signalling, RFC 3581), with :meth:`SipTransport.send`.

Limits (:class:`TransportLimits`; defaults, settings and reasons in docs/sip.md "Limits"):

* UDP: the socket asks for a receive buffer of ``udp_rcvbuf`` bytes (4 MiB), so that a burst
  of INVITEs waits in the kernel instead of being dropped; Linux caps the request at
  ``net.core.rmem_max`` and the size obtained is logged (and exported as
  ``confstream_sip_udp_rcvbuf_bytes``). Datagrams over
  :data:`~confstream.sip.message.MAX_MESSAGE_BYTES` are dropped.
* TCP: at most ``tcp_max_connections`` (1024) at once; more are closed at once. Reading is
  bounded by the framer (header block <= 32 KiB, body <= 64 KiB); a connection whose framing
  breaks is counted as a parse error and closed, since the stream cannot be resynchronised.
  Writing is bounded too: a peer that stops reading while more than ``tcp_max_write_buffer``
  bytes (256 KiB) wait for it is closed.
* TCP timeouts: an accepted connection must deliver a valid SIP message within
  ``tcp_first_message_timeout`` (10 s); bytes that never form one (silence, garbage, a
  trickled header) do not extend that deadline. After a valid message, the connection is
  closed after ``tcp_idle_timeout`` (600 s) without any bytes received, or after
  :data:`MAX_BAD_MESSAGES` unparseable messages in a row.

Every server-side close is counted in ``confstream_sip_tcp_closed_total{reason}``.
Transports are used through their common methods only (duck typing): uvloop's TCP transport is
not a subclass of :class:`asyncio.Transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from confstream import metrics
from confstream.sip.flow import Address, Flow
from confstream.sip.message import SipParseError, StreamFramer

log = logging.getLogger(__name__)

#: Unparseable messages in a row after which a TCP connection is closed.
MAX_BAD_MESSAGES = 10


@dataclass(frozen=True)
class TransportLimits:
    """Socket limits; the defaults are those of :class:`confstream.settings.Settings`."""

    udp_rcvbuf: int = 4 * 1024 * 1024
    tcp_max_connections: int = 1024
    tcp_first_message_timeout: float = 10.0
    tcp_idle_timeout: float = 600.0
    tcp_max_write_buffer: int = 256 * 1024


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 65535:
            metrics.SIP_PARSE_ERRORS.inc()
            return
        self.owner._deliver(data, Flow("UDP", (addr[0], addr[1]), len(data)))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class _Tcp(asyncio.Protocol):
    """One TCP connection, accepted (``outbound`` False) or opened by us to send."""

    def __init__(self, owner: SipTransport, outbound: bool = False) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.remote: Address = ("", 0)
        self.timer: asyncio.TimerHandle | None = None
        #: A valid SIP message has been received (or we opened the connection ourselves).
        self.proven = outbound
        self.bad_in_a_row = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(asyncio.Transport): uvloop's TCPTransport does not derive from it but
        # has the same methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        limits = self.owner.limits
        if len(self.owner._tcp) >= limits.tcp_max_connections:
            self.close("limit")
            return
        self.owner._tcp[self.remote] = self
        if self.proven:
            self._arm(limits.tcp_idle_timeout, "idle")
        else:
            self._arm(limits.tcp_first_message_timeout, "no_message")

    def _arm(self, delay: float, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, self.close, reason)

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            metrics.SIP_TCP_CLOSED.labels(reason=reason).inc()
            log.debug("closing SIP/TCP %s: %s", self.remote, reason)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            metrics.SIP_PARSE_ERRORS.inc()
            log.info("closing SIP/TCP %s: %s", self.remote, exc)
            self.close("framing")
            return
        for message in messages:
            if self.owner._deliver(message, Flow("TCP", self.remote, len(message))):
                self.proven = True
                self.bad_in_a_row = 0
            else:
                self.bad_in_a_row += 1
                if self.bad_in_a_row >= MAX_BAD_MESSAGES:
                    self.close("bad_messages")
                    return
        if self.proven:
            # before the first valid message, the first-message deadline stands
            self._arm(self.owner.limits.tcp_idle_timeout, "idle")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.owner._tcp.get(self.remote) is self:
            del self.owner._tcp[self.remote]

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(data) > self.owner.limits.tcp_max_write_buffer:
            self.close("write_buffer")  # the peer does not read what we send
            return
        transport.write(data)


class SipTransport:
    """UDP and TCP on the same host and port. ``start`` returns the bound port (port 0 picks
    a free one that is free for both)."""

    def __init__(
        self,
        on_message: Callable[[bytes, Flow], bool],
        limits: TransportLimits | None = None,
    ) -> None:
        self.on_message = on_message
        self.limits = limits or TransportLimits()
        self.host = ""
        self.port = 0
        #: The UDP receive buffer the kernel reports after our request (Linux reports twice
        #: the usable size), 0 before ``start``.
        self.udp_rcvbuf = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tcp: dict[Address, _Tcp] = {}
        self._connecting: set[asyncio.Task[None]] = set()

    @property
    def tcp_connections(self) -> int:
        return len(self._tcp)

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port)
            )
            bound = udp.get_extra_info("sockname")[1]
            try:
                server = await loop.create_server(lambda: _Tcp(self), host, bound)
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp, self._server = udp, server
            self.host, self.port = host, int(bound)
            self._set_udp_rcvbuf(udp)
            return self.port
        raise OSError("could not bind SIP UDP and TCP on one port")  # pragma: no cover

    def _set_udp_rcvbuf(self, udp: asyncio.DatagramTransport) -> None:
        """Ask for ``limits.udp_rcvbuf`` bytes; log what the kernel granted (Linux caps the
        request at net.core.rmem_max and reports double the usable size)."""
        sock = udp.get_extra_info("socket")
        wanted = self.limits.udp_rcvbuf
        try:
            if wanted > 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            self.udp_rcvbuf = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except OSError as exc:  # pragma: no cover - setsockopt on a UDP socket does not fail
            log.warning("SIP UDP receive buffer: cannot set %d bytes: %s", wanted, exc)
            return
        metrics.SIP_UDP_RCVBUF.set(self.udp_rcvbuf)
        capped = " (capped: raise net.core.rmem_max)" if self.udp_rcvbuf < wanted else ""
        log.info(
            "SIP UDP receive buffer: %d bytes requested, kernel reports %d%s",
            wanted,
            self.udp_rcvbuf,
            capped,
        )

    async def stop(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for conn in list(self._tcp.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._tcp.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def _deliver(self, data: bytes, flow: Flow) -> bool:
        """Hand one message up; True when it was a valid SIP message."""
        try:
            return self.on_message(data, flow)
        except Exception:  # the socket handler must never die
            log.exception("SIP message handler failed")
            return True  # our bug, not the peer's

    def send(self, flow: Flow, data: bytes) -> None:
        """Send now on UDP or on the flow's TCP connection; when that connection is gone, a
        new one is opened to the same address in the background (best effort)."""
        if flow.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(data, flow.remote)
            return
        conn = self._tcp.get(flow.remote)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.write(data)
            return
        task = asyncio.get_running_loop().create_task(self._connect_and_send(flow.remote, data))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_and_send(self, remote: Address, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Tcp(self, outbound=True), remote[0], remote[1]),
                5.0,
            )
        except (OSError, TimeoutError) as exc:
            log.info("SIP/TCP connect to %s failed: %s", remote, exc)
            return
        proto.write(data)
