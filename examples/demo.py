"""See a Conference Stream with no phone: ``make demo``.

Starts confstream on free local ports with a throwaway database, dials three SIP callers
(sipp, each playing its own tone: 440, 660 and 880 Hz) into the conference ``demo``, starts a
``both_tracks`` stream to a local wss:// receiver (TLS with a certificate chain made for the
run), and shows live levels per track and per caller's tone. After a short run it stops the
stream by Name, lets the callers hang up and shuts the server down.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table
from websockets.asyncio.server import ServerConnection, serve

from confstream.media.analysis import rms_dbfs, tone, tone_levels
from confstream.media.g711 import ulaw_decode
from confstream.media.wav import write_wav
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import ServerProcess
from confstream.tools.sipp import caller_command, caller_scenario
from confstream.tools.tls import make_tls

TONES = (440.0, 660.0, 880.0)
console = Console()


class Meter:
    """Receives the stream and keeps the last second of audio per track."""

    def __init__(self) -> None:
        self.tracks: dict[str, list[np.ndarray[Any, np.dtype[np.int16]]]] = {}
        self.events: list[str] = []
        self.media = 0

    async def handle(self, ws: ServerConnection) -> None:
        async for text in ws:
            msg = json.loads(text)
            if msg["event"] == "media":
                self.media += 1
                frames = self.tracks.setdefault(msg["media"]["track"], [])
                frames.append(ulaw_decode(base64.b64decode(msg["media"]["payload"])))
                del frames[:-50]
            elif msg["event"] != "media":
                self.events.append(msg["event"])

    def table(self, elapsed: float) -> Table:
        table = Table(title=f"confstream demo — stream of conference 'demo'  ({elapsed:4.1f} s)")
        table.add_column("track")
        table.add_column("level", justify="right")
        table.add_column("meter")
        for f in TONES:
            table.add_column(f"{f:g} Hz", justify="right")
        for track in ("inbound", "outbound"):
            frames = self.tracks.get(track)
            if not frames:
                table.add_row(track, "—", "", *["" for _ in TONES])
                continue
            pcm = np.concatenate(frames)
            level = rms_dbfs(pcm)
            bar = "█" * max(0, int((level + 60) / 2))
            shares = tone_levels(pcm, TONES, 8000)
            table.add_row(
                track, f"{level:6.1f} dBFS", f"[green]{bar}", *[f"{shares[f]:.0%}" for f in TONES]
            )
        table.caption = f"events: {' → '.join(self.events)}   media messages: {self.media}"
        return table


async def run(seconds: float) -> int:
    work = Path(tempfile.mkdtemp(prefix="confstream-demo-"))
    tls = make_tls(work, ("127.0.0.1",))

    server = ServerProcess(
        work,
        env={
            "CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file),
            "CONFSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
            "CONFSTREAM_LOG_LEVEL": "warning",
        },
    )
    account = server.create_account("--friendly-name", "demo")
    sid, token = account.sid, account.token
    server.start()
    http_port, sip_port = server.http_port, server.sip_port
    meter = Meter()
    callers: list[asyncio.subprocess.Process] = []
    base = f"http://127.0.0.1:{http_port}/api/laml/2010-04-01/Accounts/{sid}"
    try:
        async with httpx.AsyncClient(auth=(sid, token), timeout=10) as api:
            console.print(f"server up: REST :{http_port}, SIP :{sip_port} (log in {work})")
            for i, f in enumerate(TONES):
                wav = write_wav(work / f"tone{i}.wav", tone(f, 2.0, amplitude=6000), 8000, "ulaw")
                scenario = caller_scenario(work / f"caller{i}.xml", wav, seconds + 2)
                command = caller_command(
                    scenario,
                    f"127.0.0.1:{sip_port}",
                    "demo",
                    sid,
                    token,
                    sip_port=free_port(),
                    media_port=free_media_port(),
                )
                callers.append(
                    await asyncio.create_subprocess_exec(
                        *command,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                        cwd=work,
                    )
                )
                console.print(f"caller {i + 1} dialled sip:demo@127.0.0.1:{sip_port}, {f:g} Hz")
            conf = None
            for _ in range(100):
                page = (await api.get(f"{base}/Conferences.json?FriendlyName=demo")).json()
                if page["conferences"]:
                    conf = page["conferences"][0]["sid"]
                    break
                await asyncio.sleep(0.1)
            if conf is None:
                console.print("[red]the conference did not start; see the server log")
                return 1
            async with serve(meter.handle, "127.0.0.1", 0, ssl=tls.server_ctx) as ws_server:
                port = next(iter(ws_server.sockets)).getsockname()[1]
                created_at = time.monotonic()
                resp = await api.post(
                    f"{base}/Conferences/{conf}/Streams.json",
                    data={"Url": f"wss://127.0.0.1:{port}/demo", "Name": "demo-meter"},
                )
                console.print(f"stream created: {resp.json()['sid']} ({resp.json()['status']})")
                with Live(meter.table(0), console=console, refresh_per_second=8) as live:
                    while (elapsed := time.monotonic() - created_at) < seconds:
                        live.update(meter.table(elapsed))
                        await asyncio.sleep(0.125)
                stopped = await api.post(
                    f"{base}/Conferences/{conf}/Streams/demo-meter.json", data={"Status": "stopped"}
                )
                console.print(f"stream stopped by Name: status={stopped.json()['status']}")
                await asyncio.sleep(0.5)
            for proc in callers:
                await asyncio.wait_for(proc.wait(), 30)
            final = (await api.get(f"{base}/Conferences/{conf}.json")).json()
            console.print(f"callers hung up; conference status: {final['status']}")
    finally:
        for proc in callers:
            if proc.returncode is None:
                proc.kill()
        code = server.stop()
    console.print("server shut down cleanly" if code == 0 else f"server exit: {code}")
    return 0 if meter.media > 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to stream")
    sys.exit(asyncio.run(run(parser.parse_args().seconds)))


if __name__ == "__main__":
    main()
