"""The whole server as users run it: ``confstream serve`` in a subprocess, real SIP callers
(baresip, sipp), the REST API over HTTP, and a real wss:// receiver."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from confstream.media.analysis import tone_levels
from confstream.media.g711 import ulaw_decode

from .peers import BaresipCaller, ServerProcess, receiver, start_sipp_caller

FREQS = (440.0, 660.0, 880.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path)
    yield srv
    if srv.proc is not None:
        srv.stop()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


async def await_for(predicate: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_fresh_server_answers_the_quickstart_curl(server: ServerProcess) -> None:
    account = server.create_account("--friendly-name", "quickstart")
    server.start()
    with server.api(account) as api:
        page = api.get("/Conferences.json")
        assert page.status_code == 200
        body = page.json()
        assert body["conferences"] == []
        assert body["page"] == 0
    bad = httpx.get(
        f"{server.base}/api/laml/2010-04-01/Accounts/{account.sid}/Conferences.json",
        auth=(account.sid, "wrong-token"),
    )
    assert bad.status_code == 401
    assert bad.json()["code"] == 20003
    metrics = httpx.get(f"{server.base}/metrics").text
    assert "confstream_tick_lateness_seconds_count" in metrics


def _conference(api: httpx.Client, room: str) -> dict[str, Any] | None:
    confs = api.get("/Conferences.json", params={"FriendlyName": room}).json()["conferences"]
    return confs[0] if confs else None


async def test_three_baresip_callers_hear_each_other_not_themselves(
    server: ServerProcess, tmp_path: Path
) -> None:
    account = server.create_account()
    server.start()
    callers = [BaresipCaller(tmp_path / f"caller{int(f)}", f, 7.0) for f in FREQS]
    for caller in callers:
        await caller.dial(server.sip_port, account, "standup")

    with server.api(account) as api:
        conf = await await_for(lambda: _conference(api, "standup"))
        assert conf["status"] == "in-progress"

        def three_live() -> list[dict[str, Any]] | None:
            parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
            live = [p for p in parts["participants"] if p["status"] == "in-progress"]
            return live if len(live) == 3 else None

        live = await await_for(three_live)
        assert {p["conference_sid"] for p in live} == {conf["sid"]}
        assert all(p["muted"] is False and p["hold"] is False for p in live)

        for caller in callers:
            await caller.wait()
        done = await await_for(
            lambda: (c := _conference(api, "standup")) and c["status"] == "completed" and c
        )
        assert done["sid"] == conf["sid"]

    for caller in callers:
        heard = caller.heard()
        # Skip the first second (joins are staggered) and look at the middle of the call.
        middle = heard[8000 : 8000 * 5]
        levels = tone_levels(middle, FREQS, 8000)
        others = [f for f in FREQS if f != caller.freq]
        for f in others:
            assert levels[f] > 20 * levels[caller.freq], (caller.freq, levels)


async def test_stream_of_sip_callers_to_wss_receiver(server: ServerProcess, tmp_path: Path) -> None:
    async with receiver(tmp_path) as rec:
        assert rec.ca_file is not None
        server.env["CONFSTREAM_STREAM_CA_FILE"] = str(rec.ca_file)
        account = server.create_account()
        server.start()
        callers = [
            await start_sipp_caller(tmp_path, server.sip_port, account, "sales", f, 6.0)
            for f in FREQS[:2]
        ]
        with server.api(account) as api:
            conf = await await_for(lambda: _conference(api, "sales"))
            resp = await asyncio.to_thread(
                api.post,
                f"/Conferences/{conf['sid']}/Streams.json",
                data={
                    "Url": f"wss://127.0.0.1:{rec.port}/media",
                    "Name": "transcriber",
                    "Track": "inbound_track",
                    "AuthorizationBearerToken": "s3cret",
                    "Parameter1.Name": "customer",
                    "Parameter1.Value": "acme",
                },
            )
            assert resp.status_code == 200, resp.text
            stream = resp.json()
            assert stream["name"] == "transcriber"
            assert stream["conference_sid"] == conf["sid"]
            await await_for(lambda: rec.connections and len(rec.connections[0]["messages"]) > 150)
            stopped = await asyncio.to_thread(
                api.post,
                f"/Conferences/{conf['sid']}/Streams/transcriber.json",
                data={"Status": "stopped"},
            )
            assert stopped.status_code == 200
            assert stopped.json()["status"] == "stopped"
            conn = rec.connections[0]
            await asyncio.wait_for(conn["closed"].wait(), 10)
        for proc in callers:
            await asyncio.wait_for(proc.wait(), 30)

    assert (
        conn["headers"].get("authorization") == "Bearer s3cret"
        or conn["headers"].get("Authorization") == "Bearer s3cret"
    )
    messages = conn["messages"]
    assert messages[0] == {"event": "connected", "protocol": "Call", "version": "0.2.0"}
    start = messages[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["start"]["conferenceSid"] == conf["sid"]
    assert start["start"]["callSid"] == conf["sid"]
    assert start["start"]["accountSid"] == account.sid
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["customParameters"] == {"customer": "acme"}
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    media = [m for m in messages if m["event"] == "media"]
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    seqs = [int(m["sequenceNumber"]) for m in messages[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert messages[-1]["event"] == "stop"
    pcm = np.concatenate([ulaw_decode(base64.b64decode(m["media"]["payload"])) for m in media[50:]])
    levels = tone_levels(pcm, FREQS, 8000)
    assert levels[440.0] > 20 * levels[880.0]
    assert levels[660.0] > 20 * levels[880.0]


def test_restart_closes_what_was_in_progress(server: ServerProcess, tmp_path: Path) -> None:
    account = server.create_account()
    server.start()

    async def call_and_kill() -> dict[str, Any]:
        proc = await start_sipp_caller(tmp_path, server.sip_port, account, "ghost", 440.0, 30.0)
        with server.api(account) as api:
            conf = await await_for(lambda: _conference(api, "ghost"))
        server.stop(kill=True)
        proc.kill()
        await proc.wait()
        return dict(conf)

    conf = asyncio.run(call_and_kill())
    assert conf["status"] == "in-progress"
    server.proc = None
    server.start()
    with server.api(account) as api:
        after = api.get(f"/Conferences/{conf['sid']}.json").json()
        assert after["status"] == "completed"
        # Twilio lists only the participants still in a conference: none are.
        parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()["participants"]
        assert parts == []
    with sqlite3.connect(server.workdir / "confstream.db") as db:
        rows = db.execute(
            "SELECT status, reason_ended FROM participants WHERE conference_sid = ?",
            (conf["sid"],),
        ).fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "completed" and "restart" in rows[0][1]
