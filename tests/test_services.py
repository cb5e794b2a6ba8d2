"""Services: the conference lifecycle as the SIP edge drives it, with a real store file,
a real Engine and a real StreamManager."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from confstream.conference.gateway import ConferenceGateway, JoinRefused
from confstream.errors import (
    AccountNotActive,
    AlreadyJoined,
    AnnouncementInvalid,
    AnnouncementUnavailable,
    ConferenceNotLive,
    NotFound,
    UrlRefused,
)
from confstream.services import Services
from confstream.settings import Settings
from confstream.store import ConferenceFilter, open_store
from confstream.tools.participants import RecordingTap
from tests.api.stack import FakeCallParticipant, Stack, make_engine, open_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        yield opened


def test_services_is_a_gateway(stack: Stack) -> None:
    gateway: ConferenceGateway = stack.services
    assert gateway is stack.services


async def test_auth_token(stack: Stack) -> None:
    assert await stack.services.auth_token(stack.account.sid) == stack.account.auth_token
    assert await stack.services.auth_token("nobody") is None
    assert await stack.services.authenticate(stack.account.sid, stack.account.auth_token)
    assert await stack.services.authenticate(stack.account.sid, "wrong") is None


async def test_join_creates_then_reuses_the_conference(stack: Stack) -> None:
    first = await stack.join("call-1", "room")
    second = await stack.join("call-2", "room")
    elsewhere = await stack.join("call-3", "other-room")
    theirs = await stack.join("call-4", "room", account=stack.other)
    assert first == second
    assert len({first, elsewhere, theirs}) == 3
    media = stack.engine.get(first)
    assert media is not None
    conference = await stack.store.get_conference(first)
    assert conference is not None and conference.status == "in-progress"
    assert conference.friendly_name == "room" and conference.account_sid == stack.account.sid
    records = await stack.store.list_participants(first)
    assert [p.call_sid for p in records] == ["call-1", "call-2"]


async def test_concurrent_joins_make_one_conference(stack: Stack) -> None:
    sids = await asyncio.gather(*(stack.join(f"call-{i}", "busy") for i in range(10)))
    assert len(set(sids)) == 1
    assert await stack.store.count_live_participants(sids[0]) == 10


async def test_join_refused_for_unknown_account(stack: Stack) -> None:
    participant = FakeCallParticipant("call-x", stack.services)
    with pytest.raises(JoinRefused) as refused:
        await stack.services.join("no-such-account", "room", participant)
    assert isinstance(refused.value, AccountNotActive) and refused.value.sip_status == 403


async def test_join_refused_for_a_call_already_in(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    participant = FakeCallParticipant("call-1", stack.services)
    with pytest.raises(AlreadyJoined) as refused:
        await stack.services.join(stack.account.sid, "other-room", participant)
    assert refused.value.sip_status == 482
    # the refused join changed nothing: the call is still in its first conference
    record = await stack.store.get_participant("call-1")
    assert record is not None and record.conference_sid == conference_sid
    conferences = await stack.services.list_conferences(
        stack.account.sid, ConferenceFilter(), offset=0, limit=10
    )
    assert [c.sid for c in conferences] == [conference_sid]


async def test_reads_are_scoped_and_raise_not_found(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    conference = await stack.services.get_conference(stack.account.sid, conference_sid)
    assert conference.sid == conference_sid
    with pytest.raises(NotFound) as other:
        await stack.services.get_conference(stack.other.sid, conference_sid)
    assert other.value.code == 20404
    assert other.value.message == (
        f"The requested resource Conference {conference_sid} was not found"
    )
    participant = await stack.services.get_participant(conference_sid, "call-1")
    assert participant.call_sid == "call-1"
    listed = await stack.services.list_participants(conference_sid, offset=0, limit=1)
    assert [p.call_sid for p in listed] == ["call-1"]
    await stack.services.leave("call-1", "bye")
    with pytest.raises(NotFound, match="Participant call-1"):
        await stack.services.get_participant(conference_sid, "call-1")
    with pytest.raises(NotFound, match="Stream nope"):
        await stack.services.get_stream(conference_sid, "nope")
    assert await stack.services.list_streams(conference_sid, offset=0, limit=5) == []


async def test_update_conference_announce_needs_a_live_conference(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    conference = await stack.services.get_conference(stack.account.sid, conference_sid)
    ended = await stack.services.update_conference(conference, end=True)
    assert ended.status == "completed" and ended.reason_ended == "conference-ended-via-api"
    with pytest.raises(ConferenceNotLive) as not_live:
        await stack.services.update_conference(ended, announce_url="http://127.0.0.1:9/a.wav")
    assert not_live.value.code == 21220
    assert not_live.value.message == f"Conference {conference_sid} is not in progress"
    # ending twice keeps the first reason
    again = await stack.services.update_conference(ended, end=True)
    assert again.reason_ended == "conference-ended-via-api"


async def test_last_leave_completes_the_conference(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    await stack.services.leave("call-1", "bye")
    await stack.services.leave("call-1", "bye again")  # idempotent
    record = await stack.store.get_participant("call-1")
    assert record is not None and record.status == "completed" and record.reason_ended == "bye"
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None and conference.status == "in-progress"
    assert stack.engine.get(conference_sid) is not None

    await stack.services.leave("call-2", "timeout")
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None and conference.status == "completed"
    assert conference.reason_ended == "last-participant-left call_sid=call-2"
    assert stack.engine.get(conference_sid) is None
    # the next join by that name makes a new conference
    again = await stack.join("call-3", "room")
    assert again != conference_sid


async def test_hold_changed_persists(stack: Stack) -> None:
    await stack.join("call-1", "room")
    stack.services.hold_changed("call-1", True)
    await stack.services.drain()
    record = await stack.store.get_participant("call-1")
    assert record is not None and record.hold is True
    assert stack.participants["call-1"].hold is True
    stack.services.hold_changed("unknown", True)  # ignored


async def test_dtmf_reaches_the_conference_taps(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    tap = RecordingTap()
    media = stack.engine.get(conference_sid)
    assert media is not None
    media.add_tap(tap)
    stack.services.dtmf_received("call-1", "5", 200)
    for _ in range(100):
        if tap.dtmf:
            break
        await asyncio.sleep(0.01)
    assert tap.dtmf == [("call-1", "5", 200)]


def _wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(np.full(800, 3000, dtype=np.int16).tobytes())
    return buffer.getvalue()


@pytest.fixture
async def wav_server() -> AsyncIterator[str]:
    async def audio(request: Request) -> Response:
        return Response(_wav_bytes(), media_type="audio/wav")

    async def junk(request: Request) -> Response:
        return Response(b"not a wav file", media_type="audio/wav")

    app = Starlette(routes=[Route("/a.wav", audio, methods=["GET", "POST"]), Route("/junk", junk)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_announce_fetches_through_the_policy(stack: Stack, wav_server: str) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.services.announce(conference_sid, f"{wav_server}/a.wav", "GET")
    await stack.services.announce(
        conference_sid, f"{wav_server}/a.wav", "POST", target_call_sid="call-1"
    )
    with pytest.raises(AnnouncementInvalid) as bad:
        await stack.services.announce(conference_sid, f"{wav_server}/junk", "GET")
    assert bad.value.code == 12300
    with pytest.raises(AnnouncementUnavailable) as missing:
        await stack.services.announce(conference_sid, f"{wav_server}/nothing", "GET")
    assert missing.value.code == 11200
    assert missing.value.message == "AnnounceUrl answered HTTP 404"


async def test_announce_refuses_private_addresses(tmp_path: Path, wav_server: str) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 's.db'}")  # no allowed networks
    store = await open_store(settings.database_url)
    engine = make_engine(settings)
    await engine.start()
    services = Services(settings, store, engine)
    try:
        account = await store.create_account()
        conference_sid = await services.join(
            account.sid, "room", FakeCallParticipant("c", services)
        )
        with pytest.raises(UrlRefused) as refused:
            await services.announce(conference_sid, f"{wav_server}/a.wav", "GET")
        assert refused.value.code == 21205
        assert refused.value.message.startswith("AnnounceUrl refused: ")
    finally:
        await services.shutdown()
        await engine.stop()
        await store.close()


async def test_shutdown_ends_live_conferences(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.services.shutdown("stopping")
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None and conference.status == "completed"
    assert conference.reason_ended == "stopping"
    assert stack.participants["call-1"].hangups == ["stopping"]


async def test_end_conference_on_exit_ends_it_for_everyone(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    await stack.join("call-3", "room")
    updated = await stack.services.update_participant("call-1", end_conference_on_exit=True)
    assert updated is not None and updated.end_conference_on_exit is True
    await stack.services.kick("call-1")
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None and conference.status == "completed"
    assert conference.reason_ended == (
        "participant-with-end-conference-on-exit-kicked call_sid=call-1"
    )
    assert stack.participants["call-2"].hangups and stack.participants["call-3"].hangups
    assert stack.services.live_call_sids(conference_sid) == []
    assert stack.engine.get(conference_sid) is None


async def test_kicking_the_last_participant(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    await stack.services.kick("call-1")
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None and conference.status == "in-progress"
    await stack.services.kick("call-2")
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None
    assert conference.reason_ended == "last-participant-kicked call_sid=call-2"


async def test_coaching_filter_reads_the_records(stack: Stack) -> None:
    conference_sid = await stack.join("call-1", "room")
    none = await stack.services.list_participants(conference_sid, coaching=True, offset=0, limit=5)
    assert none == []
    everyone = await stack.services.list_participants(
        conference_sid, coaching=False, offset=0, limit=5
    )
    assert [p.call_sid for p in everyone] == ["call-1"]
