"""The state of one call, as explicit state tables (sans-I/O).

A call is one participant's SIP leg: an INVITE we received (``inbound``, UAS) or, later, one we
send (``outbound``, UAC). :class:`~confstream.sip.core.SipCore` moves it with
:meth:`Call.move`; a (state, event) pair missing from the table is a bug in the core and raises
:class:`CallStateError` (the fuzz test in tests/sip checks it never happens).

Inbound (UAS, docs/sip.md "Joining a conference")::

    OPENING        --rtp_opened-->    JOINING         offer applied, gateway.incoming_call runs
    OPENING        --rtp_failed-->    ENDED           503
    OPENING        --cancel|hangup--> ABORT_OPENING   (487 already sent for a CANCEL)
    ABORT_OPENING  --rtp_opened|rtp_failed--> ENDED   480 unless a final was already sent
    JOINING        --join_ok-->       WAIT_ACK        200 with the SDP answer (or our offer)
    JOINING        --join_refused-->  ENDED           the refusal's status (403, 482, 486, 603)
    JOINING        --cancel|hangup--> ABORT_JOINING
    ABORT_JOINING  --join_ok|join_refused--> ENDED    480 unless a final was already sent; leave
    WAIT_ACK       --ack-->           CONFIRMED       (SDP answer read from the ACK if we offered)
    WAIT_ACK       --hangup-->        BYE_PENDING     media closed and participant gone now; no
                                                      BYE before the ACK (RFC 3261 §15)
    WAIT_ACK       --ack_timeout-->   ENDED           Timer L without ACK: BYE "no-ack"
    WAIT_ACK       --bye_in-->        ENDED           200 to the BYE
    BYE_PENDING    --ack|ack_timeout--> ENDED         the BYE goes now
    BYE_PENDING    --bye_in-->        ENDED
    CONFIRMED      --reinvite_ok-->   WAIT_ACK        200 to a re-INVITE (hold/resume) waits its ACK
    CONFIRMED      --hangup-->        ENDED           BYE
    CONFIRMED      --bye_in-->        ENDED           200 to the BYE

Outbound (UAC, dial-out, docs/sip.md "Calling out")::

    OPENING        --rtp_opened-->    CALLING         INVITE with our offer sent, ring timer armed
    OPENING        --rtp_failed-->    ENDED           failed
    OPENING        --hangup-->        ABORT_OPENING
    ABORT_OPENING  --rtp_opened|rtp_failed--> ENDED   canceled
    CALLING|EARLY  --challenged-->    CALLING         401/407: INVITE again with credentials
    CALLING|EARLY  --provisional-->   EARLY           100/180/183 (183 may bring early media)
    CALLING|EARLY  --answered-->      CONFIRMED       2xx: ACK (answer applied)
    CALLING|EARLY  --rejected-->      ENDED           3xx-6xx, or Timer B (408)
    CALLING|EARLY  --hangup|timeout--> CANCELLING     CANCEL (once a provisional came, RFC 3261
                                                      §9.1; until then it waits for one)
    CANCELLING     --provisional|hangup|timeout--> CANCELLING
    CANCELLING     --answered-->      ENDED           the 2xx crossed our CANCEL: ACK then BYE
    CANCELLING     --rejected-->      ENDED           487 (or any final), or no final 64·T1
                                                      after the CANCEL
    CONFIRMED      --reinvite_ok-->   WAIT_ACK        the far end's re-INVITE (hold), as inbound
    CONFIRMED      --hangup-->        ENDED           BYE (REST, conference end, TimeLimit)
    CONFIRMED      --bye_in-->        ENDED
    WAIT_ACK, BYE_PENDING                             as inbound

Hangups of a call already ending (ABORT_*, BYE_PENDING) are absorbed: the first reason wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from confstream.sip.dialog import Dialog
from confstream.sip.flow import Flow
from confstream.sip.message import SipRequest
from confstream.sip.sdp import LocalSdp, Negotiated, SessionDescription
from confstream.sip.transaction import ClientInviteTransaction, ServerInviteTransaction


class CallState(enum.Enum):
    OPENING = "opening"
    ABORT_OPENING = "abort_opening"
    JOINING = "joining"
    ABORT_JOINING = "abort_joining"
    CALLING = "calling"
    EARLY = "early"
    CANCELLING = "cancelling"
    WAIT_ACK = "wait_ack"
    BYE_PENDING = "bye_pending"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class CallEvent(enum.Enum):
    RTP_OPENED = "rtp_opened"
    RTP_FAILED = "rtp_failed"
    JOIN_OK = "join_ok"
    JOIN_REFUSED = "join_refused"
    CANCEL = "cancel"
    HANGUP = "hangup"
    ACK = "ack"
    ACK_TIMEOUT = "ack_timeout"
    BYE_IN = "bye_in"
    REINVITE_OK = "reinvite_ok"
    # outbound only
    CHALLENGED = "challenged"
    PROVISIONAL = "provisional"
    ANSWERED = "answered"
    REJECTED = "rejected"
    TIMEOUT = "timeout"


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CallStateError(RuntimeError):
    """The core asked for a transition the table does not have (a bug, never the peer's)."""


C, V = CallState, CallEvent

#: Transitions shared by both directions once a dialog exists.
_IN_DIALOG: dict[tuple[CallState, CallEvent], CallState] = {
    (C.WAIT_ACK, V.ACK): C.CONFIRMED,
    (C.WAIT_ACK, V.HANGUP): C.BYE_PENDING,
    (C.WAIT_ACK, V.ACK_TIMEOUT): C.ENDED,
    (C.WAIT_ACK, V.BYE_IN): C.ENDED,
    (C.BYE_PENDING, V.ACK): C.ENDED,
    (C.BYE_PENDING, V.ACK_TIMEOUT): C.ENDED,
    (C.BYE_PENDING, V.BYE_IN): C.ENDED,
    (C.BYE_PENDING, V.HANGUP): C.BYE_PENDING,
    (C.CONFIRMED, V.REINVITE_OK): C.WAIT_ACK,
    (C.CONFIRMED, V.HANGUP): C.ENDED,
    (C.CONFIRMED, V.BYE_IN): C.ENDED,
}

INBOUND: dict[tuple[CallState, CallEvent], CallState] = {
    (C.OPENING, V.RTP_OPENED): C.JOINING,
    (C.OPENING, V.RTP_FAILED): C.ENDED,
    (C.OPENING, V.CANCEL): C.ABORT_OPENING,
    (C.OPENING, V.HANGUP): C.ABORT_OPENING,
    (C.ABORT_OPENING, V.RTP_OPENED): C.ENDED,
    (C.ABORT_OPENING, V.RTP_FAILED): C.ENDED,
    (C.ABORT_OPENING, V.CANCEL): C.ABORT_OPENING,
    (C.ABORT_OPENING, V.HANGUP): C.ABORT_OPENING,
    (C.JOINING, V.JOIN_OK): C.WAIT_ACK,
    (C.JOINING, V.JOIN_REFUSED): C.ENDED,
    (C.JOINING, V.CANCEL): C.ABORT_JOINING,
    (C.JOINING, V.HANGUP): C.ABORT_JOINING,
    (C.ABORT_JOINING, V.JOIN_OK): C.ENDED,
    (C.ABORT_JOINING, V.JOIN_REFUSED): C.ENDED,
    (C.ABORT_JOINING, V.CANCEL): C.ABORT_JOINING,
    (C.ABORT_JOINING, V.HANGUP): C.ABORT_JOINING,
    **_IN_DIALOG,
}

OUTBOUND: dict[tuple[CallState, CallEvent], CallState] = {
    (C.OPENING, V.RTP_OPENED): C.CALLING,
    (C.OPENING, V.RTP_FAILED): C.ENDED,
    (C.OPENING, V.HANGUP): C.ABORT_OPENING,
    (C.ABORT_OPENING, V.RTP_OPENED): C.ENDED,
    (C.ABORT_OPENING, V.RTP_FAILED): C.ENDED,
    (C.ABORT_OPENING, V.HANGUP): C.ABORT_OPENING,
    (C.CALLING, V.CHALLENGED): C.CALLING,
    (C.EARLY, V.CHALLENGED): C.CALLING,
    (C.CALLING, V.PROVISIONAL): C.EARLY,
    (C.EARLY, V.PROVISIONAL): C.EARLY,
    (C.CALLING, V.ANSWERED): C.CONFIRMED,
    (C.EARLY, V.ANSWERED): C.CONFIRMED,
    (C.CALLING, V.REJECTED): C.ENDED,
    (C.EARLY, V.REJECTED): C.ENDED,
    (C.CALLING, V.HANGUP): C.CANCELLING,
    (C.EARLY, V.HANGUP): C.CANCELLING,
    (C.CALLING, V.TIMEOUT): C.CANCELLING,
    (C.EARLY, V.TIMEOUT): C.CANCELLING,
    (C.CANCELLING, V.PROVISIONAL): C.CANCELLING,
    (C.CANCELLING, V.HANGUP): C.CANCELLING,
    (C.CANCELLING, V.TIMEOUT): C.CANCELLING,
    (C.CANCELLING, V.ANSWERED): C.ENDED,
    (C.CANCELLING, V.REJECTED): C.ENDED,
    **_IN_DIALOG,
}

TABLES: dict[Direction, dict[tuple[CallState, CallEvent], CallState]] = {
    Direction.INBOUND: INBOUND,
    Direction.OUTBOUND: OUTBOUND,
}

#: States in which the call is being set up and has no dialog yet.
SETUP_STATES = frozenset({C.OPENING, C.ABORT_OPENING, C.JOINING, C.ABORT_JOINING})
#: States in which the call's dialog is registered (in-dialog requests reach it).
DIALOG_STATES = frozenset({C.WAIT_ACK, C.BYE_PENDING, C.CONFIRMED})


@dataclass(frozen=True)
class Dial:
    """An outbound call the owner asks the core to place (:meth:`SipCore.dial`).

    ``to_uri`` is the Request-URI (``sip:user@host[:port]``); ``flow`` is where the INVITE
    goes, an address the owner has checked against the outbound policy (docs/sip.md, "Calling
    out"). ``ring_timeout``: seconds before an unanswered call is cancelled (``no-answer``);
    ``time_limit``: seconds an answered call may last (None: no limit). ``early_media``: a 183
    with SDP starts the media before the answer."""

    call_sid: str
    account_sid: str
    to_uri: str
    flow: Flow
    from_uri: str
    from_display: str | None = None
    ring_timeout: float = 60.0
    time_limit: float | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    early_media: bool = False


@dataclass(eq=False)
class Call:
    """One call as the core keeps it. ``invite_txn`` is the server INVITE transaction whose
    2xx the dialog waits to see ACKed: the initial one (inbound), then each re-INVITE answered
    200; None for an outbound call until the far end re-INVITEs."""

    call_sid: str
    direction: Direction
    flow: Flow
    invite: SipRequest
    invite_txn: ServerInviteTransaction | None
    account_sid: str
    request_user: str
    #: The dialog, built from the INVITE; registered (reachable) only from our 2xx on.
    dialog: Dialog
    offer: SessionDescription | None = None
    negotiated: Negotiated | None = None
    local_sdp: LocalSdp | None = None
    #: The body of our 200 (SDP answer, or our offer for an INVITE without SDP).
    answer_body: bytes = b""
    state: CallState = CallState.OPENING
    #: The participant is in the conference (gateway.incoming_call returned).
    joined: bool = False
    #: The media is closed and the participant left (CallEnded emitted).
    media_closed: bool = False
    #: We offered in the 2xx: the answer comes in the ACK (RFC 3264 §4, RFC 3261 §13.2.1).
    awaiting_answer_in_ack: bool = False
    #: Why the call ends, once it is ending (the first hangup reason wins).
    end_reason: str | None = None
    #: The caller's address (the flow's, or what a trusted proxy recorded: docs/sip.md).
    source: tuple[str, int] = ("", 0)
    # -- outbound only ---------------------------------------------------------------------
    dial: Dial | None = None
    #: The client transaction of our current INVITE (a new one after each challenge).
    client_txn: ClientInviteTransaction | None = None
    #: A provisional response came: a CANCEL may be sent (RFC 3261 §9.1).
    provisional: bool = False
    cancel_sent: bool = False
    #: ``Ringing`` was reported (the first 180/183).
    ringing: bool = False
    #: Our ACK of the 2xx, sent again for each retransmission of it.
    ack: SipRequest | None = None
    #: Credentials sent with the INVITE, by header name (answers to 401 and 407 add up).
    credentials: dict[str, str] = field(default_factory=dict)
    auth_tries: int = 0
    #: How an unanswered call that we cancel is reported: ``no-answer`` (ring timeout) or
    #: ``canceled`` (hung up before the answer).
    cancel_outcome: str | None = None

    def move(self, event: CallEvent) -> CallState:
        new = TABLES[self.direction].get((self.state, event))
        if new is None:
            raise CallStateError(
                f"{self.direction.value} call: {event.value} in {self.state.value}"
            )
        self.state = new
        return new

    def can(self, event: CallEvent) -> bool:
        return (self.state, event) in TABLES[self.direction]
