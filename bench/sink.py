"""The stream sink: a ``wss://`` server that receives conference streams and times the bursts.

``python -m bench.sink --cert CHAIN.pem --key KEY.pem --out result.json``

It listens on 127.0.0.1 (port 0 unless ``--port``), prints ``{"event": "listening", "port": P}``
on stdout, then one ``{"event": "first_media", ...}`` line per stream when its first ``media``
message arrives (so :mod:`bench.run` can measure stream start latency while the run goes on).
On SIGTERM/SIGINT it writes everything it saw to ``--out`` as JSON and exits.

Per message the sink takes ``time.time()`` first, then parses the JSON. ``start`` gives the
stream SID, the conference's room (``customParameters.room``) and the media format. For each
``media`` message the payload is decoded and the share of loud samples (``|x| >``
:data:`LOUD_LEVEL`) computed: µ-law/A-law with ``bytes.translate`` through a 0/1 table, L16
with NumPy. A frame whose loud share exceeds :data:`LOUD_SHARE` after a quiet frame, and at
least :data:`REFRACTORY_S` after the previous onset on that track, is the *onset* of a marked
burst; its arrival time is recorded with the room, stream, track and the message's
``timestamp``. Background speech of ten callers (peak 1500 each) never comes near the level.

Also counted per stream and track: media messages, bytes, and timeline gaps (a ``timestamp``
step other than 20 ms means the server dropped frames; CONTRACT §2.2).

A stream whose ``start`` has no ``room`` parameter (the extra streams of a conference in the
streams-per-core sweep) is only *counted* after its first ``media`` message: messages and
bytes, nothing parsed, so that 1000 streams do not need more than the sink's core.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from confstream.media.g711 import ALAW_DECODE, ULAW_DECODE
from confstream.tools.tls import load_server_context

#: A sample at least this loud (absolute int16) counts as loud; bursts peak at 20000.
LOUD_LEVEL = 12000
#: Share of loud samples that makes a frame part of a burst (a 20000-peak sine has ~59 %).
LOUD_SHARE = 0.25
#: Minimum time between two onsets on one track (bursts are 1 s apart, 60 ms long).
REFRACTORY_S = 0.3


def _loud_table(decode: np.ndarray[Any, np.dtype[np.int16]]) -> bytes:
    return bytes(1 if abs(int(v)) >= LOUD_LEVEL else 0 for v in decode)


ULAW_LOUD = _loud_table(ULAW_DECODE)
ALAW_LOUD = _loud_table(ALAW_DECODE)


def loud_share(encoding: str, payload: bytes) -> float:
    """Share of samples in ``payload`` at least :data:`LOUD_LEVEL` loud."""
    if not payload:
        return 0.0
    if encoding == "audio/x-mulaw":
        return payload.translate(ULAW_LOUD).count(1) / len(payload)
    if encoding == "audio/x-alaw":
        return payload.translate(ALAW_LOUD).count(1) / len(payload)
    samples = np.frombuffer(payload, dtype="<i2")
    if samples.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(samples.astype(np.int32)) >= LOUD_LEVEL)) / samples.size


@dataclass
class TrackState:
    media: int = 0
    bytes: int = 0
    gaps: int = 0
    gap_ms: int = 0
    last_ts: int | None = None
    loud: bool = False
    last_onset: float = 0.0
    onsets: int = 0


@dataclass
class StreamRecord:
    stream_sid: str = ""
    room: str = ""
    path: str = ""
    encoding: str = ""
    sample_rate: int = 0
    connected_at: float = 0.0
    start_at: float = 0.0
    first_media_at: float = 0.0
    last_media_at: float = 0.0
    stopped_at: float = 0.0
    #: Counted only (no room): messages are not parsed after the first media message.
    light: bool = False
    light_bytes: int = 0
    messages: int = 0
    bad_messages: int = 0
    sequence_errors: int = 0
    tracks: dict[str, TrackState] = field(default_factory=dict)


@dataclass
class Onset:
    room: str
    stream_sid: str
    track: str
    t: float
    timestamp: int


class Sink:
    """Receives streams; :meth:`handler` is the websockets connection handler."""

    def __init__(self, announce: TextIO | None = None) -> None:
        self.announce = announce
        self.streams: list[StreamRecord] = []
        self.onsets: list[Onset] = []

    def _say(self, line: dict[str, Any]) -> None:
        if self.announce is not None:
            self.announce.write(json.dumps(line) + "\n")
            self.announce.flush()

    async def handler(self, ws: ServerConnection) -> None:
        record = StreamRecord(path=ws.request.path if ws.request else "", connected_at=time.time())
        self.streams.append(record)
        with contextlib.suppress(Exception):
            async for text in ws:
                if record.light and record.first_media_at:
                    record.messages += 1
                    record.light_bytes += len(text)
                    continue
                self.on_message(record, text, time.time())
                if record.start_at and not record.room:
                    record.light = True

    def on_message(self, record: StreamRecord, text: str | bytes, now: float) -> None:
        """One message of one stream, received at ``now`` (pure logic, no I/O but announce)."""
        record.messages += 1
        try:
            msg = json.loads(text)
            event = msg["event"]
        except (ValueError, KeyError, TypeError):
            record.bad_messages += 1
            return
        if event == "media":
            media = msg["media"]
            track = media.get("track", "")
            state = record.tracks.get(track)
            if state is None:
                state = record.tracks[track] = TrackState()
            if not record.first_media_at:
                record.first_media_at = now
                self._say(
                    {
                        "event": "first_media",
                        "stream_sid": record.stream_sid,
                        "room": record.room,
                        "t": now,
                    }
                )
            record.last_media_at = now
            payload = base64.b64decode(media["payload"])
            state.media += 1
            state.bytes += len(payload)
            timestamp = int(media.get("timestamp", 0))
            if state.last_ts is not None and timestamp - state.last_ts != 20:
                state.gaps += 1
                state.gap_ms += max(0, timestamp - state.last_ts - 20)
            state.last_ts = timestamp
            loud = loud_share(record.encoding, payload) > LOUD_SHARE
            if loud and not state.loud and now - state.last_onset >= REFRACTORY_S:
                state.last_onset = now
                state.onsets += 1
                self.onsets.append(Onset(record.room, record.stream_sid, track, now, timestamp))
            state.loud = loud
        elif event == "start":
            start = msg.get("start", {})
            record.stream_sid = msg.get("streamSid", "")
            record.room = str(start.get("customParameters", {}).get("room", ""))
            fmt = start.get("mediaFormat", {})
            record.encoding = fmt.get("encoding", "")
            record.sample_rate = int(fmt.get("sampleRate", 0))
            record.start_at = now
            if msg.get("sequenceNumber") != "1":
                record.sequence_errors += 1
        elif event == "stop":
            record.stopped_at = now

    def result(self) -> dict[str, Any]:
        return {
            "streams": [asdict(s) for s in self.streams],
            "onsets": [asdict(o) for o in self.onsets],
        }


async def serve_until_signal(
    sink: Sink,
    args: argparse.Namespace,
    before_close: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``sink.handler`` over TLS on ``args.host``/``args.port`` (``args.cert``/``key``),
    announce the port (``listening``), and return after SIGTERM or SIGINT; ``before_close`` is
    awaited while the server still holds its connections."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        sink.handler,
        args.host,
        args.port,
        ssl=load_server_context(Path(args.cert), Path(args.key)),
        max_size=2**20,
        ping_interval=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        sink._say({"event": "listening", "port": port})
        await stop.wait()
        if before_close is not None:
            await before_close()


async def _main(args: argparse.Namespace) -> Sink:
    sink = Sink(announce=sys.stdout)
    await serve_until_signal(sink, args)
    return sink


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.split("\n")[0])
    p.add_argument("--cert", required=True, help="PEM: certificate and its chain")
    p.add_argument("--key", required=True, help="PEM: private key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True, help="where to write the JSON result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        sink = asyncio.run(_main(args))
    else:
        sink = uvloop.run(_main(args))
    Path(args.out).write_text(json.dumps(sink.result()))
    sink._say({"event": "written", "path": args.out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
