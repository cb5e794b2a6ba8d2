"""Create/stop/list/fetch Conference Streams: validation, naming, lifecycle (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest

from .stack import Stack


@pytest.fixture
async def silent_tcp() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: a stream to it stays ``queued``."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def streams_path(stack: Stack, conference_sid: str) -> str:
    return f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}/Streams"


async def wait_status(stack: Stack, sid: str, status: str) -> None:
    for _ in range(500):
        row = await stack.store.get_stream_by_sid(sid)
        if row is not None and row.status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"stream {sid} never reached {status}")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, 21205),
        ({"Url": "wss://example.com/s", "Track": "sideways"}, 31941),
        ({"Url": "wss://example.com/s", "StreamCodec": "opus"}, 20001),
        ({"Url": "wss://example.com/s", "StreamRealTime": "maybe"}, 20001),
        ({"Url": "wss://example.com/s", "StatusCallbackMethod": "PUT"}, 21209),
        ({"Url": "wss://example.com/s", "StatusCallback": "ftp://example.com/cb"}, 21609),
        ({"Url": "wss://example.com/s", "StatusCallback": "http://10.1.2.3/cb"}, 21609),
        ({"Url": "wss://example.com/s", "Parameter100.Name": "x"}, 20001),
        ({"Url": "wss://example.com/s", "Parameter1.Value": "orphan"}, 20001),
        (
            {"Url": "wss://example.com/s", "Parameter1.Name": "n", "Parameter1.Value": "v" * 499},
            20001,
        ),
        ({"Url": "relative/path"}, 21205),
    ],
)
async def test_create_validation(
    stack: Stack, client: httpx.AsyncClient, params: dict[str, str], code: int
) -> None:
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(f"{streams_path(stack, conference_sid)}.json", data=params)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == code
    assert body["status"] == 422
    assert isinstance(body["errors"], list) and body["errors"]
    assert await stack.store.list_streams(conference_sid) == []


async def test_several_problems_reported_together(stack: Stack, client: httpx.AsyncClient) -> None:
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(
        streams_path(stack, conference_sid), data={"Track": "x", "StreamCodec": "y"}
    )
    assert answer.status_code == 422
    assert len(answer.json()["errors"]) == 3


@pytest.mark.parametrize(
    "url",
    [
        "ws://example.com/s",
        "WS://example.com/s",
        "https://example.com/s",
        "http://example.com/s",
        "wss:///no-host",
        "wss://example.com:99999/",
        "wss://exa mple.com/",
    ],
)
async def test_non_wss_url_is_refused_with_400_31922(
    stack: Stack, client: httpx.AsyncClient, url: str
) -> None:
    """Refused before anything is stored or started: no stream record, no callbacks."""
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(
        streams_path(stack, conference_sid), data={"Url": url, "Name": "plain"}
    )
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == 31922 and body["status"] == 400
    assert body["more_info"].endswith("/31922")
    assert await stack.store.list_streams(conference_sid) == []
    assert stack.streams.active(conference_sid) == []


async def test_relative_url_on_a_ws_base_is_refused(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    await stack.store.update_account(stack.account.sid, stream_base_url="ws://example.com/base/")
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(streams_path(stack, conference_sid), data={"Url": "media"})
    assert answer.status_code == 400 and answer.json()["code"] == 31922
    assert "ws://example.com/base/media" in answer.json()["message"]
    assert await stack.store.list_streams(conference_sid) == []


async def test_policy_refusal_stays_on_the_stream(stack: Stack, client: httpx.AsyncClient) -> None:
    """A wss:// URL whose address the outbound policy refuses is accepted, then stopped with
    31922 (the address is known only when connecting)."""
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(
        streams_path(stack, conference_sid), data={"Url": "wss://10.1.2.3/s", "Name": "private"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    await wait_status(stack, body["sid"], "stopped")
    fetched = await client.get(f"{streams_path(stack, conference_sid)}/{body['sid']}.json")
    assert fetched.json()["status"] == "stopped"
    assert fetched.json()["error_code"] == 31922


async def test_stream_lifecycle_by_name(
    stack: Stack, client: httpx.AsyncClient, silent_tcp: int
) -> None:
    conference_sid = await stack.join("call-1", "room")
    path = streams_path(stack, conference_sid)
    url = f"wss://127.0.0.1:{silent_tcp}/media"
    created = await client.post(
        path,
        data={
            "Url": url,
            "Name": "recorder",
            "Track": "inbound_track",
            "StreamCodec": "L16@16000h",
            "StreamRealTime": "True",
            "Parameter1.Name": "a",
            "Parameter1.Value": "1",
            "AuthorizationBearerToken": "secret-token",
        },
    )
    assert created.status_code == 200, created.text
    body = created.json()
    for key in ("account_sid", "conference_sid", "date_created", "date_updated", "sid", "uri"):
        assert body[key]
    assert body["status"] == "queued"
    assert (body["track"], body["codec"]) == ("inbound_track", "L16@16000h")
    assert body["error_code"] is None and body["error_message"] is None
    assert "secret-token" not in created.text
    row = await stack.store.get_stream_by_sid(body["sid"])
    assert row is not None and row.url == url and row.realtime is True

    clash = await client.post(path, data={"Url": url, "Name": "recorder"})
    assert clash.status_code == 409 and clash.json()["code"] == 20409

    listed = await client.get(f"{path}.json")
    assert [s["sid"] for s in listed.json()["streams"]] == [body["sid"]]

    stopped = await client.post(f"{path}/recorder.json", data={"Status": "stopped"})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["sid"] == body["sid"]
    assert stopped.json()["status"] == "stopped"
    again = await client.post(f"{path}/{body['sid']}", data={"Status": "stopped"})
    assert again.status_code == 200 and again.json()["status"] == "stopped"
    history = [h.status for h in await stack.store.stream_history(body["sid"])]
    assert history[0] == "queued" and history[-1] == "stopped"

    # the name is free again once the first stream stopped
    reused = await client.post(path, data={"Url": url, "Name": "recorder"})
    assert reused.status_code == 200

    bad_status = await client.post(f"{path}/recorder", data={"Status": "paused"})
    assert bad_status.status_code == 422
    unknown = await client.post(f"{path}/no-such-stream", data={"Status": "stopped"})
    assert unknown.status_code == 404 and unknown.json()["code"] == 20404


async def test_relative_url_uses_account_base(stack: Stack, client: httpx.AsyncClient) -> None:
    await stack.store.update_account(stack.account.sid, stream_base_url="wss://10.1.2.3/base/")
    conference_sid = await stack.join("call-1", "room")
    created = await client.post(streams_path(stack, conference_sid), data={"Url": "media?x=1"})
    assert created.status_code == 200, created.text
    row = await stack.store.get_stream_by_sid(created.json()["sid"])
    assert row is not None and row.url == "wss://10.1.2.3/base/media?x=1"


async def test_conference_ended_streams_stop_and_21220(
    stack: Stack, client: httpx.AsyncClient, silent_tcp: int
) -> None:
    conference_sid = await stack.join("call-1", "room")
    path = streams_path(stack, conference_sid)
    created = await client.post(path, data={"Url": f"wss://127.0.0.1:{silent_tcp}/"})
    assert created.status_code == 200
    ended = await client.post(
        f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/{conference_sid}.json",
        data={"Status": "completed"},
    )
    assert ended.status_code == 200 and ended.json()["status"] == "completed"
    row = await stack.store.get_stream_by_sid(created.json()["sid"])
    assert row is not None and row.status == "stopped"
    late = await client.post(path, data={"Url": "wss://example.com/"})
    assert late.status_code == 409 and late.json()["code"] == 21220
    unknown = await client.post(
        f"/2010-04-01/Accounts/{stack.account.sid}/Conferences/nope/Streams.json",
        data={"Url": "wss://example.com/"},
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == 20404


ADDRESSABLE_NAMES = [
    "with space",
    "plus+sign",
    "ünïcödé 名前",
    "semi;colon,comma=eq&amp",
    "dots.in.name",
    "...",
    "emoji 🎧",
    "x" * 255,
]


async def test_names_can_be_addressed_again(
    stack: Stack, client: httpx.AsyncClient, silent_tcp: int
) -> None:
    """Every Name the API accepts can be fetched and stopped again, percent-encoded as SDKs
    do (``quote(name, safe="")``), with and without ``.json``; the raw form works too where
    an HTTP client can send it (httpx quotes what must be quoted)."""
    conference_sid = await stack.join("call-1", "room")
    path = streams_path(stack, conference_sid)
    url = f"wss://127.0.0.1:{silent_tcp}/media"
    for name in ADDRESSABLE_NAMES:
        created = await client.post(f"{path}.json", data={"Url": url, "Name": f" {name} "})
        assert created.status_code == 200, (name, created.text)
        sid = created.json()["sid"]
        assert created.json()["name"] == name
        encoded = quote(name, safe="")
        for suffix in (".json", ""):
            fetched = await client.get(f"{path}/{encoded}{suffix}")
            assert fetched.status_code == 200, (name, fetched.text)
            assert fetched.json()["sid"] == sid
        raw = await client.get(f"{path}/{name}.json")
        assert raw.status_code == 200 and raw.json()["sid"] == sid, name
        stopped = await client.post(f"{path}/{encoded}.json", data={"Status": "stopped"})
        assert stopped.status_code == 200, (name, stopped.text)
        assert stopped.json()["sid"] == sid and stopped.json()["status"] == "stopped"


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "a\\b",
        "what?",
        "hash#tag",
        "100%",
        "line\nbreak",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "sep\u2028arator",
        ".",
        "..",
        "stream.json",
        "x" * 256,
    ],
)
async def test_unaddressable_names_are_refused(
    stack: Stack, client: httpx.AsyncClient, name: str
) -> None:
    conference_sid = await stack.join("call-1", "room")
    answer = await client.post(
        f"{streams_path(stack, conference_sid)}.json",
        data={"Url": "wss://10.1.2.3/s", "Name": name},
    )
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == 20001 and body["errors"]
    assert "Name" in body["message"]
    assert await stack.store.list_streams(conference_sid) == []


async def test_stream_list_status_filter(stack: Stack, client: httpx.AsyncClient) -> None:
    conference_sid = await stack.join("call-1", "room")
    path = f"{streams_path(stack, conference_sid)}.json"
    created = await client.post(path, data={"Url": "wss://10.1.2.3/s"})
    assert created.status_code == 200
    await wait_status(stack, created.json()["sid"], "stopped")
    stopped = await client.get(path, params={"Status": "stopped"})
    assert [s["sid"] for s in stopped.json()["streams"]] == [created.json()["sid"]]
    queued = await client.get(path, params={"Status": "queued"})
    assert queued.json()["streams"] == []
    bad = await client.get(path, params={"Status": "running"})
    assert bad.status_code == 422 and bad.json()["code"] == 20001
