"""The whole server as users run it: ``confstream serve`` in a subprocess, real SIP callers
(baresip, sipp), the REST API over HTTP, and a real wss:// receiver."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from confstream.media.analysis import tone_levels
from confstream.tools.server import ServerProcess

from .peers import BaresipCaller, await_for, conference_named, start_sipp_caller

FREQS = (440.0, 660.0, 880.0)


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


async def test_three_baresip_callers_hear_each_other_not_themselves(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.env["CONFSTREAM_RTP_SEND_LANE"] = "true"  # opt-in (docs/operations.md)
    account = server.create_account()
    server.start()
    callers = [BaresipCaller(tmp_path / f"caller{int(f)}", f, 7.0) for f in FREQS]
    for caller in callers:
        await caller.dial(server.sip_port, account, "standup")

    with server.api(account) as api:
        conf = await await_for(lambda: conference_named(api, "standup"))
        assert conf["status"] == "in-progress"

        def three_live() -> list[dict[str, Any]] | None:
            parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
            live = [p for p in parts["participants"] if p["status"] == "connected"]
            return live if len(live) == 3 else None

        live = await await_for(three_live)
        assert {p["conference_sid"] for p in live} == {conf["sid"]}
        assert all(p["muted"] is False and p["hold"] is False for p in live)

        for caller in callers:
            await caller.wait()
        done = await await_for(
            lambda: (c := conference_named(api, "standup")) and c["status"] == "completed" and c
        )
        assert done["sid"] == conf["sid"]

    # what they heard was sent by the compiled send lane (confstream.rtp.txlane)
    assert "RTP send lane ready" in server.log_tail(400)
    for caller in callers:
        heard = caller.heard()
        # Skip the first second (joins are staggered) and look at the middle of the call.
        middle = heard[8000 : 8000 * 5]
        levels = tone_levels(middle, FREQS, 8000)
        others = [f for f in FREQS if f != caller.freq]
        for f in others:
            assert levels[f] > 20 * levels[caller.freq], (caller.freq, levels)


def test_restart_closes_what_was_in_progress(server: ServerProcess, tmp_path: Path) -> None:
    account = server.create_account()
    server.start()

    async def call_and_kill() -> dict[str, Any]:
        proc = await start_sipp_caller(tmp_path, server.sip_port, account, "ghost", 440.0, 30.0)
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "ghost"))
            # the participant's row is written just after the conference's: kill after both
            sid = conf["sid"]
            await await_for(
                lambda: api.get(f"/Conferences/{sid}/Participants.json").json()["participants"]
            )
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
