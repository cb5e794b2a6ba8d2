"""Conference status callbacks (docs/voice.md, "Conference status callbacks"), received by a
real HTTP server and checked with the official twilio SDK's RequestValidator: order, exactly
once, SequenceNumber from 1 without gaps, Twilio's parameters.

Here the options reach ``Services.join`` through the test: in-process participants for the
exact sequences, and real sipp callers through an in-process SIP edge whose gateway joins with
the options (the SIP edge, the services, the engine, the store and the callback delivery are
all the real ones). The same events driven by ``<Conference statusCallback>`` from a voice
application, with a stream created inside the ``conference-start`` callback, are checked end
to end in tests/integration/test_voice_apps.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from confstream.conference.base import Participant
from confstream.conference.gateway import IncomingCall, JoinOptions
from confstream.rtp.ports import RtpPortPool
from confstream.services import Services
from confstream.settings import Settings
from confstream.sip.server import SipServer
from confstream.tools.net import rtp_port_bounds
from confstream.tools.participants import ToneParticipant
from confstream.tools.server import Account as ServerAccount
from tests.api.stack import Stack, open_stack
from tests.callbacks.recorder import Recorded, Recorder, http_recorder
from tests.integration.peers import start_sipp_caller

PATH = "/conference-events"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        yield opened


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with http_recorder() as rec:
        yield rec


def validated(stack: Stack, recorder: Recorder) -> list[Recorded]:
    """Every callback received on PATH, each checked with the SDK's RequestValidator."""
    validator = RequestValidator(stack.account.auth_token)
    received = recorder.for_path(PATH)
    for r in received:
        assert validator.validate(recorder.url(PATH), r.form, r.headers["x-twilio-signature"])
        assert r.headers["x-signalwire-signature"] == r.headers["x-twilio-signature"]
    return received


def events(received: list[Recorded]) -> list[tuple[str, str | None]]:
    return [(r.form["StatusCallbackEvent"], r.form.get("CallSid")) for r in received]


async def wait_count(recorder: Recorder, n: int, within: float = 10.0) -> None:
    await recorder.wait_for(lambda: len(recorder.for_path(PATH)) >= n, within)


async def eventually(predicate: Callable[[], object], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_events_in_order_exactly_once_signed(stack: Stack, recorder: Recorder) -> None:
    callback = JoinOptions(
        beep="false",
        start_conference_on_enter=False,
        status_callback=recorder.url(PATH),
        status_callback_event=("start", "end", "join", "leave", "mute", "hold"),
    )
    waiting = ToneParticipant("call-a", None)
    sid = await stack.services.join(stack.account.sid, "team", waiting, callback)
    moderator = ToneParticipant("call-b", None)
    options = JoinOptions(beep="false", label="boss", end_conference_on_exit=True)
    await stack.services.join(stack.account.sid, "team", moderator, options)
    await stack.services.update_participant("call-a", muted=True)
    await stack.services.update_participant("call-a", muted=True)  # no change: no event
    stack.services.hold_changed("call-b", True)
    stack.services.hold_changed("call-b", True)  # no change: no event
    stack.services.hold_changed("call-b", False)
    await stack.services.update_participant("call-a", muted=False)
    await stack.services.leave("call-b", "bye")  # end_conference_on_exit: ends it for call-a
    await wait_count(recorder, 10)
    await stack.services.drain()
    await asyncio.sleep(0.3)  # nothing more arrives
    received = validated(stack, recorder)
    assert events(received) == [
        ("participant-join", "call-a"),
        ("participant-join", "call-b"),
        ("conference-start", None),
        ("participant-mute", "call-a"),
        ("participant-hold", "call-b"),
        ("participant-unhold", "call-b"),
        ("participant-unmute", "call-a"),
        ("participant-leave", "call-b"),
        ("participant-leave", "call-a"),
        ("conference-end", None),
    ]
    assert [int(r.form["SequenceNumber"]) for r in received] == list(range(1, 11))
    for r in received:
        assert r.form["ConferenceSid"] == sid
        assert r.form["FriendlyName"] == "team"
        assert r.form["AccountSid"] == stack.account.sid
        assert r.form["Timestamp"].endswith(" +0000")  # RFC 2822, UTC
    join_a, join_b = received[0].form, received[1].form
    assert join_a["StartConferenceOnEnter"] == "false" and "ParticipantLabel" not in join_a
    assert (join_a["Muted"], join_a["Hold"], join_a["Coaching"]) == ("false", "false", "false")
    assert join_b["StartConferenceOnEnter"] == "true"
    assert join_b["EndConferenceOnExit"] == "true" and join_b["ParticipantLabel"] == "boss"
    assert received[3].form["Muted"] == "true" and received[4].form["Hold"] == "true"
    end = received[-1].form
    assert end["ReasonConferenceEnded"] == "participant-with-end-conference-on-exit-left"
    assert end["CallSidEndingConference"] == "call-b"
    assert "CallSid" not in received[2].form


async def test_default_events_are_start_and_end(stack: Stack, recorder: Recorder) -> None:
    options = JoinOptions(beep="false", status_callback=recorder.url(PATH))
    await stack.services.join(stack.account.sid, "room", ToneParticipant("c1", None), options)
    await stack.services.join(stack.account.sid, "room", ToneParticipant("c2", None))
    await stack.services.update_participant("c2", muted=True)
    await stack.services.kick("c1")
    await stack.services.kick("c2")
    await wait_count(recorder, 2)
    await asyncio.sleep(0.3)
    received = validated(stack, recorder)
    assert events(received) == [("conference-start", None), ("conference-end", None)]
    assert received[1].form["ReasonConferenceEnded"] == "last-participant-kicked"
    assert received[1].form["CallSidEndingConference"] == "c2"


async def test_get_callbacks_are_signed_too(stack: Stack, recorder: Recorder) -> None:
    options = JoinOptions(
        beep="false",
        status_callback=recorder.url(PATH),
        status_callback_method="GET",
        status_callback_event=("join",),
    )
    await stack.services.join(stack.account.sid, "room", ToneParticipant("c1", None), options)
    await wait_count(recorder, 1)
    (r,) = recorder.for_path(PATH)
    assert r.method == "GET" and r.params["StatusCallbackEvent"] == "participant-join"
    validator = RequestValidator(stack.account.auth_token)
    assert validator.validate(
        f"{recorder.url(PATH)}?{r.query}", {}, r.headers["x-twilio-signature"]
    )


async def test_speaker_events_follow_the_voice(stack: Stack, recorder: Recorder) -> None:
    options = JoinOptions(
        beep="false", status_callback=recorder.url(PATH), status_callback_event=("speaker",)
    )
    talker = ToneParticipant("talker", 440.0)
    silent = ToneParticipant("silent", None)
    sid = await stack.services.join(stack.account.sid, "room", talker, options)
    await stack.services.join(stack.account.sid, "room", silent)
    assert stack.engine.level_watchers == 1  # the conference watches levels
    await wait_count(recorder, 1, within=5.0)
    await stack.services.update_participant("talker", muted=True)
    await wait_count(recorder, 2, within=5.0)  # after the 800 ms hangover
    received = validated(stack, recorder)
    assert events(received) == [
        ("participant-speech-start", "talker"),
        ("participant-speech-stop", "talker"),
    ]
    await stack.services.end_conference(sid)
    assert stack.engine.level_watchers == 0


# ------------------------------------------------------------------ real SIP callers
@dataclass
class OptionsGateway:
    """The SIP edge's gateway: the real Services, joining with ``options`` (what the voice
    runtime will do for ``<Dial><Conference>``)."""

    services: Services
    options: JoinOptions

    async def auth_token(self, account_sid: str) -> str | None:
        return await self.services.auth_token(account_sid)

    async def incoming_call(self, call: IncomingCall, participant: Participant) -> None:
        await self.services.join(call.account_sid, call.request_user, participant, self.options)

    async def leave(self, call_sid: str, reason: str) -> None:
        await self.services.leave(call_sid, reason)

    def hold_changed(self, call_sid: str, hold: bool) -> None:
        self.services.hold_changed(call_sid, hold)

    def dtmf_received(self, call_sid: str, digit: str, duration_ms: int) -> None:
        self.services.dtmf_received(call_sid, digit, duration_ms)


async def test_sipp_callers_produce_the_conference_events(
    stack: Stack, recorder: Recorder, tmp_path: Path
) -> None:
    options = JoinOptions(
        beep="false",
        status_callback=recorder.url(PATH),
        status_callback_event=("start", "end", "join", "leave", "speaker"),
    )
    low, high = rtp_port_bounds(40)
    settings = Settings(sip_listen="127.0.0.1:0", rtp_ports=f"{low}-{high}")
    sip = SipServer(settings, OptionsGateway(stack.services, options), RtpPortPool(low, high))
    await sip.start()
    account = ServerAccount(stack.account.sid, stack.account.auth_token)
    try:
        first = await start_sipp_caller(tmp_path, sip.port, account, "sip-room", 500.0, 3.0)
        await wait_count(recorder, 2)  # participant-join, conference-start
        second = await start_sipp_caller(tmp_path, sip.port, account, "sip-room", 700.0, 5.0)
        for caller in (first, second):
            _, err = await asyncio.wait_for(caller.communicate(), 60)
            assert caller.returncode == 0, err.decode(errors="replace")[-2000:]
        await eventually(lambda: "conference-end" in [e for e, _ in events(recorder.requests)])
        await asyncio.sleep(0.3)
    finally:
        await sip.stop()
    received = validated(stack, recorder)
    sequence = [int(r.form["SequenceNumber"]) for r in received]
    assert sequence == list(range(1, len(received) + 1))
    lifecycle = [(e, c) for e, c in events(received) if "speech" not in e]
    joined = [c for e, c in lifecycle if e == "participant-join"]
    assert len(joined) == 2 and len(set(joined)) == 2
    a, b = joined
    assert lifecycle == [
        ("participant-join", a),
        ("conference-start", None),
        ("participant-join", b),
        ("participant-leave", a),
        ("participant-leave", b),
        ("conference-end", None),
    ]
    assert received[-1].form["ReasonConferenceEnded"] == "last-participant-left"
    assert received[-1].form["CallSidEndingConference"] == b
    # both callers' tones were detected as speech, each start before its stop
    for call_sid in (a, b):
        speech = [e for e, c in events(received) if c == call_sid and "speech" in e]
        assert speech[:1] == ["participant-speech-start"], speech
