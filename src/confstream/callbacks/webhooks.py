"""Status callbacks: signing and delivery (CONTRACT §3).

Signing (what Twilio's and SignalWire's request validators check): HMAC-SHA1, keyed with the
account's AuthToken, over the full request URL followed, for POST, by every parameter name and
value concatenated in name order; base64 of the digest. For GET the parameters travel in the
query string, so the signed URL already contains them and nothing is appended. The value is sent
in both ``X-SignalWire-Signature`` and ``X-Twilio-Signature``.

Delivery (:class:`CallbackSender`):

* One ordered queue per key (the StreamSid): a stream's callbacks arrive in the order they were
  queued (``stream-started`` before ``stream-error`` before ``stream-stopped``); different
  streams do not wait for each other. A worker task exists only while its queue has work.
* Each request has ``settings.callback_timeout`` (default 5 s). 5xx answers, 408/429 and
  connection errors/timeouts are retried up to ``settings.callback_retries`` times (default 3)
  with exponential backoff 0.5 s, 1 s, 2 s... (capped at 8 s); other 4xx answers are final.
* URLs go through the outbound policy (:mod:`confstream.netpolicy`, checked at connect time);
  a refused URL is logged and counted (``outcome="refused"``), never sent.
* Queues are bounded (default 100 callbacks per key); beyond that the newest is dropped and
  counted (``outcome="dropped"``): a stream produces only a handful, so this only guards memory.
* :meth:`CallbackSender.close` waits (bounded) for queued callbacks, then cancels the rest.

Outcomes counted in ``metrics.CALLBACKS_SENT``: ``delivered``, ``http_error`` (final non-2xx),
``failed`` (retries exhausted on errors), ``refused`` (policy), ``dropped``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import httpx

from confstream import metrics
from confstream.netpolicy import (
    describe_connect_error,
    policy_client,
    policy_error_of,
    redact_url,
)
from confstream.settings import Settings

log = logging.getLogger(__name__)

RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
MAX_QUEUED_PER_KEY = 100


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The X-Twilio-Signature / X-SignalWire-Signature value for a request to ``url``.

    ``params`` are the POST form parameters (None or empty for GET, whose parameters are part of
    ``url``).
    """
    data = url
    if params:
        data += "".join(k + v for k, v in sorted(params.items()))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def iso_timestamp(when: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: ``2024-05-01T12:00:00.123Z``."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def url_with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` appended to its query string (GET callbacks)."""
    if not params:
        return url
    parts = urlsplit(url)
    sep = "&" if parts.query else "?"
    base, hash_, frag = url.partition("#")
    return base + sep + urlencode(list(params.items())) + hash_ + frag


@dataclass(frozen=True)
class Callback:
    """One status callback request to make."""

    url: str
    method: str  # "GET" | "POST"
    params: dict[str, str]
    auth_token: str

    def build(self) -> tuple[str, dict[str, str], dict[str, str] | None]:
        """(url to request, headers, form body or None) with both signature headers."""
        if self.method.upper() == "GET":
            full = url_with_query(self.url, self.params)
            sig = compute_signature(self.auth_token, full)
            body = None
        else:
            full = self.url
            sig = compute_signature(self.auth_token, full, self.params)
            body = self.params
        headers = {
            "X-SignalWire-Signature": sig,
            "X-Twilio-Signature": sig,
            "User-Agent": "confstream-callbacks/0.1",
        }
        return full, headers, body


class CallbackSender:
    """Per-key ordered, retried, policy-checked delivery of status callbacks.

    ``client`` defaults to :func:`confstream.netpolicy.policy_client` built from ``settings``
    (allowed_networks, callback_timeout, stream_ca_file); pass one only in tests or to share it.
    """

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._own_client = client is None
        self._client = client or policy_client(
            settings.allowed_networks,
            timeout=settings.callback_timeout,
            ca_file=settings.stream_ca_file,
        )
        self._queues: dict[str, deque[Callback]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.retry_base = RETRY_BASE_S

    def send(self, key: str, callback: Callback) -> None:
        """Queue ``callback`` behind the earlier ones of ``key``. Never blocks."""
        if self._closed:
            log.warning(
                "callback after close dropped: %s %s", callback.method, redact_url(callback.url)
            )
            metrics.CALLBACKS_SENT.labels(outcome="dropped").inc()
            return
        q = self._queues.setdefault(key, deque())
        if len(q) >= MAX_QUEUED_PER_KEY:
            metrics.CALLBACKS_SENT.labels(outcome="dropped").inc()
            log.warning("callback queue for %s full; dropped one", key)
            return
        q.append(callback)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"callbacks-{key}")

    async def _work(self, key: str) -> None:
        q = self._queues[key]
        try:
            while q:
                cb = q[0]
                try:
                    await self._deliver(cb)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not stop the stream's later callbacks
                    log.exception("callback delivery crashed: %s", redact_url(cb.url))
                    metrics.CALLBACKS_SENT.labels(outcome="failed").inc()
                q.popleft()
        finally:
            self._workers.pop(key, None)
            if not q:
                self._queues.pop(key, None)

    async def _deliver(self, cb: Callback) -> None:
        url, headers, body = cb.build()
        method = "GET" if cb.method.upper() == "GET" else "POST"
        attempts = 1 + max(0, self._settings.callback_retries)
        for attempt in range(attempts):
            retry = False
            try:
                resp = await self._client.request(method, url, headers=headers, data=body)
            except httpx.HTTPError as exc:
                perr = policy_error_of(exc)
                if perr is not None:
                    log.warning(
                        "status callback refused by policy: %s (%s)", redact_url(cb.url), perr
                    )
                    metrics.CALLBACKS_SENT.labels(outcome="refused").inc()
                    return
                log.info(
                    "status callback %s failed (attempt %d): %s",
                    redact_url(cb.url),
                    attempt + 1,
                    describe_connect_error(exc),
                )
                retry = True
            else:
                if resp.is_success:
                    metrics.CALLBACKS_SENT.labels(outcome="delivered").inc()
                    return
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    log.info(
                        "status callback %s answered %d (attempt %d)",
                        redact_url(cb.url),
                        resp.status_code,
                        attempt + 1,
                    )
                    retry = True
                else:
                    log.warning(
                        "status callback %s answered %d", redact_url(cb.url), resp.status_code
                    )
                    metrics.CALLBACKS_SENT.labels(outcome="http_error").inc()
                    return
            if retry and attempt + 1 < attempts:
                await asyncio.sleep(min(RETRY_CAP_S, self.retry_base * (2**attempt)))
        log.warning("status callback %s gave up after %d attempts", redact_url(cb.url), attempts)
        metrics.CALLBACKS_SENT.labels(outcome="failed").inc()

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every queued callback is done; False when ``timeout`` expired first."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self._workers:
            tasks = list(self._workers.values())
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return False
            done, _ = await asyncio.wait(tasks, timeout=remaining)
            if not done:
                return False
        return True

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop accepting callbacks, wait up to ``timeout`` (default 5 s) for queued ones,
        cancel the rest, close the HTTP client when owned."""
        self._closed = True
        await self.flush(timeout)
        tasks = list(self._workers.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._own_client:
            await self._client.aclose()
