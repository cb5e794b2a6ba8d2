"""What the SIP edge needs from the rest of the server, as one narrow interface.

The application (``confstream.services``) implements it with the store and the engine; the SIP
layer only calls these methods, so it never touches the database or the mixer directly.
"""

from __future__ import annotations

from typing import Protocol

from confstream.conference.base import Participant

# Join refusals are domain errors (confstream.errors); re-exported here, where the SIP edge
# meets them. The SIP edge answers the INVITE with their ``sip_status`` (docs/errors.md, SIP).
from confstream.errors import AccountNotActive, AlreadyJoined, JoinRefused

__all__ = ["AccountNotActive", "AlreadyJoined", "ConferenceGateway", "JoinRefused"]


class ConferenceGateway(Protocol):
    async def auth_token(self, account_sid: str) -> str | None:
        """The account's AuthToken (the SIP digest password), or None for no such account."""
        ...

    async def join(self, account_sid: str, conference_name: str, participant: Participant) -> str:
        """Add ``participant`` (its ``call_sid`` already set, a UUID) to the account's conference
        named ``conference_name``, creating it ``in-progress`` when needed. Returns the
        ConferenceSid. Raises :class:`JoinRefused` (:class:`AccountNotActive`: 403,
        :class:`AlreadyJoined`: 482)."""
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
