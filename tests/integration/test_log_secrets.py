"""No secret in the server's output at ``--log-level debug`` (docs/operations.md, "Secrets"),
and the SQLite database, its WAL and shared-memory files are owner-only (0600).

A real ``confstream serve`` subprocess (uvloop), a sipp caller with digest auth, REST calls with
Basic auth, a stream to a trustme TLS WebSocket receiver with ``?token=`` in its URL and a
bearer token, and a status callback URL with ``user:password@`` and a query string. Then every
byte the server wrote to stdout/stderr is searched for each secret.
"""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path

from confstream.tools.server import ServerProcess

from ..callbacks.recorder import http_recorder
from ..streams.peers import Tls, ws_receiver
from .peers import await_for, conference_named, start_sipp_caller

BEARER = "bearer-7c1d0e9a4b2f"
STREAM_QUERY_SECRET = "wsq-5e8a1f0c3d77"
CALLBACK_PASSWORD = "cbpw-91b3e6d2a4"
CALLBACK_QUERY_SECRET = "cbq-0d4f7a2e9c15"


def modes(db: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    }


async def test_no_secret_in_debug_logs_and_owner_only_database(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    server.env["CONFSTREAM_LOG_LEVEL"] = "debug"
    account = server.create_account()
    server.start()
    db = tmp_path / "confstream.db"
    async with http_recorder() as web, ws_receiver(tls) as rec:
        callback_url = web.url(f"/events?key={CALLBACK_QUERY_SECRET}").replace(
            "http://", f"http://cbuser:{CALLBACK_PASSWORD}@"
        )
        caller = await start_sipp_caller(tmp_path, server.sip_port, account, "room", 440.0, 6.0)
        with server.api(account) as api:
            conf = await await_for(lambda: conference_named(api, "room"))
            path = f"/Conferences/{conf['sid']}"
            created = await asyncio.to_thread(
                api.post,
                f"{path}/Streams.json",
                data={
                    "Url": rec.url(f"/media?token={STREAM_QUERY_SECRET}", host="localhost"),
                    "AuthorizationBearerToken": BEARER,
                    "StatusCallback": callback_url,
                },
            )
            assert created.status_code == 200, created.text
            stream = created.json()
            await rec.wait_for(lambda: rec.conns and len(rec.conns[0].events("media")) > 20)
            stopped = await asyncio.to_thread(
                api.post, f"{path}/Streams/{stream['sid']}.json", data={"Status": "stopped"}
            )
            assert stopped.json()["status"] == "stopped"
            await web.wait_for(lambda: len(web.for_path("/events")) >= 2, timeout=15)
            listed = await asyncio.to_thread(api.get, f"{path}/Streams.json")
            assert listed.status_code == 200
        assert (await asyncio.wait_for(caller.wait(), 40)) == 0
    # While the server runs, its WAL and shared-memory files exist: all three are owner-only.
    assert set(modes(db)) == {"confstream.db", "confstream.db-wal", "confstream.db-shm"}
    assert set(modes(db).values()) == {0o600}, modes(db)
    assert server.stop() == 0
    assert set(modes(db).values()) == {0o600}, modes(db)

    # The flow really carried every secret to its peer...
    conn = rec.conns[0]
    assert conn.headers["Authorization"] == f"Bearer {BEARER}"
    assert conn.path == f"/media?token={STREAM_QUERY_SECRET}"
    event = web.for_path("/events")[0]
    assert event.query == f"key={CALLBACK_QUERY_SECRET}"
    basic = base64.b64encode(f"cbuser:{CALLBACK_PASSWORD}".encode()).decode()
    assert event.headers["authorization"] == f"Basic {basic}"

    # ...and the server's output, at debug, has none of them.
    output = (tmp_path / "server.log").read_text(errors="replace")
    basic_api = base64.b64encode(f"{account.sid}:{account.token}".encode()).decode()
    for name, secret in {
        "AuthToken": account.token,
        "API Basic credentials": basic_api,
        "callback Basic credentials": basic,
        "bearer token": BEARER,
        "stream URL query": STREAM_QUERY_SECRET,
        "callback URL password": CALLBACK_PASSWORD,
        "callback URL query": CALLBACK_QUERY_SECRET,
    }.items():
        assert secret not in output, f"{name} found in the server output"
    # It is a debug log indeed, with the redacted forms where the secrets were.
    assert " DEBUG websockets.client: " in output
    assert " DEBUG sqlalchemy.engine." in output or " INFO sqlalchemy.engine." in output
    assert "Authorization: ***" in output
    assert "/media?***" in output
    assert "http://***@127.0.0.1:" in output
