"""Reading a running cluster from the tests: Redis ownership, REST through any node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import redis

from confstream.cluster import keys
from confstream.tools.cluster import LocalCluster
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import Account
from confstream.tools.sipp import caller_command, hung_up_caller_scenario

from ..integration.peers import tone_wav


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


async def start_hung_up_caller(
    workdir: Path, cluster: LocalCluster, account: Account, room: str, within: float
) -> asyncio.subprocess.Process:
    """A sipp caller of ``room`` through Kamailio that talks until the node hangs up: it exits
    0 only when the node's BYE comes within ``within`` seconds of its ACK, through Kamailio
    (its top Via is Kamailio's)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    wav = tone_wav(workdir / "tone.ulaw.wav", 500.0, 2.0, fmt="ulaw")
    kamailio_via = rf"^ *SIP/2\.0/UDP 127\.0\.0\.1:{cluster.sip_port};"
    scenario = hung_up_caller_scenario(workdir / "hung-up.xml", wav, within, kamailio_via)
    command = caller_command(
        scenario,
        f"127.0.0.1:{cluster.sip_port}",
        room,
        account.sid,
        account.token,
        sip_port=free_port(),
        media_port=free_media_port(),
        timeout_s=int(within) + 30,
    )
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=workdir
    )
