"""Dial-out end to end (docs/sip.md "Calling out", docs/api.md "Making calls"): ``confstream
serve`` in a subprocess places calls asked for through the REST API and the official twilio
SDK to real sipp user agents (answering with a µ-law tone, with a digest challenge, busy, never
answering, answering across our CANCEL); call progress callbacks are received by a real HTTP
server and checked with the SDK's RequestValidator; the callee's tone is heard on a conference
stream's inbound track. One server serves the module."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from confstream.media.analysis import tone_levels
from confstream.media.g711 import ulaw_decode
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import Account, ServerProcess
from confstream.tools.sipp import callee_command, callee_scenario
from confstream.tools.tls import Tls

from ..callbacks.recorder import Recorded, Recorder, http_recorder
from ..calls.voiceapp import VoiceApp
from ..calls.voicesipp import ulaw_tone
from ..integration.peers import BaresipCaller, await_for, conference_named, start_sipp_caller
from ..integration.test_call_streams import sdk_client
from ..integration.test_voice_apps import metric
from ..streams.peers import ws_receiver

pytestmark = pytest.mark.timeout(240)

CALLER_HZ = 440.0
CALLEE_HZ = 660.0
TWIML = '<Response><Dial><Conference beep="false">{room}</Conference></Dial></Response>'


@dataclass
class Env:
    server: ServerProcess
    account: Account
    workdir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("dialout")
    server = ServerProcess(
        workdir,
        env={
            "CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file),
            "CONFSTREAM_DIAL_CALLS_PER_SECOND": "20",
        },
    )
    account = server.create_account()
    server.start()
    try:
        yield Env(server, account, workdir)
    finally:
        server.stop()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with http_recorder() as rec:
        yield rec


@dataclass
class Callee:
    proc: asyncio.subprocess.Process
    port: int

    def to(self, user: str = "bob") -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    async def finished(self, within: float = 60.0) -> tuple[int, str]:
        _, err = await asyncio.wait_for(self.proc.communicate(), within)
        return self.proc.returncode or 0, err.decode(errors="replace")


async def start_callee(
    workdir: Path, kind: str, *, tone_hz: float | None = None, auth: tuple[str, str] | None = None
) -> Callee:
    """A sipp UAS waiting for one call (confstream.tools.sipp.callee_scenario)."""
    name = f"callee-{kind}-{free_port()}"
    wav = ulaw_tone(workdir / f"{name}.wav", tone_hz) if tone_hz is not None else None
    scenario = callee_scenario(workdir / f"{name}.xml", kind, wav=wav, auth=auth)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *callee_command(scenario, sip_port=port, media_port=free_media_port()),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
    )
    await asyncio.sleep(0.3)  # sipp binds its socket
    return Callee(proc, port)


def validated(env: Env, recorder: Recorder, path: str) -> list[Recorded]:
    """The callbacks received on ``path``, each signed for the account."""
    validator = RequestValidator(env.account.token)
    received = recorder.for_path(path)
    for r in received:
        assert validator.validate(recorder.url(path), r.form, r.headers["x-twilio-signature"])
    return received


def progress(received: list[Recorded]) -> list[tuple[str, str]]:
    return [(r.form["SequenceNumber"], r.form["CallStatus"]) for r in received]


def api_call(api: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    return api.request(method, path, **kw)


async def call_status(api: httpx.Client, sid: str, final: tuple[str, ...]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        call: dict[str, Any] = api.get(f"/Calls/{sid}.json").json()
        return call if call["status"] in final else None

    result: dict[str, Any] = await await_for(done, 40)
    return result


async def streamed_conference(api: Any, name: str, rec: Any) -> dict[str, Any]:
    """The live conference ``name`` once it is there, with an inbound stream to ``rec``."""
    conf: dict[str, Any] = await await_for(lambda: conference_named(api, name), 20)
    stream = await asyncio.to_thread(
        api.post,
        f"/Conferences/{conf['sid']}/Streams.json",
        data={"Url": rec.url("/media", host="localhost"), "Track": "inbound_track"},
    )
    assert stream.status_code == 200, stream.text
    return conf


# -- a participant dialled into a live conference ---------------------------------------------


async def test_participant_added_by_the_sdk_is_heard_and_reports_progress(
    env: Env, recorder: Recorder, tls: Tls, tmp_path: Path
) -> None:
    server, account = env.server, env.account
    caller = await start_sipp_caller(tmp_path, server.sip_port, account, "dialroom", CALLER_HZ, 12)
    callee = await start_callee(tmp_path, "answer", tone_hz=CALLEE_HZ)
    try:
        async with ws_receiver(tls) as rec:
            with server.api(account) as api:
                conf = await streamed_conference(api, "dialroom", rec)
                client = sdk_client(server, account)
                created = await asyncio.to_thread(
                    client.conferences(conf["sid"]).participants.create,
                    from_="+15550001111",
                    to=callee.to(),
                    label="callee",
                    beep="false",
                    status_callback=recorder.url("/progress"),
                    status_callback_event=["initiated", "ringing", "answered", "completed"],
                )
                assert created.status == "queued"
                assert created.conference_sid == conf["sid"] and created.label == "callee"
                call_sid = created.call_sid
                path = f"/Conferences/{conf['sid']}/Participants/{call_sid}.json"

                def connected() -> bool:
                    answer = api.get(path)
                    return answer.status_code == 200 and answer.json()["status"] == "connected"

                await await_for(connected, 20)
                # the callee's tone reaches the conference: on the stream's inbound track
                start = len(rec.conns[0].events("media")) if rec.conns else 0
                await rec.wait_for(
                    lambda: rec.conns and len(rec.conns[0].events("media")) > start + 150, 20
                )
                stop = len(rec.conns[0].events("media"))
                ended = await asyncio.to_thread(
                    api.post, f"/Conferences/{conf['sid']}.json", data={"Status": "completed"}
                )
                assert ended.status_code == 200, ended.text
                assert (await callee.finished())[0] == 0
                await recorder.wait_for(lambda: len(recorder.for_path("/progress")) >= 4, 20)
                call = await call_status(api, call_sid, ("completed",))
    finally:
        if caller.returncode is None:
            caller.terminate()
        await caller.wait()
    assert call["direction"] == "outbound-api" and call["to"] == callee.to()
    received = validated(env, recorder, "/progress")
    assert progress(received) == [
        ("0", "initiated"),
        ("1", "ringing"),
        ("2", "in-progress"),
        ("3", "completed"),
    ]
    assert {r.form["CallSid"] for r in received} == {call_sid}
    assert received[-1].form["CallbackSource"] == "call-progress-events"
    frames = [
        ulaw_decode(base64.b64decode(m["media"]["payload"])) for m in rec.conns[0].events("media")
    ]
    levels = tone_levels(np.concatenate(frames[start + 25 : stop]), (CALLER_HZ, CALLEE_HZ), 8000)
    assert levels[CALLEE_HZ] > 0.2 and levels[CALLER_HZ] > 0.2, levels


# -- POST /Calls ----------------------------------------------------------------------------


async def test_calls_create_runs_twiml_after_a_digest_challenge(
    env: Env, recorder: Recorder, tmp_path: Path
) -> None:
    server, account = env.server, env.account
    callee = await start_callee(tmp_path, "answer", tone_hz=CALLEE_HZ, auth=("bob", "s3cret"))
    client = sdk_client(server, account)
    created = await asyncio.to_thread(
        client.calls.create,
        to=callee.to(),
        from_="sip:alice@example.com",
        twiml=TWIML.format(room="twimlroom"),
        sip_auth_username="bob",
        sip_auth_password="s3cret",
        time_limit=3,
        status_callback=recorder.url("/calls"),
    )
    assert created.status == "queued" and created.direction == "outbound-api"
    assert (await callee.finished())[0] == 0  # it checked our credentials, then got our BYE
    with server.api(account) as api:
        call = await call_status(api, created.sid, ("completed",))
        assert call["duration"] is not None
        conf = conference_named(api, "twimlroom")
        assert conf is not None and conf["status"] == "completed"
    await recorder.wait_for(lambda: recorder.for_path("/calls"), 20)
    (done,) = validated(env, recorder, "/calls")  # completed only: Twilio's default
    assert done.form["CallStatus"] == "completed" and done.form["CallSid"] == created.sid


@pytest.mark.parametrize(
    ("kind", "status", "sip"),
    [
        ("busy", "busy", "486"),
        ("no-answer", "no-answer", "487"),
        ("cancel-race", "no-answer", "200"),
    ],
)
async def test_unanswered_calls_report_their_outcome(
    env: Env, recorder: Recorder, tmp_path: Path, kind: str, status: str, sip: str
) -> None:
    server, account = env.server, env.account
    callee = await start_callee(tmp_path, kind)
    before = metric(server, "confstream_dial_calls_total", outcome=status)
    with server.api(account) as api:
        created = await asyncio.to_thread(
            api.post,
            "/Calls.json",
            data={
                "To": callee.to(),
                "From": "+15550002222",
                "Twiml": TWIML.format(room=f"never-{kind}"),
                "Timeout": "2",
                "StatusCallback": recorder.url(f"/{kind}"),
                "StatusCallbackEvent": "initiated completed",
            },
        )
        assert created.status_code == 201, created.text
        sid = created.json()["sid"]
        code, err = await callee.finished()
        assert code == 0, err
        call = await call_status(api, sid, (status,))
        assert call["sip_response_code"] == int(sip)
        assert conference_named(api, f"never-{kind}") is None
    await recorder.wait_for(lambda: len(recorder.for_path(f"/{kind}")) >= 2, 20)
    received = validated(env, recorder, f"/{kind}")
    assert progress(received) == [("0", "initiated"), ("1", status)]
    assert metric(server, "confstream_dial_calls_total", outcome=status) == before + 1
    assert received[1].form["SipResponseCode"] == sip


async def test_unsafe_or_invalid_targets_are_refused(env: Env) -> None:
    server, account = env.server, env.account
    cases = [
        ({"To": f"sip:me@127.0.0.1:{server.sip_port}"}, 403, 21215),  # our own listener
        ({"To": "sip:bob@10.1.2.3:5060"}, 403, 21215),  # not in allowed_networks
        ({"To": "tel:+15550003333"}, 422, 21211),
        ({"To": "sip:bob@127.0.0.1;transport=tcp"}, 422, 21211),
        ({"To": "sip:bob@127.0.0.1", "From": ""}, 422, 21212),
        ({"To": ""}, 422, 21201),
    ]
    with server.api(account) as api:
        before = len(api.get("/Calls.json").json()["calls"])
        for params, http_status, code in cases:
            data = {"From": "+15550004444", "Twiml": "<Response/>", **params}
            answer = await asyncio.to_thread(api.post, "/Calls.json", data=data)
            assert answer.status_code == http_status, (params, answer.text)
            assert answer.json()["code"] == code, (params, answer.text)
        # nothing was dialled, nothing recorded
        assert len(api.get("/Calls.json").json()["calls"]) == before


# -- baresip answering: it hears the conference ---------------------------------------------


async def test_baresip_callee_hears_the_conference_and_is_heard(
    env: Env, tls: Tls, tmp_path: Path
) -> None:
    server, account = env.server, env.account
    caller = await start_sipp_caller(tmp_path, server.sip_port, account, "bareroom", CALLER_HZ, 12)
    callee = BaresipCaller(tmp_path / "baresip", CALLEE_HZ, 9.0)
    port = free_port()
    await callee.answer(port)
    try:
        async with ws_receiver(tls) as rec:
            with server.api(account) as api:
                conf = await streamed_conference(api, "bareroom", rec)
                # by FriendlyName: the live conference of that name
                created = await asyncio.to_thread(
                    api.post,
                    "/Conferences/bareroom/Participants.json",
                    data={"From": "confstream", "To": f"sip:callee@127.0.0.1:{port}"},
                )
                assert created.status_code == 201, created.text
                joined = created.json()
                assert joined["conference_sid"] == conf["sid"] and joined["status"] == "queued"
                path = f"/Conferences/{conf['sid']}/Participants/{joined['call_sid']}.json"
                await await_for(lambda: api.get(path).json()["status"] == "connected", 20)
                start = len(rec.conns[0].events("media")) if rec.conns else 0
                await rec.wait_for(
                    lambda: rec.conns and len(rec.conns[0].events("media")) > start + 150, 20
                )
                stop = len(rec.conns[0].events("media"))
                hung_up = await asyncio.to_thread(api.delete, path)
                assert hung_up.status_code == 204
            await callee.wait()
    finally:
        if caller.returncode is None:
            caller.terminate()
        await caller.wait()
        if callee.proc is not None and callee.proc.returncode is None:
            callee.proc.terminate()
            await callee.proc.wait()
    heard = callee.heard()
    assert len(heard) > 8000, callee.log()
    assert tone_levels(heard[4000:], (CALLER_HZ, CALLEE_HZ), 8000)[CALLER_HZ] > 0.2
    frames = [
        ulaw_decode(base64.b64decode(m["media"]["payload"])) for m in rec.conns[0].events("media")
    ]
    # while the callee was in the conference
    levels = tone_levels(np.concatenate(frames[start + 25 : stop]), (CALLER_HZ, CALLEE_HZ), 8000)
    assert levels[CALLEE_HZ] > 0.2 and levels[CALLER_HZ] > 0.2, levels


async def test_busy_participant_fails_and_its_new_conference_ends(env: Env, tmp_path: Path) -> None:
    server, account = env.server, env.account
    callee = await start_callee(tmp_path, "busy")
    with server.api(account) as api:
        created = await asyncio.to_thread(
            api.post,
            "/Conferences/busyroom/Participants.json",
            data={"From": "+15550005555", "To": callee.to(), "Label": "agent"},
        )
        assert created.status_code == 201, created.text
        participant = created.json()
        assert participant["status"] == "queued" and participant["label"] == "agent"
        conf_sid = participant["conference_sid"]
        assert api.get(f"/Conferences/{conf_sid}.json").json()["status"] == "init"
        assert (await callee.finished())[0] == 0
        path = f"/Conferences/{conf_sid}/Participants/{participant['call_sid']}.json"
        await await_for(lambda: api.get(path).json()["status"] == "failed", 20)
        call = await call_status(api, participant["call_sid"], ("busy",))
        assert call["sip_response_code"] == 486
        ended = await await_for(
            lambda: (
                (c := api.get(f"/Conferences/{conf_sid}.json").json())["status"] == "completed"
                and c
            ),
            20,
        )
        assert ended["reason_conference_ended"] == "last-participant-left"


async def test_a_ringing_call_canceled_through_the_api_is_cancelled(
    env: Env, tmp_path: Path
) -> None:
    server, account = env.server, env.account
    callee = await start_callee(tmp_path, "no-answer")
    with server.api(account) as api:
        created = await asyncio.to_thread(
            api.post,
            "/Calls.json",
            data={"To": callee.to(), "From": "+15550006666", "Twiml": "<Response/>"},
        )
        sid = created.json()["sid"]
        await await_for(lambda: api.get(f"/Calls/{sid}.json").json()["status"] == "ringing", 20)
        canceled = await asyncio.to_thread(
            api.post, f"/Calls/{sid}.json", data={"Status": "canceled"}
        )
        assert canceled.json()["status"] == "canceled"
        assert (await callee.finished())[0] == 0  # it got our CANCEL and answered 487
        call = await call_status(api, sid, ("canceled",))
        assert call["duration"] is None


async def test_calls_create_with_url_fetches_the_document_once_answered(
    env: Env, tmp_path: Path
) -> None:
    server, account = env.server, env.account
    app = VoiceApp().start()
    app.paths["/outbound"] = lambda _: TWIML.format(room="urlroom")
    try:
        callee = await start_callee(tmp_path, "answer", tone_hz=CALLEE_HZ)
        with server.api(account) as api:
            created = await asyncio.to_thread(
                api.post,
                "/Calls.json",
                data={
                    "To": callee.to(),
                    "From": "+15550007777",
                    "Url": app.url("/outbound"),
                    "Method": "GET",
                    "TimeLimit": "2",
                },
            )
            assert created.status_code == 201, created.text
            sid = created.json()["sid"]
            assert created.json()["direction"] == "outbound-api"
            fetched = await asyncio.to_thread(app.wait_for, "/outbound")
            assert fetched.method == "GET" and fetched.signed_by(account.token)
            params = fetched.params
            assert (params["CallSid"], params["CallStatus"]) == (sid, "in-progress")
            assert (params["Direction"], params["To"]) == ("outbound-api", callee.to())
            assert (await callee.finished())[0] == 0  # BYE at the TimeLimit
            await call_status(api, sid, ("completed",))
            conf = conference_named(api, "urlroom")
            assert conf is not None and conf["status"] == "completed"
    finally:
        app.stop()
