"""The OpenAPI 3.1 description of the REST API (docs/api.md), served at ``GET /openapi.json``.

It describes exactly what the server implements, and the test suite keeps it true: a
schemathesis run against a live server (tests/api/test_openapi_schemathesis.py) fails on any
5xx, any response that does not match these schemas and any status code not listed here, and
every status code listed here must be seen at least once. ``docs/openapi.json`` is this
document, written by ``python -c 'from confstream.api.openapi import main;
main(["docs/openapi.json"])'`` (a test checks that the file equals what the server serves).

Choices:

* Paths are written with the ``.json`` suffix the SDKs use, under the Twilio base
  ``/2010-04-01`` (first ``servers`` entry); the SignalWire base ``/api/laml/2010-04-01`` is the
  second entry. Both bases, with or without ``.json``, serve the same operations
  (docs/api.md, Conventions).
* Form parameters are strings on the wire; where the server accepts a value only in a given
  form (booleans ``true``/``false`` in any case and surrounding whitespace, ``GET``/``POST`` in
  any case, an empty value meaning the default) the schema's ``pattern`` says exactly that, so a
  value outside the pattern is one the server refuses.
* Rules that no schema can state (a URL whose host the outbound policy refuses, a name already
  in use, a conference that ended) are in the descriptions, with the status code they answer.
* ``GET /openapi.json``, ``/healthz`` and ``/metrics`` sit outside the API base and need no
  authentication; they are not operations of this document.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from confstream.api.common import (
    API_VERSION,
    DEFAULT_PAGE_SIZE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    SIGNALWIRE_BASE,
    TWILIO_BASE,
    JSONResponse,
)
from confstream.calls.webhook import WEBHOOK_URL_RE

JSONDict = dict[str, Any]

_REF = "#/components/schemas/"

# ------------------------------------------------------------------------ value forms
#: ``true``/``false`` in any case; surrounding whitespace is ignored (docs/api.md).
BOOLEAN_PATTERN = r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\s*$"
#: ``GET``/``POST`` in any case (as Python upper-cases: ``\u017f`` is an ``S``, the ligatures
#: ``\ufb05``/``\ufb06`` are ``ST``); empty means the default, ``POST``.
METHOD_PATTERN = r"^([Gg][Ee][Tt]|[Pp][Oo]([Ss\u017f][Tt]|[\ufb05\ufb06]))?$"
#: ``AnnounceMethod``: the same, with surrounding whitespace ignored (a blank value is not
#: empty, and is refused).
ANNOUNCE_METHOD_PATTERN = r"^(\s*([Gg][Ee][Tt]|[Pp][Oo]([Ss\u017f][Tt]|[\ufb05\ufb06]))\s*)?$"
#: ``PA`` then the offset the page starts at (0..MAX_OFFSET), as written in page URIs.
PAGE_TOKEN_PATTERN = r"^PA(0{0,3}[0-9]{1,9}|0{0,2}1000000000)$"
#: A date filter: exactly ``YYYY-MM-DD`` (and a real calendar day: ``format: date``).
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
#: A stream Name once stripped: 1..255 characters, none of ``/ \\ ? # %``, no control
#: characters or line/paragraph separators, not ``.`` or ``..``, not ending in ``.json``
#: (so it stays addressable as ``.../Streams/{Name}.json``); blank means no name.
_NAME_CHAR = "[^/\\\\?#%\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]"
_NAME_EDGE = "[^/\\\\?#%\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\s]"
NAME_PATTERN = (
    r"^(?!\s*\.{1,2}\s*$)(?![\s\S]*\.json\s*$)\s*"
    f"(?:{_NAME_EDGE}(?:{_NAME_CHAR}{{0,253}}{_NAME_EDGE})?)?"
    r"\s*$"
)
#: Dates in answers: RFC 2822 in UTC.
RFC2822_PATTERN = (
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} \+0000$"
)

CONFERENCE_STATUSES = ["init", "in-progress", "completed"]
CONFERENCE_END_REASONS = [
    "conference-ended-via-api",
    "participant-with-end-conference-on-exit-left",
    "participant-with-end-conference-on-exit-kicked",
    "last-participant-kicked",
    "last-participant-left",
]
PARTICIPANT_STATUSES = ["queued", "connecting", "ringing", "connected", "complete", "failed"]
STREAM_STATUSES = ["queued", "in-progress", "stopped"]
CALL_STATUSES = [
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
]
CALL_DIRECTIONS = ["inbound", "outbound-api", "outbound-dial"]
#: The longest ``Twiml`` a call update accepts (confstream.api.calls.MAX_TWIML_CHARS).
MAX_TWIML_CHARS = 4000
TRACKS = ["inbound_track", "outbound_track", "both_tracks"]
CODECS = ["PCMU", "PCMA", "L16", "L16@16000h", "L16@24000h"]
ACCOUNT_STATUSES = ["active", "suspended", "closed"]


def _ref(name: str) -> JSONDict:
    return {"$ref": f"{_REF}{name}"}


def _nullable(schema: JSONDict) -> JSONDict:
    return {"oneOf": [schema, {"type": "null"}]}


def _obj(properties: JSONDict, required: list[str] | None = None) -> JSONDict:
    """A closed object: every key the server writes is listed, no other may appear."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


_SID = {"type": "string", "format": "uuid"}
_DATE = {"type": "string", "pattern": RFC2822_PATTERN}
_URI = {"type": "string", "pattern": "^/"}


# -------------------------------------------------------------------------- schemas
def _schemas() -> JSONDict:
    error_properties: JSONDict = {
        "code": {"type": "integer", "description": "docs/errors.md lists every code"},
        "message": {"type": "string"},
        "more_info": {"type": "string", "format": "uri"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "errors": {
            "type": "array",
            "items": {"type": "string"},
            "description": "every problem found (422 answers only)",
        },
    }
    page_properties: JSONDict = {
        "first_page_uri": _URI,
        "next_page_uri": _nullable(_URI),
        "previous_page_uri": _nullable(_URI),
        "page": {"type": "integer", "minimum": 0},
        "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        "start": {"type": "integer", "minimum": 0},
        "end": {"type": "integer", "minimum": 0},
        "uri": _URI,
    }

    def page(key: str, item: str) -> JSONDict:
        return _obj({key: {"type": "array", "items": _ref(item)}, **page_properties})

    return {
        "Error": _obj(error_properties, ["code", "message", "more_info", "status"]),
        "ValidationError": _obj(
            error_properties, ["code", "message", "more_info", "status", "errors"]
        ),
        "Account": _obj(
            {
                "sid": _SID,
                "auth_token": {"type": "string", "minLength": 1},
                "friendly_name": _nullable({"type": "string"}),
                "status": {"type": "string", "enum": ACCOUNT_STATUSES},
                "type": {"type": "string", "const": "Full"},
                "owner_account_sid": _SID,
                "stream_base_url": _nullable(
                    {"type": "string", "description": "extension: base for relative stream Urls"}
                ),
                "voice_url": _nullable(
                    {"type": "string", "description": "extension: the voice application URL"}
                ),
                "voice_method": {"type": "string", "enum": ["GET", "POST"]},
                "voice_fallback_url": _nullable(
                    {"type": "string", "description": "extension: requested when voice_url fails"}
                ),
                "voice_fallback_method": {"type": "string", "enum": ["GET", "POST"]},
                "status_callback": _nullable(
                    {"type": "string", "description": "extension: call status callback URL"}
                ),
                "status_callback_method": {"type": "string", "enum": ["GET", "POST"]},
                "date_created": _DATE,
                "date_updated": _DATE,
                "uri": _URI,
                "subresource_uris": _obj({"conferences": _URI}),
            }
        ),
        "Conference": _obj(
            {
                "sid": _SID,
                "account_sid": _SID,
                "friendly_name": {"type": "string"},
                "status": {"type": "string", "enum": CONFERENCE_STATUSES},
                "date_created": _DATE,
                "date_updated": _DATE,
                "api_version": {"type": "string", "const": API_VERSION},
                "region": {"type": "string"},
                "reason_conference_ended": _nullable(
                    {"type": "string", "enum": CONFERENCE_END_REASONS}
                ),
                "call_sid_ending_conference": _nullable(_SID),
                "uri": _URI,
                "subresource_uris": _obj(
                    {"participants": _URI, "streams": _URI, "recordings": _URI},
                    ["participants", "streams"],
                ),
            },
        ),
        "Participant": _obj(
            {
                "account_sid": _SID,
                "call_sid": _SID,
                "conference_sid": _SID,
                "label": _nullable({"type": "string"}),
                "date_created": _DATE,
                "date_updated": _DATE,
                "status": {"type": "string", "enum": PARTICIPANT_STATUSES},
                "muted": {"type": "boolean"},
                "hold": {"type": "boolean"},
                "coaching": {"type": "boolean"},
                "call_sid_to_coach": _nullable(_SID),
                "start_conference_on_enter": {"type": "boolean"},
                "end_conference_on_exit": {"type": "boolean"},
                "queue_time": _nullable({"type": "string"}),
                "uri": _URI,
            },
            [
                "account_sid",
                "call_sid",
                "conference_sid",
                "label",
                "date_created",
                "date_updated",
                "status",
                "muted",
                "hold",
                "coaching",
                "call_sid_to_coach",
                "start_conference_on_enter",
                "end_conference_on_exit",
                "uri",
            ],
        ),
        "Call": _obj(
            {
                "sid": _SID,
                "date_created": _DATE,
                "date_updated": _DATE,
                "parent_call_sid": _nullable(_SID),
                "account_sid": _SID,
                "to": {"type": "string", "description": "the SIP URI of the INVITE's To"},
                "to_formatted": {"type": "string"},
                "from": {"type": "string", "description": "the SIP URI of the INVITE's From"},
                "from_formatted": {"type": "string"},
                "phone_number_sid": {"type": "null"},
                "status": {"type": "string", "enum": CALL_STATUSES},
                "start_time": _nullable(_DATE),
                "end_time": _nullable(_DATE),
                "duration": _nullable(
                    {
                        "type": "string",
                        "pattern": "^[0-9]+$",
                        "description": "whole seconds, once an answered call has ended",
                    }
                ),
                "price": {"type": "null"},
                "price_unit": {"type": "string"},
                "direction": {"type": "string", "enum": CALL_DIRECTIONS},
                "answered_by": {"type": "null"},
                "api_version": {"type": "string", "const": API_VERSION},
                "forwarded_from": {"type": "null"},
                "group_sid": {"type": "null"},
                "caller_name": _nullable({"type": "string"}),
                "queue_time": {"type": "string"},
                "stir_verstat": {"type": "null"},
                "trunk_sid": {"type": "null"},
                "sip_response_code": _nullable(
                    {
                        "type": "integer",
                        "description": (
                            "extension: the final SIP status of an outbound call that was not "
                            "answered (486 busy, 487 cancelled, 408 no answer at all...)"
                        ),
                    }
                ),
                "uri": _URI,
                "subresource_uris": _obj({"streams": _URI}),
            }
        ),
        "Stream": _obj(
            {
                "account_sid": _SID,
                "conference_sid": _nullable(_SID),
                "call_sid": _SID,
                "sid": _SID,
                "name": _nullable({"type": "string"}),
                "status": {"type": "string", "enum": STREAM_STATUSES},
                "date_created": _DATE,
                "date_updated": _DATE,
                "uri": _URI,
                "url": {"type": "string", "description": "extension: the resolved wss:// URL"},
                "track": {"type": "string", "enum": TRACKS, "description": "extension"},
                "codec": {"type": "string", "enum": CODECS, "description": "extension"},
                "realtime": {"type": "boolean", "description": "extension: bidirectional"},
                "error_code": _nullable({"type": "integer", "description": "docs/errors.md"}),
                "error_message": _nullable({"type": "string"}),
            }
        ),
        "AccountPage": page("accounts", "Account"),
        "ConferencePage": page("conferences", "Conference"),
        "ParticipantPage": page("participants", "Participant"),
        "StreamPage": page("streams", "Stream"),
        "CallPage": page("calls", "Call"),
    }


# ------------------------------------------------------------------------- responses
_ERROR_WHEN = {
    400: (
        "Refused before anything was done: a stream `Url` that is not `wss://` (31922), or a "
        "parameter not supported yet (20501)"
    ),
    401: "Authentication failed, or the path names another account (20003)",
    404: "No such resource in this account (20404)",
    403: (
        "The SIP target of a call to place is refused: the outbound address policy, or this "
        "server's own SIP listener (21215)"
    ),
    409: (
        "The conference or the call is not in progress (21220), or the stream Name is in use "
        "(20409)"
    ),
    413: "The body is over the size limit or has too many parameters (20413)",
    422: "A parameter has an invalid value; `errors` lists every problem (docs/errors.md)",
    429: (
        "Too many outbound calls: the account's limit of calls being placed or in progress, or "
        "of new calls per second (20429); nothing was dialled"
    ),
    502: "The `AnnounceUrl` audio could not be fetched (11200)",
    503: (
        "Cluster mode only: the node that owns this conference or call could not be reached; "
        "nothing was changed and the request may be retried (20503, docs/cluster.md)"
    ),
}


def _responses() -> JSONDict:
    out: JSONDict = {}
    for status, text in _ERROR_WHEN.items():
        schema = "ValidationError" if status == 422 else "Error"
        response: JSONDict = {
            "description": text,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Always `Basic realm="confstream"`',
                    "schema": {"type": "string"},
                }
            }
        out[str(status)] = response
    return out


def _ok(schema: str, description: str, links: JSONDict | None = None) -> JSONDict:
    out: JSONDict = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if links:
        out["links"] = links
    return out


def _errors(*statuses: int) -> JSONDict:
    """The error responses of an operation; one that addresses a conference or a call (it
    can answer 404) can also answer 503 in cluster mode, when the request is forwarded to
    the owning node and that node cannot be reached."""
    if 404 in statuses:
        statuses = (*statuses, 503)
    return {str(s): {"$ref": f"#/components/responses/{s}"} for s in statuses}


# ------------------------------------------------------------------------ parameters
def _path(name: str, description: str, schema: JSONDict | None = None) -> JSONDict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or _SID,
    }


def _query(name: str, description: str, schema: JSONDict) -> JSONDict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _parameters() -> JSONDict:
    boolean = {"type": "string", "pattern": BOOLEAN_PATTERN}
    date = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
    params: JSONDict = {
        "AccountSid": _path("AccountSid", "Your AccountSid (another one answers 401)"),
        "ConferenceSid": _path("ConferenceSid", "The conference's SID"),
        "CallSid": _path("CallSid", "The participant's CallSid, or its label"),
        "CallSidOfCall": _path("CallSid", "The call's SID (a participant's CallSid is its call's)"),
        "StreamSid": _path(
            "Sid",
            "The stream's SID, or its Name (percent-encoded)",
            {"type": "string", "minLength": 1},
        ),
        "RecordingSid": _path("Sid", "A recording's SID", {"type": "string", "minLength": 1}),
        "ConferenceSidOrName": _path(
            "ConferenceSid",
            "The conference's SID, or its FriendlyName (its live conference; created when none)",
            {"type": "string", "minLength": 1},
        ),
        "Page": _query(
            "Page",
            f"Page number from 0; Page x PageSize at most {MAX_OFFSET} (422 beyond)",
            {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        ),
        "PageSize": _query(
            "PageSize",
            f"Items per page, 1..{MAX_PAGE_SIZE} (422 otherwise)",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PAGE_SIZE,
                "default": DEFAULT_PAGE_SIZE,
            },
        ),
        "PageToken": _query(
            "PageToken",
            "As written in next_page_uri/previous_page_uri; wins over Page",
            {"type": "string", "pattern": PAGE_TOKEN_PATTERN},
        ),
        "FriendlyName": _query(
            "FriendlyName", "Only conferences with this name", {"type": "string"}
        ),
        "ConferenceStatus": _query(
            "Status",
            "Only conferences with this status",
            {"type": "string", "enum": CONFERENCE_STATUSES},
        ),
        "AccountFriendlyName": _query(
            "FriendlyName", "Only the account if it has this name", {"type": "string"}
        ),
        "AccountStatus": _query(
            "Status",
            f"Only the account if its status is this ({', '.join(ACCOUNT_STATUSES)})",
            {"type": "string"},
        ),
        "Muted": _query("Muted", "Only participants muted (true) or not", boolean),
        "Hold": _query("Hold", "Only participants on hold (true) or not", boolean),
        "StreamStatus": _query(
            "Status", "Only streams with this status", {"type": "string", "enum": STREAM_STATUSES}
        ),
    }
    params |= {
        "CallStatus": _query(
            "Status", "Only calls with this status", {"type": "string", "enum": CALL_STATUSES}
        ),
        "From": _query("From", "Only calls from this SIP URI", {"type": "string"}),
        "To": _query("To", "Only calls to this SIP URI", {"type": "string"}),
        "ParentCallSid": _query(
            "ParentCallSid", "Only the calls created by this call", {"type": "string"}
        ),
    }
    for field in ("StartTime", "EndTime"):
        params[field] = _query(field, "Started/ended on this UTC day", date)
        params[f"{field}Before"] = _query(f"{field}<", "On or before this UTC day", date)
        params[f"{field}After"] = _query(f"{field}>", "On or after this UTC day", date)
    for field in ("DateCreated", "DateUpdated"):
        params[field] = _query(field, "Created/updated on this UTC day", date)
        params[f"{field}Before"] = _query(f"{field}<", "On or before this UTC day", date)
        params[f"{field}After"] = _query(f"{field}>", "On or after this UTC day", date)
    return params


def _p(*names: str) -> list[JSONDict]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


_PAGING = ("Page", "PageSize", "PageToken")


# ------------------------------------------------------------------------ request bodies
def _form(properties: JSONDict, required: list[str] | None = None, **extra: Any) -> JSONDict:
    schema: JSONDict = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return {
        "required": bool(required),
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


_ANNOUNCE: JSONDict = {
    "AnnounceUrl": {
        "type": "string",
        "description": (
            "A WAV file (PCM16 or G.711) fetched with AnnounceMethod through the outbound "
            "policy and played once; refused URL 422 (21205), fetch failure 502 (11200), not "
            "such a WAV 422 (12300). Blank means none."
        ),
    },
    "AnnounceMethod": {
        "type": "string",
        "pattern": ANNOUNCE_METHOD_PATTERN,
        "description": "GET or POST (default), any case (422, 21209 otherwise)",
    },
}


def _account_update_body() -> JSONDict:
    def url(what: str) -> JSONDict:
        return {
            "type": "string",
            "pattern": rf"^\s*({WEBHOOK_URL_RE})?\s*$",
            "description": (
                f"Extension: {what}. An absolute http(s) URL with a host (422, 21205 "
                "otherwise), or empty to clear it (docs/voice.md)"
            ),
        }

    method: JSONDict = {
        "type": "string",
        "pattern": ANNOUNCE_METHOD_PATTERN,
        "description": "GET or POST, any case (422, 21209 otherwise); empty: unchanged",
    }
    return _form(
        {
            "FriendlyName": {
                "type": "string",
                "maxLength": 255,
                "description": "At most 255 characters (422, 20001 otherwise)",
            },
            "VoiceUrl": url("the voice application, requested for every incoming call"),
            "VoiceMethod": method,
            "VoiceFallbackUrl": url("requested when the voice URL fails"),
            "VoiceFallbackMethod": method,
            "StatusCallback": url("call status callbacks of the account"),
            "StatusCallbackMethod": method,
        }
    )


def _stream_create_body() -> JSONDict:
    return _form(
        {
            "Url": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "Absolute wss:// URL with a host and a valid port, no whitespace (400, "
                    "31922 otherwise), or a relative one resolved against the account's "
                    "stream base URL (none: 422, 21205). An address the outbound policy "
                    "refuses is reported on the stream (error_code 31922)."
                ),
            },
            "Name": {
                "type": "string",
                "pattern": NAME_PATTERN,
                "description": (
                    "Unique among the conference's active streams (409, 20409); usable in "
                    "place of the SID"
                ),
            },
            "Track": {
                "type": "string",
                "enum": [*TRACKS, ""],
                "description": "default both_tracks (422, 31941 otherwise)",
            },
            "StatusCallback": {
                "type": "string",
                "description": (
                    "Absolute http(s) URL whose host the outbound policy accepts (422, 21609 "
                    "otherwise)"
                ),
            },
            "StatusCallbackMethod": {
                "type": "string",
                "pattern": METHOD_PATTERN,
                "description": "GET or POST (default), any case (422, 21209 otherwise)",
            },
            "StreamCodec": {"type": "string", "enum": [*CODECS, ""], "description": "default PCMU"},
            "StreamRealTime": {
                "type": "string",
                "pattern": BOOLEAN_PATTERN,
                "description": "true: bidirectional (default false)",
            },
            "AuthorizationBearerToken": {
                "type": "string",
                "description": "Sent as Authorization: Bearer on the upgrade; never stored",
            },
        },
        ["Url"],
        patternProperties={
            r"^Parameter([1-9]|[1-9][0-9])\.(Name|Value)$": {
                "type": "string",
                "description": (
                    "Custom parameters N = 1..99 sent in start.customParameters; a Value needs "
                    "its Name, name + value under 500 characters (422, 20001 otherwise)"
                ),
            }
        },
    )


def _call_update_body() -> JSONDict:
    url = "Absolute http(s) URL (422, 21205 otherwise)"
    unsupported = "Not supported yet: any non-blank value answers 400 (20501)"
    return _form(
        {
            "Status": {
                "type": "string",
                "enum": ["completed", "canceled"],
                "description": (
                    "Hang the call up (an ended call is returned as it is); not with Url or "
                    "Twiml (422, 20001)"
                ),
            },
            "Url": {
                "type": "string",
                "description": (
                    f"{url}: the call runs this cXML document (409, 21220 when the call is not "
                    "in progress; 400, 20501 when the server runs no voice runtime); not with "
                    "Twiml (422, 20001)"
                ),
            },
            "Method": {
                "type": "string",
                "pattern": ANNOUNCE_METHOD_PATTERN,
                "description": "GET or POST (default), any case (422, 21209 otherwise)",
            },
            "Twiml": {
                "type": "string",
                "maxLength": MAX_TWIML_CHARS,
                "description": "A cXML document the call runs (as Url); blank means none",
            },
            "FallbackUrl": {"type": "string", "description": unsupported},
            "StatusCallback": {"type": "string", "description": unsupported},
            "TimeLimit": {"type": "string", "description": unsupported},
            "FallbackMethod": {"type": "string", "pattern": ANNOUNCE_METHOD_PATTERN},
            "StatusCallbackMethod": {"type": "string", "pattern": ANNOUNCE_METHOD_PATTERN},
        }
    )


_DIAL_EVENTS = "initiated, ringing, answered, completed"


def _dial_properties() -> JSONDict:
    """The parameters shared by POST /Calls and POST /Participants (docs/api.md)."""
    method: JSONDict = {
        "type": "string",
        "pattern": ANNOUNCE_METHOD_PATTERN,
        "description": "GET or POST (default), any case (422, 21209 otherwise)",
    }
    boolean = {"type": "string", "pattern": BOOLEAN_PATTERN}
    return {
        "To": {
            "type": "string",
            "minLength": 1,
            "description": (
                "sip:user@host[:port][;transport=udp] (422: 21201 missing, 21211 otherwise); "
                "the host's address must be allowed by the outbound policy and not be this "
                "server's SIP listener (403, 21215)"
            ),
        },
        "From": {
            "type": "string",
            "minLength": 1,
            "description": (
                "A sip: URI, or a caller ID of letters, digits and +-_. (sent as "
                "sip:<it>@<server>) (422, 21212 otherwise)"
            ),
        },
        "StatusCallback": {
            "type": "string",
            "description": "http(s) URL for call progress events (422, 21609 when refused)",
        },
        "StatusCallbackMethod": method,
        "StatusCallbackEvent": {
            "type": "string",
            "description": (
                f"Space-separated (or repeated) among {_DIAL_EVENTS}; default completed "
                "(422, 20001 otherwise)"
            ),
        },
        "Timeout": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Seconds of ringing before no-answer, 1-600, default 60 (422)",
        },
        "TimeLimit": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Seconds an answered call may last, 1-86400 (422)",
        },
        "SipAuthUsername": {
            "type": "string",
            "description": "Username for the callee's digest challenge (401/407)",
        },
        "SipAuthPassword": {"type": "string", "description": "Its password"},
        "EarlyMedia": {**boolean, "description": "Use a 183's media (default false)"},
    }


def _create_call_body() -> JSONDict:
    return _form(
        {
            **_dial_properties(),
            "Url": {
                "type": "string",
                "description": (
                    "Absolute http(s) URL of the cXML document the answered call runs "
                    "(422, 21205: neither Url nor Twiml, or a bad URL); not with Twiml"
                ),
            },
            "Method": {
                "type": "string",
                "pattern": ANNOUNCE_METHOD_PATTERN,
                "description": "GET or POST (default) for Url (422, 21209 otherwise)",
            },
            "Twiml": {
                "type": "string",
                "maxLength": MAX_TWIML_CHARS,
                "description": "The cXML document the answered call runs (as Url)",
            },
        },
        ["To", "From"],
    )


def _create_participant_body() -> JSONDict:
    boolean = {"type": "string", "pattern": BOOLEAN_PATTERN}
    method: JSONDict = {"type": "string", "pattern": ANNOUNCE_METHOD_PATTERN}
    return _form(
        {
            **_dial_properties(),
            "Label": {"type": "string", "maxLength": 255},
            "Muted": boolean,
            "Beep": {"type": "string", "enum": ["true", "false", "onEnter", "onExit"]},
            "StartConferenceOnEnter": boolean,
            "EndConferenceOnExit": boolean,
            "MaxParticipants": {"type": "string", "pattern": "^[0-9]+$"},
            "WaitUrl": {"type": "string", "description": "Absolute http(s) WAV URL (422)"},
            "WaitMethod": method,
            "ConferenceStatusCallback": {
                "type": "string",
                "description": "The conference's status callback, when this creates it",
            },
            "ConferenceStatusCallbackMethod": method,
            "ConferenceStatusCallbackEvent": {
                "type": "string",
                "description": "start end join leave mute hold modify speaker announcement",
            },
            "Coaching": {**boolean, "description": "true answers 400 (20501)"},
            "CallSidToCoach": {"type": "string", "description": "Not supported (400, 20501)"},
        },
        ["To", "From"],
    )


def _call_paths(acc: str) -> JSONDict:
    """The Calls resource and call streams (docs/api.md, Calls)."""
    call = f"{acc}/Calls/{{CallSid}}"
    call_link = {"AccountSid": "$request.path.AccountSid", "CallSid": "$response.body#/sid"}
    first_call = {
        "AccountSid": "$request.path.AccountSid",
        "CallSid": "$response.body#/calls/0/sid",
    }
    stream_link = {
        "AccountSid": "$request.path.AccountSid",
        "CallSid": "$response.body#/call_sid",
        "Sid": "$response.body#/sid",
    }
    return {
        f"{acc}/Calls.json": {
            "parameters": _p("AccountSid"),
            "get": {
                "operationId": "listCalls",
                "summary": "List calls, newest first",
                "parameters": _p(
                    "CallStatus",
                    "From",
                    "To",
                    "ParentCallSid",
                    "StartTime",
                    "StartTimeBefore",
                    "StartTimeAfter",
                    "EndTime",
                    "EndTimeBefore",
                    "EndTimeAfter",
                    *_PAGING,
                ),
                "responses": {
                    "200": _ok(
                        "CallPage",
                        "A page of calls",
                        {
                            "GetFirstCall": {"operationId": "fetchCall", "parameters": first_call},
                            "ListFirstCallStreams": {
                                "operationId": "listCallStreams",
                                "parameters": first_call,
                            },
                        },
                    ),
                    **_errors(401, 422),
                },
            },
            "post": {
                "operationId": "createCall",
                "summary": (
                    "Place a call to a SIP address; answered, it runs Url or Twiml "
                    "(docs/api.md, Making calls)"
                ),
                "requestBody": _create_call_body(),
                "responses": {
                    "201": _ok(
                        "Call",
                        "The call, queued",
                        {
                            "GetCall": {"operationId": "fetchCall", "parameters": call_link},
                        },
                    ),
                    **_errors(401, 403, 413, 422, 429),
                },
            },
        },
        f"{call}.json": {
            "parameters": _p("AccountSid", "CallSidOfCall"),
            "get": {
                "operationId": "fetchCall",
                "summary": "Fetch a call",
                "responses": {
                    "200": _ok(
                        "Call",
                        "The call",
                        {
                            "ListCallStreams": {
                                "operationId": "listCallStreams",
                                "parameters": call_link,
                            }
                        },
                    ),
                    **_errors(401, 404),
                },
            },
            "post": {
                "operationId": "updateCall",
                "summary": "Hang a call up (Status) or move it to another document (Url, Twiml)",
                "requestBody": _call_update_body(),
                "responses": {
                    "200": _ok("Call", "The call as it is now"),
                    **_errors(400, 401, 404, 409, 413, 422),
                },
            },
        },
        f"{call}/Streams.json": {
            "parameters": _p("AccountSid", "CallSidOfCall"),
            "get": {
                "operationId": "listCallStreams",
                "summary": "List the call's streams, oldest first (extension)",
                "parameters": _p("StreamStatus", *_PAGING),
                "responses": {
                    "200": _ok("StreamPage", "A page of streams"),
                    **_errors(401, 404, 422),
                },
            },
            "post": {
                "operationId": "createCallStream",
                "summary": (
                    "Stream one call: inbound is what the caller says, outbound what it hears "
                    "(409, 21220 when the call is not in progress)"
                ),
                "requestBody": _stream_create_body(),
                "responses": {
                    "200": _ok(
                        "Stream",
                        "The stream, queued",
                        {
                            "GetCallStream": {
                                "operationId": "fetchCallStream",
                                "parameters": stream_link,
                            },
                            "StopCallStream": {
                                "operationId": "stopCallStream",
                                "parameters": stream_link,
                            },
                        },
                    ),
                    **_errors(400, 401, 404, 409, 413, 422),
                },
            },
        },
        f"{call}/Streams/{{Sid}}.json": {
            "parameters": _p("AccountSid", "CallSidOfCall", "StreamSid"),
            "get": {
                "operationId": "fetchCallStream",
                "summary": "Fetch a call's stream by SID or Name (extension)",
                "responses": {"200": _ok("Stream", "The stream"), **_errors(401, 404)},
            },
            "post": {
                "operationId": "stopCallStream",
                "summary": "Stop a call's stream (Status=stopped); a stopped one answers as it is",
                "requestBody": _form(
                    {"Status": {"type": "string", "enum": ["stopped"]}}, ["Status"]
                ),
                "responses": {
                    "200": _ok("Stream", "The stream, stopped"),
                    **_errors(401, 404, 413, 422),
                },
            },
        },
    }


# ---------------------------------------------------------------------------- paths
def _paths() -> JSONDict:
    acc = "/Accounts/{AccountSid}"
    conf = f"{acc}/Conferences/{{ConferenceSid}}"
    conf_link = {
        "AccountSid": "$request.path.AccountSid",
        "ConferenceSid": "$response.body#/sid",
    }
    conf_links = {
        "GetConference": {"operationId": "fetchConference", "parameters": conf_link},
        "ListParticipants": {"operationId": "listParticipants", "parameters": conf_link},
        "ListStreams": {"operationId": "listStreams", "parameters": conf_link},
        "CreateStream": {"operationId": "createStream", "parameters": conf_link},
    }
    first_conf = {
        "AccountSid": "$request.path.AccountSid",
        "ConferenceSid": "$response.body#/conferences/0/sid",
    }
    participant_link = {
        "AccountSid": "$request.path.AccountSid",
        "ConferenceSid": "$response.body#/conference_sid",
        "CallSid": "$response.body#/call_sid",
    }
    first_participant = {
        "AccountSid": "$request.path.AccountSid",
        "ConferenceSid": "$request.path.ConferenceSid",
        "CallSid": "$response.body#/participants/0/call_sid",
    }
    stream_link = {
        "AccountSid": "$request.path.AccountSid",
        "ConferenceSid": "$response.body#/conference_sid",
        "Sid": "$response.body#/sid",
    }
    return {
        "/Accounts.json": {
            "get": {
                "operationId": "listAccounts",
                "summary": "List accounts: only your own (there are no subaccounts)",
                "parameters": _p("AccountFriendlyName", "AccountStatus", *_PAGING),
                "responses": {
                    "200": _ok("AccountPage", "A page of accounts"),
                    **_errors(401, 422),
                },
            }
        },
        f"{acc}.json": {
            "parameters": _p("AccountSid"),
            "get": {
                "operationId": "fetchAccount",
                "summary": "Fetch your account",
                "responses": {
                    "200": _ok(
                        "Account",
                        "Your account",
                        {
                            "ListConferences": {
                                "operationId": "listConferences",
                                "parameters": {"AccountSid": "$response.body#/sid"},
                            }
                        },
                    ),
                    **_errors(401),
                },
            },
            "post": {
                "operationId": "updateAccount",
                "summary": "Update your account's name and voice application; nothing "
                "changes when a value is refused",
                "requestBody": _account_update_body(),
                "responses": {
                    "200": _ok("Account", "Your account, updated"),
                    **_errors(401, 413, 422),
                },
            },
        },
        f"{acc}/Conferences.json": {
            "parameters": _p("AccountSid"),
            "get": {
                "operationId": "listConferences",
                "summary": "List conferences, newest first",
                "parameters": _p(
                    "FriendlyName",
                    "ConferenceStatus",
                    "DateCreated",
                    "DateCreatedBefore",
                    "DateCreatedAfter",
                    "DateUpdated",
                    "DateUpdatedBefore",
                    "DateUpdatedAfter",
                    *_PAGING,
                ),
                "responses": {
                    "200": _ok(
                        "ConferencePage",
                        "A page of conferences",
                        {
                            "GetFirstConference": {
                                "operationId": "fetchConference",
                                "parameters": first_conf,
                            },
                            "ListFirstParticipants": {
                                "operationId": "listParticipants",
                                "parameters": first_conf,
                            },
                            "ListFirstStreams": {
                                "operationId": "listStreams",
                                "parameters": first_conf,
                            },
                            "CreateFirstStream": {
                                "operationId": "createStream",
                                "parameters": first_conf,
                            },
                        },
                    ),
                    **_errors(401, 422),
                },
            },
        },
        f"{conf}.json": {
            "parameters": _p("AccountSid", "ConferenceSid"),
            "get": {
                "operationId": "fetchConference",
                "summary": "Fetch a conference",
                "responses": {
                    "200": _ok("Conference", "The conference", conf_links),
                    **_errors(401, 404),
                },
            },
            "post": {
                "operationId": "updateConference",
                "summary": "End the conference (Status=completed) or play an announcement",
                "requestBody": _form(
                    {
                        "Status": {
                            "type": "string",
                            "enum": ["completed"],
                            "description": (
                                "completed ends it: callers get BYE, streams stop "
                                "(a completed conference is left as it is)"
                            ),
                        },
                        **_ANNOUNCE,
                    }
                ),
                "responses": {
                    "200": _ok("Conference", "The conference as it is now", conf_links),
                    **_errors(401, 404, 409, 413, 422, 502),
                },
            },
        },
        f"{conf}/Participants.json": {
            "parameters": _p("AccountSid", "ConferenceSid"),
            "get": {
                "operationId": "listParticipants",
                "summary": "List the participants in the conference now",
                "parameters": _p("Muted", "Hold", *_PAGING),
                "responses": {
                    "200": _ok(
                        "ParticipantPage",
                        "A page of participants",
                        {
                            "GetFirstParticipant": {
                                "operationId": "fetchParticipant",
                                "parameters": first_participant,
                            },
                            "UpdateFirstParticipant": {
                                "operationId": "updateParticipant",
                                "parameters": first_participant,
                            },
                        },
                    ),
                    **_errors(401, 404, 422),
                },
            },
            "post": {
                "operationId": "createParticipant",
                "summary": (
                    "Dial a SIP address and join the callee to the conference (by SID, or by "
                    "FriendlyName: created when it has no live conference)"
                ),
                "parameters": _p("ConferenceSidOrName"),
                "requestBody": _create_participant_body(),
                "responses": {
                    "201": _ok(
                        "Participant",
                        "The participant, queued",
                        {
                            "GetParticipant": {
                                "operationId": "fetchParticipant",
                                "parameters": participant_link,
                            }
                        },
                    ),
                    **_errors(400, 401, 403, 409, 413, 422, 429),
                },
            },
        },
        f"{conf}/Participants/{{CallSid}}.json": {
            "parameters": _p("AccountSid", "ConferenceSid", "CallSid"),
            "get": {
                "operationId": "fetchParticipant",
                "summary": "Fetch a participant in the conference now (one that left: 404)",
                "responses": {
                    "200": _ok(
                        "Participant",
                        "The participant",
                        {
                            "UpdateParticipant": {
                                "operationId": "updateParticipant",
                                "parameters": participant_link,
                            },
                        },
                    ),
                    **_errors(401, 404),
                },
            },
            "post": {
                "operationId": "updateParticipant",
                "summary": "Mute, hold, or play an announcement to one participant",
                "requestBody": _form(
                    {
                        "Muted": {"type": "string", "pattern": BOOLEAN_PATTERN},
                        "Hold": {"type": "string", "pattern": BOOLEAN_PATTERN},
                        "EndConferenceOnExit": {"type": "string", "pattern": BOOLEAN_PATTERN},
                        "BeepOnExit": {"type": "string", "pattern": BOOLEAN_PATTERN},
                        **_ANNOUNCE,
                    }
                ),
                "responses": {
                    "200": _ok("Participant", "The participant as it is now"),
                    **_errors(401, 404, 413, 422, 502),
                },
            },
            "delete": {
                "operationId": "deleteParticipant",
                "summary": "Hang the participant up (SIP BYE)",
                "responses": {"204": {"description": "Hung up"}, **_errors(401, 404)},
            },
        },
        f"{conf}/Streams.json": {
            "parameters": _p("AccountSid", "ConferenceSid"),
            "get": {
                "operationId": "listStreams",
                "summary": "List the conference's streams, oldest first (extension)",
                "parameters": _p("StreamStatus", *_PAGING),
                "responses": {
                    "200": _ok("StreamPage", "A page of streams"),
                    **_errors(401, 404, 422),
                },
            },
            "post": {
                "operationId": "createStream",
                "summary": "Create a Conference Stream: the conference's audio over wss://",
                "requestBody": _stream_create_body(),
                "responses": {
                    "200": _ok(
                        "Stream",
                        "The stream, queued",
                        {
                            "GetStream": {"operationId": "fetchStream", "parameters": stream_link},
                            "StopStream": {"operationId": "stopStream", "parameters": stream_link},
                        },
                    ),
                    **_errors(400, 401, 404, 409, 413, 422),
                },
            },
        },
        f"{conf}/Streams/{{Sid}}.json": {
            "parameters": _p("AccountSid", "ConferenceSid", "StreamSid"),
            "get": {
                "operationId": "fetchStream",
                "summary": "Fetch a stream by SID or Name (extension)",
                "responses": {
                    "200": _ok(
                        "Stream",
                        "The stream",
                        {"StopStream": {"operationId": "stopStream", "parameters": stream_link}},
                    ),
                    **_errors(401, 404),
                },
            },
            "post": {
                "operationId": "stopStream",
                "summary": "Stop a stream (Status=stopped); a stopped one answers as it is",
                "requestBody": _form(
                    {"Status": {"type": "string", "enum": ["stopped"]}}, ["Status"]
                ),
                "responses": {
                    "200": _ok("Stream", "The stream, stopped"),
                    **_errors(401, 404, 413, 422),
                },
            },
        },
        f"{conf}/Recordings.json": {
            "parameters": _p("AccountSid", "ConferenceSid"),
            "get": {
                "operationId": "listRecordings",
                "summary": "Conference recordings: not recorded yet, always 404 (20404)",
                "responses": _errors(401, 404),
            },
        },
        f"{conf}/Recordings/{{Sid}}.json": {
            "parameters": _p("AccountSid", "ConferenceSid", "RecordingSid"),
            **{
                method: {
                    "operationId": f"{verb}Recording",
                    "summary": "Conference recordings: not recorded yet, always 404 (20404)",
                    "responses": _errors(401, 404),
                }
                for method, verb in (("get", "fetch"), ("post", "update"), ("delete", "delete"))
            },
        },
        **_call_paths(acc),
    }


@functools.cache
def openapi() -> JSONDict:
    """The whole document (built once; callers must not change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "confstream REST API",
            "version": API_VERSION,
            "summary": "Conferences, participants, calls and their streams (wss://)",
            "description": (
                "SignalWire/Twilio-compatible conference API of confstream (docs/api.md). "
                "Every path also answers without the `.json` suffix. Requests are "
                "`application/x-www-form-urlencoded`; answers are JSON with RFC 2822 dates; "
                "SIDs are UUIDs. Errors: docs/errors.md. A method a path does not list "
                "answers 405 (20004) with `Allow`. This document is served without "
                "authentication at `GET /openapi.json`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [
            {"url": TWILIO_BASE, "description": "Twilio's base path"},
            {"url": SIGNALWIRE_BASE, "description": "SignalWire's base path (the same API)"},
        ],
        "security": [{"basic": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "AccountSid as the user name, AuthToken as the password",
                }
            },
            "schemas": _schemas(),
            "parameters": _parameters(),
            "responses": _responses(),
        },
    }


def render() -> str:
    """The document as docs/openapi.json holds it (indented, sorted keys, final newline)."""
    return json.dumps(openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: the document, without authentication."""
    return JSONResponse(openapi())


def main(argv: list[str]) -> int:
    """Write the document to ``argv[0]`` (or stdout)."""
    if argv:
        Path(argv[0]).write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())
    return 0
