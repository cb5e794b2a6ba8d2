"""The REST API over real HTTP (uvicorn), driven by httpx and by the official twilio SDK."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from typing import Any

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from confstream.store import Conference

from .stack import Stack


class LocalHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Sends the SDK's https://api.twilio.com requests to the local server instead."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        url = url.replace("https://api.twilio.com", self.base_url)
        return super().request(method, url, *args, **kwargs)


def sdk(stack: Stack, server_url: str, token: str | None = None) -> Client:
    return Client(
        stack.account.sid,
        token or stack.account.auth_token,
        http_client=LocalHttpClient(server_url),
    )


async def test_twilio_sdk_conferences_participants_and_mute(stack: Stack, server_url: str) -> None:
    conference_sid = await stack.join("call-a", "room")
    await stack.join("call-b", "room")
    client = sdk(stack, server_url)

    conferences = await asyncio.to_thread(lambda: client.conferences.list(status="in-progress"))
    assert [c.sid for c in conferences] == [conference_sid]
    conference = await asyncio.to_thread(lambda: client.conferences(conference_sid).fetch())
    assert conference.friendly_name == "room"
    assert conference.status == "in-progress"
    assert conference.date_created is not None and conference.date_created.tzinfo is not None

    participants = await asyncio.to_thread(
        lambda: client.conferences(conference_sid).participants.list()
    )
    assert sorted(p.call_sid for p in participants) == ["call-a", "call-b"]

    updated = await asyncio.to_thread(
        lambda: client.conferences(conference_sid).participants("call-a").update(muted=True)
    )
    assert updated.muted is True
    assert stack.participants["call-a"].muted is True  # the live object the mixer reads
    record = await stack.store.get_participant("call-a")
    assert record is not None and record.muted is True
    muted_only = await asyncio.to_thread(
        lambda: client.conferences(conference_sid).participants.list(muted=True)
    )
    assert [p.call_sid for p in muted_only] == ["call-a"]

    # hang one up through the SDK: the participant is asked to leave, its record completes
    await asyncio.to_thread(
        lambda: client.conferences(conference_sid).participants("call-b").delete()
    )
    assert stack.participants["call-b"].hangups
    record_b = await stack.store.get_participant("call-b")
    assert record_b is not None and record_b.status == "completed"
    remaining = await asyncio.to_thread(
        lambda: client.conferences(conference_sid).participants.list()
    )
    assert [p.call_sid for p in remaining] == ["call-a"]

    # end the conference through the SDK
    ended = await asyncio.to_thread(
        lambda: client.conferences(conference_sid).update(status="completed")
    )
    assert ended.status == "completed"
    assert stack.participants["call-a"].hangups
    assert stack.engine.get(conference_sid) is None
    record_a = await stack.store.get_participant("call-a")
    assert record_a is not None and record_a.status == "completed"


async def test_twilio_sdk_wrong_password(stack: Stack, server_url: str) -> None:
    client = sdk(stack, server_url, token="0" * 32)
    with pytest.raises(TwilioRestException) as info:
        await asyncio.to_thread(lambda: client.api.v2010.accounts(stack.account.sid).fetch())
    assert info.value.status == 401
    assert info.value.code == 20003


async def test_auth_failures_look_alike(stack: Stack, server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        path = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences.json"
        bad_password = await http.get(path, auth=(stack.account.sid, "wrong"))
        no_auth = await http.get(path)
        # valid credentials of another account, used on this account's path
        other_account = await http.get(path, auth=stack.auth(stack.other))
        unknown_account = await http.get(
            "/2010-04-01/Accounts/00000000-0000-0000-0000-000000000000/Conferences.json",
            auth=stack.auth(),
        )
    for answer in (bad_password, no_auth, other_account, unknown_account):
        assert answer.status_code == 401
        assert answer.json() == bad_password.json()
    assert bad_password.json()["code"] == 20003
    assert bad_password.json()["status"] == 401
    assert set(bad_password.json()) == {"code", "message", "more_info", "status"}


async def test_paging_walks_forwards_and_backwards(stack: Stack, server_url: str) -> None:
    base = dt.datetime(2024, 3, 1, 12, 0, 0)
    async with stack.store.session() as session, session.begin():
        for index in range(120):
            session.add(
                Conference(
                    sid=f"00000000-0000-0000-0000-{index:012d}",
                    account_sid=stack.account.sid,
                    friendly_name=f"room-{index}",
                    status="completed",
                    region="us1",
                    date_created=base + dt.timedelta(minutes=index),
                    date_updated=base + dt.timedelta(minutes=index),
                )
            )
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        uri: str | None = (
            f"/api/laml/2010-04-01/Accounts/{stack.account.sid}/Conferences.json"
            "?Status=completed&PageSize=50"
        )
        while uri is not None:
            answer = await http.get(uri)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            pages.append(body)
            seen += [c["sid"] for c in body["conferences"]]
            uri = body["next_page_uri"]
        assert [len(p["conferences"]) for p in pages] == [50, 50, 20]
        assert [p["page"] for p in pages] == [0, 1, 2]
        assert all(p["page_size"] == 50 for p in pages)
        assert len(seen) == 120 and len(set(seen)) == 120
        # newest first
        assert seen[0].endswith("000000000119") and seen[-1].endswith("000000000000")
        assert pages[0]["previous_page_uri"] is None
        assert all("Status=completed" in p["first_page_uri"] for p in pages)
        assert all(p["uri"].startswith("/api/laml/2010-04-01/") for p in pages)
        # walk back from the last page
        back = await http.get(pages[2]["previous_page_uri"])
        assert [c["sid"] for c in back.json()["conferences"]] == seen[50:100]
        back2 = await http.get(back.json()["previous_page_uri"])
        assert [c["sid"] for c in back2.json()["conferences"]] == seen[:50]
        assert back2.json()["previous_page_uri"] is None
        first = await http.get(pages[2]["first_page_uri"])
        assert [c["sid"] for c in first.json()["conferences"]] == seen[:50]
        too_big = await http.get(
            f"/2010-04-01/Accounts/{stack.account.sid}/Conferences.json?PageSize=1001"
        )
        assert too_big.status_code == 422 and too_big.json()["errors"]


async def test_conference_filters(stack: Stack, server_url: str) -> None:
    live_sid = await stack.join("call-1", "alpha")
    await stack.join("call-2", "beta")
    old = await stack.store.create_conference(stack.account.sid, "old")
    await stack.store.complete_conference(old.sid, "test")
    async with stack.store.session() as session, session.begin():
        row = await session.get(Conference, old.sid)
        assert row is not None
        row.date_created = dt.datetime(2020, 5, 17, 10, 0, 0)
        row.date_updated = dt.datetime(2020, 5, 18, 10, 0, 0)
    path = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences.json"

    async def sids(**params: str) -> list[str]:
        async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
            answer = await http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return [c["sid"] for c in answer.json()["conferences"]]

    assert await sids(FriendlyName="alpha") == [live_sid]
    assert await sids(Status="completed") == [old.sid]
    assert await sids(DateCreated="2020-05-17") == [old.sid]
    assert await sids(**{"DateCreated<": "2021-01-01"}) == [old.sid]
    assert old.sid not in await sids(**{"DateCreated>": "2021-01-01"})
    assert len(await sids(**{"DateCreated>": "2021-01-01"})) == 2
    assert await sids(DateUpdated="2020-05-18") == [old.sid]
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        bad = await http.get(path, params={"Status": "bogus"})
        assert bad.status_code == 422 and bad.json()["code"] == 20001
        bad_date = await http.get(path, params={"DateCreated": "yesterday"})
        assert bad_date.status_code == 422


async def test_both_base_paths_and_json_suffix(stack: Stack, server_url: str) -> None:
    conference_sid = await stack.join("call-1", "room")
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        bodies = []
        for base in ("/api/laml/2010-04-01", "/2010-04-01"):
            for suffix in ("", ".json"):
                answer = await http.get(
                    f"{base}/Accounts/{stack.account.sid}/Conferences/{conference_sid}{suffix}"
                )
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["uri"] == (
                    f"{base}/Accounts/{stack.account.sid}/Conferences/{conference_sid}.json"
                )
                bodies.append(
                    {k: v for k, v in body.items() if k not in ("uri", "subresource_uris")}
                )
                participant = await http.get(
                    f"{base}/Accounts/{stack.account.sid}/Conferences/{conference_sid}"
                    f"/Participants/call-1{suffix}"
                )
                assert participant.status_code == 200
                assert participant.json()["call_sid"] == "call-1"
        assert all(b == bodies[0] for b in bodies)
        body = bodies[0]
        assert body["api_version"] == "2010-04-01"
        assert body["date_created"].endswith(" +0000")
        dt.datetime.strptime(body["date_created"], "%a, %d %b %Y %H:%M:%S %z")
        account = await http.get(f"/2010-04-01/Accounts/{stack.account.sid}.json")
        assert account.status_code == 200 and account.json()["sid"] == stack.account.sid
        missing = await http.get(f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/nope.json")
        assert missing.status_code == 404 and missing.json()["code"] == 20404
        other_room = await stack.join("call-x", "theirs", account=stack.other)
        hidden = await http.get(
            f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{other_room}.json"
        )
        assert hidden.status_code == 404


async def test_hold_filter_and_update(stack: Stack, server_url: str) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    path = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}/Participants"
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        answer = await http.post(f"{path}/call-2.json", data={"Hold": "TRUE"})
        assert answer.status_code == 200 and answer.json()["hold"] is True
        assert stack.participants["call-2"].hold is True
        held = await http.get(f"{path}.json", params={"Hold": "true"})
        assert [p["call_sid"] for p in held.json()["participants"]] == ["call-2"]
        not_held = await http.get(f"{path}.json", params={"Hold": "false"})
        assert [p["call_sid"] for p in not_held.json()["participants"]] == ["call-1"]
        bad = await http.post(f"{path}/call-2.json", data={"Muted": "yes"})
        assert bad.status_code == 422 and bad.json()["errors"]
        gone = await http.delete(f"{path}/call-2.json")
        assert gone.status_code == 204
        again = await http.get(f"{path}/call-2.json")
        assert again.status_code == 404
        # the last participant leaving completes the conference
        await http.delete(f"{path}/call-1.json")
        conference = await http.get(
            f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}.json"
        )
        assert conference.json()["status"] == "completed"
    assert stack.engine.get(conference_sid) is None


async def test_healthz_and_metrics(stack: Stack, server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        stack.app.state.ready = False
        assert (await http.get("/healthz")).status_code == 503
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert "confstream_conferences_active" in metrics.text
        method = await http.put(f"/2010-04-01/Accounts/{stack.account.sid}.json", auth=stack.auth())
        assert method.status_code == 405 and method.json()["code"] == 20004


async def test_domain_errors_answer_their_http_status(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """Refusals raised by the services (confstream.errors) reach the caller with the status,
    code and message of the error table (docs/errors.md)."""
    conference_sid = await stack.join("call-1", "room")
    path = f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}.json"

    def more_info(code: int) -> str:
        return f"https://www.twilio.com/docs/errors/{code}"

    refused = await client.post(path, data={"AnnounceUrl": "http://10.1.2.3/a.wav"})
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == 21205 and body["status"] == 422
    assert body["message"].startswith("AnnounceUrl refused: ")
    assert body["errors"] == [body["message"]]

    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = await client.post(
        path, data={"AnnounceUrl": f"http://127.0.0.1:{closed_port}/a.wav", "AnnounceMethod": "GET"}
    )
    assert unreachable.status_code == 502
    body = unreachable.json()
    assert body["code"] == 11200 and body["more_info"] == more_info(11200)
    assert body["message"].startswith("AnnounceUrl could not be fetched: ")
    assert "errors" not in body

    ended = await client.post(path, data={"Status": "completed"})
    assert ended.status_code == 200 and ended.json()["status"] == "completed"
    late = await client.post(path, data={"AnnounceUrl": "http://10.1.2.3/a.wav"})
    assert late.status_code == 409
    assert late.json() == {
        "code": 21220,
        "message": f"Conference {conference_sid} is not in progress",
        "more_info": more_info(21220),
        "status": 409,
    }
    gone = await client.get(path.replace(".json", "/Participants/call-1.json"))
    assert gone.status_code == 404
    assert gone.json() == {
        "code": 20404,
        "message": "The requested resource Participant call-1 was not found",
        "more_info": more_info(20404),
        "status": 404,
    }
