"""HTTPS for the REST API and the official SDKs over it (docs/operations.md, TLS;
docs/migrating.md).

``confstream serve`` runs in a subprocess with a trustme certificate chain; a sipp caller joins;
the ``twilio`` SDK (this environment) and the ``signalwire`` 2.x SDK (its own environment,
``.venv-signalwire``, since it pins ``twilio==6.54``) run the set-up and usage snippets of
docs/migrating.md as written; streams go to a real trustme ``wss://`` receiver. Nothing is
skipped: a missing SDK environment is created (``make .venv-signalwire/.installed-stamp``)
and a failure to create it fails the test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from confstream.tools.server import CONFSTREAM, Account, ServerProcess, free_port

from ..streams.peers import Tls, ws_receiver
from .peers import await_for, conference_named, start_sipp_caller

ROOT = Path(__file__).resolve().parents[2]
MIGRATING = ROOT / "docs" / "migrating.md"
SIGNALWIRE_STAMP = ROOT / ".venv-signalwire" / ".installed-stamp"
SIGNALWIRE_PYTHON = ROOT / ".venv-signalwire" / "bin" / "python"


@dataclass
class Https:
    server: ServerProcess
    account: Account
    cert_file: Path
    key_file: Path
    ca: trustme.CA
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.server.http_port, context=self.client_context(), timeout=10
        )


def issue(ca: trustme.CA, cert_file: Path, key_file: Path) -> int:
    """A new leaf certificate for 127.0.0.1 written to the two files; its serial number."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def peer_serial(conn: http.client.HTTPSConnection) -> int:
    assert isinstance(conn.sock, ssl.SSLSocket)
    cert = conn.sock.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def get(conn: http.client.HTTPSConnection, path: str) -> int:
    conn.request("GET", path)
    answer = conn.getresponse()
    answer.read()
    return answer.status


def fresh_serial(https: Https) -> int:
    conn = https.connection()
    try:
        assert get(conn, "/healthz") == 200
        return peer_serial(conn)
    finally:
        conn.close()


@pytest.fixture
def https(tmp_path: Path, tls: Tls) -> Iterator[Https]:
    cert_file, key_file = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    issue(tls.ca, cert_file, key_file)
    server = ServerProcess(tmp_path, tls_cert=cert_file, tls_key=key_file, tls_ca=tls.ca_file)
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    account = server.create_account("--friendly-name", "acme")
    server.start()
    try:
        yield Https(server, account, cert_file, key_file, tls.ca, tls.ca_file)
    finally:
        server.stop()


def test_api_port_speaks_tls_only_http11_keep_alive(https: Https) -> None:
    server, account = https.server, https.account
    assert server.base.startswith("https://")
    with httpx.Client(base_url=server.base, verify=server.verify, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert "confstream_tick_lateness_seconds" in client.get("/metrics").text
        fetched = client.get(
            f"/2010-04-01/Accounts/{account.sid}.json", auth=(account.sid, account.token)
        )
        assert fetched.status_code == 200 and fetched.json()["auth_token"] == account.token
    # no plain HTTP on the TLS port, and no certificate outside the private CA is trusted
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base}/healthz", timeout=5, verify=ssl.create_default_context())

    conn = https.connection()
    try:
        assert get(conn, "/healthz") == 200
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        # keep-alive: the next requests reuse the same TLS connection
        assert get(conn, "/metrics") == 200
        assert get(conn, f"/api/laml/2010-04-01/Accounts/{account.sid}.json") == 401
        assert conn.sock is sock
    finally:
        conn.close()


def test_sighup_reloads_the_certificate_for_new_connections(https: Https) -> None:
    server = https.server
    assert server.proc is not None
    pid = server.proc.pid
    first = fresh_serial(https)

    held = https.connection()  # open across the reload
    try:
        assert get(held, "/healthz") == 200
        held_sock = held.sock
        assert peer_serial(held) == first

        second = issue(https.ca, https.cert_file, https.key_file)
        assert second != first
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while fresh_serial(https) != second:
            assert time.monotonic() < deadline, f"no new certificate:\n{server.log_tail()}"
            assert get(held, "/healthz") == 200  # (also keeps it from idling out)
            time.sleep(0.1)
        # the open connection goes on with the certificate it started with
        assert get(held, "/healthz") == 200
        assert held.sock is held_sock and peer_serial(held) == first
    finally:
        held.close()
    assert server.proc.poll() is None and server.proc.pid == pid
    assert "TLS certificate reloaded" in server.log_tail(200)

    # a certificate without its key: refused, the current certificate stays
    issue(https.ca, https.cert_file, https.cert_file.with_name("other-key.pem"))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "TLS reload failed" not in server.log_tail(200):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    assert fresh_serial(https) == second
    assert server.proc.poll() is None


# ------------------------------------------------------------------------- the SDKs
def doc_snippet(title: str) -> str:
    """The ```python block of docs/migrating.md whose first line is ``# <title>``."""
    for block in re.findall(r"```python\n(.*?)```", MIGRATING.read_text(), re.S):
        if block.startswith(f"# {title}\n"):
            return str(block)
    raise AssertionError(f"docs/migrating.md has no snippet {title!r}")


# Reports what the usage snippet got, as one JSON line (the snippet's names are in scope).
REPORT = """
import json

print(json.dumps({
    "account": {k: getattr(account, k) for k in (
        "sid", "auth_token", "friendly_name", "status", "type", "owner_account_sid")},
    "account_created_tz": str(account.date_created.tzinfo),
    "accounts_listed": [a.sid for a in client.api.accounts.list()],
    "conference": [conference.sid, conference.friendly_name, conference.status],
    "participant": [participant.call_sid, participant.conference_sid, participant.muted],
    "stream": stream,
    "stopped": stopped,
    "ended": ended.status,
    "base_url": client.api.base_url,
}))
"""


def signalwire_python() -> Path:
    """The signalwire environment's interpreter; made with the Makefile's recipe if missing."""
    if not SIGNALWIRE_STAMP.exists():
        made = subprocess.run(
            ["make", str(SIGNALWIRE_STAMP.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert made.returncode == 0, f"cannot create .venv-signalwire:\n{made.stderr}"
    version = subprocess.run(
        [SIGNALWIRE_PYTHON, "-c", "import twilio, signalwire.rest; print(twilio.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "6.54.0"  # the SDK as its users have it, not this environment's twilio
    return SIGNALWIRE_PYTHON


async def run_usage_snippet(
    https: Https, tls: Tls, tmp_path: Path, python: str, setup: str
) -> None:
    """A sipp caller joins; ``python`` runs the set-up snippet then the usage snippet of
    docs/migrating.md over HTTPS; the stream reaches the wss:// receiver; the server agrees."""
    server, account = https.server, https.account
    caller = await start_sipp_caller(tmp_path, server.sip_port, account, "standup", 440.0, 40.0)
    try:
        async with ws_receiver(tls) as receiver:
            with server.api(account) as api:
                conf = await await_for(lambda: conference_named(api, "standup"), 20)
                parts = f"/Conferences/{conf['sid']}/Participants.json"
                await await_for(lambda: api.get(parts).json()["participants"], 10)
            script = tmp_path / "sdk_usage.py"
            script.write_text(f"{setup}\n{doc_snippet('usage: both SDKs')}\n{REPORT}")
            env = dict(os.environ)  # REQUESTS_CA_BUNDLE & co. stay: the snippets must cope
            env.update(
                API_HOST=f"127.0.0.1:{server.http_port}",
                ACCOUNT_SID=account.sid,
                AUTH_TOKEN=account.token,
                CA_FILE=str(https.ca_file),
                STREAM_URL=receiver.url("/media", host="localhost"),
            )
            proc = await asyncio.create_subprocess_exec(
                python,
                str(script),
                env=env,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, f"{err.decode()}\n{server.log_tail()}"
            report: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
            await receiver.wait_for(lambda: receiver.conns and receiver.conns[0].events("stop"))
            events = receiver.conns[0]
    finally:
        if caller.returncode is None:
            caller.terminate()
        await caller.wait()

    assert report["base_url"] == f"https://127.0.0.1:{server.http_port}"
    assert report["account"] == {
        "sid": account.sid,
        "auth_token": account.token,
        "friendly_name": "acme",
        "status": "active",
        "type": "Full",
        "owner_account_sid": account.sid,
    }
    assert report["account_created_tz"] in ("UTC", "+00:00", "GMT")
    assert report["accounts_listed"] == [account.sid]
    assert report["conference"] == [conf["sid"], "standup", "in-progress"]
    call_sid = report["participant"][0]
    assert report["participant"] == [call_sid, conf["sid"], True]
    stream = report["stream"]
    assert stream["conference_sid"] == conf["sid"] and stream["name"] == "transcriber"
    assert stream["status"] in ("queued", "in-progress")
    assert report["stopped"]["sid"] == stream["sid"] and report["stopped"]["status"] == "stopped"
    assert report["ended"] == "completed"

    # what the receiver got over wss://
    assert events.path == "/media"
    (start,) = events.events("start")
    assert start["start"]["conferenceSid"] == conf["sid"]
    assert start["streamSid"] == stream["sid"]
    assert len(events.events("media")) >= 50  # 2 s of 20 ms frames, on two tracks
    # and what the server recorded
    with server.api(account) as api:
        ended = api.get(f"/Conferences/{conf['sid']}.json").json()
        assert ended["status"] == "completed"
        fetched = api.get(f"/Conferences/{conf['sid']}/Streams/{stream['sid']}.json").json()
        assert fetched["status"] == "stopped"
    with sqlite3.connect(server.workdir / "confstream.db") as db:
        (muted,) = db.execute(
            "SELECT muted FROM participants WHERE call_sid = ?", (call_sid,)
        ).fetchone()
    assert muted


async def test_twilio_sdk_over_https(https: Https, tls: Tls, tmp_path: Path) -> None:
    await run_usage_snippet(
        https, tls, tmp_path, sys.executable, doc_snippet("client setup: twilio")
    )


async def test_signalwire_sdk_over_https(https: Https, tls: Tls, tmp_path: Path) -> None:
    python = await asyncio.to_thread(signalwire_python)
    await run_usage_snippet(
        https, tls, tmp_path, str(python), doc_snippet("client setup: signalwire")
    )


def test_serve_refuses_an_incomplete_or_mismatched_tls_pair(tmp_path: Path, tls: Tls) -> None:
    cert_file, key_file = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    issue(tls.ca, cert_file, key_file)
    issue(tls.ca, tmp_path / "other.pem", tmp_path / "other-key.pem")
    server = ServerProcess(tmp_path)
    server.http_port, server.sip_port = free_port(), free_port()
    env = server.environment()

    def serve(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONFSTREAM, "serve", *flags],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    alone = serve("--tls-cert", str(cert_file))
    assert alone.returncode == 2 and "tls_cert and tls_key go together" in alone.stderr
    mismatched = serve("--tls-cert", str(tmp_path / "other.pem"), "--tls-key", str(key_file))
    assert mismatched.returncode == 1 and "cannot start" in mismatched.stderr
