"""Shared pieces of the REST API: request parsing, dates, booleans, paging, JSON answers.

Every rule here answers 422 with code 20001 when broken (docs/api.md, Conventions), except
too many form fields: 413 (20413).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response

from confstream.api.errors import invalid, too_large

RowT = TypeVar("RowT")

API_VERSION = "2010-04-01"
SIGNALWIRE_BASE = "/api/laml/2010-04-01"
TWILIO_BASE = "/2010-04-01"
#: Paging (docs/api.md, Conventions): default page size 50, at most 1000, like Twilio.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: The furthest a page may start (``Page`` x ``PageSize``, or a ``PageToken``'s offset): far
#: beyond any real list, far below the 64-bit integers the databases page with.
MAX_OFFSET = 1_000_000_000
#: Form fields parsed from one body when ``app.state.max_form_fields`` is not set.
DEFAULT_MAX_FORM_FIELDS = 256

_DIGITS = re.compile(r"[0-9]{1,12}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def rfc2822(value: dt.datetime | None) -> str | None:
    """A stored naive-UTC datetime as RFC 2822 with ``+0000`` (``Tue, 25 Sep 2018 20:00:00
    +0000``)."""
    if value is None:
        return None
    return email.utils.format_datetime(value.replace(tzinfo=dt.UTC, microsecond=0))


def base_path(request: Request) -> str:
    """The base path the request came in on; URIs in answers use the same one."""
    return SIGNALWIRE_BASE if request.url.path.startswith(SIGNALWIRE_BASE) else TWILIO_BASE


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


async def form(request: Request) -> dict[str, str]:
    """The ``application/x-www-form-urlencoded`` body (the first value of repeated keys).

    The body was bounded in bytes before the route ran (:mod:`confstream.api.limits`); here
    the number of fields is: more than ``app.state.max_form_fields`` (the setting
    ``api_max_form_fields``) answers 413 (20413)."""
    limit: int = getattr(request.app.state, "max_form_fields", DEFAULT_MAX_FORM_FIELDS)
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=limit)
    except ValueError as exc:
        raise too_large(f"The request has more than {limit} parameters") from exc
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse_bool(name: str, value: str | None) -> bool | None:
    """``true``/``false`` in any case; None when absent; 422 (20001) otherwise."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise invalid(20001, f"{name} must be true or false, not {value!r}")


def parse_date(name: str, value: str) -> dt.date:
    """A date filter value: exactly ``YYYY-MM-DD`` (Twilio's form), a real calendar day.
    Anything else (trailing text, a time, other ISO forms, an empty value) is refused."""
    message = f"{name} must be a date as YYYY-MM-DD, not {value!r}"
    if _DATE.fullmatch(value) is None:
        raise invalid(20001, message)
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise invalid(20001, message) from exc


def parse_count(name: str, value: str, low: int, high: int) -> int:
    """A whole number written in ASCII digits (no sign, space or ``_``), ``low..high``."""
    if _DIGITS.fullmatch(value) is None or not low <= int(value) <= high:
        raise invalid(20001, f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Paging:
    page: int
    page_size: int
    offset: int


def parse_paging(request: Request) -> Paging:
    """``Page`` (from 0), ``PageSize`` (1..1000, default 50) and ``PageToken`` (``PA<offset>``,
    as written in ``next_page_uri``/``previous_page_uri``; it wins over ``Page``). The start
    of the page, ``Page`` x ``PageSize`` or the token's offset, is at most :data:`MAX_OFFSET`.
    Each must be plain ASCII digits; anything else answers 422 (20001)."""
    params = request.query_params
    page_size = parse_count(
        "PageSize", params.get("PageSize", str(DEFAULT_PAGE_SIZE)), 1, MAX_PAGE_SIZE
    )
    page = parse_count("Page", params.get("Page", "0"), 0, MAX_OFFSET)
    offset = page * page_size
    token = params.get("PageToken")
    if token is not None:
        if not token.startswith("PA"):
            raise invalid(20001, f"PageToken must be PA followed by an offset, not {token!r}")
        offset = parse_count("PageToken offset", token[2:], 0, MAX_OFFSET)
    elif offset > MAX_OFFSET:
        raise invalid(20001, f"Page x PageSize must be at most {MAX_OFFSET}")
    return Paging(page=page, page_size=page_size, offset=offset)


def page_body(
    request: Request,
    list_path: str,
    key: str,
    items: list[dict[str, Any]],
    paging: Paging,
    has_next: bool,
) -> dict[str, Any]:
    """Twilio's list envelope. ``list_path`` is the list's path after the base, without
    ``.json``; the filters of the request are kept in every page URI."""
    kept = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("Page", "PageSize", "PageToken")
    ]
    path = f"{base_path(request)}{list_path}.json"

    def uri(page: int, offset: int | None) -> str:
        query = [*kept, ("PageSize", str(paging.page_size)), ("Page", str(page))]
        if offset is not None:
            query.append(("PageToken", f"PA{offset}"))
        return f"{path}?{urlencode(query)}"

    size = paging.page_size
    previous_uri = None
    if paging.offset > 0:
        previous_uri = uri(max(paging.page - 1, 0), max(paging.offset - size, 0))
    return {
        key: items,
        "first_page_uri": uri(0, None),
        "next_page_uri": uri(paging.page + 1, paging.offset + size) if has_next else None,
        "previous_page_uri": previous_uri,
        "page": paging.page,
        "page_size": size,
        "start": paging.offset,
        "end": paging.offset + max(len(items) - 1, 0),
        "uri": uri(paging.page, paging.offset if paging.offset else None),
    }


def page_response(
    request: Request,
    list_path: str,
    key: str,
    rows: Sequence[RowT],
    render: Callable[[str, RowT], dict[str, Any]],
    paging: Paging,
) -> JSONResponse:
    """One page of a list. ``rows`` were fetched with ``limit=paging.page_size + 1``: the extra
    row is not shown, it only tells that a next page exists."""
    base = base_path(request)
    items = [render(base, row) for row in rows[: paging.page_size]]
    has_next = len(rows) > paging.page_size
    return JSONResponse(page_body(request, list_path, key, items, paging, has_next=has_next))
