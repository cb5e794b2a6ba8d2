"""Calls and call streams end to end: ``confstream serve`` in a subprocess (uvloop), two sipp
callers (440 Hz and 660 Hz) in one conference, the official ``twilio`` SDK against the server,
a real TLS WebSocket receiver (trustme chain) and a real HTTP server recording the signed
stream callbacks (docs/api.md, Calls; docs/protocol.md, "Call streams")."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from confstream.media.analysis import tone_levels
from confstream.media.g711 import ulaw_decode
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import Account, ServerProcess
from confstream.tools.sipp import caller_command, caller_scenario
from confstream.tools.tls import Tls
from tests.callbacks.recorder import http_recorder

from ..streams.peers import Conn, ws_receiver
from .peers import await_for, conference_named, tone_wav

FREQS = (440.0, 660.0)

_BYE_TAIL = '<send retrans="500"><![CDATA[\nBYE '
#: What a caller that waits to be hung up does instead of sending BYE: answer the server's.
_AWAIT_BYE = """<recv request="BYE" timeout="40000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def waiting_scenario(path: Path, wav: Path) -> Path:
    """The standard sipp caller (INVITE with digest, RTP tone) that, instead of hanging up,
    waits up to 40 s for the server's BYE and answers it: sipp exits 0 only if a BYE came."""
    caller_scenario(path, wav, 0.5)
    text = path.read_text()
    head = text[: text.index(_BYE_TAIL)]
    path.write_text(head + _AWAIT_BYE)
    return path


async def sipp(
    workdir: Path, server: ServerProcess, account: Account, freq: float, *, wait_bye: bool
) -> tuple[asyncio.subprocess.Process, int]:
    """A sipp caller into conference ``sales`` playing ``freq``; returns it and its SIP port
    (its From URI is ``sip:caller@127.0.0.1:<port>``)."""
    wav = tone_wav(workdir / f"tone-{freq:g}.ulaw.wav", freq, 2.0, fmt="ulaw")
    path = workdir / f"caller-{freq:g}.xml"
    scenario = waiting_scenario(path, wav) if wait_bye else caller_scenario(path, wav, 25.0)
    port = free_port()
    command = caller_command(
        scenario,
        f"127.0.0.1:{server.sip_port}",
        "sales",
        account.sid,
        account.token,
        sip_port=port,
        media_port=free_media_port(),
        timeout_s=60,
    )
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=workdir
    )
    return proc, port


def sdk_client(server: ServerProcess, account: Account) -> Client:
    """The twilio SDK pointed at the server, as docs/migrating.md sets it up."""
    http_client = TwilioHttpClient()
    http_client.session.trust_env = False
    client = Client(account.sid, account.token, http_client=http_client)
    client.api.base_url = server.base
    return client


def levels(conn: Conn, name: str, seconds: int = 60) -> dict[float, float]:
    """The tones' share of a track, per second (50 frames, past the first half second), the
    median over the seconds: the tones are measured coherently, so one second at a time keeps
    a frame the jitter buffer dropped or repeated from spoiling the whole measure."""
    frames = [
        ulaw_decode(base64.b64decode(m["media"]["payload"]))
        for m in conn.events("media")
        if m["media"]["track"] == name
    ][25 : 25 + seconds * 50]
    measured = [
        tone_levels(np.concatenate(frames[i : i + 50]), FREQS)
        for i in range(0, len(frames) - 49, 50)
    ]
    assert measured, f"{name}: less than a second of audio"
    return {f: float(np.median([m[f] for m in measured])) for f in FREQS}


async def test_calls_resource_and_call_streams_with_the_twilio_sdk(
    server: ServerProcess, account: Account, tmp_path: Path, tls: Tls
) -> None:
    async with ws_receiver(tls) as rec, http_recorder() as web:
        a_proc, a_port = await sipp(tmp_path, server, account, 440.0, wait_bye=True)
        b_proc, _ = await sipp(tmp_path, server, account, 660.0, wait_bye=False)
        client = sdk_client(server, account)
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "sales"))

            def both_in() -> list[Any] | None:
                calls = client.calls.list(status="in-progress")
                return calls if len(calls) == 2 else None

            calls = await await_for(both_in, within=15)
            a_from = f"sip:caller@127.0.0.1:{a_port}"
            (a_call,) = [c for c in calls if c.from_formatted == a_from]
            (b_call,) = [c for c in calls if c.from_formatted != a_from]
            assert a_call.direction == "inbound" and a_call.api_version == "2010-04-01"
            assert a_call.to.startswith("sip:sales@127.0.0.1") and a_call.start_time is not None
            assert a_call.duration is None and a_call.end_time is None
            assert a_call.subresource_uris["streams"].endswith(f"/Calls/{a_call.sid}/Streams.json")
            fetched = await asyncio.to_thread(client.calls(a_call.sid).fetch)
            assert (fetched.sid, fetched.status, fetched.from_formatted) == (
                a_call.sid,
                "in-progress",
                a_from,
            )
            # a participant's call_sid is a Call
            parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
            assert {p["call_sid"] for p in parts["participants"]} == {a_call.sid, b_call.sid}
            filtered = await asyncio.to_thread(client.calls.list, from_=a_from)
            assert [c.sid for c in filtered] == [a_call.sid]

            # a call stream of A (SDK) and a conference stream (REST), at the same time
            created = await asyncio.to_thread(
                client.calls(a_call.sid).streams.create,
                url=rec.url("/call-a", host="localhost"),
                name="a-voice",
                track="both_tracks",
                status_callback=web.url("/call-stream"),
                parameter1_name="who",
                parameter1_value="alice",
            )
            assert created.call_sid == a_call.sid and created.name == "a-voice"
            conf_stream = api.post(
                f"/Conferences/{conf['sid']}/Streams.json",
                data={"Url": rec.url("/conference", host="localhost")},
            )
            assert conf_stream.status_code == 200, conf_stream.text

            def conn(path: str) -> Conn | None:
                return next((c for c in rec.conns if c.path == path), None)

            await rec.wait_for(
                lambda: all(
                    (c := conn(p)) is not None and len(c.events("media")) > 300
                    for p in ("/call-a", "/conference")
                ),
                timeout=30,
            )
            listed = api.get(f"/Calls/{a_call.sid}/Streams.json").json()["streams"]
            assert [(s["sid"], s["status"]) for s in listed] == [(created.sid, "in-progress")]
            stopped = await asyncio.to_thread(
                client.calls(a_call.sid).streams("a-voice").update, status="stopped"
            )
            assert stopped.status == "stopped" and stopped.sid == created.sid
            call_conn = conn("/call-a")
            assert call_conn is not None
            await asyncio.wait_for(call_conn.closed.wait(), 10)
            await web.wait_for(lambda: len(web.for_path("/call-stream")) >= 2, timeout=10)

            # hang A up through the SDK: its sipp caller gets the BYE and exits cleanly
            ended = await asyncio.to_thread(client.calls(a_call.sid).update, status="completed")
            assert ended.status == "completed" and ended.end_time is not None
            assert ended.duration is not None and int(ended.duration) >= 1
            assert await asyncio.wait_for(a_proc.wait(), 30) == 0, await a_proc.stderr.read()  # type: ignore[union-attr]
            b_now = await asyncio.to_thread(client.calls(b_call.sid).fetch)
            assert b_now.status == "in-progress"
            conf_conn = conn("/conference")
            assert conf_conn is not None and not conf_conn.closed.is_set()
        await asyncio.wait_for(b_proc.wait(), 60)

    # the call stream: start names the call, not a conference
    messages = call_conn.messages
    assert messages[0]["event"] == "connected"
    start = messages[1]["start"]
    assert start["callSid"] == a_call.sid and "conferenceSid" not in start
    assert start["customParameters"] == {"who": "alice"}
    assert start["tracks"] == ["inbound", "outbound"]
    assert messages[-1]["event"] == "stop"
    assert messages[-1]["stop"] == {"accountSid": account.sid, "callSid": a_call.sid}
    inbound = levels(call_conn, "inbound")
    outbound = levels(call_conn, "outbound")
    assert inbound[440.0] > 0.5 and inbound[660.0] < 0.01, inbound  # what A says
    assert outbound[660.0] > 0.5 and outbound[440.0] < 0.01, outbound  # what A hears
    # the conference stream still carries both callers (while both were in)
    whole = levels(conf_conn, "inbound", seconds=2)
    assert whole[440.0] > 0.2 and whole[660.0] > 0.2, whole

    # the call stream's callbacks: signed, CallSid is the call, no ConferenceSid
    got = web.for_path("/call-stream")
    assert [r.params["StreamEvent"] for r in got] == ["stream-started", "stream-stopped"]
    validator = RequestValidator(account.token)
    for r in got:
        assert r.params["CallSid"] == a_call.sid and "ConferenceSid" not in r.params
        assert r.params["StreamName"] == "a-voice"
        assert validator.validate(web.url("/call-stream"), r.form, r.headers["x-twilio-signature"])

    # after both calls: completed records with their durations
    final = {c.sid: c for c in client.calls.list()}
    assert {final[a_call.sid].status, final[b_call.sid].status} == {"completed"}
    assert final[b_call.sid].duration is not None
    assert client.calls.list(status="in-progress") == []
