"""The live dashboard end to end: ``confstream serve`` in a subprocess (uvloop), real sipp
callers, a TLS WebSocket receiver for a stream (trustme chain), and Debian's headless chromium
driven by Playwright with HTTP Basic credentials. Everything is observed on one page load.

Set ``CONFSTREAM_UPDATE_SCREENSHOT=1`` to refresh docs/dashboard.png from this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, Page, async_playwright

from confstream.tools.server import Account, ServerProcess
from confstream.tools.tls import Tls

from ..streams.peers import ws_receiver
from .peers import await_for, conference_named, start_sipp_caller

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_dashboard(browser: Browser, server: ServerProcess, account: Account) -> Page:
    context = await browser.new_context(
        http_credentials={"username": account.sid, "password": account.token},
        viewport={"width": 1180, "height": 760},
    )
    page = await context.new_page()
    response = await page.goto(f"{server.base}/dashboard")
    assert response is not None and response.status == 200
    # a marker that a reload would wipe: every check below runs on this one page load
    await page.evaluate("window.__loadedOnce = true")
    await page.wait_for_selector("#connection.online")
    return page


async def eventually(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], within: float = 15.0
) -> Any:
    """Poll ``read`` until ``ok`` holds for its value; returns that value."""
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await read()
        if ok(value):
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not met in {within} s; last value {value!r}")


def participant_row(page: Page, call_sid: str) -> Any:
    return page.locator(f'tr.participant[data-call-sid="{call_sid}"]')


async def level_of(page: Page, call_sid: str) -> float | None:
    cell = participant_row(page, call_sid).locator("td.level")
    if await cell.count() == 0:
        return None
    value = await cell.get_attribute("data-level-dbfs")
    return float(value) if value else None


async def stream_counter(page: Page, stream_sid: str, column: str) -> int | None:
    cell = page.locator(f'tr.stream[data-stream-sid="{stream_sid}"] td.{column}')
    if await cell.count() == 0:
        return None
    text = (await cell.inner_text()).strip()
    return int(text) if text.isdigit() else None


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.communicate(), 10)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_dashboard_follows_calls_streams_mute_and_end_without_reload(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    alice = server.create_account("--friendly-name", "alice")
    bob = server.create_account("--friendly-name", "bob")
    server.start()
    callers: list[asyncio.subprocess.Process] = []
    try:
        async with chromium() as browser, ws_receiver(tls) as rec:
            page = await open_dashboard(browser, server, alice)
            assert await page.locator("#empty").is_visible()
            assert await page.inner_text("#total-participants") == "0"

            for who, account, freq in (
                ("a1", alice, 440.0),
                ("a2", alice, 660.0),
                ("b", bob, 550.0),
            ):
                (tmp_path / who).mkdir()
                callers.append(
                    await start_sipp_caller(
                        tmp_path / who, server.sip_port, account, "standup", freq, 40.0
                    )
                )
            with server.api(alice) as a_api, server.api(bob) as b_api:
                conf = await await_for(lambda: conference_named(a_api, "standup"))
                b_conf = await await_for(lambda: conference_named(b_api, "standup"))
                path = f"/Conferences/{conf['sid']}"

                def participants(api: httpx.Client, conf_path: str, n: int) -> list[str]:
                    rows = api.get(f"{conf_path}/Participants.json").json()["participants"]
                    return [p["call_sid"] for p in rows] if len(rows) == n else []

                call_sids = await await_for(lambda: participants(a_api, path, 2))
                b_calls = await await_for(
                    lambda: participants(b_api, f"/Conferences/{b_conf['sid']}", 1)
                )

                # the callers' rows appear, each with a clearly non-silent level (-12 dBFS tone)
                for call_sid in call_sids:
                    await participant_row(page, call_sid).wait_for()
                    level = await eventually(
                        functools.partial(level_of, page, call_sid),
                        lambda v: v is not None and v > -30,
                    )
                    assert level < 0
                assert await page.inner_text("#total-participants") == "2"
                title = await page.inner_text(f'section[data-conference-sid="{conf["sid"]}"] h2')
                assert "standup" in title

                # Bob's page shows his conference and nothing of Alice's
                b_page = await open_dashboard(browser, server, bob)
                await participant_row(b_page, b_calls[0]).wait_for()
                b_html = await b_page.content()
                assert conf["sid"] not in b_html
                assert not any(c in b_html for c in call_sids)

                # a stream: its row shows in-progress and its counters rise between two reads
                created = await asyncio.to_thread(
                    a_api.post, f"{path}/Streams.json", data={"Url": rec.url(), "Name": "recorder"}
                )
                assert created.status_code == 200, created.text
                stream_sid = created.json()["sid"]
                await page.locator(
                    f'tr.stream[data-stream-sid="{stream_sid}"] .badge.in-progress'
                ).wait_for()
                first = await eventually(
                    lambda: stream_counter(page, stream_sid, "media"), lambda v: bool(v)
                )
                await asyncio.sleep(1.5)
                second = await stream_counter(page, stream_sid, "media")
                assert second is not None and second > first + 25  # 50 frames a second
                assert await stream_counter(page, stream_sid, "dropped") == 0
                assert await page.inner_text("#total-streams") == "1"

                # muting over REST shows muted, and the muted caller's level falls to silence
                muted_sid, talking_sid = call_sids
                resp = await asyncio.to_thread(
                    a_api.post, f"{path}/Participants/{muted_sid}.json", data={"Muted": "true"}
                )
                assert resp.status_code == 200 and resp.json()["muted"] is True
                await page.locator(
                    f'tr.participant[data-call-sid="{muted_sid}"] .badge.muted'
                ).wait_for()
                await eventually(lambda: level_of(page, muted_sid), lambda v: v == -90.0)
                assert (await level_of(page, talking_sid) or -90.0) > -30
                assert await participant_row(page, talking_sid).get_attribute("data-state") == (
                    "speaking"
                )

                # never anything of Bob's on Alice's page
                a_html = await page.content()
                assert b_conf["sid"] not in a_html and b_calls[0] not in a_html

                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                if os.environ.get("CONFSTREAM_UPDATE_SCREENSHOT") == "1":
                    shutil.copyfile(shot, DOCS_SCREENSHOT)

                # ending the conference over REST empties Alice's page; Bob's stays
                ended = await asyncio.to_thread(
                    a_api.post, f"{path}.json", data={"Status": "completed"}
                )
                assert ended.status_code == 200 and ended.json()["status"] == "completed"
                await page.locator("#empty").wait_for(state="visible")
                assert await page.locator("section.conference").count() == 0
                assert await page.inner_text("#total-participants") == "0"
                assert await page.inner_text("#total-streams") == "0"
                assert await b_page.locator("section.conference").count() == 1
                for p in (page, b_page):
                    assert await p.evaluate("window.__loadedOnce") is True
    finally:
        for proc in callers:
            await stop_process(proc)
