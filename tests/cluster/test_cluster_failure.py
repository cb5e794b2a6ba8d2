"""Failures of a cluster with real parts (docs/cluster.md, "Failures"): a node killed with
``kill -9`` (its conferences and streams are ended by a survivor, with callbacks, and its
callers get a fresh conference when they dial again), a node restarted (it ends what its
previous run left and rejoins), a node stopped gracefully (it drains)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import httpx

from confstream.cluster import keys
from confstream.tools.cluster import LocalCluster
from confstream.tools.server import Account
from confstream.tools.tls import Tls

from ..callbacks.recorder import http_recorder
from ..integration.peers import await_for, start_sipp_caller
from ..streams.peers import ws_receiver
from .helpers import (
    apis,
    conference,
    end_live_conferences,
    live_conferences,
    live_sid,
    owner_of,
    participants,
    redis_of,
    start_hung_up_caller,
)

ROOMS = [f"team-{n}" for n in range(6)]


async def _call_rooms(
    cluster: LocalCluster, account: Account, tmp_path: Path, rooms: list[str], seconds: float
) -> list[asyncio.subprocess.Process]:
    procs = []
    for n, room in enumerate(rooms):
        workdir = tmp_path / room
        workdir.mkdir(exist_ok=True)
        procs.append(
            await start_sipp_caller(
                workdir, cluster.sip_port, account, room, 400.0 + 40 * n, seconds
            )
        )
    return procs


def _by_owner(cluster: LocalCluster, api: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for conf in live_conferences(api):
        out.setdefault(str(owner_of(cluster, conf["sid"])), []).append(conf)
    return out


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


async def test_killing_a_node_ends_its_conferences_with_callbacks_and_nothing_else(
    cluster: LocalCluster, tmp_path: Path, tls: Tls
) -> None:
    account = cluster.create_account()
    procs = await _call_rooms(cluster, account, tmp_path, ROOMS, 60.0)
    clients = apis(cluster, account)
    try:
        async with http_recorder() as web, ws_receiver(tls) as rec:
            await await_for(lambda: len(live_conferences(clients["node-1"])) == 6, within=30)
            owned = _by_owner(cluster, clients["node-1"])
            assert set(owned) == {"node-1", "node-2"}, owned
            victim, survivor = "node-1", "node-2"
            lost, kept = owned[victim][0], owned[survivor][0]
            api = clients[survivor]
            created = await asyncio.to_thread(
                api.post,
                f"/Conferences/{lost['sid']}/Streams.json",
                data={
                    "Url": rec.url("/media", host="localhost"),
                    "StatusCallback": web.url("/stream-events"),
                },
            )
            assert created.status_code == 200, created.text
            stream = created.json()
            await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 50, 15)

            lost_calls = [p["call_sid"] for p in participants(api, lost["sid"])]
            assert len(lost_calls) == 1
            cluster.node(victim).stop(kill=True)

            def ended() -> dict[str, Any] | None:
                body = api.get(f"/Conferences/{lost['sid']}.json").json()
                return body if body["status"] == "completed" else None

            record = await await_for(ended, within=20)
            assert record["reason_conference_ended"] == "media-node-lost"
            assert participants(api, lost["sid"]) == []
            # its callers' Call records too, right after (they were answered: completed)
            for call_sid in lost_calls:
                call = await await_for(
                    lambda c=call_sid: (
                        (b := api.get(f"/Calls/{c}.json").json())["status"] == "completed" and b
                    ),
                    within=10,
                )
                assert call["end_time"] is not None
            fetched = api.get(f"/Conferences/{lost['sid']}/Streams/{stream['sid']}.json").json()
            assert fetched["status"] == "stopped"
            assert fetched["error_code"] == 31990
            assert victim in fetched["error_message"]
            await web.wait_for(
                lambda: (
                    [r.form.get("StreamEvent") for r in web.for_path("/stream-events")][-1:]
                    == ["stream-stopped"]
                ),
                timeout=15,
            )
            events = [r.form for r in web.for_path("/stream-events")]
            assert [e["StreamEvent"] for e in events][-2:] == ["stream-error", "stream-stopped"]
            assert events[-2]["StreamSid"] == stream["sid"]
            # every conference of the victim ended; the survivor's go on, REST included
            for conf in owned[victim]:
                body = api.get(f"/Conferences/{conf['sid']}.json").json()
                assert body["status"] == "completed", body
            for conf in owned[survivor]:
                assert live_sid(api, conf["friendly_name"]) == conf["sid"]
            call_sid = participants(api, kept["sid"])[0]["call_sid"]
            muted = await asyncio.to_thread(
                api.post,
                f"/Conferences/{kept['sid']}/Participants/{call_sid}.json",
                data={"Muted": "true"},
            )
            assert muted.status_code == 200 and muted.json()["muted"] is True
            with redis_of(cluster) as r:
                assert not r.exists(keys.node_key(victim))
                assert victim not in r.smembers(keys.NODES)
                assert not r.exists(keys.node_keys_set(victim))
                assert all(not r.exists(keys.conference_key(c["sid"])) for c in owned[victim])

            # a caller of the lost conference dials again: a fresh conference, on a live node
            again = tmp_path / "again"
            again.mkdir()
            proc = await start_sipp_caller(
                again, cluster.sip_port, account, lost["friendly_name"], 700.0, 10.0
            )
            procs.append(proc)
            fresh = await await_for(lambda: conference(api, lost["friendly_name"]), within=20)
            assert fresh["sid"] != lost["sid"]
            # published at the end of the first join, just after the record appears
            await await_for(lambda: owner_of(cluster, fresh["sid"]) == survivor, within=10)
            await await_for(lambda: len(participants(api, fresh["sid"])) == 1, within=10)
    finally:
        await _stop(procs)
        await asyncio.to_thread(end_live_conferences, clients["node-2"])
        for client in clients.values():
            client.close()


async def test_a_restarted_node_ends_what_it_left_and_rejoins(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    account = cluster.create_account()
    procs = await _call_rooms(cluster, account, tmp_path, ROOMS, 60.0)
    clients = apis(cluster, account)
    try:
        await await_for(lambda: len(live_conferences(clients["node-2"])) == 6, within=30)
        owned = _by_owner(cluster, clients["node-2"])
        assert set(owned) == {"node-1", "node-2"}, owned
        node = cluster.node("node-1")
        node.stop(kill=True)
        # at once, before its lease runs out: the new run sweeps the old one itself
        node.proc = None
        node.start()
        api = clients["node-2"]
        for conf in owned["node-1"]:
            body = await await_for(
                lambda c=conf: (
                    (b := api.get(f"/Conferences/{c['sid']}.json").json())["status"] == "completed"
                    and b
                ),
                within=20,
            )
            assert body["reason_conference_ended"] == "media-node-lost"
        for conf in owned["node-2"]:
            assert live_sid(api, conf["friendly_name"]) == conf["sid"]
        with redis_of(cluster) as r:
            info = r.hgetall(keys.node_key("node-1"))
            assert info["state"] == keys.STATE_ACTIVE
            assert info["sip"] == f"127.0.0.1:{node.sip_port}"
            assert "node-1" in r.smembers(keys.NODES)
        # the rejoined node takes calls again (once Kamailio has seen it answer): its old
        # rooms come back to it through Kamailio
        await asyncio.to_thread(node.wait_probed)
        room = owned["node-1"][0]["friendly_name"]
        again = tmp_path / "again"
        again.mkdir()
        procs.append(await start_sipp_caller(again, cluster.sip_port, account, room, 700.0, 10.0))
        fresh = await await_for(lambda: conference(api, room), within=20)
        assert owner_of(cluster, fresh["sid"]) == "node-1"
    finally:
        await _stop(procs)
        await asyncio.to_thread(end_live_conferences, clients["node-2"])
        for client in clients.values():
            client.close()


async def test_a_node_stopped_gracefully_drains(cluster: LocalCluster, tmp_path: Path) -> None:
    account = cluster.create_account()
    # callers who talk until the node hangs up (their sipp exits 0 on the node's BYE)
    procs = [
        await start_hung_up_caller(tmp_path / room, cluster, account, room, 120.0)
        for room in ROOMS[:4]
    ]
    clients = apis(cluster, account)
    try:
        api = clients["node-2"]
        await await_for(lambda: len(live_conferences(api)) == 4, within=30)
        owned = _by_owner(cluster, api)
        assert len(owned.get("node-1", [])) >= 2, owned
        draining = cluster.node("node-1")
        assert draining.proc is not None
        draining.proc.send_signal(signal.SIGTERM)
        with redis_of(cluster) as r:
            await await_for(
                lambda: r.hget(keys.node_key("node-1"), "state") == keys.STATE_DRAINING,
                within=10,
            )
        # new conferences go to the other node, whatever the hash says (their calls outlast
        # the test: they are stopped at its end)
        new_rooms = [f"late-{n}" for n in range(4)]
        procs += await _call_rooms(cluster, account, tmp_path, new_rooms, 120.0)
        await await_for(
            lambda: {c["friendly_name"] for c in live_conferences(api)} >= set(new_rooms),
            within=30,
        )
        for conf in live_conferences(api):
            if conf["friendly_name"] in new_rooms:
                assert owner_of(cluster, conf["sid"]) == "node-2", conf
        # its own conferences go on, and it still serves their REST requests (forwarded by
        # node-2): one is ended, the callers of the others are removed
        for conf in owned["node-1"]:
            live = conference(api, conf["friendly_name"])
            assert live is not None and live["sid"] == conf["sid"]
        assert draining.proc.poll() is None
        by_api, *kicked = owned["node-1"]
        ended = await asyncio.to_thread(
            api.post, f"/Conferences/{by_api['sid']}.json", data={"Status": "completed"}
        )
        assert ended.status_code == 200, ended.text
        assert ended.headers["x-confstream-node"] == "node-1"
        for conf in kicked:
            (caller,) = participants(api, conf["sid"])
            gone = await asyncio.to_thread(
                api.delete, f"/Conferences/{conf['sid']}/Participants/{caller['call_sid']}.json"
            )
            assert gone.status_code == 204, gone.text
            assert gone.headers["x-confstream-node"] == "node-1"
        # its last conference has ended: it exits
        await asyncio.to_thread(draining.proc.wait, 60)
        assert draining.proc.returncode == 0
        reasons = {
            conf["sid"]: api.get(f"/Conferences/{conf['sid']}.json").json()
            for conf in owned["node-1"]
        }
        assert reasons[by_api["sid"]]["reason_conference_ended"] == "conference-ended-via-api"
        for conf in kicked:
            assert reasons[conf["sid"]]["reason_conference_ended"] == "last-participant-kicked"
        # every caller of node-1 got its BYE, through Kamailio
        rooms = {conf["friendly_name"] for conf in owned["node-1"]}
        for proc, room in zip(procs, ROOMS[:4], strict=False):
            if room in rooms:
                assert await asyncio.wait_for(proc.wait(), 30) == 0, room
        with redis_of(cluster) as r:
            assert not r.exists(keys.node_key("node-1"))
            assert "node-1" not in r.smembers(keys.NODES)
    finally:
        await _stop(procs)
        await asyncio.to_thread(end_live_conferences, clients["node-2"])
        for client in clients.values():
            client.close()
