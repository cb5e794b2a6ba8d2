"""Call records and call streams in the store, against a real SQLite file and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from confstream.store import Call, CallFilter, DateFilter, NameInUse, Store, open_store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(database_url)
    yield opened
    await opened.close()


async def _set_times(store: Store, sid: str, **values: dt.datetime | None) -> None:
    """Move a call's times to fixed instants (the store itself only writes "now")."""
    async with store.session() as session, session.begin():
        await session.execute(update(Call).where(Call.sid == sid).values(**values))


async def test_status_transitions_set_times_and_duration(store: Store) -> None:
    account = await store.create_account()
    call = await store.create_call(
        account.sid,
        from_uri="sip:alice@example.com",
        to_uri="sip:sales@confstream",
        caller_name="Alice",
        sid="4f5d1a56-0000-4000-8000-000000000001",
    )
    assert call.sid == "4f5d1a56-0000-4000-8000-000000000001"
    assert (call.status, call.direction, call.start_time, call.duration) == (
        "ringing",
        "inbound",
        None,
        None,
    )
    answered = await store.update_call(call.sid, status="in-progress")
    assert answered is not None and answered.start_time is not None
    assert answered.end_time is None and answered.duration is None
    # three seconds of call
    start = dt.datetime(2024, 5, 1, 12, 0, 0)
    await _set_times(store, call.sid, start_time=start)
    ended = await store.update_call(call.sid, status="completed")
    assert ended is not None and ended.status == "completed" and ended.end_time is not None
    assert ended.duration == round((ended.end_time - start).total_seconds())
    assert ended.start_time == start
    # final is final: a later status change is ignored, times stay
    again = await store.update_call(call.sid, status="busy")
    assert again is not None and again.status == "completed"
    assert again.end_time == ended.end_time and again.duration == ended.duration
    # a second in-progress does not move start_time
    other = await store.create_call(account.sid, from_uri="sip:b@h", to_uri="sip:c@h")
    first = await store.update_call(other.sid, status="in-progress")
    second = await store.update_call(other.sid, status="in-progress")
    assert first is not None and second is not None and first.start_time == second.start_time


async def test_unanswered_call_has_no_duration(store: Store) -> None:
    account = await store.create_account()
    call = await store.create_call(account.sid, from_uri="sip:a@h", to_uri="sip:b@h")
    refused = await store.update_call(call.sid, status="busy", sip_response_code=486)
    assert refused is not None
    assert (refused.status, refused.start_time, refused.duration, refused.sip_response_code) == (
        "busy",
        None,
        None,
        486,
    )
    assert refused.end_time is not None
    with pytest.raises(ValueError):
        await store.update_call(call.sid, status="answered")
    with pytest.raises(ValueError):
        await store.create_call(account.sid, from_uri="a", to_uri="b", status="nope")
    assert await store.update_call("no-such-call", status="completed") is None


async def test_get_call_is_scoped_to_its_account(store: Store) -> None:
    mine, theirs = await store.create_account(), await store.create_account()
    call = await store.create_call(mine.sid, from_uri="a", to_uri="b")
    assert await store.get_call(call.sid, mine.sid) is not None
    assert await store.get_call(call.sid, theirs.sid) is None
    assert await store.get_call("nope") is None
    redirected = await store.update_call(call.sid, url="https://app/next", method="GET")
    assert redirected is not None and (redirected.url, redirected.method) == (
        "https://app/next",
        "GET",
    )


async def test_list_filters_and_paging(store: Store) -> None:
    account = await store.create_account()
    other = await store.create_account()
    await store.create_call(other.sid, from_uri="sip:alice@h", to_uri="sip:sales@h")
    a = await store.create_call(account.sid, from_uri="sip:alice@h", to_uri="sip:sales@h")
    b = await store.create_call(account.sid, from_uri="sip:bob@h", to_uri="sip:sales@h")
    c = await store.create_call(
        account.sid, from_uri="sip:bob@h", to_uri="sip:support@h", parent_call_sid=a.sid
    )
    for call in (a, b):
        await store.update_call(call.sid, status="in-progress")
    await store.update_call(b.sid, status="completed")
    await _set_times(store, a.sid, start_time=dt.datetime(2024, 5, 1, 23, 59, 59))
    await _set_times(
        store,
        b.sid,
        start_time=dt.datetime(2024, 5, 2, 0, 0, 0),
        end_time=dt.datetime(2024, 5, 3, 8, 0, 0),
    )

    async def sids(**kw: object) -> list[str]:
        rows = await store.list_calls(account.sid, CallFilter(**kw))  # type: ignore[arg-type]
        return [r.sid for r in rows]

    assert await sids() == [c.sid, b.sid, a.sid]  # newest first
    assert await sids(status="in-progress") == [a.sid]
    assert await sids(status="ringing") == [c.sid]
    assert await sids(from_uri="sip:bob@h") == [c.sid, b.sid]
    assert await sids(to_uri="sip:sales@h") == [b.sid, a.sid]
    assert await sids(from_uri="sip:bob@h", to_uri="sip:sales@h") == [b.sid]
    assert await sids(parent_call_sid=a.sid) == [c.sid]
    day = dt.date(2024, 5, 1)
    assert await sids(start_time=DateFilter(on=day)) == [a.sid]
    assert await sids(start_time=DateFilter(on_or_before=day)) == [a.sid]
    assert await sids(start_time=DateFilter(on_or_after=dt.date(2024, 5, 2))) == [b.sid]
    assert await sids(start_time=DateFilter(on_or_after=day)) == [b.sid, a.sid]
    assert await sids(end_time=DateFilter(on=dt.date(2024, 5, 3))) == [b.sid]
    page = await store.list_calls(account.sid, offset=1, limit=1)
    assert [r.sid for r in page] == [b.sid]


async def test_call_streams_names_and_cascade(store: Store) -> None:
    account = await store.create_account()
    call = await store.create_call(account.sid, from_uri="a", to_uri="b")
    conference = await store.create_conference(account.sid, "room")
    mine = await store.create_stream(
        call_sid=call.sid, account_sid=account.sid, url="wss://x/", name="rec"
    )
    assert (mine.call_sid, mine.conference_sid) == (call.sid, None)
    # the same name is free in a conference, taken in the same call
    await store.create_stream(
        conference_sid=conference.sid, account_sid=account.sid, url="wss://x/", name="rec"
    )
    with pytest.raises(NameInUse, match="this call"):
        await store.create_stream(
            call_sid=call.sid, account_sid=account.sid, url="wss://x/", name="rec"
        )
    with pytest.raises(ValueError):
        await store.create_stream(account_sid=account.sid, url="wss://x/")
    with pytest.raises(ValueError):
        await store.create_stream(
            call_sid=call.sid, conference_sid=conference.sid, account_sid=account.sid, url="u"
        )
    # by SID and by Name, only within the call
    found = await store.get_stream(None, "rec", call_sid=call.sid)
    assert found is not None and found.sid == mine.sid
    assert await store.get_stream(None, mine.sid, call_sid=call.sid) is not None
    assert await store.get_stream(conference.sid, mine.sid) is None
    assert await store.get_stream(None, mine.sid, call_sid="other") is None
    listed = await store.list_streams(None, call_sid=call.sid)
    assert [s.sid for s in listed] == [mine.sid]
    assert [s.sid for s in await store.list_streams_active(None, call_sid=call.sid)] == [mine.sid]
    assert mine.sid not in [s.sid for s in await store.list_streams(conference.sid)]
    # a stream must name an existing call
    with pytest.raises(IntegrityError):
        await store.create_stream(call_sid="no-such-call", account_sid=account.sid, url="u")
