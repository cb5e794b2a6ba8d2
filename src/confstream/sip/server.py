"""The SIP user agent server: asyncio glue around the sans-I/O core (docs/sip.md).

Every SIP decision is made by :class:`~confstream.sip.core.SipCore`; this module owns what the
core cannot: the sockets (:mod:`confstream.sip.transport`), the clock and timers, the RTP
sessions, the tasks, and the calls into the rest of the server through the
:class:`~confstream.conference.gateway.ConferenceGateway`. It feeds events to the core and
executes the actions it returns:

* ``Send`` -> the transport; ``ArmTimer``/``CancelTimer`` -> ``loop.call_at``;
* ``LookupToken`` -> ``gateway.auth_token`` in a task, answered with ``auth_result``;
* ``OpenRtp`` -> a new :class:`~confstream.rtp.session.RtpSession` and its
  :class:`SipParticipant`, opened in a task, answered with ``rtp_opened``/``rtp_failed``;
* ``ApplyMedia`` -> the session's remote address, payload types and inactivity timer, the
  participant's ``hold`` (``gateway.hold_changed`` when it changes for a joined participant);
* ``CallIncoming`` -> ``gateway.incoming_call`` in a task (a :class:`JoinRefused` gives its
  ``sip_status``, another error 500), answered with ``incoming_call_done``;
* ``CallEnded`` -> the session closed and, when joined, ``gateway.leave`` in a task.

Hang-ups from the rest of the server (:meth:`SipParticipant.hangup`: REST delete, conference
end) and RTP inactivity go to ``SipCore.hangup``.

Outbound calls (:meth:`SipServer.dial`, docs/sip.md "Calling out"): a target that is one of
our own listeners is refused (:class:`~confstream.errors.DialRefused`); otherwise the RTP
session and participant are made at once and the core places the call. Its progress goes to the
call's :class:`~confstream.conference.gateway.DialListener`: ``Dialing`` -> ``dialing``,
``Ringing`` -> ``ringing``, ``Answered`` -> ``answered`` in a task (a refusal hangs up),
``DialFailed`` -> ``failed``; the end of an answered call -> ``ended`` (instead of
``gateway.leave``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from confstream import metrics
from confstream.conference.base import Frame
from confstream.conference.gateway import (
    ConferenceGateway,
    DialListener,
    IncomingCall,
    JoinRefused,
    OutboundCall,
)
from confstream.errors import DialRefused
from confstream.netpolicy import PolicyError, check_address
from confstream.rtp.ports import RtpPortPool, RtpPortsExhausted
from confstream.rtp.session import RtpSession
from confstream.settings import Settings
from confstream.sip.call import Call, Dial
from confstream.sip.core import (
    AMPLIFICATION_LIMIT,
    Action,
    Answered,
    ApplyMedia,
    ArmTimer,
    CallEnded,
    CallIncoming,
    CancelTimer,
    DialFailed,
    Dialing,
    Discarded,
    LookupToken,
    OpenRtp,
    Ringing,
    Send,
    SipCore,
    TimerKey,
)
from confstream.sip.digest import DigestAuthenticator, FailureThrottle
from confstream.sip.flow import Flow
from confstream.sip.message import SipRequest, SipResponse
from confstream.sip.transaction import TimerConfig
from confstream.sip.transport import SipTransport, TransportLimits

log = logging.getLogger(__name__)


class SipParticipant:
    """A SIP caller as a conference :class:`~confstream.conference.base.Participant`.

    Audio and DTMF go to the RTP session; :meth:`hangup` (REST delete, conference end, RTP
    timeout) sends BYE and tears the call down. ``muted`` and ``hold`` are read by the engine;
    ``hold`` follows re-INVITEs.

    It also offers the engine's µ-law fast path (:class:`~confstream.conference.engine.UlawMedia`):
    ``read_ulaw`` and ``write_ulaw`` are the RTP session's own bound methods (the endpoint's for
    reading), set once here so that the per-tick calls go straight to the RTP code.
    """

    def __init__(self, call_sid: str, session: RtpSession, on_hangup: Callable[[str], None]):
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self.session = session
        self._on_hangup = on_hangup
        #: The engine's fast path: 160 µ-law codes, or what read_frame returns.
        self.read_ulaw: Callable[[], bytes | Frame | None] = session.endpoint.read_ulaw
        #: The engine's fast path: send a mix-minus given as µ-law codes (False: not taken).
        self.write_ulaw: Callable[[bytes], bool] = session.write_ulaw

    @property
    def tx_key(self) -> int:
        """The RTP session's key in the send lane (confstream.rtp.txlane), -1 for none: the
        engine hands this participant's µ-law rows to the lane under it."""
        return self.session.tx_key

    def read_frame(self) -> Frame | None:
        return self.session.read_frame()

    def write_frame(self, frame: Frame) -> None:
        self.session.write_frame(frame)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.session.send_dtmf(digit, duration_ms)

    def hangup(self, reason: str) -> None:
        self._on_hangup(reason)


@dataclass
class _Media:
    """What the glue holds for a call: its RTP session and participant."""

    session: RtpSession
    participant: SipParticipant


class SipServer:
    """The SIP edge. ``timers`` (RFC defaults) and ``nonce_secret`` (random) are for tests."""

    def __init__(
        self,
        settings: Settings,
        gateway: ConferenceGateway,
        port_pool: RtpPortPool,
        *,
        timers: TimerConfig | None = None,
        nonce_secret: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.port_pool = port_pool
        self.timers = timers or TimerConfig()
        self.auth = DigestAuthenticator(
            settings.sip_realm,
            secret=nonce_secret,
            nonce_ttl=settings.sip_nonce_ttl,
            algorithms=tuple(settings.sip_digest_algorithms),
        )
        self.throttle = FailureThrottle(
            settings.sip_auth_max_failures,
            settings.sip_auth_failure_window,
            settings.sip_auth_block_seconds,
        )
        self.core = SipCore(
            auth=self.auth,
            throttle=self.throttle,
            timers=self.timers,
            trusted_proxies=settings.sip_trusted_proxy_networks,
            target_allowed=self._target_allowed,
        )
        self.transport = SipTransport(
            self._on_message,
            TransportLimits(
                udp_rcvbuf=settings.sip_udp_rcvbuf,
                tcp_max_connections=settings.sip_tcp_max_connections,
                tcp_first_message_timeout=settings.sip_tcp_first_message_timeout,
                tcp_idle_timeout=settings.sip_tcp_idle_timeout,
                tcp_max_write_buffer=settings.sip_tcp_max_write_buffer,
            ),
        )
        self.port = 0
        self.host = ""
        self._media: dict[str, _Media] = {}
        #: Outbound calls: who hears about their progress.
        self._listeners: dict[str, DialListener] = {}
        self._timer_handles: dict[TimerKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.settings.sip_address
        self._loop = asyncio.get_running_loop()
        self.port = await self.transport.start(host, port)
        self.host = host
        self.core.advertised_host = self.advertised_host
        self.core.port = self.port

    async def stop(self) -> None:
        """BYE to every live call, wait briefly for the leaves, close the sockets."""
        self._execute(self.core.shutdown(self._now()))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await asyncio.sleep(0)
        self._execute(self.core.clear())
        for handle in self._timer_handles.values():
            handle.cancel()
        self._timer_handles.clear()
        await self.transport.stop()

    @property
    def advertised_host(self) -> str:
        """Address written in SDP ``c=`` and Contact: ``media_address``, else the listener's
        host, else 127.0.0.1 when listening on a wildcard address."""
        if self.settings.media_address:
            return self.settings.media_address
        if self.host in ("", "0.0.0.0", "::"):
            return "127.0.0.1"
        return self.host

    @property
    def calls(self) -> dict[str, Call]:
        """Live calls by CallSid (answered or being set up)."""
        return self.core.calls

    @property
    def live_transactions(self) -> int:
        return self.core.live_transactions

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    # -- events in ----------------------------------------------------------------------------

    def _on_message(self, data: bytes, flow: Flow) -> bool:
        """Handle one message; False when it was not valid SIP (the transport counts those)."""
        actions = self.core.receive(data, flow, self._now())
        self._execute(actions)
        return not any(isinstance(a, Discarded) for a in actions)

    def _fire(self, key: TimerKey) -> None:
        self._timer_handles.pop(key, None)
        self._execute(self.core.timer_fired(key, self._now()))

    def _hangup(self, call_sid: str, reason: str) -> None:
        self._execute(self.core.hangup(call_sid, reason, self._now()))

    # -- outbound calls -----------------------------------------------------------------------

    def is_own_listener(self, host: str, port: int) -> bool:
        """True when ``host:port`` reaches our SIP listener (a dial-out there would loop)."""
        if port != self.port:
            return False
        if host == self.host or host == self.advertised_host:
            return True
        if self.host in ("", "0.0.0.0", "::"):
            try:
                check_address(host)
            except PolicyError:
                return True  # a local or private address of a wildcard listener: maybe us
        return False

    def _target_allowed(self, ip: str) -> bool:
        """May an in-dialog request go to ``ip`` (the far end's Contact or first route)?"""
        try:
            check_address(ip, self.settings.allowed_network_objects)
        except PolicyError:
            return False
        return True

    def dial(self, call: OutboundCall, listener: DialListener) -> SipParticipant:
        """Place ``call`` (see the module docstring); returns its participant."""
        host, port = call.address
        if self.is_own_listener(host, port):
            raise DialRefused(f"{host}:{port} is this server's own SIP listener (a call loop)")
        self._listeners[call.call_sid] = listener
        dial = Dial(
            call_sid=call.call_sid,
            account_sid=call.account_sid,
            to_uri=call.to_uri,
            flow=Flow("UDP", (host, port)),
            from_uri=call.from_uri,
            from_display=call.from_display,
            ring_timeout=call.ring_timeout,
            time_limit=call.time_limit,
            auth_username=call.auth_username,
            auth_password=call.auth_password,
            early_media=call.early_media,
        )
        self._execute(self.core.dial(dial, self._now()))
        media = self._media.get(call.call_sid)
        assert media is not None  # OpenRtp made it
        return media.participant

    async def _answered(self, call_sid: str, listener: DialListener) -> None:
        media = self._media.get(call_sid)
        if media is None:
            return
        try:
            await listener.answered(media.participant)
        except JoinRefused as exc:
            log.info("outbound call %s answered but refused: %s", call_sid, exc.message)
            self._hangup(call_sid, "refused")
        except Exception:
            log.exception("outbound call %s: handing the answered call over failed", call_sid)
            self._hangup(call_sid, "application-error")

    # -- actions out --------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.flow, action.message)
            elif isinstance(action, ArmTimer):
                self._arm(action.key, action.at)
            elif isinstance(action, CancelTimer):
                handle = self._timer_handles.pop(action.key, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(action, LookupToken):
                self._spawn(self._lookup(action))
            elif isinstance(action, OpenRtp):
                self._open_rtp(action)
            elif isinstance(action, ApplyMedia):
                self._apply_media(action)
            elif isinstance(action, CallIncoming):
                self._spawn(self._incoming_call(action))
            elif isinstance(action, CallEnded):
                self._call_ended(action)
            elif isinstance(action, Dialing | Ringing | Answered | DialFailed):
                self._progress(action)

    def _progress(self, action: Dialing | Ringing | Answered | DialFailed) -> None:
        listener = self._listeners.get(action.call_sid)
        if listener is None:
            return
        try:
            if isinstance(action, Dialing):
                listener.dialing()
            elif isinstance(action, Ringing):
                listener.ringing()
            elif isinstance(action, Answered):
                self._spawn(self._answered(action.call_sid, listener))
            else:
                self._listeners.pop(action.call_sid, None)
                listener.failed(action.sip_status, action.outcome)
        except Exception:
            log.exception("dial listener of %s failed", action.call_sid)

    def _send(self, flow: Flow, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            metrics.SIP_MESSAGES.labels(direction="out", kind=str(message.status)).inc()
        else:
            metrics.SIP_MESSAGES.labels(direction="out", kind=message.method).inc()
        self.transport.send(flow, message.serialize())

    def _arm(self, key: TimerKey, at: float) -> None:
        handle = self._timer_handles.pop(key, None)
        if handle is not None:
            handle.cancel()
        if self._loop is not None:
            self._timer_handles[key] = self._loop.call_at(at, self._fire, key)

    async def _lookup(self, action: LookupToken) -> None:
        try:
            password = await self.gateway.auth_token(action.account_sid)
        except Exception:
            log.exception("auth lookup failed")
            self._execute(self.core.auth_error(action.lookup, self._now()))
            return
        self._execute(self.core.auth_result(action.lookup, password, self._now()))

    def _open_rtp(self, action: OpenRtp) -> None:
        call_sid = action.call_sid
        session = RtpSession(
            call_sid=call_sid,
            local_host=self._rtp_bind_host(),
            port_pool=self.port_pool,
            inactivity_timeout=self.settings.rtp_inactivity_timeout,
            on_dtmf=lambda digit, ms: self.gateway.dtmf_received(call_sid, digit, ms),
            on_timeout=lambda: self._hangup(call_sid, "rtp-timeout"),
            # docs/sip.md "RTP security": media only from the SDP address or, latched once,
            # from the IP the INVITE came from.
            signalling_ip=action.signalling_ip,
            latching=self.settings.rtp_latching,
        )
        participant = SipParticipant(
            call_sid, session, lambda reason: self._hangup(call_sid, reason)
        )
        self._media[call_sid] = _Media(session, participant)
        self._spawn(self._open(call_sid, session))

    async def _open(self, call_sid: str, session: RtpSession) -> None:
        try:
            port = await session.open()
        except (RtpPortsExhausted, OSError, RuntimeError) as exc:
            log.warning("no RTP port for call %s: %s", call_sid, exc)
            self._execute(self.core.rtp_failed(call_sid, self._now()))
            return
        self._execute(self.core.rtp_opened(call_sid, port, self._now()))

    def _apply_media(self, action: ApplyMedia) -> None:
        media = self._media.get(action.call_sid)
        if media is None:
            return
        neg = action.negotiated
        if action.set_remote:
            media.session.set_remote(
                neg.remote_host, neg.remote_port, neg.payload_type, neg.telephone_event_pt
            )
        media.session.suspend_inactivity(action.hold)
        # compared with the participant itself: the REST API may have changed it
        if media.participant.hold != action.hold:
            media.participant.hold = action.hold
            if action.joined:
                self.gateway.hold_changed(action.call_sid, action.hold)

    async def _incoming_call(self, action: CallIncoming) -> None:
        call_sid = action.call_sid
        media = self._media.get(call_sid)
        refused: int | None = None
        if media is None:
            refused = 500
        else:
            try:
                await self.gateway.incoming_call(action.incoming, media.participant)
            except JoinRefused as exc:
                refused = exc.sip_status
            except Exception:
                log.exception("join failed for call %s", call_sid)
                refused = 500
        self._execute(self.core.incoming_call_done(call_sid, refused, self._now()))

    def _call_ended(self, action: CallEnded) -> None:
        media = self._media.pop(action.call_sid, None)
        if media is not None:
            media.session.close()
        listener = self._listeners.pop(action.call_sid, None)
        if listener is not None:
            if action.joined:
                self._spawn(listener.ended(action.reason))
        elif action.joined:
            self._spawn(self._leave(action.call_sid, action.reason))

    async def _leave(self, call_sid: str, reason: str) -> None:
        try:
            await self.gateway.leave(call_sid, reason)
        except Exception:
            log.exception("gateway.leave failed for %s", call_sid)

    def _rtp_bind_host(self) -> str:
        return self.host if self.host not in ("",) else "0.0.0.0"


__all__ = ["AMPLIFICATION_LIMIT", "IncomingCall", "SipParticipant", "SipServer"]
