"""Domain errors: what the services refuse, independent of the protocol that asked.

The services (:mod:`confstream.services`), the store and the conference gateway raise only
these. Each carries ``code``, the Twilio/SignalWire error code of the situation (the table in
``docs/errors.md``), and ``message``, the text shown to the caller. The protocol edges turn
them into answers, each in one place:

* the REST API (:mod:`confstream.api.errors`, ``from_domain``): HTTP status from the code's row
  of the error table; 422 answers also carry ``errors: [message]``;
* the SIP edge (:mod:`confstream.sip.server`): a :class:`JoinRefused` is answered with its
  ``sip_status`` (``docs/errors.md``, SIP).

Nothing here imports from the rest of confstream, so every layer can use it.
"""

from __future__ import annotations

from typing import ClassVar


class ConfstreamError(Exception):
    """Base of the domain errors. ``code`` is per class; 20500 (internal error) unless set."""

    code: ClassVar[int] = 20500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ConfstreamError):
    """No such resource in the caller's account (20404). ``what`` names it, e.g.
    ``Conference <sid>``."""

    code = 20404

    def __init__(self, what: str) -> None:
        super().__init__(f"The requested resource {what} was not found")
        self.what = what


class ConferenceNotLive(ConfstreamError):
    """The conference is not in progress (21220): it has ended, or has no live media."""

    code = 21220

    def __init__(self, conference_sid: str) -> None:
        super().__init__(f"Conference {conference_sid} is not in progress")
        self.conference_sid = conference_sid


class NameInUse(ConfstreamError):
    """A stream Name is already used by an active stream of the same conference or call
    (20409, *extension*). ``owner`` names which (``conference`` or ``call``)."""

    code = 20409

    def __init__(self, name: str, owner: str = "conference") -> None:
        super().__init__(f"A stream named {name!r} is already active in this {owner}")
        self.name = name


class CallNotLive(ConfstreamError):
    """The call is not in progress (21220, Twilio's "invalid call state"): it has ended, or
    has not been answered yet."""

    code = 21220

    def __init__(self, call_sid: str) -> None:
        super().__init__(f"Call {call_sid} is not in progress")
        self.call_sid = call_sid


class CallControlUnavailable(ConfstreamError):
    """Moving a live call to another document (``Url``/``Twiml``) needs the voice
    application runtime, which is not running (20501, *extension*: not supported here)."""

    code = 20501


class UrlRefused(ConfstreamError):
    """A URL confstream is asked to fetch is refused by the outbound policy (21205;
    ``docs/operations.md``, Security defaults)."""

    code = 21205


class AnnouncementUnavailable(ConfstreamError):
    """The announcement audio could not be fetched (11200)."""

    code = 11200


class AnnouncementInvalid(ConfstreamError):
    """The announcement audio is not a supported WAV file (12300)."""

    code = 12300


class DialTargetInvalid(ConfstreamError):
    """``To`` of a call to place is not ``sip:user@host[:port][;transport=udp]`` (21211,
    Twilio's "Invalid 'To' Phone Number")."""

    code = 21211


class DialFromInvalid(ConfstreamError):
    """``From`` of a call to place is missing or unusable (21212, "Invalid 'From' Phone
    Number")."""

    code = 21212


class DialRefused(ConfstreamError):
    """The SIP target of a call to place is refused: the outbound address policy
    (``allowed_networks``, docs/sip.md "Calling out") or one of the server's own SIP
    listeners (a call loop). 21215, Twilio's "call not permitted to this destination"."""

    code = 21215


class DialLimitReached(ConfstreamError):
    """The account has as many outbound calls in progress as ``dial_max_calls_per_account``,
    or places calls faster than ``dial_calls_per_second`` (20429, Too Many Requests)."""

    code = 20429


class OwnerUnavailable(ConfstreamError):
    """In cluster mode, the conference is owned by another node (claimed after the request
    was routed here) or the cluster state cannot be read (20503, docs/cluster.md): nothing
    was changed, the client may retry."""

    code = 20503


class JoinRefused(ConfstreamError):
    """A SIP caller cannot join the conference (ended, account disabled...). The SIP edge
    answers the INVITE with ``sip_status`` (a final status, 300..699; 403 by default). Join
    refusals never reach the REST API, so ``code`` stays the generic 20500."""

    sip_status: int = 403

    def __init__(self, message: str, sip_status: int | None = None) -> None:
        super().__init__(message)
        if sip_status is not None:
            self.sip_status = sip_status


class AccountNotActive(JoinRefused):
    """The AccountSid is unknown or its account is not active: 403."""

    sip_status = 403

    def __init__(self, message: str = "no such active account") -> None:
        super().__init__(message)


class AlreadyJoined(JoinRefused):
    """The call (its CallSid) is already in a conference: 482 (Loop Detected)."""

    sip_status = 482

    def __init__(self, message: str = "participant already joined") -> None:
        super().__init__(message)


class ConferenceFull(JoinRefused):
    """The conference already has its ``maxParticipants`` (docs/voice.md): 486 (Busy Here).
    A cXML ``<Dial>`` reports it as ``DialCallStatus=failed``."""

    sip_status = 486

    def __init__(self, message: str = "the conference is full") -> None:
        super().__init__(message)


class CoachingRefused(JoinRefused):
    """A join asked for coaching (``coach``, ``CallSidToCoach``), which confstream does not
    do: every participant hears the whole conference. 488 (Not Acceptable Here)."""

    sip_status = 488

    def __init__(self, message: str = "coaching is not supported") -> None:
        super().__init__(message)


__all__ = [
    "AccountNotActive",
    "AlreadyJoined",
    "AnnouncementInvalid",
    "AnnouncementUnavailable",
    "CallControlUnavailable",
    "CallNotLive",
    "CoachingRefused",
    "ConferenceFull",
    "ConferenceNotLive",
    "ConfstreamError",
    "DialFromInvalid",
    "DialLimitReached",
    "DialRefused",
    "DialTargetInvalid",
    "JoinRefused",
    "NameInUse",
    "NotFound",
    "OwnerUnavailable",
    "UrlRefused",
]
