"""The chaos sink: a ``wss://`` receiver that misbehaves on purpose, for :mod:`bench.soak`.

``python -m bench.chaos_sink --cert CHAIN.pem --key KEY.pem --out result.json --seed 1``

Like :mod:`bench.sink` (whose :class:`~bench.sink.Sink` does the per-message accounting: media
counts, timeline gaps, burst onsets) it listens on 127.0.0.1, prints
``{"event": "listening", "port": P}`` and one ``first_media`` line per stream on stdout, and on
SIGTERM writes what it saw to ``--out``. On top, each connection runs a *script* of chaos
actions, drawn from its own ``random.Random`` seeded with ``--seed`` and the connection's URL
path (the soak puts the stream slot and its generation in the path), so a run is reproducible
whatever order the connections arrive in:

* ``normal`` — read everything for ``--normal`` seconds (default 10-40);
* ``stall`` — stop reading for ``--stall`` seconds (default 5-60) with the TCP connection held
  open: the transport's reading is paused, so the server's socket buffer fills, its bounded send
  queue drops the oldest frames (docs/protocol.md, "Slow or broken receivers") and its pings go
  unanswered (past 20 s the server may end the stream, ``error_code`` 31903, docs/errors.md);
* ``disconnect`` — end the connection abruptly, never with a close frame: ``reset`` (SO_LINGER 0
  then abort: a TCP RST) or ``fin`` (TLS close_notify and FIN, no WebSocket close). The server
  must end the stream with an error; the soak re-creates it through REST;
* ``return`` — on bidirectional streams only (``customParameters.realtime == "true"``, set by
  the soak alongside ``StreamRealTime=true``): send audio back as ``media`` messages of PCMU
  (base64, docs/protocol.md "Bidirectional streams"), either ``paced`` (one 20 ms frame every
  20 ms, absolute deadlines, for ``--return`` seconds, a ``mark`` every second) or ``burst``
  (2-8 s of audio at once in 1 s messages, then a ``mark``, then silence for as long as the
  burst lasts, as a text-to-speech client does). Mark echoes are counted.

Draw weights: normal 0.4, stall 0.25, return 0.2 (normal instead on one-way streams),
disconnect 0.15, so a connection lives about 2 minutes with the default durations.
``--script A,B,...`` makes every connection perform those actions first (the soak smoke test
forces each action this way), then draw as above; a script entry may name the variant
(``return-burst``, ``disconnect-fin``).

Announced on stdout, one JSON line each: ``chaos`` (action, variant, seconds, stream, path) when
an action starts, ``closed`` (path, stream, who closed, close code) when a connection ends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bench.sink import Sink, StreamRecord, serve_until_signal
from confstream.media.g711 import ulaw_encode

ACTIONS = ("normal", "stall", "return", "disconnect")
WEIGHTS = (0.40, 0.25, 0.20, 0.15)
#: What ``--script`` accepts: an action, or an action with its variant.
SCRIPT_ENTRIES = (
    *ACTIONS, "return-paced", "return-burst", "disconnect-reset", "disconnect-fin"
)  # fmt: skip
FRAME_S = 0.020
#: Returned audio: a 440 Hz tone at peak 3000, far below the sink's burst level (12000), so it
#: can never be taken for a marked event on the tracks where it is heard.
RETURN_PEAK = 3000
RETURN_FREQ = 440.0
#: A burst of returned audio lasts this many seconds (uniform), sent in 1 s messages.
BURST_SECONDS = (2.0, 8.0)


def _tone_second() -> bytes:
    t = np.arange(8000) / 8000
    pcm = np.rint(RETURN_PEAK * np.sin(2 * np.pi * RETURN_FREQ * t)).astype(np.int16)
    return ulaw_encode(pcm).tobytes()


#: One second of the returned tone in PCMU; 50 frames of 160 bytes, base64 per frame/second.
TONE_SECOND = _tone_second()
FRAME_B64 = [
    base64.b64encode(TONE_SECOND[i * 160 : (i + 1) * 160]).decode() for i in range(50)
]  # fmt: skip
#: How every ``media`` message of the server begins (docs/protocol.md: compact JSON).
MEDIA_PREFIX = '{"event":"media"'
SECOND_B64 = base64.b64encode(TONE_SECOND).decode()


@dataclass
class ChaosStats:
    """Per connection: what was done to the stream and what came back."""

    path: str = ""
    realtime: bool = False
    actions: list[str] = field(default_factory=list)
    media_returned: int = 0
    seconds_returned: float = 0.0
    marks_sent: int = 0
    marks_echoed: int = 0
    closed_by: str = ""
    close_code: int | None = None


def parse_range(text: str) -> tuple[float, float]:
    """``"5,60"`` -> (5.0, 60.0)."""
    low, _, high = text.partition(",")
    lo = float(low)
    return lo, float(high) if high else lo


class ChaosSink(Sink):
    """A :class:`~bench.sink.Sink` whose connections follow a seeded chaos script."""

    def __init__(
        self,
        announce: TextIO | None = None,
        *,
        seed: int = 1,
        script: list[str] | None = None,
        normal: tuple[float, float] = (10.0, 40.0),
        stall: tuple[float, float] = (5.0, 60.0),
        returning: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        super().__init__(announce)
        self.seed = seed
        self.script = list(script or [])
        self.normal = normal
        self.stall = stall
        self.returning = returning
        self.chaos: list[ChaosStats] = []
        self.counts: Counter[str] = Counter()
        self._by_record: dict[int, ChaosStats] = {}
        self._handlers: set[asyncio.Task[Any]] = set()

    def on_message(self, record: StreamRecord, text: str | bytes, now: float) -> None:
        """Count mark echoes and note ``customParameters.realtime`` from ``start``; the rest
        (and ``start`` itself) is :class:`~bench.sink.Sink`'s accounting."""
        stats = self._by_record.get(id(record))
        if stats is not None and isinstance(text, str) and not text.startswith(MEDIA_PREFIX):
            with contextlib.suppress(ValueError, AttributeError):
                msg = json.loads(text)
                if msg.get("event") == "mark":
                    stats.marks_echoed += 1
                    record.messages += 1
                    return
                if msg.get("event") == "start":
                    params = msg.get("start", {}).get("customParameters", {})
                    stats.realtime = str(params.get("realtime", "")).lower() == "true"
        super().on_message(record, text, now)

    def draw(self, rng: random.Random, step: int, realtime: bool) -> tuple[str, str]:
        """The ``step``-th (action, variant) of a connection: the script first, then weighted
        draws; the variant of ``return`` (paced/burst) and ``disconnect`` (reset/fin) is drawn
        too unless the script names it (``return-burst``)."""
        action, variant = "", ""
        if step < len(self.script):
            action, _, variant = self.script[step].partition("-")
        else:
            action = rng.choices(ACTIONS, WEIGHTS)[0]
        if action == "return" and not realtime:
            return "normal", ""
        if action == "return" and not variant:
            variant = "burst" if rng.random() < 0.3 else "paced"
        if action == "disconnect" and not variant:
            variant = rng.choice(("reset", "fin"))
        return action, variant

    async def cancel_all(self) -> None:
        """End every connection's script (a stall may sleep for a minute): on shutdown."""
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        path = ws.request.path if ws.request else ""
        record = StreamRecord(path=path, connected_at=time.time())
        self.streams.append(record)
        stats = ChaosStats(path=path)
        self.chaos.append(stats)
        self._by_record[id(record)] = stats
        rng = random.Random(f"{self.seed}:{path}")
        reading = asyncio.Event()
        reading.set()
        started = asyncio.Event()
        reader = asyncio.create_task(self._read(ws, record, reading, started))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), 15)
            if started.is_set():
                await self._script(ws, record, stats, rng, reading, reader)
            await reader
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader
            if not stats.closed_by:
                stats.closed_by = "server"
            rcvd = ws.protocol.close_rcvd
            stats.close_code = rcvd.code if rcvd is not None else None
            self._by_record.pop(id(record), None)
            self._say(
                {"event": "closed", "path": path, "stream_sid": record.stream_sid,
                 "closed_by": stats.closed_by, "close_code": stats.close_code, "t": time.time()}
            )  # fmt: skip

    async def _read(
        self,
        ws: ServerConnection,
        record: StreamRecord,
        reading: asyncio.Event,
        started: asyncio.Event,
    ) -> None:
        """Read messages while ``reading`` is set; ``started`` once the first ``media`` came
        (the script starts then, so a stall never delays the stream's first media)."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await reading.wait()
                text = await ws.recv()
                self.on_message(record, text, time.time())
                if record.first_media_at:
                    started.set()

    async def _script(
        self,
        ws: ServerConnection,
        record: StreamRecord,
        stats: ChaosStats,
        rng: random.Random,
        reading: asyncio.Event,
        reader: asyncio.Task[None],
    ) -> None:
        realtime = stats.realtime
        step = 0
        while not reader.done():
            action, variant = self.draw(rng, step, realtime)
            step += 1
            if action == "normal":
                await self._act(stats, record, action, "", rng.uniform(*self.normal), reader)
            elif action == "stall":
                seconds = rng.uniform(*self.stall)
                self._announce(stats, record, action, "", seconds)
                reading.clear()
                ws.transport.pause_reading()
                try:
                    await asyncio.sleep(seconds)
                finally:
                    ws.transport.resume_reading()
                    reading.set()
            elif action == "return":
                if variant == "burst":
                    await self._burst(ws, record, stats, rng)
                else:
                    await self._paced(ws, record, stats, rng.uniform(*self.returning))
            else:
                self._announce(stats, record, action, variant, 0.0)
                stats.closed_by = f"sink-{variant}"
                self._disconnect(ws, variant)
                return

    async def _act(
        self,
        stats: ChaosStats,
        record: StreamRecord,
        action: str,
        variant: str,
        seconds: float,
        reader: asyncio.Task[None],
    ) -> None:
        self._announce(stats, record, action, variant, seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), seconds)

    def _announce(
        self, stats: ChaosStats, record: StreamRecord, action: str, variant: str, seconds: float
    ) -> None:
        name = f"{action}-{variant}" if variant else action
        stats.actions.append(name)
        self.counts[name] += 1
        self._say(
            {"event": "chaos", "action": action, "variant": variant, "seconds": round(seconds, 2),
             "stream_sid": record.stream_sid, "path": record.path, "t": time.time()}
        )  # fmt: skip

    async def _paced(
        self, ws: ServerConnection, record: StreamRecord, stats: ChaosStats, seconds: float
    ) -> None:
        """One 20 ms frame every 20 ms (absolute deadlines) and a mark every second."""
        self._announce(stats, record, "return", "paced", seconds)
        frames = int(seconds / FRAME_S)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(frames):
            delay = start + k * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(self._media(record, FRAME_B64[k % 50]))
            stats.media_returned += 1
            stats.seconds_returned += FRAME_S
            if k % 50 == 49:
                await self._mark(ws, record, stats)
        await self._mark(ws, record, stats)

    async def _burst(
        self, ws: ServerConnection, record: StreamRecord, stats: ChaosStats, rng: random.Random
    ) -> None:
        """Several seconds of audio at once (1 s messages), a mark, then wait that long."""
        seconds = rng.randint(int(BURST_SECONDS[0]), int(BURST_SECONDS[1]))
        self._announce(stats, record, "return", "burst", float(seconds))
        for _ in range(seconds):
            await ws.send(self._media(record, SECOND_B64))
            stats.media_returned += 1
            stats.seconds_returned += 1.0
        await self._mark(ws, record, stats)
        await asyncio.sleep(seconds)

    @staticmethod
    def _media(record: StreamRecord, payload: str) -> str:
        return json.dumps(
            {"event": "media", "streamSid": record.stream_sid, "media": {"payload": payload}}
        )

    @staticmethod
    async def _mark(ws: ServerConnection, record: StreamRecord, stats: ChaosStats) -> None:
        stats.marks_sent += 1
        name = f"m{stats.marks_sent}"
        await ws.send(
            json.dumps({"event": "mark", "streamSid": record.stream_sid, "mark": {"name": name}})
        )

    @staticmethod
    def _disconnect(ws: ServerConnection, variant: str) -> None:
        """No close frame: a TCP reset (SO_LINGER 0, abort) or TLS close_notify + FIN."""
        transport = ws.transport
        if variant == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    def result(self) -> dict[str, Any]:
        out = super().result()
        out["chaos"] = [asdict(c) for c in self.chaos]
        out["counts"] = dict(self.counts)
        return out


async def _main(args: argparse.Namespace) -> ChaosSink:
    sink = ChaosSink(
        announce=sys.stdout,
        seed=args.seed,
        script=[a for a in args.script.split(",") if a] if args.script else [],
        normal=parse_range(args.normal),
        stall=parse_range(args.stall),
        returning=parse_range(args.returning),
    )

    async def before_close() -> None:
        await sink.cancel_all()
        # written before the server closes its connections (stalled ones may take a while)
        write_result(sink, Path(args.out))

    await serve_until_signal(sink, args, before_close)
    return sink


def write_result(sink: ChaosSink, out: Path) -> None:
    """The results file, then a ``written`` line (a short blocking write at shutdown)."""
    out.write_text(json.dumps(sink.result()))
    sink._say({"event": "written", "path": str(out)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos_sink", description=__doc__.split("\n")[0]
    )
    p.add_argument("--cert", required=True, help="PEM: certificate and its chain")
    p.add_argument("--key", required=True, help="PEM: private key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--script", default="", help="actions every connection does first")
    p.add_argument("--normal", default="10,40", help="seconds of a normal spell: MIN,MAX")
    p.add_argument("--stall", default="5,60", help="seconds of a stall: MIN,MAX")
    p.add_argument(
        "--return", dest="returning", default="5,30", help="seconds of paced returned audio"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for entry in filter(None, args.script.split(",")):
        if entry not in SCRIPT_ENTRIES:
            raise SystemExit(f"unknown action {entry!r} in --script (one of {SCRIPT_ENTRIES})")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
