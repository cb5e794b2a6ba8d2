"""Stream hardening end to end: ``confstream serve`` in a subprocess (uvloop), real sipp callers,
real TLS WebSocket receivers (trustme chain), real HTTP callback server.

* Abusive bidirectional receivers (1 MB messages, floods of small ``media`` and of ``mark``,
  minutes of returned audio) are stopped with 31924 or have the excess dropped and counted, while
  the server's memory, its mixer clock and another conference's stream are unaffected.
* A receiver that stops reading ends within ping interval + ping timeout + close timeout.
* After ``kill -9`` and a restart, every stream that was open gets exactly one
  ``stream-stopped`` (after ``stream-error``), and its record says 31990.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from confstream.media.analysis import tone
from confstream.media.g711 import ulaw_encode
from confstream.tools.server import ServerProcess

from ..streams.peers import Conn, Receiver, Tls, ws_receiver
from .peers import await_for, conference_named, start_sipp_caller
from .test_streams_e2e import WebApp, web_app

pytestmark = pytest.mark.timeout(300)

RESTARTED = "the server restarted while the stream was open (it had stopped abnormally)"


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def scrape(server: ServerProcess) -> str:
    return httpx.get(f"{server.base}/metrics", timeout=10).text


def rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def conn_at(rx: Receiver, path: str) -> Conn | None:
    return next((c for c in rx.conns if c.path == path), None)


def connection_done(rx: Receiver, path: str) -> bool:
    return bool(getattr(conn_at(rx, path), "done", False))


def callbacks_for(web: WebApp, path: str) -> list[dict[str, str]]:
    return [params for p, _, params in web.callbacks if p == path]


async def stream_record(api: httpx.Client, conf_sid: str, sid: str) -> dict[str, Any]:
    resp = await asyncio.to_thread(api.get, f"/Conferences/{conf_sid}/Streams/{sid}.json")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


# ------------------------------------------------------------------ abusive receivers

FIVE_SECONDS = base64.b64encode(ulaw_encode(tone(1200.0, 5.0, amplitude=6000)).tobytes()).decode()
TWENTY_MS = base64.b64encode(ulaw_encode(tone(1200.0, 0.02, amplitude=6000)).tobytes()).decode()


async def abuse(rec: Receiver, conn: Conn) -> None:
    """What each abusive receiver does, by URL path; it keeps reading throughout."""
    while (await rec.read_one(conn))["event"] != "start":
        pass
    sid = conn.messages[-1]["streamSid"]
    reading = asyncio.ensure_future(rec.record(conn))
    conn.sent = 0  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        if conn.path == "/big":  # 300 messages of 1 MB (under websockets' default 1 MiB limit)
            big = {"event": "media", "streamSid": sid, "media": {"payload": "A" * 1_000_000}}
            for _ in range(300):
                await conn.send(big)
                conn.sent += 1  # type: ignore[attr-defined]
        elif conn.path == "/small":  # 20,000 x 20 ms = 400 s of audio, as fast as possible
            small = {"event": "media", "streamSid": sid, "media": {"payload": TWENTY_MS}}
            for _ in range(20_000):
                await conn.send(small)
                conn.sent += 1  # type: ignore[attr-defined]
        elif conn.path == "/marks":  # 20,000 marks
            for i in range(20_000):
                await conn.send({"event": "mark", "streamSid": sid, "mark": {"name": f"m{i}"}})
                conn.sent += 1  # type: ignore[attr-defined]
        elif conn.path == "/audio":  # 60 x 5 s = 5 minutes of audio at 40 messages/s
            chunk = {"event": "media", "streamSid": sid, "media": {"payload": FIVE_SECONDS}}
            for _ in range(60):
                await conn.send(chunk)
                conn.sent += 1  # type: ignore[attr-defined]
                await asyncio.sleep(0.025)
    conn.done = True  # type: ignore[attr-defined]
    await rec.notify()
    await reading


async def test_abusive_receivers_are_stopped_or_bounded_without_hurting_anyone(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    # Room for the closing handshakes on a loaded machine: past the close timeout the server
    # aborts the connection and the receiver sees 1006 instead of the code it was sent.
    server.env["CONFSTREAM_STREAM_CLOSE_TIMEOUT"] = "10"
    account = server.create_account()
    server.start()
    rec_ref: list[Receiver] = []

    async def behaviour(conn: Conn) -> None:
        await abuse(rec_ref[0], conn)

    with web_app() as web:
        async with ws_receiver(tls) as calm_rx, ws_receiver(tls, behaviour) as bad_rx:
            rec_ref.append(bad_rx)
            callers = [
                await start_sipp_caller(tmp_path, server.sip_port, account, room, f, 60.0)
                for room, f in (("abuse", 440.0), ("calm", 660.0))
            ]
            with server.api(account) as api:
                abuse_conf = await await_for(lambda: conference_named(api, "abuse"))
                calm_conf = await await_for(lambda: conference_named(api, "calm"))
                calm = api.post(
                    f"/Conferences/{calm_conf['sid']}/Streams.json",
                    data={"Url": calm_rx.url("/calm"), "Track": "inbound_track"},
                )
                assert calm.status_code == 200, calm.text
                await calm_rx.wait_for(
                    lambda: calm_rx.conns and len(calm_rx.conns[0].events("media")) > 50
                )
                calm_conn = calm_rx.conns[0]
                calm_from = len(calm_conn.events("media"))
                before = await asyncio.to_thread(scrape, server)
                rss_before = rss_mb(server)
                rss_peak = rss_before

                results: dict[str, dict[str, Any]] = {}
                for kind in ("big", "small", "marks", "audio"):
                    created = await asyncio.to_thread(
                        api.post,
                        f"/Conferences/{abuse_conf['sid']}/Streams.json",
                        data={
                            "Url": bad_rx.url(f"/{kind}"),
                            "StreamRealTime": "true",
                            "StatusCallback": web.url(f"/cb/{kind}"),
                        },
                    )
                    assert created.status_code == 200, created.text
                    sid = created.json()["sid"]
                    path = f"/{kind}"
                    await bad_rx.wait_for(
                        functools.partial(connection_done, bad_rx, path), timeout=120
                    )
                    rss_peak = max(rss_peak, rss_mb(server))
                    if kind == "audio":
                        record = await stream_record(api, abuse_conf["sid"], sid)
                        assert record["status"] == "in-progress", record
                        stopped = await asyncio.to_thread(
                            api.post,
                            f"/Conferences/{abuse_conf['sid']}/Streams/{sid}.json",
                            data={"Status": "stopped"},
                        )
                        assert stopped.json()["status"] == "stopped"
                    record = await await_for(
                        lambda s=sid: (
                            (r := api.get(f"/Conferences/{abuse_conf['sid']}/Streams/{s}.json"))
                            and r.json()["status"] == "stopped"
                            and r.json()
                        ),
                        within=30,
                    )
                    conn = conn_at(bad_rx, path)
                    assert conn is not None
                    await asyncio.wait_for(conn.closed.wait(), 10)
                    results[kind] = {"record": record, "conn": conn}
                    await await_for(lambda k=kind: len(callbacks_for(web, f"/cb/{k}")) >= 2)
                await asyncio.sleep(1.0)
                after = await asyncio.to_thread(scrape, server)
                rss_after = rss_mb(server)
                calm_media = calm_conn.events("media")[calm_from:]
                assert (await stream_record(api, calm_conf["sid"], calm.json()["sid"]))[
                    "status"
                ] == "in-progress"
            for proc in callers:
                proc.kill()
                await proc.wait()

    # 1 MB messages: refused before they are read (1009), the first one ends the stream.
    big = results["big"]
    assert big["record"]["error_code"] == 31924, big["record"]
    assert big["record"]["error_message"] == "receiver sent a message over 65536 bytes"
    assert big["conn"].ws.close_code == 1009
    # Floods of small messages: stopped by the rate limit (1008), long before 20,000.
    for kind in ("small", "marks"):
        r = results[kind]
        assert r["record"]["error_code"] == 31924, r["record"]
        assert "faster than 200/s beyond a burst of 1000" in r["record"]["error_message"]
        assert r["conn"].ws.close_code == 1008
        assert r["conn"].messages[-1]["event"] == "stop"
        # the burst of 1000 plus what the 200/s refill allows while the flood is read (a
        # loaded machine reads it slower): bounded, far from the 20,000 sent
        assert len(r["conn"].events("mark")) <= 2000
    for kind in ("big", "small", "marks"):
        events = [p["StreamEvent"] for p in callbacks_for(web, f"/cb/{kind}")]
        assert events == ["stream-started", "stream-error", "stream-stopped"], (kind, events)
    # Five minutes of returned audio: 10 s kept, the rest dropped and counted; not an error.
    assert results["audio"]["record"]["error_code"] is None
    assert [p["StreamEvent"] for p in callbacks_for(web, "/cb/audio")] == [
        "stream-started",
        "stream-stopped",
    ]
    dropped_s = metric(after, "confstream_stream_return_audio_dropped_seconds_total") - metric(
        before, "confstream_stream_return_audio_dropped_seconds_total"
    )
    assert 280 <= dropped_s <= 300, dropped_s
    for reason, n in (("message_too_big", 1), ("message_rate", 2)):
        name = "confstream_stream_receivers_stopped_total"
        assert metric(after, name, reason=reason) - metric(before, name, reason=reason) == n

    # Memory: the 300 MB sent (and the minutes of audio) never accumulated. Bound: 64 MB
    # (measured: about 8 MB; before the limits 1 MB messages took it up by 458 MB).
    assert rss_peak - rss_before < 64, (rss_before, rss_peak, rss_after)
    # The mixer clock: no skipped ticks, at most 5 % of ticks started over 20 ms late and at
    # most 2 over 100 ms. The machine running the tests is shared (a load of 7 on 2 cores has
    # been seen), so some lateness is not ours; before the limits 86 ticks were skipped.
    lateness = "confstream_tick_lateness_seconds"

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ticks = delta(lateness + "_count")
    within_20ms = delta(lateness + "_bucket", le="0.02")
    within_100ms = delta(lateness + "_bucket", le="0.1")
    assert ticks > 300
    assert (ticks - within_20ms) / ticks < 0.05, (ticks, within_20ms)
    # Bounds, not speed: the unbounded queue this guards against skipped ~20 % of the ticks
    # (issue 9); a loaded CI machine may delay a few ticks on its own.
    assert ticks - within_100ms <= 0.05 * ticks, (ticks, within_100ms)
    skipped = metric(after, "confstream_ticks_skipped_total") - metric(
        before, "confstream_ticks_skipped_total"
    )
    assert skipped <= 0.05 * ticks, (skipped, ticks)
    # The other conference's stream: a continuous timeline, no frame lost.
    stamps = [int(m["media"]["timestamp"]) for m in calm_media]
    assert len(stamps) > 300
    assert all(b - a == 20 for a, b in itertools.pairwise(stamps))


# ------------------------------------------------------------------ a stuck receiver


async def test_a_receiver_that_stops_reading_is_ended_with_callbacks(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    interval, ping_timeout, close_timeout = 3.0, 1.0, 1.0
    server.env.update(
        CONFSTREAM_STREAM_CA_FILE=str(tls.ca_file),
        CONFSTREAM_STREAM_PING_INTERVAL=str(interval),
        CONFSTREAM_STREAM_PING_TIMEOUT=str(ping_timeout),
        CONFSTREAM_STREAM_CLOSE_TIMEOUT=str(close_timeout),
    )
    account = server.create_account()
    server.start()

    async def stuck(conn: Conn) -> None:
        conn.ws.transport.pause_reading()  # keeps TCP open, reads nothing
        await conn.ws.wait_closed()

    with web_app() as web:
        async with ws_receiver(tls, stuck, rcvbuf=4096) as rx:
            caller = await start_sipp_caller(tmp_path, server.sip_port, account, "stuck", 440, 30)
            with server.api(account) as api:
                conf = await await_for(lambda: conference_named(api, "stuck"))
                created = await asyncio.to_thread(
                    api.post,
                    f"/Conferences/{conf['sid']}/Streams.json",
                    data={
                        "Url": rx.url(),
                        "StreamCodec": "L16@24000h",
                        "StatusCallback": web.url("/cb/stuck"),
                    },
                )
                assert created.status_code == 200, created.text
                sid = created.json()["sid"]
                await await_for(lambda: callbacks_for(web, "/cb/stuck"))  # stream-started
                t0 = time.monotonic()
                record = await await_for(
                    lambda: (
                        (r := api.get(f"/Conferences/{conf['sid']}/Streams/{sid}.json").json())
                        and r["status"] == "stopped"
                        and r
                    ),
                    within=30,
                )
                elapsed = time.monotonic() - t0
                await await_for(lambda: len(callbacks_for(web, "/cb/stuck")) >= 3)
                await asyncio.sleep(1.0)  # nothing more arrives
                metrics = await asyncio.to_thread(scrape, server)
            caller.kill()
            await caller.wait()

    # Documented bound: ping interval + ping timeout + close timeout (5 s here), plus the
    # polling and scheduling slack of this test, which reaches several seconds on a loaded
    # 2-core CI machine. Without the keepalive the stream would run until the call ends (30 s);
    # the 31903 "no pong" below says which mechanism ended it.
    assert elapsed < interval + ping_timeout + close_timeout + 10, elapsed
    assert record["error_code"] == 31903, record
    assert "no pong from the receiver within 1 s" in record["error_message"]
    params = callbacks_for(web, "/cb/stuck")
    assert [p["StreamEvent"] for p in params] == [
        "stream-started",
        "stream-error",
        "stream-stopped",
    ]
    assert params[1]["StreamError"] == "general_error"
    assert metric(metrics, "confstream_stream_receivers_stopped_total", reason="unresponsive") == 1


# ------------------------------------------------------------------ kill -9 and restart


async def test_streams_open_at_a_crash_get_their_final_callbacks_after_restart(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    account = server.create_account()
    server.start()
    with web_app() as web:
        async with ws_receiver(tls) as rx:
            caller = await start_sipp_caller(tmp_path, server.sip_port, account, "crash", 440, 60)
            with server.api(account) as api:
                conf = await await_for(lambda: conference_named(api, "crash"))
                sids = []
                for name in ("one", "two"):
                    created = await asyncio.to_thread(
                        api.post,
                        f"/Conferences/{conf['sid']}/Streams.json",
                        data={
                            "Url": rx.url(f"/{name}"),
                            "Name": name,
                            "StatusCallback": web.url(f"/cb/{name}"),
                        },
                    )
                    assert created.status_code == 200, created.text
                    sids.append(created.json()["sid"])
                await rx.wait_for(
                    lambda: len(rx.conns) == 2 and all(c.events("media") for c in rx.conns)
                )
                await await_for(lambda: all(callbacks_for(web, f"/cb/{n}") for n in ("one", "two")))

                assert server.stop(kill=True) == -9
                server.start()  # same database, same ports

                await await_for(
                    lambda: all(len(callbacks_for(web, f"/cb/{n}")) >= 3 for n in ("one", "two")),
                    within=20,
                )
                await asyncio.sleep(1.5)  # and nothing more
                records = [await stream_record(api, conf["sid"], sid) for sid in sids]
                conference = (
                    await asyncio.to_thread(api.get, f"/Conferences/{conf['sid']}.json")
                ).json()
            caller.kill()
            await caller.wait()

    validator = RequestValidator(account.token)
    for name, sid, record in zip(("one", "two"), sids, records, strict=True):
        assert record["status"] == "stopped", record
        assert record["error_code"] == 31990, record
        assert record["error_message"] == RESTARTED
        got = [(h, p) for path, h, p in web.callbacks if path == f"/cb/{name}"]
        events = [p["StreamEvent"] for _, p in got]
        assert events == ["stream-started", "stream-error", "stream-stopped"], events
        assert got[1][1]["StreamError"] == "general_error"
        for headers, params in got:
            assert params["StreamSid"] == sid and params["StreamName"] == name
            assert params["ConferenceSid"] == params["CallSid"] == conf["sid"]
            assert params["AccountSid"] == account.sid
            for header in ("X-Twilio-Signature", "X-SignalWire-Signature"):
                assert validator.validate(web.url(f"/cb/{name}"), params, headers[header])
    assert conference["status"] == "completed"
