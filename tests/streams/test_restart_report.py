"""Streams a crashed run left open: closed with 31990 and reported once (real SQLite file, real
HTTP callback server). The whole path with ``kill -9`` is in
tests/integration/test_stream_hardening.py."""

from __future__ import annotations

from pathlib import Path

from twilio.request_validator import RequestValidator

from confstream.callbacks.webhooks import CallbackSender
from confstream.settings import Settings
from confstream.store import open_store
from confstream.streams.failures import Failure
from confstream.streams.manager import RESTARTED_MESSAGE, StreamManager
from tests.callbacks.recorder import http_recorder

from .peers import LOOPBACK


class NoEngine:
    def get(self, conference_sid: str) -> None:
        return None


async def test_leftover_streams_are_stopped_with_31990_and_reported_once(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'cs.db'}")
    try:
        async with http_recorder() as rec:
            account = await store.create_account("acme")
            other = await store.create_account("other")
            conf = await store.create_conference(account.sid, "room")
            conf2 = await store.create_conference(other.sid, "room")
            live = await store.create_stream(
                conference_sid=conf.sid,
                account_sid=account.sid,
                url="wss://example.com/a",
                name="bot",
                track="inbound_track",
                status_callback=rec.url("/cb/live"),
            )
            await store.set_stream_status(live.sid, "in-progress")
            queued = await store.create_stream(
                conference_sid=conf2.sid,
                account_sid=other.sid,
                url="wss://example.com/b",
                status_callback=rec.url("/cb/queued"),
                status_callback_method="GET",
            )
            done = await store.create_stream(
                conference_sid=conf.sid,
                account_sid=account.sid,
                url="wss://example.com/c",
                status_callback=rec.url("/cb/done"),
            )
            await store.set_stream_status(done.sid, "stopped")
            quiet = await store.create_stream(  # no StatusCallback: only the record changes
                conference_sid=conf.sid, account_sid=account.sid, url="wss://example.com/d"
            )

            closed = await store.close_leftover_streams(31990, RESTARTED_MESSAGE)
            assert sorted(row.sid for row, _ in closed) == sorted([live.sid, queued.sid, quiet.sid])
            tokens = {row.sid: token for row, token in closed}
            assert tokens[live.sid] == account.auth_token
            assert tokens[queued.sid] == other.auth_token
            assert await store.close_leftover_streams(31990, RESTARTED_MESSAGE) == []
            for sid in (live.sid, queued.sid, quiet.sid):
                row = await store.get_stream_by_sid(sid)
                assert row is not None
                assert (row.status, row.error_code) == ("stopped", 31990)
                assert row.error_message == RESTARTED_MESSAGE
                history = await store.stream_history(sid)
                assert (history[-1].status, history[-1].code) == ("stopped", 31990)
            untouched = await store.get_stream_by_sid(done.sid)
            assert untouched is not None and untouched.error_code is None
            # close_leftovers (run next at start-up) finds no stream left.
            assert (await store.close_leftovers("restarted"))["streams"] == 0

            settings = Settings(allowed_networks=LOOPBACK, callback_retries=0)
            manager = StreamManager(
                settings, NoEngine(), _no_status, callbacks=CallbackSender(settings)
            )
            manager.report_restarted(closed)
            await manager.close()

            assert Failure.SERVER_RESTARTED.code == 31990
            got = {path: rec.for_path(path) for path in ("/cb/live", "/cb/queued", "/cb/done")}
            assert got["/cb/done"] == []
            for path, stream, token, method in (
                ("/cb/live", live, account.auth_token, "POST"),
                ("/cb/queued", queued, other.auth_token, "GET"),
            ):
                requests = got[path]
                assert [r.method for r in requests] == [method, method]
                params = [r.params for r in requests]
                assert [p["StreamEvent"] for p in params] == ["stream-error", "stream-stopped"]
                assert params[0]["StreamError"] == "general_error"
                for r, p in zip(requests, params, strict=True):
                    assert p["StreamSid"] == stream.sid
                    assert p["ConferenceSid"] == p["CallSid"] == stream.conference_sid
                    assert p["StreamTrack"] == stream.track
                    assert p["StreamName"] == (stream.name or stream.sid)
                    url = rec.url(path) + ("?" + r.query if method == "GET" else "")
                    sig = r.headers["x-twilio-signature"]
                    assert r.headers["x-signalwire-signature"] == sig
                    form = r.form if method == "POST" else {}
                    assert RequestValidator(token).validate(url, form, sig)
    finally:
        await store.close()


async def _no_status(sid: str, status: str, code: int | None, message: str | None) -> None:
    raise AssertionError("report_restarted must not change records")
