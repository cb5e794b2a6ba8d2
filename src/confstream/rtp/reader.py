"""Reading every RTP socket once per mixer tick (bench/history.md, section 7).

Each :class:`~confstream.rtp.session.RtpSession` owns a plain non-blocking UDP socket that is
*not* registered with the event loop: an event loop wakes up, and costs several microseconds,
for every datagram that arrives on a socket it watches, and phones send their packets spread
over the 20 ms of a tick. Instead the sockets of one event loop are registered with one
:class:`RtpReader`, which keeps its own ``epoll`` (``poll`` where there is none) and reads
them all at once in :meth:`RtpReader.drain`:

* poll with a timeout of 0, one ``recvfrom`` for every socket reported ready, handed to the
  session's :meth:`RtpEndpoint.receive <confstream.rtp.endpoint.RtpEndpoint.receive>`; poll
  again until nothing is ready. No exception is raised per socket in the common case (polling
  first, instead of reading until ``EAGAIN``).
* Bounded: one datagram per ready socket per round and at most :data:`MAX_PER_SOCKET` rounds,
  so a flood on one port cannot starve the tick; what it leaves waits in the kernel for the
  next drain (or is dropped there when the socket's receive buffer is full, never counted by
  us). A drain that stops at the bound with sockets still ready adds the number of those
  sockets to ``confstream_rtp_drain_capped_total``. Every datagram read is counted exactly
  as before (received, discarded, rejected).
* A session's second socket, connected to its latched source (:mod:`confstream.rtp.session`),
  is registered with that source as its peer: it is read with ``recv`` (the kernel delivers it
  nothing else) and its datagrams are handed over as coming from the peer.
* Errors: an ICMP error (port unreachable after the peer went away) surfaces as an
  ``OSError`` on the next ``recvfrom`` of an unconnected UDP socket; it is ignored, as the
  event loop's ``error_received`` did (the inactivity timeout decides when a peer is gone).
* The pending packet counters (:func:`~confstream.rtp.endpoint.flush_metrics`) are flushed
  once per drain, and when the last socket is unregistered.

When it drains:

* the conference engine's clock calls the module's :func:`drain` at the start of every tick,
  before any participant's frame is read (:attr:`Engine.io_hooks
  <confstream.conference.engine.Engine.io_hooks>`, wired by the app), so a packet that arrived
  during the previous 20 ms is in the jitter buffer when the tick reads it, as when every
  datagram woke the loop;
* otherwise (sessions in no engine, unit tests, a server whose clock is stopped) a fallback
  timer drains: one ``loop.call_at`` per reader, armed while sockets are registered. When
  nobody else drained for :data:`STALE` seconds (the clock is not running: it drains every
  20 ms, and beyond 100 ms late it skips ticks) the timer takes over and drains every
  :data:`PERIOD` until someone else drains again; otherwise it checks again :data:`STALE`
  after the last drain. With the clock running it fires about once per two ticks and does
  nothing; it never drains between late ticks of a loaded clock, so every datagram of a call
  gets its arrival time from the same clock (see below).

Arrival time: every datagram of a drain gets the same ``now``; for a drain by the clock it is
the tick's scheduled time (not ``loop.time()``, which carries the tick's own lateness). What
that does to the RFC 3550 jitter estimate is described in :mod:`confstream.rtp.jitter`
("Arrival times quantised to the tick").

One reader per event loop (:func:`reader_for`), created with the first registered socket and
dropped (its ``epoll`` closed) with the last one.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable

from confstream import metrics
from confstream.rtp.dtmf import DtmfEvent
from confstream.rtp.endpoint import SourceAddress, flush_metrics

__all__ = ["MAX_PER_SOCKET", "PERIOD", "RECV_SIZE", "STALE", "RtpReader", "drain", "reader_for"]

log = logging.getLogger(__name__)

#: At most this many datagrams are read from one socket per drain.
MAX_PER_SOCKET = 16
#: The mixer clock's period, and the fallback timer's once it drains.
PERIOD = 0.020
#: Without a drain for this long the fallback timer takes over.
STALE = 0.050
#: ``recvfrom`` buffer: a UDP datagram on IPv4/IPv6 is never larger, so none is truncated.
RECV_SIZE = 65536

_IN = select.EPOLLIN if hasattr(select, "epoll") else select.POLLIN

#: What the reader calls per datagram of a socket: the endpoint's ``receive`` and the
#: session's handler of completed DTMF events.
Receive = Callable[[bytes, SourceAddress, float], list[DtmfEvent]]
OnEvents = Callable[[list[DtmfEvent]], None]


class RtpReader:
    """The RTP sockets of one event loop, read together (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._poller: select.epoll | select.poll = (
            select.epoll() if hasattr(select, "epoll") else select.poll()
        )
        self._poll = self._poller.poll
        #: fd -> (the socket, its peer for a connected socket else None, the endpoint's
        #: receive, the session's DTMF handler)
        self._entries: dict[int, tuple[socket.socket, SourceAddress | None, Receive, OnEvents]] = {}
        #: loop.time() of the last drain.
        self.last_drain = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        #: True while the fallback timer drains (nobody else did for STALE seconds).
        self._timer_drains = False
        #: Datagrams read and drains run since creation (for tests and the benchmark).
        self.datagrams = 0
        self.drains = 0

    def __len__(self) -> int:
        return len(self._entries)

    def register(
        self,
        sock: socket.socket,
        receive: Receive,
        on_events: OnEvents,
        peer: SourceAddress | None = None,
    ) -> None:
        """Read ``sock`` (non-blocking, bound) from the next drain on. ``peer``: the socket is
        connected to that address (the kernel delivers it nothing else), so it is read with
        ``recv`` and every datagram is handed over as coming from ``peer``."""
        fd = sock.fileno()
        self._poller.register(fd, _IN)
        self._entries[fd] = (sock, peer, receive, on_events)
        if self._timer is None:
            self._timer = self._loop.call_at(self.last_drain + STALE, self._fallback)

    def unregister(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` (before it is closed). Idempotent."""
        fd = sock.fileno()
        if self._entries.pop(fd, None) is None:
            return
        self._poller.unregister(fd)
        if not self._entries:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            flush_metrics()
            if _readers.get(self._loop) is self:
                del _readers[self._loop]
            close = getattr(self._poller, "close", None)  # epoll has one, poll not
            if close is not None:
                close()

    def drain(self, now: float | None = None) -> int:
        """Read what waits on every socket (bounded, see the module docstring); every datagram
        arrives at ``now`` (default ``loop.time()``). Returns the number of datagrams read."""
        self._timer_drains = False
        return self._drain(now)

    def _drain(self, now: float | None) -> int:
        t = self._loop.time()
        self.last_drain = t
        if now is None:
            now = t
        poll = self._poll
        entries = self._entries
        got = 0
        for _ in range(MAX_PER_SOCKET):
            ready = poll(0)
            if not ready:
                break
            for fd, _ev in ready:
                entry = entries.get(fd)
                if entry is None:  # unregistered by a callback during this drain
                    continue
                sock, addr, receive, on_events = entry
                try:
                    if addr is None:
                        data, addr = sock.recvfrom(RECV_SIZE)
                    else:  # connected: only the peer's datagrams, no address to build
                        data = sock.recv(RECV_SIZE)
                except OSError as exc:  # an ICMP error of an earlier send, or nothing after all
                    log.debug("rtp recvfrom: %s", exc)
                    continue
                got += 1
                try:
                    events = receive(data, addr, now)
                except Exception:  # defensive: one bad datagram must never kill the session
                    log.exception("unexpected error handling an RTP datagram")
                    metrics.RTP_DISCARDED.labels(reason="malformed").inc()
                    continue
                if events:
                    on_events(events)
        else:
            left = poll(0)
            if left:
                metrics.RTP_DRAIN_CAPPED.inc(len(left))
        self.datagrams += got
        self.drains += 1
        flush_metrics()
        return got

    def read_pending(
        self, sock: socket.socket, receive: Receive, on_events: OnEvents, limit: int
    ) -> int:
        """Read up to ``limit`` datagrams waiting in ``sock`` now (registered or not), each
        handled as :meth:`drain` handles one, arriving at ``loop.time()``: a session's
        connected socket before it is registered or after it is unregistered (the datagrams
        the kernel handed it then). Returns how many were read."""
        now = self._loop.time()
        got = 0
        for _ in range(limit):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except OSError:  # nothing (left), or an ICMP error of an earlier send
                break
            got += 1
            # (as in _drain, where it is inlined: that loop runs for every datagram)
            try:
                events = receive(data, addr, now)
            except Exception:  # defensive: one bad datagram must never kill the session
                log.exception("unexpected error handling an RTP datagram")
                metrics.RTP_DISCARDED.labels(reason="malformed").inc()
                continue
            if events:
                on_events(events)
        return got

    def _fallback(self) -> None:
        self._timer = None
        if not self._entries:
            return
        loop = self._loop
        if self._timer_drains or loop.time() - self.last_drain >= STALE:
            self._drain(None)
            self._timer_drains = True
            at = self.last_drain + PERIOD
        else:  # someone else drains (the clock): check again later
            at = self.last_drain + STALE
        if self._entries:
            self._timer = loop.call_at(at, self._fallback)


_readers: dict[asyncio.AbstractEventLoop, RtpReader] = {}


def reader_for(loop: asyncio.AbstractEventLoop) -> RtpReader:
    """The reader of ``loop``, created when there is none."""
    reader = _readers.get(loop)
    if reader is None:
        for old in [x for x in _readers if x.is_closed()]:  # loops closed with sockets left
            del _readers[old]
        reader = _readers[loop] = RtpReader(loop)
    return reader


def drain(now: float | None = None) -> int:
    """Drain the running loop's reader, if it has sockets (the engine clock's hook).
    ``now`` is the arrival time given to every datagram (default ``loop.time()``)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return 0
    reader = _readers.get(loop)
    return 0 if reader is None else reader.drain(now)
