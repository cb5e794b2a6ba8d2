"""A process killed mid-conference leaves records in progress; the next start closes them."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from confstream.store import open_store

WRITER = """
import asyncio, json, sys, time
from confstream.store import open_store

async def main(url):
    store = await open_store(url)
    account = await store.create_account("killed")
    conference = await store.create_conference(account.sid, "room")
    await store.add_participant("call-1", conference.sid, account.sid)
    stream = await store.create_stream(
        conference_sid=conference.sid, account_sid=account.sid, url="wss://example.com/s"
    )
    await store.set_stream_status(stream.sid, "in-progress")
    call = await store.create_call(account.sid, from_uri="sip:a@h", to_uri="sip:room@h")
    await store.update_call(call.sid, status="in-progress")
    call_stream = await store.create_stream(
        call_sid=call.sid, account_sid=account.sid, url="wss://example.com/c"
    )
    print(
        json.dumps(
            {
                "conference": conference.sid,
                "stream": stream.sid,
                "call": call.sid,
                "call_stream": call_stream.sid,
            }
        ),
        flush=True,
    )
    # keep the store open, as a running server would, until killed
    time.sleep(600)

asyncio.run(main(sys.argv[1]))
"""


async def test_killed_process_records_are_closed_on_next_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cs.db'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        sids = json.loads(line)
    finally:
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout=10)
    assert process.returncode == -signal.SIGKILL

    store = await open_store(url)
    try:
        before = await store.get_conference(sids["conference"])
        assert before is not None and before.status == "in-progress"
        counts = await store.close_leftovers("confstream restarted; media of the last run is gone")
        assert counts == {"conferences": 1, "participants": 1, "streams": 2, "calls": 1}
        conference = await store.get_conference(sids["conference"])
        assert conference is not None and conference.status == "completed"
        assert conference.reason_ended is not None and "restarted" in conference.reason_ended
        participant = await store.get_participant("call-1")
        assert participant is not None and participant.status == "completed"
        stream = await store.get_stream_by_sid(sids["stream"])
        assert stream is not None and stream.status == "stopped"
        assert stream.error_message is not None and "restarted" in stream.error_message
        call_stream = await store.get_stream_by_sid(sids["call_stream"])
        assert call_stream is not None and call_stream.status == "stopped"
        call = await store.get_call(sids["call"])
        assert call is not None and call.status == "completed"
        assert call.start_time is not None and call.end_time is not None
        assert call.duration is not None and call.duration >= 0
    finally:
        await store.close()
