"""JoinOptions semantics through Services.join with the real engine clock, a real SQLite store
and real HTTP servers (the wait audio, the REST API in-process): beeps heard by the others,
the waiting room with its looping wait audio, the start on a moderator, the end on exit,
maxParticipants, labels, leave_conference. docs/voice.md, "Conference options"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from confstream.conference.gateway import JoinOptions
from confstream.conference.sources import BEEP_ENTER_HZ, BEEP_EXIT_HZ
from confstream.errors import CoachingRefused, ConferenceFull, ConferenceNotLive, NotFound
from confstream.media.analysis import tone, tone_levels
from confstream.media.wav import write_wav
from confstream.streams.spec import StreamRequest
from confstream.tools.participants import ToneParticipant
from tests.api.stack import Stack, open_stack

WAIT_HZ = 300.0
PRESENT = 0.05
ABSENT = 0.01


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        yield opened


@pytest.fixture
async def wait_wav(tmp_path: Path) -> AsyncIterator[str]:
    """A real HTTP server answering ``/wait.wav`` (a 0.5 s tone of WAIT_HZ) to GET and POST."""
    path = tmp_path / "wait.wav"
    write_wav(path, tone(WAIT_HZ, 0.5, amplitude=8000), 8000)
    data = path.read_bytes()

    async def audio(request: Request) -> Response:
        return Response(data, media_type="audio/wav")

    app = Starlette(routes=[Route("/wait.wav", audio, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes only a flag)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/wait.wav"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def eventually(predicate: Callable[[], object], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def join(
    stack: Stack,
    room: str,
    freq: float | None,
    options: JoinOptions | None = None,
    call_sid: str | None = None,
) -> tuple[ToneParticipant, str]:
    participant = ToneParticipant(call_sid, freq)
    conference_sid = await stack.services.join(stack.account.sid, room, participant, options)
    return participant, conference_sid


async def heard_after(p: ToneParticipant, frames: int) -> np.ndarray:
    """The next ``frames`` frames ``p`` hears from now on."""
    start = len(p.heard)
    await eventually(lambda: len(p.heard) >= start + frames)
    return np.concatenate(p.heard[start : start + frames])


def levels(pcm: np.ndarray, *freqs: float) -> dict[float, float]:
    return tone_levels(pcm, freqs)


async def test_plain_join_plays_no_beep(stack: Stack) -> None:
    listener, _ = await join(stack, "room", None)
    start = len(listener.heard)
    await join(stack, "room", None)
    await join(stack, "room", 500.0)
    audio = await heard_after(listener, 20)
    before_tone = np.concatenate(listener.heard[start:]) if len(listener.heard) > start else audio
    lv = levels(before_tone, BEEP_ENTER_HZ, BEEP_EXIT_HZ, 500.0)
    assert lv[BEEP_ENTER_HZ] < ABSENT and lv[BEEP_EXIT_HZ] < ABSENT


async def test_enter_and_exit_beeps_are_heard_by_the_others(stack: Stack) -> None:
    listener, _ = await join(stack, "room", None)
    on_enter, _ = await join(stack, "room", None, JoinOptions(beep="onEnter"))
    entered = await heard_after(listener, 15)
    assert levels(entered, BEEP_ENTER_HZ)[BEEP_ENTER_HZ] > 0.5
    both, _ = await join(stack, "room", None, JoinOptions(beep="true"))
    assert levels(await heard_after(listener, 15), BEEP_ENTER_HZ)[BEEP_ENTER_HZ] > 0.5
    # onEnter only: leaving plays nothing
    await stack.services.leave(on_enter.call_sid, "bye")
    quiet = await heard_after(listener, 15)
    assert not quiet.any()
    # true: the exit beep, a different tone
    await stack.services.leave(both.call_sid, "bye")
    left = await heard_after(listener, 15)
    lv = levels(left, BEEP_ENTER_HZ, BEEP_EXIT_HZ)
    assert lv[BEEP_EXIT_HZ] > 0.5 and lv[BEEP_ENTER_HZ] < ABSENT


async def test_muted_join_is_not_heard(stack: Stack) -> None:
    listener, conference_sid = await join(stack, "room", None)
    muted, _ = await join(stack, "room", 500.0, JoinOptions(muted=True, beep="false"))
    assert muted.muted is True
    assert not (await heard_after(listener, 10)).any()
    record = await stack.services.get_participant(conference_sid, muted.call_sid)
    assert record.muted is True
    await stack.services.update_participant(muted.call_sid, muted=False)
    assert levels(await heard_after(listener, 10), 500.0)[500.0] > 0.5


async def test_waiting_room_plays_wait_audio_until_a_moderator_enters(
    stack: Stack, wait_wav: str
) -> None:
    waiting = JoinOptions(beep="false", start_conference_on_enter=False, wait_url=wait_wav)
    first, conference_sid = await join(stack, "room", 500.0, waiting)
    second, _ = await join(stack, "room", 600.0, waiting)
    record = await stack.services.get_conference(stack.account.sid, conference_sid)
    assert record.status == "init"
    # each hears the looping wait audio and not the other
    await eventually(lambda: levels(first.heard_audio(last=10), WAIT_HZ)[WAIT_HZ] > 0.5)
    for p, other in ((first, 600.0), (second, 500.0)):
        audio = await heard_after(p, 40)  # 0.8 s: longer than the 0.5 s file, so it looped
        lv = levels(audio, WAIT_HZ, other)
        assert lv[WAIT_HZ] > 0.5 and lv[other] < ABSENT, lv
    # nothing to stream yet: the conference has not started
    request = StreamRequest(url="wss://127.0.0.1:9/never")
    with pytest.raises(ConferenceNotLive):
        await stack.services.create_stream(stack.account, record, request)
    # the moderator starts it: everyone is mixed, the wait audio stops
    moderator, same = await join(stack, "room", 800.0, JoinOptions(beep="false"))
    assert same == conference_sid
    record = await stack.services.get_conference(stack.account.sid, conference_sid)
    assert record.status == "in-progress"
    await heard_after(first, 5)
    lv = levels(await heard_after(first, 20), WAIT_HZ, 600.0, 800.0)
    assert lv[600.0] > PRESENT and lv[800.0] > PRESENT and lv[WAIT_HZ] < ABSENT, lv
    lv = levels(await heard_after(moderator, 20), 500.0, 600.0)
    assert lv[500.0] > PRESENT and lv[600.0] > PRESENT
    rows = await stack.services.list_participants(conference_sid, offset=0, limit=10)
    starts = {r.call_sid: r.start_conference_on_enter for r in rows}
    assert starts == {first.call_sid: False, second.call_sid: False, moderator.call_sid: True}


async def test_waiting_without_wait_url_is_silence(stack: Stack) -> None:
    waiting = JoinOptions(beep="false", start_conference_on_enter=False)
    first, _ = await join(stack, "room", 500.0, waiting)
    second, _ = await join(stack, "room", 600.0, waiting)
    assert not (await heard_after(first, 20)).any()
    assert not (await heard_after(second, 20)).any()


async def test_end_conference_on_exit_applies_to_leave_conference(stack: Stack) -> None:
    moderator, conference_sid = await join(
        stack, "room", None, JoinOptions(beep="false", end_conference_on_exit=True)
    )
    other, _ = await join(stack, "room", None)
    await stack.services.leave_conference(moderator.call_sid, "dial action")
    record = await stack.services.get_conference(stack.account.sid, conference_sid)
    assert record.status == "completed"
    assert record.reason_ended == (
        f"participant-with-end-conference-on-exit-left call_sid={moderator.call_sid}"
    )
    assert other.hangups and not moderator.hangups  # leave_conference does not end the call
    assert stack.engine.get(conference_sid) is None


async def test_leave_conference_keeps_the_call(stack: Stack) -> None:
    a, conference_sid = await join(stack, "room", 500.0)
    b, _ = await join(stack, "room", 600.0)
    await stack.services.leave_conference(a.call_sid, "moved on")
    assert not a.hangups
    media = stack.engine.get(conference_sid)
    assert media is not None and a.call_sid not in media.participants
    with pytest.raises(NotFound):
        await stack.services.get_participant(conference_sid, a.call_sid)
    record = await stack.store.get_participant(a.call_sid)
    assert record is not None and record.reason_ended == "moved on"
    # the call can join another conference afterwards
    elsewhere = await stack.services.join(stack.account.sid, "next", a)
    assert elsewhere != conference_sid
    # a call in no conference: no effect
    await stack.services.leave_conference("no-such-call", "x")
    # the last one leaving ends the conference, as leave does
    await stack.services.leave_conference(b.call_sid, "moved on")
    ended = await stack.services.get_conference(stack.account.sid, conference_sid)
    assert ended.status == "completed"
    assert ended.reason_ended == f"last-participant-left call_sid={b.call_sid}"
    assert not b.hangups


async def test_max_participants_refuses_the_join_beyond(stack: Stack) -> None:
    _, conference_sid = await join(stack, "room", None, JoinOptions(max_participants=2))
    await join(stack, "room", None)
    third = ToneParticipant(None, None)
    with pytest.raises(ConferenceFull) as full:
        await stack.services.join(stack.account.sid, "room", third)
    assert full.value.sip_status == 486
    media = stack.engine.get(conference_sid)
    assert media is not None and len(media.participants) == 2
    assert await stack.store.get_participant(third.call_sid) is None


async def test_coaching_is_refused(stack: Stack) -> None:
    with pytest.raises(CoachingRefused) as refused:
        await join(stack, "room", None, JoinOptions(coaching=True, call_sid_to_coach="x"))
    assert refused.value.sip_status == 488
    assert stack.engine.conferences == {}


async def test_labels_address_participants_in_rest(stack: Stack) -> None:
    agent, conference_sid = await join(stack, "room", None, JoinOptions(label="agent"))
    customer, _ = await join(stack, "room", None)
    # a label equal to another participant's CallSid never hides that participant
    tricky, _ = await join(stack, "room", None, JoinOptions(label=customer.call_sid))
    base = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}/Participants"
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api", auth=stack.auth()
    ) as client:
        fetched = await client.get(f"{base}/agent.json")
        assert fetched.status_code == 200
        assert fetched.json()["call_sid"] == agent.call_sid
        assert fetched.json()["label"] == "agent"
        by_sid = await client.get(f"{base}/{customer.call_sid}.json")
        assert by_sid.json()["call_sid"] == customer.call_sid
        muted = await client.post(f"{base}/agent.json", data={"Muted": "true"})
        assert muted.status_code == 200 and muted.json()["muted"] is True
        assert agent.muted is True
        deleted = await client.delete(f"{base}/agent.json")
        assert deleted.status_code == 204
        assert agent.hangups
        gone = await client.get(f"{base}/agent.json")
        assert gone.status_code == 404
        assert (await client.get(f"{base}/nobody.json")).status_code == 404
    assert tricky.call_sid != customer.call_sid


async def test_beep_on_exit_via_rest(stack: Stack) -> None:
    listener, conference_sid = await join(stack, "room", None)
    leaver, _ = await join(stack, "room", None)
    base = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}/Participants"
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api", auth=stack.auth()
    ) as client:
        answer = await client.post(f"{base}/{leaver.call_sid}.json", data={"BeepOnExit": "true"})
        assert answer.status_code == 200, answer.text
    await stack.services.leave(leaver.call_sid, "bye")
    lv = levels(await heard_after(listener, 15), BEEP_EXIT_HZ, BEEP_ENTER_HZ)
    assert lv[BEEP_EXIT_HZ] > 0.5 and lv[BEEP_ENTER_HZ] < ABSENT
