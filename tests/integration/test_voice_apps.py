"""Voice applications end to end (docs/voice.md): ``confstream serve`` in a subprocess
(uvloop), the accounts' voice URLs set with ``confstream accounts update``, a real webhook
application (Starlette on uvicorn, documents built with the twilio SDK's ``VoiceResponse``),
real sipp and baresip callers, streams to real TLS WebSocket receivers (trustme certificates,
the server trusting their CA).

One server and one application serve the whole module; the application answers by the
number dialled (the ``To`` user). Account A has a voice fallback URL, account B has none.
"""

from __future__ import annotations

import asyncio
import base64
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
from twilio.twiml.voice_response import Connect, Dial, Gather, Start, Stop, VoiceResponse

from confstream.media.analysis import rms_dbfs, tone, tone_levels
from confstream.media.g711 import ulaw_decode, ulaw_encode
from confstream.tools.server import CONFSTREAM, Account, ServerProcess
from confstream.tools.tls import Tls

from ..calls.voiceapp import Recorded, VoiceApp
from ..calls.voicesipp import (
    answered_scenario,
    finished,
    refused_scenario,
    run_sipp,
    ulaw_tone,
)
from ..streams.peers import Conn, Receiver, ws_receiver
from .peers import BaresipCaller, await_for, conference_named

pytestmark = pytest.mark.timeout(300)

#: the tone a <Connect><Stream> receiver sends back
RETURN_HZ = 1200.0


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
def env(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("voice")
    app = VoiceApp().start()
    routes(app)
    server = ServerProcess(
        workdir,
        env={
            "CONFSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
            "CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file),  # the receivers' trustme CA
        },
    )
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

    # per second (when sipp's tone starts depends on the load): the other caller is heard,
    # never the caller itself
    heard = bare.heard()
    seconds = [
        tone_levels(heard[i : i + 8000], (440.0, 880.0)) for i in range(0, heard.size - 7999, 8000)
    ]
    assert max(s[880.0] for s in seconds) > 0.5, seconds
    assert max(s[440.0] for s in seconds) < 0.05, seconds


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
    assert steady.proc is not None
    steady.proc.terminate()  # it has shown what it had to: no need to sit out its 20 s
    await asyncio.wait_for(steady.proc.wait(), 20)
    log = (env.workdir / "server.log").read_text()
    assert "Unknown verb <Foo>" in log
    assert "voice URL" in log


# ---------------------------------------------------------------- streams from cXML
def per_second(conn: Conn, track: str, freqs: tuple[float, ...]) -> list[dict[float, float]]:
    """The tones' share of ``track``, one measure per second of frames (50), so a frame the
    jitter buffer dropped or repeated spoils one second only."""
    frames = [
        ulaw_decode(base64.b64decode(m["media"]["payload"]))
        for m in conn.events("media")
        if m["media"]["track"] == track
    ]
    return [
        tone_levels(np.concatenate(frames[i : i + 50]), freqs)
        for i in range(0, len(frames) - 49, 50)
    ]


def conn_at(rec: Receiver, path: str) -> Conn | None:
    return next((c for c in rec.conns if c.path == path), None)


async def test_start_stream_and_a_conference_stream_made_in_the_start_callback(
    env: Env, tls: Tls
) -> None:
    """Caller A (440 Hz) runs ``<Start><Stream>``, ``<Dial timeLimit>`` then ``<Stop><Stream>``;
    caller B (660 Hz) joins the same conference. The application creates a conference stream
    over REST from inside its ``conference-start`` callback."""
    work = env.workdir / "streams"
    work.mkdir()
    app, room = env.app, "streamroom"
    created: list[httpx.Response] = []

    async with ws_receiver(tls) as rec:

        def streamer(_: Recorded) -> str:
            response = VoiceResponse()
            start = Start()
            stream = start.stream(
                name="a-voice",
                url=rec.url("/call-a"),
                track="both_tracks",
                status_callback="/call-stream-events",
            )
            stream.parameter(name="who", value="alice")
            response.append(start)
            dial = Dial(time_limit=5)
            dial.conference(
                room,
                beep=False,
                status_callback="/conference-events",
                status_callback_event="start end join leave",
            )
            response.append(dial)
            stop = Stop()
            stop.stream(name="a-voice")
            response.append(stop)
            response.pause(length=20)
            return str(response)

        def conference_events(request: Recorded) -> str:
            params = request.params
            if params["StatusCallbackEvent"] == "conference-start":
                # the natural place to stream the conference (docs/voice.md)
                created.append(
                    httpx.post(
                        f"{env.server.base}/2010-04-01/Accounts/{params['AccountSid']}"
                        f"/Conferences/{params['ConferenceSid']}/Streams.json",
                        data={"Url": rec.url("/conference")},
                        auth=(env.a.sid, env.a.token),
                        timeout=15,
                    )
                )
            return ""

        app.routes["streamer"] = streamer
        app.routes["joiner"] = lambda _: conference(room)
        app.paths["/conference-events"] = conference_events
        app.paths["/call-stream-events"] = lambda _: ""

        scenario_a = answered_scenario(work / "a.xml", ulaw_tone(work / "a.wav", 440.0), 9.0)
        caller_a = await run_sipp(work, scenario_a, env.server.sip_port, env.a, "streamer")
        started = await asyncio.to_thread(
            app.wait_for, "/conference-events", 20.0, StatusCallbackEvent="conference-start"
        )
        scenario_b = answered_scenario(work / "b.xml", ulaw_tone(work / "b.wav", 660.0), 7.0)
        caller_b = await run_sipp(work, scenario_b, env.server.sip_port, env.a, "joiner")
        for caller in (caller_a, caller_b):
            code, err = await finished(caller)
            assert code == 0, err
        await asyncio.to_thread(
            app.wait_for, "/conference-events", 20.0, StatusCallbackEvent="conference-end"
        )
        await asyncio.sleep(0.5)  # nothing more arrives
        call_conn, conf_conn = conn_at(rec, "/call-a"), conn_at(rec, "/conference")
        assert call_conn is not None and conf_conn is not None
        await asyncio.wait_for(call_conn.closed.wait(), 10)
        await asyncio.wait_for(conf_conn.closed.wait(), 10)

    assert "CallSid" not in started.params  # conference-start names no call
    conference_sid = started.params["ConferenceSid"]
    (answer,) = created
    assert answer.status_code == 200, answer.text
    assert answer.json()["conference_sid"] == conference_sid

    # conference events: in order, exactly once, numbered, signed
    got = app.of("/conference-events", ConferenceSid=conference_sid)
    a_sid = app.of("/voice", To=f"sip:streamer@127.0.0.1:{env.server.sip_port}")[-1].params[
        "CallSid"
    ]
    b_sid = app.of("/voice", To=f"sip:joiner@127.0.0.1:{env.server.sip_port}")[-1].params["CallSid"]
    assert [(r.params["StatusCallbackEvent"], r.params.get("CallSid")) for r in got] == [
        ("participant-join", a_sid),
        ("conference-start", None),
        ("participant-join", b_sid),
        ("participant-leave", a_sid),  # timeLimit: A leaves, its call goes on
        ("participant-leave", b_sid),
        ("conference-end", None),
    ]
    assert [int(r.params["SequenceNumber"]) for r in got] == list(range(1, 7))
    for r in got:
        assert r.signed_by(env.a.token), r
        assert r.params["FriendlyName"] == room
    assert got[-1].params["ReasonConferenceEnded"] == "last-participant-left"
    assert got[-1].params["CallSidEndingConference"] == b_sid

    # <Start><Stream>: A's voice on inbound only, B's (what A hears) on outbound
    start = call_conn.messages[1]["start"]
    assert start["callSid"] == a_sid and start["customParameters"] == {"who": "alice"}
    inbound = per_second(call_conn, "inbound", (440.0, 660.0))
    outbound = per_second(call_conn, "outbound", (440.0, 660.0))
    assert len(inbound) >= 4, inbound
    assert np.median([s[440.0] for s in inbound]) > 0.5, inbound
    assert max(s[660.0] for s in inbound) < 0.01, inbound
    assert max(s[660.0] for s in outbound) > 0.5, outbound
    assert max(s[440.0] for s in outbound) < 0.01, outbound
    # <Stop><Stream>: stopped while the call went on (A left after 5 s, hung up at 9 s)
    assert call_conn.messages[-1]["event"] == "stop"
    assert len(inbound) <= 7, len(inbound)
    stream_events = app.of("/call-stream-events", CallSid=a_sid)
    assert [r.params["StreamEvent"] for r in stream_events] == [
        "stream-started",
        "stream-stopped",
    ]
    assert all(r.signed_by(env.a.token) for r in stream_events)
    assert stream_events[0].params["StreamName"] == "a-voice"

    # the conference stream made in the callback carries both callers
    conf_start = conf_conn.messages[1]["start"]
    assert conf_start["conferenceSid"] == conference_sid
    mixed = per_second(conf_conn, "inbound", (440.0, 660.0))
    assert any(s[440.0] > 0.2 and s[660.0] > 0.2 for s in mixed), mixed


async def test_connect_stream_talks_back_then_the_call_goes_on(env: Env, tls: Tls) -> None:
    """``<Connect><Stream>``: the receiver sends 2 s of 1200 Hz and a mark, waits for the
    mark's echo and closes; the caller (baresip) heard the tone, and the call went on with
    the next verb (a ``<Redirect>``), as on Twilio."""
    returned = ulaw_encode(tone(RETURN_HZ, 2.0, amplitude=8000)).tobytes()
    sent_at: list[int] = []

    async def talk_back(conn: Conn) -> None:
        while (await rec.read_one(conn))["event"] != "start":
            pass
        sid = conn.messages[-1]["streamSid"]
        payload = base64.b64encode(returned).decode()
        await conn.send({"event": "media", "streamSid": sid, "media": {"payload": payload}})
        await conn.send({"event": "mark", "streamSid": sid, "mark": {"name": "said-it"}})
        sent_at.append(len(conn.messages))
        while (await rec.read_one(conn))["event"] != "mark":
            pass
        await conn.ws.close()

    def bot(_: Recorded) -> str:
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=rec.url("/bot"))
        stream.parameter(name="bot", value="yes")
        response.append(connect)
        response.redirect("/after-connect")
        return str(response)

    env.app.routes["bot"] = bot
    env.app.paths["/after-connect"] = lambda _: '<Response><Pause length="20"/></Response>'
    async with ws_receiver(tls, talk_back) as rec:
        caller = BaresipCaller(env.workdir / "bot", 440.0, 5.0)
        await caller.dial(env.server.sip_port, env.a, "bot")
        after = await asyncio.to_thread(env.app.wait_for, "/after-connect", 30.0)
        await caller.wait()
    assert after.signed_by(env.a.token)
    conn = rec.conns[0]
    start = conn.messages[1]["start"]
    assert start["callSid"] == after.params["CallSid"]
    assert start["customParameters"] == {"bot": "yes"}
    (mark,) = conn.events("mark")
    assert mark["mark"] == {"name": "said-it"}
    # echoed once its 2 s of audio had played: about 100 of the caller's frames later
    played = [m for m in conn.messages[sent_at[0] : conn.messages.index(mark)] if "media" in m]
    assert len(played) >= 80, len(played)
    heard = caller.heard()
    windows = [
        tone_levels(heard[i : i + 4000], (440.0, RETURN_HZ))
        for i in range(0, len(heard) - 4000, 4000)
    ]
    assert max(w[RETURN_HZ] for w in windows) > 0.5, windows
    assert max(w[440.0] for w in windows) < 0.05, windows  # never hears itself
