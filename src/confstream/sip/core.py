"""The SIP user agent core, sans-I/O: every protocol decision of the SIP edge, no sockets, no
clock, no tasks.

Events go in, :data:`Action` lists come out (the style of h11 and python-websockets):

* :meth:`SipCore.receive` — bytes that arrived on a :class:`~confstream.sip.flow.Flow`;
* :meth:`SipCore.timer_fired` — a timer asked for with :class:`ArmTimer` is due;
* :meth:`SipCore.auth_result` / :meth:`SipCore.auth_error` — the answer to :class:`LookupToken`;
* :meth:`SipCore.rtp_opened` / :meth:`SipCore.rtp_failed` — the answer to :class:`OpenRtp`;
* :meth:`SipCore.incoming_call_done` — the answer to :class:`CallIncoming`;
* :meth:`SipCore.dial` — place an outbound call (UAC, docs/sip.md "Calling out");
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
* Outbound calls (:meth:`SipCore.dial`): an RTP port (:class:`OpenRtp`), then an INVITE with
  our offer (PCMU, PCMA, telephone-event) to the address the owner checked; Timer A resends it
  over UDP, Timer B (64·T1) without any answer fails it (408). Provisionals report
  :class:`Ringing` (the first 180/183); a 183 with SDP starts the media early only when the
  dial asks for early media. A 401/407 is answered once with digest credentials (MD5 or
  SHA-256; again for ``stale=true``); a 2xx is ACKed (a new request, sent again for each
  retransmission of the 2xx), its SDP answer applied and :class:`Answered` emitted; a 3xx-6xx
  (ACKed by the transaction) ends the call with :class:`DialFailed`. The ring timeout (and a
  hang-up before the answer) sends CANCEL once a provisional has come; a 2xx crossing the
  CANCEL is ACKed and BYEd. Record-Route of the 2xx becomes the route set (loose routing,
  strict routers handled). An INVITE arriving with the Call-ID of one of our own outbound
  calls (a dial-out looped back to us) is answered 482, and so is an initial INVITE with the
  Call-ID, From tag and CSeq of one whose transaction is still live but another branch (the
  same request arriving by a second route, RFC 3261 §8.2.2.2 merged requests).
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
from confstream.sip.call import Call, CallEvent, CallState, Dial, Direction
from confstream.sip.dialog import Dialog, DialogState, new_branch, new_tag
from confstream.sip.digest import (
    DigestAuthenticator,
    DigestCredentials,
    DigestOutcome,
    DigestParseError,
    FailureThrottle,
    answer_challenges,
    parse_authorization,
)
from confstream.sip.flow import Address, Flow
from confstream.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
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
    ClientInviteTransaction,
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
class Dialing:
    """An outbound call's INVITE went out (the call is ``initiated``/``connecting``)."""

    call_sid: str


@dataclass(frozen=True)
class Ringing:
    """The far end rings: the first 180 or 183 of an outbound call (``status``)."""

    call_sid: str
    status: int


@dataclass(frozen=True)
class Answered:
    """The far end answered an outbound call and our ACK went out: hand the call over (join
    its conference, or run its cXML). Its end comes later as :class:`CallEnded` with
    ``joined`` true."""

    call_sid: str


@dataclass(frozen=True)
class DialFailed:
    """An outbound call ended without being answered (a :class:`CallEnded` follows).
    ``sip_status``: the far end's final status (408 for no answer at all, None when no INVITE
    went out); ``outcome``: ``busy`` (486, 600), ``no-answer`` (ring timeout, 408, 480),
    ``canceled`` (hung up before the answer) or ``failed``."""

    call_sid: str
    sip_status: int | None
    outcome: str


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
    | Dialing
    | Ringing
    | Answered
    | DialFailed
    | Discarded
)

ClientTxn = ClientInviteTransaction | ClientNonInviteTransaction

#: Final statuses reported as ``busy`` and as ``no-answer`` (the rest: ``failed``).
BUSY_STATUSES = frozenset({486, 600})
NO_ANSWER_STATUSES = frozenset({408, 480})
#: How many times one outbound INVITE is sent with credentials (a second challenge that is
#: not ``stale`` means the credentials are wrong).
MAX_AUTH_TRIES = 3


def dial_outcome(status: int) -> str:
    """The Twilio call status of an outbound call refused with SIP ``status``."""
    if status in BUSY_STATUSES:
        return "busy"
    if status in NO_ANSWER_STATUSES:
        return "no-answer"
    return "failed"


#: Per-call timers of outbound calls: ring timeout, time limit, wait after our CANCEL.
RING_TIMER = "ring"
LIMIT_TIMER = "limit"
CANCEL_TIMER = "cancel"
CALL_TIMERS = (RING_TIMER, LIMIT_TIMER, CANCEL_TIMER)


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
        target_allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self.auth = auth
        self.trusted_proxies = tuple(trusted_proxies)
        self.throttle = throttle
        self.timers = timers or TimerConfig()
        self.advertised_host = advertised_host
        self.port = port
        self._new_call_sid = new_call_sid or (lambda: str(uuid.uuid4()))
        #: May an in-dialog request of an outbound call go to this IP (the far end's Contact
        #: or first route)? Otherwise it goes where the INVITE went. Default: never.
        self.target_allowed = target_allowed or (lambda ip: False)
        #: Live calls by CallSid (answered or being set up).
        self.calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str], Call] = {}
        self._server_txns: dict[tuple[str, str, str], ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], ClientTxn] = {}
        #: The outbound call of each client INVITE transaction (kept until the transaction
        #: ends: retransmitted 2xx are ACKed after the call is gone).
        self._invite_calls: dict[Transaction, Call] = {}
        #: Call-IDs of our outbound calls (an INVITE with one of them looped back: 482).
        self._outbound_call_ids: dict[str, str] = {}
        #: Initial INVITEs of live server transactions by (Call-ID, From tag, CSeq): the same
        #: request arriving by a second route, with another branch, is merged (482).
        self._merge_keys: dict[tuple[str, str, int], Transaction] = {}
        self._merge_key_of: dict[Transaction, tuple[str, str, int]] = {}
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
        elif key.kind in CALL_TIMERS:
            call = self.calls.get(key.ident)
            if call is not None:
                self._call_timer(call, key.kind)
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
            if call.direction is Direction.OUTBOUND:
                if call.move(CallEvent.RTP_OPENED) is CallState.ENDED:
                    self._dial_failed(call, None, call.cancel_outcome or "canceled")
                else:
                    self._start_dial(call)
            elif call.move(CallEvent.RTP_OPENED) is CallState.ENDED:
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
            if call.direction is Direction.OUTBOUND:
                self._dial_failed(
                    call, None, call.cancel_outcome or "canceled" if aborted else "failed"
                )
            else:
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

    def dial(self, dial: Dial, now: float) -> list[Action]:
        """Place an outbound call (docs/sip.md, "Calling out"): :class:`OpenRtp` first; the
        INVITE goes when :meth:`rtp_opened` reports the port."""
        self._now = now
        to = SipUri.parse(dial.to_uri)
        local = NameAddr(SipUri.parse(dial.from_uri), dial.from_display)
        call_id = f"{uuid.uuid4().hex}@{format_host(self.advertised_host)}"
        dialog = Dialog(
            call_id=call_id,
            local_tag=new_tag(),
            remote_tag="",
            local_uri=str(local),
            remote_uri=str(NameAddr(to)),
            remote_target=dial.to_uri,
            local_cseq=1,
        )
        placeholder = SipRequest(Headers(), b"", "INVITE", dial.to_uri)
        call = Call(
            call_sid=dial.call_sid,
            direction=Direction.OUTBOUND,
            flow=dial.flow,
            invite=placeholder,
            invite_txn=None,
            account_sid=dial.account_sid,
            request_user=to.user_unescaped,
            dialog=dialog,
            dial=dial,
        )
        self.calls[call.call_sid] = call
        self._outbound_call_ids[call_id] = call.call_sid
        self._emit(OpenRtp(call.call_sid, dial.flow.remote[0]))
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
        self._invite_calls.clear()
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
                self._on_delivered(txn, out.response)  # BYE/CANCEL answers need nothing
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
        mkey = self._merge_key_of.pop(txn, None)
        if mkey is not None and self._merge_keys.get(mkey) is txn:
            del self._merge_keys[mkey]
        ckey = self._client_keys.pop(txn, None)
        if ckey is not None:
            self._client_txns.pop(ckey, None)
        self._invite_calls.pop(txn, None)

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
            if not request.to.tag and request.call_id in self._outbound_call_ids:
                # one of our own dial-outs came back to us (docs/sip.md "Calling out")
                self._respond(itxn, request, 482, retransmit=False)
                return
            if not request.to.tag:
                merge = (request.call_id, request.from_.tag or "", request.cseq.number)
                if merge in self._merge_keys:
                    # a forked copy of a request we already serve (RFC 3261 §8.2.2.2)
                    self._respond(itxn, request, 482, retransmit=False)
                    return
                self._merge_keys[merge] = itxn
                self._merge_key_of[itxn] = merge
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
        assert call.invite_txn is not None
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
        if status is not None and call.invite_txn is not None:
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
        if txn is None or request.cseq.number != txn.request.cseq.number:
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
        self._teardown(call, "caller-bye" if call.direction is Direction.INBOUND else "callee-bye")

    # -- outbound calls (UAC) -------------------------------------------------------------------

    def _via(self, flow: Flow) -> str:
        return (
            f"SIP/2.0/{flow.transport} {format_host(self.advertised_host)}:{self.port}"
            f";branch={new_branch()};rport"
        )

    def _dialog_flow(self, call: Call) -> Flow:
        """Where in-dialog requests go: an inbound call's requests go back where the INVITE
        came from; an outbound call's to the first route or the far end's Contact when that is
        an IP address the owner allows, else where the INVITE went."""
        if call.direction is Direction.INBOUND:
            return call.flow
        try:
            hop = call.dialog.next_hop()
            ipaddress.ip_address(hop.host)
        except (SipParseError, ValueError):
            return call.flow
        port = hop.port or 5060
        if (hop.host, port) == call.flow.remote or self.target_allowed(hop.host):
            return Flow(call.flow.transport, (hop.host, port))
        return call.flow

    def _arm_call_timer(self, call: Call, kind: str, at: float) -> None:
        key = TimerKey(kind, call.call_sid)
        self.armed[key] = at
        self._emit(ArmTimer(key, at))

    def _cancel_call_timer(self, call: Call, kind: str) -> None:
        key = TimerKey(kind, call.call_sid)
        if self.armed.pop(key, None) is not None:
            self._emit(CancelTimer(key))

    def _start_dial(self, call: Call) -> None:
        """RTP is open: the INVITE with our offer goes; the ring timeout starts."""
        assert call.local_sdp is not None and call.dial is not None
        self._send_invite(call)
        self._emit(Dialing(call.call_sid))
        self._arm_call_timer(call, RING_TIMER, self._now + call.dial.ring_timeout)

    def _send_invite(self, call: Call) -> None:
        assert call.local_sdp is not None and call.dial is not None
        dialog, flow = call.dialog, call.flow
        h = Headers()
        h.add("via", self._via(flow))
        h.add("max-forwards", "70")
        h.add("from", f"{dialog.local_uri};tag={dialog.local_tag}")
        h.add("to", dialog.remote_uri)
        h.add("call-id", dialog.call_id)
        h.add("cseq", f"{dialog.local_cseq} INVITE")
        h.add("contact", self._contact(flow))
        h.add("allow", ALLOW)
        h.add("user-agent", USER_AGENT)
        for name, value in call.credentials.items():
            h.add(name, value)
        h.add("content-type", "application/sdp")
        body = call.invite.body or call.local_sdp.offer()
        invite = SipRequest(h, body, "INVITE", call.dial.to_uri)
        call.invite = invite
        txn = ClientInviteTransaction(invite, flow.reliable, self.timers)
        key = (invite.top_via.branch or "", "INVITE")
        self._client_txns[key] = txn
        self._client_keys[txn] = key
        self._invite_calls[txn] = call
        call.client_txn = txn
        self._track(txn, flow)
        self._run(txn, txn.start(self._now))

    def _on_delivered(self, txn: Transaction, response: SipResponse) -> None:
        call = self._invite_calls.get(txn)
        if call is None:
            return
        status = response.status
        if status >= 300:
            if call.client_txn is txn:
                self._on_refused(call, response)
        elif status >= 200:
            self._on_2xx(call, response)
        elif call.client_txn is txn:
            self._on_provisional(call, response)

    def _on_provisional(self, call: Call, response: SipResponse) -> None:
        call.provisional = True
        if not call.can(CallEvent.PROVISIONAL):
            return
        call.move(CallEvent.PROVISIONAL)
        if call.state is CallState.CANCELLING:
            self._maybe_cancel(call)
            return
        if response.status in (180, 183) and not call.ringing:
            call.ringing = True
            self._emit(Ringing(call.call_sid, response.status))
        assert call.dial is not None
        if call.dial.early_media and response.body.strip():
            try:
                neg = negotiate(SessionDescription.parse(response.body))
            except SdpError:
                return
            self._emit(ApplyMedia(call.call_sid, neg, True, False, False))

    def _on_2xx(self, call: Call, response: SipResponse) -> None:
        state = call.state
        if state in (CallState.CALLING, CallState.EARLY, CallState.CANCELLING):
            try:
                dialog = Dialog.from_response(call.invite, response)
            except SipParseError as exc:
                log.info("call %s: unusable 2xx (%s)", call.call_sid, exc)
                if call.can(CallEvent.REJECTED):
                    call.move(CallEvent.REJECTED)
                    self._dial_failed(call, 502, "failed")
                return
            call.dialog = dialog
            self._dialogs[dialog.key] = call
            self._send_ack(call)
            if call.move(CallEvent.ANSWERED) is CallState.ENDED:
                # the 2xx crossed our CANCEL: the call is over all the same
                self._emit(
                    DialFailed(call.call_sid, response.status, call.cancel_outcome or "canceled")
                )
                self._send_bye(call, call.end_reason or call.cancel_outcome or "canceled")
                return
            self._answered(call, response)
        elif call.ack is not None and response.to.tag == call.dialog.remote_tag:
            self._emit(Send(call.ack, self._dialog_flow(call)))  # a retransmitted 2xx
        else:
            # another fork answered: ACK it and hang that one up at once
            try:
                fork = Dialog.from_response(call.invite, response)
            except SipParseError:
                return
            flow = self._dialog_flow(call)
            self._emit(Send(fork.make_request("ACK", self._via(flow), cseq=fork.local_cseq), flow))
            self._emit(Send(fork.make_request("BYE", self._via(flow)), flow))

    def _send_ack(self, call: Call) -> None:
        """The ACK of the 2xx (RFC 3261 §13.2.2.4): in the dialog, the INVITE's CSeq number,
        its credentials, a new branch."""
        flow = self._dialog_flow(call)
        ack = call.dialog.make_request("ACK", self._via(flow), cseq=call.dialog.local_cseq)
        for name, value in call.credentials.items():
            ack.headers.add(name, value)
        call.ack = ack
        self._emit(Send(ack, flow))

    def _answered(self, call: Call, response: SipResponse) -> None:
        """Confirmed: apply the answer, hand the call over, start the time limit."""
        assert call.dial is not None
        try:
            neg = negotiate(SessionDescription.parse(response.body))
        except SdpError as exc:
            log.info("call %s: no usable SDP answer in the 2xx (%s)", call.call_sid, exc)
            self._emit(DialFailed(call.call_sid, 488, "failed"))
            call.move(CallEvent.HANGUP)
            self._send_bye(call, "bad-sdp-answer")
            return
        self._cancel_call_timer(call, RING_TIMER)
        self._emit(ApplyMedia(call.call_sid, neg, True, neg.hold, False))
        call.joined = True
        self._emit(Answered(call.call_sid))
        if call.dial.time_limit is not None:
            self._arm_call_timer(call, LIMIT_TIMER, self._now + call.dial.time_limit)

    def _on_refused(self, call: Call, response: SipResponse) -> None:
        status = response.status
        if status in (401, 407) and self._answer_challenge(call, response):
            return
        if not call.can(CallEvent.REJECTED):
            return
        cancelling = call.state is CallState.CANCELLING
        call.move(CallEvent.REJECTED)
        if cancelling and status == 487:
            outcome = call.cancel_outcome or "canceled"
        else:
            outcome = dial_outcome(status)
        self._dial_failed(call, status, outcome)

    def _answer_challenge(self, call: Call, response: SipResponse) -> bool:
        """INVITE again with credentials for a 401/407 (docs/sip.md "Calling out")."""
        dial = call.dial
        assert dial is not None
        if not call.can(CallEvent.CHALLENGED) or not dial.auth_username:
            return False
        proxy = response.status == 407
        found = answer_challenges(
            response.headers.get_all("proxy-authenticate" if proxy else "www-authenticate"),
            username=dial.auth_username,
            password=dial.auth_password or "",
            method="INVITE",
            uri=dial.to_uri,
        )
        if found is None:
            return False
        header, challenge = found
        name = "proxy-authorization" if proxy else "authorization"
        if call.auth_tries >= MAX_AUTH_TRIES or (name in call.credentials and not challenge.stale):
            return False  # the credentials were refused
        call.auth_tries += 1
        call.credentials[name] = header
        call.move(CallEvent.CHALLENGED)
        call.provisional = False
        call.dialog.local_cseq += 1
        self._send_invite(call)
        return True

    def _maybe_cancel(self, call: Call) -> None:
        """CANCEL our INVITE, once a provisional has come (RFC 3261 §9.1); a final must follow
        within 64·T1, or the call ends anyway."""
        txn = call.client_txn
        if call.cancel_sent or not call.provisional or txn is None:
            return
        if txn.state is not State.PROCEEDING:
            return
        call.cancel_sent = True
        invite = txn.request
        h = Headers()
        h.add("via", invite.headers.get("via") or "")
        h.add("max-forwards", "70")
        for name in ("from", "to", "call-id"):
            h.add(name, invite.headers.get(name) or "")
        h.add("cseq", f"{invite.cseq.number} CANCEL")
        for route in invite.headers.get_all("route"):
            h.add("route", route)
        h.add("user-agent", USER_AGENT)
        cancel = SipRequest(h, b"", "CANCEL", invite.uri)
        ctxn = ClientNonInviteTransaction(cancel, call.flow.reliable, self.timers)
        key = (invite.top_via.branch or "", "CANCEL")
        self._client_txns[key] = ctxn
        self._client_keys[ctxn] = key
        self._track(ctxn, call.flow)
        self._run(ctxn, ctxn.start(self._now))
        self._arm_call_timer(call, CANCEL_TIMER, self._now + 64 * self.timers.t1)

    def _call_timer(self, call: Call, kind: str) -> None:
        if kind == RING_TIMER:
            if call.can(CallEvent.TIMEOUT):
                log.info("call %s: no answer, cancelling", call.call_sid)
                call.cancel_outcome = call.cancel_outcome or "no-answer"
                call.move(CallEvent.TIMEOUT)
                self._maybe_cancel(call)
        elif kind == LIMIT_TIMER:
            self._hangup(call, "time-limit")
        elif kind == CANCEL_TIMER and call.can(CallEvent.REJECTED):
            # no final response to our cancelled INVITE (RFC 3261 §9.1): give up on it
            call.move(CallEvent.REJECTED)
            txn = call.client_txn
            if txn is not None:
                self._forget_client(txn)
            self._dial_failed(call, 408, call.cancel_outcome or "no-answer")

    def _forget_client(self, txn: Transaction) -> None:
        key = self._txn_timer.get(txn)
        if key is not None and self.armed.pop(key, None) is not None:
            self._emit(CancelTimer(key))
        self._forget(txn)

    def _dial_failed(self, call: Call, status: int | None, outcome: str) -> None:
        self._emit(DialFailed(call.call_sid, status, outcome))
        self._teardown(call, outcome)

    # -- hanging up ----------------------------------------------------------------------------

    def _hangup(self, call: Call, reason: str) -> None:
        state = call.state
        if call.direction is Direction.OUTBOUND and state in (
            CallState.OPENING,
            CallState.CALLING,
            CallState.EARLY,
        ):
            call.end_reason = reason
            call.cancel_outcome = call.cancel_outcome or "canceled"
            call.move(CallEvent.HANGUP)
            if state is not CallState.OPENING:
                self._maybe_cancel(call)
            return
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
            flow = self._dialog_flow(call)
            bye = dialog.make_request("BYE", self._via(flow))
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
        """Timer L without an ACK for our 2xx: BYE (Timer H only ends a non-2xx's wait).
        Timer B: our INVITE got no answer at all (408)."""
        if timer is Event.TIMER_B:
            call = self._invite_calls.get(txn)
            if call is not None and call.client_txn is txn and call.can(CallEvent.REJECTED):
                call.move(CallEvent.REJECTED)
                self._dial_failed(call, 408, call.cancel_outcome or "no-answer")
            return
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
        if call.direction is Direction.OUTBOUND:
            self._outbound_call_ids.pop(call.dialog.call_id, None)
            for kind in CALL_TIMERS:
                self._cancel_call_timer(call, kind)
        call.dialog.state = DialogState.TERMINATED
        if self._dialogs.get(call.dialog.key) is call:
            del self._dialogs[call.dialog.key]
        self._close_media(call, reason)
        self.calls.pop(call.call_sid, None)


__all__ = [
    "ALLOW",
    "AMPLIFICATION_LIMIT",
    "Action",
    "Answered",
    "ApplyMedia",
    "ArmTimer",
    "CallEnded",
    "CallIncoming",
    "CancelTimer",
    "Dial",
    "DialFailed",
    "Dialing",
    "Discarded",
    "LookupToken",
    "OpenRtp",
    "Ringing",
    "Send",
    "SipCore",
    "TimerKey",
    "dial_outcome",
]
