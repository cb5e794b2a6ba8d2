"""Reading a running cluster from the tests: Redis ownership, REST through any node."""

from __future__ import annotations

from typing import Any

import httpx
import redis

from confstream.cluster import keys
from confstream.tools.cluster import LocalCluster
from confstream.tools.server import Account


def redis_of(cluster: LocalCluster) -> redis.Redis:
    assert cluster.redis is not None
    return redis.Redis.from_url(cluster.redis.url, decode_responses=True)


def owner_of(cluster: LocalCluster, conference_sid: str) -> str | None:
    with redis_of(cluster) as r:
        value = r.get(keys.conference_key(conference_sid))
        return None if value is None else str(value)


def live_conferences(api: httpx.Client) -> list[dict[str, Any]]:
    body = api.get("/Conferences.json", params={"Status": "in-progress", "PageSize": 100})
    assert body.status_code == 200, body.text
    return list(body.json()["conferences"])


def conference(api: httpx.Client, room: str) -> dict[str, Any] | None:
    for conf in live_conferences(api):
        if conf["friendly_name"] == room:
            return conf
    return None


def participants(api: httpx.Client, conference_sid: str) -> list[dict[str, Any]]:
    body = api.get(f"/Conferences/{conference_sid}/Participants.json")
    assert body.status_code == 200, body.text
    return list(body.json()["participants"])


def apis(cluster: LocalCluster, account: Account) -> dict[str, httpx.Client]:
    """One REST client per node, by node id."""
    return {node.node_id: node.api(account) for node in cluster.members}


def live_sid(api: httpx.Client, room: str) -> str | None:
    """The ConferenceSid of the live conference named ``room``, if any."""
    found = conference(api, room)
    return None if found is None else str(found["sid"])


def end_live_conferences(api: httpx.Client) -> None:
    """End the account's live conferences (through any node): a test's callers stopped
    without a BYE would otherwise keep their node busy until their RTP times out."""
    for conf in live_conferences(api):
        api.post(f"/Conferences/{conf['sid']}.json", data={"Status": "completed"})
