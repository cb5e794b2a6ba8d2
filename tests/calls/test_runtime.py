"""The call runtime in process: the real stack of the API tests (SQLite file, engine on its
clock, services), a real webhook application over HTTP, and in-process callers that join
through ``Services.incoming_call`` as the SIP edge does (the SIP paths are covered end to end
in tests/integration/test_voice_apps.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import pytest
from starlette.responses import PlainTextResponse, Response
from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from confstream.calls.runtime import CallNotInProgress, VoiceRuntime, VoiceServices
from confstream.calls.speech import Speaker
from confstream.calls.webhook import WebhookFetcher
from confstream.conference.base import Frame
from confstream.conference.gateway import IncomingCall, JoinOptions, JoinRefused
from confstream.tools.metrics import sample
from confstream.tools.net import free_port

from ..api.stack import FakeCallParticipant, Stack, open_stack
from .voiceapp import Recorded, VoiceApp


class Caller(FakeCallParticipant):
    """Keeps the loudest level it heard."""

    loudest = 0

    def write_frame(self, frame: Frame) -> None:
        super().write_frame(frame)
        self.loudest = max(self.loudest, int(np.abs(frame.astype(np.int32)).max()))


@pytest.fixture(scope="module")
def app() -> Iterator[VoiceApp]:
    voice = VoiceApp().start()
    try:
        yield voice
    finally:
        voice.stop()


@pytest.fixture
async def stack(tmp_path: Path, app: VoiceApp) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        runtime = VoiceRuntime(
            cast(VoiceServices, opened.services),
            opened.engine,
            # a short timeout keeps the slow-document case short
            WebhookFetcher(opened.settings.model_copy(update={"voice_webhook_timeout": 3.0})),
            Speaker(),
        )
        opened.services.attach_voice(runtime)
        await opened.store.update_account(opened.account.sid, voice_url=app.url("/voice"))
        try:
            yield opened
        finally:
            await runtime.close()


def runtime_of(stack: Stack) -> VoiceRuntime:
    assert stack.services.voice is not None
    return stack.services.voice


async def call(stack: Stack, call_sid: str, to_user: str) -> Caller:
    caller = Caller(call_sid, stack.services)
    incoming = IncomingCall(
        call_sid=call_sid,
        account_sid=stack.account.sid,
        request_user=to_user,
        from_uri="sip:caller@127.0.0.1",
        to_uri=f"sip:{to_user}@confstream",
    )
    await stack.services.incoming_call(incoming, caller)
    return caller


async def until(predicate: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_gather_collects_keys_from_the_call(stack: Stack, app: VoiceApp) -> None:
    app.routes["keys"] = lambda _: (
        '<Response><Gather numDigits="2" action="/digits" timeout="5"/></Response>'
    )
    app.paths["/digits"] = lambda _: '<Response><Pause length="30"/></Response>'
    await call(stack, "CA-keys", "keys")
    await asyncio.sleep(0.3)
    for key in "42":
        stack.services.dtmf_received("CA-keys", key, 100)
    request = await asyncio.to_thread(app.wait_for, "/digits", 10.0, CallSid="CA-keys")
    assert request.params["Digits"] == "42"
    assert request.params["CallStatus"] == "in-progress"
    assert request.signed_by(stack.account.auth_token)
    # the call has an engine conference of its own while it is not in one
    assert stack.engine.get("CA-keys") is not None
    await stack.services.leave("CA-keys", "bye")
    assert runtime_of(stack).calls == 0
    assert stack.engine.get("CA-keys") is None


async def test_play_is_heard_by_the_caller_alone(stack: Stack, app: VoiceApp) -> None:
    app.routes["play"] = lambda _: f"<Response><Play>{app.url('/tone.wav')}</Play></Response>"
    caller = await call(stack, "CA-play", "play")
    await until(lambda: caller.loudest > 8000)
    await until(lambda: caller.hangups == ["hangup"], 10.0)  # the end of the document


async def test_redirect_replaces_the_running_script(stack: Stack, app: VoiceApp) -> None:
    app.routes["wait"] = lambda _: '<Response><Pause length="60"/></Response>'
    app.paths["/next"] = lambda _: (
        "<Response><Dial><Conference>after-redirect</Conference></Dial></Response>"
    )
    await call(stack, "CA-redir", "wait")
    runtime = runtime_of(stack)
    assert runtime.is_running("CA-redir")
    await runtime.redirect("CA-redir", url=app.url("/next"), method="POST")
    await until(lambda: stack.services.live_participant("CA-redir") is not None)
    request = await asyncio.to_thread(app.wait_for, "/next", 10.0, CallSid="CA-redir")
    assert request.signed_by(stack.account.auth_token)
    assert stack.engine.get("CA-redir") is None  # its own conference is gone
    with pytest.raises(CallNotInProgress):
        await runtime.redirect("CA-unknown", twiml="<Response/>")


async def test_redirect_with_twiml(stack: Stack, app: VoiceApp) -> None:
    app.routes["wait2"] = lambda _: '<Response><Pause length="60"/></Response>'
    caller = await call(stack, "CA-twiml", "wait2")
    await runtime_of(stack).redirect("CA-twiml", twiml="<Response><Hangup/></Response>")
    await until(lambda: caller.hangups == ["hangup"])


async def test_reject_refuses_and_forgets_the_call(stack: Stack, app: VoiceApp) -> None:
    app.routes["busy"] = lambda _: '<Response><Reject reason="busy"/></Response>'
    with pytest.raises(JoinRefused) as refused:
        await call(stack, "CA-busy", "busy")
    assert refused.value.sip_status == 486
    assert runtime_of(stack).calls == 0


async def test_failing_voice_url_without_fallback_refuses_500(stack: Stack, app: VoiceApp) -> None:
    with pytest.raises(JoinRefused) as refused:
        await call(stack, "CA-404", "no-such-route")
    assert refused.value.sip_status == 500
    assert runtime_of(stack).calls == 0


async def test_plain_account_joins_by_request_uri(stack: Stack) -> None:
    await stack.store.update_account(stack.account.sid, voice_url="")
    await call(stack, "CA-plain", "plainroom")
    assert stack.services.live_participant("CA-plain") is not None
    assert runtime_of(stack).calls == 0


async def test_hangup_on_star_leaves_the_conference_and_requests_the_action(
    stack: Stack, app: VoiceApp
) -> None:
    app.routes["star"] = lambda _: (
        '<Response><Dial action="/after-dial" hangupOnStar="true">'
        '<Conference beep="false">starroom</Conference></Dial></Response>'
    )
    app.paths["/after-dial"] = lambda _: '<Response><Pause length="30"/></Response>'
    await call(stack, "CA-star", "star")
    await until(lambda: stack.services.live_participant("CA-star") is not None)
    stack.services.dtmf_received("CA-star", "5", 100)  # not a star: stays
    await asyncio.sleep(0.3)
    assert stack.services.live_participant("CA-star") is not None
    stack.services.dtmf_received("CA-star", "*", 100)
    request = await asyncio.to_thread(app.wait_for, "/after-dial", 10.0, CallSid="CA-star")
    assert request.params["DialCallStatus"] == "answered"
    assert request.params["DialBridged"] == "true"
    assert stack.services.live_participant("CA-star") is None  # out of the conference
    assert runtime_of(stack).is_running("CA-star")  # the call goes on


@pytest.mark.parametrize("how", ["kick", "ended-via-api", "end-on-exit"])
async def test_removed_from_the_conference_the_call_goes_on_with_its_dial_action(
    stack: Stack, app: VoiceApp, how: str
) -> None:
    """Removed from its conference outside the runtime (REST delete, REST end, another
    participant's endConferenceOnExit), a call is not hung up: its <Dial action> is requested
    as on Twilio and the answer runs (docs/voice.md, Flow)."""
    room = f"room-{how}"

    def dial(_: object) -> str:
        response = VoiceResponse()
        dial = Dial(action="/dial-done")
        dial.conference(room, beep="false")
        response.append(dial)
        return str(response)

    def done(_: object) -> str:
        response = VoiceResponse()
        response.say("Goodbye.")
        response.hangup()
        return str(response)

    app.routes[room] = dial
    app.paths["/dial-done"] = done
    call_sid = f"CA-{how}"
    caller = await call(stack, call_sid, room)
    await until(lambda: stack.services.live_participant(call_sid) is not None)
    other = FakeCallParticipant(f"CA-other-{how}", stack.services)
    options = JoinOptions(beep="false", end_conference_on_exit=how == "end-on-exit")
    conference_sid = await stack.services.join(stack.account.sid, room, other, options)
    base = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.app), base_url="http://api", auth=stack.auth()
    ) as client:
        if how == "kick":
            answer = await client.delete(f"{base}/Participants/{call_sid}.json")
            assert answer.status_code == 204, answer.text
        elif how == "ended-via-api":
            answer = await client.post(f"{base}.json", data={"Status": "completed"})
            assert answer.status_code == 200, answer.text
        else:
            await stack.services.leave(other.call_sid, "bye")

    request = await asyncio.to_thread(app.wait_for, "/dial-done", 10.0, CallSid=call_sid)
    assert request.params["DialCallStatus"] == "answered"
    assert request.params["DialBridged"] == "true"
    assert request.params["CallStatus"] == "in-progress"
    assert request.signed_by(stack.account.auth_token)
    assert stack.services.live_participant(call_sid) is None
    caller.loudest = 0
    await until(lambda: caller.hangups == ["hangup"])  # <Say>, then <Hangup>: not the removal
    assert caller.loudest > 3000  # the goodbye was spoken
    assert len(app.of("/dial-done", CallSid=call_sid)) == 1
    conference = await stack.store.get_conference(conference_sid)
    assert conference is not None
    if how == "kick":  # the other participant is still in
        assert conference.status == "in-progress"
        assert other.hangups == []
    else:
        assert conference.status == "completed"


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("status500", 11200, "http"),
        ("text", 12300, "document"),  # not an XML Content-Type
        ("notxml", 12100, "document"),  # application/xml, not well-formed
        ("slow", 11200, "timeout"),  # past the webhook timeout
    ],
)
async def test_a_later_document_that_fails_ends_only_its_call(
    stack: Stack, app: VoiceApp, caplog: pytest.LogCaptureFixture, kind: str, code: int, reason: str
) -> None:
    """A document requested mid-call (here a <Redirect>) that cannot be fetched or run: the
    call is hung up with the error (docs/voice.md, Errors and outcomes), logged and counted;
    another call is not disturbed."""
    bad = {
        "status500": lambda _: Response("boom", status_code=500),
        "text": lambda _: PlainTextResponse("<Response><Hangup/></Response>"),
        "notxml": lambda _: Response("<Response><Say>unclosed", media_type="application/xml"),
        "slow": lambda _: Response("", status_code=307, headers={"location": "/slow"}),
    }
    response = VoiceResponse()
    response.pause(length=1)
    response.redirect(f"/bad-{kind}")
    app.routes[f"bad-{kind}"] = lambda _: str(response)
    app.paths[f"/bad-{kind}"] = bad[kind]
    app.routes["steady"] = lambda _: '<Response><Pause length="30"/></Response>'
    bystander = await call(stack, f"CA-steady-{kind}", "steady")
    call_sid = f"CA-bad-{kind}"
    before = sample("confstream_voice_webhook_failures_total", reason=reason)
    caller = await call(stack, call_sid, f"bad-{kind}")
    await until(lambda: caller.hangups == [f"application-error {code}"], 15.0)
    assert sample("confstream_voice_webhook_failures_total", reason=reason) == before + 1
    assert f"call {call_sid}: application error {code}" in caplog.text
    assert not runtime_of(stack).is_running(call_sid)
    assert bystander.hangups == [] and runtime_of(stack).is_running(f"CA-steady-{kind}")


@pytest.mark.parametrize(
    ("kind", "error_code"),
    [("status500", "11200"), ("notxml", "12100"), ("root", "12102"), ("text", "12300")],
)
async def test_a_failing_voice_url_goes_to_the_fallback_url(
    stack: Stack, app: VoiceApp, kind: str, error_code: str
) -> None:
    """The voice URL fails or answers a document that cannot run: the fallback URL is
    requested with ErrorCode and ErrorUrl, signed, and its document runs (docs/voice.md,
    Errors and outcomes); when the fallback fails too the call is refused with 500."""
    bad = {
        "status500": lambda _: Response("boom", status_code=500),
        "notxml": lambda _: Response("<Response><Say>unclosed", media_type="application/xml"),
        "root": lambda _: Response("<Reply><Hangup/></Reply>", media_type="application/xml"),
        "text": lambda _: PlainTextResponse("hello"),
    }
    await stack.store.update_account(stack.account.sid, voice_fallback_url=app.url("/fallback"))
    app.routes[f"fb-{kind}"] = bad[kind]
    room = f"fallback-{kind}"

    def fallback(request: Recorded) -> str:
        if request.params["CallSid"].endswith("-again"):
            return "not a document"  # text/plain: the fallback fails too
        response = VoiceResponse()
        dial = Dial()
        dial.conference(room, beep="false")
        response.append(dial)
        return str(response)

    app.paths["/fallback"] = fallback
    call_sid = f"CA-fb-{kind}"
    await call(stack, call_sid, f"fb-{kind}")
    request = await asyncio.to_thread(app.wait_for, "/fallback", 10.0, CallSid=call_sid)
    assert request.params["ErrorCode"] == error_code
    assert request.params["ErrorUrl"] == app.url("/voice")
    assert request.params["CallStatus"] == "ringing"
    assert request.signed_by(stack.account.auth_token)
    await until(lambda: stack.services.live_participant(call_sid) is not None)

    with pytest.raises(JoinRefused) as refused:
        await call(stack, f"{call_sid}-again", f"fb-{kind}")
    assert refused.value.sip_status == 500
    assert not runtime_of(stack).is_running(f"{call_sid}-again")
    assert stack.services.live_participant(call_sid) is not None  # undisturbed


async def test_connect_stream_that_cannot_connect_goes_on_with_the_next_verb(
    stack: Stack, app: VoiceApp
) -> None:
    """``<Connect><Stream>`` to a receiver that refuses the connection: the stream stops with
    its error (31902) and the script runs the next verb, whether the stop is reported before
    or after the runtime starts waiting for it."""
    response = VoiceResponse()
    connect = Connect()
    connect.stream(url=f"wss://127.0.0.1:{free_port()}/nobody")
    response.append(connect)
    response.redirect("/after-connect")
    app.routes["nobody"] = lambda _: str(response)
    app.paths["/after-connect"] = lambda _: '<Response><Pause length="30"/></Response>'
    await call(stack, "CA-nobody", "nobody")
    request = await asyncio.to_thread(app.wait_for, "/after-connect", 20.0, CallSid="CA-nobody")
    assert request.signed_by(stack.account.auth_token)
    (stream,) = await stack.services.list_call_streams("CA-nobody", offset=0, limit=10)
    assert (stream.status, stream.error_code) == ("stopped", 31902)
