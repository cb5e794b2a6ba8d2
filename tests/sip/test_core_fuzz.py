"""Fuzzing the sans-I/O core: random sequences of well-formed and malformed messages from a few
phones, dial-outs answered by a callee at random (any status, retransmissions, BYE and
re-INVITE from the far end), timer events, slow-work results in any order and hang-ups. The
core never raises, every call is reported ended exactly once, and once everything is answered
and every timer has fired, nothing is left: no call, no transaction, no timer, no pending
lookup."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confstream.sip.core import (
    Action,
    CallEnded,
    CallIncoming,
    LookupToken,
    OpenRtp,
    Send,
)
from confstream.sip.message import SipParseError, SipRequest, SipResponse

from .corekit import TOKEN, Callee, Harness, Phone, sdp


@dataclass
class World:
    h: Harness
    phones: list[Phone]
    last: dict[int, SipResponse] = field(default_factory=dict)
    last_ok: dict[int, SipResponse] = field(default_factory=dict)
    lookups: list[int] = field(default_factory=list)
    opening: list[str] = field(default_factory=list)
    joining: list[str] = field(default_factory=list)
    byes: list[SipRequest] = field(default_factory=list)
    opened: set[str] = field(default_factory=set)
    incoming: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    sent_bytes: list[bytes] = field(default_factory=list)
    callee: Callee = field(default_factory=Callee)
    #: what the core sent the callee: INVITEs to answer, other requests (CANCEL, BYE, ACK)
    callee_invites: list[SipRequest] = field(default_factory=list)
    callee_requests: list[SipRequest] = field(default_factory=list)
    dials: int = 0

    def take(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, LookupToken):
                self.lookups.append(a.lookup)
            elif isinstance(a, OpenRtp):
                assert a.call_sid not in self.opened
                self.opened.add(a.call_sid)
                self.opening.append(a.call_sid)
            elif isinstance(a, CallIncoming):
                assert a.call_sid in self.opened
                self.incoming.append(a.call_sid)
                self.joining.append(a.call_sid)
            elif isinstance(a, CallEnded):
                assert a.call_sid in self.opened
                self.ended.append(a.call_sid)
            elif isinstance(a, Send):
                self._note(a)

    def _note(self, sent: Send) -> None:
        """Remember what a phone needs to go on: the last answer to its INVITE, our BYEs."""
        message = sent.message
        try:
            cseq, call_id = message.cseq, message.call_id
            to_tag = message.to.tag if isinstance(message, SipResponse) else None
        except SipParseError:
            return  # a 400 made of what could be salvaged of a broken request
        if sent.flow.remote == self.callee.flow.remote and isinstance(message, SipRequest):
            if message.method == "INVITE":
                self.callee_invites.append(message)
            elif message.method != "ACK":
                self.callee_requests.append(message)
            return
        for i, phone in enumerate(self.phones):
            if sent.flow.remote != phone.flow.remote:
                continue
            if isinstance(message, SipResponse):
                if cseq.method == "INVITE":
                    self.last[i] = message
                    if message.status == 200:  # the phone talks in this dialog now
                        self.last_ok[i] = message
                        phone.remote_tag, phone.call_id = to_tag, call_id
            elif message.method == "BYE":
                self.byes.append(message)


#: What a phone sends next, weighted towards getting calls up and through their dialogs.
KINDS = [
    "invite",
    "invite-auth",
    "invite-auth",
    "invite-auth",
    "invite-wrong",
    "reinvite",
    "reinvite",
    "ack",
    "ack",
    "ack",
    "cancel",
    "bye",
    "other",
]
BODIES = [
    sdp(),
    sdp(),
    sdp(direction="sendonly"),
    sdp(ip="0.0.0.0"),
    b"",
    b"v=0\r\nm=video 1 X 9\r\n",
]


def _message(w: World, data: st.DataObject, phone: Phone, i: int) -> bytes:
    last = w.last.get(i)
    kind = data.draw(st.sampled_from(KINDS))
    body = data.draw(st.sampled_from(BODIES))
    if kind in ("invite-auth", "invite-wrong") and last is not None and last.status == 401:
        password = TOKEN if kind == "invite-auth" else "wrong"
        return phone.invite(last, body=body, password=password)
    if kind == "reinvite":
        return phone.reinvite(body)
    if kind == "ack" and last is not None:
        if i in w.last_ok and data.draw(st.booleans()):
            last = w.last_ok[i]
        return phone.ack_for(last, body=data.draw(st.sampled_from([b"", sdp(), b"junk"])))
    if kind == "cancel":
        return phone.cancel()
    if kind == "bye":
        return phone.bye(cseq=data.draw(st.sampled_from([None, 1])))
    if kind == "other":
        method = data.draw(st.sampled_from(["OPTIONS", "REGISTER", "INFO", "FROB", "ACK"]))
        return phone.request(method)
    if data.draw(st.sampled_from([True, False, False, False])):
        phone.call_id = phone.call_id + "x"  # a new call from the same phone
    return phone.invite(body=body)


def _mangle(data: st.DataObject, raw: bytes) -> bytes:
    how = data.draw(st.sampled_from(["cut", "flip", "insert", "random", "drop-line"]))
    if how == "random":
        return data.draw(st.binary(max_size=300))
    if how == "drop-line":
        lines = raw.split(b"\r\n")
        k = data.draw(st.integers(0, len(lines) - 1))
        return b"\r\n".join(lines[:k] + lines[k + 1 :])
    pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    if how == "cut":
        return raw[:pos]
    if how == "flip":
        byte = data.draw(st.integers(0, 255))
        return raw[:pos] + bytes([byte]) + raw[pos + 1 :]
    return raw[:pos] + data.draw(st.binary(min_size=1, max_size=20)) + raw[pos:]


def _resolve_one(w: World, data: st.DataObject) -> None:
    h = w.h
    choices = [n for n, q in (("lookup", w.lookups), ("rtp", w.opening), ("join", w.joining)) if q]
    if not choices:
        return
    which = data.draw(st.sampled_from(choices))
    if which == "lookup":
        lookup = w.lookups.pop(data.draw(st.integers(0, len(w.lookups) - 1)))
        outcome = data.draw(st.sampled_from(["token", "token", "token", "none", "error"]))
        if outcome == "error":
            w.take(h._seen(h.core.auth_error(lookup, h.now)))
        else:
            password = TOKEN if outcome == "token" else None
            w.take(h._seen(h.core.auth_result(lookup, password, h.now)))
    elif which == "rtp":
        sid = w.opening.pop(data.draw(st.integers(0, len(w.opening) - 1)))
        if data.draw(st.sampled_from([True, True, True, False])):
            w.take(h.rtp_opened(sid, 40000))
        else:
            w.take(h.rtp_failed(sid))
    else:
        sid = w.joining.pop(data.draw(st.integers(0, len(w.joining) - 1)))
        refused = data.draw(st.sampled_from([None, None, None, None, 486, 403, 200, 500]))
        w.take(h.joined(sid, refused))


def _settle(w: World) -> None:
    """Answer every outstanding request, in order, until nothing is pending."""
    h = w.h
    for _ in range(100):
        if not (w.lookups or w.opening or w.joining):
            return
        while w.lookups:
            w.take(h._seen(h.core.auth_result(w.lookups.pop(0), TOKEN, h.now)))
        while w.opening:
            w.take(h.rtp_opened(w.opening.pop(0)))
        while w.joining:
            w.take(h.joined(w.joining.pop(0)))
    raise AssertionError("slow work never settles")


CALLEE_STATUSES = [100, 180, 183, 183, 200, 200, 200, 401, 407, 486, 487, 603]


def _dial(w: World, data: st.DataObject) -> None:
    w.dials += 1
    auth = data.draw(st.booleans())
    w.take(
        w.h.dial(
            w.callee,
            call_sid=f"CAout{w.dials}",
            auth_username="bob" if auth else None,
            auth_password="pw" if auth else None,
            early_media=data.draw(st.booleans()),
            ring_timeout=data.draw(st.sampled_from([1.0, 20.0])),
            time_limit=data.draw(st.sampled_from([None, 2.0])),
        )
    )


def _callee_acts(w: World, data: st.DataObject) -> None:
    """The callee answers one of our INVITEs (any status, maybe again), answers a CANCEL or
    BYE, or sends a request in the dialog of an INVITE it answered."""
    h, callee = w.h, w.callee
    what = data.draw(st.sampled_from(["respond", "respond", "request", "in-dialog", "in-dialog"]))
    if what == "request" and w.callee_requests:
        request = w.callee_requests.pop(data.draw(st.integers(0, len(w.callee_requests) - 1)))
        status = data.draw(st.sampled_from([200, 200, 481, 500]))
        w.take(h.feed(callee.respond(request, status), callee.flow))
        return
    if not w.callee_invites:
        return
    invite = data.draw(st.sampled_from(w.callee_invites))
    callee.invite = invite
    if what == "in-dialog":
        method = data.draw(st.sampled_from(["BYE", "INVITE", "INVITE", "ACK", "ACK", "OPTIONS"]))
        body = sdp(callee.host, data.draw(st.sampled_from(["sendonly", "sendrecv"])))
        w.take(h.feed(callee.request(method, body if method == "INVITE" else b""), callee.flow))
        return
    status = data.draw(st.sampled_from(CALLEE_STATUSES))
    extra: tuple[tuple[str, str], ...] = ()
    if status in (401, 407):
        name = "www-authenticate" if status == 401 else "proxy-authenticate"
        stale = data.draw(st.sampled_from(["", ", stale=true"]))
        extra = ((name, f'Digest realm="far", nonce="n", qop="auth"{stale}'),)
    elif status == 200 and data.draw(st.booleans()):
        extra = (("record-route", "<sip:192.0.2.50:5080;lr>"),)
    bodies: list[bytes | None] = [None, None, b"", b"v=0\r\njunk"]
    raw = callee.respond(invite, status, body=data.draw(st.sampled_from(bodies)), extra=extra)
    w.take(h.feed(raw, callee.flow))


STEPS = ["message"] * 4 + ["mangled", "time", "resolve", "resolve", "resolve", "hangup"]
STEPS += ["dial", "callee", "callee", "callee"]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_random_sequences_never_raise_and_never_leak(data: st.DataObject) -> None:
    h = Harness(max_failures=3)
    phones = [
        Phone(),
        Phone(host="192.0.2.20", transport="TCP"),
        Phone(host="192.0.2.20", port=5070),
    ]
    w = World(h, phones)
    for _ in range(data.draw(st.integers(20, 80))):
        step = data.draw(st.sampled_from(STEPS))
        if step in ("message", "mangled"):
            i = data.draw(st.integers(0, len(phones) - 1))
            raw = _message(w, data, phones[i], i)
            if step == "mangled":
                raw = _mangle(data, raw)
            w.take(h.feed(raw, phones[i].flow))
        elif step == "time":
            w.take(h.advance(data.draw(st.sampled_from([0.0, 0.3, 1.0, 5.0, 33.0]))))
        elif step == "resolve":
            _resolve_one(w, data)
        elif step == "dial":
            _dial(w, data)
        elif step == "callee":
            _callee_acts(w, data)
        elif w.opened:
            sid = data.draw(st.sampled_from(sorted(h.core.calls) or sorted(w.opened)))
            w.take(h.hangup(sid, data.draw(st.sampled_from(["api-delete", "rtp-timeout"]))))

    # the end of the world: answer everything, hang up, let every timer fire
    _settle(w)
    w.take(h._seen(h.core.shutdown(h.now)))
    _settle(w)
    for _ in range(5):
        w.take(h.run_out())
        _settle(w)
        for invite in w.callee_invites:  # the callee ends every INVITE it was sent
            w.take(h.feed(w.callee.respond(invite, 487), w.callee.flow))
        for phone in phones:  # ACK whatever still waits for one
            for i, p in enumerate(phones):
                if p is phone and i in w.last:
                    w.take(h.feed(phone.ack_for(w.last[i]), phone.flow))
    w.take(h.run_out())

    assert h.core.calls == {}
    assert h.core.live_transactions == 0
    assert h.core.armed == {} and h.timers == {}
    assert h.core.pending_lookups == []
    assert sorted(w.ended) == sorted(w.opened), "every call ends exactly once"
    assert len(set(w.incoming)) == len(w.incoming)
