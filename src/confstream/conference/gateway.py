"""What the SIP edge needs from the rest of the server, as one narrow interface.

The application (``confstream.services``) implements it with the store and the engine; the SIP
layer only calls these methods, so it never touches the database or the mixer directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from confstream.conference.base import Participant

# Join refusals are domain errors (confstream.errors); re-exported here, where the SIP edge
# meets them. The SIP edge answers the INVITE with their ``sip_status`` (docs/errors.md, SIP).
from confstream.errors import AccountNotActive, AlreadyJoined, JoinRefused

__all__ = [
    "AccountNotActive",
    "AlreadyJoined",
    "ConferenceGateway",
    "DialListener",
    "Dialer",
    "IncomingCall",
    "JoinOptions",
    "JoinRefused",
    "OutboundCall",
]


@dataclass(frozen=True)
class IncomingCall:
    """An authenticated initial INVITE, as the application sees it (no SIP objects).

    ``request_user`` is the Request-URI user part, URL-unescaped: the conference name when the
    account has no voice URL (docs/sip.md). ``sip_headers`` are the request's ``X-`` headers
    in arrival order (what a voice webhook receives as ``SipHeader_X-…``)."""

    call_sid: str
    account_sid: str
    request_user: str
    from_uri: str
    to_uri: str
    caller_name: str | None = None
    sip_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    source: tuple[str, int] = ("", 0)
    transport: str = "UDP"


@dataclass(frozen=True)
class JoinOptions:
    """How a participant joins a conference: the attributes of cXML ``<Conference>`` and the
    parameters of ``POST …/Participants`` (docs/voice.md, docs/api.md). The defaults are a
    plain SIP caller's (and Twilio's).

    The conference-level fields (``wait_url``, ``max_participants``, ``status_callback*``) are
    taken from the participant that creates the conference, as Twilio does."""

    muted: bool = False
    #: ``true``, ``false``, ``onEnter`` or ``onExit``.
    beep: str = "true"
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    #: A WAV URL played while the conference waits for a moderator; None: silence.
    wait_url: str | None = None
    wait_method: str = "POST"
    max_participants: int = 250
    status_callback: str | None = None
    status_callback_method: str = "POST"
    #: Twilio's words: ``start end join leave mute hold modify speaker announcement``.
    status_callback_event: tuple[str, ...] = ()
    label: str | None = None
    coaching: bool = False
    call_sid_to_coach: str | None = None


class ConferenceGateway(Protocol):
    async def auth_token(self, account_sid: str) -> str | None:
        """The account's AuthToken (the SIP digest password), or None for no such account."""
        ...

    async def incoming_call(self, call: IncomingCall, participant: Participant) -> None:
        """Take an authenticated call before it is answered. ``participant`` (its ``call_sid``
        set, a UUID) is the caller's audio, already able to play and hear. On return the SIP
        edge answers 200; raising :class:`JoinRefused` answers its ``sip_status`` instead
        (:class:`AccountNotActive`: 403, :class:`AlreadyJoined`: 482, a ``<Reject>``: 486 or
        603). Without a voice application the caller joins the account's conference named
        ``call.request_user``, created ``in-progress`` when needed."""
        ...

    async def leave(self, call_sid: str, reason: str) -> None:
        """The participant has gone (BYE, CANCEL, timeout, error). Idempotent."""
        ...

    def hold_changed(self, call_sid: str, hold: bool) -> None:
        """A re-INVITE put the participant on hold or resumed it."""
        ...

    def dtmf_received(self, call_sid: str, digit: str, duration_ms: int) -> None:
        """An RFC 4733 end event arrived from the participant (duplicates already removed)."""
        ...


@dataclass(frozen=True)
class OutboundCall:
    """A call to place (docs/api.md, "Making calls"), as the SIP edge needs it: the
    Request-URI ``to_uri`` (``sip:user@host[:port]``) and the IP address and port it goes to,
    already checked against the outbound policy by the application."""

    call_sid: str
    account_sid: str
    to_uri: str
    address: tuple[str, int]
    from_uri: str
    from_display: str | None = None
    ring_timeout: float = 60.0
    time_limit: float | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    early_media: bool = False


class DialListener(Protocol):
    """How an outbound call's progress reaches the application, in this order: ``dialing``
    (the INVITE went), ``ringing`` (first 180/183), then either ``answered`` and later
    ``ended``, or ``failed``. Each is called at most once."""

    def dialing(self) -> None: ...

    def ringing(self) -> None: ...

    async def answered(self, participant: Participant) -> None:
        """The callee answered: put ``participant`` where it goes (a conference, a cXML
        document). Raising :class:`JoinRefused` hangs the call up."""
        ...

    def failed(self, sip_status: int | None, outcome: str) -> None:
        """Never answered: ``outcome`` is ``busy``, ``no-answer``, ``canceled`` or
        ``failed``; ``sip_status`` the far end's final status (None: no INVITE went)."""
        ...

    async def ended(self, reason: str) -> None:
        """The answered call is over (either side hung up)."""
        ...


class Dialer(Protocol):
    def is_own_listener(self, host: str, port: int) -> bool:
        """True when ``host:port`` (an IP address) reaches one of our own SIP listeners."""
        ...

    def dial(self, call: OutboundCall, listener: DialListener) -> Participant:
        """Start placing ``call``; returns its participant (whose ``hangup`` cancels or ends
        it). Raises :class:`confstream.errors.DialRefused` for a target that is one of our
        own SIP listeners."""
        ...
