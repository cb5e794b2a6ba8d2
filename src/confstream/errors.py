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
    """A stream Name is already used by an active stream of the same conference (20409,
    *extension*)."""

    code = 20409

    def __init__(self, name: str) -> None:
        super().__init__(f"A stream named {name!r} is already active in this conference")
        self.name = name


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
    "CoachingRefused",
    "ConferenceFull",
    "ConferenceNotLive",
    "ConfstreamError",
    "JoinRefused",
    "NameInUse",
    "NotFound",
    "UrlRefused",
]
