"""Receivers that abuse a stream or stop responding, against the real StreamManager, a real TLS
WebSocket receiver and the real engine clock (docs/protocol.md, "Limits on what receivers
send" and "Slow or broken receivers")."""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import socket
import time

from prometheus_client import REGISTRY
from websockets.protocol import State

from .peers import Conn, Tls, ws_receiver
from .test_streams import Harness, dropped_total, expect_failure, harness, tone, until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def stopped_total(reason: str) -> float:
    return sample("confstream_stream_receivers_stopped_total", reason=reason)


def ulaw_b64(seconds: float, hz: float = 1000.0) -> str:
    pcm = tone(hz, seconds).astype("<i2").tobytes()
    return base64.b64encode(audioop.lin2ulaw(pcm, 2)).decode()


async def first_conn(rx: object) -> Conn:
    conns: list[Conn] = rx.conns  # type: ignore[attr-defined]
    await rx.wait_for(lambda: conns and conns[0].events("start"))  # type: ignore[attr-defined]
    return conns[0]


async def test_a_message_over_the_size_limit_stops_the_stream_unread(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), realtime=True)
        before = stopped_total("message_too_big")
        await h.manager.start(spec)
        conn = await first_conn(rx)
        big = {"event": "media", "media": {"payload": "A" * 1_000_000}}  # 1 MB
        with contextlib.suppress(Exception):
            await conn.send(big)
        await expect_failure(h, spec, 31924, "general_error", start=False)
        msg = next(m for s, st, c, m in h.statuses if s == spec.sid and st == "stopped")
        assert msg == "receiver sent a message over 65536 bytes"
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.ws.close_code == 1009
        assert stopped_total("message_too_big") == before + 1


async def test_a_message_flood_stops_the_stream_with_1008(tls: Tls) -> None:
    async def flood(conn: Conn) -> None:
        while (await rx.read_one(conn))["event"] != "start":
            pass
        reading = asyncio.ensure_future(rx.record(conn))
        with contextlib.suppress(Exception):
            for i in range(20_000):
                await conn.send({"event": "mark", "mark": {"name": f"m{i}"}})
        await reading

    async with (
        ws_receiver(tls, flood) as rx,
        harness(tls, stream_inbound_rate=50, stream_inbound_burst=200) as h,
    ):
        spec = h.spec(rx.url(), realtime=True)
        frames_before = dropped_total()
        marks_before = sample("confstream_stream_marks_dropped_total")
        flood_before = stopped_total("message_rate")
        await h.manager.start(spec)
        await expect_failure(h, spec, 31924, "general_error", start=False)
        msg = next(m for s, st, c, m in h.statuses if s == spec.sid and st == "stopped")
        assert msg is not None and "faster than 50/s beyond a burst of 200" in msg
        conn = rx.conns[0]
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.ws.close_code == 1008
        assert conn.messages[-1]["event"] == "stop"
        # Marks are not frames: nothing was counted as a frame drop.
        assert dropped_total() == frames_before
        assert sample("confstream_stream_marks_dropped_total") == marks_before
        assert 150 <= len(conn.events("mark")) <= 260  # the burst (+ refill), echoed at once
        assert stopped_total("message_rate") == flood_before + 1


def conf_ticks(h: Harness) -> int:
    """Mixer ticks run so far (skipped ones included: audio does not play in those)."""
    engine = h.conf.engine
    return engine.ticks_run + engine.ticks_skipped


async def test_returned_audio_is_bounded_in_seconds_and_the_excess_counted(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls, stream_return_audio_max_seconds=2.0) as h:
        spec = h.spec(rx.url(), realtime=True)
        await h.manager.start(spec)
        conn = await first_conn(rx)
        session = h.manager.session(spec.sid)
        assert session is not None and session.source is not None
        source = session.source
        metric_before = sample("confstream_stream_return_audio_dropped_seconds_total")
        for _ in range(5):  # 5 s of audio at once; 2 s fit
            await conn.send({"event": "media", "media": {"payload": ulaw_b64(1.0)}})
        await conn.send({"event": "mark", "mark": {"name": "after-audio"}})
        await until(lambda: session.return_audio_dropped >= 2 * 8000)
        await asyncio.sleep(0.2)
        assert source.queued_samples <= 2 * 8000
        # About 3 s dropped (less what played while the messages arrived).
        assert 2.5 * 8000 <= session.return_audio_dropped <= 3 * 8000
        metric = sample("confstream_stream_return_audio_dropped_seconds_total") - metric_before
        assert abs(metric - session.return_audio_dropped / 8000) < 1e-6
        # The mark follows the audio that was kept: about 2 s of mixer ticks, not 5 s (counted
        # in ticks, not wall time: a loaded machine's clock may run late and skip).
        t0 = conf_ticks(h)
        await rx.wait_for(lambda: conn.events("mark"), timeout=20)
        assert conf_ticks(h) - t0 < 2.5 * 50
        assert h.manager.active(h.conf.sid) == [spec.sid]  # dropping is not a failure
        await h.manager.stop(spec.sid)
        assert h.status_of(spec.sid)[-1] == ("stopped", None)


async def test_pending_marks_are_bounded_and_not_counted_as_frames(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls, stream_max_pending_marks=5) as h:
        spec = h.spec(rx.url(), realtime=True)
        await h.manager.start(spec)
        conn = await first_conn(rx)
        session = h.manager.session(spec.sid)
        assert session is not None
        frames_before = dropped_total()
        marks_before = sample("confstream_stream_marks_dropped_total")
        await conn.send({"event": "media", "media": {"payload": ulaw_b64(1.0)}})
        for i in range(8):
            await conn.send({"event": "mark", "mark": {"name": f"m{i}"}})
        await until(lambda: session.marks_dropped == 3)
        await rx.wait_for(lambda: len(conn.events("mark")) >= 5, timeout=5)
        await asyncio.sleep(0.3)
        assert [m["mark"]["name"] for m in conn.events("mark")] == [f"m{i}" for i in range(5)]
        assert sample("confstream_stream_marks_dropped_total") == marks_before + 3
        assert dropped_total() == frames_before
        # Once echoed they no longer count against the limit.
        await conn.send({"event": "mark", "mark": {"name": "later"}})
        await rx.wait_for(lambda: len(conn.events("mark")) == 6, timeout=5)
        await h.manager.stop(spec.sid)


async def test_receiver_dtmf_is_bounded_to_five_seconds_of_digits(tls: Tls) -> None:
    async with ws_receiver(tls) as rx, harness(tls) as h:
        spec = h.spec(rx.url(), realtime=True)
        await h.manager.start(spec)
        conn = await first_conn(rx)
        before = sample("confstream_stream_dtmf_dropped_total", direction="to_conference")
        for _ in range(40):
            await conn.send({"event": "dtmf", "dtmf": {"digit": "7", "duration": 200}})
        await until(
            lambda: (
                sample("confstream_stream_dtmf_dropped_total", direction="to_conference")
                >= before + 15
            )
        )
        assert len(h.conf.listener.dtmf) == 25
        assert h.manager.active(h.conf.sid) == [spec.sid]
        await h.manager.stop(spec.sid)


async def test_a_receiver_that_stops_reading_ends_within_ping_and_close_timeouts(tls: Tls) -> None:
    """The receiver keeps TCP open but reads nothing: once the buffers are full (about 3 s at
    this rate, most of it in the receiver's TLS layer) even a ping cannot be written. The next
    ping's deadline ends the stream, and the close (which cannot be written either) is bounded
    by the close timeout, then the connection is aborted."""

    async def stuck(conn: Conn) -> None:
        conn.ws.transport.pause_reading()  # TCP stays open; its window fills up
        await conn.ws.wait_closed()

    interval, ping_timeout, close_timeout = 6.0, 1.0, 0.5
    async with (
        ws_receiver(tls, stuck, max_queue=1, rcvbuf=4096) as rx,
        harness(
            tls,
            stream_ping_interval=interval,
            stream_ping_timeout=ping_timeout,
            stream_close_timeout=close_timeout,
        ) as h,
    ):
        spec = h.spec(rx.url(), codec="L16@24000h")  # 2.9 KB per tick fills buffers fast
        before = stopped_total("unresponsive")
        await h.manager.start(spec)
        await h.wait_status(spec.sid, "in-progress")
        t0 = time.monotonic()
        session = h.manager.session(spec.sid)
        assert session is not None and session._ws is not None
        ws = session._ws
        # Like a far receiver with a small window: no send-buffer autotuning on our side.
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        # The sender is blocked: audio piles up in the (bounded) send queue.
        await until(lambda: session.queued_ticks >= 10, timeout=interval - 1)
        await expect_failure(h, spec, 31903, "general_error", start=False)
        elapsed = time.monotonic() - t0
        # The first ping (at `interval`) cannot be written; its deadline, then the close bound.
        assert elapsed < interval + ping_timeout + close_timeout + 1.5, elapsed
        msg = next(m for s, st, c, m in h.statuses if s == spec.sid and st == "stopped")
        assert msg == (
            "receiver stopped reading (ping not sent): no pong from the receiver within 1 s"
        )
        assert ws.state is State.CLOSED  # aborted: the close frame could not be written
        assert ws.protocol.close_rcvd is None
        assert stopped_total("unresponsive") == before + 1
