"""The Calls resource and call streams (docs/api.md, Calls).

Routes (under both base paths, ``.json`` optional like every route):

* ``GET /Accounts/{AccountSid}/Calls``: the account's calls, newest first, in Twilio's list
  envelope. Filters: ``Status`` (one of Twilio's call statuses, 20001), ``From``, ``To``,
  ``ParentCallSid`` (exact), ``StartTime``/``StartTime<``/``StartTime>`` and the same for
  ``EndTime`` (``YYYY-MM-DD``, the UTC day; ``<`` means on or before, ``>`` on or after, as
  Twilio does; anything else 20001). ``POST /Calls`` places a call
  (:mod:`confstream.api.dialout`).
* ``GET /Calls/{CallSid}``: one call (404, 20404, also for another account's).
* ``POST /Calls/{CallSid}``: ``Status=completed`` or ``canceled`` hangs a live call up (an
  ended call is returned as it is); ``Url`` (absolute http(s), 21205) with ``Method`` (GET or
  POST, 21209; POST by default) or ``Twiml`` (at most :data:`MAX_TWIML_CHARS` characters)
  moves a live call to that cXML document through the voice runtime (21220 when the call is not
  in progress, 20501 when the server runs no voice runtime). ``Status`` cannot be combined with
  ``Url``/``Twiml``, nor ``Url`` with ``Twiml`` (20001). ``FallbackUrl``, ``StatusCallback``
  and ``TimeLimit`` are documented by Twilio but not supported yet (400, 20501); nothing is
  changed then.
* ``…/Calls/{CallSid}/Streams``: ``POST`` starts a stream of that call (the parameters and
  their validation are the conference streams', :mod:`confstream.api.streams`; 21220 when the
  call is not in progress); ``GET`` lists its streams oldest first (``Status`` filter).
* ``…/Calls/{CallSid}/Streams/{StreamSid or Name}``: ``GET`` fetches, ``POST Status=stopped``
  stops it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from confstream.api.access import authenticate, parse_method, services_of
from confstream.api.common import (
    JSONResponse,
    base_path,
    form,
    page_response,
    parse_date,
    parse_paging,
)
from confstream.api.dialout import create_call
from confstream.api.errors import invalid, unsupported
from confstream.api.render import call_json, stream_json
from confstream.api.streams import parse_stream_request
from confstream.store import Account, Call, CallFilter, DateFilter
from confstream.store.models import CALL_CANCELED, CALL_COMPLETED, CALL_STATUSES, STREAM_STATUSES

#: The longest ``Twiml`` accepted (Twilio's documented limit).
MAX_TWIML_CHARS = 4000
#: Parameters Twilio documents for a call update that confstream does not support yet.
UNSUPPORTED_UPDATE = ("FallbackUrl", "StatusCallback", "TimeLimit")


def _dates(request: Request, name: str) -> DateFilter:
    q = request.query_params
    on, before, after = q.get(name), q.get(f"{name}<"), q.get(f"{name}>")
    return DateFilter(
        on=parse_date(name, on) if on is not None else None,
        on_or_before=parse_date(f"{name}<", before) if before is not None else None,
        on_or_after=parse_date(f"{name}>", after) if after is not None else None,
    )


def call_filter(request: Request) -> CallFilter:
    """The list filters of ``GET /Calls`` (see the module docstring)."""
    q = request.query_params
    status = q.get("Status")
    if status is not None and status not in CALL_STATUSES:
        raise invalid(20001, f"Status must be one of {', '.join(CALL_STATUSES)}")
    return CallFilter(
        status=status,
        from_uri=q.get("From"),
        to_uri=q.get("To"),
        parent_call_sid=q.get("ParentCallSid"),
        start_time=_dates(request, "StartTime"),
        end_time=_dates(request, "EndTime"),
    )


async def list_calls(request: Request) -> Response:
    if request.method == "POST":
        return await create_call(request)
    account = await authenticate(request)
    paging = parse_paging(request)
    filters = call_filter(request)
    rows = await services_of(request).list_calls(
        account.sid, filters, offset=paging.offset, limit=paging.page_size + 1
    )
    return page_response(
        request, f"/Accounts/{account.sid}/Calls", "calls", rows, call_json, paging
    )


async def _call(request: Request, account: Account) -> Call:
    return await services_of(request).get_call(account.sid, request.path_params["call_sid"])


def _absolute_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise invalid(21205, f"{name} must be an absolute http(s) URL, not {value!r}")
    return value


async def call_instance(request: Request) -> Response:
    account = await authenticate(request)
    call = await _call(request, account)
    services = services_of(request)
    if request.method == "POST":
        params = await form(request)
        status = params.get("Status")
        if status is not None and status not in (CALL_COMPLETED, CALL_CANCELED):
            raise invalid(20001, "Status can only be set to completed or canceled")
        url = (params.get("Url") or "").strip() or None
        twiml = params.get("Twiml") or None
        method = parse_method(params, "Method", "POST")
        parse_method(params, "FallbackMethod", "POST")
        parse_method(params, "StatusCallbackMethod", "POST")
        for name in UNSUPPORTED_UPDATE:
            if (params.get(name) or "").strip():
                raise unsupported(name, "calls run their document and end as they do")
        if url is not None and twiml is not None:
            raise invalid(20001, "Url and Twiml cannot both be given")
        if status is not None and (url is not None or twiml is not None):
            raise invalid(20001, "Status cannot be combined with Url or Twiml")
        if twiml is not None and len(twiml) > MAX_TWIML_CHARS:
            raise invalid(20001, f"Twiml must be at most {MAX_TWIML_CHARS} characters")
        if url is not None:
            url = _absolute_url("Url", url)
        if status is not None:
            call = await services.hangup_call(account, call.sid)
        elif url is not None or twiml is not None:
            call = await services.redirect_call(
                account, call.sid, url=url, method=method, twiml=twiml
            )
    return JSONResponse(call_json(base_path(request), call))


async def call_streams(request: Request) -> Response:
    account = await authenticate(request)
    call = await _call(request, account)
    services = services_of(request)
    base = base_path(request)
    if request.method == "POST":
        params = await form(request)
        stream_request = await parse_stream_request(params, account, services.settings)
        row = await services.start_call_stream(account, call.sid, stream_request)
        return JSONResponse(stream_json(base, row))
    paging = parse_paging(request)
    status = request.query_params.get("Status")
    if status is not None and status not in STREAM_STATUSES:
        raise invalid(20001, f"Status must be one of {', '.join(STREAM_STATUSES)}")
    rows = await services.list_call_streams(
        call.sid, status=status, offset=paging.offset, limit=paging.page_size + 1
    )
    path = f"/Accounts/{account.sid}/Calls/{call.sid}/Streams"
    return page_response(request, path, "streams", rows, stream_json, paging)


async def call_stream_instance(request: Request) -> Response:
    account = await authenticate(request)
    call = await _call(request, account)
    services = services_of(request)
    row = await services.get_call_stream(call.sid, request.path_params["stream_sid"])
    if request.method == "POST":
        params = await form(request)
        if params.get("Status") != "stopped":
            raise invalid(20001, "Status is required and can only be stopped")
        row = await services.stop_stream(row)
    return JSONResponse(stream_json(base_path(request), row))


def call_routes() -> list[Route]:
    """The routes of this module, relative to a base path."""
    calls = "/Accounts/{account_sid}/Calls"
    call = f"{calls}/{{call_sid}}"
    return [
        Route(calls, list_calls, methods=["GET", "POST"]),
        Route(call, call_instance, methods=["GET", "POST"]),
        Route(f"{call}/Streams", call_streams, methods=["GET", "POST"]),
        Route(f"{call}/Streams/{{stream_sid}}", call_stream_instance, methods=["GET", "POST"]),
    ]
