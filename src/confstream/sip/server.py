"""The SIP user agent server (CONTRACT §5): the asyncio glue around the sans-I/O parts.

Bytes come from :mod:`confstream.sip.transport`; this module parses them, runs the
transactions (:mod:`.transaction`), dialogs (:mod:`.dialog`), digest auth (:mod:`.digest`) and
SDP offer/answer (:mod:`.sdp`), and talks to the rest of the server only through the
:class:`~confstream.conference.gateway.ConferenceGateway` and the RTP session.

Behaviour, by method:

* ``INVITE`` (initial): Digest-authenticated (username = AccountSid, password = AuthToken);
  no credentials -> 401, wrong ones -> 403, expired nonce -> 401 ``stale=true``. Answers to
  requests not yet authenticated (401, 403, 415, 420, 481) are sent once, never on Timer G,
  and over UDP only when at most :data:`AMPLIFICATION_LIMIT` times the size of the request,
  so that the server cannot be used as a UDP amplifier. A source with too many failed attempts is
  blocked for a while (:class:`~.digest.FailureThrottle`): its initial INVITEs are dropped
  over UDP and answered 403 over TCP, without checking (docs/sip.md "Limits"). Then 100,
  RTP port, ``gateway.incoming_call`` (its :class:`JoinRefused` status is sent), 200 with the SDP
  answer.
  No common codec -> 488. The Request-URI user part, URL-unescaped, is the conference name.
  An INVITE without SDP gets our offer in the 200 and the answer is read from the ACK.
* ``INVITE`` (re-INVITE): new SDP; ``sendonly``/``inactive``/``c=0.0.0.0`` is hold.
* ``ACK``, ``BYE`` (both ways), ``CANCEL`` (487 to the INVITE), ``OPTIONS`` (200).
* Other known methods -> 405 with ``Allow``; unknown methods -> 501; malformed -> 400 when a
  Via can be read, otherwise dropped. Every parse failure counts in
  ``confstream_sip_parse_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from confstream import metrics
from confstream.conference.base import Frame
from confstream.conference.gateway import ConferenceGateway, IncomingCall, JoinRefused
from confstream.rtp.ports import RtpPortPool, RtpPortsExhausted
from confstream.rtp.session import RtpSession
from confstream.settings import Settings
from confstream.sip.dialog import Dialog, DialogState, new_branch, new_tag
from confstream.sip.digest import (
    DigestAuthenticator,
    DigestOutcome,
    DigestParseError,
    FailureThrottle,
    parse_authorization,
)
from confstream.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    format_host,
    parse_message,
    salvage_request_headers,
    stamp_via,
)
from confstream.sip.sdp import (
    LocalSdp,
    Negotiated,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    negotiate,
)
from confstream.sip.transaction import (
    ClientNonInviteTransaction,
    Deliver,
    Output,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimedOut,
    TimerConfig,
    Transaction,
    Transmit,
)
from confstream.sip.transport import Flow, SipTransport, TransportLimits

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
#: Methods we know but do not serve: 405 with Allow (anything else unknown: 501).
KNOWN_UNSERVED = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "INFO", "UPDATE", "PRACK", "PUBLISH"}
)
USER_AGENT = "confstream"
#: At most one "source blocked" log line per this many seconds (the others are counted in it).
AUTH_LOG_INTERVAL = 10.0
#: Over UDP, an answer to a request not authenticated is sent only when it is at most this many
#: times the size of the request (the anti-amplification factor of QUIC, RFC 9000 §8). Real
#: INVITEs are far larger than their 401; a 139-byte minimal INVITE draws a 326-byte one.
AMPLIFICATION_LIMIT = 3

ServerTxn = ServerInviteTransaction | ServerNonInviteTransaction


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

    def read_frame(self) -> Frame | None:
        return self.session.read_frame()

    def write_frame(self, frame: Frame) -> None:
        self.session.write_frame(frame)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.session.send_dtmf(digit, duration_ms)

    def hangup(self, reason: str) -> None:
        self._on_hangup(reason)


@dataclass
class SipCall:
    """One caller: its INVITE transaction, dialog (once answered), RTP session, participant."""

    call_sid: str
    flow: Flow
    invite: SipRequest
    invite_txn: ServerInviteTransaction
    account_sid: str
    conference_name: str
    local_tag: str
    session: RtpSession | None = None
    participant: SipParticipant | None = None
    dialog: Dialog | None = None
    local_sdp: LocalSdp | None = None
    joined: bool = False
    ended: bool = False
    awaiting_answer_in_ack: bool = False
    pending_bye: str | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def _txn_key(branch: str, sent_by: str, method: str) -> tuple[str, str, str]:
    return (branch, sent_by, "INVITE" if method == "ACK" else method)


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
        self._auth_log_next = 0.0
        self._auth_blocks_unlogged = 0
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
        #: Live calls by CallSid (answered or being set up).
        self.calls: dict[str, SipCall] = {}
        self._dialogs: dict[tuple[str, str], SipCall] = {}
        self._server_txns: dict[tuple[str, str, str], ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], ClientNonInviteTransaction] = {}
        self._txn_flow: dict[Transaction, Flow] = {}
        self._timer_handles: dict[Transaction, asyncio.TimerHandle] = {}
        self._txn_keys: dict[Transaction, tuple[str, str, str] | tuple[str, str]] = {}
        #: Transactions whose response would amplify (see AMPLIFICATION_LIMIT): never sent.
        self._muted: set[Transaction] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.settings.sip_address
        self._loop = asyncio.get_running_loop()
        self.port = await self.transport.start(host, port)
        self.host = host

    async def stop(self) -> None:
        """BYE to every live call, wait briefly for the leaves, close the sockets."""
        for call in list(self.calls.values()):
            self._hangup(call, "server-shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await asyncio.sleep(0)
        for handle in self._timer_handles.values():
            handle.cancel()
        self._timer_handles.clear()
        self._server_txns.clear()
        self._client_txns.clear()
        self._txn_flow.clear()
        self._txn_keys.clear()
        self._muted.clear()
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
    def live_transactions(self) -> int:
        return len(self._server_txns) + len(self._client_txns)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Coroutine[Any, Any, Any], call: SipCall | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if call is not None:
            call.tasks.add(task)
            task.add_done_callback(call.tasks.discard)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    # -- sending and timers ------------------------------------------------------------------

    def _send(self, flow: Flow, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            metrics.SIP_MESSAGES.labels(direction="out", kind=str(message.status)).inc()
        else:
            metrics.SIP_MESSAGES.labels(direction="out", kind=message.method).inc()
        flow.send(message.serialize())

    def _run(self, txn: Transaction, outputs: list[Output]) -> None:
        flow = self._txn_flow.get(txn)
        for out in outputs:
            if isinstance(out, Transmit) and flow is not None:
                if txn in self._muted:
                    metrics.SIP_RESPONSES_SUPPRESSED.inc()
                    continue
                self._send(flow, out.message)
            elif isinstance(out, TimedOut):
                self._on_txn_timeout(txn)
            elif isinstance(out, Deliver):
                pass  # BYE responses need no action: the call is already torn down
        self._arm(txn)

    def _arm(self, txn: Transaction) -> None:
        handle = self._timer_handles.pop(txn, None)
        if handle is not None:
            handle.cancel()
        if txn.terminated:
            self._forget(txn)
            return
        deadline = txn.next_deadline()
        if deadline is not None and self._loop is not None:
            self._timer_handles[txn] = self._loop.call_at(deadline, self._fire, txn)

    def _fire(self, txn: Transaction) -> None:
        self._timer_handles.pop(txn, None)
        self._run(txn, txn.on_timer(self._now()))

    def _forget(self, txn: Transaction) -> None:
        self._txn_flow.pop(txn, None)
        self._muted.discard(txn)
        key = self._txn_keys.pop(txn, None)
        if key is None:
            return
        if len(key) == 3:
            self._server_txns.pop(key, None)
        else:
            self._client_txns.pop(key, None)

    def _register(self, txn: ServerTxn, key: tuple[str, str, str], flow: Flow) -> None:
        self._server_txns[key] = txn
        self._txn_keys[txn] = key
        self._txn_flow[txn] = flow

    def _respond(
        self,
        txn: ServerTxn,
        request: SipRequest,
        status: int,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        retransmit: bool = True,
    ) -> None:
        """``retransmit=False``: a final sent once, for requests not authenticated."""
        if txn.state not in (State.TRYING, State.PROCEEDING):
            return
        extra = [("server", USER_AGENT), *(headers or [])]
        if status >= 200 and to_tag is None:
            to_tag = new_tag()
        response = build_response(request, status, to_tag=to_tag, headers=extra, body=body)
        if not retransmit:
            flow = self._txn_flow.get(txn)
            if flow is not None and not flow.reliable:
                if len(response.serialize()) > AMPLIFICATION_LIMIT * flow.size:
                    self._muted.add(txn)  # the transaction still absorbs retransmissions
        self._run(txn, txn.send_response(response, self._now(), retransmit=retransmit))

    # -- receiving -----------------------------------------------------------------------------

    def _on_message(self, data: bytes, flow: Flow) -> bool:
        """Handle one message; False when it was not valid SIP (the transport counts those)."""
        if not data.strip(b"\r\n"):
            return True  # keep-alive
        try:
            msg = parse_message(data)
            if isinstance(msg, SipRequest):
                # the mandatory headers must be readable (RFC 3261 §8.1.1)
                stamp_via(msg, flow.remote[0], flow.remote[1])
                msg.top_via  # noqa: B018
                msg.call_id  # noqa: B018
                msg.from_  # noqa: B018
                msg.to  # noqa: B018
                cseq = msg.cseq
                if cseq.method != msg.method and msg.method not in ("ACK", "CANCEL"):
                    raise SipParseError("CSeq method does not match")
            else:
                msg.top_via  # noqa: B018
                msg.cseq  # noqa: B018
        except SipParseError as exc:
            metrics.SIP_PARSE_ERRORS.inc()
            log.debug("bad SIP message from %s: %s", flow.remote, exc)
            salvaged = salvage_request_headers(data)
            if salvaged is not None and not data.lstrip().upper().startswith(b"ACK "):
                h = Headers([*salvaged, ("server", USER_AGENT)])
                flow.send(SipResponse(h, b"", 400, "Bad Request").serialize())
                metrics.SIP_MESSAGES.labels(direction="out", kind="400").inc()
            return False
        if isinstance(msg, SipResponse):
            metrics.SIP_MESSAGES.labels(direction="in", kind="response").inc()
            self._on_response(msg)
        else:
            kind = msg.method if msg.method in KNOWN_UNSERVED or msg.method in ALLOW else "other"
            metrics.SIP_MESSAGES.labels(direction="in", kind=kind).inc()
            self._on_request(msg, flow)
        return True

    def _on_response(self, response: SipResponse) -> None:
        via = response.top_via
        txn = self._client_txns.get((via.branch or "", response.cseq.method))
        if txn is not None:
            self._run(txn, txn.on_response(response, self._now()))

    def _on_request(self, request: SipRequest, flow: Flow) -> None:
        via = request.top_via
        sent_by = f"{via.host}:{via.port or ''}"
        branch = via.branch or f"{request.call_id}/{request.cseq.number}"
        key = _txn_key(branch, sent_by, request.method)
        now = self._now()

        if request.method == "ACK":
            existing = self._server_txns.get(key)
            if isinstance(existing, ServerInviteTransaction) and existing.state in (
                State.COMPLETED,
                State.CONFIRMED,
            ):
                self._run(existing, existing.on_ack(now))
                return
            self._on_ack_2xx(request)
            return

        existing = self._server_txns.get(key)
        if existing is not None:
            self._run(existing, existing.on_request(now))
            return

        if request.method == "INVITE":
            if not request.to.tag and self.throttle.blocked(flow.remote[0], now):
                self._refuse_blocked(request, flow)
                return
            itxn = ServerInviteTransaction(request, flow.reliable, self.timers)
            self._register(itxn, key, flow)
            if request.to.tag:
                self._on_reinvite(request, itxn, flow)
            else:
                self._on_initial_invite(request, itxn, flow)
            return
        txn = ServerNonInviteTransaction(request, flow.reliable, self.timers)
        self._register(txn, key, flow)
        method = request.method
        if method == "CANCEL":
            self._on_cancel(request, txn, branch, sent_by)
        elif method == "BYE":
            self._on_bye(request, txn)
        elif method == "OPTIONS":
            self._respond(
                txn,
                request,
                200,
                headers=[
                    ("allow", ALLOW),
                    ("accept", "application/sdp"),
                    ("accept-encoding", "identity"),
                    ("accept-language", "en"),
                ],
            )
        elif method in KNOWN_UNSERVED:
            self._respond(txn, request, 405, headers=[("allow", ALLOW)])
        else:
            self._respond(txn, request, 501, headers=[("allow", ALLOW)])

    # -- INVITE ----------------------------------------------------------------------------------

    def _on_initial_invite(
        self, request: SipRequest, txn: ServerInviteTransaction, flow: Flow
    ) -> None:
        if request.body and request.content_type not in ("application/sdp", ""):
            self._respond(
                txn, request, 415, headers=[("accept", "application/sdp")], retransmit=False
            )
            return
        if request.headers.get("require"):
            unsupported = request.headers.get_all("require")
            self._respond(
                txn,
                request,
                420,
                headers=[("unsupported", ", ".join(unsupported))],
                retransmit=False,
            )
            return
        self._spawn(self._handle_invite(request, txn, flow))

    async def _authenticate(self, request: SipRequest, txn: ServerInviteTransaction) -> str | None:
        """The authenticated AccountSid, or None once a 401/403 has been sent."""
        header = request.headers.get("authorization")
        now = self._now()
        if header is None:
            self._challenge(request, txn, stale=False)
            return None
        try:
            creds = parse_authorization(header)
        except DigestParseError:
            metrics.SIP_AUTH_FAILURES.labels(reason="malformed").inc()
            self._challenge(request, txn, stale=False)
            return None
        password = await self.gateway.auth_token(creds.username)
        outcome = self.auth.verify(
            creds, method=request.method, request_uri=request.uri, password=password, now=now
        )
        if outcome is DigestOutcome.OK:
            return creds.username
        if outcome is DigestOutcome.STALE:
            metrics.SIP_AUTH_FAILURES.labels(reason="stale").inc()
            self._challenge(request, txn, stale=True)
        elif outcome is DigestOutcome.CHALLENGE:
            metrics.SIP_AUTH_FAILURES.labels(reason="bad_nonce").inc()
            self._challenge(request, txn, stale=False)
        else:
            reason = "unknown_account" if password is None else "bad_credentials"
            metrics.SIP_AUTH_FAILURES.labels(reason=reason).inc()
            flow = self._txn_flow.get(txn)
            if flow is not None:
                self._auth_failed(flow.remote[0])
            self._respond(txn, request, 403, retransmit=False)
        return None

    def _challenge(self, request: SipRequest, txn: ServerInviteTransaction, stale: bool) -> None:
        headers = [("www-authenticate", c) for c in self.auth.challenges(self._now(), stale)]
        self._respond(txn, request, 401, headers=headers, retransmit=False)

    def _auth_failed(self, source: str) -> None:
        """Count a refused credential; log blocks, at most one line per AUTH_LOG_INTERVAL."""
        now = self._now()
        if not self.throttle.failure(source, now):
            return
        metrics.SIP_AUTH_BLOCKS.inc()
        if now < self._auth_log_next:
            self._auth_blocks_unlogged += 1
            return
        log.warning(
            "SIP digest: blocking %s for %.0f s after %d failed attempts within %.0f s"
            " (%d more sources blocked since the last such line)",
            source,
            self.throttle.block_seconds,
            self.throttle.max_failures,
            self.throttle.window,
            self._auth_blocks_unlogged,
        )
        self._auth_blocks_unlogged = 0
        self._auth_log_next = now + AUTH_LOG_INTERVAL

    def _refuse_blocked(self, request: SipRequest, flow: Flow) -> None:
        """An initial INVITE from a blocked source: dropped over UDP (the source may be
        spoofed), a stateless 403 over TCP (the handshake proved the address)."""
        metrics.SIP_AUTH_THROTTLED.inc()
        if flow.reliable:
            headers = [
                ("server", USER_AGENT),
                ("retry-after", str(int(self.throttle.block_seconds))),
            ]
            self._send(flow, build_response(request, 403, to_tag=new_tag(), headers=headers))

    async def _handle_invite(
        self, request: SipRequest, txn: ServerInviteTransaction, flow: Flow
    ) -> None:
        try:
            account_sid = await self._authenticate(request, txn)
        except Exception:
            log.exception("auth lookup failed")
            self._respond(txn, request, 500)
            return
        if account_sid is None or txn.state is not State.PROCEEDING:
            return
        try:
            name = request.request_uri.user_unescaped
        except SipParseError:
            name = ""
        if not name:
            self._respond(txn, request, 404)
            return
        self._respond(txn, request, 100)

        offer: SessionDescription | None = None
        neg: Negotiated | None = None
        try:
            if request.body.strip():
                offer = SessionDescription.parse(request.body)
                neg = negotiate(offer)
            dialog = Dialog.from_invite(request, new_tag())
        except NoCommonCodec:
            self._respond(txn, request, 488, headers=[("warning", '304 confstream "no PCMU/PCMA"')])
            return
        except (SdpError, SipParseError) as exc:
            self._respond(txn, request, 400, headers=[("warning", f'399 confstream "{exc}"')])
            return

        call_sid = str(uuid.uuid4())
        call = SipCall(
            call_sid=call_sid,
            flow=flow,
            invite=request,
            invite_txn=txn,
            account_sid=account_sid,
            conference_name=name,
            local_tag=dialog.local_tag,
        )
        self.calls[call_sid] = call
        session = RtpSession(
            call_sid=call_sid,
            local_host=self._rtp_bind_host(),
            port_pool=self.port_pool,
            inactivity_timeout=self.settings.rtp_inactivity_timeout,
            on_dtmf=lambda digit, ms: self.gateway.dtmf_received(call_sid, digit, ms),
            on_timeout=lambda: self._hangup(call, "rtp-timeout"),
            # docs/sip.md "RTP security": media only from the SDP address or, latched once,
            # from the IP this INVITE came from.
            signalling_ip=flow.remote[0],
            latching=self.settings.rtp_latching,
        )
        call.session = session
        participant = SipParticipant(call_sid, session, lambda reason: self._hangup(call, reason))
        call.participant = participant
        try:
            port = await session.open()
        except (RtpPortsExhausted, OSError, RuntimeError) as exc:
            log.warning("no RTP port for call %s: %s", call_sid, exc)
            self._end_setup(call, 503)
            return
        local = LocalSdp(self.advertised_host, port)
        call.local_sdp = local
        if neg is not None and offer is not None:
            session.set_remote(
                neg.remote_host, neg.remote_port, neg.payload_type, neg.telephone_event_pt
            )
            participant.hold = neg.hold
            session.suspend_inactivity(neg.hold)
            body = local.answer(offer, neg)
        else:
            call.awaiting_answer_in_ack = True
            body = local.offer()
        if call.ended or txn.state is not State.PROCEEDING:
            self._end_setup(call, None)
            return
        try:
            await self.gateway.incoming_call(
                self._incoming(call_sid, account_sid, name, request, flow), participant
            )
        except JoinRefused as exc:
            self._end_setup(call, exc.sip_status if 300 <= exc.sip_status < 700 else 403)
            return
        except Exception:
            log.exception("join failed for call %s", call_sid)
            self._end_setup(call, 500)
            return
        call.joined = True
        if call.ended or txn.state is not State.PROCEEDING:
            # cancelled (487 already sent) or hung up while joining
            if txn.state is State.PROCEEDING:
                self._respond(txn, request, 480)
            self._teardown(call, call.pending_bye or "cancelled")
            return
        call.dialog = dialog
        self._dialogs[dialog.key] = call
        self._respond(
            txn,
            request,
            200,
            to_tag=dialog.local_tag,
            headers=[
                ("contact", self._contact(flow)),
                ("allow", ALLOW),
                ("content-type", "application/sdp"),
            ],
            body=body,
        )

    @staticmethod
    def _incoming(
        call_sid: str, account_sid: str, name: str, request: SipRequest, flow: Flow
    ) -> IncomingCall:
        try:
            caller = request.from_
            from_uri, caller_name = str(caller.uri), caller.display
        except SipParseError:
            from_uri, caller_name = "", None
        try:
            to_uri = str(request.to.uri)
        except SipParseError:
            to_uri = request.uri
        return IncomingCall(
            call_sid=call_sid,
            account_sid=account_sid,
            request_user=name,
            from_uri=from_uri,
            to_uri=to_uri,
            caller_name=caller_name,
            sip_headers=tuple((k, v) for k, v in request.headers if k.lower().startswith("x-")),
            source=(flow.remote[0], flow.remote[1]),
            transport=flow.transport,
        )

    def _end_setup(self, call: SipCall, status: int | None) -> None:
        if status is not None:
            self._respond(call.invite_txn, call.invite, status)
        self._teardown(call, "setup-failed")

    def _rtp_bind_host(self) -> str:
        return self.host if self.host not in ("",) else "0.0.0.0"

    def _contact(self, flow: Flow) -> str:
        params = ";transport=tcp" if flow.transport == "TCP" else ""
        return f"<sip:{format_host(self.advertised_host)}:{self.port}{params}>"

    def _on_reinvite(self, request: SipRequest, txn: ServerInviteTransaction, flow: Flow) -> None:
        call = self._dialogs.get((request.call_id, request.to.tag or ""))
        if call is None or call.dialog is None or not call.dialog.matches(request):
            self._respond(txn, request, 481, retransmit=False)
            return
        dialog = call.dialog
        if not dialog.accept_remote_cseq(request.cseq.number):
            self._respond(txn, request, 500)
            return
        if call.invite_txn.state is State.ACCEPTED and not call.invite_txn.ack_received:
            self._respond(txn, request, 500, headers=[("retry-after", "1")])
            return
        dialog.update_target(request)
        assert call.local_sdp is not None and call.session is not None
        ok_headers = [
            ("contact", self._contact(flow)),
            ("allow", ALLOW),
            ("content-type", "application/sdp"),
        ]
        if not request.body.strip():
            call.awaiting_answer_in_ack = True
            call.invite_txn = txn
            body = call.local_sdp.offer()
            self._respond(txn, request, 200, to_tag=dialog.local_tag, headers=ok_headers, body=body)
            return
        try:
            offer = SessionDescription.parse(request.body)
            neg = negotiate(offer)
        except NoCommonCodec:
            self._respond(txn, request, 488, to_tag=dialog.local_tag)
            return
        except SdpError:
            self._respond(txn, request, 400, to_tag=dialog.local_tag)
            return
        self._apply(call, neg)
        call.invite_txn = txn
        body = call.local_sdp.answer(offer, neg)
        self._respond(txn, request, 200, to_tag=dialog.local_tag, headers=ok_headers, body=body)

    def _apply(self, call: SipCall, neg: Negotiated) -> None:
        assert call.session is not None and call.participant is not None
        if not neg.hold:
            call.session.set_remote(
                neg.remote_host, neg.remote_port, neg.payload_type, neg.telephone_event_pt
            )
        call.session.suspend_inactivity(neg.hold)
        if call.participant.hold != neg.hold:
            call.participant.hold = neg.hold
            if call.joined:
                self.gateway.hold_changed(call.call_sid, neg.hold)

    def _on_ack_2xx(self, request: SipRequest) -> None:
        call = self._dialogs.get((request.call_id, request.to.tag or ""))
        if call is None or call.dialog is None:
            return
        if request.cseq.number != call.invite_txn.request.cseq.number:
            return
        txn = call.invite_txn
        if txn.state is State.ACCEPTED and not txn.ack_received:
            self._run(txn, txn.on_ack(self._now()))
        if call.awaiting_answer_in_ack:
            call.awaiting_answer_in_ack = False
            if request.body.strip():
                try:
                    self._apply(call, negotiate(SessionDescription.parse(request.body)))
                except SdpError:
                    self._hangup(call, "bad-sdp-in-ack")
                    return
            else:
                self._hangup(call, "no-sdp-answer")
                return
        if call.pending_bye is not None:
            self._send_bye(call, call.pending_bye)

    # -- CANCEL, BYE ---------------------------------------------------------------------------

    def _on_cancel(
        self, request: SipRequest, txn: ServerNonInviteTransaction, branch: str, sent_by: str
    ) -> None:
        invite_txn = self._server_txns.get(_txn_key(branch, sent_by, "INVITE"))
        if not isinstance(invite_txn, ServerInviteTransaction):
            self._respond(txn, request, 481)
            return
        self._respond(txn, request, 200)
        if invite_txn.state is State.PROCEEDING:
            self._respond(invite_txn, invite_txn.request, 487)
            for call in self.calls.values():
                if call.invite_txn is invite_txn and call.dialog is None:
                    call.ended = True  # _handle_invite tears it down when its await returns

    def _on_bye(self, request: SipRequest, txn: ServerNonInviteTransaction) -> None:
        call = self._dialogs.get((request.call_id, request.to.tag or ""))
        if call is None or call.dialog is None or not call.dialog.matches(request):
            self._respond(txn, request, 481)
            return
        if not call.dialog.accept_remote_cseq(request.cseq.number):
            self._respond(txn, request, 500)
            return
        self._respond(txn, request, 200)
        self._teardown(call, "caller-bye")

    # -- hanging up ----------------------------------------------------------------------------

    def _hangup(self, call: SipCall, reason: str) -> None:
        """Server-side hang-up: BYE when answered (after the ACK), then tear down."""
        if call.ended and call.dialog is None:
            return
        if call.dialog is None:
            # still being set up: _handle_invite sees this flag after its await
            call.ended = True
            call.pending_bye = reason
            return
        if call.dialog.state is DialogState.TERMINATED:
            return
        txn = call.invite_txn
        if txn.state is State.ACCEPTED and not txn.ack_received and reason != "no-ack":
            call.pending_bye = reason  # RFC 3261 §15: no BYE before the ACK (or its timeout)
            self._teardown_media(call, reason)
            return
        self._send_bye(call, reason)

    def _send_bye(self, call: SipCall, reason: str) -> None:
        dialog = call.dialog
        if dialog is None or dialog.state is DialogState.TERMINATED:
            return
        flow = call.flow
        via = (
            f"SIP/2.0/{flow.transport} {format_host(self.advertised_host)}:{self.port}"
            f";branch={new_branch()};rport"
        )
        bye = dialog.make_request("BYE", via)
        bye.headers.add("reason", f'SIP;cause=200;text="{reason}"')
        bye.headers.add("user-agent", USER_AGENT)
        txn = ClientNonInviteTransaction(bye, flow.reliable, self.timers)
        branch = bye.top_via.branch or ""
        self._client_txns[(branch, "BYE")] = txn
        self._txn_keys[txn] = (branch, "BYE")
        self._txn_flow[txn] = flow
        self._run(txn, txn.start(self._now()))
        self._teardown(call, reason)

    def _on_txn_timeout(self, txn: Transaction) -> None:
        if isinstance(txn, ServerInviteTransaction) and txn.state is State.TERMINATED:
            for call in list(self.calls.values()):
                if call.invite_txn is txn and call.dialog is not None and not txn.ack_received:
                    log.info("call %s: no ACK for the 2xx, hanging up", call.call_sid)
                    self._send_bye(call, call.pending_bye or "no-ack")

    def _teardown_media(self, call: SipCall, reason: str) -> None:
        if call.session is not None:
            call.session.close()
        if call.joined:
            call.joined = False
            self._spawn(self._leave(call.call_sid, reason))

    def _teardown(self, call: SipCall, reason: str) -> None:
        """Close RTP, leave the conference, forget the dialog. Idempotent."""
        call.ended = True
        if call.dialog is not None:
            call.dialog.state = DialogState.TERMINATED
            self._dialogs.pop(call.dialog.key, None)
        self._teardown_media(call, reason)
        self.calls.pop(call.call_sid, None)

    async def _leave(self, call_sid: str, reason: str) -> None:
        try:
            await self.gateway.leave(call_sid, reason)
        except Exception:
            log.exception("gateway.leave failed for %s", call_sid)


__all__ = ["SipCall", "SipParticipant", "SipServer"]
