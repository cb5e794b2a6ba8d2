"""Tables of the store (SQLAlchemy 2 declarative models).

Every timestamp is a *naive* ``datetime`` in UTC: SQLite has no time zone type and PostgreSQL's
``timestamp without time zone`` keeps exactly what it is given, so both databases round-trip the
same values. :func:`utcnow` is the only clock used for records.

The schema itself is created by the Alembic migrations in ``confstream/store/migrations``; these
models must stay in step with the newest migration (``tests/store`` checks that they do).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Conference statuses (docs/api.md, Conferences).
CONFERENCE_INIT = "init"
CONFERENCE_IN_PROGRESS = "in-progress"
CONFERENCE_COMPLETED = "completed"
CONFERENCE_STATUSES = (CONFERENCE_INIT, CONFERENCE_IN_PROGRESS, CONFERENCE_COMPLETED)

#: Why a conference ended: Twilio's ``reason_conference_ended`` values (docs/api.md,
#: Conferences). Stored in ``conferences.reason_ended`` as :func:`end_reason` writes it, with
#: the CallSid that ended the conference (Twilio's ``call_sid_ending_conference``) when there
#: is one. Ends that are none of these (a restart, a shutdown) store free text instead.
ENDED_VIA_API = "conference-ended-via-api"
ENDED_END_ON_EXIT_LEFT = "participant-with-end-conference-on-exit-left"
ENDED_END_ON_EXIT_KICKED = "participant-with-end-conference-on-exit-kicked"
ENDED_LAST_KICKED = "last-participant-kicked"
ENDED_LAST_LEFT = "last-participant-left"
CONFERENCE_END_REASONS = (
    ENDED_VIA_API,
    ENDED_END_ON_EXIT_LEFT,
    ENDED_END_ON_EXIT_KICKED,
    ENDED_LAST_KICKED,
    ENDED_LAST_LEFT,
)
_ENDING_CALL = " call_sid="


def end_reason(reason: str, call_sid: str | None = None) -> str:
    """The ``reason_ended`` text for ``reason`` ended by ``call_sid``:
    ``last-participant-left call_sid=<CallSid>``, or the reason alone."""
    return reason if call_sid is None else f"{reason}{_ENDING_CALL}{call_sid}"


def split_end_reason(stored: str | None) -> tuple[str | None, str | None]:
    """``(reason, call_sid)`` from a stored ``reason_ended`` (see :func:`end_reason`); free
    text comes back whole, with no CallSid."""
    if stored is None:
        return None, None
    reason, sep, call_sid = stored.partition(_ENDING_CALL)
    if sep and reason in CONFERENCE_END_REASONS:
        return reason, call_sid or None
    return stored, None


#: Participant statuses as stored. The API shows them with Twilio's participant values
#: (:data:`PARTICIPANT_API_STATUS`).
PARTICIPANT_IN_PROGRESS = "in-progress"
PARTICIPANT_COMPLETED = "completed"
#: A participant being dialled (``POST …/Participants``, docs/api.md): ``queued`` until the
#: INVITE goes, ``connecting``, ``ringing`` from the first 180/183, then ``in-progress`` once
#: answered and joined, or ``failed`` when the callee never answered.
PARTICIPANT_QUEUED = "queued"
PARTICIPANT_CONNECTING = "connecting"
PARTICIPANT_RINGING = "ringing"
PARTICIPANT_FAILED = "failed"
PARTICIPANT_DIALING = (PARTICIPANT_QUEUED, PARTICIPANT_CONNECTING, PARTICIPANT_RINGING)
#: Stored participant status -> Twilio's (``queued``, ``connecting``, ``ringing``,
#: ``connected``, ``complete``, ``failed``).
PARTICIPANT_API_STATUS = {
    PARTICIPANT_IN_PROGRESS: "connected",
    PARTICIPANT_COMPLETED: "complete",
    PARTICIPANT_QUEUED: "queued",
    PARTICIPANT_CONNECTING: "connecting",
    PARTICIPANT_RINGING: "ringing",
    PARTICIPANT_FAILED: "failed",
}

#: Stream statuses: queued -> in-progress -> stopped.
STREAM_QUEUED = "queued"
STREAM_IN_PROGRESS = "in-progress"
STREAM_STOPPED = "stopped"
STREAM_ACTIVE_STATUSES = (STREAM_QUEUED, STREAM_IN_PROGRESS)
STREAM_STATUSES = (STREAM_QUEUED, STREAM_IN_PROGRESS, STREAM_STOPPED)


def utcnow() -> dt.datetime:
    """Now, in UTC, without tzinfo (the form every column stores); microseconds kept."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Timestamped:
    """``date_created`` and ``date_updated``: every resource table has both. A new row gets
    one instant for both; a change moves ``date_updated`` (:meth:`touch`)."""

    date_created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    date_updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    def touch(self, now: dt.datetime | None = None) -> None:
        self.date_updated = now if now is not None else utcnow()

    def update(self, values: dict[str, Any]) -> None:
        """Set ``values`` (column name -> value) and :meth:`touch`, even when ``values`` is
        empty."""
        for column, value in values.items():
            setattr(self, column, value)
        self.touch()


class AccountOwned:
    """``account_sid``: the owning account; its rows go with it (``ON DELETE CASCADE``)."""

    account_sid: Mapped[str] = mapped_column(ForeignKey("accounts.sid", ondelete="CASCADE"))


class ConferencePart(AccountOwned):
    """``conference_sid`` (and the account): rows that belong to one conference."""

    conference_sid: Mapped[str] = mapped_column(ForeignKey("conferences.sid", ondelete="CASCADE"))


class Account(Timestamped, Base):
    __tablename__ = "accounts"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    auth_token: Mapped[str] = mapped_column(String(128))
    friendly_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Base for relative stream ``Url`` values (docs/api.md, Streams); None: relative Urls
    #: are refused.
    stream_base_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="active")
    #: The voice application (docs/voice.md): fetched for every incoming call when set; None
    #: keeps the plain SIP behaviour (join the conference the Request-URI names).
    voice_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    voice_method: Mapped[str] = mapped_column(String(8), default="POST", server_default="POST")
    voice_fallback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    voice_fallback_method: Mapped[str] = mapped_column(
        String(8), default="POST", server_default="POST"
    )
    #: Call progress callbacks for calls of this account that name none themselves.
    status_callback: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_callback_method: Mapped[str] = mapped_column(
        String(8), default="POST", server_default="POST"
    )


class Conference(Timestamped, AccountOwned, Base):
    __tablename__ = "conferences"
    __table_args__ = (
        Index("ix_conferences_account_created", "account_sid", "date_created"),
        # At most one live conference per account and friendly name: SIP joins by name.
        Index(
            "uq_conferences_live_name",
            "account_sid",
            "friendly_name",
            unique=True,
            sqlite_where=text("status <> 'completed'"),
            postgresql_where=text("status <> 'completed'"),
        ),
    )

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    friendly_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default=CONFERENCE_IN_PROGRESS)
    region: Mapped[str] = mapped_column(String(32), default="us1")
    reason_ended: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Conference status callbacks (``<Conference statusCallback>``, docs/voice.md); the
    #: events are Twilio's space-separated ``statusCallbackEvent`` words.
    status_callback: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_callback_method: Mapped[str] = mapped_column(
        String(8), default="POST", server_default="POST"
    )
    status_callback_event: Mapped[str | None] = mapped_column(String(255), nullable=True)


#: Call statuses (Twilio's Call resource): queued -> ringing -> in-progress -> one final one.
CALL_QUEUED = "queued"
CALL_RINGING = "ringing"
CALL_IN_PROGRESS = "in-progress"
CALL_COMPLETED = "completed"
CALL_BUSY = "busy"
CALL_FAILED = "failed"
CALL_NO_ANSWER = "no-answer"
CALL_CANCELED = "canceled"
CALL_ACTIVE_STATUSES = (CALL_QUEUED, CALL_RINGING, CALL_IN_PROGRESS)
CALL_STATUSES = (
    *CALL_ACTIVE_STATUSES,
    CALL_COMPLETED,
    CALL_BUSY,
    CALL_FAILED,
    CALL_NO_ANSWER,
    CALL_CANCELED,
)
#: Call directions: a SIP caller, a call made through ``POST /Calls``, a callee dialled for a
#: conference participant.
CALL_INBOUND = "inbound"
CALL_OUTBOUND_API = "outbound-api"
CALL_OUTBOUND_DIAL = "outbound-dial"


class Call(Timestamped, AccountOwned, Base):
    """One SIP leg, either direction. A participant's ``call_sid`` is a Call's ``sid``."""

    __tablename__ = "calls"
    __table_args__ = (Index("ix_calls_account_created", "account_sid", "date_created"),)

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    direction: Mapped[str] = mapped_column(String(16), default=CALL_INBOUND)
    from_uri: Mapped[str] = mapped_column(Text)
    to_uri: Mapped[str] = mapped_column(Text)
    caller_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32), default=CALL_RINGING)
    start_time: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    duration: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_call_sid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The cXML document URL the call runs (voice URL, ``Url`` of POST /Calls, a redirect).
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    method: Mapped[str] = mapped_column(String(8), default="POST")
    status_callback: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_callback_method: Mapped[str] = mapped_column(String(8), default="POST")
    status_callback_event: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: The final SIP status of an outbound call that failed (486 busy, 480, 408…).
    sip_response_code: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Participant(Timestamped, ConferencePart, Base):
    __tablename__ = "participants"
    __table_args__ = (Index("ix_participants_conference", "conference_sid", "date_created"),)

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default=PARTICIPANT_IN_PROGRESS)
    muted: Mapped[bool] = mapped_column(Boolean, default=False)
    hold: Mapped[bool] = mapped_column(Boolean, default=False)
    coaching: Mapped[bool] = mapped_column(Boolean, default=False)
    call_sid_to_coach: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start_conference_on_enter: Mapped[bool] = mapped_column(Boolean, default=True)
    end_conference_on_exit: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reason_ended: Mapped[str | None] = mapped_column(Text, nullable=True)


class Stream(Timestamped, AccountOwned, Base):
    """A stream of a conference (``conference_sid`` set) or of one call (``call_sid`` set):
    exactly one of the two (docs/api.md, Streams and Calls)."""

    __tablename__ = "streams"
    __table_args__ = (
        Index("ix_streams_conference", "conference_sid", "date_created"),
        Index("ix_streams_call", "call_sid", "date_created"),
    )

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    conference_sid: Mapped[str | None] = mapped_column(
        ForeignKey("conferences.sid", ondelete="CASCADE"), nullable=True
    )
    call_sid: Mapped[str | None] = mapped_column(
        ForeignKey("calls.sid", ondelete="CASCADE", name="fk_streams_call_sid_calls"),
        nullable=True,
    )
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: The resolved wss:// URL. The AuthorizationBearerToken is never stored.
    url: Mapped[str] = mapped_column(Text)
    track: Mapped[str] = mapped_column(String(32), default="both_tracks")
    codec: Mapped[str] = mapped_column(String(32), default="PCMU")
    realtime: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32), default=STREAM_QUEUED)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_callback: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_callback_method: Mapped[str] = mapped_column(String(8), default="POST")


class StreamStatusChange(Base):
    """One row per status a stream went through (queued, in-progress, stopped), for auditing."""

    __tablename__ = "stream_status_history"
    __table_args__ = (Index("ix_stream_status_history_stream", "stream_sid", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_sid: Mapped[str] = mapped_column(ForeignKey("streams.sid", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    code: Mapped[int | None] = mapped_column(Integer, nullable=True)
