"""The only SIP module that touches sockets: one UDP endpoint and one TCP listener.

Received messages are handed to ``on_message(data, flow)`` as raw bytes (one datagram, or one
Content-Length-framed message from a TCP stream); the :class:`Flow` is where answers go:
responses are always sent back on the flow they came from (symmetric signalling, RFC 3581),
which is what makes UAs behind NAT, sipp and baresip work without looking at Via.

Limits (defaults, and why):

* UDP datagrams over :data:`~confstream.sip.message.MAX_MESSAGE_BYTES` are dropped (cannot
  occur on IPv4 anyway).
* TCP: at most ``max_connections`` (1024) at once (more are closed at once); a connection
  whose framing breaks (header block > 32 KiB, body > 64 KiB, bad Content-Length) is counted
  as a parse error and closed, since the stream cannot be resynchronised; connections idle for
  ``idle_timeout`` (default 600 s, longer than any call's re-INVITE interval is not needed since
  we can reconnect for BYE) are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from confstream import metrics
from confstream.sip.message import SipParseError, StreamFramer

log = logging.getLogger(__name__)

Address = tuple[str, int]


class Flow:
    """Where to send: ``transport`` is ``"UDP"`` or ``"TCP"``, ``remote`` the peer address."""

    def __init__(self, owner: SipTransport, transport: str, remote: Address) -> None:
        self.owner = owner
        self.transport = transport
        self.remote = remote

    @property
    def reliable(self) -> bool:
        return self.transport == "TCP"

    def send(self, data: bytes) -> None:
        self.owner.send(self, data)

    def __repr__(self) -> str:
        return f"<Flow {self.transport} {self.remote[0]}:{self.remote[1]}>"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 65535:
            metrics.SIP_PARSE_ERRORS.inc()
            return
        self.owner._deliver(data, Flow(self.owner, "UDP", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.remote: Address = ("", 0)
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        if len(self.owner._tcp) >= self.owner.max_connections:
            transport.close()
            return
        self.owner._tcp[self.remote] = self
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        self.idle = loop.call_later(self.owner.idle_timeout, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            metrics.SIP_PARSE_ERRORS.inc()
            log.info("closing SIP/TCP %s: %s", self.remote, exc)
            assert self.transport is not None
            self.transport.close()
            return
        for message in messages:
            self.owner._deliver(message, Flow(self.owner, "TCP", self.remote))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.owner._tcp.get(self.remote) is self:
            del self.owner._tcp[self.remote]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class SipTransport:
    """UDP and TCP on the same host and port. ``start`` returns the bound port (port 0 picks
    a free one that is free for both)."""

    max_connections = 1024
    idle_timeout = 600.0

    def __init__(self, on_message: Callable[[bytes, Flow], None]) -> None:
        self.on_message = on_message
        self.host = ""
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tcp: dict[Address, _Tcp] = {}
        self._connecting: set[asyncio.Task[None]] = set()

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
            return self.port
        raise OSError("could not bind SIP UDP and TCP on one port")  # pragma: no cover

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

    def _deliver(self, data: bytes, flow: Flow) -> None:
        try:
            self.on_message(data, flow)
        except Exception:  # the socket handler must never die
            log.exception("SIP message handler failed")

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
                loop.create_connection(lambda: _Tcp(self), remote[0], remote[1]), 5.0
            )
        except (OSError, TimeoutError) as exc:
            log.info("SIP/TCP connect to %s failed: %s", remote, exc)
            return
        proto.write(data)
