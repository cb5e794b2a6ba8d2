"""The error table, the error body shapes, the mapping of domain errors to HTTP; the layers
below the API do not import it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from confstream import errors
from confstream.api.errors import (
    ERROR_CODES,
    ApiError,
    from_domain,
    invalid,
    markdown_table,
    not_found,
    unauthorized,
)


def test_table_lists_every_code_once() -> None:
    table = markdown_table()
    for code in ERROR_CODES:
        assert table.count(f"| {code} |") == 1
    assert {20003, 20404, 21220, 21609, 31922, 31941, 20409} <= set(ERROR_CODES)


def test_bodies() -> None:
    body = unauthorized().body()
    assert body["status"] == 401 and body["code"] == 20003 and "errors" not in body
    assert str(body["more_info"]).endswith("20003")
    validation = invalid(21205, "Url is required").body()
    assert validation["status"] == 422 and validation["errors"] == ["Url is required"]
    assert ApiError(21220, "x").http_status == ERROR_CODES[21220].status


@pytest.mark.parametrize(
    "module", ["confstream.errors", "confstream.services", "confstream.api.routes"]
)
def test_modules_import_alone(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


#: What each domain error answers over HTTP: (status, code, carries ``errors``).
HTTP_OF_DOMAIN: list[tuple[errors.ConfstreamError, int, int, bool]] = [
    (errors.NotFound("Conference C1"), 404, 20404, False),
    (errors.ConferenceNotLive("C1"), 409, 21220, False),
    (errors.CallNotLive("CA1"), 409, 21220, False),
    (errors.CallControlUnavailable("Url needs the voice runtime"), 400, 20501, False),
    (errors.NameInUse("n"), 409, 20409, False),
    (errors.UrlRefused("AnnounceUrl refused: loopback"), 422, 21205, True),
    (errors.AnnouncementUnavailable("AnnounceUrl answered HTTP 404"), 502, 11200, False),
    (errors.AnnouncementInvalid("AnnounceUrl is not a supported WAV file"), 422, 12300, True),
    (errors.DialTargetInvalid("To must be a sip: URI"), 422, 21211, True),
    (errors.DialFromInvalid("From is not a caller ID"), 422, 21212, True),
    (errors.DialRefused("Calls to 10.0.0.1 are not permitted"), 403, 21215, False),
    (errors.DialLimitReached("at most 1 new outbound calls per second"), 429, 20429, False),
    (errors.OwnerUnavailable("conference 'c': owned by node n2"), 503, 20503, False),
]


@pytest.mark.parametrize(("error", "status", "code", "lists"), HTTP_OF_DOMAIN)
def test_domain_errors_map_to_http(
    error: errors.ConfstreamError, status: int, code: int, lists: bool
) -> None:
    api = from_domain(error)
    body = api.body()
    assert (api.http_status, body["status"], body["code"]) == (status, status, code)
    assert body["message"] == error.message
    assert ("errors" in body) is lists
    if lists:
        assert body["errors"] == [error.message]
    # the status is the one the published table gives the code
    assert ERROR_CODES[code].status == status


def test_every_domain_error_reaching_the_api_is_mapped() -> None:
    def subclasses(cls: type[errors.ConfstreamError]) -> set[type[errors.ConfstreamError]]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    mapped = {type(error) for error, *_ in HTTP_OF_DOMAIN}
    # Errors of calls in progress (confstream.voice: cXML documents) end a call, never a REST
    # request: only the API-facing tree of confstream.errors must be mapped.
    api_facing = {c for c in subclasses(errors.ConfstreamError) if c.__module__ == errors.__name__}
    join_refusals = {errors.JoinRefused} | subclasses(errors.JoinRefused)
    assert api_facing - join_refusals == mapped


def test_domain_errors_keep_the_messages_of_the_api() -> None:
    found = not_found("Stream S1").body()
    assert found["message"] == "The requested resource Stream S1 was not found"
    assert found["status"] == 404 and found["code"] == 20404
    in_use = errors.NameInUse("a").message
    assert in_use == "A stream named 'a' is already active in this conference"


def test_join_refusals_never_leak_through_http() -> None:
    body = from_domain(errors.AlreadyJoined()).body()
    assert body == {
        "code": 20500,
        "message": "Internal server error",
        "more_info": "https://www.twilio.com/docs/errors/20500",
        "status": 500,
    }
    assert errors.JoinRefused("ended", 404).sip_status == 404
    assert errors.AccountNotActive().sip_status == 403
