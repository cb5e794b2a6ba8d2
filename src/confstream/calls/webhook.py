"""The voice webhook: fetching a call's cXML documents (docs/voice.md, "The voice webhook").

:class:`WebhookFetcher` requests a document the way Twilio and SignalWire do, so an existing
application's code (and its request validator) works unchanged:

* **Parameters**: :func:`call_parameters` gives the standard ones of every request
  (``CallSid``, ``AccountSid``, ``From``, ``To``, ``CallStatus``, ``Direction``,
  ``ApiVersion``, ``CallerName``, one ``SipHeader_X-…`` per ``X-`` header of the INVITE);
  verb-specific ones (``Digits``, ``FinishedOnKey``, ``DialCallStatus``…) are added to them.
  POST sends them as a form, GET in the query string.
* **Signature**: ``X-Twilio-Signature`` and ``X-SignalWire-Signature``, computed exactly as
  the status callbacks' (:class:`confstream.callbacks.webhooks.Callback`).
* **Outbound policy**: the connection goes through :func:`confstream.netpolicy.policy_client`
  (private and loopback addresses refused unless ``CONFSTREAM_ALLOWED_NETWORKS`` allows them),
  redirects are followed (at most :data:`MAX_REDIRECTS`, each hop checked again).
* **Bounds**: ``settings.voice_webhook_timeout`` for the whole request (default 5 s); the body
  is read up to :data:`confstream.voice.cxml.MAX_DOCUMENT_BYTES` (64 KiB) and a longer one is
  refused (11750) without reading the rest.

A request that fails raises :class:`WebhookError` with a Twilio error code and a ``reason``
(the label of ``confstream_voice_webhook_failures_total``):

========== ====== ===============================================================
reason     code   when
========== ====== ===============================================================
timeout    11205  no complete answer within the timeout
connect    11205  connection refused or reset, DNS failure, TLS failure
refused    11200  the outbound policy refused the address (or a non-HTTP(S) URL)
http       11200  the answer's status is not 2xx (11215: more than MAX_REDIRECTS redirects)
too_large  11750  the body is over 64 KiB
document   12100  the document cannot run (not XML, wrong root, wrong Content-Type:
                  the code is the interpreter's, 12100/12102/12300); counted by the
                  call runtime, never raised here
========== ====== ===============================================================
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx

from confstream.callbacks.webhooks import Callback
from confstream.netpolicy import (
    describe_connect_error,
    policy_client,
    policy_error_of,
    redact_url,
)
from confstream.settings import Settings
from confstream.voice.cxml import MAX_DOCUMENT_BYTES

log = logging.getLogger(__name__)

#: The ``ApiVersion`` parameter (the REST API's version path).
API_VERSION: Final = "2010-04-01"
#: HTTP redirects followed for one document request.
MAX_REDIRECTS: Final = 5
USER_AGENT: Final = "confstream-voice/0.1"

#: ``reason`` values of :class:`WebhookError` (and of the failure counter).
REASON_TIMEOUT: Final = "timeout"
REASON_CONNECT: Final = "connect"
REASON_REFUSED: Final = "refused"
REASON_HTTP: Final = "http"
REASON_TOO_LARGE: Final = "too_large"
REASON_DOCUMENT: Final = "document"


@dataclass(frozen=True)
class CallContext:
    """The call as the webhook describes it (the standard parameters, without the status)."""

    call_sid: str
    account_sid: str
    from_: str
    to: str
    direction: str = "inbound"
    caller_name: str | None = None
    sip_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def call_parameters(call: CallContext, status: str) -> dict[str, str]:
    """The standard parameters of every request about ``call`` (docs/voice.md, the
    parameter table). ``CallerName`` is sent empty when the caller gave none. SIP header
    names are case-insensitive, so ``SipHeader_`` names are written canonically, each word
    capitalised (``x-customer-id`` -> ``SipHeader_X-Customer-Id``); a repeated header keeps
    its first value."""
    params = {
        "CallSid": call.call_sid,
        "AccountSid": call.account_sid,
        "From": call.from_,
        "To": call.to,
        "CallStatus": status,
        "Direction": call.direction,
        "ApiVersion": API_VERSION,
        "CallerName": call.caller_name or "",
    }
    for name, value in call.sip_headers:
        canonical = "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
        params.setdefault(f"SipHeader_{canonical}", value)
    return params


class WebhookError(Exception):
    """A document request failed (see the module docstring for ``reason`` and ``code``)."""

    def __init__(self, reason: str, code: int, message: str, url: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.message = message
        self.url = url


@dataclass(frozen=True)
class FetchedDocument:
    """A document as fetched: the body, the URL it came from after any redirects (relative
    URLs in it resolve against this one) and the answer's Content-Type."""

    body: bytes
    url: str
    content_type: str | None


class WebhookFetcher:
    """Signed, policy-checked, bounded document requests. One per server (its HTTP client
    keeps connections to the application alive); :meth:`close` at shutdown."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._timeout = settings.voice_webhook_timeout
        self._own_client = client is None
        self._client = client or policy_client(
            settings.allowed_networks,
            timeout=settings.voice_webhook_timeout,
            ca_file=settings.stream_ca_file,
        )

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def fetch(
        self, url: str, method: str, params: Mapping[str, str], auth_token: str
    ) -> FetchedDocument:
        """Request ``url`` with ``params`` (a POST form, or the query string for ``GET``),
        signed with ``auth_token``. Raises :class:`WebhookError`."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._fetch(url, method, params, auth_token)
        except TimeoutError:
            raise WebhookError(
                REASON_TIMEOUT, 11205, f"no answer within {self._timeout:g} s", url
            ) from None

    async def _fetch(
        self, url: str, method: str, params: Mapping[str, str], auth_token: str
    ) -> FetchedDocument:
        verb = "GET" if method.upper() == "GET" else "POST"
        current, current_verb, current_params = url, verb, dict(params)
        for _ in range(MAX_REDIRECTS + 1):
            if not current.lower().startswith(("http://", "https://")):
                raise WebhookError(REASON_REFUSED, 11200, "not an http(s) URL", url)
            full, headers, body = Callback(
                current, current_verb, current_params, auth_token
            ).build()
            headers["User-Agent"] = USER_AGENT
            headers["Accept"] = "text/xml, application/xml"
            try:
                async with self._client.stream(
                    current_verb, full, headers=headers, data=body
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = response.url.join(response.headers["location"])
                        current = str(target)
                        if response.status_code in (301, 302, 303) and current_verb == "POST":
                            # what browsers and httpx do: the redirected request is a GET,
                            # carrying the parameters in its query string
                            current_verb = "GET"
                        continue
                    if not response.is_success:
                        raise WebhookError(
                            REASON_HTTP,
                            11200,
                            f"the application answered HTTP {response.status_code}",
                            url,
                        )
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_DOCUMENT_BYTES:
                            raise WebhookError(
                                REASON_TOO_LARGE,
                                11750,
                                f"the document is larger than {MAX_DOCUMENT_BYTES} bytes",
                                url,
                            )
                    return FetchedDocument(
                        bytes(data), str(response.url), response.headers.get("content-type")
                    )
            except httpx.HTTPError as exc:
                perr = policy_error_of(exc)
                if perr is not None:
                    raise WebhookError(REASON_REFUSED, 11200, f"refused: {perr}", url) from exc
                if isinstance(exc, httpx.TimeoutException):
                    raise WebhookError(REASON_TIMEOUT, 11205, "timed out", url) from exc
                raise WebhookError(REASON_CONNECT, 11205, describe_connect_error(exc), url) from exc
        raise WebhookError(REASON_HTTP, 11215, f"more than {MAX_REDIRECTS} redirects", url)


#: What an account's webhook URL may be (after surrounding whitespace is removed): ``http``
#: or ``https`` (any case), ``://``, optional ``user:password@``, a host name or IPv4
#: address (IPv6 literals are not accepted: use a name) with an optional port, then
#: printable ASCII only (non-ASCII must be percent-encoded). The REST description uses it
#: as written.
WEBHOOK_URL_RE: Final = (
    r"[Hh][Tt][Tt][Pp][Ss]?://"
    r"([A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
    r"[A-Za-z0-9._~%!$&'()*+,;=-]+"
    r"(:[0-9]*)?"
    r"([/?#][\x21-\x7e]*)?"
)


def check_webhook_url(value: str) -> str:
    """An account's voice/fallback/status-callback URL as given to the CLI or the REST API:
    :data:`WEBHOOK_URL_RE` once surrounding whitespace is removed, or nothing (``""``:
    clears it). Raises ``ValueError`` naming the problem. The address is checked against the
    outbound policy when the URL is requested, not here (DNS may change in between)."""
    text = value.strip()
    if not text:
        return ""
    if re.fullmatch(WEBHOOK_URL_RE, text) is None:
        raise ValueError(f"{value!r} is not an absolute http:// or https:// URL")
    return text


def check_method(value: str) -> str:
    """``GET`` or ``POST`` (any case); ``ValueError`` otherwise."""
    method = value.strip().upper()
    if method not in ("GET", "POST"):
        raise ValueError(f"method must be GET or POST, not {value!r}")
    return method


def describe(exc: WebhookError) -> str:
    """One log line's worth: code, reason, the URL without credentials or query."""
    return f"{exc.code} {exc.reason}: {exc.message} ({redact_url(exc.url)})"


__all__ = [
    "API_VERSION",
    "MAX_REDIRECTS",
    "WEBHOOK_URL_RE",
    "CallContext",
    "FetchedDocument",
    "WebhookError",
    "WebhookFetcher",
    "call_parameters",
    "check_method",
    "check_webhook_url",
    "describe",
]
