"""A harness for the sans-I/O core (tests/sip/test_core*.py): a fake clock that fires the
core's timers, and a phone that writes SIP requests as bytes. No sockets, no event loop."""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from confstream.sip.call import Call, Dial
from confstream.sip.core import (
    Action,
    ArmTimer,
    CallEnded,
    CallIncoming,
    CancelTimer,
    LookupToken,
    OpenRtp,
    Send,
    SipCore,
    TimerKey,
)
from confstream.sip.digest import DigestAuthenticator, FailureThrottle
from confstream.sip.flow import Flow
from confstream.sip.message import SipRequest, SipResponse, build_response, parse_message
from confstream.sip.transaction import TimerConfig

REALM = "confstream"
ACCOUNT = "AC-core-test"
TOKEN = "token-of-the-core-test"
SERVER = "198.51.100.1"
T1 = 0.5

SDP = (
    "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
)


def sdp(ip: str = "192.0.2.10", direction: str = "sendrecv") -> bytes:
    return SDP.format(ip=ip, direction=direction).encode()


def wire(actions: Iterable[Action]) -> list[SipRequest | SipResponse]:
    """The messages sent, as a peer would parse them off the wire."""
    return [parse_message(a.message.serialize()) for a in actions if isinstance(a, Send)]


def statuses(actions: Iterable[Action]) -> list[int]:
    return [m.status for m in wire(actions) if isinstance(m, SipResponse)]


def requests(actions: Iterable[Action], method: str | None = None) -> list[SipRequest]:
    return [m for m in wire(actions) if isinstance(m, SipRequest) and method in (None, m.method)]


def only(actions: Iterable[Action], kind: type[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def one_response(actions: Iterable[Action], status: int) -> SipResponse:
    found = [m for m in wire(actions) if isinstance(m, SipResponse) and m.status == status]
    assert len(found) == 1, (status, list(actions))
    return found[0]


class Harness:
    """The core under a fake clock. Every ArmTimer/CancelTimer is checked against
    ``core.armed``, so the actions and the core's own bookkeeping cannot drift apart."""

    def __init__(
        self,
        *,
        max_failures: int = 10,
        algorithms: tuple[str, ...] = ("MD5",),
        timers: TimerConfig | None = None,
    ) -> None:
        self.now = 1000.0
        ids = itertools.count(1)
        self.core = SipCore(
            auth=DigestAuthenticator(REALM, secret=b"k" * 32, algorithms=algorithms),
            throttle=FailureThrottle(max_failures, 60.0, 300.0),
            timers=timers or TimerConfig(t1=T1, t2=4.0, t4=5.0),
            advertised_host="203.0.113.5",
            port=5060,
            new_call_sid=lambda: f"CA{next(ids):04d}",
        )
        self.timers: dict[TimerKey, float] = {}
        self.log: list[Action] = []

    def _seen(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, ArmTimer):
                self.timers[a.key] = a.at
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.key, None)
        assert self.timers == self.core.armed
        self.log.extend(actions)
        return actions

    def feed(self, data: bytes, flow: Flow) -> list[Action]:
        sized = Flow(flow.transport, flow.remote, len(data))
        return self._seen(self.core.receive(data, sized, self.now))

    def advance(self, seconds: float) -> list[Action]:
        """Let ``seconds`` pass, firing every timer that falls due, in order."""
        target = self.now + seconds
        out: list[Action] = []
        while self.timers:
            key = min(self.timers, key=lambda k: self.timers[k])
            at = self.timers[key]
            if at > target:
                break
            self.now = max(self.now, at)
            del self.timers[key]
            out += self._seen(self.core.timer_fired(key, self.now))
        self.now = target
        return out

    def run_out(self) -> list[Action]:
        """Fire timers until none is left (every transaction ends within 64·T1 + T4)."""
        out: list[Action] = []
        for _ in range(1000):
            if not self.timers:
                return out
            out += self.advance(max(self.timers.values()) - self.now + 0.001)
        raise AssertionError("timers never stop")

    # results of the owner's slow work
    def auth(self, actions: list[Action], password: str | None = TOKEN) -> list[Action]:
        (lookup,) = only(actions, LookupToken)
        assert isinstance(lookup, LookupToken)
        return self._seen(self.core.auth_result(lookup.lookup, password, self.now))

    def rtp_opened(self, call_sid: str, port: int = 40000) -> list[Action]:
        return self._seen(self.core.rtp_opened(call_sid, port, self.now))

    def rtp_failed(self, call_sid: str) -> list[Action]:
        return self._seen(self.core.rtp_failed(call_sid, self.now))

    def joined(self, call_sid: str, refused: int | None = None) -> list[Action]:
        return self._seen(self.core.incoming_call_done(call_sid, refused, self.now))

    def hangup(self, call_sid: str, reason: str = "api-delete") -> list[Action]:
        return self._seen(self.core.hangup(call_sid, reason, self.now))

    def call(self, call_sid: str) -> Call:
        return self.core.calls[call_sid]

    def dial(self, callee: Callee, **options: object) -> list[Action]:
        """Dial ``callee`` (CallSid ``CAout``); :class:`Dial` fields may be overridden."""
        fields: dict[str, object] = {
            "call_sid": "CAout",
            "account_sid": ACCOUNT,
            "to_uri": f"sip:bob@{callee.host}:{callee.port}",
            "flow": callee.flow,
            "from_uri": f"sip:+15550001111@{SERVER}",
            "ring_timeout": 20.0,
        }
        fields.update(options)
        return self._seen(self.core.dial(Dial(**fields), self.now))  # type: ignore[arg-type]

    def to_calling(self, callee: Callee, **options: object) -> SipRequest:
        """Dial and open RTP: the INVITE that went out (also kept in ``callee.invite``)."""
        self.dial(callee, **options)
        (invite,) = requests(self.rtp_opened("CAout"), "INVITE")
        callee.invite = invite
        return invite

    def answer(self, callee: Callee, status: int = 200, **kw: object) -> list[Action]:
        """The callee answers the last INVITE with ``status``."""
        assert callee.invite is not None
        return self.feed(callee.respond(callee.invite, status, **kw), callee.flow)  # type: ignore[arg-type]

    # whole steps
    def to_opening(self, phone: Phone) -> str:
        """401, then the authenticated INVITE: the call is opening its RTP port."""
        challenge = one_response(self.feed(phone.invite(), phone.flow), 401)
        self.feed(phone.ack_for(challenge), phone.flow)
        after = self.auth(self.feed(phone.invite(auth=challenge), phone.flow))
        assert statuses(after) == [100]
        (opening,) = only(after, OpenRtp)
        assert isinstance(opening, OpenRtp)
        return opening.call_sid

    def to_joining(self, phone: Phone) -> str:
        sid = self.to_opening(phone)
        assert only(self.rtp_opened(sid), CallIncoming)
        return sid

    def to_wait_ack(self, phone: Phone) -> tuple[str, SipResponse]:
        sid = self.to_joining(phone)
        ok = one_response(self.joined(sid), 200)
        phone.remote_tag = ok.to.tag
        return sid, ok

    def to_confirmed(self, phone: Phone) -> str:
        sid, ok = self.to_wait_ack(phone)
        self.feed(phone.ack_for(ok), phone.flow)
        return sid

    def ended(self, actions: Iterable[Action]) -> list[CallEnded]:
        return [a for a in actions if isinstance(a, CallEnded)]


@dataclass
class Phone:
    """A UAC writing requests by hand (RFC 3261 §8.1.1)."""

    host: str = "192.0.2.10"
    port: int = 5062
    transport: str = "UDP"
    room: str = "room"
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    cseq: int = 0
    remote_tag: str | None = None
    last_invite_branch: str = ""

    @property
    def flow(self) -> Flow:
        return Flow(self.transport, (self.host, self.port))

    def request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        extra: tuple[str, ...] = (),
        uri: str | None = None,
        call_id: str | None = None,
    ) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        if method == "INVITE":
            self.last_invite_branch = branch
        lines = [
            f"{method} {uri or f'sip:{self.room}@{SERVER}:5060'} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f'From: "Alice" <sip:alice@{self.host}>;tag={self.tag}',
            f"To: <sip:{self.room}@{SERVER}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq} {'INVITE' if method == 'ACK' else method}",
            f"Contact: <sip:alice@{self.host}:{self.port}>",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(
        self,
        auth: SipResponse | None = None,
        *,
        body: bytes | None = None,
        extra: tuple[str, ...] = (),
        password: str = TOKEN,
        account: str = ACCOUNT,
    ) -> bytes:
        """An initial INVITE; with ``auth`` (a 401) it carries digest credentials."""
        self.cseq += 1
        headers = list(extra)
        uri = f"sip:{self.room}@{SERVER}:5060"
        if auth is not None:
            headers.append(authorization(auth, uri, account, password))
        return self.request(
            "INVITE",
            cseq=self.cseq,
            body=sdp(self.host) if body is None else body,
            extra=tuple(headers),
        )

    def reinvite(self, body: bytes = b"") -> bytes:
        return self.request("INVITE", to_tag=self.remote_tag, body=body)

    def ack_for(self, response: SipResponse, body: bytes = b"") -> bytes:
        """ACK: for a non-2xx the INVITE's branch (§17.1.1.3), for a 2xx a new one (§13.2.2.4)."""
        branch = self.last_invite_branch if response.status >= 300 else None
        return self.request(
            "ACK",
            cseq=response.cseq.number,
            branch=branch,
            to_tag=response.to.tag,
            body=body,
            call_id=response.call_id,
        )

    def cancel(self) -> bytes:
        return self.request("CANCEL", cseq=self.cseq, branch=self.last_invite_branch)

    def bye(self, cseq: int | None = None) -> bytes:
        return self.request("BYE", cseq=cseq, to_tag=self.remote_tag)


@dataclass
class Callee:
    """The far end of an outbound call: answers the requests the core sends it."""

    host: str = "192.0.2.50"
    port: int = 5080
    transport: str = "UDP"
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    invite: SipRequest | None = None
    cseq: int = 100

    @property
    def flow(self) -> Flow:
        return Flow(self.transport, (self.host, self.port))

    @property
    def contact(self) -> str:
        return f"<sip:bob@{self.host}:{self.port}>"

    def respond(
        self,
        request: SipRequest,
        status: int,
        *,
        body: bytes | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        tag: str | None = None,
    ) -> bytes:
        """A response; 2xx to an INVITE carry our SDP answer unless ``body`` is given."""
        headers = [*extra]
        if request.method == "INVITE" and status > 100:
            headers.append(("contact", self.contact))
        if body is None:
            body = sdp(self.host) if request.method == "INVITE" and 200 <= status < 300 else b""
        if body:
            headers.append(("content-type", "application/sdp"))
        to_tag = (tag or self.tag) if status > 100 else None
        return build_response(
            request, status, to_tag=to_tag, headers=headers, body=body
        ).serialize()

    def request(self, method: str, body: bytes = b"", *, branch: str | None = None) -> bytes:
        """An in-dialog request from the callee (BYE, re-INVITE, ACK of our 200)."""
        assert self.invite is not None
        if method != "ACK":
            self.cseq += 1
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        ours = self.invite.from_
        lines = [
            f"{method} {ours.uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:bob@{self.host}>;tag={self.tag}",
            f"To: <{ours.uri}>;tag={ours.tag}",
            f"Call-ID: {self.invite.call_id}",
            f"CSeq: {self.cseq} {'INVITE' if method == 'ACK' else method}",
            f"Contact: {self.contact}",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def authorization(challenge: SipResponse, uri: str, account: str, password: str) -> str:
    """The Authorization header answering ``challenge`` (RFC 2617 with qop=auth, MD5)."""
    header = challenge.headers.get("www-authenticate") or ""
    nonce = header.split('nonce="')[1].split('"')[0]
    ha1 = hashlib.md5(f"{account}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"INVITE:{uri}".encode()).hexdigest()
    cnonce, nc = secrets.token_hex(4), "00000001"
    response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Authorization: Digest username="{account}", realm="{REALM}", nonce="{nonce}", '
        f'uri="{uri}", response="{response}", algorithm=MD5, cnonce="{cnonce}", nc={nc}, '
        "qop=auth"
    )
