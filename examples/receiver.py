"""A minimal Conference Stream receiver: a wss:// server that prints what confstream sends.

Run it, then point a stream at it:

    .venv/bin/python examples/receiver.py --port 8765 --ca-out var/receiver-ca.pem
    # in another shell: start the server trusting that CA and allowing loopback
    CONFSTREAM_STREAM_CA_FILE=var/receiver-ca.pem CONFSTREAM_ALLOWED_NETWORKS=127.0.0.0/8 make run
    # then, with a conference in progress:
    B=http://127.0.0.1:8080/api/laml/2010-04-01/Accounts/$SID
    curl -u "$SID:$TOKEN" "$B/Conferences/$CONF/Streams.json" \
         -d Url=wss://127.0.0.1:8765/ -d Track=both_tracks

For local use it makes its own certificate authority with ``trustme`` and writes the CA
certificate to ``--ca-out``; in production you would use a certificate from a public CA and
the server needs no extra settings. With ``--wav-dir`` it writes each track to a WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import wave
from pathlib import Path
from typing import Any

import numpy as np
import trustme
from websockets.asyncio.server import ServerConnection, serve

# Decoding tables for G.711 (what the stream sends by default), made once.
_ULAW = np.array(
    [
        (1 - 2 * ((c ^ 0xFF) >> 7))
        * (((((c ^ 0xFF) & 0x0F) << 3) + 0x84 << (((c ^ 0xFF) >> 4) & 7)) - 0x84)
        for c in range(256)
    ],
    dtype=np.int16,
)


def _alaw_table() -> np.ndarray[Any, np.dtype[np.int16]]:
    out = []
    for code in range(256):
        a = code ^ 0x55
        seg = (a >> 4) & 7
        mag = ((a & 0x0F) << 4) + 8
        if seg:
            mag = (mag + 0x100) << (seg - 1)
        out.append(mag if a & 0x80 else -mag)
    return np.array(out, dtype=np.int16)


_ALAW = _alaw_table()


def decode(payload: str, encoding: str) -> np.ndarray[Any, np.dtype[np.int16]]:
    raw = base64.b64decode(payload)
    if encoding == "audio/x-mulaw":
        return _ULAW[np.frombuffer(raw, dtype=np.uint8)]
    if encoding == "audio/x-alaw":
        return _ALAW[np.frombuffer(raw, dtype=np.uint8)]
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def level_dbfs(pcm: np.ndarray[Any, np.dtype[np.int16]]) -> float:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768.0)


async def handle(ws: ServerConnection, wav_dir: Path | None) -> None:
    print(f"connection from {ws.remote_address}, auth={ws.request.headers.get('Authorization')!r}")
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
                print(
                    f"{media['track']:8} t={media['timestamp']:>7} ms  {level_dbfs(pcm):6.1f} dBFS"
                )
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

    ca = trustme.CA()
    cert = ca.issue_cert(args.host, "localhost")
    args.ca_out.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(args.ca_out))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(tls)
    if args.wav_dir is not None:
        args.wav_dir.mkdir(parents=True, exist_ok=True)

    async with serve(lambda ws: handle(ws, args.wav_dir), args.host, args.port, ssl=tls):
        print(f"listening on wss://{args.host}:{args.port}/  (CA certificate: {args.ca_out})")
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
