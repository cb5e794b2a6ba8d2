"""The voice webhook fetch against a real HTTP application (tests/calls/voiceapp.py):
parameters, signatures (the twilio SDK's RequestValidator), GET and POST, redirects, the
outbound policy, the timeout and the size bound."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.responses import Response

from confstream.calls.webhook import (
    CallContext,
    WebhookError,
    WebhookFetcher,
    call_parameters,
    check_method,
    check_webhook_url,
)
from confstream.settings import Settings
from confstream.voice.cxml import MAX_DOCUMENT_BYTES

from .voiceapp import VoiceApp

TOKEN = "secret-token-for-signing"
CALL = CallContext(
    call_sid="CA1",
    account_sid="AC1",
    from_="sip:alice@example.com",
    to="sip:support@confstream",
    caller_name="Alice",
    sip_headers=(("x-customer-id", "42"), ("X-CUSTOMER-ID", "dup"), ("x-b", "")),
)


@pytest.fixture(scope="module")
def app() -> Iterator[VoiceApp]:
    voice = VoiceApp().start()
    voice.paths["/doc"] = lambda _: "<Response><Hangup/></Response>"
    voice.paths["/moved"] = lambda _: Response("", status_code=302, headers={"location": "/doc"})
    voice.paths["/big"] = lambda _: "<Response>" + " " * MAX_DOCUMENT_BYTES + "</Response>"
    voice.paths["/error"] = lambda _: Response("no", status_code=503)
    try:
        yield voice
    finally:
        voice.stop()


def fetcher(allowed: list[str] | None = None, timeout: float = 5.0) -> WebhookFetcher:
    return WebhookFetcher(
        Settings(
            allowed_networks=["127.0.0.0/8"] if allowed is None else allowed,
            voice_webhook_timeout=timeout,
        )
    )


def test_standard_parameters() -> None:
    params = call_parameters(CALL, "ringing")
    assert params == {
        "CallSid": "CA1",
        "AccountSid": "AC1",
        "From": "sip:alice@example.com",
        "To": "sip:support@confstream",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        "CallerName": "Alice",
        "SipHeader_X-Customer-Id": "42",
        "SipHeader_X-B": "",
    }


async def test_post_is_signed_and_carries_the_parameters(app: VoiceApp) -> None:
    f = fetcher()
    try:
        params = {**call_parameters(CALL, "in-progress"), "Digits": "12#"}
        doc = await f.fetch(app.url("/doc"), "POST", params, TOKEN)
    finally:
        await f.close()
    assert doc.body == b"<Response><Hangup/></Response>"
    assert doc.content_type is not None and doc.content_type.startswith("application/xml")
    request = app.of("/doc", Digits="12#")[-1]
    assert request.method == "POST"
    assert request.params == params
    assert request.signed_by(TOKEN)
    assert not request.signed_by("another-token")


async def test_get_sends_the_query_and_follows_redirects(app: VoiceApp) -> None:
    f = fetcher()
    try:
        doc = await f.fetch(app.url("/moved"), "get", call_parameters(CALL, "ringing"), TOKEN)
    finally:
        await f.close()
    assert doc.url.startswith(app.url("/doc"))
    first = app.of("/moved", CallSid="CA1")[-1]
    assert first.method == "GET"
    assert first.signed_by(TOKEN)
    assert app.of("/doc", CallStatus="ringing")


@pytest.mark.parametrize(
    ("path", "allowed", "seconds", "reason", "code"),
    [
        ("/error", None, 5.0, "http", 11200),
        ("/missing", None, 5.0, "http", 11200),
        ("/big", None, 5.0, "too_large", 11750),
        ("/slow", None, 0.5, "timeout", 11205),
        ("/doc", [], 5.0, "refused", 11200),  # loopback not allowed by default
    ],
)
async def test_failures(
    app: VoiceApp,
    path: str,
    allowed: list[str] | None,
    seconds: float,
    reason: str,
    code: int,
) -> None:
    f = fetcher(allowed, seconds)
    try:
        with pytest.raises(WebhookError) as failure:
            await f.fetch(app.url(path), "POST", call_parameters(CALL, "ringing"), TOKEN)
    finally:
        await f.close()
    assert (failure.value.reason, failure.value.code) == (reason, code)


async def test_connection_refused() -> None:
    f = fetcher()
    try:
        with pytest.raises(WebhookError) as failure:
            await f.fetch("http://127.0.0.1:9/", "POST", {}, TOKEN)
    finally:
        await f.close()
    assert failure.value.reason == "connect"


def test_account_url_and_method_checks() -> None:
    assert check_webhook_url(" https://app.example.com/voice ") == "https://app.example.com/voice"
    assert check_webhook_url("") == ""
    for bad in ("ftp://x/y", "/relative", "http://", "wss://x/y"):
        with pytest.raises(ValueError):
            check_webhook_url(bad)
    assert check_method("get") == "GET"
    with pytest.raises(ValueError):
        check_method("PUT")
