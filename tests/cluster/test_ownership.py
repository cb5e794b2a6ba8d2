"""Membership, ownership and recovery against a real redis-server and a real store (SQLite
file), without nodes: the rules of docs/cluster.md, "What lives in Redis" and "Failures"."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import update

from confstream.callbacks.webhooks import CallbackSender
from confstream.cluster import keys
from confstream.cluster.membership import Load, Membership, NodeInfo
from confstream.cluster.node import ClusterNode
from confstream.cluster.ownership import Ownership
from confstream.cluster.placement import REASON_NODE_LOST
from confstream.cluster.recovery import Recovery
from confstream.settings import Settings
from confstream.store import Call, Store, open_store, utcnow
from confstream.store.models import (
    CALL_COMPLETED,
    CALL_IN_PROGRESS,
    CONFERENCE_COMPLETED,
    STREAM_STOPPED,
)

from ..callbacks.recorder import http_recorder

LEASE = 2.0


def member(redis: aioredis.Redis, node_id: str) -> Membership:
    info = NodeInfo(node_id, "boot", f"http://127.0.0.1:1/{node_id}", "127.0.0.1:5060", "")
    return Membership(redis, info, LEASE)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'cluster.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_concurrent_claims_give_one_owner(redis_client: aioredis.Redis) -> None:
    nodes = [f"n{n}" for n in range(8)]
    for node in nodes:
        await member(redis_client, node).heartbeat(Load(), keys.STATE_ACTIVE)
    owners = await asyncio.gather(
        *(Ownership(redis_client, node, LEASE).claim_room("AC1", "sales") for node in nodes)
    )
    assert len(set(owners)) == 1
    winner = owners[0]
    assert winner in nodes
    assert await redis_client.get(keys.room_key("AC1", "sales")) == winner
    assert 0 < await redis_client.pttl(keys.room_key("AC1", "sales")) <= LEASE * 1000
    assert await redis_client.smembers(keys.node_keys_set(winner)) == {
        keys.room_key("AC1", "sales")
    }
    # another account's room of the same name is another conference
    other = await Ownership(redis_client, "n7", LEASE).claim_room("AC2", "sales")
    assert other == "n7"


async def test_a_room_held_by_a_dead_node_is_taken_over(redis_client: aioredis.Redis) -> None:
    a, b = Ownership(redis_client, "a", LEASE), Ownership(redis_client, "b", LEASE)
    await member(redis_client, "a").heartbeat(Load(), keys.STATE_ACTIVE)
    assert await a.claim_room("AC", "room") == "a"
    assert await b.claim_room("AC", "room") == "a"  # a is alive: it keeps the room
    await redis_client.delete(keys.node_key("a"))  # a's lease ran out
    assert await b.claim_room("AC", "room") == "b"
    await member(redis_client, "b").heartbeat(Load(), keys.STATE_ACTIVE)
    assert await a.claim_room("AC", "room") == "b"  # b is alive now: it keeps the room


async def test_heartbeat_renews_leases_and_reports_keys_taken_by_another_node(
    redis_client: aioredis.Redis,
) -> None:
    me = member(redis_client, "a")
    owner = Ownership(redis_client, "a", LEASE)
    await owner.bind(keys.conference_key("CF1"))
    await owner.bind(keys.conference_key("CF2"))
    await redis_client.pexpire(keys.conference_key("CF1"), 100)
    lost = await me.heartbeat(Load(participants=3, streams=1, conferences=2), keys.STATE_ACTIVE)
    assert lost == []
    assert await redis_client.pttl(keys.conference_key("CF1")) > 1000
    info = await me.node("a")
    assert info is not None and info.load.participants == 3 and info.http.endswith("/a")
    # CF2 went to b while a could not renew: a learns it on its next beat
    await redis_client.set(keys.conference_key("CF2"), "b")
    lost = await me.heartbeat(Load(), keys.STATE_DRAINING)
    assert lost == [keys.conference_key("CF2")]
    assert await redis_client.smembers(keys.node_keys_set("a")) == {keys.conference_key("CF1")}
    assert (await redis_client.hgetall(keys.node_key("a")))["state"] == keys.STATE_DRAINING
    # releasing is compare-and-delete: b's key stays
    assert await owner.release(keys.conference_key("CF2")) is False
    assert await redis_client.get(keys.conference_key("CF2")) == "b"
    assert await owner.release(keys.conference_key("CF1")) is True


async def test_a_node_whose_lease_expires_is_dead_and_swept_once(
    redis_client: aioredis.Redis, store: Store
) -> None:
    account = await store.create_account()
    conf = await store.create_conference(account.sid, "sales")
    kept = await store.create_conference(account.sid, "support")
    await store.add_participant("CA1", conf.sid, account.sid)
    stream = await store.create_stream(
        conference_sid=conf.sid,
        account_sid=account.sid,
        url="wss://127.0.0.1:1/media",
        status_callback="http://127.0.0.1:1/cb",
    )
    dead = member(redis_client, "dead")
    await dead.heartbeat(Load(), keys.STATE_ACTIVE)
    lost_owner = Ownership(redis_client, "dead", LEASE)
    assert await lost_owner.claim_room(account.sid, "sales") == "dead"
    await lost_owner.bind(keys.conference_key(conf.sid))
    await lost_owner.bind(keys.call_key("CA1"))

    reported: list[tuple[Any, str]] = []

    def report(records: Iterable[tuple[Any, str]]) -> None:
        reported.extend(records)

    recovery = Recovery(store, report, None)

    async def on_lost(node_id: str, sids: list[str], calls: list[str]) -> None:
        await recovery.end_conferences(sids, node_id)

    survivors = [member(redis_client, "s1"), member(redis_client, "s2")]
    for survivor in survivors:
        await survivor.heartbeat(Load(), keys.STATE_ACTIVE)
    assert await survivors[0].dead_nodes() == []
    await redis_client.pexpire(keys.node_key("dead"), 50)
    await asyncio.sleep(0.2)
    assert await survivors[0].dead_nodes() == ["dead"]
    swept = await asyncio.gather(*(s.sweep("dead", on_lost) for s in survivors))
    assert sorted(swept) == [False, True]  # one holds the lock, the other leaves it

    ended = await store.get_conference(conf.sid)
    assert ended is not None and ended.status == CONFERENCE_COMPLETED
    assert ended.reason_ended == REASON_NODE_LOST
    participant = await store.get_participant("CA1")
    assert participant is not None and participant.status == "completed"
    stopped = await store.get_stream_by_sid(stream.sid)
    assert stopped is not None and stopped.status == STREAM_STOPPED
    assert stopped.error_code == 31990 and "dead" in (stopped.error_message or "")
    assert [(row.sid, token) for row, token in reported] == [(stream.sid, account.auth_token)]
    untouched = await store.get_conference(kept.sid)
    assert untouched is not None and untouched.status == "in-progress"
    for key in (
        keys.room_key(account.sid, "sales"),
        keys.conference_key(conf.sid),
        keys.call_key("CA1"),
        keys.node_keys_set("dead"),
    ):
        assert not await redis_client.exists(key), key
    assert await redis_client.smembers(keys.NODES) == {"s1", "s2"}
    assert await survivors[1].dead_nodes() == []


async def test_every_node_gets_the_same_nonce_key(redis_client: aioredis.Redis) -> None:
    secrets = {await member(redis_client, f"n{n}").shared_secret() for n in range(3)}
    assert len(secrets) == 1
    assert len(secrets.pop()) == 32


async def test_a_dead_nodes_calls_are_ended_with_their_callbacks(
    redis_client: aioredis.Redis, store: Store
) -> None:
    account = await store.create_account()
    answered = await store.create_call(
        account.sid, from_uri="sip:a@x", to_uri="sip:room@y", status=CALL_IN_PROGRESS
    )
    ringing = await store.create_call(account.sid, from_uri="sip:b@x", to_uri="sip:room@y")
    quiet = await store.create_call(
        account.sid, from_uri="sip:c@x", to_uri="sip:room@y", status=CALL_IN_PROGRESS
    )
    finished = await store.create_call(
        account.sid, from_uri="sip:d@x", to_uri="sip:room@y", status=CALL_COMPLETED
    )
    stream = await store.create_stream(
        call_sid=answered.sid, account_sid=account.sid, url="wss://127.0.0.1:1/media"
    )
    reported: list[tuple[Any, str]] = []
    async with http_recorder() as web:
        async with store.session() as session, session.begin():
            await session.execute(
                update(Call)
                .where(Call.sid.in_([answered.sid, ringing.sid, finished.sid]))
                .values(status_callback=web.url("/progress"))
            )
            # asked for ringing only: no callback at the end
            await session.execute(
                update(Call)
                .where(Call.sid == quiet.sid)
                .values(status_callback=web.url("/progress"), status_callback_event="ringing")
            )
        callbacks = CallbackSender(Settings(allowed_networks=["127.0.0.0/8"]))
        recovery = Recovery(store, reported.extend, callbacks)

        async def on_lost(node_id: str, conferences: list[str], calls: list[str]) -> None:
            assert conferences == []
            assert await recovery.end_calls(calls, node_id) == 3

        dead = Ownership(redis_client, "dead", LEASE)
        await member(redis_client, "dead").heartbeat(Load(), keys.STATE_ACTIVE)
        for call in (answered, ringing, quiet, finished):
            await dead.bind(keys.call_key(call.sid))
        survivor = member(redis_client, "s1")
        await redis_client.delete(keys.node_key("dead"))
        assert await survivor.dead_nodes() == ["dead"]
        assert await survivor.sweep("dead", on_lost)
        await web.wait_for(lambda: len(web.for_path("/progress")) == 2)
        await callbacks.close()

    rows = {sid: await store.get_call(sid) for sid in (answered.sid, ringing.sid, quiet.sid)}
    statuses = {sid: row.status for sid, row in rows.items() if row is not None}
    assert statuses == {answered.sid: "completed", ringing.sid: "failed", quiet.sid: "completed"}
    done = rows[answered.sid]
    assert done is not None and done.end_time is not None and done.duration is not None
    progress = sorted((r.form for r in web.for_path("/progress")), key=lambda form: form["From"])
    assert [(p["CallSid"], p["CallStatus"]) for p in progress] == [
        (answered.sid, "completed"),
        (ringing.sid, "failed"),
    ]
    assert progress[0]["CallbackSource"] == "call-progress-events"
    assert progress[0]["CallDuration"] == str(done.duration)
    assert "CallDuration" not in progress[1]
    assert "x-twilio-signature" in web.for_path("/progress")[0].headers
    stopped = await store.get_stream_by_sid(stream.sid)
    assert stopped is not None and stopped.status == STREAM_STOPPED
    assert stopped.error_code == 31990 and "dead" in (stopped.error_message or "")
    assert [(row.sid, token) for row, token in reported] == [(stream.sid, account.auth_token)]
    assert not await redis_client.exists(keys.node_keys_set("dead"))


async def test_the_orphan_sweep_ends_live_calls_no_node_holds(
    redis_client: aioredis.Redis, store: Store
) -> None:
    """A live call whose node died before publishing it (or whose key Redis lost), in no
    conference, is ended by the orphan sweep; a call a node holds, or a young one, is not."""
    account = await store.create_account()
    orphan, ringing, held, young = [
        await store.create_call(
            account.sid, from_uri=f"sip:{n}@x", to_uri="sip:app@y", status=status
        )
        for n, status in enumerate([CALL_IN_PROGRESS, "ringing", CALL_IN_PROGRESS, "ringing"])
    ]
    async with store.session() as session, session.begin():
        await session.execute(
            update(Call)
            .where(Call.sid.in_([orphan.sid, ringing.sid, held.sid]))
            .values(date_created=utcnow() - dt.timedelta(seconds=60))
        )
    await Ownership(redis_client, "other", LEASE).bind(keys.call_key(held.sid))
    settings = Settings(cluster_redis_url="redis://unused", node_id="sweeper", cluster_lease=LEASE)
    node = ClusterNode(settings, redis_client)
    node.recovery = Recovery(store, lambda records: None, None)
    await node._sweep_orphans()
    rows = [await store.get_call(c.sid) for c in (orphan, ringing, held, young)]
    assert [row.status if row else None for row in rows] == [
        "completed",
        "failed",
        "in-progress",
        "ringing",
    ]
