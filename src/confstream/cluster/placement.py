"""What the application asks of the cluster when conferences start and end (docs/cluster.md,
"Routing of a SIP call"). Pure: one protocol, no I/O.

:class:`confstream.services.Services` calls these around its lifecycle changes when it runs as
one node of a cluster; an embedded single node has no placement and nothing changes. Every
call happens at a join, a leave or an end (SIP or REST), never on the 20 ms clock.
"""

from __future__ import annotations

from typing import Protocol

#: SIP status a node answers when another node owns the conference or this one is draining:
#: Kamailio's failure route takes it as "try the owner, or the next node" (the caller never
#: sees it while another node can take the call).
NOT_HERE_SIP_STATUS = 503

#: ``reason_ended`` of a conference whose node died (kill -9, power loss, partition).
REASON_NODE_LOST = "media-node-lost"
#: ``reason_ended`` of a conference this node lost to another while it could not renew its
#: lease (the newer owner wins).
REASON_OWNERSHIP_LOST = "media-node-lost-ownership"


class Placement(Protocol):
    async def claim(self, account_sid: str, conference_name: str) -> None:
        """Own the account's conference of that name (claimed now, or already this node's).
        Raises :class:`~confstream.errors.JoinRefused` with :data:`NOT_HERE_SIP_STATUS` when
        another live node owns it, when this node is draining and does not, or when the
        owner cannot be checked."""
        ...

    async def end_stale(self, conference_sid: str) -> None:
        """End the live record of a room this node has just claimed but does not host (its
        node died): participants, streams with their callbacks, the conference. The caller
        then gets a fresh conference."""
        ...

    async def hosted(self, conference_sid: str, account_sid: str, conference_name: str) -> None:
        """A conference was created here before anyone joined (for a callee being dialled,
        ``POST …/Participants``): publish it as this node's now, so that a caller dialling in
        meanwhile lands here and REST about it is forwarded here."""
        ...

    def holds(self, conference_sid: str) -> bool:
        """Whether this node has published the conference (it hosts it, joined or not)."""
        ...

    async def joined(
        self, conference_sid: str, account_sid: str, conference_name: str, call_sid: str
    ) -> None:
        """A participant joined a conference hosted here: publish the conference and the
        call as this node's (REST requests about them are forwarded here). A call stays
        published while it lives, in or out of conferences."""
        ...

    async def left(self, call_sid: str) -> None:
        """A participant that is no live call of this node (its call ended, or it never was
        one) has left: its call is no longer routed here."""
        ...

    async def call_started(self, call_sid: str) -> None:
        """A call of this node has a record now: publish it as this node's (REST requests
        about it are forwarded here; if this node dies, a survivor ends the record)."""
        ...

    async def call_ended(self, call_sid: str) -> None:
        """The call is over (or refused): it is no longer this node's."""
        ...

    async def ended(self, conference_sid: str) -> None:
        """The conference has ended here: give up its room and its SID."""
        ...
