"""A minimal Conference Stream receiver: a wss:// server that prints what confstream sends.

Run it, then point a stream at it:

    .venv/bin/python examples/receiver.py --port 8765 --ca-out var/receiver-ca.pem
    # in another shell: start the server trusting that CA and allowing loopback
    CONFSTREAM_STREAM_CA_FILE=var/receiver-ca.pem CONFSTREAM_ALLOWED_NETWORKS=127.0.0.0/8 make run
    # then, with a conference in progress:
    B=http://127.0.0.1:8080/api/laml/2010-04-01/Accounts/$SID
    curl -u "$SID:$TOKEN" "$B/Conferences/$CONF/Streams.json" \
         -d Url=wss://127.0.0.1:8765/ -d Track=both_tracks

For local use it makes its own certificate authority (``confstream.tools.tls``, which needs the
``dev`` extra for ``trustme``) and writes the CA certificate to ``--ca-out``; in production you
would use a certificate from a public CA and the server needs no extra settings. With
``--wav-dir`` it writes each track to a WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from confstream.media.analysis import rms_dbfs
from confstream.media.g711 import alaw_decode, ulaw_decode
from confstream.tools.tls import make_tls


def decode(payload: str, encoding: str) -> np.ndarray[Any, np.dtype[np.int16]]:
    raw = base64.b64decode(payload)
    if encoding == "audio/x-mulaw":
        return ulaw_decode(raw)
    if encoding == "audio/x-alaw":
        return alaw_decode(raw)
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


async def handle(ws: ServerConnection, wav_dir: Path | None) -> None:
    auth = ws.request.headers.get("Authorization") if ws.request is not None else None
    print(f"connection from {ws.remote_address}, auth={auth!r}")
    encoding, rate = "audio/x-mulaw", 8000
    writers: dict[str, wave.Wave_write] = {}
    async for text in ws:
        msg = json.loads(text)
        event = msg["event"]
        if event == "start":
            fmt = msg["start"]["mediaFormat"]
            encoding, rate = fmt["encoding"], fmt["sampleRate"]
            print("start", json.dumps(msg["start"]))
        elif event == "media":
            media = msg["media"]
            pcm = decode(media["payload"], encoding)
            if int(media["chunk"]) % 50 == 1:  # about once a second per track
                print(f"{media['track']:8} t={media['timestamp']:>7} ms  {rms_dbfs(pcm):6.1f} dBFS")
            if wav_dir is not None:
                if media["track"] not in writers:
                    w = wave.open(str(wav_dir / f"{msg['streamSid']}-{media['track']}.wav"), "wb")
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(rate)
                    writers[media["track"]] = w
                writers[media["track"]].writeframes(pcm.astype("<i2").tobytes())
        else:
            print(event, json.dumps(msg))
    for w in writers.values():
        w.close()
    print("connection closed")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--ca-out", type=Path, default=Path("var/receiver-ca.pem"))
    parser.add_argument("--wav-dir", type=Path, default=None)
    args = parser.parse_args()

    tls = make_tls(args.ca_out.parent, (args.host, "localhost"), ca_name=args.ca_out.name)
    if args.wav_dir is not None:
        args.wav_dir.mkdir(parents=True, exist_ok=True)

    async with serve(lambda ws: handle(ws, args.wav_dir), args.host, args.port, ssl=tls.server_ctx):
        print(f"listening on wss://{args.host}:{args.port}/  (CA certificate: {args.ca_out})")
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
