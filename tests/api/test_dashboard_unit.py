"""The dashboard's server side with the real stack (SQLite file, Engine, StreamManager,
Services) and a real uvicorn server: authentication, account isolation of snapshots, the
per-account bound on event streams, releasing a stream when its client goes away, and the
engine's level measurement. The browser side is tests/integration/test_dashboard.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np

from confstream.api.dashboard import snapshot_json
from confstream.conference.base import Frame
from confstream.conference.engine import LEVEL_EVERY_TICKS, Engine
from confstream.services import SILENCE_DBFS

from .stack import Stack


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def event_stream(
    url: str, auth: tuple[str, str]
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[dict[str, Any]]]]:
    """GET /dashboard/events; yields the response and an iterator of snapshot payloads."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{url}/dashboard/events", auth=auth) as response,
    ):

        async def snapshots() -> AsyncIterator[dict[str, Any]]:
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: ") and event == "snapshot":
                    yield json.loads(line[len("data: ") :])

        yield response, snapshots()


async def test_every_route_needs_the_accounts_credentials(stack: Stack, server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as client:
        for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/events"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"].startswith('Basic realm="confstream"')
            wrong = await client.get(path, auth=(stack.account.sid, "not-the-token"))
            assert wrong.status_code == 401
        page = await client.get("/dashboard", auth=stack.auth())
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/dashboard/dashboard.js"' in page.text
        script = await client.get("/dashboard/dashboard.js", auth=stack.auth())
        assert script.status_code == 200 and "EventSource" in script.text
        assert script.headers["content-type"].startswith("text/javascript")
        style = await client.get("/dashboard/dashboard.css", auth=stack.auth())
        assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
        missing = await client.get("/dashboard/secrets.py", auth=stack.auth())
        assert missing.status_code == 404


async def test_snapshot_shows_only_the_accounts_live_conferences(stack: Stack) -> None:
    mine = await stack.join("call-mine", "room")
    await stack.join("call-mine-2", "room")
    theirs = await stack.join("call-theirs", "room", account=stack.other)
    await stack.services.update_participant("call-mine-2", muted=True)

    snapshot = await stack.services.dashboard_snapshot(stack.account.sid)
    assert [c.sid for c in snapshot.conferences] == [mine]
    conference = snapshot.conferences[0]
    assert conference.friendly_name == "room" and conference.status == "in-progress"
    by_call = {p.call_sid: p for p in conference.participants}
    assert set(by_call) == {"call-mine", "call-mine-2"}
    assert by_call["call-mine-2"].muted and not by_call["call-mine"].muted
    assert snapshot.totals == {
        "conferences": 1,
        "participants": 2,
        "streams_active": 0,
        "frames_dropped": 0,
    }
    data = json.loads(snapshot_json(snapshot))
    assert "call-theirs" not in json.dumps(data) and theirs not in json.dumps(data)
    assert data["totals"]["participants"] == 2 and data["time"].endswith("+00:00")

    other = await stack.services.dashboard_snapshot(stack.other.sid)
    assert [c.sid for c in other.conferences] == [theirs]

    await stack.services.end_conference(mine)
    assert (await stack.services.dashboard_snapshot(stack.account.sid)).conferences == []


async def test_event_stream_sends_snapshots_with_levels_and_is_bounded_per_account(
    stack: Stack, server_url: str
) -> None:
    stack.settings.dashboard_max_clients = 2
    await stack.join("call-a", "room")  # sends a constant 1000: -30.3 dBFS
    assert stack.engine.level_watchers == 0
    async with event_stream(server_url, stack.auth()) as (first, snapshots):
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/event-stream")
        assert stack.engine.level_watchers == 1
        level = None
        async for snap in snapshots:
            (participant,) = snap["conferences"][0]["participants"]
            level = participant["level_dbfs"]
            if level is not None:
                break
        assert level == -30.3

        async with event_stream(server_url, stack.auth()) as (second, _):
            assert second.status_code == 200
            async with event_stream(server_url, stack.auth()) as (third, _):
                assert third.status_code == 429 and third.headers["retry-after"] == "5"
            # the bound is per account: another account still gets its stream
            async with event_stream(server_url, stack.auth(stack.other)) as (theirs, snaps):
                assert theirs.status_code == 200
                assert (await anext(snaps))["conferences"] == []
        # the second client went away: its slot is free again
        await eventually(lambda: stack.engine.level_watchers == 1)
        async with event_stream(server_url, stack.auth()) as (again, _):
            assert again.status_code == 200
    await eventually(lambda: stack.engine.level_watchers == 0)


async def test_event_stream_ends_when_the_server_stops_being_ready(
    stack: Stack, server_url: str
) -> None:
    async with event_stream(server_url, stack.auth()) as (response, snapshots):
        assert response.status_code == 200
        await anext(snapshots)
        stack.app.state.ready = False
        rest = [s async for s in snapshots]  # the server closes the stream
        assert len(rest) <= 1
    await eventually(lambda: stack.engine.level_watchers == 0)


class Steady:
    """A participant sending a constant frame."""

    def __init__(self, call_sid: str, value: int) -> None:
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self._frame = np.full(160, value, dtype=np.int16)

    def read_frame(self) -> Frame | None:
        return self._frame

    def write_frame(self, frame: Frame) -> None:
        pass

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        pass

    def hangup(self, reason: str) -> None:
        pass


def test_engine_measures_levels_only_while_watched_and_as_mixed() -> None:
    engine = Engine()
    loud, quiet, muted = Steady("loud", 8000), Steady("quiet", 100), Steady("muted", 8000)
    muted.muted = True
    engine.add_conference("c1").add_participant(loud)
    conf2 = engine.add_conference("c2")
    conf2.add_participant(quiet)
    conf2.add_participant(muted)
    for _ in range(LEVEL_EVERY_TICKS):
        engine.tick()
    assert engine.levels() == {}  # nobody watches: nothing measured

    engine.level_watchers = 1
    engine.tick()
    assert engine.levels() == {"loud": 8000.0, "quiet": 100.0, "muted": 0.0}
    loud.muted = True
    for _ in range(LEVEL_EVERY_TICKS - 1):
        engine.tick()
    assert engine.levels()["loud"] == 8000.0  # measured one tick in LEVEL_EVERY_TICKS
    engine.tick()
    assert engine.levels()["loud"] == 0.0
    engine.level_watchers = 0
    assert engine.levels() == {}


async def test_a_muted_participant_shows_silence(stack: Stack) -> None:
    await stack.join("call-a", "room")
    await stack.services.update_participant("call-a", muted=True)
    with stack.services.watching_levels():
        await eventually(lambda: "call-a" in stack.engine.levels())
        snapshot = await stack.services.dashboard_snapshot(stack.account.sid)
    assert snapshot.conferences[0].participants[0].level_dbfs == SILENCE_DBFS
    assert stack.engine.level_watchers == 0
