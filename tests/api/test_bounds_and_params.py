"""Bounded inputs and no silent no-ops, over real HTTP (uvicorn on uvloop) and the twilio SDK.

* request bodies: 413 (20413) over the byte limit, before reading a declared length, while
  streaming a chunked body; a stream create with 99 parameters still fits; form fields bounded;
* paging and date filters: strict digits and ``YYYY-MM-DD``, 422 (20001), never a 500;
* participant parameters: each one acts or is refused (20501, 21209), and a refused request
  changes nothing;
* Twilio's field values: participant ``status``, ``queue_time``, conference
  ``reason_conference_ended``, ``call_sid_ending_conference``, ``recordings``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException

from confstream.api.common import MAX_OFFSET

from .stack import Stack
from .test_api_http import sdk


def conferences_path(stack: Stack) -> str:
    return f"/2010-04-01/Accounts/{stack.account.sid}/Conferences"


def participants_path(stack: Stack, conference_sid: str) -> str:
    return f"{conferences_path(stack)}/{conference_sid}/Participants"


async def raw_exchange(server_url: str, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send ``head`` then ``body_parts`` on a plain TCP connection and read what the server
    answers until it closes. Sending stops quietly when the server has closed."""
    host, port = server_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        for part in body_parts:
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


# ------------------------------------------------------------------------ body limits
async def test_declared_length_over_the_limit_is_refused_unread(
    stack: Stack, server_url: str
) -> None:
    """100 MB announced, 10 bytes sent: the 413 comes at once, the body is never awaited."""
    conference_sid = await stack.join("call-1", "room")
    auth = stack.basic()["Authorization"]
    head = (
        f"POST {conferences_path(stack)}/{conference_sid}/Streams.json HTTP/1.1\r\n"
        f"Host: test\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 100000000\r\n\r\n"
    ).encode()
    answer = await raw_exchange(server_url, head, [b"Url=wss://"])
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
    assert b'"code":20413' in rest and b'"status":413' in rest
    assert b"connection: close" in rest.lower()
    assert await stack.store.list_streams(conference_sid) == []


async def test_chunked_body_is_counted_while_streaming(stack: Stack, server_url: str) -> None:
    """A chunked body has no length: the server answers 413 as soon as the count goes over,
    before the body has ended (the last chunk is never sent)."""
    limit = stack.settings.api_max_body_bytes
    conference_sid = await stack.join("call-1", "room")
    auth = stack.basic()["Authorization"]
    head = (
        f"POST {conferences_path(stack)}/{conference_sid}.json HTTP/1.1\r\n"
        f"Host: test\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 2)
    # no terminating 0-length chunk: the answer must not wait for the end of the body
    answer = await raw_exchange(server_url, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":20413' in answer


async def test_chunked_body_within_the_limit_is_served(stack: Stack, server_url: str) -> None:
    conference_sid = await stack.join("call-1", "room")

    async def parts() -> Any:
        yield b"Muted=tr"
        yield b"ue"

    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        answer = await http.post(
            f"{participants_path(stack, conference_sid)}/call-1.json",
            content=parts(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["muted"] is True


async def test_largest_stream_create_fits(stack: Stack, server_url: str) -> None:
    """99 parameters of 499 characters each, every character percent-encoded, with a long Url
    and token: the largest stream create the rules allow for ASCII text is under the limit."""
    conference_sid = await stack.join("call-1", "room")
    data = {
        "Url": "wss://10.1.2.3/" + "p" * 2000,
        "AuthorizationBearerToken": "t" * 4000,
        "StatusCallback": "http://127.0.0.1:9/" + "c" * 1000,
    }
    for index in range(1, 100):
        data[f"Parameter{index}.Name"] = f"name{index}"
        data[f"Parameter{index}.Value"] = '"{}'[index % 3] * (499 - len(f"name{index}"))
    body = httpx.QueryParams(data).__str__().encode()
    assert 140_000 < len(body) < stack.settings.api_max_body_bytes
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        answer = await http.post(
            f"{conferences_path(stack)}/{conference_sid}/Streams.json",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert answer.status_code == 200, answer.text[:300]


async def test_too_many_form_fields(stack: Stack, client: httpx.AsyncClient) -> None:
    conference_sid = await stack.join("call-1", "room")
    limit = stack.settings.api_max_form_fields
    fields = "&".join(f"f{i}=v" for i in range(limit + 1))
    answer = await client.post(
        f"{participants_path(stack, conference_sid)}/call-1.json",
        content=f"Muted=true&{fields}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == 20413
    assert stack.participants["call-1"].muted is False


# ------------------------------------------------------------------------------ paging
@pytest.mark.parametrize(
    "params",
    [
        {"Page": "922337203685477580"},
        {"Page": "-1"},
        {"Page": "1", "PageSize": str(MAX_OFFSET)},
        {"Page": str(MAX_OFFSET // 50 + 1)},
        {"Page": " 1"},
        {"Page": "+1"},
        {"Page": "1_0"},
        {"Page": "\u0661"},  # ARABIC-INDIC DIGIT ONE: int() takes it
        {"Page": ""},
        {"PageSize": "0"},
        {"PageSize": "1001"},
        {"PageSize": "1e3"},
        {"PageSize": "50.0"},
        {"PageToken": "PA-1"},
        {"PageToken": "PA9223372036854775808"},
        {"PageToken": f"PA{MAX_OFFSET + 1}"},
        {"PageToken": "PA"},
        {"PageToken": "50"},
        {"PageToken": ""},
    ],
)
async def test_paging_values_are_bounded(
    stack: Stack, server_url: str, params: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=server_url, auth=stack.auth()) as http:
        answer = await http.get(f"{conferences_path(stack)}.json", params=params)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == 20001 and body["status"] == 422 and body["errors"]


async def test_paging_edges_still_work(stack: Stack, client: httpx.AsyncClient) -> None:
    await stack.join("call-1", "room")
    path = f"{conferences_path(stack)}.json"
    for params in (
        {"Page": str(MAX_OFFSET // 1000), "PageSize": "1000"},
        {"PageToken": f"PA{MAX_OFFSET}"},
    ):
        far = await client.get(path, params=params)
        assert far.status_code == 200, far.text
        assert far.json()["conferences"] == [] and far.json()["next_page_uri"] is None
    first = await client.get(path, params={"PageSize": "1000", "Page": "0"})
    assert len(first.json()["conferences"]) == 1


# ------------------------------------------------------------------------- date filters
@pytest.mark.parametrize("name", ["DateCreated", "DateCreated<", "DateCreated>", "DateUpdated>"])
@pytest.mark.parametrize(
    "value",
    [
        "2020-05-17junk",
        "2020-05-17T00:00:00",
        "2020-05-17 ",
        "20200517",
        "2020-W20-1",
        "",
        "2020-5-7",
    ],
)
async def test_date_filters_are_strict(
    stack: Stack, client: httpx.AsyncClient, name: str, value: str
) -> None:
    answer = await client.get(f"{conferences_path(stack)}.json", params={name: value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == 20001
    assert "YYYY-MM-DD" in answer.json()["message"]


async def test_impossible_day_is_refused(stack: Stack, client: httpx.AsyncClient) -> None:
    answer = await client.get(
        f"{conferences_path(stack)}.json", params={"DateCreated": "2021-02-30"}
    )
    assert answer.status_code == 422 and answer.json()["code"] == 20001


# ------------------------------------------------------------------ participant params
@pytest.mark.parametrize(
    ("params", "code", "status"),
    [
        ({"HoldUrl": "http://127.0.0.1:9/music.wav"}, 20501, 400),
        ({"Hold": "true", "HoldUrl": "http://127.0.0.1:9/music.wav"}, 20501, 400),
        ({"WaitUrl": "http://127.0.0.1:9/wait.wav"}, 20501, 400),
        ({"Coaching": "true"}, 20501, 400),
        ({"CallSidToCoach": "call-2"}, 20501, 400),
        ({"HoldMethod": "PUT"}, 21209, 422),
        ({"WaitMethod": "DELETE"}, 21209, 422),
        ({"AnnounceMethod": "FETCH"}, 21209, 422),
        ({"Coaching": "sometimes"}, 20001, 422),
        ({"BeepOnExit": "loud"}, 20001, 422),
        ({"EndConferenceOnExit": "yes"}, 20001, 422),
    ],
)
async def test_participant_update_refusals_change_nothing(
    stack: Stack,
    client: httpx.AsyncClient,
    params: dict[str, str],
    code: int,
    status: int,
) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    path = f"{participants_path(stack, conference_sid)}/call-1.json"
    answer = await client.post(
        path, data={"Muted": "true", "EndConferenceOnExit": "true", **params}
    )
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code and body["status"] == status
    if code == 20501:
        assert "not supported yet" in body["message"]
    # nothing of the request was applied
    assert stack.participants["call-1"].muted is False
    record = await stack.store.get_participant("call-1")
    assert record is not None
    assert (record.muted, record.end_conference_on_exit) == (False, False)


async def test_participant_update_accepts_what_confstream_does(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """``BeepOnExit=false`` and ``Coaching=false`` state what confstream does; valid
    ``HoldMethod``/``WaitMethod`` alone describe nothing to fetch. Unknown parameters are
    ignored."""
    conference_sid = await stack.join("call-1", "room")
    path = f"{participants_path(stack, conference_sid)}/call-1.json"
    answer = await client.post(
        path,
        data={
            "BeepOnExit": "false",
            "Coaching": "False",
            "HoldMethod": "post",
            "WaitMethod": "GET",
            "Muted": "true",
            "SomethingTwilioNeverDocumented": "x",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["muted"] is True and answer.json()["coaching"] is False
    assert stack.participants["call-1"].muted is True


async def test_coaching_filter(stack: Stack, client: httpx.AsyncClient) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    path = f"{participants_path(stack, conference_sid)}.json"
    coaches = await client.get(path, params={"Coaching": "true"})
    assert coaches.status_code == 200 and coaches.json()["participants"] == []
    others = await client.get(path, params={"Coaching": "false"})
    assert [p["call_sid"] for p in others.json()["participants"]] == ["call-1", "call-2"]
    bad = await client.get(path, params={"Coaching": "maybe"})
    assert bad.status_code == 422 and bad.json()["code"] == 20001


async def test_end_conference_on_exit_left(stack: Stack, client: httpx.AsyncClient) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    await stack.join("call-3", "room")
    path = f"{participants_path(stack, conference_sid)}/call-2.json"
    answer = await client.post(path, data={"EndConferenceOnExit": "true"})
    assert answer.status_code == 200 and answer.json()["end_conference_on_exit"] is True
    await stack.services.leave("call-2", "bye")  # the caller hangs up (SIP BYE)
    conference = (await client.get(f"{conferences_path(stack)}/{conference_sid}.json")).json()
    assert conference["status"] == "completed"
    assert conference["reason_conference_ended"] == "participant-with-end-conference-on-exit-left"
    assert conference["call_sid_ending_conference"] == "call-2"
    assert stack.participants["call-1"].hangups and stack.participants["call-3"].hangups
    assert stack.engine.get(conference_sid) is None


async def test_end_conference_on_exit_false_keeps_the_conference(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    conference_sid = await stack.join("call-1", "room")
    await stack.join("call-2", "room")
    path = f"{participants_path(stack, conference_sid)}/call-2.json"
    await client.post(path, data={"EndConferenceOnExit": "true"})
    await client.post(path, data={"EndConferenceOnExit": "false"})
    await stack.services.leave("call-2", "bye")
    conference = (await client.get(f"{conferences_path(stack)}/{conference_sid}.json")).json()
    assert conference["status"] == "in-progress"
    assert conference["reason_conference_ended"] is None
    assert not stack.participants["call-1"].hangups


# -------------------------------------------------------------- Twilio's field values
async def test_twilio_field_values_through_the_sdk(stack: Stack, server_url: str) -> None:
    client = sdk(stack, server_url)
    ended_by_api = await stack.join("call-1", "room-a")
    kicked = await stack.join("call-2", "room-b")
    left = await stack.join("call-3", "room-c")
    on_exit = await stack.join("call-4", "room-d")
    await stack.join("call-5", "room-d")

    participant = await asyncio.to_thread(
        lambda: client.conferences(ended_by_api).participants("call-1").fetch()
    )
    assert participant.status == "connected"
    assert participant.queue_time is None
    assert participant.coaching is False and participant.call_sid_to_coach is None
    conference = await asyncio.to_thread(lambda: client.conferences(ended_by_api).fetch())
    assert conference.reason_conference_ended is None
    assert conference.call_sid_ending_conference is None
    assert set(conference.subresource_uris) == {"participants", "recordings", "streams"}
    assert conference.subresource_uris["recordings"].endswith(
        f"/Conferences/{ended_by_api}/Recordings.json"
    )
    # list pages that are not 200 raise the SDK's plain TwilioException with the response
    with pytest.raises(TwilioException) as no_recordings:
        await asyncio.to_thread(lambda: client.conferences(ended_by_api).recordings.list())
    response = no_recordings.value.args[1]
    assert response.status_code == 404
    assert '"code":20404' in response.text and "does not record conferences yet" in response.text
    with pytest.raises(TwilioRestException) as no_recording:
        await asyncio.to_thread(lambda: client.conferences(ended_by_api).recordings("RE1").fetch())
    assert no_recording.value.status == 404 and no_recording.value.code == 20404

    # the four ways a conference ends
    await asyncio.to_thread(lambda: client.conferences(ended_by_api).update(status="completed"))
    await asyncio.to_thread(lambda: client.conferences(kicked).participants("call-2").delete())
    await stack.services.leave("call-3", "bye")
    await asyncio.to_thread(
        lambda: (
            client.conferences(on_exit).participants("call-4").update(end_conference_on_exit=True)
        )
    )
    await asyncio.to_thread(lambda: client.conferences(on_exit).participants("call-4").delete())

    expected = {
        ended_by_api: ("conference-ended-via-api", None),
        kicked: ("last-participant-kicked", "call-2"),
        left: ("last-participant-left", "call-3"),
        on_exit: ("participant-with-end-conference-on-exit-kicked", "call-4"),
    }
    for sid, (reason, call_sid) in expected.items():
        done = await asyncio.to_thread(lambda sid=sid: client.conferences(sid).fetch())  # type: ignore[misc]
        assert done.status == "completed"
        assert (done.reason_conference_ended, done.call_sid_ending_conference) == (reason, call_sid)
    listed = await asyncio.to_thread(lambda: client.conferences.list(status="completed"))
    assert {c.reason_conference_ended for c in listed} == {r for r, _ in expected.values()}


async def test_sdk_refusals(stack: Stack, server_url: str) -> None:
    client = sdk(stack, server_url)
    conference_sid = await stack.join("call-1", "room")
    with pytest.raises(TwilioRestException) as hold_url:
        await asyncio.to_thread(
            lambda: (
                client.conferences(conference_sid)
                .participants("call-1")
                .update(hold=True, hold_url="http://127.0.0.1:9/music.wav")
            )
        )
    assert hold_url.value.status == 400 and hold_url.value.code == 20501
    assert stack.participants["call-1"].hold is False
    with pytest.raises(TwilioRestException) as bad_method:
        await asyncio.to_thread(
            lambda: (
                client.conferences(conference_sid)
                .participants("call-1")
                .update(hold_method="PATCH")
            )
        )
    assert bad_method.value.status == 422 and bad_method.value.code == 21209
