"""The Account resource (docs/api.md, Account): the shape the Twilio and SignalWire SDKs read,
on both base paths, with and without ``.json``; ``GET /Accounts`` lists only the caller."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
from twilio.rest import Client

from .stack import Stack

BASES = ("/api/laml/2010-04-01", "/2010-04-01")
ACCOUNT_KEYS = {
    "sid",
    "auth_token",
    "friendly_name",
    "status",
    "type",
    "owner_account_sid",
    "date_created",
    "date_updated",
    "uri",
    "subresource_uris",
}
PAGE_KEYS = {
    "first_page_uri",
    "next_page_uri",
    "previous_page_uri",
    "page",
    "page_size",
    "start",
    "end",
    "uri",
}


async def test_fetch_account_on_both_base_paths(stack: Stack, client: httpx.AsyncClient) -> None:
    sid = stack.account.sid
    for base in BASES:
        bodies = []
        for suffix in ("", ".json"):
            answer = await client.get(f"{base}/Accounts/{sid}{suffix}")
            assert answer.status_code == 200, answer.text
            bodies.append(answer.json())
        assert bodies[0] == bodies[1]
        body = bodies[0]
        assert ACCOUNT_KEYS <= set(body)
        assert body["sid"] == sid
        assert body["auth_token"] == stack.account.auth_token
        assert body["friendly_name"] == "main"
        assert body["status"] == "active"
        assert body["type"] == "Full"
        assert body["owner_account_sid"] == sid
        for key in ("date_created", "date_updated"):
            stamp = dt.datetime.strptime(body[key], "%a, %d %b %Y %H:%M:%S %z")
            assert stamp.utcoffset() == dt.timedelta(0)
        assert body["uri"] == f"{base}/Accounts/{sid}.json"
        # only what exists: every subresource URI answers
        assert body["subresource_uris"] == {
            "conferences": f"{base}/Accounts/{sid}/Conferences.json"
        }
        conferences = await client.get(body["subresource_uris"]["conferences"])
        assert conferences.status_code == 200 and conferences.json()["conferences"] == []


async def test_another_accounts_sid_answers_401(stack: Stack, client: httpx.AsyncClient) -> None:
    """Valid credentials never reveal another account, not even its existence."""
    theirs = await client.get(f"/2010-04-01/Accounts/{stack.other.sid}.json")
    unknown = await client.get("/2010-04-01/Accounts/00000000-0000-0000-0000-000000000000.json")
    for answer in (theirs, unknown):
        assert answer.status_code == 401
        assert answer.json()["code"] == 20003
        assert stack.other.auth_token not in answer.text
    assert theirs.json() == unknown.json()


async def test_list_accounts_shows_only_the_callers_own(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    for base in BASES:
        for suffix in ("", ".json"):
            answer = await client.get(f"{base}/Accounts{suffix}")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert PAGE_KEYS | {"accounts"} <= set(body)
            assert [a["sid"] for a in body["accounts"]] == [stack.account.sid]
            assert body["accounts"][0]["auth_token"] == stack.account.auth_token
            assert body["accounts"][0]["uri"] == f"{base}/Accounts/{stack.account.sid}.json"
            assert body["next_page_uri"] is None and body["previous_page_uri"] is None
            assert body["page"] == 0 and body["page_size"] == 50
            assert body["first_page_uri"].startswith(f"{base}/Accounts.json?")
    # the other account lists itself, never the first one
    theirs = await client.get("/2010-04-01/Accounts.json", auth=stack.auth(stack.other))
    assert [a["sid"] for a in theirs.json()["accounts"]] == [stack.other.sid]


async def test_list_accounts_filters_and_paging(stack: Stack, client: httpx.AsyncClient) -> None:
    path = "/2010-04-01/Accounts.json"

    async def sids(**params: str) -> list[str]:
        answer = await client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return [a["sid"] for a in answer.json()["accounts"]]

    own = [stack.account.sid]
    assert await sids(FriendlyName="main") == own
    assert await sids(FriendlyName="other") == []
    assert await sids(Status="active") == own
    assert await sids(Status="suspended") == []
    assert await sids(PageSize="1") == own
    assert await sids(Page="1", PageSize="1") == []
    bad = await client.get(path, params={"PageSize": "0"})
    assert bad.status_code == 422
    unauthenticated = await client.get(path, auth=(stack.account.sid, "wrong"))
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == 20003


async def test_twilio_sdk_fetches_and_lists_the_account(stack: Stack, server_url: str) -> None:
    client = Client(stack.account.sid, stack.account.auth_token)
    client.api.base_url = server_url

    account = await asyncio.to_thread(lambda: client.api.v2010.accounts(stack.account.sid).fetch())
    assert account.sid == stack.account.sid
    assert account.auth_token == stack.account.auth_token
    assert account.friendly_name == "main"
    assert account.status == "active" and account.type == "Full"
    assert account.owner_account_sid == stack.account.sid
    assert account.date_created is not None and account.date_created.tzinfo is not None
    listed = await asyncio.to_thread(lambda: client.api.v2010.accounts.list())
    assert [a.sid for a in listed] == [stack.account.sid]
    # the SDK's own navigation from the account to its conferences
    conferences = await asyncio.to_thread(lambda: account.conferences.list())
    assert conferences == []
