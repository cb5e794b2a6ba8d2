"""The live dashboard (docs/operations.md, Dashboard): read-only, one account at a time.

Routes, all behind the REST API's HTTP Basic ``AccountSid:AuthToken`` (a failure answers 401
with a ``WWW-Authenticate`` challenge, so a browser asks for the credentials):

* ``GET /dashboard``: the page (``static/dashboard.html``), which loads
  ``GET /dashboard/dashboard.js`` and ``GET /dashboard/dashboard.css`` from the package. No
  build step and no third-party code; the page never writes anything.
* ``GET /dashboard/events``: Server-Sent Events, one ``snapshot`` event every
  :data:`INTERVAL_S` seconds whose data is the JSON of
  :meth:`confstream.services.Services.dashboard_snapshot` for the authenticated account only,
  plus ``totals`` and ``time``. Levels are measured by the engine only while at least one
  event stream is open (:meth:`~confstream.services.Services.watching_levels`).

At most ``settings.dashboard_max_clients`` event streams per account are open at once; one more
answers 429 with ``Retry-After``. A stream ends when its client goes away (the generator is
cancelled and its slot released) and when the server begins shutting down
(``app.state.ready`` false), so it never holds up a shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from confstream.services import DashboardSnapshot, Services
from confstream.store import Account

#: Seconds between two snapshots on an event stream.
INTERVAL_S = 0.5
#: Seconds a browser waits before reconnecting a dropped event stream (SSE ``retry``).
RECONNECT_MS = 2000

_STATIC = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="confstream", charset="UTF-8"'}


def _static(name: str) -> bytes:
    return resources.files("confstream.api").joinpath("static", name).read_bytes()


async def _account(request: Request, services: Services) -> Account | None:
    """The account of the request's Basic credentials, or None (same rule as the REST API)."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    sid, sep, token = decoded.partition(":")
    if not sep:
        return None
    return await services.authenticate(sid, token)


def _unauthorized() -> Response:
    return Response("Authentication required\n", status_code=401, headers=_CHALLENGE)


def snapshot_json(snapshot: DashboardSnapshot, now: dt.datetime | None = None) -> str:
    """The event data: the snapshot's fields, ``totals`` and ``time`` (ISO 8601 UTC)."""
    data: dict[str, Any] = dataclasses.asdict(snapshot)
    data["totals"] = snapshot.totals
    data["time"] = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")
    return json.dumps(data, separators=(",", ":"))


class _Slot:
    """One open event stream of an account; :meth:`release` is idempotent."""

    def __init__(self, clients: dict[str, int], account_sid: str) -> None:
        self._clients = clients
        self._account_sid = account_sid
        self._held = True
        clients[account_sid] = clients.get(account_sid, 0) + 1

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        left = self._clients.get(self._account_sid, 1) - 1
        if left > 0:
            self._clients[self._account_sid] = left
        else:
            self._clients.pop(self._account_sid, None)


class Dashboard:
    """The dashboard's routes and its count of open event streams per account."""

    def __init__(self, services: Services) -> None:
        self.services = services
        #: Open event streams per AccountSid.
        self.clients: dict[str, int] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/dashboard", self.page, methods=["GET"]),
            Route("/dashboard/events", self.events, methods=["GET"]),
            Route("/dashboard/{name:str}", self.asset, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        if await _account(request, self.services) is None:
            return _unauthorized()
        return self._file("dashboard.html")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC or name.endswith(".html"):
            return Response("Not found\n", status_code=404)
        if await _account(request, self.services) is None:
            return _unauthorized()
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response(_static(name), media_type=_STATIC[name], headers=_SECURITY_HEADERS)

    async def events(self, request: Request) -> Response:
        account = await _account(request, self.services)
        if account is None:
            return _unauthorized()
        limit = self.services.settings.dashboard_max_clients
        if self.clients.get(account.sid, 0) >= limit:
            return Response(
                f"At most {limit} dashboard connections per account\n",
                status_code=429,
                headers={"Retry-After": "5"},
            )
        slot = _Slot(self.clients, account.sid)
        return StreamingResponse(
            self._stream(request, account.sid, slot),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            # released here too in case the generator never started (client gone at once)
            background=BackgroundTask(slot.release),
        )

    async def _stream(self, request: Request, account_sid: str, slot: _Slot) -> AsyncIterator[str]:
        try:
            with self.services.watching_levels():
                yield f"retry: {RECONNECT_MS}\n\n"
                while getattr(request.app.state, "ready", False):
                    snapshot = await self.services.dashboard_snapshot(account_sid)
                    yield f"event: snapshot\ndata: {snapshot_json(snapshot)}\n\n"
                    await asyncio.sleep(INTERVAL_S)
        finally:
            slot.release()


def dashboard_routes(services: Services) -> list[Route]:
    """The routes to mount at the application's root (see the module docstring)."""
    return Dashboard(services).routes()
