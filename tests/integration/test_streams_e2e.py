"""Conference Streams end to end: ``confstream serve`` in a subprocess, SIP callers from sipp and
baresip, a real TLS WebSocket receiver (trustme chain), announcements and status callbacks
served by a real HTTP server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from confstream.media.analysis import tone, tone_levels
from confstream.media.g711 import alaw_decode, ulaw_decode, ulaw_encode
from confstream.media.l16 import l16_decode
from confstream.media.wav import wav_bytes
from confstream.tools.server import Account, ServerProcess
from confstream.tools.tls import Tls

from ..streams.peers import Conn, Receiver, ws_receiver
from .peers import BaresipCaller, await_for, conference_named, start_sipp_caller

ANNOUNCE_HZ = 1000.0
RETURN_HZ = 1200.0


@dataclass
class WebApp:
    """A plain HTTP server on 127.0.0.1: serves the announcement WAV and records callbacks."""

    port: int = 0
    callbacks: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    wav: bytes = b""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def web_app() -> Iterator[WebApp]:
    app = WebApp()
    # 2 s at 16 kHz: the server resamples it to the conference's 8 kHz.
    app.wav = wav_bytes(tone(ANNOUNCE_HZ, 2.0, rate=16000, amplitude=8000), 16000)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(app.wav)))
            self.end_headers()
            self.wfile.write(app.wav)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
            app.callbacks.append((self.path, dict(self.headers), params))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    app.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        httpd.shutdown()
        httpd.server_close()


DECODERS = {
    "PCMU": (ulaw_decode, 8000),
    "PCMA": (alaw_decode, 8000),
    "L16@16000h": (l16_decode, 16000),
}
ENCODINGS = {"PCMU": "audio/x-mulaw", "PCMA": "audio/x-alaw", "L16@16000h": "audio/x-L16"}


def decode_track(messages: list[dict[str, Any]], track: str, codec: str) -> list[np.ndarray]:
    decode, _ = DECODERS[codec]
    return [
        decode(base64.b64decode(m["media"]["payload"]))
        for m in messages
        if m["event"] == "media" and m["media"]["track"] == track
    ]


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "L16@16000h"])
async def test_stream_carries_callers_on_inbound_and_announcement_on_outbound_only(
    server: ServerProcess, account: Account, tmp_path: Path, tls: Tls, codec: str
) -> None:
    with web_app() as web:
        async with ws_receiver(tls) as rec:
            callers = [
                await start_sipp_caller(tmp_path, server.sip_port, account, "sales", f, 7.0)
                for f in (440.0, 660.0)
            ]
            with server.api(account) as api:
                conf = await await_for(lambda: conference_named(api, "sales"))
                path = f"/Conferences/{conf['sid']}"
                created = await asyncio.to_thread(
                    api.post,
                    f"{path}/Streams.json",
                    data={
                        "Url": rec.url("/media?x=1", host="localhost"),
                        "StreamCodec": codec,
                        "AuthorizationBearerToken": "s3cret",
                        "StatusCallback": web.url("/stream-events"),
                        **{f"Parameter{n}.Name": f"p{n}" for n in range(1, 100)},
                        **{f"Parameter{n}.Value": f"v{n}" for n in range(1, 100)},
                    },
                )
                assert created.status_code == 200, created.text
                stream = created.json()
                assert stream["status"] in ("queued", "in-progress")
                assert stream["track"] == "both_tracks" and stream["codec"] == codec
                await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 100)
                announced = await asyncio.to_thread(
                    api.post,
                    f"{path}.json",
                    data={"AnnounceUrl": web.url("/hello.wav"), "AnnounceMethod": "GET"},
                )
                assert announced.status_code == 200, announced.text
                await rec.wait_for(lambda: len(rec.conns[0].events("media")) > 400)
                fetched = await asyncio.to_thread(api.get, f"{path}/Streams/{stream['sid']}.json")
                assert fetched.json()["status"] == "in-progress"
                stopped = await asyncio.to_thread(
                    api.post, f"{path}/Streams/{stream['sid']}.json", data={"Status": "stopped"}
                )
                assert stopped.json()["status"] == "stopped"
                assert stopped.json()["error_code"] is None
                conn = rec.conns[0]
                await asyncio.wait_for(conn.closed.wait(), 10)
                await await_for(lambda: len(web.callbacks) >= 2)
            for proc in callers:
                await asyncio.wait_for(proc.wait(), 30)

    assert conn.headers["Authorization"] == "Bearer s3cret"
    assert conn.path == "/media?x=1"
    messages = conn.messages
    assert messages[0] == {"event": "connected", "protocol": "Call", "version": "0.2.0"}
    start = messages[1]
    sid = stream["sid"]
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": sid,
        "start": {
            "streamSid": sid,
            "accountSid": account.sid,
            "callSid": conf["sid"],
            "conferenceSid": conf["sid"],
            "tracks": ["inbound", "outbound"],
            "customParameters": {f"p{n}": f"v{n}" for n in range(1, 100)},
            "mediaFormat": {
                "encoding": ENCODINGS[codec],
                "sampleRate": DECODERS[codec][1],
                "channels": 1,
            },
        },
    }
    assert messages[-1] == {
        "event": "stop",
        "sequenceNumber": str(len(messages) - 1),
        "streamSid": sid,
        "stop": {"accountSid": account.sid, "callSid": conf["sid"], "conferenceSid": conf["sid"]},
    }
    assert [m["sequenceNumber"] for m in messages[1:]] == [str(n) for n in range(1, len(messages))]
    media = [m for m in messages if m["event"] == "media"]
    assert all(set(m) == {"event", "sequenceNumber", "streamSid", "media"} for m in media)
    for track in ("inbound", "outbound"):
        frames = [m["media"] for m in media if m["media"]["track"] == track]
        assert [f["chunk"] for f in frames] == [str(n) for n in range(1, len(frames) + 1)]
        stamps = [int(f["timestamp"]) for f in frames]
        assert stamps[0] == 0 and stamps == sorted(stamps)
        assert all((b - a) % 20 == 0 and b > a for a, b in itertools.pairwise(stamps))
    rate = DECODERS[codec][1]
    inbound = decode_track(messages, "inbound", codec)
    outbound = decode_track(messages, "outbound", codec)
    assert {len(f) for f in inbound} == {rate // 50}
    freqs = (440.0, 660.0, ANNOUNCE_HZ)
    whole_in = tone_levels(np.concatenate(inbound[25:]), freqs, rate)
    assert whole_in[440.0] > 0.2 and whole_in[660.0] > 0.2, whole_in
    assert whole_in[ANNOUNCE_HZ] < 0.01, whole_in
    # The announcement is on outbound for about 2 s (100 frames): find it there.
    windows = [
        tone_levels(np.concatenate(outbound[i : i + 25]), freqs, rate)[ANNOUNCE_HZ]
        for i in range(0, len(outbound) - 25, 25)
    ]
    assert max(windows) > 0.2, windows

    validator = RequestValidator(account.token)
    events = [params["StreamEvent"] for _, _, params in web.callbacks]
    assert events == ["stream-started", "stream-stopped"]
    for cb_path, headers, params in web.callbacks:
        assert cb_path == "/stream-events"
        assert params["StreamSid"] == sid and params["StreamName"] == sid
        assert params["ConferenceSid"] == params["CallSid"] == conf["sid"]
        assert params["AccountSid"] == account.sid
        assert params["StreamTrack"] == "both_tracks"
        for header in ("X-Twilio-Signature", "X-SignalWire-Signature"):
            assert validator.validate(web.url("/stream-events"), params, headers[header])


async def test_bidirectional_audio_is_heard_by_a_sip_caller_and_dtmf_reaches_the_stream(
    server: ServerProcess, account: Account, tmp_path: Path, tls: Tls
) -> None:
    returned = ulaw_encode(tone(RETURN_HZ, 3.0, amplitude=8000)).tobytes()

    async def talk_back(conn: Conn) -> None:
        rec_ = receiver_ref[0]
        while (await rec_.read_one(conn))["event"] != "start":
            pass
        sid = conn.messages[-1]["streamSid"]
        await conn.send(
            {
                "event": "media",
                "streamSid": sid,
                "media": {"payload": base64.b64encode(returned).decode()},
            }
        )
        await conn.send({"event": "mark", "streamSid": sid, "mark": {"name": "said-it"}})
        await rec_.record(conn)

    receiver_ref: list[Receiver] = []
    async with ws_receiver(tls, talk_back) as rec:
        receiver_ref.append(rec)
        listener = BaresipCaller(tmp_path / "listener", 440.0, 9.0)
        await listener.dial(server.sip_port, account, "bot")
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "bot"))
            created = await asyncio.to_thread(
                api.post,
                f"/Conferences/{conf['sid']}/Streams.json",
                data={
                    "Url": rec.url(),
                    "StreamRealTime": "true",
                    "Track": "inbound_track",
                    "Name": "voicebot",
                },
            )
            assert created.status_code == 200, created.text
            presser = await start_sipp_caller(
                tmp_path, server.sip_port, account, "bot", 660.0, 3.0, dtmf_digit="1"
            )
            await rec.wait_for(lambda: rec.conns and rec.conns[0].events("dtmf"), timeout=15)
            await rec.wait_for(lambda: rec.conns[0].events("mark"), timeout=15)
            parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
            call_sids = {p["call_sid"] for p in parts["participants"]}
            await asyncio.wait_for(presser.wait(), 30)
            await listener.wait()

    conn = rec.conns[0]
    (dtmf,) = conn.events("dtmf")
    assert dtmf["dtmf"]["digit"] == "1"
    assert dtmf["dtmf"]["track"] == "inbound_track"
    assert isinstance(dtmf["dtmf"]["duration"], int)
    assert dtmf["dtmf"]["callSid"] in call_sids
    (mark,) = conn.events("mark")
    assert mark["mark"] == {"name": "said-it"}
    # The mark comes back after its 3 s of audio have played: at least 140 frames later.
    media_before_mark = [
        m for m in conn.messages[: conn.messages.index(mark)] if m["event"] == "media"
    ]
    assert len(media_before_mark) >= 140
    heard = listener.heard()
    windows = [
        tone_levels(heard[i : i + 4000], (440.0, RETURN_HZ), 8000)
        for i in range(0, len(heard) - 4000, 4000)
    ]
    # The returned tone is clearly heard: alone it is about all of a window, mixed with the
    # presser's 660 Hz tone (same level) about half of it, absent near 0.
    assert max(w[RETURN_HZ] for w in windows) > 0.3, windows
    assert max(w[440.0] for w in windows) < 0.05, windows  # never hears itself


async def test_accounts_are_isolated_over_sip_and_rest(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = server.create_account("--friendly-name", "alice")
    bob = server.create_account("--friendly-name", "bob")
    server.start()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    callers = [
        await start_sipp_caller(tmp_path / who, server.sip_port, acct, "shared", f, 4.0)
        for who, acct, f in (("a", alice, 440.0), ("b", bob, 660.0))
    ]
    with server.api(alice) as a_api, server.api(bob) as b_api:
        conf_a = await await_for(lambda: conference_named(a_api, "shared"))
        conf_b = await await_for(lambda: conference_named(b_api, "shared"))
        assert conf_a["sid"] != conf_b["sid"]
        assert conf_a["account_sid"] == alice.sid and conf_b["account_sid"] == bob.sid
        # Alice can't see Bob's conference, under her path or his.
        assert a_api.get(f"/Conferences/{conf_b['sid']}.json").status_code == 404
        other = a_api.get(f"{server.base}/api/laml/2010-04-01/Accounts/{bob.sid}/Conferences.json")
        assert other.status_code == 401 and other.json()["code"] == 20003
        parts_a = a_api.get(f"/Conferences/{conf_a['sid']}/Participants.json").json()
        assert len(parts_a["participants"]) == 1
    for proc in callers:
        await asyncio.wait_for(proc.wait(), 30)


async def test_ending_the_conference_stops_its_streams_and_hangs_up(
    server: ServerProcess, account: Account, tmp_path: Path, tls: Tls
) -> None:
    async with ws_receiver(tls) as rec:
        listener = BaresipCaller(tmp_path / "listener", 440.0, 20.0)
        await listener.dial(server.sip_port, account, "allhands")
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "allhands"))
            path = f"/Conferences/{conf['sid']}"
            first = api.post(f"{path}/Streams.json", data={"Url": rec.url(), "Name": "one"}).json()
            second = api.post(f"{path}/Streams.json", data={"Url": rec.url(), "Name": "two"}).json()
            clash = api.post(f"{path}/Streams.json", data={"Url": rec.url(), "Name": "one"})
            assert clash.status_code == 409 and clash.json()["code"] == 20409
            await rec.wait_for(
                lambda: len(rec.conns) == 2 and all(c.events("media") for c in rec.conns)
            )
            ended = await asyncio.to_thread(api.post, f"{path}.json", data={"Status": "completed"})
            assert ended.status_code == 200 and ended.json()["status"] == "completed"
            for conn in rec.conns:
                await asyncio.wait_for(conn.closed.wait(), 10)
                assert conn.messages[-1]["event"] == "stop"
            for s in (first, second):
                got = api.get(f"{path}/Streams/{s['sid']}.json").json()
                assert got["status"] == "stopped"
            late = api.post(f"{path}/Streams.json", data={"Url": rec.url()})
            assert late.status_code == 409 and late.json()["code"] == 21220
        # The server hung the caller up (BYE) long before its 20 s file ends.
        # (libre reports a BYE received as "session closed: Connection reset by peer")
        await await_for(lambda: "session closed" in listener.log())


async def test_rest_mute_and_hold_act_on_live_sip_audio(
    server: ServerProcess, account: Account, tmp_path: Path, tls: Tls
) -> None:
    tones = (440.0, 880.0)

    def levels_since(conn: Conn, chunk: int) -> dict[float, float]:
        frames = [
            ulaw_decode(base64.b64decode(m["media"]["payload"]))
            for m in conn.events("media")
            if int(m["media"]["chunk"]) > chunk
        ]
        return tone_levels(np.concatenate(frames), tones, 8000)

    async with ws_receiver(tls) as rec:
        callers = [
            await start_sipp_caller(tmp_path, server.sip_port, account, "ctl", f, 8.0)
            for f in tones
        ]
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "ctl"))
            path = f"/Conferences/{conf['sid']}"
            parts = await await_for(
                lambda: (
                    (p := api.get(f"{path}/Participants.json").json()["participants"])
                    and len(p) == 2
                    and p
                )
            )
            api.post(f"{path}/Streams.json", data={"Url": rec.url(), "Track": "inbound_track"})
            await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 50)
            conn = rec.conns[0]

            async def after(change: dict[str, str], call_sid: str) -> dict[float, float]:
                resp = api.post(f"{path}/Participants/{call_sid}.json", data=change)
                assert resp.status_code == 200, resp.text
                mark = len(conn.events("media")) + 5  # a tick or two for the change to land
                await rec.wait_for(lambda: len(conn.events("media")) > mark + 50)
                return levels_since(conn, mark)

            both = levels_since(conn, 10)
            assert both[440.0] > 0.3 and both[880.0] > 0.3, both
            first, second = parts[0]["call_sid"], parts[1]["call_sid"]
            muted = await after({"Muted": "true"}, first)
            silenced = min(tones, key=lambda f: muted[f])
            other = max(tones, key=lambda f: muted[f])
            # Ratios, not absolute shares: on a loaded machine the remaining caller's audio can be
            # choppy (jitter-buffer discards), which lowers its share but not the silence.
            assert muted[silenced] < 0.01 and muted[other] > 100 * muted[silenced], muted
            fetched = api.get(f"{path}/Participants/{first}.json").json()
            assert fetched["muted"] is True
            assert [
                p["call_sid"]
                for p in api.get(f"{path}/Participants.json", params={"Muted": "true"}).json()[
                    "participants"
                ]
            ] == [first]
            unmuted = await after({"Muted": "false"}, first)
            assert unmuted[silenced] > 0.1, unmuted
            held = await after({"Hold": "true"}, second)
            assert held[other] < 0.01 and held[silenced] > 100 * held[other], held
            assert api.get(f"{path}/Participants/{second}.json").json()["hold"] is True
        for proc in callers:
            await asyncio.wait_for(proc.wait(), 30)
