"""The store against real databases: an SQLite file and a PostgreSQL server."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

from confstream.store import (
    Conference,
    ConferenceFilter,
    DateFilter,
    NameInUse,
    Participant,
    Store,
    async_database_url,
    open_store,
)
from confstream.store.models import (
    CONFERENCE_END_REASONS,
    ENDED_LAST_LEFT,
    Base,
    end_reason,
    split_end_reason,
)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(database_url)
    yield opened
    await opened.close()


def test_async_database_url_mapping(tmp_path: object) -> None:
    assert async_database_url("postgresql://u:p@h:5/db") == "postgresql+asyncpg://u:p@h:5/db"
    assert async_database_url("postgres://h/db") == "postgresql+asyncpg://h/db"
    assert async_database_url(f"sqlite:///{tmp_path}/a/b.db").startswith("sqlite+aiosqlite:///")
    with pytest.raises(ValueError):
        async_database_url("mysql://h/db")


async def test_migrations_match_models(store: Store) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection)
        return list(compare_metadata(context, Base.metadata))

    async with store.engine.connect() as connection:
        differences = await connection.run_sync(diff)
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert differences == []
    assert {"accounts", "conferences", "participants", "streams", "stream_status_history"} <= (
        tables
    )


async def test_reopen_is_idempotent(database_url: str) -> None:
    first = await open_store(database_url)
    account = await first.create_account("one")
    await first.close()
    second = await open_store(database_url)
    try:
        again = await second.get_account(account.sid)
        assert again is not None and again.auth_token == account.auth_token
    finally:
        await second.close()


async def test_accounts(store: Store) -> None:
    account = await store.create_account("Acme", None)
    assert len(account.auth_token) == 32
    assert await store.get_account("nope") is None
    updated = await store.update_account(account.sid, stream_base_url="wss://example.com/s/")
    assert updated is not None and updated.stream_base_url == "wss://example.com/s/"
    fetched = await store.get_account(account.sid)
    assert fetched is not None and fetched.stream_base_url == "wss://example.com/s/"
    assert fetched.friendly_name == "Acme"
    assert await store.update_account("missing", stream_base_url="x") is None
    assert [a.sid for a in await store.list_accounts()] == [account.sid]


async def test_one_live_conference_per_name(store: Store) -> None:
    account = await store.create_account()
    room = await store.create_conference(account.sid, "room")
    with pytest.raises(IntegrityError):
        await store.create_conference(account.sid, "room")
    live = await store.find_live_conference(account.sid, "room")
    assert live is not None and live.sid == room.sid
    ended = await store.complete_conference(room.sid, "ended by test")
    assert ended is not None and ended.status == "completed"
    assert await store.find_live_conference(account.sid, "room") is None
    again = await store.create_conference(account.sid, "room")
    assert again.sid != room.sid
    # the first reason is kept
    twice = await store.complete_conference(room.sid, "other")
    assert twice is not None and twice.reason_ended == "ended by test"


async def test_foreign_keys_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError):
        await store.add_participant("call", "no-such-conference", "no-such-account")


async def test_conference_filters_and_paging(store: Store) -> None:
    account = await store.create_account()
    other = await store.create_account()
    await store.create_conference(other.sid, "theirs")
    sids = []
    for index in range(7):
        sids.append((await store.create_conference(account.sid, f"room-{index}")).sid)
    # set dates by hand so the date filters have something to bite on
    async with store.session() as session, session.begin():
        for index, sid in enumerate(sids):
            row = await session.get(Conference, sid)
            assert row is not None
            row.date_created = dt.datetime(2024, 1, 1 + index, 12, 0, 0)
            row.date_updated = dt.datetime(2024, 2, 1 + index, 12, 0, 0)
    await store.complete_conference(sids[0], "done")

    everything = await store.list_conferences(account.sid, limit=100)
    assert [c.sid for c in everything] == list(reversed(sids))  # newest first
    page = await store.list_conferences(account.sid, offset=2, limit=3)
    assert [c.sid for c in page] == list(reversed(sids))[2:5]

    by_name = await store.list_conferences(account.sid, ConferenceFilter(friendly_name="room-3"))
    assert [c.sid for c in by_name] == [sids[3]]
    completed = await store.list_conferences(account.sid, ConferenceFilter(status="completed"))
    assert [c.sid for c in completed] == [sids[0]]
    on_day = await store.list_conferences(
        account.sid, ConferenceFilter(date_created=DateFilter(on=dt.date(2024, 1, 3)))
    )
    assert [c.sid for c in on_day] == [sids[2]]
    before = await store.list_conferences(
        account.sid, ConferenceFilter(date_created=DateFilter(on_or_before=dt.date(2024, 1, 2)))
    )
    assert {c.sid for c in before} == {sids[0], sids[1]}
    window = await store.list_conferences(
        account.sid,
        ConferenceFilter(
            date_created=DateFilter(on_or_after=dt.date(2024, 1, 2)),
            date_updated=DateFilter(on_or_before=dt.date(2024, 2, 4)),
        ),
    )
    assert {c.sid for c in window} == {sids[1], sids[2], sids[3]}


async def test_participants(store: Store) -> None:
    account = await store.create_account()
    conference = await store.create_conference(account.sid, "room")
    await store.add_participant("a", conference.sid, account.sid)
    await store.add_participant("b", conference.sid, account.sid, muted=True)
    await store.add_participant("c", conference.sid, account.sid, hold=True)
    assert await store.count_live_participants(conference.sid) == 3

    muted = await store.list_participants(conference.sid, muted=True)
    assert [p.call_sid for p in muted] == ["b"]
    held = await store.list_participants(conference.sid, hold=True)
    assert [p.call_sid for p in held] == ["c"]

    updated = await store.update_participant("a", muted=True, hold=False)
    assert updated is not None and updated.muted is True
    assert updated.end_conference_on_exit is False
    on_exit = await store.update_participant("b", end_conference_on_exit=True)
    assert on_exit is not None and on_exit.end_conference_on_exit is True
    assert on_exit.muted is True  # untouched
    assert await store.list_participants(conference.sid, coaching=True) == []
    assert len(await store.list_participants(conference.sid, coaching=False)) == 3
    assert await store.get_participant("a", "other-conference") is None

    done = await store.complete_participant("a", "hangup")
    assert done is not None and done.status == "completed" and done.reason_ended == "hangup"
    assert await store.count_live_participants(conference.sid) == 2
    live = await store.list_participants(conference.sid)
    assert [p.call_sid for p in live] == ["b", "c"]
    all_rows = await store.list_participants(conference.sid, status=None)
    assert len(all_rows) == 3


async def test_streams_names_and_history(store: Store) -> None:
    account = await store.create_account()
    conference = await store.create_conference(account.sid, "room")
    first = await store.create_stream(
        conference_sid=conference.sid, account_sid=account.sid, url="wss://a/", name="rec"
    )
    with pytest.raises(NameInUse):
        await store.create_stream(
            conference_sid=conference.sid, account_sid=account.sid, url="wss://b/", name="rec"
        )
    by_name = await store.get_stream(conference.sid, "rec")
    assert by_name is not None and by_name.sid == first.sid
    assert await store.get_stream("other", first.sid) is None

    await store.set_stream_status(first.sid, "in-progress")
    await store.set_stream_status(first.sid, "stopped", 31920, "handshake failed")
    late = await store.set_stream_status(first.sid, "in-progress")
    assert late is not None and late.status == "stopped" and late.error_code == 31920
    history = [(h.status, h.code) for h in await store.stream_history(first.sid)]
    assert history == [("queued", None), ("in-progress", None), ("stopped", 31920)]

    # once stopped, the name is free again; the name then finds the active one
    second = await store.create_stream(
        conference_sid=conference.sid, account_sid=account.sid, url="wss://b/", name="rec"
    )
    found = await store.get_stream(conference.sid, "rec")
    assert found is not None and found.sid == second.sid
    assert [s.sid for s in await store.list_streams_active(conference.sid)] == [second.sid]


async def test_close_leftovers(store: Store) -> None:
    account = await store.create_account()
    live = await store.create_conference(account.sid, "live")
    done = await store.create_conference(account.sid, "done")
    await store.complete_conference(done.sid, "normal end")
    await store.add_participant("p1", live.sid, account.sid)
    stream = await store.create_stream(
        conference_sid=live.sid, account_sid=account.sid, url="wss://x/"
    )
    counts = await store.close_leftovers("server restarted")
    assert counts == {"conferences": 1, "participants": 1, "streams": 1, "calls": 0}
    conference = await store.get_conference(live.sid)
    assert conference is not None and conference.status == "completed"
    assert conference.reason_ended == "server restarted"
    untouched = await store.get_conference(done.sid)
    assert untouched is not None and untouched.reason_ended == "normal end"
    participant = await store.get_participant("p1")
    assert isinstance(participant, Participant) and participant.status == "completed"
    row = await store.get_stream_by_sid(stream.sid)
    assert row is not None and row.status == "stopped"
    assert row.error_message == "server restarted"
    assert [h.status for h in await store.stream_history(stream.sid)] == ["queued", "stopped"]
    assert await store.close_leftovers("again") == {
        "conferences": 0,
        "participants": 0,
        "streams": 0,
        "calls": 0,
    }


async def test_sqlite_pragmas(tmp_path: object) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/p.db")
    try:
        async with store.engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
            busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
        assert (mode, keys, busy) == ("wal", 1, 5000)
    finally:
        await store.close()


def test_end_reason_round_trip() -> None:
    for reason in CONFERENCE_END_REASONS:
        assert split_end_reason(end_reason(reason)) == (reason, None)
        assert split_end_reason(end_reason(reason, "c-1")) == (reason, "c-1")
    stored = end_reason(ENDED_LAST_LEFT, "3f1c-uuid")
    assert stored == "last-participant-left call_sid=3f1c-uuid"
    # free text (restarts, shutdowns, older records) comes back whole
    assert split_end_reason("confstream restarted") == ("confstream restarted", None)
    assert split_end_reason("odd call_sid=x") == ("odd call_sid=x", None)
    assert split_end_reason(None) == (None, None)
