"""The SIP user agent core, sans-I/O: every protocol decision of the SIP edge, no sockets, no
clock, no tasks.

Events go in, :data:`Action` lists come out (the style of h11 and python-websockets):

* :meth:`SipCore.receive` — bytes that arrived on a :class:`~confstream.sip.flow.Flow`;
* :meth:`SipCore.timer_fired` — a timer asked for with :class:`ArmTimer` is due;
* :meth:`SipCore.auth_result` / :meth:`SipCore.auth_error` — the answer to :class:`LookupToken`;
* :meth:`SipCore.rtp_opened` / :meth:`SipCore.rtp_failed` — the answer to :class:`OpenRtp`;
* :meth:`SipCore.incoming_call_done` — the answer to :class:`CallIncoming`;
* :meth:`SipCore.hangup` — the server ends a call (REST delete, conference end, RTP timeout);
* :meth:`SipCore.shutdown` — hang up everything.

Every method takes ``now`` (seconds on any monotonic clock; :class:`ArmTimer` deadlines are on
the same clock) and returns the actions to run, in order. The owner
(:class:`confstream.sip.server.SipServer`) executes them and feeds the results of slow work
back in; it never decides anything about SIP itself. The only side effects here besides the
returned actions are Prometheus counters and log lines.

Transactions (:mod:`.transaction`) live in one table keyed by branch, sent-by and method (RFC
3261 §17.2.3) with one timer key each; calls are explicit state machines (:mod:`.call`).

Behaviour (docs/sip.md):

* Initial ``INVITE``: Digest-authenticated (username = AccountSid, password = AuthToken); no
  credentials -> 401, wrong ones -> 403, expired nonce -> 401 ``stale=true``. Answers to
  requests not yet authenticated (401, 403, 415, 420, 481) are sent once, never on Timer G,
  and over UDP only when at most :data:`AMPLIFICATION_LIMIT` times the size of the request
  (docs/sip.md "Limits", "No amplification"). A source with too many failed attempts is
  blocked for a while (:class:`~.digest.FailureThrottle`): its initial INVITEs are dropped over
  UDP and answered 403 over TCP, without checking (docs/sip.md "Guessing passwords"). Then
  100, an RTP port (503 when none), ``gateway.incoming_call`` (its refusal's status is sent),
  200 with the SDP answer. No common codec -> 488. The Request-URI user part, URL-unescaped,
  is the conference name (404 when empty). An INVITE without SDP gets our offer in the 200 and
  the answer is read from the ACK (no answer, or a bad one: BYE).
* ``CANCEL`` of an INVITE not yet answered: 200, 487 to the INVITE; the setup stops when the
  step under way (RTP port, join) reports back.
* re-``INVITE``: new SDP; ``sendonly``/``inactive``/``c=0.0.0.0`` is hold. While our last 2xx
  is not ACKed, another re-INVITE gets 500 with ``Retry-After: 1`` (RFC 3261 §14.2).
* ``ACK`` for our 2xx; without one within Timer L (64·T1) the call gets a BYE. A hangup before
  the ACK closes the media at once and sends the BYE when the ACK (or Timer L) comes.
* ``BYE`` both ways; ``OPTIONS`` 200; requests in an unknown dialog 481; other known methods
  405 with ``Allow``; unknown methods 501; malformed requests 400 when a Via can be read,
  otherwise dropped. Every parse failure counts in ``confstream_sip_parse_errors_total``.
* Behind a proxy (docs/sip.md "Behind a proxy"): the 2xx that makes a dialog copies the
  INVITE's Record-Route values (RFC 3261 §12.1.1); our in-dialog requests carry the route set
  and go back where the INVITE came from (that proxy, the first hop). A request from a
  ``trusted_proxies`` address is keyed by the caller's address that proxy recorded in its Via
  (``received``/``rport``) for the guessing-passwords throttle and RTP latching; a blocked
  caller behind it gets a 403 (the proxy vouches for the address, and would otherwise try the
  next node), and its INVITE with credentials gets ``100 Trying`` at once, before the token
  lookup (the proxy tries another node when no provisional answer comes in time).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confstream import metrics
from confstream.conference.gateway import IncomingCall
from confstream.sip.call import Call, CallEvent, CallState, Direction
from confstream.sip.dialog import Dialog, DialogState, new_branch, new_tag
from confstream.sip.digest import (
    DigestAuthenticator,
    DigestCredentials,
    DigestOutcome,
    DigestParseError,
    FailureThrottle,
    parse_authorization,
)
from confstream.sip.flow import Address, Flow
from confstream.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
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
    Event,
    Output,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimedOut,
    TimerConfig,
    Transaction,
    Transmit,
)

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
#: INVITEs are far larger than their 401; a 139-byte minimal INVITE draws a 326-byte one
#: (docs/sip.md "Limits").
AMPLIFICATION_LIMIT = 3

ServerTxn = ServerInviteTransaction | ServerNonInviteTransaction
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _via_address(via: Via) -> Address | None:
    """Where the hop that wrote ``via`` sent from, as the next hop recorded it: ``received``
    (else the sent-by host, when it is an IP address) and ``rport`` (else the sent-by port)."""
    host = via.params.get("received") or via.host
    if _ip(host) is None:
        return None
    rport = via.params.get("rport")
    port = int(rport) if rport and rport.isdigit() else via.port or 5060
    return host, port


def caller_address(request: SipRequest, flow: Flow, trusted: Sequence[Network]) -> Address:
    """The caller's address: the flow's, or, when the request came from a ``trusted`` proxy,
    the address that proxy recorded in the Via below its own, hop by hop while the hops are
    trusted proxies too. Untrusted or unreadable Vias are never believed."""
    address = flow.remote
    if not trusted:
        return address
    try:
        vias = request.vias
    except SipParseError:
        return address
    for via in vias[1:]:
        ip = _ip(address[0])
        if ip is None or not any(ip in net for net in trusted):
            break
        hop = _via_address(via)
        if hop is None:
            break
        address = hop
    return address


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimerKey:
    """Names one timer of the core; arming a key again replaces its deadline."""

    kind: str
    ident: str


@dataclass(frozen=True)
class Send:
    """Send ``message`` on ``flow`` (UDP datagram, or the TCP connection to that address)."""

    message: SipRequest | SipResponse
    flow: Flow


@dataclass(frozen=True)
class ArmTimer:
    """Call :meth:`SipCore.timer_fired` with ``key`` at time ``at`` (replaces an earlier one)."""

    key: TimerKey
    at: float


@dataclass(frozen=True)
class CancelTimer:
    key: TimerKey


@dataclass(frozen=True)
class LookupToken:
    """Fetch the account's AuthToken; answer with :meth:`SipCore.auth_result` (None: no such
    account) or :meth:`SipCore.auth_error` (the lookup failed)."""

    lookup: int
    account_sid: str


@dataclass(frozen=True)
class OpenRtp:
    """Open the call's RTP session (media accepted from ``signalling_ip`` too, docs/sip.md "RTP
    security"); answer with :meth:`SipCore.rtp_opened` or :meth:`SipCore.rtp_failed`."""

    call_sid: str
    signalling_ip: str


@dataclass(frozen=True)
class ApplyMedia:
    """Apply a negotiation to the call's RTP session: the remote address and payload types when
    ``set_remote``; inactivity suspended while ``hold``. The participant's ``hold`` becomes
    ``hold``; when it changes and the participant is ``joined``, ``gateway.hold_changed``."""

    call_sid: str
    negotiated: Negotiated
    set_remote: bool
    hold: bool
    joined: bool


@dataclass(frozen=True)
class CallIncoming:
    """Hand the call to ``gateway.incoming_call``; answer with
    :meth:`SipCore.incoming_call_done`."""

    call_sid: str
    incoming: IncomingCall


@dataclass(frozen=True)
class CallEnded:
    """The participant is gone: close its RTP session and, when ``joined``,
    ``gateway.leave(call_sid, reason)``. Emitted once per call. The SIP dialog may outlive it
    (a BYE waiting for the ACK)."""

    call_sid: str
    reason: str
    joined: bool


@dataclass(frozen=True)
class Discarded:
    """The input was not a valid SIP message (the transport counts these per TCP connection)."""

    reason: str


Action = (
    Send
    | ArmTimer
    | CancelTimer
    | LookupToken
    | OpenRtp
    | ApplyMedia
    | CallIncoming
    | CallEnded
    | Discarded
)


def _txn_key(branch: str, sent_by: str, method: str) -> tuple[str, str, str]:
    return (branch, sent_by, "INVITE" if method == "ACK" else method)


@dataclass
class _PendingAuth:
    request: SipRequest
    txn: ServerInviteTransaction
    flow: Flow
    credentials: DigestCredentials
    #: The caller's address (:func:`caller_address`).
    source: Address
    #: 100 Trying went out before the lookup (a trusted proxy's request).
    trying_sent: bool = False


class SipCore:
    """The user agent core. ``advertised_host`` (SDP ``c=``, Contact, our Via) and ``port``
    (the SIP port) are set by the owner once its sockets are bound. ``trusted_proxies``: the
    networks whose Via records are believed (:func:`caller_address`)."""

    def __init__(
        self,
        *,
        auth: DigestAuthenticator,
        throttle: FailureThrottle,
        timers: TimerConfig | None = None,
        advertised_host: str = "127.0.0.1",
        port: int = 5060,
        new_call_sid: Callable[[], str] | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.auth = auth
        self.trusted_proxies = tuple(trusted_proxies)
        self.throttle = throttle
        self.timers = timers or TimerConfig()
        self.advertised_host = advertised_host
        self.port = port
        self._new_call_sid = new_call_sid or (lambda: str(uuid.uuid4()))
        #: Live calls by CallSid (answered or being set up).
        self.calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str], Call] = {}
        self._server_txns: dict[tuple[str, str, str], ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], ClientNonInviteTransaction] = {}
        self._txn_flow: dict[Transaction, Flow] = {}
        self._server_keys: dict[Transaction, tuple[str, str, str]] = {}
        self._client_keys: dict[Transaction, tuple[str, str]] = {}
        self._txn_timer: dict[Transaction, TimerKey] = {}
        self._timer_txn: dict[TimerKey, Transaction] = {}
        #: Deadlines the owner has been asked to keep, by key.
        self.armed: dict[TimerKey, float] = {}
        #: Transactions whose response would amplify (see AMPLIFICATION_LIMIT): never sent.
        self._muted: set[Transaction] = set()
        self._lookups: dict[int, _PendingAuth] = {}
        self._ids = itertools.count(1)
        self._auth_log_next = 0.0
        self._auth_blocks_unlogged = 0
        self._out: list[Action] = []
        self._now = 0.0

    # -- introspection -------------------------------------------------------------------------

    @property
    def live_transactions(self) -> int:
        return len(self._server_txns) + len(self._client_txns)

    @property
    def pending_lookups(self) -> list[int]:
        return list(self._lookups)

    def next_deadline(self) -> float | None:
        return min(self.armed.values(), default=None)

    # -- events in -----------------------------------------------------------------------------

    def receive(self, data: bytes, flow: Flow, now: float) -> list[Action]:
        """One message (a datagram, or one framed TCP message) arrived on ``flow``."""
        self._now = now
        self._receive(data, flow)
        return self._take()

    def timer_fired(self, key: TimerKey, now: float) -> list[Action]:
        self._now = now
        self.armed.pop(key, None)
        txn = self._timer_txn.get(key)
        if txn is not None:
            self._run(txn, txn.on_timer(now))
        return self._take()

    def auth_result(self, lookup: int, password: str | None, now: float) -> list[Action]:
        """The AuthToken of the account named in the credentials (None: no such account)."""
        self._now = now
        pending = self._lookups.pop(lookup, None)
        if pending is not None:
            self._verify(pending, password)
        return self._take()

    def auth_error(self, lookup: int, now: float) -> list[Action]:
        """The token lookup failed (our fault): 500."""
        self._now = now
        pending = self._lookups.pop(lookup, None)
        if pending is not None:
            self._respond(pending.txn, pending.request, 500)
        return self._take()

    def rtp_opened(self, call_sid: str, port: int, now: float) -> list[Action]:
        self._now = now
        call = self.calls.get(call_sid)
        if call is not None and call.can(CallEvent.RTP_OPENED):
            call.local_sdp = LocalSdp(self.advertised_host, port)
            if call.move(CallEvent.RTP_OPENED) is CallState.ENDED:
                self._end_setup(call, 480)
            else:
                self._start_join(call)
        return self._take()

    def rtp_failed(self, call_sid: str, now: float) -> list[Action]:
        self._now = now
        call = self.calls.get(call_sid)
        if call is not None and call.can(CallEvent.RTP_FAILED):
            aborted = call.state is CallState.ABORT_OPENING
            call.move(CallEvent.RTP_FAILED)
            self._end_setup(call, 480 if aborted else 503)
        return self._take()

    def incoming_call_done(self, call_sid: str, refused: int | None, now: float) -> list[Action]:
        """``gateway.incoming_call`` returned (``refused`` None) or refused the call with a SIP
        status (a :class:`~confstream.conference.gateway.JoinRefused`'s ``sip_status``; 500
        when it failed). A status outside 300-699 is answered 403."""
        self._now = now
        call = self.calls.get(call_sid)
        if call is None:
            return self._take()
        if refused is None and call.can(CallEvent.JOIN_OK):
            call.joined = True
            if call.move(CallEvent.JOIN_OK) is CallState.ENDED:
                # cancelled (487 already sent) or hung up while joining
                self._end_setup(call, 480, reason=call.end_reason or "cancelled")
            else:
                self._answer(call)
        elif refused is not None and call.can(CallEvent.JOIN_REFUSED):
            call.move(CallEvent.JOIN_REFUSED)
            self._end_setup(call, refused if 300 <= refused < 700 else 403)
        return self._take()

    def hangup(self, call_sid: str, reason: str, now: float) -> list[Action]:
        """Server-side hang-up: BYE when answered (after the ACK), then tear down."""
        self._now = now
        call = self.calls.get(call_sid)
        if call is not None:
            self._hangup(call, reason)
        return self._take()

    def shutdown(self, now: float) -> list[Action]:
        """Hang up every call (``server-shutdown``)."""
        self._now = now
        for call in list(self.calls.values()):
            self._hangup(call, "server-shutdown")
        return self._take()

    def clear(self) -> list[Action]:
        """Forget every transaction and timer (the owner is closing its sockets)."""
        for key in list(self.armed):
            self._emit(CancelTimer(key))
        self.armed.clear()
        self._server_txns.clear()
        self._client_txns.clear()
        self._txn_flow.clear()
        self._server_keys.clear()
        self._client_keys.clear()
        self._txn_timer.clear()
        self._timer_txn.clear()
        self._muted.clear()
        self._lookups.clear()
        return self._take()

    # -- plumbing ------------------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _run(self, txn: Transaction, outputs: list[Output]) -> None:
        flow = self._txn_flow.get(txn)
        for out in outputs:
            if isinstance(out, Transmit) and flow is not None:
                if txn in self._muted:
                    metrics.SIP_RESPONSES_SUPPRESSED.inc()
                    continue
                self._emit(Send(out.message, flow))
            elif isinstance(out, TimedOut):
                self._on_txn_timeout(txn, out.timer)
            elif isinstance(out, Deliver):
                pass  # BYE responses need no action: the call is already torn down
        self._arm(txn)

    def _arm(self, txn: Transaction) -> None:
        key = self._txn_timer.get(txn)
        if key is None:
            return
        deadline = None if txn.terminated else txn.next_deadline()
        if deadline is None:
            if key in self.armed:
                del self.armed[key]
                self._emit(CancelTimer(key))
            if txn.terminated:
                self._forget(txn)
            return
        if self.armed.get(key) != deadline:
            self.armed[key] = deadline
            self._emit(ArmTimer(key, deadline))

    def _forget(self, txn: Transaction) -> None:
        self._txn_flow.pop(txn, None)
        self._muted.discard(txn)
        key = self._txn_timer.pop(txn, None)
        if key is not None:
            self._timer_txn.pop(key, None)
        skey = self._server_keys.pop(txn, None)
        if skey is not None:
            self._server_txns.pop(skey, None)
        ckey = self._client_keys.pop(txn, None)
        if ckey is not None:
            self._client_txns.pop(ckey, None)

    def _track(self, txn: Transaction, flow: Flow) -> None:
        self._txn_flow[txn] = flow
        key = TimerKey("txn", str(next(self._ids)))
        self._txn_timer[txn] = key
        self._timer_txn[key] = txn

    def _register(self, txn: ServerTxn, key: tuple[str, str, str], flow: Flow) -> None:
        self._server_txns[key] = txn
        self._server_keys[txn] = key
        self._track(txn, flow)

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
        self._run(txn, txn.send_response(response, self._now, retransmit=retransmit))

    def _trusted(self, host: str) -> bool:
        """``host`` is one of the trusted proxies (docs/sip.md "Behind a proxy")."""
        ip = _ip(host) if self.trusted_proxies else None
        return ip is not None and any(ip in net for net in self.trusted_proxies)

    def _contact(self, flow: Flow) -> str:
        params = ";transport=tcp" if flow.transport == "TCP" else ""
        return f"<sip:{format_host(self.advertised_host)}:{self.port}{params}>"

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self, data: bytes, flow: Flow) -> None:
        if not data.strip(b"\r\n"):
            return  # keep-alive
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
                self._emit(Send(SipResponse(h, b"", 400, "Bad Request"), flow))
            self._emit(Discarded(str(exc)))
            return
        if isinstance(msg, SipResponse):
            metrics.SIP_MESSAGES.labels(direction="in", kind="response").inc()
            self._on_response(msg)
        else:
            kind = msg.method if msg.method in KNOWN_UNSERVED or msg.method in ALLOW else "other"
            metrics.SIP_MESSAGES.labels(direction="in", kind=kind).inc()
            self._on_request(msg, flow)

    def _on_response(self, response: SipResponse) -> None:
        via = response.top_via
        txn = self._client_txns.get((via.branch or "", response.cseq.method))
        if txn is not None:
            self._run(txn, txn.on_response(response, self._now))

    def _on_request(self, request: SipRequest, flow: Flow) -> None:
        via = request.top_via
        sent_by = f"{via.host}:{via.port or ''}"
        branch = via.branch or f"{request.call_id}/{request.cseq.number}"
        key = _txn_key(branch, sent_by, request.method)

        if request.method == "ACK":
            existing = self._server_txns.get(key)
            if isinstance(existing, ServerInviteTransaction) and existing.state in (
                State.COMPLETED,
                State.CONFIRMED,
            ):
                self._run(existing, existing.on_ack(self._now))
                return
            self._on_ack_2xx(request)
            return

        existing = self._server_txns.get(key)
        if existing is not None:
            self._run(existing, existing.on_request(self._now))
            return

        if request.method == "INVITE":
            source = flow.remote
            if not request.to.tag:
                source = caller_address(request, flow, self.trusted_proxies)
                if self.throttle.blocked(source[0], self._now):
                    self._refuse_blocked(request, flow, vouched=source != flow.remote)
                    return
            itxn = ServerInviteTransaction(request, flow.reliable, self.timers)
            self._register(itxn, key, flow)
            if request.to.tag:
                self._on_reinvite(request, itxn, flow)
            else:
                self._on_initial_invite(request, itxn, flow, source)
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

    # -- initial INVITE: checks and authentication ---------------------------------------------

    def _on_initial_invite(
        self, request: SipRequest, txn: ServerInviteTransaction, flow: Flow, source: Address
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
        header = request.headers.get("authorization")
        if header is None:
            self._challenge(request, txn, stale=False)
            return
        try:
            creds = parse_authorization(header)
        except DigestParseError:
            metrics.SIP_AUTH_FAILURES.labels(reason="malformed").inc()
            self._challenge(request, txn, stale=False)
            return
        lookup = next(self._ids)
        pending = _PendingAuth(request, txn, flow, creds, source)
        if self._trusted(flow.remote[0]):
            # a proxy waits for a provisional answer (Kamailio: 2 s) before it tries another
            # node; the token lookup may take longer (RFC 3261 §17.2.1: 100 within 200 ms)
            self._respond(txn, request, 100)
            pending.trying_sent = True
        self._lookups[lookup] = pending
        self._emit(LookupToken(lookup, creds.username))

    def _verify(self, pending: _PendingAuth, password: str | None) -> None:
        request, txn, creds = pending.request, pending.txn, pending.credentials
        outcome = self.auth.verify(
            creds, method=request.method, request_uri=request.uri, password=password, now=self._now
        )
        if outcome is DigestOutcome.OK:
            if txn.state is State.PROCEEDING:  # else cancelled while looking the token up
                self._accept_invite(pending, creds.username)
            return
        if outcome is DigestOutcome.STALE:
            metrics.SIP_AUTH_FAILURES.labels(reason="stale").inc()
            self._challenge(request, txn, stale=True)
        elif outcome is DigestOutcome.CHALLENGE:
            metrics.SIP_AUTH_FAILURES.labels(reason="bad_nonce").inc()
            self._challenge(request, txn, stale=False)
        else:
            reason = "unknown_account" if password is None else "bad_credentials"
            metrics.SIP_AUTH_FAILURES.labels(reason=reason).inc()
            self._auth_failed(pending.source[0])
            self._respond(txn, request, 403, retransmit=False)

    def _challenge(self, request: SipRequest, txn: ServerInviteTransaction, stale: bool) -> None:
        headers = [("www-authenticate", c) for c in self.auth.challenges(self._now, stale)]
        self._respond(txn, request, 401, headers=headers, retransmit=False)

    def _auth_failed(self, source: str) -> None:
        """Count a refused credential; log blocks, at most one line per AUTH_LOG_INTERVAL."""
        now = self._now
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

    def _refuse_blocked(self, request: SipRequest, flow: Flow, *, vouched: bool) -> None:
        """An initial INVITE from a blocked source: dropped over UDP (the source may be
        spoofed), a stateless 403 over TCP (the handshake proved the address) or when a
        trusted proxy ``vouched`` for the address (a drop would make it try another node)."""
        metrics.SIP_AUTH_THROTTLED.inc()
        if flow.reliable or vouched:
            headers = [
                ("server", USER_AGENT),
                ("retry-after", str(int(self.throttle.block_seconds))),
            ]
            self._emit(Send(build_response(request, 403, to_tag=new_tag(), headers=headers), flow))

    # -- initial INVITE: setting the call up ---------------------------------------------------

    def _accept_invite(self, pending: _PendingAuth, account_sid: str) -> None:
        request, txn, flow = pending.request, pending.txn, pending.flow
        try:
            name = request.request_uri.user_unescaped
        except SipParseError:
            name = ""
        if not name:
            self._respond(txn, request, 404)
            return
        if not pending.trying_sent:
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
        call = Call(
            call_sid=self._new_call_sid(),
            direction=Direction.INBOUND,
            flow=flow,
            invite=request,
            invite_txn=txn,
            account_sid=account_sid,
            request_user=name,
            dialog=dialog,
            offer=offer,
            negotiated=neg,
            source=pending.source,
        )
        self.calls[call.call_sid] = call
        self._emit(OpenRtp(call.call_sid, call.source[0]))

    def _start_join(self, call: Call) -> None:
        """RTP is open: apply the offer, prepare the 200's body, hand the call over."""
        assert call.local_sdp is not None
        if call.negotiated is not None and call.offer is not None:
            neg = call.negotiated
            self._emit(ApplyMedia(call.call_sid, neg, True, neg.hold, False))
            call.answer_body = call.local_sdp.answer(call.offer, neg)
        else:
            call.awaiting_answer_in_ack = True
            call.answer_body = call.local_sdp.offer()
        self._emit(CallIncoming(call.call_sid, self._incoming(call)))

    def _incoming(self, call: Call) -> IncomingCall:
        request = call.invite
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
            call_sid=call.call_sid,
            account_sid=call.account_sid,
            request_user=call.request_user,
            from_uri=from_uri,
            to_uri=to_uri,
            caller_name=caller_name,
            sip_headers=tuple((k, v) for k, v in request.headers if k.lower().startswith("x-")),
            source=call.source,
            transport=call.flow.transport,
        )

    def _answer(self, call: Call) -> None:
        """Joined: register the dialog and send 200 with the SDP."""
        self._dialogs[call.dialog.key] = call
        self._respond(
            call.invite_txn,
            call.invite,
            200,
            to_tag=call.dialog.local_tag,
            headers=self._ok_headers(call.flow, call.invite),
            body=call.answer_body,
        )

    def _ok_headers(self, flow: Flow, request: SipRequest) -> list[tuple[str, str]]:
        """Headers of a 2xx to an INVITE: the request's Record-Route values, in order (RFC
        3261 §12.1.1: the proxies that recorded the route stay in the dialog), our Contact."""
        return [
            *(("record-route", value) for value in request.headers.get_all("record-route")),
            ("contact", self._contact(flow)),
            ("allow", ALLOW),
            ("content-type", "application/sdp"),
        ]

    def _end_setup(self, call: Call, status: int | None, reason: str = "setup-failed") -> None:
        """A setup that ends before the 200: ``status`` unless a final went out already."""
        if status is not None:
            self._respond(call.invite_txn, call.invite, status)
        self._teardown(call, reason)

    # -- in-dialog requests --------------------------------------------------------------------

    def _dialog_of(self, request: SipRequest) -> Call | None:
        call = self._dialogs.get((request.call_id, request.to.tag or ""))
        if call is None or not call.dialog.matches(request):
            return None
        return call

    def _on_reinvite(self, request: SipRequest, txn: ServerInviteTransaction, flow: Flow) -> None:
        call = self._dialog_of(request)
        if call is None:
            self._respond(txn, request, 481, retransmit=False)
            return
        dialog = call.dialog
        if not dialog.accept_remote_cseq(request.cseq.number):
            self._respond(txn, request, 500)
            return
        if call.state is not CallState.CONFIRMED:
            # our last 2xx is not ACKed yet (RFC 3261 §14.2)
            self._respond(txn, request, 500, headers=[("retry-after", "1")])
            return
        dialog.update_target(request)
        assert call.local_sdp is not None
        if not request.body.strip():
            call.awaiting_answer_in_ack = True
            body = call.local_sdp.offer()
        else:
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
            body = call.local_sdp.answer(offer, neg)
        call.invite_txn = txn
        call.move(CallEvent.REINVITE_OK)
        self._respond(
            txn,
            request,
            200,
            to_tag=dialog.local_tag,
            headers=self._ok_headers(flow, request),
            body=body,
        )

    def _apply(self, call: Call, neg: Negotiated) -> None:
        self._emit(ApplyMedia(call.call_sid, neg, not neg.hold, neg.hold, call.joined))

    def _on_ack_2xx(self, request: SipRequest) -> None:
        call = self._dialogs.get((request.call_id, request.to.tag or ""))
        if call is None:
            return
        txn = call.invite_txn
        if request.cseq.number != txn.request.cseq.number:
            return
        if txn.state is State.ACCEPTED and not txn.ack_received:
            self._run(txn, txn.on_ack(self._now))
        if call.state is CallState.WAIT_ACK:
            call.move(CallEvent.ACK)
            if call.awaiting_answer_in_ack:
                call.awaiting_answer_in_ack = False
                problem = None
                if not request.body.strip():
                    problem = "no-sdp-answer"
                else:
                    try:
                        self._apply(call, negotiate(SessionDescription.parse(request.body)))
                    except SdpError:
                        problem = "bad-sdp-in-ack"
                if problem is not None:
                    self._hangup(call, problem)
        elif call.state is CallState.BYE_PENDING:
            call.move(CallEvent.ACK)
            self._send_bye(call, call.end_reason or "hangup")

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
            for call in list(self.calls.values()):
                if call.invite_txn is invite_txn and call.can(CallEvent.CANCEL):
                    # the step under way (RTP port, join) ends the setup when it reports back
                    call.move(CallEvent.CANCEL)

    def _on_bye(self, request: SipRequest, txn: ServerNonInviteTransaction) -> None:
        call = self._dialog_of(request)
        if call is None:
            self._respond(txn, request, 481)
            return
        if not call.dialog.accept_remote_cseq(request.cseq.number):
            self._respond(txn, request, 500)
            return
        self._respond(txn, request, 200)
        call.move(CallEvent.BYE_IN)
        self._teardown(call, "caller-bye")

    # -- hanging up ----------------------------------------------------------------------------

    def _hangup(self, call: Call, reason: str) -> None:
        state = call.state
        if state in (CallState.OPENING, CallState.JOINING):
            call.end_reason = reason  # the step under way ends the setup when it reports back
            call.move(CallEvent.HANGUP)
        elif state is CallState.WAIT_ACK:
            # RFC 3261 §15: no BYE before the ACK (or its timeout); the media goes now
            call.end_reason = reason
            call.move(CallEvent.HANGUP)
            self._close_media(call, reason)
        elif state is CallState.CONFIRMED:
            call.move(CallEvent.HANGUP)
            self._send_bye(call, reason)
        # ABORT_*, BYE_PENDING: already ending, the first reason wins

    def _send_bye(self, call: Call, reason: str) -> None:
        dialog = call.dialog
        if dialog.state is not DialogState.TERMINATED:
            flow = call.flow
            via = (
                f"SIP/2.0/{flow.transport} {format_host(self.advertised_host)}:{self.port}"
                f";branch={new_branch()};rport"
            )
            bye = dialog.make_request("BYE", via)
            bye.headers.add("reason", f'SIP;cause=200;text="{reason}"')
            bye.headers.add("user-agent", USER_AGENT)
            txn = ClientNonInviteTransaction(bye, flow.reliable, self.timers)
            key = (bye.top_via.branch or "", "BYE")
            self._client_txns[key] = txn
            self._client_keys[txn] = key
            self._track(txn, flow)
            self._run(txn, txn.start(self._now))
        self._teardown(call, reason)

    def _on_txn_timeout(self, txn: Transaction, timer: Event) -> None:
        """Timer L without an ACK for our 2xx: BYE (Timer H only ends a non-2xx's wait)."""
        if timer is not Event.TIMER_L or not isinstance(txn, ServerInviteTransaction):
            return
        for call in list(self.calls.values()):
            if call.invite_txn is txn and call.can(CallEvent.ACK_TIMEOUT):
                log.info("call %s: no ACK for the 2xx, hanging up", call.call_sid)
                call.move(CallEvent.ACK_TIMEOUT)
                self._send_bye(call, call.end_reason or "no-ack")

    def _close_media(self, call: Call, reason: str) -> None:
        if not call.media_closed:
            call.media_closed = True
            self._emit(CallEnded(call.call_sid, reason, call.joined))
            call.joined = False

    def _teardown(self, call: Call, reason: str) -> None:
        """Close RTP, leave the conference, forget the dialog. Idempotent."""
        call.state = CallState.ENDED
        call.dialog.state = DialogState.TERMINATED
        if self._dialogs.get(call.dialog.key) is call:
            del self._dialogs[call.dialog.key]
        self._close_media(call, reason)
        self.calls.pop(call.call_sid, None)


__all__ = [
    "ALLOW",
    "AMPLIFICATION_LIMIT",
    "Action",
    "ApplyMedia",
    "ArmTimer",
    "CallEnded",
    "CallIncoming",
    "CancelTimer",
    "Discarded",
    "LookupToken",
    "OpenRtp",
    "Send",
    "SipCore",
    "TimerKey",
]
