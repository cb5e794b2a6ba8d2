"""JSON shapes of the resources (docs/api.md), with Twilio's field values.

* Conference ``reason_conference_ended``: null while in progress, then Twilio's value
  (``conference-ended-via-api``, ``last-participant-left``...) with the CallSid that ended it in
  ``call_sid_ending_conference`` (null when the API ended it); a conference ended by a restart
  or a shutdown shows the text recorded then, and no CallSid.
* Conference ``subresource_uris``: ``participants``, ``recordings`` (answers 404 until
  confstream records conferences) and the ``streams`` extension.
* Participant ``status``: Twilio's ``connected`` (stored ``in-progress``) or ``complete``;
  ``queue_time`` is null (Twilio fills it only for participants created through its API).
  A participant's ``call_sid`` is the SID of its Call (``…/Calls/{call_sid}.json``).
* Call: Twilio's shape. ``from``/``to`` are the SIP URIs of the call and ``from_formatted``/
  ``to_formatted`` the same text (there are no phone numbers to format); ``duration`` is a
  string of whole seconds once the call has ended after being answered, else null; what
  confstream has no notion of (``price``, ``answered_by``, ``phone_number_sid``,
  ``forwarded_from``, ``group_sid``, ``stir_verstat``, ``trunk_sid``) is null, ``queue_time``
  ``"0"``.
  ``subresource_uris`` lists only what exists here (``streams``).
* Stream: a conference stream's ``call_sid`` is its ConferenceSid (as SignalWire shows it), a
  call stream's is its CallSid with ``conference_sid`` null and its URI under the call.
"""

from __future__ import annotations

from typing import Any

from confstream.api.common import API_VERSION, rfc2822
from confstream.store import Account, Call, Conference, Participant, Stream
from confstream.store.models import PARTICIPANT_API_STATUS, split_end_reason


def _conference_uri(base: str, account_sid: str, conference_sid: str) -> str:
    """The conference's URI without ``.json``; participants and streams live below it."""
    return f"{base}/Accounts/{account_sid}/Conferences/{conference_sid}"


def _call_uri(base: str, account_sid: str, call_sid: str) -> str:
    """The call's URI without ``.json``; its streams live below it."""
    return f"{base}/Accounts/{account_sid}/Calls/{call_sid}"


def account_json(base: str, account: Account) -> dict[str, Any]:
    """Twilio's Account shape (docs/api.md, Account); the SDKs read every one of these keys.
    ``auth_token`` is shown only to the account itself (the only one that can fetch it);
    ``subresource_uris`` lists only what exists here (conferences). ``stream_base_url`` and
    the voice application fields (``voice_url``, ``voice_method``, ``voice_fallback_url``,
    ``voice_fallback_method``, ``status_callback``, ``status_callback_method``; docs/voice.md)
    are extensions."""
    uri = f"{base}/Accounts/{account.sid}"
    return {
        "sid": account.sid,
        "auth_token": account.auth_token,
        "friendly_name": account.friendly_name,
        "status": account.status,
        "type": "Full",
        "owner_account_sid": account.sid,
        "stream_base_url": account.stream_base_url,
        "voice_url": account.voice_url,
        "voice_method": account.voice_method or "POST",
        "voice_fallback_url": account.voice_fallback_url,
        "voice_fallback_method": account.voice_fallback_method or "POST",
        "status_callback": account.status_callback,
        "status_callback_method": account.status_callback_method or "POST",
        "date_created": rfc2822(account.date_created),
        "date_updated": rfc2822(account.date_updated),
        "uri": f"{uri}.json",
        "subresource_uris": {"conferences": f"{uri}/Conferences.json"},
    }


def conference_json(base: str, conference: Conference) -> dict[str, Any]:
    uri = _conference_uri(base, conference.account_sid, conference.sid)
    reason, ending_call_sid = split_end_reason(conference.reason_ended)
    return {
        "sid": conference.sid,
        "account_sid": conference.account_sid,
        "friendly_name": conference.friendly_name,
        "status": conference.status,
        "date_created": rfc2822(conference.date_created),
        "date_updated": rfc2822(conference.date_updated),
        "api_version": API_VERSION,
        "region": conference.region,
        "reason_conference_ended": reason,
        "call_sid_ending_conference": ending_call_sid,
        "uri": f"{uri}.json",
        "subresource_uris": {
            "participants": f"{uri}/Participants.json",
            "recordings": f"{uri}/Recordings.json",
            "streams": f"{uri}/Streams.json",
        },
    }


def participant_json(base: str, participant: Participant) -> dict[str, Any]:
    conference = _conference_uri(base, participant.account_sid, participant.conference_sid)
    uri = f"{conference}/Participants/{participant.call_sid}.json"
    return {
        "account_sid": participant.account_sid,
        "call_sid": participant.call_sid,
        "conference_sid": participant.conference_sid,
        "label": participant.label,
        "date_created": rfc2822(participant.date_created),
        "date_updated": rfc2822(participant.date_updated),
        "status": PARTICIPANT_API_STATUS.get(participant.status, participant.status),
        "queue_time": None,
        "muted": participant.muted,
        "hold": participant.hold,
        "coaching": participant.coaching,
        "call_sid_to_coach": participant.call_sid_to_coach,
        "start_conference_on_enter": participant.start_conference_on_enter,
        "end_conference_on_exit": participant.end_conference_on_exit,
        "uri": uri,
    }


def call_json(base: str, call: Call) -> dict[str, Any]:
    uri = _call_uri(base, call.account_sid, call.sid)
    return {
        "sid": call.sid,
        "date_created": rfc2822(call.date_created),
        "date_updated": rfc2822(call.date_updated),
        "parent_call_sid": call.parent_call_sid,
        "account_sid": call.account_sid,
        "to": call.to_uri,
        "to_formatted": call.to_uri,
        "from": call.from_uri,
        "from_formatted": call.from_uri,
        "phone_number_sid": None,
        "status": call.status,
        "start_time": rfc2822(call.start_time),
        "end_time": rfc2822(call.end_time),
        "duration": None if call.duration is None else str(call.duration),
        "price": None,
        "price_unit": "USD",
        "direction": call.direction,
        "answered_by": None,
        "api_version": API_VERSION,
        "forwarded_from": None,
        "group_sid": None,
        "caller_name": call.caller_name,
        "queue_time": "0",
        "stir_verstat": None,
        "trunk_sid": None,
        # extension: the final SIP status of an outbound call that was not answered
        "sip_response_code": call.sip_response_code,
        "uri": f"{uri}.json",
        "subresource_uris": {"streams": f"{uri}/Streams.json"},
    }


def stream_json(base: str, stream: Stream) -> dict[str, Any]:
    if stream.call_sid is not None:
        owner = _call_uri(base, stream.account_sid, stream.call_sid)
    else:
        assert stream.conference_sid is not None
        owner = _conference_uri(base, stream.account_sid, stream.conference_sid)
    uri = f"{owner}/Streams/{stream.sid}.json"
    return {
        "account_sid": stream.account_sid,
        "conference_sid": stream.conference_sid,
        "call_sid": stream.call_sid or stream.conference_sid,
        "sid": stream.sid,
        "name": stream.name,
        "status": stream.status,
        "date_created": rfc2822(stream.date_created),
        "date_updated": rfc2822(stream.date_updated),
        "uri": uri,
        # extensions
        "url": stream.url,
        "track": stream.track,
        "codec": stream.codec,
        "realtime": stream.realtime,
        "error_code": stream.error_code,
        "error_message": stream.error_message,
    }
