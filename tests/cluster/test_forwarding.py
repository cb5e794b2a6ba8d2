"""REST forwarding (docs/cluster.md, "Routing of a REST call"): the middleware in front of a
node's API, a real ClusterNode on a real redis-server, and a real HTTP server as the owner."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from confstream.api.cluster import FORWARDED_BY, SERVED_BY, ForwardToOwner, routing_keys
from confstream.cluster import keys
from confstream.cluster.membership import Load
from confstream.cluster.node import ClusterNode
from confstream.cluster.ownership import Ownership
from confstream.cluster.recovery import Recovery
from confstream.settings import Settings
from confstream.store import open_store
from confstream.tools.cluster import RedisServer
from confstream.tools.net import free_port

from ..callbacks.recorder import Recorder, http_recorder
from .test_ownership import member

BASE = "/api/laml/2010-04-01/Accounts/AC1"


async def local(request: Request) -> PlainTextResponse:
    return PlainTextResponse("local")


@pytest.fixture
async def owner() -> AsyncIterator[Recorder]:
    async with http_recorder() as rec:
        yield rec


@pytest.fixture
async def api(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, ClusterNode]]:
    settings = Settings(
        cluster_redis_url=redis_server.url,
        node_id="me",
        cluster_heartbeat=0.5,
        cluster_lease=2.0,
        http_listen="127.0.0.1:1",
        sip_listen="127.0.0.1:2",
        callback_timeout=2.0,
    )
    store = await open_store(f"sqlite:///{tmp_path / 'fwd.db'}")
    node = ClusterNode(settings)
    await node.connect()

    async def end_local(sid: str) -> None:
        return None

    await node.prepare(Recovery(store, lambda records: None, None), Load, end_local)
    await node.start(http="http://127.0.0.1:1", sip="127.0.0.1:2", media="127.0.0.1")
    inner = Starlette(routes=[Route("/{path:path}", local, methods=["GET", "POST", "DELETE"])])
    async with httpx.AsyncClient() as forwards:
        app = ForwardToOwner(inner, node, forwards)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client, node
    await node.stop()
    await store.close()


def test_routing_keys() -> None:
    conf = [keys.conference_key("CF1"), keys.room_key("AC1", "CF1")]
    assert routing_keys(f"{BASE}/Conferences/CF1.json") == conf
    assert routing_keys(f"{BASE}/Conferences/CF1/Participants/CA1") == conf
    assert routing_keys("/2010-04-01/Accounts/AC1/Conferences/CF1/Streams") == conf
    assert routing_keys(f"{BASE}/Conferences/team%20a/Participants.json")[1] == keys.room_key(
        "AC1", "team a"
    )
    assert routing_keys(f"{BASE}/Calls/CA9.json") == [keys.call_key("CA9")]
    assert routing_keys(f"{BASE}/Conferences.json") == []
    assert routing_keys(f"{BASE}/Conferences") == []
    assert routing_keys("/healthz") == []


async def test_changes_go_to_the_owner_with_the_callers_credentials(
    api: tuple[httpx.AsyncClient, ClusterNode], owner: Recorder
) -> None:
    client, node = api
    other = member(node.redis, "other")
    other.me = dataclasses.replace(other.me, http=owner.base_url)
    await other.heartbeat(Load(), keys.STATE_ACTIVE)
    await Ownership(node.redis, "other", 2.0).bind(keys.conference_key("CF1"))
    await Ownership(node.redis, "other", 2.0).bind(keys.call_key("CA1"))
    await Ownership(node.redis, "me", 2.0).bind(keys.conference_key("CF2"))

    path = f"{BASE}/Conferences/CF1/Participants/CA1.json"
    answer = await client.post(
        path, params={"x": "1"}, data={"Muted": "true"}, auth=("AC1", "token")
    )
    assert answer.status_code == 200 and answer.text == "ok"
    assert answer.headers[SERVED_BY] == "other"
    [seen] = owner.requests
    assert (seen.method, seen.path, seen.query) == ("POST", path, "x=1")
    assert seen.form == {"Muted": "true"}
    assert seen.headers["authorization"] == answer.request.headers["authorization"]
    assert seen.headers[FORWARDED_BY] == "me"

    # reads are served here from the shared store; so are forwarded requests and our own
    assert (await client.get(path)).text == "local"
    assert (await client.post(path, headers={FORWARDED_BY: "x"})).text == "local"
    assert (await client.post(f"{BASE}/Conferences/CF2.json")).text == "local"
    assert (await client.post(f"{BASE}/Conferences/CF9.json")).text == "local"
    calls = await client.post(f"{BASE}/Calls/CA1.json", data={"Status": "completed"})
    assert calls.headers[SERVED_BY] == "other"
    assert len(owner.requests) == 2

    # a dial-out into a conference named by its FriendlyName goes to the room's owner
    assert await Ownership(node.redis, "other", 2.0).claim_room("AC1", "sales") == "other"
    named = await client.post(f"{BASE}/Conferences/sales/Participants.json", data={"To": "x"})
    assert named.headers[SERVED_BY] == "other" and len(owner.requests) == 3

    # the owner's lease is gone: served here (its conferences are being ended)
    await node.redis.delete(keys.node_key("other"))
    assert (await client.post(path)).text == "local"


async def test_an_owner_that_does_not_answer_gives_503(
    api: tuple[httpx.AsyncClient, ClusterNode],
) -> None:
    client, node = api
    other = member(node.redis, "gone")
    other.me = dataclasses.replace(other.me, http=f"http://127.0.0.1:{free_port()}")
    await other.heartbeat(Load(), keys.STATE_ACTIVE)
    await Ownership(node.redis, "gone", 2.0).bind(keys.conference_key("CF1"))
    answer = await client.post(f"{BASE}/Conferences/CF1.json", data={"Status": "completed"})
    assert answer.status_code == 503
    assert answer.json()["code"] == 20503
