"""The cluster as operators run it: real redis-server, PostgreSQL, Kamailio (Debian packages,
``deploy/kamailio/kamailio.cfg``) and two ``confstream serve`` nodes; sipp and baresip callers
dial Kamailio only; REST goes to either node (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from pathlib import Path

import numpy as np

from confstream.cluster import keys
from confstream.media.analysis import tone_levels
from confstream.media.g711 import ulaw_decode
from confstream.tools.cluster import LocalCluster
from confstream.tools.tls import Tls

from ..integration.peers import BaresipCaller, await_for, start_sipp_caller
from ..streams.peers import Conn, ws_receiver
from .helpers import (
    apis,
    conference,
    end_live_conferences,
    live_conferences,
    owner_of,
    participants,
    redis_of,
)

FREQS = (440.0, 660.0)


async def test_callers_of_one_conference_meet_on_one_node_and_hear_each_other(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    account = cluster.create_account()
    callers = [BaresipCaller(tmp_path / f"caller{int(f)}", f, 7.0) for f in FREQS]
    for caller in callers:
        await caller.dial(cluster.sip_port, account, "standup")
    clients = apis(cluster, account)
    try:
        one, two = clients["node-1"], clients["node-2"]
        conf = await await_for(lambda: conference(one, "standup"), within=15)
        owner = owner_of(cluster, conf["sid"])
        assert owner in ("node-1", "node-2")
        # both nodes read the same records: the conference and its two callers
        live = await await_for(
            lambda: len(parts := participants(two, conf["sid"])) == 2 and parts, within=15
        )
        assert {p["conference_sid"] for p in live} == {conf["sid"]}
        assert conference(two, "standup") == conference(one, "standup")
        # every call of the conference is held by the owner node
        with redis_of(cluster) as r:
            holders = {r.get(f"confstream:call:{p['call_sid']}") for p in live}
        assert holders == {owner}
        for caller in callers:
            await caller.wait()
        await await_for(lambda: conference(one, "standup") is None, within=15)
    finally:
        for client in clients.values():
            client.close()
    for caller in callers:
        heard = caller.heard()
        levels = tone_levels(heard[8000 : 8000 * 5], FREQS, 8000)
        other = next(f for f in FREQS if f != caller.freq)
        assert levels[other] > 20 * levels[caller.freq], (caller.freq, levels)


async def test_callers_of_twenty_conferences_spread_over_the_nodes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    account = cluster.create_account()
    rooms = [f"room-{n}" for n in range(20)]
    procs = []
    for n, room in enumerate(rooms):
        workdir = tmp_path / room
        workdir.mkdir()
        procs.append(
            await start_sipp_caller(workdir, cluster.sip_port, account, room, 300.0 + 20 * n, 15.0)
        )
    clients = apis(cluster, account)
    try:
        api = clients["node-2"]
        confs = await await_for(
            lambda: len(found := live_conferences(api)) == 20 and found, within=30
        )
        owners = {c["friendly_name"]: owner_of(cluster, c["sid"]) for c in confs}
        assert set(owners) == set(rooms)
        counts = {node: sum(1 for o in owners.values() if o == node) for node in clients}
        assert sum(counts.values()) == 20, owners
        assert min(counts.values()) >= 3, counts
        # a node's conferences hold exactly its callers
        for c in confs:
            assert len(participants(clients["node-1"], c["sid"])) == 1
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 40)
    # every caller's ACK and BYE went through Kamailio to its node (the node put Kamailio's
    # Record-Route in its 200): sipp got the 200 to its BYE
    assert [proc.returncode for proc in procs] == [0] * 20


def _inbound_levels(conn: Conn, last: int) -> dict[float, float]:
    frames = [
        ulaw_decode(base64.b64decode(m["media"]["payload"]))
        for m in conn.messages
        if m.get("event") == "media" and m["media"]["track"] == "inbound"
    ]
    return tone_levels(np.concatenate(frames[-last:]), FREQS, 8000)


async def test_a_stream_and_changes_made_through_the_other_node_act_on_the_owner(
    cluster: LocalCluster, tmp_path: Path, tls: Tls
) -> None:
    account = cluster.create_account()
    procs = [
        await start_sipp_caller(tmp_path, cluster.sip_port, account, "sales", f, 20.0)
        for f in FREQS
    ]
    clients = apis(cluster, account)
    try:
        async with ws_receiver(tls) as rec:
            conf = await await_for(lambda: conference(clients["node-1"], "sales"), within=15)
            sid = conf["sid"]
            await await_for(lambda: len(participants(clients["node-1"], sid)) == 2, within=15)
            owner = owner_of(cluster, sid)
            assert owner is not None
            other = next(node for node in clients if node != owner)
            api = clients[other]
            created = await asyncio.to_thread(
                api.post,
                f"/Conferences/{sid}/Streams.json",
                data={"Url": rec.url("/media", host="localhost"), "Track": "inbound_track"},
            )
            assert created.status_code == 200, created.text
            assert created.headers["x-confstream-node"] == owner
            stream = created.json()
            await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 150, 15)
            conn = rec.conns[0]
            assert conn.messages[1]["start"]["conferenceSid"] == sid
            both = _inbound_levels(conn, 100)
            assert both[440.0] > 0.1 and both[660.0] > 0.1, both

            # mute one caller through the node that does not host the conference
            first = participants(api, sid)[0]["call_sid"]
            path = f"/Conferences/{sid}/Participants/{first}.json"
            muted = await asyncio.to_thread(api.post, path, data={"Muted": "true"})
            assert muted.status_code == 200, muted.text
            assert muted.headers["x-confstream-node"] == owner
            assert muted.json()["muted"] is True
            seen = len(conn.events("media"))
            await rec.wait_for(lambda: len(conn.events("media")) > seen + 100, 10)
            after = _inbound_levels(conn, 50)
            silenced = [f for f in FREQS if after[f] < 0.02 * both[f]]
            assert len(silenced) == 1, (both, after)

            # kick it through the other node: the owner hangs the call up
            kicked = await asyncio.to_thread(api.delete, path)
            assert kicked.status_code == 204, kicked.text
            left = await await_for(
                lambda: len(p := participants(clients[owner], sid)) == 1 and p, within=10
            )
            assert left[0]["call_sid"] != first

            # end the conference through the other node: the stream stops on the owner
            ended = await asyncio.to_thread(
                api.post, f"/Conferences/{sid}.json", data={"Status": "completed"}
            )
            assert ended.status_code == 200, ended.text
            assert ended.json()["status"] == "completed"
            await asyncio.wait_for(conn.closed.wait(), 10)
            assert conn.messages[-1]["event"] == "stop"
            fetched = clients["node-1"].get(f"/Conferences/{sid}/Streams/{stream['sid']}.json")
            assert fetched.json()["status"] == "stopped"
            assert fetched.json()["error_code"] is None
            assert owner_of(cluster, sid) is None
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()


async def test_a_dial_out_into_a_named_conference_owns_it_before_anyone_joins(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """POST …/Conferences/{FriendlyName}/Participants creates the conference and claims it on
    the node that serves the request; a caller dialling in through Kamailio meanwhile lands
    in that same conference on that node."""
    account = cluster.create_account()
    clients = apis(cluster, account)
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # rings forever: never answers
    callee.bind(("127.0.0.1", 0))
    caller = None
    try:
        host, port = callee.getsockname()
        placed = await asyncio.to_thread(
            clients["node-2"].post,
            "/Conferences/dial-race/Participants.json",
            data={"From": "sip:bot@example.com", "To": f"sip:callee@{host}:{port}"},
        )
        assert placed.status_code == 201, placed.text
        with redis_of(cluster) as r:
            assert r.get(keys.room_key(account.sid, "dial-race")) == "node-2"
        await asyncio.to_thread((tmp_path / "in").mkdir)
        caller = await start_sipp_caller(
            tmp_path / "in", cluster.sip_port, account, "dial-race", 440.0, 6.0
        )
        conf = await await_for(lambda: conference(clients["node-1"], "dial-race"), within=20)
        assert conf["sid"] == placed.json()["conference_sid"]
        assert owner_of(cluster, conf["sid"]) == "node-2"
        # the caller is in it (the callee, still ringing, is not listed yet)
        joined = await await_for(lambda: participants(clients["node-1"], conf["sid"]), within=20)
        assert [p["call_sid"] != placed.json()["call_sid"] for p in joined] == [True]
        hung_up = await asyncio.to_thread(
            clients["node-1"].post,
            f"/Calls/{placed.json()['call_sid']}.json",
            data={"Status": "canceled"},
        )
        assert hung_up.status_code == 200, hung_up.text
    finally:
        callee.close()
        if caller is not None:
            with contextlib.suppress(ProcessLookupError):
                caller.kill()
            await caller.wait()
        end_live_conferences(clients["node-1"])
        for client in clients.values():
            client.close()
