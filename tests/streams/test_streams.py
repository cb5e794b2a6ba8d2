"""Conference Streams end to end: StreamManager + StreamSession against a real TLS WebSocket
receiver (trustme CA) and a real HTTP callback server, driven by a conference."""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import itertools
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from twilio.request_validator import RequestValidator

from confstream.callbacks.webhooks import CallbackSender
from confstream.settings import Settings
from confstream.streams import session as session_mod
from confstream.streams.manager import StreamManager, StreamSpec
from confstream.streams.vocabulary import MediaTrack
from confstream.tools.metrics import sample
from tests.callbacks.recorder import Recorder, http_recorder

from .conference_driver import ToneConference
from .peers import LOOPBACK, Conn, Tls, raw_server, ws_receiver

TOKEN = "auth-token-for-tests"
ACCOUNT = str(uuid.uuid4())


def dominant_freq(samples: np.ndarray[Any, Any], rate: int) -> float:
    x = samples.astype(np.float64)
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def decode(payload: str, codec: str) -> np.ndarray[Any, Any]:
    raw = base64.b64decode(payload)
    if codec == "PCMU":
        raw = audioop.ulaw2lin(raw, 2)
    elif codec == "PCMA":
        raw = audioop.alaw2lin(raw, 2)
    return np.frombuffer(raw, dtype="<i2")


@dataclass
class Harness:
    settings: Settings
    manager: StreamManager
    conf: ToneConference
    callbacks: Recorder
    statuses: list[tuple[str, str, int | None, str | None]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def spec(self, url: str, **kw: Any) -> StreamSpec:
        sid = str(uuid.uuid4())
        args: dict[str, Any] = {
            "sid": sid,
            "account_sid": ACCOUNT,
            "auth_token": TOKEN,
            "conference_sid": self.conf.sid,
            "url": url,
            "name": None,
            "track": "both_tracks",
            "codec": "PCMU",
            "realtime": False,
            "parameters": {},
            "bearer_token": None,
            "status_callback": self.callbacks.url(f"/cb/{sid}"),
            "status_callback_method": "POST",
        }
        args.update(kw)
        return StreamSpec(**args)

    def status_of(self, sid: str) -> list[tuple[str, int | None]]:
        return [(s, code) for (x, s, code, _m) in self.statuses if x == sid]

    async def wait_stopped(self, sid: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: "stopped" in [s for s, _ in self.status_of(sid)])

    async def wait_status(self, sid: str, status: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: status in [s for s, _ in self.status_of(sid)])

    async def callbacks_of(self, sid: str, n: int) -> list[dict[str, str]]:
        """Wait for ``n`` callbacks of the stream, validate signatures, return their params."""
        path = f"/cb/{sid}"
        await self.callbacks.wait_for(lambda: len(self.callbacks.for_path(path)) >= n)
        await asyncio.sleep(0.2)  # nothing more should arrive
        got = self.callbacks.for_path(path)
        assert len(got) == n, [r.params for r in got]
        validator = RequestValidator(TOKEN)
        for r in got:
            url = self.callbacks.url(path)
            if r.method == "GET":
                url += "?" + r.query
            sig = r.headers["x-twilio-signature"]
            assert r.headers["x-signalwire-signature"] == sig
            assert validator.validate(url, r.form if r.method == "POST" else {}, sig)
        return [r.params for r in got]


@contextlib.asynccontextmanager
async def harness(tls: Tls | None, **settings_kw: Any) -> AsyncIterator[Harness]:
    kw: dict[str, Any] = {
        "allowed_networks": LOOPBACK,
        "stream_ca_file": tls.ca_file if tls else None,
        "stream_connect_timeout": 3.0,
        "callback_retries": 1,
    }
    kw.update(settings_kw)
    settings = Settings(**kw)
    async with http_recorder() as rec, ToneConference.running() as conf:
        h: Harness

        async def on_status(sid: str, status: str, code: int | None, msg: str | None) -> None:
            h.statuses.append((sid, status, code, msg))
            async with h.changed:
                h.changed.notify_all()

        # Callbacks always go to the local recorder, whatever the streams' policy is.
        sender = CallbackSender(settings.model_copy(update={"allowed_networks": LOOPBACK}))
        manager = StreamManager(settings, conf.engine, on_status, callbacks=sender)
        h = Harness(settings, manager, conf, rec)
        try:
            yield h
        finally:
            await manager.close()


def check_common(params: dict[str, str], spec: StreamSpec, event: str) -> None:
    assert params["AccountSid"] == spec.account_sid
    assert params["ConferenceSid"] == spec.conference_sid
    assert params["CallSid"] == spec.conference_sid
    assert params["StreamSid"] == spec.sid
    assert params["StreamName"] == (spec.name or spec.sid)
    assert params["StreamEvent"] == event
    assert params["StreamTrack"] == spec.track
    ts = params["Timestamp"]
    assert ts.endswith("Z") and ts[10] == "T"
    expected = {
        "AccountSid",
        "ConferenceSid",
        "CallSid",
        "StreamSid",
        "StreamName",
        "StreamEvent",
        "StreamTrack",
        "Timestamp",
    }
    if event == "stream-error":
        expected.add("StreamError")
    assert set(params) == expected


# ---------------------------------------------------------------------------- success


async def test_full_stream_messages_callbacks_and_stop(tls: Tls) -> None:
    params = {f"p{i}": f"value {i} é" for i in range(1, 100)}  # 99 custom parameters
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), name="my-stream", parameters=params, bearer_token="tok-123")
        await h.manager.start(spec)
        await h.wait_status(spec.sid, "in-progress")
        assert h.manager.active(h.conf.sid) == [spec.sid]
        await rx.wait_for(lambda: len(rx.conns[0].events("media")) >= 20)
        h.conf.press("CALLER-1", "7", 160)
        await rx.wait_for(lambda: rx.conns[0].events("dtmf"))
        await h.manager.stop(spec.sid)
        await rx.wait_for(lambda: rx.conns[0].closed.is_set())
        assert h.manager.active(h.conf.sid) == []
        conn = rx.conns[0]
        assert conn.headers["Authorization"] == "Bearer tok-123"
        assert conn.path == "/media"
        assert conn.ws.close_code == 1000
        check_messages(conn, spec, params)
        assert h.status_of(spec.sid) == [("in-progress", None), ("stopped", None)]
        cbs = await h.callbacks_of(spec.sid, 2)
        check_common(cbs[0], spec, "stream-started")
        check_common(cbs[1], spec, "stream-stopped")
        # stopping again is a no-op
        await h.manager.stop(spec.sid)
        assert len(h.status_of(spec.sid)) == 2


def check_messages(conn: Conn, spec: StreamSpec, params: dict[str, str]) -> None:
    msgs = conn.messages
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "0.2.0"}
    assert msgs[1] == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": spec.sid,
        "start": {
            "streamSid": spec.sid,
            "accountSid": spec.account_sid,
            "callSid": spec.conference_sid,
            "conferenceSid": spec.conference_sid,
            "tracks": ["inbound", "outbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert list(msgs[1]["start"]["customParameters"]) == list(params)
    # sequence numbers: every message after connected, from 1, no gaps
    assert [m["sequenceNumber"] for m in msgs[1:]] == [str(i) for i in range(1, len(msgs))]
    for m in msgs[1:]:
        assert m["streamSid"] == spec.sid
    media = [m for m in msgs if m["event"] == "media"]
    for track in ("inbound", "outbound"):
        mt = [m["media"] for m in media if m["media"]["track"] == track]
        assert [m["chunk"] for m in mt] == [str(i) for i in range(1, len(mt) + 1)]
        stamps = [int(m["timestamp"]) for m in mt]
        assert stamps[0] == 0
        assert all(b - a == 20 for a, b in itertools.pairwise(stamps))
        for m in mt:
            assert set(m) == {"track", "chunk", "timestamp", "payload"}
            assert all(isinstance(v, str) for v in m.values())
            assert len(base64.b64decode(m["payload"])) == 160
    # inbound and outbound alternate per tick
    assert [m["media"]["track"] for m in media[:4]] == ["inbound", "outbound"] * 2
    (dtmf,) = conn.events("dtmf")
    assert dtmf["dtmf"] == {
        "track": "inbound_track",
        "digit": "7",
        "duration": 160,
        "callSid": "CALLER-1",
    }
    assert msgs[-1] == {
        "event": "stop",
        "sequenceNumber": str(len(msgs) - 1),
        "streamSid": spec.sid,
        "stop": {
            "accountSid": spec.account_sid,
            "callSid": spec.conference_sid,
            "conferenceSid": spec.conference_sid,
        },
    }


@pytest.mark.parametrize(
    ("codec", "encoding", "rate"),
    [
        ("PCMU", "audio/x-mulaw", 8000),
        ("PCMA", "audio/x-alaw", 8000),
        ("L16", "audio/x-L16", 8000),
        ("L16@16000h", "audio/x-L16", 16000),
        ("L16@24000h", "audio/x-L16", 24000),
    ],
)
async def test_codecs_carry_the_tone(tls: Tls, codec: str, encoding: str, rate: int) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), codec=codec, track="inbound_track")
        await h.manager.start(spec)
        await rx.wait_for(lambda: len(rx.conns) == 1 and len(rx.conns[0].events("media")) >= 30)
        await h.manager.stop(spec.sid)
        conn = rx.conns[0]
        assert conn.events("start")[0]["start"]["mediaFormat"] == {
            "encoding": encoding,
            "sampleRate": rate,
            "channels": 1,
        }
        assert conn.events("start")[0]["start"]["tracks"] == ["inbound"]
        media = conn.events("media")
        assert {m["media"]["track"] for m in media} == {"inbound"}
        frames = [decode(m["media"]["payload"], codec) for m in media[5:25]]
        assert all(len(f) == rate // 50 for f in frames)
        audio = np.concatenate(frames)
        assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 1000
        assert abs(dominant_freq(audio, rate) - h.conf.inbound_hz) < 15


async def test_outbound_track_only_and_get_callbacks(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), track="outbound_track", status_callback_method="GET")
        await h.manager.start(spec)
        await rx.wait_for(lambda: len(rx.conns) == 1 and len(rx.conns[0].events("media")) >= 10)
        h.conf.press("CALLER-1", "1", 100)  # dtmf only goes to streams with the inbound track
        await asyncio.sleep(0.1)
        await h.manager.stop(spec.sid)
        conn = rx.conns[0]
        assert {m["media"]["track"] for m in conn.events("media")} == {"outbound"}
        assert conn.events("dtmf") == []
        cbs = await h.callbacks_of(spec.sid, 2)
        assert [c["StreamEvent"] for c in cbs] == ["stream-started", "stream-stopped"]
        assert all(r.method == "GET" for r in h.callbacks.requests)


# ---------------------------------------------------------------------------- failures


async def expect_failure(
    h: Harness, spec: StreamSpec, code: int, stream_error: str, *, start: bool = True
) -> None:
    if start:
        await h.manager.start(spec)
    await h.wait_stopped(spec.sid)
    statuses = h.status_of(spec.sid)
    assert statuses[-1] == ("stopped", code)
    assert [s for s, _ in statuses].count("stopped") == 1
    started = ("in-progress", None) in statuses
    cbs = await h.callbacks_of(spec.sid, 3 if started else 2)
    events = [c["StreamEvent"] for c in cbs]
    assert events == (["stream-started"] if started else []) + ["stream-error", "stream-stopped"]
    check_common(cbs[-2], spec, "stream-error")
    assert cbs[-2]["StreamError"] == stream_error
    check_common(cbs[-1], spec, "stream-stopped")
    assert h.manager.active(h.conf.sid) == []


async def test_ws_url_is_refused_synchronously(tls: Tls) -> None:
    async with raw_server(b"HTTP/1.1 500 x\r\n\r\n") as srv, harness(tls) as h:
        for url in (f"ws://127.0.0.1:{srv.port}/", f"https://127.0.0.1:{srv.port}/", "wss://x/ y"):
            spec = h.spec(url)
            await h.manager.start(spec)
            # reported before start() returned
            assert h.status_of(spec.sid) == [("stopped", 31922)]
            await expect_failure(h, spec, 31922, "invalid_url", start=False)
        assert srv.accepted == 0


async def test_private_address_outside_allowed_networks(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls, allowed_networks=[]) as h:
        await expect_failure(h, h.spec(rx.url(host="127.0.0.1")), 31922, "invalid_url")
        await expect_failure(h, h.spec(rx.url(host="localhost")), 31922, "invalid_url")
    assert rx.conns == []
    async with raw_server(None) as srv, harness(tls, allowed_networks=["10.0.0.0/8"]) as h:
        await expect_failure(h, h.spec(f"wss://127.0.0.1:{srv.port}/"), 31922, "invalid_url")
        assert srv.accepted == 0


async def test_untrusted_certificate(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(None) as h:
        spec = h.spec(rx.url())
        await expect_failure(h, spec, 31910, "connection_refused_timeout_or_ssl_error")
        assert rx.conns == []


async def test_connection_refused(tls: Tls) -> None:
    async with raw_server(None) as srv:
        port = srv.port
    async with harness(tls) as h:
        await expect_failure(h, h.spec(f"wss://127.0.0.1:{port}/"), 31902, "connection_refused")


async def test_non_101_answer(tls: Tls) -> None:
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with raw_server(answer, tls.server_ctx) as srv, harness(tls) as h:
        await expect_failure(h, h.spec(f"wss://localhost:{srv.port}/"), 31920, "connection_refused")
        assert srv.accepted == 1


async def test_redirect_is_not_followed(tls: Tls) -> None:
    answer = b"HTTP/1.1 302 Found\r\nLocation: wss://localhost:1/else\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(answer, tls.server_ctx) as srv, harness(tls) as h:
        await expect_failure(h, h.spec(f"wss://localhost:{srv.port}/"), 31920, "connection_refused")


async def test_connect_timeout(tls: Tls) -> None:
    async with (
        raw_server(None, tls.server_ctx) as srv,
        harness(tls, stream_connect_timeout=0.5) as h,
    ):
        await expect_failure(
            h,
            h.spec(f"wss://localhost:{srv.port}/"),
            31901,
            "connection_refused_timeout_or_ssl_error",
        )


async def close_1011(conn: Conn) -> None:
    while len(conn.events("media")) < 5:
        conn.messages.append(json.loads(await conn.ws.recv()))
    await conn.ws.close(1011, "boom")


async def drop_tcp(conn: Conn) -> None:
    while len(conn.events("media")) < 5:
        conn.messages.append(json.loads(await conn.ws.recv()))
    conn.ws.transport.abort()


async def close_normally(conn: Conn) -> None:
    while len(conn.events("media")) < 5:
        conn.messages.append(json.loads(await conn.ws.recv()))
    await conn.ws.close(1000)


@pytest.mark.parametrize(("behaviour", "code"), [(close_1011, 31921), (drop_tcp, 31903)])
async def test_receiver_ends_abnormally(tls: Tls, behaviour: Any, code: int) -> None:
    async with ws_receiver(tls, behaviour) as rx, harness(tls) as h:
        spec = h.spec(rx.url())
        await expect_failure(h, spec, code, "general_error")
        assert h.status_of(spec.sid)[0] == ("in-progress", None)
        assert rx.conns[0].events("stop") == []


async def test_receiver_closing_normally_is_not_an_error(tls: Tls) -> None:
    async with ws_receiver(tls, close_normally) as rx, harness(tls) as h:
        spec = h.spec(rx.url())
        await h.manager.start(spec)
        await h.wait_stopped(spec.sid)
        assert h.status_of(spec.sid) == [("in-progress", None), ("stopped", None)]
        cbs = await h.callbacks_of(spec.sid, 2)
        assert [c["StreamEvent"] for c in cbs] == ["stream-started", "stream-stopped"]
        assert len(rx.conns) == 1


async def test_ping_timeout(tls: Tls) -> None:
    # The receiver never answers pings (auto-pong is a protocol duty; an unresponsive peer is
    # simulated by pausing its reading of the socket).
    async def frozen(conn: Conn) -> None:
        conn.ws.transport.pause_reading()
        await conn.ws.wait_closed()

    async with (
        ws_receiver(tls, frozen) as rx,
        harness(tls, stream_ping_interval=0.3, stream_ping_timeout=0.5) as h,
    ):
        spec = h.spec(rx.url())
        await expect_failure(h, spec, 31903, "general_error")
        msg = next(m for s, st, c, m in h.statuses if s == spec.sid and st == "stopped")
        assert msg is not None and "pong" in msg


# ---------------------------------------------------------------------------- sending path


async def test_audio_written_from_the_tick_keeps_numbering_order_tone_and_counters(
    tls: Tls,
) -> None:
    # A receiver that keeps up: audio is written from the tick (session.direct_ticks), a dtmf
    # queued between two ticks comes right after the audio of the ticks before it, and every
    # message is numbered and counted exactly once.
    media_before = sample("confstream_stream_messages_total", event="media")
    bytes_before = sample("confstream_stream_bytes_total")
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url())
        await h.manager.start(spec)
        await h.wait_status(spec.sid, "in-progress")
        session = h.manager.session(spec.sid)
        assert session is not None
        await rx.wait_for(lambda: len(rx.conns[0].events("media")) >= 40)
        # Ticks whose audio was built before the key press (written, or still queued).
        ticks_before_press = session.protocol.chunks[MediaTrack.INBOUND] + session.queued_ticks
        h.conf.press("CALLER-1", "7", 160)
        n = len(rx.conns[0].events("media"))
        await rx.wait_for(lambda: len(rx.conns[0].events("media")) >= n + 40)
        direct = session.direct_ticks
        await h.manager.stop(spec.sid)
        await rx.wait_for(lambda: rx.conns[0].closed.is_set())
        conn = rx.conns[0]
        check_messages(conn, spec, {})  # sequence numbers, chunks, timestamps, stop
        assert direct >= 30  # of at least 40 ticks; those after the dtmf may be queued
        assert session.frames_dropped == 0
        # the dtmf sits between the audio of the ticks before and after the press
        events = [m["event"] for m in conn.messages]
        at = events.index("dtmf")
        assert events[:at].count("media") == 2 * ticks_before_press
        assert events[at + 1 :].count("media") > 0
        media = conn.events("media")
        inbound = [
            decode(m["media"]["payload"], "PCMU") for m in media if m["media"]["track"] == "inbound"
        ]
        audio = np.concatenate(inbound[5:])
        assert abs(dominant_freq(audio, 8000) - h.conf.inbound_hz) < 15
        assert sample("confstream_stream_messages_total", event="media") == media_before + len(
            media
        )
        sent = sum(len(r.encode()) for r in conn.raw[: len(conn.messages)])
        assert sample("confstream_stream_bytes_total") == bytes_before + sent


async def test_media_counters_are_exact_between_ticks(tls: Tls) -> None:
    # The direct writes' counts are added once per tick (session.PENDING, flushed by a
    # call_soon the tick's first write schedules): whenever other code runs, e.g. a /metrics
    # scrape, at most the last tick's counts are pending, and counters + pending equal what
    # was built.
    media_before = sample("confstream_stream_messages_total", event="media")
    bytes_before = sample("confstream_stream_bytes_total")
    async with ws_receiver(tls) as rx, harness(tls) as h:
        specs = [h.spec(rx.url()) for _ in range(3)]  # three streams of one conference
        for spec in specs:
            await h.manager.start(spec)
            await h.wait_status(spec.sid, "in-progress")
        sessions = [h.manager.session(spec.sid) for spec in specs]
        assert all(s is not None for s in sessions)
        checked = 0
        for _ in range(60):
            await asyncio.sleep(0.007)
            if any(s is None or s.queued_ticks or s._sending for s in sessions):
                continue  # the queue path counts when its batch is written
            pending = session_mod.PENDING.media
            assert pending <= 2 * len(sessions)  # at most one tick of three streams
            assert (session_mod.PENDING.size == 0) == (pending == 0)
            built = sum(sum(s.protocol.chunks.values()) for s in sessions if s is not None)
            assert sample("confstream_stream_messages_total", event="media") == (
                media_before + built - pending
            )
            checked += 1
        assert checked >= 30
        for spec in specs:
            await h.manager.stop(spec.sid)
        await rx.wait_for(lambda: len(rx.conns) == 3 and all(c.closed.is_set() for c in rx.conns))
        media = sum(len(c.events("media")) for c in rx.conns)
        assert sample("confstream_stream_messages_total", event="media") == media_before + media
        sent = sum(len(r.encode()) for c in rx.conns for r in c.raw[: len(c.messages)])
        assert sample("confstream_stream_bytes_total") == bytes_before + sent


async def test_connection_broken_mid_stream_raises_nothing_into_the_tick(
    tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    # Our side of the TCP connection is shut down while audio is written from the tick: the
    # next write fails in the tick, the tap is not dropped by the engine, and the stream ends
    # with 31903 (connection lost without a close frame, docs/protocol.md).
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url())
        await h.manager.start(spec)
        await h.wait_status(spec.sid, "in-progress")
        session = h.manager.session(spec.sid)
        assert session is not None and session._ws is not None
        await rx.wait_for(lambda: len(rx.conns[0].events("media")) >= 10)
        assert session.direct_ticks >= 5  # two messages a tick
        assert session in h.conf.media.taps
        session._ws.transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
        await expect_failure(h, spec, 31903, "general_error", start=False)
    assert not [r for r in caplog.records if "on_frame" in r.getMessage()]


# ---------------------------------------------------------------------------- load


def dropped_total() -> float:
    return REGISTRY.get_sample_value("confstream_stream_frames_dropped_total") or 0.0


async def test_slow_receiver_bounded_queue_drops_oldest(tls: Tls) -> None:
    async def stuck(conn: Conn) -> None:
        conn.ws.transport.pause_reading()
        await conn.ws.wait_closed()

    async with (
        ws_receiver(tls, stuck, max_queue=1, rcvbuf=4096) as slow,
        ws_receiver(tls) as ok,
        harness(tls, stream_queue_ms=200) as h,
    ):
        # Big frames fill socket buffers quickly: L16@24000h, both tracks (1920 B/tick).
        s1 = h.spec(slow.url(), codec="L16@24000h")
        s2 = h.spec(ok.url(), codec="L16@24000h")
        before = dropped_total()
        await h.manager.start(s1)
        await h.manager.start(s2)
        await h.wait_status(s1.sid, "in-progress")
        await h.wait_status(s2.sid, "in-progress")
        session = h.manager.session(s1.sid)
        assert session is not None
        # Like a far receiver with a small window: no send-buffer autotuning on our side.
        ws = session._ws
        assert ws is not None
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ticks_before = h.conf.ticks
        async with asyncio.timeout(30):
            while session.frames_dropped < 20:
                assert session.queued_ticks <= 10  # 200 ms / 20 ms
                await asyncio.sleep(0.02)
        assert h.conf.ticks > ticks_before + 20  # the clock kept ticking
        assert session.direct_ticks > 0  # written from the tick until the receiver stalled
        assert dropped_total() >= before + 20
        n = len(ok.conns[0].events("media"))
        await ok.wait_for(lambda: len(ok.conns[0].events("media")) >= n + 20)
        stamps = [int(m["media"]["timestamp"]) for m in ok.conns[0].events("media")]
        inbound = stamps[::2]
        assert all(b - a == 20 for a, b in itertools.pairwise(inbound))
        await h.manager.stop(s1.sid)  # bounded even though the receiver reads nothing
        await h.manager.stop(s2.sid)
        assert h.status_of(s1.sid)[-1] == ("stopped", None)


async def test_stop_conference_and_close(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        specs = [h.spec(rx.url(f"/s{i}")) for i in range(3)]
        for s in specs:
            await h.manager.start(s)
        for s in specs:
            await h.wait_status(s.sid, "in-progress")
        await h.manager.stop_conference(h.conf.sid)
        for s in specs:
            assert h.status_of(s.sid) == [("in-progress", None), ("stopped", None)]
        await rx.wait_for(lambda: all(c.closed.is_set() for c in rx.conns))
        assert all(c.messages[-1]["event"] == "stop" for c in rx.conns)
        last = h.spec(rx.url("/last"))
        await h.manager.start(last)
        await h.wait_status(last.sid, "in-progress")
        await h.manager.close()
        assert h.status_of(last.sid)[-1] == ("stopped", None)
        # close() flushed the callbacks
        assert [r.params["StreamEvent"] for r in h.callbacks.for_path(f"/cb/{last.sid}")] == [
            "stream-started",
            "stream-stopped",
        ]


# ---------------------------------------------------------------------------- bidirectional


def tone(
    hz: float, seconds: float, rate: int = 8000, amplitude: int = 8000
) -> np.ndarray[Any, Any]:
    n = np.arange(int(rate * seconds))
    return (np.sin(2 * np.pi * hz * n / rate) * amplitude).astype(np.int16)


def band_power(frames: list[np.ndarray[Any, Any]], hz: float, rate: int = 8000) -> float:
    """Power of ``frames`` within +/-20 Hz of ``hz``, relative to their total power."""
    x = np.concatenate(frames).astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    total = float(spec.sum()) or 1.0
    return float(spec[np.abs(freqs - hz) < 20].sum()) / total


async def until(pred: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll a condition set from engine ticks (which have no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def ignored_total() -> float:
    return REGISTRY.get_sample_value("confstream_stream_inbound_ignored_total") or 0.0


@pytest.mark.parametrize("codec", ["PCMU", "L16@16000h"])
async def test_returned_audio_is_heard_not_echoed_and_mark_follows_it(tls: Tls, codec: str) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), realtime=True, codec=codec)
        await h.manager.start(spec)
        await rx.wait_for(lambda: rx.conns and len(rx.conns[0].events("media")) >= 4)
        conn = rx.conns[0]
        session = h.manager.session(spec.sid)
        assert session is not None and session.source is not None
        rate = 16000 if codec == "L16@16000h" else 8000
        audio = tone(1000, 1.0, rate)
        if codec == "PCMU":
            payload = audioop.lin2ulaw(audio.astype("<i2").tobytes(), 2)
        else:
            payload = audio.astype("<i2").tobytes()
        heard_before = len(h.conf.talker.heard)
        out_before = len(conn.events("media"))
        # any chunking: three uneven pieces
        cuts = [0, 1001, 5003, len(payload)]
        for a, b in itertools.pairwise(cuts):
            piece = base64.b64encode(payload[a:b]).decode()
            await conn.send({"event": "media", "streamSid": spec.sid, "media": {"payload": piece}})
        await conn.send({"event": "mark", "streamSid": spec.sid, "mark": {"name": "after-1s"}})
        await rx.wait_for(lambda: conn.events("mark"), timeout=10)
        # the mark came back only once all the audio before it had been mixed
        assert session.source.played_samples >= 8000 - 80
        (mark,) = conn.events("mark")
        assert mark["mark"] == {"name": "after-1s"}
        assert mark["streamSid"] == spec.sid
        # the talker hears everyone but itself: here only the returned audio
        heard = h.conf.talker.heard[heard_before:]
        loud = [f for f in heard if np.sqrt(np.mean(f.astype(np.float64) ** 2)) > 1000]
        assert len(loud) >= 45  # ~50 frames of returned audio reached the participants
        assert band_power(loud, 1000) > 0.9
        # the stream's own outbound track carries the talker, not its returned audio
        out = [
            decode(m["media"]["payload"], codec)
            for m in conn.events("media")[out_before:]
            if m["media"]["track"] == "outbound"
        ]
        assert band_power(out, 1000, rate) < 0.01
        assert band_power(out, 440, rate) > 0.8
        await h.manager.stop(spec.sid)
        assert [m["sequenceNumber"] for m in conn.messages[1:]] == [
            str(i) for i in range(1, len(conn.messages))
        ]


async def test_clear_echoes_pending_marks_and_dtmf_reaches_participants(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), realtime=True)
        await h.manager.start(spec)
        await rx.wait_for(lambda: rx.conns and len(rx.conns[0].events("media")) >= 2)
        conn = rx.conns[0]
        session = h.manager.session(spec.sid)
        assert session is not None and session.source is not None
        # 4 s per message: 43 KB of base64, within the 64 KiB message limit.
        long = audioop.lin2ulaw(tone(1000, 4.0).astype("<i2").tobytes(), 2)
        await conn.send({"event": "media", "media": {"payload": base64.b64encode(long).decode()}})
        await conn.send({"event": "mark", "mark": {"name": "a"}})
        await conn.send({"event": "media", "media": {"payload": base64.b64encode(long).decode()}})
        await conn.send({"event": "mark", "mark": {"name": "b"}})
        await asyncio.sleep(0.3)
        assert conn.events("mark") == []
        await conn.send({"event": "clear", "streamSid": spec.sid})
        await rx.wait_for(lambda: len(conn.events("mark")) == 2)
        assert [m["mark"]["name"] for m in conn.events("mark")] == ["a", "b"]
        assert session.source.queued_samples == 0
        assert session.source.played_samples < 8000 * 4
        await conn.send({"event": "dtmf", "streamSid": spec.sid, "dtmf": {"digit": "5"}})
        await until(lambda: h.conf.listener.dtmf)
        assert h.conf.listener.dtmf == [("5", 200)]
        assert h.conf.talker.dtmf == [("5", 200)]
        before = ignored_total()
        await conn.send({"event": "bogus"})
        await conn.ws.send(b"\x00\x01")
        await until(lambda: ignored_total() >= before + 2)
        assert h.manager.active(h.conf.sid) == [spec.sid]  # malformed input does not end it
        await h.manager.stop(spec.sid)


async def test_not_realtime_ignores_returned_messages(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), realtime=False)
        await h.manager.start(spec)
        await rx.wait_for(lambda: rx.conns and len(rx.conns[0].events("media")) >= 2)
        conn = rx.conns[0]
        before = ignored_total()
        heard_before = len(h.conf.listener.heard)
        audio = audioop.lin2ulaw(tone(1000, 0.5).astype("<i2").tobytes(), 2)
        await conn.send({"event": "media", "media": {"payload": base64.b64encode(audio).decode()}})
        await conn.send({"event": "mark", "mark": {"name": "x"}})
        await conn.send({"event": "clear"})
        await conn.send({"event": "dtmf", "dtmf": {"digit": "1"}})
        await until(lambda: ignored_total() >= before + 4)
        await asyncio.sleep(0.6)
        assert conn.events("mark") == []
        assert h.conf.listener.dtmf == []
        heard = h.conf.listener.heard[heard_before:]
        assert max(float(np.abs(f).max()) for f in heard) > 0  # hears the talker
        assert band_power(heard, 1000) < 0.01
        await h.manager.stop(spec.sid)


async def test_tls_verifies_the_host_name_while_connecting_to_the_checked_ip(tls: Tls) -> None:
    # A certificate for "localhost" only: the connection goes to 127.0.0.1 (the checked
    # address) but the certificate must match the URL's host name.
    cert = tls.ca.issue_cert("localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    named_only = Tls(tls.ca, tls.ca_file, ctx)
    async with ws_receiver(named_only) as rx, harness(tls, allowed_networks=["127.0.0.0/8"]) as h:
        ok = h.spec(rx.url(host="localhost"))
        await h.manager.start(ok)
        await h.wait_status(ok.sid, "in-progress")
        await h.manager.stop(ok.sid)
        assert rx.conns[0].headers["Host"] == f"localhost:{rx.port}"
        bad = h.spec(rx.url(host="127.0.0.1"))
        await expect_failure(h, bad, 31910, "connection_refused_timeout_or_ssl_error")
        assert len(rx.conns) == 1
