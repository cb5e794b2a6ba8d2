"""The REST API as a Starlette application (docs/api.md).

Both base paths, ``/api/laml/2010-04-01`` (SignalWire) and ``/2010-04-01`` (Twilio), serve the
same routes; every path also answers with a ``.json`` suffix (it is stripped before routing,
and every URI in answers carries it, as Twilio's do). ``GET /healthz`` answers 200 once
``app.state.ready`` is true (the server sets it when every listener is up), else 503.
``GET /metrics`` serves the Prometheus registry. ``/dashboard`` is the read-only live dashboard
(:mod:`confstream.api.dashboard`).

Authentication is HTTP Basic ``AccountSid:AuthToken``; a failure, and a path AccountSid that
is not the caller's, both answer the same 401 (code 20003) so nothing tells whether another
account exists (:mod:`confstream.api.access`). The Calls resource and call streams are in
:mod:`confstream.api.calls`.

Every parameter a route accepts does what docs/api.md says, or is refused: enum values are
checked (Status, AnnounceMethod, HoldMethod, WaitMethod...), and parameters Twilio documents
that confstream cannot honour yet (``HoldUrl``, ``WaitUrl``, ``Coaching=true``,
``CallSidToCoach``) answer 400 (20501) and change nothing. A participant is addressed by its
CallSid or by its label (``Participants/{Label}``; a CallSid is looked up first). Parameters
Twilio does not document are ignored, as Twilio does. Request bodies are bounded
(:mod:`confstream.api.limits`, 413).

Choices where the contract is silent (as Twilio does): conferences list newest first;
participants list and fetch show the participants in the conference now (``in-progress``),
a participant that left answers 404 (a fetch by CallSid also finds a callee being dialled, or
that never answered: ``queued``/``connecting``/``ringing``/``failed``); ``POST
…/Participants`` dials a callee (:mod:`confstream.api.dialout`); streams list oldest first
and include stopped ones.
``AnnounceUrl`` audio is fetched (through the outbound policy) before the answer is sent, so a
bad URL or file is reported to the caller (11200, 12300, 21205).

Handlers read and change everything through :class:`~confstream.services.Services`, never the
store. What the services refuse comes as a domain error (:mod:`confstream.errors`); one
exception handler turns those into answers (:func:`confstream.api.errors.from_domain`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from confstream.api.access import authenticate, parse_method, services_of
from confstream.api.calls import call_routes
from confstream.api.common import (
    SIGNALWIRE_BASE,
    TWILIO_BASE,
    JSONResponse,
    base_path,
    form,
    page_response,
    parse_bool,
    parse_date,
    parse_paging,
)
from confstream.api.dashboard import dashboard_routes
from confstream.api.dialout import create_participant
from confstream.api.errors import (
    ApiError,
    from_domain,
    internal_error,
    invalid,
    not_found,
    unsupported,
)
from confstream.api.limits import BodyLimit
from confstream.api.openapi import openapi_json
from confstream.api.render import account_json, conference_json, participant_json, stream_json
from confstream.api.streams import parse_stream_request
from confstream.calls.webhook import check_webhook_url
from confstream.dialout import Dialout
from confstream.errors import ConfstreamError
from confstream.services import Services
from confstream.store import Account, Conference, ConferenceFilter, DateFilter
from confstream.store.models import CONFERENCE_STATUSES, STREAM_STATUSES

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


_services = services_of
_authenticate = authenticate
_method = parse_method


async def _conference(request: Request, account: Account) -> Conference:
    return await _services(request).get_conference(
        account.sid, request.path_params["conference_sid"]
    )


# --------------------------------------------------------------------------- accounts
#: ``POST /Accounts/{sid}`` parameters -> account fields (docs/api.md, Account; the voice
#: fields are extensions, docs/voice.md). URLs: absolute http(s) or empty (clears).
_ACCOUNT_URLS = {
    "VoiceUrl": "voice_url",
    "VoiceFallbackUrl": "voice_fallback_url",
    "StatusCallback": "status_callback",
}
_ACCOUNT_METHODS = {
    "VoiceMethod": "voice_method",
    "VoiceFallbackMethod": "voice_fallback_method",
    "StatusCallbackMethod": "status_callback_method",
}
MAX_FRIENDLY_NAME = 255


def parse_account_update(params: dict[str, str]) -> dict[str, str]:
    """The fields a ``POST /Accounts/{sid}`` changes; 422 for a bad URL (21205), method
    (21209) or FriendlyName (20001, over 255 characters)."""
    changes: dict[str, str] = {}
    for name, field_name in _ACCOUNT_URLS.items():
        if name in params:
            try:
                changes[field_name] = check_webhook_url(params[name])
            except ValueError as exc:
                raise invalid(21205, f"{name}: {exc}") from None
    for name, field_name in _ACCOUNT_METHODS.items():
        if params.get(name):
            changes[field_name] = _method(params, name, "POST")
    if "FriendlyName" in params:
        friendly = params["FriendlyName"]
        if len(friendly) > MAX_FRIENDLY_NAME:
            raise invalid(20001, f"FriendlyName is longer than {MAX_FRIENDLY_NAME} characters")
        changes["friendly_name"] = friendly
    return changes


async def account_instance(request: Request) -> Response:
    """``GET``/``POST /Accounts/{sid}``: fetch, or update the fields of
    :func:`parse_account_update` (the others are left as they are)."""
    account = await _authenticate(request)
    if request.method == "POST":
        changes = parse_account_update(await form(request))
        account = await _services(request).update_account(account, **changes)
    return JSONResponse(account_json(base_path(request), account))


async def list_accounts(request: Request) -> Response:
    """``GET /Accounts``: only the caller's own account (there are no subaccounts), in
    Twilio's list envelope; the ``FriendlyName`` and ``Status`` filters apply to it."""
    account = await _authenticate(request)
    paging = parse_paging(request)
    q = request.query_params
    name, status = q.get("FriendlyName"), q.get("Status")
    matches = (name is None or name == account.friendly_name) and (
        status is None or status == account.status
    )
    rows = [account] if matches and paging.offset == 0 else []
    return page_response(request, "/Accounts", "accounts", rows, account_json, paging)


# ------------------------------------------------------------------------ conferences
def _conference_filter(request: Request) -> ConferenceFilter:
    q = request.query_params
    status = q.get("Status")
    if status is not None and status not in CONFERENCE_STATUSES:
        raise invalid(20001, f"Status must be one of {', '.join(CONFERENCE_STATUSES)}")

    def dates(name: str) -> DateFilter:
        on, before, after = q.get(name), q.get(f"{name}<"), q.get(f"{name}>")
        return DateFilter(
            on=parse_date(name, on) if on is not None else None,
            on_or_before=parse_date(f"{name}<", before) if before is not None else None,
            on_or_after=parse_date(f"{name}>", after) if after is not None else None,
        )

    return ConferenceFilter(
        friendly_name=q.get("FriendlyName"),
        status=status,
        date_created=dates("DateCreated"),
        date_updated=dates("DateUpdated"),
    )


async def list_conferences(request: Request) -> Response:
    account = await _authenticate(request)
    paging = parse_paging(request)
    filters = _conference_filter(request)
    rows = await _services(request).list_conferences(
        account.sid, filters, offset=paging.offset, limit=paging.page_size + 1
    )
    return page_response(
        request,
        f"/Accounts/{account.sid}/Conferences",
        "conferences",
        rows,
        conference_json,
        paging,
    )


async def conference_instance(request: Request) -> Response:
    account = await _authenticate(request)
    conference = await _conference(request, account)
    services = _services(request)
    if request.method == "POST":
        params = await form(request)
        status = params.get("Status")
        if status is not None and status != "completed":
            raise invalid(20001, "Status can only be set to completed")
        announce_url = (params.get("AnnounceUrl") or "").strip() or None
        announce_method = _method(params, "AnnounceMethod", "POST")
        conference = await services.update_conference(
            conference,
            end=status == "completed",
            announce_url=announce_url,
            announce_method=announce_method,
        )
    return JSONResponse(conference_json(base_path(request), conference))


# ----------------------------------------------------------------------- participants
async def list_participants(request: Request) -> Response:
    if request.method == "POST":
        return await create_participant(request)
    account = await _authenticate(request)
    conference = await _conference(request, account)
    paging = parse_paging(request)
    q = request.query_params
    muted = parse_bool("Muted", q.get("Muted"))
    hold = parse_bool("Hold", q.get("Hold"))
    coaching = parse_bool("Coaching", q.get("Coaching"))
    rows = await _services(request).list_participants(
        conference.sid,
        muted=muted,
        hold=hold,
        coaching=coaching,
        offset=paging.offset,
        limit=paging.page_size + 1,
    )
    path = f"/Accounts/{account.sid}/Conferences/{conference.sid}/Participants"
    return page_response(request, path, "participants", rows, participant_json, paging)


@dataclass(frozen=True)
class ParticipantUpdate:
    """A validated participant update (docs/api.md, Participants)."""

    muted: bool | None = None
    hold: bool | None = None
    end_conference_on_exit: bool | None = None
    beep_on_exit: bool | None = None
    announce_url: str | None = None
    announce_method: str = "POST"


def parse_participant_update(params: dict[str, str]) -> ParticipantUpdate:
    """Check every parameter Twilio documents for a participant update before anything is
    done: bad values answer 422, what confstream cannot do yet 400 (20501)."""
    muted = parse_bool("Muted", params.get("Muted"))
    hold = parse_bool("Hold", params.get("Hold"))
    end_on_exit = parse_bool("EndConferenceOnExit", params.get("EndConferenceOnExit"))
    beep_on_exit = parse_bool("BeepOnExit", params.get("BeepOnExit"))
    coaching = parse_bool("Coaching", params.get("Coaching"))
    announce_method = _method(params, "AnnounceMethod", "POST")
    _method(params, "HoldMethod", "GET")
    _method(params, "WaitMethod", "POST")
    if (params.get("HoldUrl") or "").strip():
        raise unsupported("HoldUrl", "a participant on hold hears silence")
    if (params.get("WaitUrl") or "").strip():
        raise unsupported("WaitUrl", "the wait audio is the conference creator's waitUrl")
    if coaching:
        raise unsupported("Coaching=true", "every participant hears the whole conference")
    if (params.get("CallSidToCoach") or "").strip():
        raise unsupported("CallSidToCoach", "every participant hears the whole conference")
    return ParticipantUpdate(
        muted=muted,
        hold=hold,
        end_conference_on_exit=end_on_exit,
        beep_on_exit=beep_on_exit,
        announce_url=(params.get("AnnounceUrl") or "").strip() or None,
        announce_method=announce_method,
    )


async def participant_instance(request: Request) -> Response:
    account = await _authenticate(request)
    conference = await _conference(request, account)
    services = _services(request)
    # the path names the participant by CallSid or by label
    row = await services.get_participant(conference.sid, request.path_params["call_sid"])
    call_sid = row.call_sid
    if request.method == "DELETE":
        await services.kick(call_sid)
        return Response(status_code=204)
    if request.method == "POST":
        update = parse_participant_update(await form(request))
        # the announcement first: when it cannot be played, nothing else has changed
        if update.announce_url is not None:
            await services.announce(
                conference.sid,
                update.announce_url,
                update.announce_method,
                target_call_sid=call_sid,
            )
        changes = (update.muted, update.hold, update.end_conference_on_exit, update.beep_on_exit)
        if changes != (None, None, None, None):
            changed = await services.update_participant(
                call_sid,
                muted=update.muted,
                hold=update.hold,
                end_conference_on_exit=update.end_conference_on_exit,
                beep_on_exit=update.beep_on_exit,
            )
            row = changed if changed is not None else row
    return JSONResponse(participant_json(base_path(request), row))


# ---------------------------------------------------------------------------- streams
async def streams_collection(request: Request) -> Response:
    account = await _authenticate(request)
    conference = await _conference(request, account)
    services = _services(request)
    base = base_path(request)
    if request.method == "POST":
        params = await form(request)
        spec = await parse_stream_request(params, account, services.settings)
        row = await services.create_stream(account, conference, spec)
        return JSONResponse(stream_json(base, row))
    paging = parse_paging(request)
    status = request.query_params.get("Status")
    if status is not None and status not in STREAM_STATUSES:
        raise invalid(20001, f"Status must be one of {', '.join(STREAM_STATUSES)}")
    rows = await services.list_streams(
        conference.sid, status=status, offset=paging.offset, limit=paging.page_size + 1
    )
    path = f"/Accounts/{account.sid}/Conferences/{conference.sid}/Streams"
    return page_response(request, path, "streams", rows, stream_json, paging)


async def stream_instance(request: Request) -> Response:
    account = await _authenticate(request)
    conference = await _conference(request, account)
    services = _services(request)
    row = await services.get_stream(conference.sid, request.path_params["stream_sid"])
    if request.method == "POST":
        params = await form(request)
        status = params.get("Status")
        if status != "stopped":
            raise invalid(20001, "Status is required and can only be stopped")
        row = await services.stop_stream(row)
    return JSONResponse(stream_json(base_path(request), row))


# ------------------------------------------------------------------------- recordings
async def recordings(request: Request) -> Response:
    """Conference recordings: listed in ``subresource_uris`` as Twilio does, answered 404
    (20404) until confstream records conferences."""
    account = await _authenticate(request)
    conference = await _conference(request, account)
    message = (
        f"The requested resource Recordings of Conference {conference.sid} was not found: "
        "confstream does not record conferences yet"
    )
    raise ApiError(20404, message, status=404)


# ------------------------------------------------------------------------ operations
async def healthz(request: Request) -> Response:
    if getattr(request.app.state, "ready", False):
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "starting"}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# -------------------------------------------------------------------------- plumbing
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Basic realm="confstream"'} if exc.code == 20003 else None
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConfstreamError)
    return await _api_error(request, from_domain(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = ApiError(20004, "Method not allowed", status=405)
    elif exc.status_code == 404:
        error = not_found(request.url.path)
    else:
        error = ApiError(exc.status_code, str(exc.detail), status=exc.status_code)
    return JSONResponse(error.body(), status_code=error.http_status, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = internal_error()
    return JSONResponse(error.body(), status_code=500)


def _resource_routes() -> list[Route]:
    conf = "/Accounts/{account_sid}/Conferences/{conference_sid}"
    return [
        Route("/Accounts", list_accounts, methods=["GET"]),
        Route("/Accounts/{account_sid}", account_instance, methods=["GET", "POST"]),
        Route("/Accounts/{account_sid}/Conferences", list_conferences, methods=["GET"]),
        Route(conf, conference_instance, methods=["GET", "POST"]),
        Route(f"{conf}/Participants", list_participants, methods=["GET", "POST"]),
        Route(
            f"{conf}/Participants/{{call_sid}}",
            participant_instance,
            methods=["GET", "POST", "DELETE"],
        ),
        Route(f"{conf}/Streams", streams_collection, methods=["GET", "POST"]),
        Route(f"{conf}/Streams/{{stream_sid}}", stream_instance, methods=["GET", "POST"]),
        Route(f"{conf}/Recordings", recordings, methods=["GET"]),
        Route(
            f"{conf}/Recordings/{{recording_sid}}",
            recordings,
            methods=["GET", "POST", "DELETE"],
        ),
        *call_routes(),
    ]


class StripJsonSuffix:
    """Route ``/….json`` as ``/…`` (only under the API base paths)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.endswith(".json") and path.startswith((SIGNALWIRE_BASE, TWILIO_BASE)):
                scope = dict(scope)
                scope["path"] = path[: -len(".json")]
                raw: Any = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.endswith(b".json"):
                    scope["raw_path"] = raw[: -len(b".json")]
        await self.app(scope, receive, send)


def create_api(services: Services, dialout: Dialout | None = None) -> Starlette:
    """The ASGI application. Set ``app.state.ready = True`` once every listener is up."""
    routes = _resource_routes()
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            *dashboard_routes(services),
            Mount(SIGNALWIRE_BASE, routes=routes),
            Mount(TWILIO_BASE, routes=routes),
        ],
        exception_handlers={
            ApiError: _api_error,
            ConfstreamError: _domain_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.add_middleware(StripJsonSuffix)
    # added last, so outermost: bodies are bounded before anything else runs
    app.add_middleware(BodyLimit, max_bytes=services.settings.api_max_body_bytes)
    app.state.services = services
    app.state.dialout = dialout
    app.state.max_form_fields = services.settings.api_max_form_fields
    app.state.ready = False
    return app
