"""The README's commands and the examples run as written."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx

from confstream.tools.net import free_port
from confstream.tools.server import CONFSTREAM, ServerProcess

from .peers import await_for, conference_named, start_sipp_caller

ROOT = Path(__file__).resolve().parents[2]


def test_serve_prints_a_first_account_and_a_working_curl_line(tmp_path: Path) -> None:
    """What `make run` does: `confstream serve --show-first-account` on an empty database."""
    srv = ServerProcess(tmp_path)
    srv.http_port, srv.sip_port = free_port(), free_port()
    proc = subprocess.Popen(
        [CONFSTREAM, "serve", "--show-first-account"],
        env=srv.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:
            if line.strip().startswith("curl -u"):
                break
        match = re.fullmatch(r"curl -u (\S+):(\S+) (\S+)", line.strip())
        assert match, line
        sid, token, url = match.groups()
        answer = httpx.get(url, auth=(sid, token))
        assert answer.status_code == 200
        assert answer.json()["conferences"] == []
        wrong = httpx.get(url, auth=(sid, token + "x"))
        assert wrong.status_code == 401 and wrong.json()["code"] == 20003
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


async def test_receiver_example_prints_the_stream(server: ServerProcess, tmp_path: Path) -> None:
    port = free_port()
    ca_file = tmp_path / "receiver-ca.pem"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "receiver.py"), "--port", str(port),
        "--ca-out", str(ca_file), "--wav-dir", str(tmp_path / "wav"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        first = await asyncio.wait_for(receiver.stdout.readline(), 20)
        assert b"listening on wss://127.0.0.1" in first
        server.env["CONFSTREAM_STREAM_CA_FILE"] = str(ca_file)
        account = server.create_account()
        server.start()
        caller = await start_sipp_caller(tmp_path, server.sip_port, account, "r", 440.0, 3.0)
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "r"))
            resp = api.post(
                f"/Conferences/{conf['sid']}/Streams.json",
                data={"Url": f"wss://127.0.0.1:{port}/", "AuthorizationBearerToken": "tok"},
            )
            assert resp.status_code == 200, resp.text
        await asyncio.wait_for(caller.wait(), 30)
        output = b""
        while b"connection closed" not in output:
            output += await asyncio.wait_for(receiver.stdout.readline(), 20)
    finally:
        receiver.terminate()
        await receiver.wait()
    text = output.decode()
    assert "auth='Bearer tok'" in text
    assert re.search(r"^start \{.*\"encoding\": \"audio/x-mulaw\"", text, re.M)
    assert re.search(r"^inbound +t= +0 ms", text, re.M)
    assert re.search(r"^stop \{", text, re.M)
    assert sorted(p.name.split("-", 5)[-1] for p in (tmp_path / "wav").iterdir()) == [
        "inbound.wav",
        "outbound.wav",
    ]


def test_demo_runs_and_shuts_down_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stream stopped by Name: status=stopped" in done.stdout
    assert "conference status: completed" in done.stdout
    assert "server shut down cleanly" in done.stdout
