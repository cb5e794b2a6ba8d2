"""Status callback signing and delivery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from confstream.callbacks.webhooks import (
    Callback,
    CallbackSender,
    compute_signature,
    iso_timestamp,
    url_with_query,
)
from confstream.settings import Settings
from confstream.tools.metrics import sample
from confstream.tools.net import free_port

from .recorder import http_recorder

TOKEN = "secret-token-0123456789abcdef"


def settings(**kw: Any) -> Settings:
    """Test settings; ``kw`` are further Settings fields (validated by pydantic)."""
    base: dict[str, Any] = {
        "allowed_networks": ["127.0.0.0/8", "::1/128"],
        "callback_retries": 2,
        "callback_timeout": 2.0,
    }
    base.update(kw)
    return Settings(**base)


def counter(outcome: str) -> float:
    return sample("confstream_callbacks_total", outcome=outcome)


def test_signature_matches_twilio_validator() -> None:
    url = "https://example.com/cb?x=1"
    params = {"StreamSid": "abc", "AccountSid": "AC1", "Z": "", "a": "é & ü"}
    sig = compute_signature(TOKEN, url, params)
    assert RequestValidator(TOKEN).validate(url, params, sig)
    assert not RequestValidator("other").validate(url, params, sig)
    assert RequestValidator(TOKEN).compute_signature(url, params) == sig


def test_url_with_query_and_timestamp() -> None:
    assert url_with_query("http://h/p", {"a": "1 2"}) == "http://h/p?a=1+2"
    assert url_with_query("http://h/p?z=0", {"a": "b"}) == "http://h/p?z=0&a=b"
    ts = iso_timestamp()
    assert ts.endswith("Z") and "T" in ts and len(ts) == len("2024-01-01T00:00:00.000Z")


async def test_post_is_signed_and_form_encoded() -> None:
    async with http_recorder() as rec:
        sender = CallbackSender(settings())
        url = rec.url("/status?tag=1")
        params = {"StreamSid": "S1", "StreamEvent": "stream-started", "Timestamp": iso_timestamp()}
        sender.send("S1", Callback(url, "POST", params, TOKEN))
        assert await sender.flush(10)
        await sender.close()
    (req,) = rec.requests
    assert req.method == "POST"
    assert req.form == params
    sig = req.headers["x-twilio-signature"]
    assert req.headers["x-signalwire-signature"] == sig
    assert RequestValidator(TOKEN).validate(url, req.form, sig)


async def test_get_puts_params_in_query_and_signs_full_url() -> None:
    async with http_recorder() as rec:
        sender = CallbackSender(settings())
        url = rec.url("/status")
        params = {"StreamSid": "S1", "StreamEvent": "stream-stopped"}
        sender.send("S1", Callback(url, "GET", params, TOKEN))
        assert await sender.flush(10)
        await sender.close()
    (req,) = rec.requests
    assert req.method == "GET"
    assert req.params == params
    full = url + "?" + req.query
    assert RequestValidator(TOKEN).validate(full, {}, req.headers["x-twilio-signature"])


async def test_order_kept_per_stream_with_retries_on_5xx() -> None:
    async with http_recorder() as rec:
        rec.statuses["/a"] = [500, 503]  # first callback of stream A is retried twice
        sender = CallbackSender(settings(callback_retries=3))
        sender.retry_base = 0.01
        for i in range(4):
            sender.send("A", Callback(rec.url("/a"), "POST", {"n": str(i)}, TOKEN))
            sender.send("B", Callback(rec.url("/b"), "POST", {"n": str(i)}, TOKEN))
        assert await sender.flush(10)
        await sender.close()
    got_a = [r.form["n"] for r in rec.for_path("/a")]
    assert got_a == ["0", "0", "0", "1", "2", "3"]
    assert [r.form["n"] for r in rec.for_path("/b")] == ["0", "1", "2", "3"]


async def test_4xx_is_final() -> None:
    async with http_recorder() as rec:
        rec.statuses["/x"] = [404]
        sender = CallbackSender(settings())
        sender.retry_base = 0.01
        before = counter("http_error")
        sender.send("A", Callback(rec.url("/x"), "POST", {"n": "1"}, TOKEN))
        sender.send("A", Callback(rec.url("/x"), "POST", {"n": "2"}, TOKEN))
        assert await sender.flush(10)
        await sender.close()
    assert [r.form["n"] for r in rec.requests] == ["1", "2"]
    assert counter("http_error") == before + 1


async def test_retries_exhausted_on_connection_refused() -> None:
    port = free_port()  # nothing listens there now
    sender = CallbackSender(settings(callback_retries=2))
    sender.retry_base = 0.01
    before = counter("failed")
    sender.send("A", Callback(f"http://127.0.0.1:{port}/cb", "POST", {"a": "b"}, TOKEN))
    assert await sender.flush(10)
    await sender.close()
    assert counter("failed") == before + 1


@pytest.mark.parametrize("allowed", [[], ["10.0.0.0/8"]])
async def test_policy_refuses_loopback_without_sending(allowed: list[str]) -> None:
    async with http_recorder() as rec:
        sender = CallbackSender(settings(allowed_networks=allowed))
        before = counter("refused")
        sender.send("A", Callback(rec.url("/cb"), "POST", {"a": "b"}, TOKEN))
        sender.send(
            "A", Callback(rec.url("/cb").replace("127.0.0.1", "localhost"), "GET", {}, TOKEN)
        )
        assert await sender.flush(10)
        await sender.close()
    assert rec.requests == []
    assert counter("refused") == before + 2


async def test_close_is_bounded_and_drops_late_callbacks() -> None:
    async with http_recorder() as rec:
        sender = CallbackSender(settings())
        await sender.close(1)
        before = counter("dropped")
        sender.send("A", Callback(rec.url("/cb"), "POST", {}, TOKEN))
        assert counter("dropped") == before + 1
    assert rec.requests == []
