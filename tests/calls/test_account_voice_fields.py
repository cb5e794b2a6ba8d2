"""The account's voice application fields: ``POST /Accounts/{sid}`` and the Account JSON
(docs/api.md, Account), and ``confstream accounts update`` (docs/voice.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from confstream.tools.server import CONFSTREAM

from ..api.stack import Stack, open_stack

BASE = "/api/laml/2010-04-01"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        yield opened


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=stack.auth()
    ) as c:
        yield c


async def test_fields_shown_and_updated(stack: Stack, client: httpx.AsyncClient) -> None:
    path = f"{BASE}/Accounts/{stack.account.sid}.json"
    body = (await client.get(path)).json()
    assert body["voice_url"] is None
    assert body["voice_method"] == "POST"
    assert body["voice_fallback_url"] is None
    assert body["status_callback"] is None
    answer = await client.post(
        path,
        data={
            "VoiceUrl": "https://app.example.com/voice",
            "VoiceMethod": "get",
            "VoiceFallbackUrl": "https://app.example.com/fallback",
            "StatusCallback": "https://app.example.com/status",
            "StatusCallbackMethod": "GET",
            "FriendlyName": "renamed",
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["voice_url"] == "https://app.example.com/voice"
    assert body["voice_method"] == "GET"
    assert body["voice_fallback_url"] == "https://app.example.com/fallback"
    assert body["voice_fallback_method"] == "POST"
    assert body["status_callback"] == "https://app.example.com/status"
    assert body["status_callback_method"] == "GET"
    assert body["friendly_name"] == "renamed"
    stored = await stack.store.get_account(stack.account.sid)
    assert stored is not None and stored.voice_url == "https://app.example.com/voice"
    # an empty URL clears it; what is not sent is left as it is
    cleared = (await client.post(path, data={"VoiceUrl": ""})).json()
    assert cleared["voice_url"] is None
    assert cleared["voice_fallback_url"] == "https://app.example.com/fallback"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"VoiceUrl": "ftp://example.com/x"}, 21205),
        ({"StatusCallback": "/relative"}, 21205),
        ({"VoiceMethod": "PUT"}, 21209),
        ({"FriendlyName": "x" * 256}, 20001),
    ],
)
async def test_bad_values_are_refused_and_change_nothing(
    stack: Stack, client: httpx.AsyncClient, data: dict[str, str], code: int
) -> None:
    path = f"{BASE}/Accounts/{stack.account.sid}.json"
    answer = await client.post(path, data={**data, "FriendlyName": data.get("FriendlyName", "z")})
    assert answer.status_code == 422
    assert answer.json()["code"] == code
    stored = await stack.store.get_account(stack.account.sid)
    assert stored is not None and stored.friendly_name == "main"


async def test_another_account_cannot_be_updated(stack: Stack, client: httpx.AsyncClient) -> None:
    answer = await client.post(
        f"{BASE}/Accounts/{stack.other.sid}.json", data={"VoiceUrl": "https://x.example/v"}
    )
    assert answer.status_code == 401
    other = await stack.store.get_account(stack.other.sid)
    assert other is not None and other.voice_url is None


def test_cli_update_and_refusal(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    created = json.loads(
        subprocess.run(
            [CONFSTREAM, "accounts", "create", "--database-url", db],
            check=True,
            capture_output=True,
        ).stdout
    )
    sid = created["sid"]
    flags = {
        "--voice-url": "http://127.0.0.1:9000/voice",
        "--voice-method": "get",
        "--voice-fallback-url": "https://example.com/fb",
        "--voice-fallback-method": "POST",
        "--status-callback": "https://example.com/st",
        "--status-callback-method": "get",
    }
    argv = [CONFSTREAM, "accounts", "update", sid, "--database-url", db]
    shown = json.loads(
        subprocess.run(
            argv + [part for pair in flags.items() for part in pair],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert shown["voice_url"] == "http://127.0.0.1:9000/voice"
    assert shown["voice_method"] == "GET"
    assert shown["voice_fallback_url"] == "https://example.com/fb"
    assert shown["status_callback"] == "https://example.com/st"
    assert shown["status_callback_method"] == "GET"
    bad = subprocess.run(
        [CONFSTREAM, "accounts", "update", sid, "--database-url", db, "--voice-url", "wss://x/y"],
        capture_output=True,
    )
    assert bad.returncode == 2
    assert b"--voice-url" in bad.stderr
    unchanged = json.loads(
        subprocess.run(
            [CONFSTREAM, "accounts", "update", sid, "--database-url", db],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert unchanged["voice_url"] == "http://127.0.0.1:9000/voice"
