"""The store: one object owning the database engine, with a method per operation.

:func:`open_store` turns the user-facing ``database_url`` (docs/operations.md, Settings)
into an async engine, migrates the schema to the newest Alembic revision and returns a
:class:`Store`.

* ``sqlite:///PATH`` (relative) or ``sqlite:////abs/PATH`` -> ``sqlite+aiosqlite``. Each
  connection gets ``journal_mode=WAL`` (readers never block the single writer),
  ``foreign_keys=ON`` (SQLite leaves them off by default) and ``busy_timeout=5000`` ms (a second
  process briefly holding the write lock makes writers wait instead of failing at once). The
  parent folder is created when missing.
* ``postgresql://`` or ``postgres://`` -> ``postgresql+asyncpg``.
* A URL that already names a driver (``sqlite+aiosqlite://``, ``postgresql+asyncpg://``) is kept.

Rows come back as detached ORM objects (``expire_on_commit=False``): read their attributes
freely, but change records only through the store's methods.

The methods share four helpers: ``_add`` (insert new rows), ``_get`` (a row by primary key,
optionally scoped to an account or conference: a row outside the scope is "not found"),
``_list`` (a select, paged with offset/limit) and ``_change`` (load, modify, ``touch``, commit).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Select, event, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from confstream.errors import NameInUse
from confstream.store.models import (
    CALL_ACTIVE_STATUSES,
    CALL_COMPLETED,
    CALL_IN_PROGRESS,
    CALL_INBOUND,
    CALL_RINGING,
    CALL_STATUSES,
    CONFERENCE_COMPLETED,
    CONFERENCE_IN_PROGRESS,
    CONFERENCE_INIT,
    PARTICIPANT_COMPLETED,
    PARTICIPANT_DIALING,
    PARTICIPANT_FAILED,
    PARTICIPANT_IN_PROGRESS,
    STREAM_ACTIVE_STATUSES,
    STREAM_QUEUED,
    STREAM_STOPPED,
    Account,
    Base,
    Call,
    Conference,
    Participant,
    Stream,
    StreamStatusChange,
    Timestamped,
    utcnow,
)

RowT = TypeVar("RowT", bound=Base)
ChangedT = TypeVar("ChangedT", bound=Timestamped)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock held while migrating (any constant; "confstrm" in ASCII).
MIGRATION_LOCK_KEY = 0x636F6E667374726D
#: SQLite waits this long (ms) for another writer before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000


def new_sid() -> str:
    """A new SID: a random UUID in its canonical form (docs/api.md: SIDs are UUIDs)."""
    return str(uuid.uuid4())


def new_auth_token() -> str:
    """A new AuthToken: 32 hex characters (128 random bits), the shape of Twilio's tokens."""
    return secrets.token_hex(16)


def async_database_url(database_url: str) -> str:
    """Map the user-facing URL to the async driver's URL (see the module docstring)."""
    url = make_url(database_url)
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        if not driver:
            url = url.set(drivername="sqlite+aiosqlite")
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif backend in ("postgresql", "postgres"):
        if not driver or driver != "asyncpg":
            url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database URL scheme {url.drivername!r}")
    return url.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _migrate(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


@dataclass(frozen=True)
class DateFilter:
    """Twilio's date filters: ``on`` (that UTC day), ``on_or_before`` and ``on_or_after``."""

    on: dt.date | None = None
    on_or_before: dt.date | None = None
    on_or_after: dt.date | None = None

    def clauses(self, column: Any) -> list[Any]:
        out: list[Any] = []
        one_day = dt.timedelta(days=1)
        if self.on is not None:
            out += [column >= _day_start(self.on), column < _day_start(self.on) + one_day]
        if self.on_or_before is not None:
            out.append(column < _day_start(self.on_or_before) + one_day)
        if self.on_or_after is not None:
            out.append(column >= _day_start(self.on_or_after))
        return out


@dataclass(frozen=True)
class ConferenceFilter:
    friendly_name: str | None = None
    status: str | None = None
    date_created: DateFilter = DateFilter()
    date_updated: DateFilter = DateFilter()


@dataclass(frozen=True)
class CallFilter:
    """The Calls list filters (docs/api.md, Calls): exact ``Status``, ``From``, ``To`` and
    ``ParentCallSid``; ``StartTime``/``EndTime`` as :class:`DateFilter` days (a call that has
    not started, or not ended, matches no such filter)."""

    status: str | None = None
    from_uri: str | None = None
    to_uri: str | None = None
    parent_call_sid: str | None = None
    start_time: DateFilter = DateFilter()
    end_time: DateFilter = DateFilter()


def _call_status(row: Call, status: str, now: dt.datetime) -> None:
    """Move a call to ``status`` (Twilio's Call statuses, docs/api.md, Calls):

    * ``in-progress`` (answered) sets ``start_time`` (once);
    * a final status (completed, busy, failed, no-answer, canceled) sets ``end_time`` and
      ``duration``: whole seconds from ``start_time`` to ``end_time``, rounded, or None for a
      call that was never answered;
    * a final status is final: later changes are ignored.
    """
    if row.status not in CALL_ACTIVE_STATUSES or row.status == status:
        return
    row.status = status
    if status == CALL_IN_PROGRESS:
        if row.start_time is None:
            row.start_time = now
    elif status not in CALL_ACTIVE_STATUSES:
        row.end_time = now
        if row.start_time is not None:
            row.duration = max(0, round((now - row.start_time).total_seconds()))
    row.touch(now)


def _new(model: type[RowT], **fields: Any) -> RowT:
    """A new row of ``model`` with ``fields``, created and updated at one instant (now)."""
    now = utcnow()
    return model(date_created=now, date_updated=now, **fields)


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that are not None (None means "leave unchanged")."""
    return {key: value for key, value in values.items() if value is not None}


def _end(row: Conference | Participant, status: str, reason: str) -> None:
    """End a conference or participant record once: a second end keeps the first reason."""
    if row.status != status:
        row.status = status
        row.reason_ended = reason
        row.touch()


def _owned_by(conference_sid: str | None, call_sid: str | None) -> Any:
    """The clause selecting the streams of the call (when ``call_sid`` is given) or else of
    the conference."""
    if call_sid is not None:
        return Stream.call_sid == call_sid
    return Stream.conference_sid == conference_sid


class Store:
    """Repository over the tables of :mod:`confstream.store.models`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def session(self) -> AsyncSession:
        return self._sessions()

    async def close(self) -> None:
        """Close every pooled connection. Safe to call twice."""
        await self.engine.dispose()

    # ------------------------------------------------------------------- helpers
    async def _add(self, row: RowT) -> RowT:
        """Insert a new row (one transaction) and return it."""
        async with self.session() as session, session.begin():
            session.add(row)
        return row

    async def _get(self, model: type[RowT], key: str, **scope: str | None) -> RowT | None:
        """The row whose primary key is ``key``, or None. Each ``scope`` column that is given
        (not None) must hold that value, else None too: a conference of another account, a
        participant of another conference, is not found."""
        async with self.session() as session:
            row = await session.get(model, key)
        if row is None:
            return None
        for column, value in scope.items():
            if value is not None and getattr(row, column) != value:
                return None
        return row

    async def _list(
        self, query: Select[RowT], *, offset: int = 0, limit: int | None = None
    ) -> list[RowT]:
        """The rows of ``query`` (ordered by the caller), from ``offset``, at most ``limit``."""
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        async with self.session() as session:
            return list(await session.scalars(query))

    async def _first(self, query: Select[RowT]) -> RowT | None:
        async with self.session() as session:
            row: RowT | None = await session.scalar(query.limit(1))
            return row

    async def _change(
        self, model: type[ChangedT], key: str, change: Callable[[ChangedT], object]
    ) -> ChangedT | None:
        """Load the row, apply ``change`` to it and commit (one transaction); None when
        there is no such row."""
        async with self.session() as session, session.begin():
            row = await session.get(model, key)
            if row is not None:
                change(row)
            return row

    # ------------------------------------------------------------------ accounts
    async def create_account(
        self,
        friendly_name: str | None = None,
        stream_base_url: str | None = None,
        *,
        sid: str | None = None,
        auth_token: str | None = None,
    ) -> Account:
        return await self._add(
            _new(
                Account,
                sid=sid or new_sid(),
                auth_token=auth_token or new_auth_token(),
                friendly_name=friendly_name,
                stream_base_url=stream_base_url,
                status="active",
            )
        )

    async def get_account(self, sid: str) -> Account | None:
        return await self._get(Account, sid)

    async def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""
        return await self._list(select(Account).order_by(Account.date_created, Account.sid))

    async def update_account(
        self,
        sid: str,
        *,
        stream_base_url: str | None = None,
        friendly_name: str | None = None,
        voice_url: str | None = None,
        voice_method: str | None = None,
        voice_fallback_url: str | None = None,
        voice_fallback_method: str | None = None,
        status_callback: str | None = None,
        status_callback_method: str | None = None,
    ) -> Account | None:
        """Set the given fields (None leaves a field unchanged; an empty URL, base URL
        included, clears it); None when no such account. Values are stored as given: the
        callers (CLI, REST API) validate URLs and methods (docs/voice.md)."""
        changes = _given(
            stream_base_url=stream_base_url,
            friendly_name=friendly_name,
            voice_url=voice_url,
            voice_method=voice_method,
            voice_fallback_url=voice_fallback_url,
            voice_fallback_method=voice_fallback_method,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
        )
        for column in ("stream_base_url", "voice_url", "voice_fallback_url", "status_callback"):
            if column in changes:
                changes[column] = changes[column] or None
        return await self._change(Account, sid, lambda row: row.update(changes))

    # --------------------------------------------------------------- conferences
    async def find_live_conference(self, account_sid: str, friendly_name: str) -> Conference | None:
        """The account's conference of that name that is not completed, if any."""
        return await self._first(
            select(Conference).where(
                Conference.account_sid == account_sid,
                Conference.friendly_name == friendly_name,
                Conference.status != CONFERENCE_COMPLETED,
            )
        )

    async def create_conference(
        self,
        account_sid: str,
        friendly_name: str,
        *,
        status: str = CONFERENCE_IN_PROGRESS,
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        status_callback_event: str | None = None,
    ) -> Conference:
        """A new conference (``init`` when it waits for a moderator); the status callback
        fields are the creating participant's (docs/voice.md)."""
        return await self._add(
            _new(
                Conference,
                sid=new_sid(),
                account_sid=account_sid,
                friendly_name=friendly_name,
                status=status,
                region="us1",
                status_callback=status_callback,
                status_callback_method=status_callback_method,
                status_callback_event=status_callback_event,
            )
        )

    async def start_conference(self, conference_sid: str) -> Conference | None:
        """``init`` -> ``in-progress`` (a moderator entered); any other status is kept."""

        def start(row: Conference) -> None:
            if row.status == CONFERENCE_INIT:
                row.update({"status": CONFERENCE_IN_PROGRESS})

        return await self._change(Conference, conference_sid, start)

    async def get_conference(
        self, conference_sid: str, account_sid: str | None = None
    ) -> Conference | None:
        """The conference, or None (also when it belongs to another account)."""
        return await self._get(Conference, conference_sid, account_sid=account_sid)

    async def list_conferences(
        self,
        account_sid: str,
        filters: ConferenceFilter = ConferenceFilter(),
        *,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Conference]:
        """Newest first (date_created, then SID, descending), like Twilio."""
        clauses: list[Any] = [Conference.account_sid == account_sid]
        if filters.friendly_name is not None:
            clauses.append(Conference.friendly_name == filters.friendly_name)
        if filters.status is not None:
            clauses.append(Conference.status == filters.status)
        clauses += filters.date_created.clauses(Conference.date_created)
        clauses += filters.date_updated.clauses(Conference.date_updated)
        query = (
            select(Conference)
            .where(*clauses)
            .order_by(Conference.date_created.desc(), Conference.sid.desc())
        )
        return await self._list(query, offset=offset, limit=limit)

    async def complete_conference(self, conference_sid: str, reason: str) -> Conference | None:
        """Mark the conference completed (once; a completed one keeps its first reason)."""
        return await self._change(
            Conference, conference_sid, lambda row: _end(row, CONFERENCE_COMPLETED, reason)
        )

    # -------------------------------------------------------------- participants
    async def add_participant(
        self,
        call_sid: str,
        conference_sid: str,
        account_sid: str,
        *,
        muted: bool = False,
        hold: bool = False,
        label: str | None = None,
        start_conference_on_enter: bool = True,
        end_conference_on_exit: bool = False,
        status: str = PARTICIPANT_IN_PROGRESS,
    ) -> Participant:
        """Insert the participant ``in-progress`` (or ``status``: ``queued`` for a callee
        being dialled). A call has one participant record (the CallSid is the key): when the
        call was in an earlier conference (it left it and goes on, docs/voice.md), that
        completed record is replaced, as Twilio's Participants keep no history; so is the
        record of the callee being dialled, once it answers. A record still in progress raises
        ``IntegrityError``."""
        row = _new(
            Participant,
            call_sid=call_sid,
            conference_sid=conference_sid,
            account_sid=account_sid,
            status=status,
            muted=muted,
            hold=hold,
            coaching=False,
            call_sid_to_coach=None,
            start_conference_on_enter=start_conference_on_enter,
            end_conference_on_exit=end_conference_on_exit,
            label=label,
        )
        async with self.session() as session, session.begin():
            earlier = await session.get(Participant, call_sid)
            if earlier is not None and earlier.status != PARTICIPANT_IN_PROGRESS:
                await session.delete(earlier)
                await session.flush()
            session.add(row)
        return row

    async def get_participant(
        self, call_sid: str, conference_sid: str | None = None
    ) -> Participant | None:
        """The participant, or None (also when it is in another conference)."""
        return await self._get(Participant, call_sid, conference_sid=conference_sid)

    async def find_participant_by_label(
        self, conference_sid: str, label: str
    ) -> Participant | None:
        """The conference's in-progress participant with that label (the oldest, when
        several share it), or None."""
        return await self._first(
            select(Participant)
            .where(
                Participant.conference_sid == conference_sid,
                Participant.label == label,
                Participant.status == PARTICIPANT_IN_PROGRESS,
            )
            .order_by(Participant.date_created, Participant.call_sid)
        )

    async def list_participants(
        self,
        conference_sid: str,
        *,
        status: str | None = PARTICIPANT_IN_PROGRESS,
        muted: bool | None = None,
        hold: bool | None = None,
        coaching: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Participant]:
        """Oldest first. ``status=None`` lists every record, completed ones included."""
        clauses: list[Any] = [Participant.conference_sid == conference_sid]
        if status is not None:
            clauses.append(Participant.status == status)
        if muted is not None:
            clauses.append(Participant.muted == muted)
        if hold is not None:
            clauses.append(Participant.hold == hold)
        if coaching is not None:
            clauses.append(Participant.coaching == coaching)
        query = (
            select(Participant)
            .where(*clauses)
            .order_by(Participant.date_created, Participant.call_sid)
        )
        return await self._list(query, offset=offset, limit=limit)

    async def count_live_participants(self, conference_sid: str) -> int:
        async with self.session() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Participant)
                .where(
                    Participant.conference_sid == conference_sid,
                    Participant.status == PARTICIPANT_IN_PROGRESS,
                )
            )
            return int(count or 0)

    async def update_participant(
        self,
        call_sid: str,
        *,
        muted: bool | None = None,
        hold: bool | None = None,
        end_conference_on_exit: bool | None = None,
    ) -> Participant | None:
        changes = _given(muted=muted, hold=hold, end_conference_on_exit=end_conference_on_exit)
        return await self._change(Participant, call_sid, lambda row: row.update(changes))

    async def set_dialing_status(self, call_sid: str, status: str) -> Participant | None:
        """Move a participant being dialled to ``status`` (``connecting``, ``ringing``,
        ``failed``); a participant that has answered, or ended, is left as it is."""

        def change(row: Participant) -> None:
            if row.status in PARTICIPANT_DIALING and row.status != status:
                row.status = status
                row.touch()

        return await self._change(Participant, call_sid, change)

    async def complete_participant(self, call_sid: str, reason: str) -> Participant | None:
        """Mark the participant completed (idempotent; the first reason is kept)."""
        return await self._change(
            Participant, call_sid, lambda row: _end(row, PARTICIPANT_COMPLETED, reason)
        )

    # --------------------------------------------------------------------- calls
    async def create_call(
        self,
        account_sid: str,
        *,
        from_uri: str,
        to_uri: str,
        direction: str = CALL_INBOUND,
        caller_name: str | None = None,
        status: str = CALL_RINGING,
        parent_call_sid: str | None = None,
        url: str | None = None,
        method: str = "POST",
        sid: str | None = None,
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        status_callback_event: str | None = None,
    ) -> Call:
        """Insert a call record (``ringing`` by default: an INVITE not answered yet). ``sid``
        is the CallSid the SIP edge chose (a new one when None). ValueError for a status that
        is not one of Twilio's."""
        if status not in CALL_STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        row = _new(
            Call,
            sid=sid or new_sid(),
            account_sid=account_sid,
            direction=direction,
            from_uri=from_uri,
            to_uri=to_uri,
            caller_name=caller_name,
            status=CALL_RINGING,
            start_time=None,
            end_time=None,
            duration=None,
            parent_call_sid=parent_call_sid,
            url=url,
            method=method,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
            status_callback_event=status_callback_event,
            sip_response_code=None,
        )
        _call_status(row, status, row.date_created)
        return await self._add(row)

    async def get_call(self, call_sid: str, account_sid: str | None = None) -> Call | None:
        """The call, or None (also when it belongs to another account)."""
        return await self._get(Call, call_sid, account_sid=account_sid)

    async def update_call(
        self,
        call_sid: str,
        *,
        status: str | None = None,
        url: str | None = None,
        method: str | None = None,
        sip_response_code: int | None = None,
    ) -> Call | None:
        """Change a call: ``status`` follows the transitions of :func:`_call_status` (times
        and duration included; a final call keeps its final status); ``url``/``method`` record
        the document the call runs now. None leaves a field as it is; None when no such call.
        ValueError for a status that is not one of Twilio's."""
        if status is not None and status not in CALL_STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        changes = _given(url=url, method=method, sip_response_code=sip_response_code)

        def change(row: Call) -> None:
            if changes:
                row.update(changes)
            if status is not None:
                _call_status(row, status, utcnow())

        return await self._change(Call, call_sid, change)

    async def list_calls(
        self,
        account_sid: str,
        filters: CallFilter = CallFilter(),
        *,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Call]:
        """Newest first (date_created, then SID, descending), like Twilio."""
        clauses: list[Any] = [Call.account_sid == account_sid]
        if filters.status is not None:
            clauses.append(Call.status == filters.status)
        if filters.from_uri is not None:
            clauses.append(Call.from_uri == filters.from_uri)
        if filters.to_uri is not None:
            clauses.append(Call.to_uri == filters.to_uri)
        if filters.parent_call_sid is not None:
            clauses.append(Call.parent_call_sid == filters.parent_call_sid)
        clauses += filters.start_time.clauses(Call.start_time)
        clauses += filters.end_time.clauses(Call.end_time)
        query = select(Call).where(*clauses).order_by(Call.date_created.desc(), Call.sid.desc())
        return await self._list(query, offset=offset, limit=limit)

    # ------------------------------------------------------------------- streams
    async def create_stream(
        self,
        *,
        conference_sid: str | None = None,
        call_sid: str | None = None,
        account_sid: str,
        url: str,
        name: str | None = None,
        track: str = "both_tracks",
        codec: str = "PCMU",
        realtime: bool = False,
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        sid: str | None = None,
    ) -> Stream:
        """Insert a ``queued`` stream of a conference or of a call (exactly one of
        ``conference_sid`` and ``call_sid``; ValueError otherwise). Raises
        :class:`~confstream.errors.NameInUse` when ``name`` is taken by an active (queued or
        in-progress) stream of the same conference or call."""
        if (conference_sid is None) == (call_sid is None):
            raise ValueError("a stream belongs to exactly one conference or call")
        row = _new(
            Stream,
            sid=sid or new_sid(),
            conference_sid=conference_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            name=name,
            url=url,
            track=track,
            codec=codec,
            realtime=realtime,
            status=STREAM_QUEUED,
            error_code=None,
            error_message=None,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
        )
        async with self.session() as session, session.begin():
            if name is not None:
                clash = await session.scalar(
                    select(Stream.sid).where(
                        _owned_by(conference_sid, call_sid),
                        Stream.name == name,
                        Stream.status.in_(STREAM_ACTIVE_STATUSES),
                    )
                )
                if clash is not None:
                    raise NameInUse(name, "conference" if call_sid is None else "call")
            session.add(row)
            await session.flush()
            session.add(
                StreamStatusChange(stream_sid=row.sid, status=STREAM_QUEUED, at=row.date_created)
            )
        return row

    async def get_stream(
        self, conference_sid: str | None, sid_or_name: str, *, call_sid: str | None = None
    ) -> Stream | None:
        """The stream of the conference (or, with ``call_sid``, of the call) by SID, else by
        Name (the active stream of that name, or the newest)."""
        if call_sid is not None:
            row = await self._get(Stream, sid_or_name, call_sid=call_sid)
        else:
            row = await self._get(Stream, sid_or_name, conference_sid=conference_sid or "")
        if row is not None:
            return row
        return await self._first(
            select(Stream)
            .where(_owned_by(conference_sid, call_sid), Stream.name == sid_or_name)
            .order_by(
                Stream.status.in_(STREAM_ACTIVE_STATUSES).desc(),
                Stream.date_created.desc(),
            )
        )

    async def get_stream_by_sid(self, sid: str) -> Stream | None:
        return await self._get(Stream, sid)

    async def list_streams(
        self,
        conference_sid: str | None,
        *,
        call_sid: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Stream]:
        """The conference's (or, with ``call_sid``, the call's) streams, oldest first, stopped
        streams included."""
        clauses: list[Any] = [_owned_by(conference_sid, call_sid)]
        if status is not None:
            clauses.append(Stream.status == status)
        query = select(Stream).where(*clauses).order_by(Stream.date_created, Stream.sid)
        return await self._list(query, offset=offset, limit=limit)

    async def set_stream_status(
        self,
        sid: str,
        status: str,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> Stream | None:
        """Record a status change and its history row. ``stopped`` is final: later changes
        are ignored (the row is returned unchanged). An error code/message, once set, is kept
        unless a new one is given."""
        now = utcnow()
        async with self.session() as session, session.begin():
            row = await session.get(Stream, sid)
            if row is None:
                return None
            if row.status == STREAM_STOPPED:
                if error_code is not None and row.error_code is None:
                    row.error_code = error_code
                    row.error_message = error_message
                    row.touch(now)
                return row
            row.status = status
            if error_code is not None:
                row.error_code = error_code
            if error_message is not None:
                row.error_message = error_message
            row.touch(now)
            session.add(StreamStatusChange(stream_sid=sid, status=status, at=now, code=error_code))
            return row

    async def stream_history(self, sid: str) -> list[StreamStatusChange]:
        return await self._list(
            select(StreamStatusChange)
            .where(StreamStatusChange.stream_sid == sid)
            .order_by(StreamStatusChange.id)
        )

    async def list_streams_active(
        self, conference_sid: str | None, *, call_sid: str | None = None
    ) -> list[Stream]:
        """The conference's (or, with ``call_sid``, the call's) queued or in-progress
        streams."""
        return await self._list(
            select(Stream).where(
                _owned_by(conference_sid, call_sid),
                Stream.status.in_(STREAM_ACTIVE_STATUSES),
            )
        )

    # --------------------------------------------------------------- start-up
    async def close_leftovers(self, reason: str) -> dict[str, int]:
        """Close what a previous run left open: its media is gone with its process.

        Conferences not completed -> ``completed`` (``reason_ended = reason``), participants
        in progress -> ``completed``, queued or in-progress streams -> ``stopped`` with
        ``error_message = reason`` and a history row, live calls (queued, ringing,
        in-progress) -> ``completed`` with ``end_time`` now and the duration of the answered
        ones. Returns the counts per table.
        """
        now = utcnow()
        async with self.session() as session, session.begin():
            stream_sids = list(
                await session.scalars(
                    select(Stream.sid).where(Stream.status.in_(STREAM_ACTIVE_STATUSES))
                )
            )
            if stream_sids:
                await session.execute(
                    update(Stream)
                    .where(Stream.sid.in_(stream_sids))
                    .values(status=STREAM_STOPPED, error_message=reason, date_updated=now)
                )
                await session.execute(
                    insert(StreamStatusChange),
                    [{"stream_sid": s, "status": STREAM_STOPPED, "at": now} for s in stream_sids],
                )
            participants = await session.execute(
                update(Participant)
                .where(Participant.status.not_in((PARTICIPANT_COMPLETED, PARTICIPANT_FAILED)))
                .values(status=PARTICIPANT_COMPLETED, reason_ended=reason, date_updated=now)
            )
            conferences = await session.execute(
                update(Conference)
                .where(Conference.status != CONFERENCE_COMPLETED)
                .values(status=CONFERENCE_COMPLETED, reason_ended=reason, date_updated=now)
            )
            calls = list(
                await session.scalars(select(Call).where(Call.status.in_(CALL_ACTIVE_STATUSES)))
            )
            for call in calls:
                _call_status(call, CALL_COMPLETED, now)
        return {
            "conferences": int(getattr(conferences, "rowcount", 0) or 0),
            "participants": int(getattr(participants, "rowcount", 0) or 0),
            "streams": len(stream_sids),
            "calls": len(calls),
        }

    async def close_leftover_streams(
        self, error_code: int, error_message: str
    ) -> list[tuple[Stream, str]]:
        """Close the streams a previous run left queued or in progress (it crashed: nothing
        reported them stopped): status ``stopped`` with ``error_code``/``error_message`` and a
        history row with the code. Returns each closed stream with its account's AuthToken, so
        the caller can send its final callbacks (docs/operations.md). Run at start-up before
        :meth:`close_leftovers`, which then finds no stream to close."""
        now = utcnow()
        async with self.session() as session, session.begin():
            rows = list(
                await session.execute(
                    select(Stream, Account.auth_token)
                    .join(Account, Account.sid == Stream.account_sid)
                    .where(Stream.status.in_(STREAM_ACTIVE_STATUSES))
                    .order_by(Stream.date_created, Stream.sid)
                )
            )
            for row, _token in rows:
                row.status = STREAM_STOPPED
                row.error_code = error_code
                row.error_message = error_message
                row.date_updated = now
                session.add(
                    StreamStatusChange(
                        stream_sid=row.sid, status=STREAM_STOPPED, at=now, code=error_code
                    )
                )
        return [(row, token) for row, token in rows]


async def open_store(database_url: str, *, migrate: bool = True, echo: bool = False) -> Store:
    """Open the database named by ``database_url`` and bring its schema up to date.

    ``migrate`` (default True) runs the Alembic migrations to ``head``; they are idempotent,
    so every start-up runs them. On PostgreSQL they run under a transaction-scoped advisory
    lock (:data:`MIGRATION_LOCK_KEY`), so several nodes starting at once migrate once.
    """
    url = async_database_url(database_url)
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, hide_parameters=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    if migrate:
        try:
            async with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    # Nodes of a cluster start together on one database (docs/cluster.md):
                    # one migrates, the others wait here, then find the schema at head.
                    await connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                await connection.run_sync(_migrate)
        except BaseException:
            await engine.dispose()
            raise
    return Store(engine)
