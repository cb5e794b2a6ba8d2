"""Validation of ``Create a Conference Stream`` parameters (docs/api.md).

Rules, and the code answered (422 unless noted):

* ``Url`` required (21205). A relative Url is resolved against the account's
  ``stream_base_url``; without one: 21205. The absolute URL must be ``wss://`` with a host, a
  valid port and no whitespace, else **400** with 31922 ("only wss:// is supported") and no
  stream is created. Whether the host's addresses are allowed (the outbound policy) needs DNS:
  that is checked when the stream connects, and reported on the stream (31922,
  ``stream-error``), as are specs that reach the stream manager without this API.
* ``Name`` optional, 1..255 characters once stripped (20001); uniqueness is checked by the
  service (20409). A Name must stay addressable as the last segment of the stream's URL
  (``.../Streams/{Name}.json``, percent-encoded or as SDKs send it), so it may not contain
  ``/``, backslash, ``?``, ``#``, ``%``, control characters or line/paragraph separators, may not
  be ``.`` or ``..`` and may not end in ``.json`` (20001).
* ``Track``: ``inbound_track`` | ``outbound_track`` | ``both_tracks`` (31941), default both.
* ``StatusCallback``: absolute http(s) URL whose host the outbound policy accepts (21609).
* ``StatusCallbackMethod``: GET | POST in any case (21209), default POST.
* ``StreamCodec``: PCMU (default) | PCMA | L16 | L16@16000h | L16@24000h (20001).
* ``StreamRealTime``: boolean (20001), default false.
* ``Parameter{N}.Name``/``.Value``: N = 1..99 (20001); a Value needs a Name; name + value must
  be under 500 characters (20001).
* ``AuthorizationBearerToken``: passed to the stream, never stored.

All problems found are reported together; the top-level code and HTTP status are the first
one's (``errors`` lists every message on 422 answers).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urljoin, urlsplit

from confstream import netpolicy
from confstream.api.common import parse_bool
from confstream.api.errors import ERROR_CODES, ApiError
from confstream.settings import Settings
from confstream.store import Account
from confstream.streams.failures import StreamFailure
from confstream.streams.session import validate_stream_url
from confstream.streams.spec import StreamRequest
from confstream.streams.vocabulary import (
    DEFAULT_CALLBACK_METHOD,
    DEFAULT_CODEC,
    DEFAULT_TRACK,
    CallbackMethod,
    StreamCodec,
    Track,
)

#: The accepted values, in the order error messages list them.
TRACKS = tuple(t.value for t in Track)
CODECS = tuple(c.value for c in StreamCodec)
METHODS = tuple(m.value for m in CallbackMethod)
#: Custom parameters: N runs 1..99; name + value must stay under this many characters.
MAX_PARAMETER_INDEX = 99
MAX_PARAMETER_CHARS = 500
MAX_NAME_CHARS = 255

_PARAMETER_KEY = re.compile(r"^Parameter(\d+)\.(Name|Value)$")
#: Characters a stream Name may not contain (besides control characters and line or
#: paragraph separators): they cannot come back as one path segment.
NAME_FORBIDDEN = "/\\?#%"


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, code: int, message: str) -> None:
        self.items.append((code, message))

    def raise_if_any(self) -> None:
        if self.items:
            code, message = self.items[0]
            status = ERROR_CODES[code].status if code in ERROR_CODES else 422
            raise ApiError(code, message, [m for _, m in self.items], status=status)


def name_problem(name: str) -> str | None:
    """Why ``name`` (already stripped) cannot be a stream Name, or None when it can."""
    if len(name) > MAX_NAME_CHARS:
        return f"Name must be at most {MAX_NAME_CHARS} characters"
    bad = [
        ch for ch in name if ch in NAME_FORBIDDEN or unicodedata.category(ch) in ("Cc", "Zl", "Zp")
    ]
    if bad:
        return (
            f"Name must not contain {bad[0]!r}: it would not be addressable in "
            ".../Streams/{Name}.json (/, \\, ?, #, %, control characters and line breaks "
            "are refused)"
        )
    if name in (".", ".."):
        return f"Name must not be {name!r}"
    if name.endswith(".json"):
        return "Name must not end in .json"
    return None


def resolve_stream_url(raw: str, account: Account) -> str | None:
    """The absolute stream URL, or None when ``raw`` is relative and there is no base."""
    parts = urlsplit(raw)
    if parts.scheme:
        return raw
    if not account.stream_base_url:
        return None
    return urljoin(account.stream_base_url, raw)


async def parse_stream_request(
    params: dict[str, str], account: Account, settings: Settings
) -> StreamRequest:
    problems = _Problems()

    raw_url = params.get("Url", "").strip()
    url = ""
    if not raw_url:
        problems.add(21205, "Url is required")
    else:
        resolved = resolve_stream_url(raw_url, account)
        if resolved is None:
            problems.add(
                21205,
                f"Url {raw_url!r} is relative and the account has no stream base URL",
            )
        else:
            url = resolved
            try:
                validate_stream_url(url)
            except StreamFailure as exc:
                problems.add(31922, exc.message)

    name = params.get("Name")
    if name is not None:
        name = name.strip() or None
        problem = name_problem(name) if name is not None else None
        if problem is not None:
            problems.add(20001, problem)

    track = DEFAULT_TRACK
    raw_track = params.get("Track") or DEFAULT_TRACK.value
    try:
        track = Track(raw_track)
    except ValueError:
        problems.add(31941, f"Track must be one of {', '.join(TRACKS)}, not {raw_track!r}")

    codec = DEFAULT_CODEC
    raw_codec = params.get("StreamCodec") or DEFAULT_CODEC.value
    try:
        codec = StreamCodec(raw_codec)
    except ValueError:
        problems.add(20001, f"StreamCodec must be one of {', '.join(CODECS)}, not {raw_codec!r}")

    realtime = False
    try:
        realtime = bool(parse_bool("StreamRealTime", params.get("StreamRealTime")))
    except ApiError as exc:
        problems.add(exc.code, exc.message)

    method = DEFAULT_CALLBACK_METHOD
    try:
        method = CallbackMethod(
            (params.get("StatusCallbackMethod") or DEFAULT_CALLBACK_METHOD.value).upper()
        )
    except ValueError:
        problems.add(21209, "StatusCallbackMethod must be GET or POST")

    callback = (params.get("StatusCallback") or "").strip() or None
    if callback is not None:
        try:
            await netpolicy.check_url(callback, settings.allowed_networks)
        except netpolicy.PolicyError as exc:
            problems.add(21609, f"StatusCallback is not acceptable: {exc}")
        except (OSError, UnicodeError) as exc:
            problems.add(21609, f"StatusCallback host cannot be resolved: {exc}")

    names: dict[int, str] = {}
    values: dict[int, str] = {}
    for key, value in params.items():
        match = _PARAMETER_KEY.match(key)
        if match is None:
            continue
        index = int(match.group(1))
        if not 1 <= index <= MAX_PARAMETER_INDEX:
            problems.add(20001, f"{key}: N must be between 1 and {MAX_PARAMETER_INDEX}")
            continue
        (names if match.group(2) == "Name" else values)[index] = value
    parameters: dict[str, str] = {}
    for index in sorted(set(names) | set(values)):
        pname = names.get(index, "")
        pvalue = values.get(index, "")
        if not pname:
            problems.add(20001, f"Parameter{index}.Value given without Parameter{index}.Name")
            continue
        if len(pname) + len(pvalue) >= MAX_PARAMETER_CHARS:
            problems.add(
                20001,
                f"Parameter{index}: name and value must be under {MAX_PARAMETER_CHARS} characters",
            )
            continue
        parameters[pname] = pvalue

    problems.raise_if_any()
    return StreamRequest(
        url=url,
        name=name,
        track=track,
        codec=codec,
        realtime=realtime,
        status_callback=callback,
        status_callback_method=method,
        parameters=parameters,
        bearer_token=params.get("AuthorizationBearerToken") or None,
    )


__all__ = [
    "CODECS",
    "METHODS",
    "TRACKS",
    "name_problem",
    "parse_stream_request",
    "resolve_stream_url",
]
