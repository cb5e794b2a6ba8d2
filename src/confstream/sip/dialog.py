"""SIP dialogs, UAS side (RFC 3261 §12), sans-I/O.

A dialog is created by our 2xx to an initial INVITE and identified by Call-ID, our tag (the
To tag we chose) and the caller's tag (its From tag). It remembers what in-dialog requests
need: the caller's Contact (remote target), the Record-Route set, and both CSeq counters.

States: ``early`` is not used (we send no 1xx with a tag); ``confirmed`` from our 2xx on,
``terminated`` after a BYE either way.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from confstream.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
)

MAGIC_COOKIE = "z9hG4bK"


def new_tag() -> str:
    """A random tag (RFC 3261 §19.3: at least 32 bits of randomness; here 64)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A branch with the RFC 3261 magic cookie and 96 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(12)


class DialogState(enum.Enum):
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    #: Our identity (the INVITE's To value, without tag) and the caller's (From, without tag).
    local_uri: str
    remote_uri: str
    #: Where in-dialog requests are addressed (the caller's Contact URI).
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int = 0
    state: DialogState = DialogState.CONFIRMED

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    @classmethod
    def from_invite(cls, invite: SipRequest, local_tag: str) -> Dialog:
        """The UAS dialog of an initial INVITE (RFC 3261 §12.1.1). SipParseError when the
        INVITE lacks what a dialog needs (From tag, Contact)."""
        from_ = invite.from_
        to = invite.to
        contact = invite.contact
        remote_tag = from_.tag
        if not remote_tag:
            raise SipParseError("From without tag")
        if contact is None:
            raise SipParseError("INVITE without Contact")
        from_.params.pop("tag", None)
        to.params.pop("tag", None)
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(to),
            remote_uri=str(from_),
            remote_target=str(contact.uri),
            route_set=list(invite.headers.get_all("record-route")),
            local_cseq=secrets.randbelow(2**16) + 1,
            remote_cseq=invite.cseq.number,
        )

    def accept_remote_cseq(self, number: int) -> bool:
        """RFC 3261 §12.2.2: a lower CSeq than the last one seen is out of order (500)."""
        if number < self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def update_target(self, request: SipRequest) -> None:
        """A target-refresh request (re-INVITE) may carry a new Contact."""
        contact = request.contact
        if contact is not None:
            self.remote_target = str(contact.uri)

    def make_request(self, method: str, via: str, contact: str | None = None) -> SipRequest:
        """A new in-dialog request (RFC 3261 §12.2.1.1), e.g. our BYE."""
        self.local_cseq += 1
        h = Headers()
        h.add("via", via)
        h.add("max-forwards", "70")
        h.add("from", f"{self.local_uri};tag={self.local_tag}")
        h.add("to", f"{self.remote_uri};tag={self.remote_tag}")
        h.add("call-id", self.call_id)
        h.add("cseq", f"{self.local_cseq} {method}")
        for route in self.route_set:
            h.add("route", route)
        if contact is not None:
            h.add("contact", contact)
        return SipRequest(h, b"", method, self.remote_target)

    def matches(self, request: SipRequest) -> bool:
        """True when ``request``'s tags belong to this dialog."""
        try:
            return request.to.tag == self.local_tag and (request.from_.tag or "") == self.remote_tag
        except SipParseError:
            return False


def strip_tag(value: str) -> str:
    addr = NameAddr.parse(value)
    addr.params.pop("tag", None)
    return str(addr)
