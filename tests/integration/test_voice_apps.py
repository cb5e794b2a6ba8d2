"""Voice applications end to end (docs/voice.md): ``confstream serve`` in a subprocess
(uvloop), the accounts' voice URLs set with ``confstream accounts update``, a real webhook
application (Starlette on uvicorn, documents built with the twilio SDK's ``VoiceResponse``),
real sipp and baresip callers.

One server and one application serve the whole module; the application answers by the
number dialled (the ``To`` user). Account A has a voice fallback URL, account B has none.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.responses import PlainTextResponse, Response
from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from confstream.media.analysis import rms_dbfs, tone_levels
from confstream.tools.server import CONFSTREAM, Account, ServerProcess

from ..calls.voiceapp import Recorded, VoiceApp
from ..calls.voicesipp import (
    answered_scenario,
    finished,
    refused_scenario,
    run_sipp,
    ulaw_tone,
)
from .peers import BaresipCaller, await_for, conference_named

pytestmark = pytest.mark.timeout(300)


def conference(name: str, **attrs: Any) -> str:
    response = VoiceResponse()
    dial = Dial()
    dial.conference(name, beep=False, **attrs)
    response.append(dial)
    return str(response)


def routes(app: VoiceApp) -> None:
    def gather(_: Recorded) -> str:
        response = VoiceResponse()
        response.say("Please press one.")
        response.append(Gather(num_digits=1, action="/gathered", timeout=10))
        response.say("Nothing pressed.")
        return str(response)

    def gathered(_: Recorded) -> str:
        response = VoiceResponse()
        response.say("Thank you.")
        response.pause(length=20)
        return str(response)

    def say_play(_: Recorded) -> str:
        response = VoiceResponse()
        response.say("Hello from confstream. This is a test of the speech synthesis.")
        response.play(app.url("/tone.wav"))
        response.pause(length=5)
        return str(response)

    def redirect(_: Recorded) -> str:
        response = VoiceResponse()
        response.redirect("/redirected")
        return str(response)

    def unknown_verb(_: Recorded) -> str:
        response = VoiceResponse()
        response.add_child("Foo")
        dial = Dial()
        dial.conference("unknownroom", beep=False)
        response.append(dial)
        return str(response)

    def reject(reason: str) -> Any:
        def answer(_: Recorded) -> str:
            response = VoiceResponse()
            response.reject(reason=reason)
            return str(response)

        return answer

    app.routes.update(
        {
            "conf": lambda _: conference("voiceroom"),
            "steady": lambda _: conference("steadyroom"),
            "gather": gather,
            "sayplay": say_play,
            "redirect": redirect,
            "unknownverb": unknown_verb,
            "busy": reject("busy"),
            "reject": reject("rejected"),
            "fail500": lambda _: Response("boom", status_code=500),
            "notxml": lambda _: PlainTextResponse("hello, not XML"),
            # followed by confstream; /slow answers after 8 s, past the 5 s timeout
            "slow": lambda _: Response("", status_code=307, headers={"location": "/slow"}),
        }
    )
    app.paths["/gathered"] = gathered
    app.paths["/redirected"] = lambda _: conference("redirroom")
    app.paths["/fallback"] = lambda _: conference("fallbackroom")


@dataclass
class Env:
    server: ServerProcess
    app: VoiceApp
    a: Account  # with a fallback URL
    b: Account  # without
    workdir: Path


def update(server: ServerProcess, sid: str, *flags: str) -> dict[str, Any]:
    out = subprocess.run(
        [CONFSTREAM, "accounts", "update", sid, "--database-url", server.db_url, *flags],
        check=True,
        capture_output=True,
        env=server.environment(),
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("voice")
    app = VoiceApp().start()
    routes(app)
    server = ServerProcess(workdir, env={"CONFSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8"})
    a = server.create_account("--friendly-name", "voice-a")
    b = server.create_account("--friendly-name", "voice-b")
    shown = update(
        server,
        a.sid,
        "--voice-url",
        app.url("/voice"),
        "--voice-fallback-url",
        app.url("/fallback"),
    )
    assert shown["voice_url"] == app.url("/voice")
    assert shown["voice_method"] == "POST"
    assert shown["voice_fallback_url"] == app.url("/fallback")
    update(server, b.sid, "--voice-url", app.url("/voice"), "--voice-method", "post")
    server.start()
    try:
        yield Env(server, app, a, b, workdir)
    finally:
        server.stop()
        app.stop()


def participants(api: httpx.Client, room: str) -> list[dict[str, Any]]:
    conf = conference_named(api, room)
    if conf is None:
        return []
    body = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
    return [p for p in body["participants"] if p["status"] == "connected"]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_dial_conference_callers_hear_each_other_signed_webhook(env: Env) -> None:
    work = env.workdir / "conf"
    work.mkdir()
    bare = BaresipCaller(work / "baresip", 440.0, 8.0)
    await bare.dial(env.server.sip_port, env.a, "conf")
    scenario = answered_scenario(work / "sipp.xml", ulaw_tone(work / "t.wav", 880.0), 7.0)
    sipp = await run_sipp(work, scenario, env.server.sip_port, env.a, "conf")
    with env.server.api(env.a) as api:
        live = await await_for(lambda: len(participants(api, "voiceroom")) == 2 and True, 20)
        assert live
        members = participants(api, "voiceroom")
    code, err = await finished(sipp)
    assert code == 0, err
    await bare.wait()

    requests = env.app.of("/voice", To=f"sip:conf@127.0.0.1:{env.server.sip_port}")
    assert len(requests) == 2
    for request in requests:
        assert request.method == "POST"
        assert request.signed_by(env.a.token), request
        assert request.params["AccountSid"] == env.a.sid
        assert request.params["CallStatus"] == "ringing"
        assert request.params["Direction"] == "inbound"
        assert request.params["ApiVersion"] == "2010-04-01"
        assert request.params["From"].startswith("sip:")
        assert not request.signed_by("not-the-token")
    assert {r.params["CallSid"] for r in requests} == {p["call_sid"] for p in members}
    with_header = [r for r in requests if "SipHeader_X-Customer-Id" in r.params]
    assert len(with_header) == 1 and with_header[0].params["SipHeader_X-Customer-Id"] == "4242"

    heard = bare.heard()[8000 : 8000 * 5]
    levels = tone_levels(heard, (440.0, 880.0))
    assert levels[880.0] > 0.3 and levels[880.0] > 20 * levels[440.0], levels


async def test_say_then_gather_reports_the_key(env: Env) -> None:
    work = env.workdir / "gather"
    work.mkdir()
    scenario = answered_scenario(
        work / "sipp.xml", ulaw_tone(work / "t.wav", 500.0), 9.0, digit="1", digit_after_ms=4000
    )
    sipp = await run_sipp(work, scenario, env.server.sip_port, env.a, "gather")
    gathered = await asyncio.to_thread(env.app.wait_for, "/gathered", 20.0)
    assert gathered.params["Digits"] == "1"
    assert gathered.params["FinishedOnKey"] == ""
    assert gathered.params["CallStatus"] == "in-progress"
    assert gathered.signed_by(env.a.token)
    first = env.app.of("/voice", CallSid=gathered.params["CallSid"])
    assert len(first) == 1
    code, err = await finished(sipp)
    assert code == 0, err


async def test_say_and_play_are_heard(env: Env) -> None:
    work = env.workdir / "sayplay"
    bare = BaresipCaller(work, 440.0, 10.0)
    await bare.dial(env.server.sip_port, env.a, "sayplay")
    await bare.wait()
    heard = bare.heard().astype(np.int16)
    window = 4000  # 0.5 s
    onset = None
    for start in range(0, heard.size - window, window // 2):
        if tone_levels(heard[start : start + window], (1000.0,))[1000.0] > 0.5:
            onset = start
            break
    assert onset is not None, "the <Play> tone was not heard"
    speech = heard[: onset - window // 2]
    assert speech.size > 8000, "no <Say> before the tone"
    assert rms_dbfs(speech) > -45.0, "the <Say> speech was not heard"
    assert tone_levels(speech, (1000.0,))[1000.0] < 0.1
    tone_part = heard[onset + window : onset + 3 * window]
    assert tone_levels(tone_part, (1000.0,))[1000.0] > 0.5


async def test_redirect_moves_the_call_to_another_document(env: Env) -> None:
    work = env.workdir / "redirect"
    work.mkdir()
    scenario = answered_scenario(work / "sipp.xml", ulaw_tone(work / "t.wav", 600.0), 6.0)
    sipp = await run_sipp(work, scenario, env.server.sip_port, env.a, "redirect")
    redirected = await asyncio.to_thread(env.app.wait_for, "/redirected", 20.0)
    assert redirected.signed_by(env.a.token)
    with env.server.api(env.a) as api:
        live = await await_for(lambda: participants(api, "redirroom"), 20)
    assert [p["call_sid"] for p in live] == [redirected.params["CallSid"]]
    code, err = await finished(sipp)
    assert code == 0, err


async def test_reject_refuses_unanswered(env: Env) -> None:
    work = env.workdir / "reject"
    work.mkdir()
    busy = await run_sipp(
        work, refused_scenario(work / "busy.xml", 486), env.server.sip_port, env.b, "busy"
    )
    rejected = await run_sipp(
        work, refused_scenario(work / "rej.xml", 603), env.server.sip_port, env.b, "reject"
    )
    for proc in (busy, rejected):
        code, err = await finished(proc)
        assert code == 0, err


async def test_failing_webhooks_end_as_documented_others_unaffected(env: Env) -> None:
    work = env.workdir / "failing"
    work.mkdir()
    steady = BaresipCaller(work / "steady", 440.0, 20.0)
    await steady.dial(env.server.sip_port, env.b, "steady")
    with env.server.api(env.b) as api:
        await await_for(lambda: participants(api, "steadyroom"), 20)
    before = {
        reason: metric(env.server, "confstream_voice_webhook_failures_total", reason=reason)
        for reason in ("http", "document", "timeout")
    }
    procs = []
    # account B has no fallback: a failing voice URL refuses the call with 500
    for user in ("fail500", "notxml"):
        scenario = refused_scenario(work / f"{user}.xml", 500)
        procs.append(await run_sipp(work, scenario, env.server.sip_port, env.b, user))
    # an unknown verb is skipped (warning); the rest of the document runs
    scenario = answered_scenario(work / "unknown.xml", ulaw_tone(work / "u.wav", 700.0), 5.0)
    procs.append(await run_sipp(work, scenario, env.server.sip_port, env.b, "unknownverb"))
    # account A has a fallback: the voice URL times out (5 s), the fallback answers
    scenario = answered_scenario(work / "slow.xml", ulaw_tone(work / "s.wav", 750.0), 5.0)
    procs.append(await run_sipp(work, scenario, env.server.sip_port, env.a, "slow"))

    with env.server.api(env.b) as api:
        await await_for(lambda: participants(api, "unknownroom"), 20)
    fallback = await asyncio.to_thread(env.app.wait_for, "/fallback", 30.0)
    assert fallback.params["ErrorCode"] == "11205"
    assert fallback.params["ErrorUrl"] == env.app.url("/voice")
    assert fallback.signed_by(env.a.token)
    with env.server.api(env.a) as api:
        live = await await_for(lambda: participants(api, "fallbackroom"), 20)
    assert [p["call_sid"] for p in live] == [fallback.params["CallSid"]]
    for proc in procs:
        code, err = await finished(proc)
        assert code == 0, err

    with env.server.api(env.b) as api:
        assert len(participants(api, "steadyroom")) == 1  # undisturbed
    after = {
        reason: metric(env.server, "confstream_voice_webhook_failures_total", reason=reason)
        for reason in before
    }
    assert after["http"] >= before["http"] + 1
    assert after["document"] >= before["document"] + 1
    assert after["timeout"] >= before["timeout"] + 1
    await steady.wait()
    log = (env.workdir / "server.log").read_text()
    assert "Unknown verb <Foo>" in log
    assert "voice URL" in log
