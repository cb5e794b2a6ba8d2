"""The complete voice application of docs/voice.md runs as written: its code block is saved
to a file and run with Python, a real ``confstream serve`` requests it (the application checks
every signature with the twilio SDK), and a sipp caller presses 1 and lands in the conference
``team``."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from confstream.tools.net import free_port
from confstream.tools.server import CONFSTREAM, Account, ServerProcess

from ..calls.voicesipp import answered_scenario, finished, run_sipp, ulaw_tone
from .peers import await_for, conference_named

DOC = Path(__file__).resolve().parents[2] / "docs" / "voice.md"


def app_source() -> str:
    text = DOC.read_text()
    section = text[text.index("## A complete voice application") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def start_app(app_file: Path, app_url: str, token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONFSTREAM_AUTH_TOKEN=token, APP_URL=app_url)
    app = subprocess.Popen([sys.executable, str(app_file)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(app_url, timeout=1)
            return app
        except httpx.HTTPError:
            time.sleep(0.1)
    app.kill()
    raise AssertionError("the documented application did not start")


async def press_one(server: ServerProcess, account: Account, workdir: Path) -> None:
    scenario = answered_scenario(
        workdir / "caller.xml",
        ulaw_tone(workdir / "t.wav", 600.0),
        10.0,
        digit="1",
        digit_after_ms=3000,
    )
    sipp = await run_sipp(workdir, scenario, server.sip_port, account, "frontdesk")
    with server.api(account) as api:
        conf = await await_for(lambda: conference_named(api, "team"), 20)
        parts = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
        assert len(parts["participants"]) == 1
    code, err = await finished(sipp)
    assert code == 0, err


def test_the_documented_application_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    app_file = tmp_path / "app.py"
    app_file.write_text(app_source())
    app_url = f"http://127.0.0.1:{free_port()}"
    account = server.create_account()
    command = [CONFSTREAM, "accounts", "update", account.sid, "--database-url", server.db_url]
    subprocess.run(
        [*command, "--voice-url", f"{app_url}/voice"],
        check=True,
        capture_output=True,
        env=server.environment(),
    )
    server.env["CONFSTREAM_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    server.start()
    app = start_app(app_file, app_url, account.token)
    try:
        asyncio.run(press_one(server, account, tmp_path))
    finally:
        app.terminate()
        _, app_err = app.communicate(timeout=10)
    assert b" 403 " not in app_err  # every request carried a valid signature
