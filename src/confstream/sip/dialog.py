"""SIP dialogs, both sides (RFC 3261 §12), sans-I/O.

A dialog is created by our 2xx to an initial INVITE (UAS, :meth:`Dialog.from_invite`) or by the
2xx to our INVITE (UAC, :meth:`Dialog.from_response`), and identified by Call-ID, our tag and
the peer's tag. It remembers what in-dialog requests need: the peer's Contact (remote target),
the route set (the Record-Route values; reversed on the UAC side, §12.1.2), and both CSeq
counters. :meth:`Dialog.make_request` follows the route set: loose routing (the first route has
``lr``: Request-URI = remote target, every route in Route) or, for an RFC 2543 strict router,
the first route as Request-URI and the remote target appended to Route (§12.2.1.1).
:meth:`Dialog.next_hop` is the URI the request goes to.

States: ``early`` is not used (we send no 1xx with a tag, and early dialogs of our INVITEs are
not tracked: only the 2xx makes one); ``confirmed`` from the 2xx on, ``terminated`` after a
BYE either way.
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
    SipResponse,
    SipUri,
    split_commas,
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
    def from_response(cls, invite: SipRequest, response: SipResponse) -> Dialog:
        """The UAC dialog of the 2xx to our ``invite`` (RFC 3261 §12.1.2). SipParseError when
        the 2xx lacks its To tag or Contact."""
        from_ = invite.from_
        to = response.to
        contact = response.contact
        remote_tag = to.tag
        local_tag = from_.tag
        if not remote_tag or not local_tag:
            raise SipParseError("2xx without To tag")
        if contact is None:
            raise SipParseError("2xx without Contact")
        from_.params.pop("tag", None)
        to.params.pop("tag", None)
        routes = [
            r for value in response.headers.get_all("record-route") for r in split_commas(value)
        ]
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(from_),
            remote_uri=str(to),
            remote_target=str(contact.uri),
            route_set=list(reversed(routes)),
            local_cseq=invite.cseq.number,
            remote_cseq=0,
        )

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

    def _strict(self) -> bool:
        """The first route is an RFC 2543 strict router (no ``lr``)."""
        if not self.route_set:
            return False
        try:
            return "lr" not in NameAddr.parse(self.route_set[0]).uri.params
        except SipParseError:
            return False

    def next_hop(self) -> SipUri:
        """Where the next in-dialog request goes: the first route, else the remote target.
        SipParseError when that URI cannot be read."""
        if self.route_set:
            return NameAddr.parse(self.route_set[0]).uri
        return SipUri.parse(self.remote_target)

    def make_request(
        self, method: str, via: str, contact: str | None = None, *, cseq: int | None = None
    ) -> SipRequest:
        """A new in-dialog request (RFC 3261 §12.2.1.1), e.g. our BYE; ``cseq`` given (the ACK
        of a 2xx carries its INVITE's number) leaves the counter as it is."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri = self.remote_target
        routes = list(self.route_set)
        if self._strict():
            first = NameAddr.parse(routes.pop(0)).uri
            first.params.pop("lr", None)
            first.headers = ""
            uri = str(first)
            routes.append(f"<{self.remote_target}>")
        h = Headers()
        h.add("via", via)
        h.add("max-forwards", "70")
        h.add("from", f"{self.local_uri};tag={self.local_tag}")
        h.add("to", f"{self.remote_uri};tag={self.remote_tag}")
        h.add("call-id", self.call_id)
        h.add("cseq", f"{cseq} {method}")
        for route in routes:
            h.add("route", route)
        if contact is not None:
            h.add("contact", contact)
        return SipRequest(h, b"", method, uri)

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
