"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state) as state tables, sans-I/O.

Time is passed in (seconds, any monotonic clock) and timers come back as deadlines: the owner
calls :meth:`Transaction.next_deadline` after each interaction and :meth:`Transaction.on_timer`
when that time has come. Outputs are :class:`Transmit` (send these bytes to the transaction's
peer), :class:`Deliver` (a response for the client's owner) and :class:`TimedOut`.

Timer values (RFC 3261 §17.1.1.1, Table 4): T1 = 500 ms (RTT estimate), T2 = 4 s (cap for
retransmission intervals), T4 = 5 s (how long a message may stay in the network). They are
configurable through :class:`TimerConfig` so tests can shrink them.

Server INVITE (§17.2.1 + RFC 6026 §7.1)::

    Proceeding --send 1xx--> Proceeding          (INVITE retransmission: resend last 1xx)
    Proceeding --send 2xx--> Accepted             2xx resent every T1·2ⁿ (cap T2) until ACK
                                                  [unreliable transports only]; Timer L = 64·T1
    Proceeding --send 3xx-6xx--> Completed        Timer G = T1·2ⁿ (cap T2) resends [unreliable,
                                                  and only with retransmit=True];
                                                  Timer H = 64·T1 gives up waiting for the ACK
    Completed  --ACK--> Confirmed                 Timer I = T4 [unreliable] or 0 absorbs ACKs
    Accepted   --ACK (for the 2xx)--> Accepted    stops resending; Timer L ends the transaction
    Accepted   --Timer L without ACK--> Terminated + TimedOut (the dialog owner sends BYE)
    Completed  --Timer H--> Terminated + TimedOut

A final response sent with ``retransmit=False`` is sent once: no Timer G. The server uses it
for answers to requests from sources not (yet) authenticated: 401/407 challenges, 403 for
refused credentials and other refusals before authentication, so that a spoofed source cannot
turn one datagram into eleven (docs/sip.md "Limits"). A retransmission of the request still
gets the response once more (one answer per request received, never more), which is how a
caller whose 401 was lost recovers.

Server non-INVITE (§17.2.2)::

    Trying --send 1xx--> Proceeding --send final--> Completed --Timer J--> Terminated
    Timer J = 64·T1 [unreliable] or 0; request retransmissions resend the last response.

Client INVITE (§17.1.1 + RFC 6026 §7.2), used for the INVITEs we send (dial-out)::

    Calling --Timer A--> Calling (resend; A = T1·2ⁿ, no cap) [unreliable]
    Calling --Timer B (64·T1)--> Terminated + TimedOut
    Calling/Proceeding --1xx--> Proceeding (Deliver; Timer A stops)
    Calling/Proceeding --2xx--> Accepted (Deliver); Timer M = 64·T1. Accepted passes every
                                2xx (retransmissions, forks) to the owner, which ACKs them
    Calling/Proceeding --3xx-6xx--> Completed (Deliver; ACK sent with the INVITE's branch)
    Completed --3xx-6xx--> Completed (ACK again);  Timer D = 32 s [unreliable] or 0
    Accepted --Timer M--> Terminated;  Completed --Timer D--> Terminated

Client non-INVITE (§17.1.2), used for the BYE and CANCEL we send::

    Trying --Timer E--> Trying (resend; E = T1·2ⁿ capped at T2) [unreliable]
    Trying/Proceeding --1xx--> Proceeding (E now fires every T2)
    Trying/Proceeding --final--> Completed (Deliver) --Timer K (T4 [unreliable] or 0)--> Terminated
    Trying/Proceeding --Timer F (64·T1)--> Terminated + TimedOut
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from confstream.sip.message import Headers, SipRequest, SipResponse


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 timer bases; defaults are the RFC's."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class Event(enum.Enum):
    RECV_REQUEST = "recv_request"  # a retransmission of the transaction's request
    RECV_ACK = "recv_ack"
    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_FINAL = "send_final"  # 3xx-6xx (or any final for non-INVITE)
    RECV_1XX = "recv_1xx"
    RECV_FINAL = "recv_final"
    RECV_2XX = "recv_2xx"  # client INVITE only (a 2xx is not final for the transaction)
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_G = "timer_g"
    TIMER_H = "timer_h"
    TIMER_I = "timer_i"
    TIMER_J = "timer_j"
    TIMER_K = "timer_k"
    TIMER_L = "timer_l"
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_M = "timer_m"


S, E = State, Event

#: (state, event) -> next state. Anything else from the network is ignored; anything else
#: from the owner (sending a response) raises TransactionError.
SERVER_INVITE: dict[tuple[State, Event], State] = {
    (S.PROCEEDING, E.RECV_REQUEST): S.PROCEEDING,
    (S.PROCEEDING, E.SEND_1XX): S.PROCEEDING,
    (S.PROCEEDING, E.SEND_2XX): S.ACCEPTED,
    (S.PROCEEDING, E.SEND_FINAL): S.COMPLETED,
    (S.COMPLETED, E.RECV_REQUEST): S.COMPLETED,
    (S.COMPLETED, E.RECV_ACK): S.CONFIRMED,
    (S.COMPLETED, E.TIMER_G): S.COMPLETED,
    (S.COMPLETED, E.TIMER_H): S.TERMINATED,
    (S.CONFIRMED, E.RECV_ACK): S.CONFIRMED,
    (S.CONFIRMED, E.RECV_REQUEST): S.CONFIRMED,
    (S.CONFIRMED, E.TIMER_I): S.TERMINATED,
    (S.ACCEPTED, E.RECV_REQUEST): S.ACCEPTED,
    (S.ACCEPTED, E.RECV_ACK): S.ACCEPTED,
    (S.ACCEPTED, E.SEND_2XX): S.ACCEPTED,
    (S.ACCEPTED, E.TIMER_G): S.ACCEPTED,
    (S.ACCEPTED, E.TIMER_L): S.TERMINATED,
}

SERVER_NON_INVITE: dict[tuple[State, Event], State] = {
    (S.TRYING, E.RECV_REQUEST): S.TRYING,
    (S.TRYING, E.SEND_1XX): S.PROCEEDING,
    (S.TRYING, E.SEND_FINAL): S.COMPLETED,
    (S.TRYING, E.SEND_2XX): S.COMPLETED,
    (S.PROCEEDING, E.RECV_REQUEST): S.PROCEEDING,
    (S.PROCEEDING, E.SEND_1XX): S.PROCEEDING,
    (S.PROCEEDING, E.SEND_FINAL): S.COMPLETED,
    (S.PROCEEDING, E.SEND_2XX): S.COMPLETED,
    (S.COMPLETED, E.RECV_REQUEST): S.COMPLETED,
    (S.COMPLETED, E.TIMER_J): S.TERMINATED,
}

CLIENT_INVITE: dict[tuple[State, Event], State] = {
    (S.CALLING, E.TIMER_A): S.CALLING,
    (S.CALLING, E.TIMER_B): S.TERMINATED,
    (S.CALLING, E.RECV_1XX): S.PROCEEDING,
    (S.PROCEEDING, E.RECV_1XX): S.PROCEEDING,
    (S.CALLING, E.RECV_2XX): S.ACCEPTED,
    (S.PROCEEDING, E.RECV_2XX): S.ACCEPTED,
    (S.ACCEPTED, E.RECV_2XX): S.ACCEPTED,
    (S.ACCEPTED, E.RECV_1XX): S.ACCEPTED,
    (S.ACCEPTED, E.TIMER_M): S.TERMINATED,
    (S.CALLING, E.RECV_FINAL): S.COMPLETED,
    (S.PROCEEDING, E.RECV_FINAL): S.COMPLETED,
    (S.COMPLETED, E.RECV_FINAL): S.COMPLETED,
    (S.COMPLETED, E.RECV_1XX): S.COMPLETED,
    (S.COMPLETED, E.TIMER_D): S.TERMINATED,
}

CLIENT_NON_INVITE: dict[tuple[State, Event], State] = {
    (S.TRYING, E.TIMER_E): S.TRYING,
    (S.TRYING, E.TIMER_F): S.TERMINATED,
    (S.TRYING, E.RECV_1XX): S.PROCEEDING,
    (S.TRYING, E.RECV_FINAL): S.COMPLETED,
    (S.PROCEEDING, E.TIMER_E): S.PROCEEDING,
    (S.PROCEEDING, E.TIMER_F): S.TERMINATED,
    (S.PROCEEDING, E.RECV_1XX): S.PROCEEDING,
    (S.PROCEEDING, E.RECV_FINAL): S.COMPLETED,
    (S.COMPLETED, E.RECV_1XX): S.COMPLETED,
    (S.COMPLETED, E.RECV_FINAL): S.COMPLETED,
    (S.COMPLETED, E.TIMER_K): S.TERMINATED,
}


class TransactionError(RuntimeError):
    """The owner asked for something the transaction's state does not allow."""


@dataclass(frozen=True)
class Transmit:
    message: SipRequest | SipResponse


@dataclass(frozen=True)
class Deliver:
    response: SipResponse


@dataclass(frozen=True)
class TimedOut:
    """Timer H/L/F/B fired: no ACK (server INVITE) or no final response (client)."""

    timer: Event


Output = Transmit | Deliver | TimedOut


class Transaction:
    """Common machinery: the state, the table, named timer deadlines."""

    table: dict[tuple[State, Event], State] = {}
    initial: State = S.TRYING

    def __init__(self, request: SipRequest, reliable: bool, timers: TimerConfig) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = self.initial
        self._deadlines: dict[Event, float] = {}
        self._interval = timers.t1
        self.last_response: SipResponse | None = None

    @property
    def terminated(self) -> bool:
        return self.state is S.TERMINATED

    def next_deadline(self) -> float | None:
        """The earliest pending timer, or None."""
        return min(self._deadlines.values(), default=None)

    def _move(self, event: Event, *, from_owner: bool) -> bool:
        new = self.table.get((self.state, event))
        if new is None:
            if from_owner:
                raise TransactionError(f"{event.value} not allowed in {self.state.value}")
            return False
        self.state = new
        if new is S.TERMINATED:
            self._deadlines.clear()
        return True

    def on_timer(self, now: float) -> list[Output]:
        """Fire every timer due at ``now`` (earliest first)."""
        out: list[Output] = []
        while True:
            due = [(t, ev) for ev, t in self._deadlines.items() if t <= now]
            if not due:
                return out
            _, event = min(due, key=lambda item: item[0])
            del self._deadlines[event]
            if self._move(event, from_owner=False):
                out.extend(self._after_timer(event, now))

    def _after_timer(self, event: Event, now: float) -> list[Output]:
        raise NotImplementedError


class ServerInviteTransaction(Transaction):
    table = SERVER_INVITE
    initial = S.PROCEEDING

    def __init__(self, request: SipRequest, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, reliable, timers)
        self.ack_received = False

    def on_request(self, now: float) -> list[Output]:
        """A retransmission of the INVITE arrived."""
        if not self._move(E.RECV_REQUEST, from_owner=False):
            return []
        if self.state in (S.PROCEEDING, S.COMPLETED) and self.last_response is not None:
            return [Transmit(self.last_response)]
        return []

    def on_ack(self, now: float) -> list[Output]:
        """An ACK: for a non-2xx it has the INVITE's branch; for a 2xx the dialog matches it."""
        if not self._move(E.RECV_ACK, from_owner=False):
            return []
        if self.state is S.CONFIRMED:
            self._deadlines.pop(E.TIMER_G, None)
            self._deadlines.pop(E.TIMER_H, None)
            self._deadlines[E.TIMER_I] = now + (0.0 if self.reliable else self.timers.t4)
        elif self.state is S.ACCEPTED:
            self.ack_received = True
            self._deadlines.pop(E.TIMER_G, None)
        return []

    def send_response(
        self, response: SipResponse, now: float, *, retransmit: bool = True
    ) -> list[Output]:
        """Send ``response``; ``retransmit=False`` sends a 3xx-6xx only once (no Timer G)."""
        event = _send_event(response.status)
        self._move(event, from_owner=True)
        self.last_response = response
        if event is E.SEND_2XX and E.TIMER_L not in self._deadlines:
            self._deadlines[E.TIMER_L] = now + 64 * self.timers.t1
            if not self.reliable:
                self._interval = self.timers.t1
                self._deadlines[E.TIMER_G] = now + self._interval
        elif event is E.SEND_FINAL:
            self._deadlines[E.TIMER_H] = now + 64 * self.timers.t1
            if not self.reliable and retransmit:
                self._interval = self.timers.t1
                self._deadlines[E.TIMER_G] = now + self._interval
        return [Transmit(response)]

    def _after_timer(self, event: Event, now: float) -> list[Output]:
        if event is E.TIMER_G:
            self._interval = min(self._interval * 2, self.timers.t2)
            self._deadlines[E.TIMER_G] = now + self._interval
            assert self.last_response is not None
            return [Transmit(self.last_response)]
        if event is E.TIMER_H:
            return [TimedOut(event)]
        if event is E.TIMER_L and not self.ack_received:
            return [TimedOut(event)]
        return []


def _send_event(status: int) -> Event:
    """The event a server transaction's owner causes by sending a response of ``status``."""
    if status < 200:
        return E.SEND_1XX
    return E.SEND_2XX if status < 300 else E.SEND_FINAL


class ServerNonInviteTransaction(Transaction):
    table = SERVER_NON_INVITE
    initial = S.TRYING

    def on_request(self, now: float) -> list[Output]:
        if not self._move(E.RECV_REQUEST, from_owner=False):
            return []
        if self.last_response is not None:
            return [Transmit(self.last_response)]
        return []

    def send_response(
        self, response: SipResponse, now: float, *, retransmit: bool = True
    ) -> list[Output]:
        """Send ``response`` (non-INVITE finals are never retransmitted on a timer anyway)."""
        event = _send_event(response.status)
        self._move(event, from_owner=True)
        self.last_response = response
        if self.state is S.COMPLETED:
            self._deadlines[E.TIMER_J] = now + (0.0 if self.reliable else 64 * self.timers.t1)
        return [Transmit(response)]

    def _after_timer(self, event: Event, now: float) -> list[Output]:
        return []


class ClientNonInviteTransaction(Transaction):
    table = CLIENT_NON_INVITE
    initial = S.TRYING

    def start(self, now: float) -> list[Output]:
        """Send the request for the first time and arm Timers E and F."""
        self._deadlines[E.TIMER_F] = now + 64 * self.timers.t1
        if not self.reliable:
            self._interval = self.timers.t1
            self._deadlines[E.TIMER_E] = now + self._interval
        return [Transmit(self.request)]

    def on_response(self, response: SipResponse, now: float) -> list[Output]:
        event = E.RECV_1XX if response.status < 200 else E.RECV_FINAL
        previous = self.state
        if not self._move(event, from_owner=False):
            return []
        if previous is S.COMPLETED:
            return []  # retransmitted final: absorbed
        if event is E.RECV_FINAL:
            self._deadlines.pop(E.TIMER_E, None)
            self._deadlines.pop(E.TIMER_F, None)
            self._deadlines[E.TIMER_K] = now + (0.0 if self.reliable else self.timers.t4)
        return [Deliver(response)]

    def _after_timer(self, event: Event, now: float) -> list[Output]:
        if event is E.TIMER_E:
            if self.state is S.PROCEEDING:
                self._interval = self.timers.t2
            else:
                self._interval = min(self._interval * 2, self.timers.t2)
            self._deadlines[E.TIMER_E] = now + self._interval
            return [Transmit(self.request)]
        if event is E.TIMER_F:
            return [TimedOut(event)]
        return []


#: How long a client INVITE transaction absorbs retransmitted non-2xx finals over UDP.
TIMER_D_UNRELIABLE = 32.0


def ack_for_non_2xx(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK of a 3xx-6xx (RFC 3261 §17.1.1.3): the INVITE's Request-URI, top Via, From,
    Call-ID and Route, the response's To, CSeq number with method ACK."""
    h = Headers()
    h.add("via", invite.headers.get("via") or "")
    h.add("max-forwards", "70")
    h.add("from", invite.headers.get("from") or "")
    h.add("to", response.headers.get("to") or "")
    h.add("call-id", invite.headers.get("call-id") or "")
    h.add("cseq", f"{invite.cseq.number} ACK")
    for route in invite.headers.get_all("route"):
        h.add("route", route)
    return SipRequest(h, b"", "ACK", invite.uri)


class ClientInviteTransaction(Transaction):
    table = CLIENT_INVITE
    initial = S.CALLING

    def __init__(self, request: SipRequest, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, reliable, timers)
        self.ack: SipRequest | None = None

    def start(self, now: float) -> list[Output]:
        """Send the INVITE for the first time and arm Timers A and B."""
        self._deadlines[E.TIMER_B] = now + 64 * self.timers.t1
        if not self.reliable:
            self._interval = self.timers.t1
            self._deadlines[E.TIMER_A] = now + self._interval
        return [Transmit(self.request)]

    def on_response(self, response: SipResponse, now: float) -> list[Output]:
        status = response.status
        if status < 200:
            event = E.RECV_1XX
        elif status < 300:
            event = E.RECV_2XX
        else:
            event = E.RECV_FINAL
        previous = self.state
        if not self._move(event, from_owner=False):
            return []
        if event is E.RECV_1XX:
            if previous is S.COMPLETED:
                return []
            self._deadlines.pop(E.TIMER_A, None)
            # no Timer B once the far end answered: the owner's ring timeout CANCELs
            self._deadlines.pop(E.TIMER_B, None)
            return [Deliver(response)]
        if event is E.RECV_2XX:
            if previous is not S.ACCEPTED:
                self._deadlines.clear()
                self._deadlines[E.TIMER_M] = now + 64 * self.timers.t1
            return [Deliver(response)]
        # 3xx-6xx: ACK it ourselves (same branch); only the first one reaches the owner
        if previous is S.COMPLETED:
            return [Transmit(self.ack)] if self.ack is not None else []
        self._deadlines.clear()
        self._deadlines[E.TIMER_D] = now + (0.0 if self.reliable else TIMER_D_UNRELIABLE)
        self.ack = ack_for_non_2xx(self.request, response)
        return [Transmit(self.ack), Deliver(response)]

    def _after_timer(self, event: Event, now: float) -> list[Output]:
        if event is E.TIMER_A:
            self._interval *= 2
            self._deadlines[E.TIMER_A] = now + self._interval
            return [Transmit(self.request)]
        if event is E.TIMER_B:
            return [TimedOut(event)]
        return []
