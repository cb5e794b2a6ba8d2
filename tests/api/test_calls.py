"""The Calls resource and call streams over the real stack (SQLite file, Engine, StreamManager,
Services, the Starlette app): records made by Services.incoming_call as the SIP edge calls it,
validation, hang-up, redirect plumbing, call streams to a real TLS WebSocket receiver."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest

from confstream.conference.gateway import IncomingCall
from confstream.services import Services
from confstream.store import Account
from confstream.streams.spec import StreamRequest
from confstream.tools.tls import Tls

from ..streams.peers import ws_receiver
from .stack import FakeCallParticipant, Stack

SW = "/api/laml/2010-04-01"
TW = "/2010-04-01"


async def incoming(
    stack: Stack, room: str = "sales", caller: str = "alice", account_sid: str | None = None
) -> str:
    """A call through Services.incoming_call, as the SIP edge makes it; its CallSid."""
    call_sid = str(uuid.uuid4())
    participant = FakeCallParticipant(call_sid, stack.services)
    stack.participants[call_sid] = participant
    await stack.services.incoming_call(
        IncomingCall(
            call_sid=call_sid,
            account_sid=account_sid or stack.account.sid,
            request_user=room,
            from_uri=f"sip:{caller}@198.51.100.7",
            to_uri=f"sip:{room}@confstream.test",
            caller_name=caller.title(),
        ),
        participant,
    )
    return call_sid


def trust(stack: Stack, tls: Tls) -> None:
    """Have the stack's stream manager trust the test CA (its TLS context is built once)."""
    stack.streams._ssl = tls.client_context()


def calls_path(stack: Stack, base: str = SW) -> str:
    return f"{base}/Accounts/{stack.account.sid}/Calls"


async def test_incoming_calls_are_records_in_twilio_shape(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    first = await incoming(stack, caller="alice")
    second = await incoming(stack, caller="bob")
    listed = await client.get(f"{calls_path(stack)}.json")
    assert listed.status_code == 200
    body = listed.json()
    assert [c["sid"] for c in body["calls"]] == [second, first]  # newest first
    call = body["calls"][1]
    assert call["status"] == "in-progress" and call["direction"] == "inbound"
    assert call["from"] == call["from_formatted"] == "sip:alice@198.51.100.7"
    assert call["to"] == call["to_formatted"] == "sip:sales@confstream.test"
    assert call["caller_name"] == "Alice" and call["api_version"] == "2010-04-01"
    assert call["start_time"] is not None and call["end_time"] is None
    assert call["duration"] is None and call["parent_call_sid"] is None
    assert call["answered_by"] is None and call["price"] is None
    assert call["uri"] == f"{calls_path(stack)}/{first}.json"
    assert call["subresource_uris"] == {"streams": f"{calls_path(stack)}/{first}/Streams.json"}
    # fetch on both base paths, with and without .json
    for base in (SW, TW):
        for suffix in ("", ".json"):
            got = await client.get(f"{calls_path(stack, base)}/{first}{suffix}")
            assert got.status_code == 200 and got.json()["sid"] == first
            assert got.json()["uri"].startswith(base + "/Accounts/")
    # a participant's call_sid is its Call
    conf = (await client.get(f"{SW}/Accounts/{stack.account.sid}/Conferences.json")).json()
    conf_sid = conf["conferences"][0]["sid"]
    parts = await client.get(
        f"{SW}/Accounts/{stack.account.sid}/Conferences/{conf_sid}/Participants.json"
    )
    assert {p["call_sid"] for p in parts.json()["participants"]} == {first, second}
    # another account sees nothing of it
    other = await client.get(
        f"{SW}/Accounts/{stack.other.sid}/Calls/{first}.json", auth=stack.auth(stack.other)
    )
    assert other.status_code == 404 and other.json()["code"] == 20404
    assert (await client.get(f"{calls_path(stack)}/nope.json")).status_code == 404


async def test_list_filters(stack: Stack, client: httpx.AsyncClient) -> None:
    a = await incoming(stack, caller="alice", room="one")
    b = await incoming(stack, caller="bob", room="two")
    await stack.services.hangup_call(stack.account, b)
    path = f"{calls_path(stack)}.json"

    async def sids(**params: str) -> list[str]:
        answer = await client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return [c["sid"] for c in answer.json()["calls"]]

    assert await sids(Status="in-progress") == [a]
    assert await sids(Status="completed") == [b]
    assert await sids(From="sip:bob@198.51.100.7") == [b]
    assert await sids(To="sip:one@confstream.test") == [a]
    today = dt.datetime.now(dt.UTC).date()
    assert await sids(StartTime=today.isoformat()) == [b, a]
    assert await sids(**{"StartTime<": (today - dt.timedelta(days=1)).isoformat()}) == []
    assert await sids(**{"StartTime>": today.isoformat()}) == [b, a]
    assert await sids(EndTime=today.isoformat()) == [b]
    page = (await client.get(path, params={"PageSize": "1"})).json()
    assert len(page["calls"]) == 1 and page["next_page_uri"] is not None
    assert "/Calls.json?" in page["first_page_uri"]
    for params, code in (
        ({"Status": "answered"}, 20001),
        ({"StartTime": "2024-05-01T00:00:00Z"}, 20001),
        ({"EndTime>": "yesterday"}, 20001),
    ):
        refused = await client.get(path, params=params)
        assert (refused.status_code, refused.json()["code"]) == (422, code), params
    create = await client.post(path, data={"To": "sip:x@y", "From": "a", "Url": "http://a/"})
    assert (create.status_code, create.json()["code"]) == (405, 20004)


async def test_hangup_completes_the_call_and_its_participant(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    call_sid = await incoming(stack)
    other = await incoming(stack, caller="bob")
    path = f"{calls_path(stack)}/{call_sid}.json"
    ended = await client.post(path, data={"Status": "completed"})
    assert ended.status_code == 200, ended.text
    body = ended.json()
    assert body["status"] == "completed" and body["end_time"] is not None
    assert body["duration"] is not None and int(body["duration"]) >= 0
    assert stack.participants[call_sid].hangups == ["Call ended via API"]
    assert stack.participants[other].hangups == []
    assert stack.services.live_participant(call_sid) is None
    # again: the ended call is returned as it is; canceled does the same on a live call
    again = await client.post(path, data={"Status": "completed"})
    assert again.json()["end_time"] == body["end_time"]
    canceled = await client.post(f"{calls_path(stack)}/{other}.json", data={"Status": "canceled"})
    assert canceled.json()["status"] == "completed"
    assert stack.participants[other].hangups == ["Call ended via API"]
    conf = (await client.get(f"{SW}/Accounts/{stack.account.sid}/Conferences.json")).json()
    assert conf["conferences"][0]["status"] == "completed"


async def test_call_end_through_the_gateway_completes_the_record(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    call_sid = await incoming(stack)
    await stack.services.leave(call_sid, "bye")
    got = (await client.get(f"{calls_path(stack)}/{call_sid}.json")).json()
    assert got["status"] == "completed" and got["duration"] is not None


async def test_refused_call_is_failed_with_its_sip_status(stack: Stack) -> None:
    call_sid = await incoming(stack)
    again = FakeCallParticipant(call_sid + "-x", stack.services)
    again.call_sid = call_sid  # the same CallSid joining twice: 482
    with pytest.raises(Exception, match="already"):
        await stack.services.join(stack.account.sid, "sales", again)
    refused_sid = str(uuid.uuid4())
    participant = FakeCallParticipant(refused_sid, stack.services)
    async with stack.store.session() as session, session.begin():
        row = await session.get(Account, stack.other.sid)
        assert row is not None
        row.status = "suspended"
    with pytest.raises(Exception, match="no such active account"):
        await stack.services.incoming_call(
            IncomingCall(
                call_sid=refused_sid,
                account_sid=stack.other.sid,
                request_user="sales",
                from_uri="sip:eve@h",
                to_uri="sip:sales@h",
            ),
            participant,
        )
    record = await stack.store.get_call(refused_sid)
    assert record is not None
    assert (record.status, record.sip_response_code, record.duration) == ("failed", 403, None)
    assert stack.services.live_call(refused_sid) is None


@dataclass
class RecordingVoice:
    """Stands in for the voice runtime where Services calls it on a plain SIP call."""

    redirects: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)

    async def redirect(
        self, call_sid: str, *, url: str | None, method: str, twiml: str | None
    ) -> None:
        self.redirects.append((call_sid, url, method, twiml))

    def call_ended(self, call_sid: str) -> None:
        """Services tells the runtime when a call ends; nothing runs here."""


async def test_update_validation_and_redirect(stack: Stack, client: httpx.AsyncClient) -> None:
    call_sid = await incoming(stack)
    path = f"{calls_path(stack)}/{call_sid}.json"
    for data, status, code in (
        ({"Status": "busy"}, 422, 20001),
        ({"Url": "/relative"}, 422, 21205),
        ({"Url": "ftp://host/x"}, 422, 21205),
        ({"Url": "https://app.example/next", "Method": "PUT"}, 422, 21209),
        ({"Url": "https://app.example/a", "Twiml": "<Response/>"}, 422, 20001),
        ({"Status": "completed", "Url": "https://app.example/a"}, 422, 20001),
        ({"Twiml": "x" * 4001}, 422, 20001),
        ({"FallbackUrl": "https://app.example/f"}, 400, 20501),
        ({"StatusCallback": "https://app.example/s"}, 400, 20501),
        ({"TimeLimit": "30"}, 400, 20501),
        # no voice runtime attached: a clear refusal, the call is untouched
        ({"Url": "https://app.example/next"}, 400, 20501),
    ):
        refused = await client.post(path, data=data)
        assert (refused.status_code, refused.json()["code"]) == (status, code), data
    assert stack.participants[call_sid].hangups == []
    voice = RecordingVoice()
    stack.services.voice = cast(Any, voice)  # only redirect() is used here
    moved = await client.post(path, data={"Url": "https://app.example/next", "Method": "get"})
    assert moved.status_code == 200, moved.text
    twiml = "<Response><Hangup/></Response>"
    assert (await client.post(path, data={"Twiml": twiml})).status_code == 200
    assert voice.redirects == [
        (call_sid, "https://app.example/next", "GET", None),
        (call_sid, None, "POST", twiml),
    ]
    record = await stack.store.get_call(call_sid)
    assert record is not None and (record.url, record.method) == ("https://app.example/next", "GET")
    # a call that has ended cannot be moved
    await stack.services.hangup_call(stack.account, call_sid)
    late = await client.post(path, data={"Url": "https://app.example/next"})
    assert (late.status_code, late.json()["code"]) == (409, 21220)
    assert len(voice.redirects) == 2


async def test_call_streams_api(stack: Stack, client: httpx.AsyncClient, tls: Tls) -> None:
    trust(stack, tls)
    call_sid = await incoming(stack)
    await incoming(stack, caller="bob")
    streams = f"{calls_path(stack)}/{call_sid}/Streams"
    bad = await client.post(f"{streams}.json", data={"Url": "https://not-wss/"})
    assert (bad.status_code, bad.json()["code"]) == (400, 31922)
    bad_track = await client.post(f"{streams}.json", data={"Url": "wss://h/", "Track": "x"})
    assert (bad_track.status_code, bad_track.json()["code"]) == (422, 31941)
    missing = await client.post(f"{calls_path(stack)}/nope/Streams.json", data={"Url": "wss://h/"})
    assert missing.status_code == 404
    async with ws_receiver(tls) as rec:
        created = await client.post(
            f"{streams}.json",
            data={
                "Url": rec.url("/one", host="localhost"),
                "Name": "mine",
                "Parameter1.Name": "k",
                "Parameter1.Value": "v",
            },
        )
        assert created.status_code == 200, created.text
        stream = created.json()
        assert stream["call_sid"] == call_sid and stream["conference_sid"] is None
        assert stream["uri"] == f"{streams}/{stream['sid']}.json"
        clash = await client.post(f"{streams}.json", data={"Url": rec.url(), "Name": "mine"})
        assert (clash.status_code, clash.json()["code"]) == (409, 20409)
        await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 20, 20)
        start = rec.conns[0].messages[1]["start"]
        assert start["callSid"] == call_sid and "conferenceSid" not in start
        assert start["customParameters"] == {"k": "v"}
        fetched = await client.get(f"{streams}/mine.json")
        assert fetched.json()["status"] == "in-progress"
        listed = await client.get(f"{streams}.json", params={"Status": "in-progress"})
        assert [s["sid"] for s in listed.json()["streams"]] == [stream["sid"]]
        # the conference's streams do not include it
        conf = (await client.get(f"{SW}/Accounts/{stack.account.sid}/Conferences.json")).json()
        conf_streams = await client.get(
            f"{SW}/Accounts/{stack.account.sid}/Conferences/{conf['conferences'][0]['sid']}"
            "/Streams.json"
        )
        assert conf_streams.json()["streams"] == []
        no_status = await client.post(f"{streams}/mine.json", data={})
        assert no_status.status_code == 422
        stopped = await client.post(f"{streams}/mine.json", data={"Status": "stopped"})
        assert stopped.json()["status"] == "stopped"
        await asyncio.wait_for(rec.conns[0].closed.wait(), 10)
        assert rec.conns[0].messages[-1]["event"] == "stop"
        # a second stream ends with its call
        second = await client.post(f"{streams}.json", data={"Url": rec.url("/two")})
        await rec.wait_for(lambda: len(rec.conns) == 2 and len(rec.conns[1].messages) > 2, 20)
        await stack.services.leave(call_sid, "bye")
        await asyncio.wait_for(rec.conns[1].closed.wait(), 10)
        after = await client.get(f"{streams}/{second.json()['sid']}.json")
        assert after.json()["status"] == "stopped"
    ended = await client.post(f"{streams}.json", data={"Url": "wss://localhost/x"})
    assert (ended.status_code, ended.json()["code"]) == (409, 21220)


async def test_services_call_stream_methods_by_name(stack: Stack, tls: Tls) -> None:
    """What the voice runtime calls for <Start>/<Stop><Stream>: start by account SID, stop by
    Name; a stopped stream is returned as it is."""
    services: Services = stack.services
    trust(stack, tls)
    call_sid = await incoming(stack)
    async with ws_receiver(tls) as rec:
        row = await services.start_call_stream(
            stack.account.sid, call_sid, StreamRequest(url=rec.url("/v"), name="s1")
        )
        assert row.call_sid == call_sid and row.status in ("queued", "in-progress")
        await rec.wait_for(lambda: rec.conns and len(rec.conns[0].messages) > 2, 20)
        stopped = await services.stop_call_stream(stack.account.sid, call_sid, "s1", "stop verb")
        assert stopped.status == "stopped"
        again = await services.stop_call_stream(stack.account, call_sid, row.sid)
        assert again.status == "stopped"
