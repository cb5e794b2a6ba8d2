"""Placing calls through the REST API (docs/api.md, "Making calls"): ``POST …/Calls`` and
``POST …/Conferences/{ConferenceSid or FriendlyName}/Participants``.

Parameters (Twilio's; every one is checked before anything is dialled):

* ``To`` (required, 21201): ``sip:user@host[:port][;transport=udp]`` (21211); ``From``
  (required): a ``sip:`` URI or a caller ID (21212).
* Calls only: ``Url`` (absolute http(s), 21205) with ``Method`` (21209), or ``Twiml`` (at most
  4000 characters); exactly one of them (21205 when neither, 20001 when both).
* ``StatusCallback`` (http(s), accepted by the outbound policy, 21609),
  ``StatusCallbackMethod`` (21209), ``StatusCallbackEvent`` (``initiated ringing answered
  completed``, space-separated or repeated; ``completed`` by default; 20001 otherwise).
* ``Timeout`` (seconds of ringing before ``no-answer``, 1-600, default 60), ``TimeLimit``
  (seconds an answered call may last, 1-86400), ``SipAuthUsername``/``SipAuthPassword``
  (answers to the callee's digest challenge), ``EarlyMedia`` (participants; ``false`` by
  default: a 183's media is ignored).
* Participants only: ``Label``, ``Muted``, ``Beep`` (``true false onEnter onExit``),
  ``StartConferenceOnEnter``, ``EndConferenceOnExit``, ``MaxParticipants`` (2-250),
  ``WaitUrl``/``WaitMethod``, ``ConferenceStatusCallback``/``…Method``/``…Event`` (the
  conference's, when this participant creates it). ``Coaching=true`` and ``CallSidToCoach``
  answer 400 (20501).

The answer is the Call (``queued``) or the Participant (``queued``) in Twilio's shape; the
progress is read back later (``GET``) or from the status callbacks. Refusals: 20429 (limits),
21215 (target refused by the outbound policy, or our own SIP listener), 20404/21220 (the
conference by Sid is unknown or over).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from confstream import netpolicy
from confstream.api.access import authenticate, parse_method, services_of
from confstream.api.common import JSONResponse, base_path, form, parse_bool, parse_count
from confstream.api.errors import ApiError, invalid, unsupported
from confstream.api.render import call_json, participant_json
from confstream.callbacks.conference import EVENTS_OF_WORD
from confstream.conference.gateway import JoinOptions
from confstream.dialout import (
    CALL_EVENTS,
    DEFAULT_TIMEOUT,
    MAX_TIME_LIMIT,
    MAX_TIMEOUT,
    Dialout,
    DialRequest,
)
from confstream.settings import Settings

#: The longest ``Twiml`` accepted (Twilio's documented limit).
MAX_TWIML_CHARS = 4000
BEEP_VALUES = ("true", "false", "onEnter", "onExit")


def dialout_of(request: Request) -> Dialout:
    dialout: Dialout | None = getattr(request.app.state, "dialout", None)
    if dialout is None:
        raise ApiError(20004, "This server does not place calls", status=405)
    return dialout


async def _all_values(request: Request, name: str) -> list[str]:
    """Every value of a repeated form field (the Twilio SDKs repeat list parameters)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return [v for k, v in parse_qsl(body, keep_blank_values=True) if k == name]


def _words(values: list[str], allowed: tuple[str, ...] | frozenset[str], name: str) -> list[str]:
    words = [w for v in values for w in v.replace(",", " ").split()]
    bad = [w for w in words if w not in allowed]
    if bad:
        raise invalid(20001, f"{name} must be among {' '.join(sorted(allowed))}, not {bad[0]!r}")
    return words


async def _callback_url(name: str, value: str | None, settings: Settings) -> str | None:
    url = (value or "").strip() or None
    if url is None:
        return None
    try:
        await netpolicy.check_url(url, settings.allowed_networks)
    except netpolicy.PolicyError as exc:
        raise invalid(21609, f"{name} is not acceptable: {exc}") from None
    except (OSError, UnicodeError) as exc:
        raise invalid(21609, f"{name} host cannot be resolved: {exc}") from None
    return url


def _absolute(name: str, value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.split("/")[0]:
        raise invalid(21205, f"{name} must be an absolute http(s) URL, not {value!r}")
    return value


async def parse_dial_request(
    request: Request, settings: Settings, *, participant: bool
) -> DialRequest:
    """The checked parameters of a call to place (module docstring)."""
    params = await form(request)
    to = (params.get("To") or "").strip()
    if not to:
        raise invalid(21201, "To is required")
    from_ = (params.get("From") or "").strip()
    if not from_:
        raise invalid(21212, "From is required")
    url: str | None = None
    twiml: str | None = None
    method = parse_method(params, "Method", "POST")
    if not participant:
        url = (params.get("Url") or "").strip() or None
        twiml = params.get("Twiml") or None
        if url is None and twiml is None:
            raise invalid(21205, "Url or Twiml is required")
        if url is not None and twiml is not None:
            raise invalid(20001, "Url and Twiml cannot both be given")
        if twiml is not None and len(twiml) > MAX_TWIML_CHARS:
            raise invalid(20001, f"Twiml must be at most {MAX_TWIML_CHARS} characters")
        if url is not None:
            url = _absolute("Url", url)
    status_callback = await _callback_url("StatusCallback", params.get("StatusCallback"), settings)
    callback_method = parse_method(params, "StatusCallbackMethod", "POST")
    events = _words(
        await _all_values(request, "StatusCallbackEvent"), CALL_EVENTS, "StatusCallbackEvent"
    )
    timeout = DEFAULT_TIMEOUT
    if params.get("Timeout"):
        timeout = parse_count("Timeout", params["Timeout"].strip(), 1, MAX_TIMEOUT)
    time_limit: int | None = None
    if params.get("TimeLimit"):
        time_limit = parse_count("TimeLimit", params["TimeLimit"].strip(), 1, MAX_TIME_LIMIT)
    early = parse_bool("EarlyMedia", params.get("EarlyMedia") or None)
    options = await _join_options(request, params, settings) if participant else None
    return DialRequest(
        to=to,
        from_=from_,
        url=url,
        method=method,
        twiml=twiml,
        status_callback=status_callback,
        status_callback_method=callback_method,
        status_callback_event=tuple(dict.fromkeys(events)) or ("completed",),
        timeout=timeout,
        time_limit=time_limit,
        sip_auth_username=(params.get("SipAuthUsername") or "").strip() or None,
        sip_auth_password=params.get("SipAuthPassword") or None,
        early_media=bool(early),
        options=options,
    )


async def _join_options(
    request: Request, params: dict[str, str], settings: Settings
) -> JoinOptions:
    if parse_bool("Coaching", params.get("Coaching") or None):
        raise unsupported("Coaching=true", "every participant hears the whole conference")
    if (params.get("CallSidToCoach") or "").strip():
        raise unsupported("CallSidToCoach", "every participant hears the whole conference")
    beep = (params.get("Beep") or "true").strip()
    if beep not in BEEP_VALUES:
        raise invalid(20001, f"Beep must be one of {', '.join(BEEP_VALUES)}, not {beep!r}")
    max_participants = 250
    if params.get("MaxParticipants"):
        max_participants = parse_count("MaxParticipants", params["MaxParticipants"], 2, 250)
    wait_url = (params.get("WaitUrl") or "").strip() or None
    if wait_url is not None:
        wait_url = _absolute("WaitUrl", wait_url)
    conference_callback = await _callback_url(
        "ConferenceStatusCallback", params.get("ConferenceStatusCallback"), settings
    )
    words = _words(
        await _all_values(request, "ConferenceStatusCallbackEvent"),
        frozenset(EVENTS_OF_WORD),
        "ConferenceStatusCallbackEvent",
    )
    label = (params.get("Label") or "").strip() or None
    if label is not None and len(label) > 255:
        raise invalid(20001, "Label must be at most 255 characters")
    return JoinOptions(
        muted=bool(parse_bool("Muted", params.get("Muted") or None)),
        beep=beep,
        start_conference_on_enter=parse_bool(
            "StartConferenceOnEnter", params.get("StartConferenceOnEnter") or None
        )
        is not False,
        end_conference_on_exit=bool(
            parse_bool("EndConferenceOnExit", params.get("EndConferenceOnExit") or None)
        ),
        wait_url=wait_url,
        wait_method=parse_method(params, "WaitMethod", "POST"),
        max_participants=max_participants,
        status_callback=conference_callback,
        status_callback_method=parse_method(params, "ConferenceStatusCallbackMethod", "POST"),
        status_callback_event=tuple(dict.fromkeys(words)),
        label=label,
    )


async def create_call(request: Request) -> Response:
    """``POST …/Calls``."""
    account = await authenticate(request)
    dialout = dialout_of(request)
    dial = await parse_dial_request(request, services_of(request).settings, participant=False)
    call = await dialout.create_call(account, dial)
    return JSONResponse(call_json(base_path(request), call), status_code=201)


async def create_participant(request: Request) -> Response:
    """``POST …/Conferences/{ConferenceSid or FriendlyName}/Participants``."""
    account = await authenticate(request)
    dialout = dialout_of(request)
    dial = await parse_dial_request(request, services_of(request).settings, participant=True)
    row = await dialout.add_participant(account, request.path_params["conference_sid"], dial)
    return JSONResponse(participant_json(base_path(request), row), status_code=201)
