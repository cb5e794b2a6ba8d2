"""What the SIP edge needs from the rest of the server, as one narrow interface.

The application (``confstream.services``) implements it with the store and the engine; the SIP
layer only calls these methods, so it never touches the database or the mixer directly.
"""

from __future__ import annotations

from typing import Protocol

from confstream.conference.base import Participant


class JoinRefused(Exception):
    """The conference cannot be joined (ended, account disabled...). ``sip_status`` is sent."""

    def __init__(self, message: str, sip_status: int = 403) -> None:
        super().__init__(message)
        self.sip_status = sip_status


class ConferenceGateway(Protocol):
    async def auth_token(self, account_sid: str) -> str | None:
        """The account's AuthToken (the SIP digest password), or None for no such account."""
        ...

    async def join(self, account_sid: str, conference_name: str, participant: Participant) -> str:
        """Add ``participant`` (its ``call_sid`` already set, a UUID) to the account's conference
        named ``conference_name``, creating it ``in-progress`` when needed. Returns the
        ConferenceSid. Raises :class:`JoinRefused`."""
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
