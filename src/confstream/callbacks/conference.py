"""Conference status callbacks: which events a conference asked for, and their parameters.

Pure functions, no I/O: the services decide when an event happens and hand the result to the
:class:`~confstream.callbacks.webhooks.CallbackSender` (signed and delivered like the stream
callbacks, one ordered queue per conference). docs/voice.md, "Conference status callbacks",
has the tables.

* **Events**: ``statusCallbackEvent`` is a space-separated list of Twilio's words; each
  selects events (:data:`EVENTS_OF_WORD`): ``start`` -> ``conference-start``, ``end`` ->
  ``conference-end``, ``join`` -> ``participant-join``, ``leave`` -> ``participant-leave``,
  ``mute`` -> ``participant-mute``/``-unmute``, ``hold`` -> ``participant-hold``/``-unhold``,
  ``speaker`` -> ``participant-speech-start``/``-stop``. ``modify`` and ``announcement`` are
  accepted and select nothing (confstream has no such events yet); unknown words are ignored.
  With a ``statusCallback`` and no words, Twilio's default applies: ``start end``.
* **Parameters** (every event): ``AccountSid``, ``ConferenceSid``, ``FriendlyName``,
  ``StatusCallbackEvent``, ``SequenceNumber`` (per conference, from 1, no gaps: only events
  that are sent are numbered), ``Timestamp`` (RFC 2822, UTC: ``Tue, 07 May 2024 09:30:00
  +0000``). Participant events add ``CallSid``, ``Muted``, ``Hold``, ``Coaching``,
  ``EndConferenceOnExit``, ``StartConferenceOnEnter`` (``true``/``false``) and
  ``ParticipantLabel`` when the participant has a label. ``conference-end`` adds
  ``ReasonConferenceEnded`` and, when a participant ended it, ``CallSidEndingConference``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import format_datetime

CONFERENCE_START = "conference-start"
CONFERENCE_END = "conference-end"
PARTICIPANT_JOIN = "participant-join"
PARTICIPANT_LEAVE = "participant-leave"
PARTICIPANT_MUTE = "participant-mute"
PARTICIPANT_UNMUTE = "participant-unmute"
PARTICIPANT_HOLD = "participant-hold"
PARTICIPANT_UNHOLD = "participant-unhold"
PARTICIPANT_SPEECH_START = "participant-speech-start"
PARTICIPANT_SPEECH_STOP = "participant-speech-stop"

#: ``statusCallbackEvent`` word -> the events it selects.
EVENTS_OF_WORD: dict[str, tuple[str, ...]] = {
    "start": (CONFERENCE_START,),
    "end": (CONFERENCE_END,),
    "join": (PARTICIPANT_JOIN,),
    "leave": (PARTICIPANT_LEAVE,),
    "mute": (PARTICIPANT_MUTE, PARTICIPANT_UNMUTE),
    "hold": (PARTICIPANT_HOLD, PARTICIPANT_UNHOLD),
    "speaker": (PARTICIPANT_SPEECH_START, PARTICIPANT_SPEECH_STOP),
    "modify": (),
    "announcement": (),
}
#: Twilio's default when a statusCallback is given without statusCallbackEvent.
DEFAULT_WORDS = ("start", "end")


def selected_events(words: Iterable[str] | str | None) -> frozenset[str]:
    """The events selected by ``words`` (a sequence or one space-separated string); empty or
    None: :data:`DEFAULT_WORDS`."""
    if isinstance(words, str):
        words = words.split()
    chosen = [w.strip() for w in (words or ()) if w.strip()]
    if not chosen:
        chosen = list(DEFAULT_WORDS)
    return frozenset(e for w in chosen for e in EVENTS_OF_WORD.get(w, ()))


def rfc2822(when: dt.datetime) -> str:
    """``Tue, 07 May 2024 09:30:00 +0000`` (a naive ``when`` is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return format_datetime(when.astimezone(dt.UTC))


def _flag(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class ParticipantState:
    """What a participant event reports about the participant."""

    call_sid: str
    muted: bool = False
    hold: bool = False
    coaching: bool = False
    end_conference_on_exit: bool = False
    start_conference_on_enter: bool = True
    label: str | None = None


def event_params(
    event: str,
    *,
    account_sid: str,
    conference_sid: str,
    friendly_name: str,
    sequence: int,
    when: dt.datetime,
    participant: ParticipantState | None = None,
    reason_ended: str | None = None,
    call_sid_ending: str | None = None,
) -> dict[str, str]:
    """The form parameters of one conference status callback (see the module docstring)."""
    params = {
        "AccountSid": account_sid,
        "ConferenceSid": conference_sid,
        "FriendlyName": friendly_name,
        "StatusCallbackEvent": event,
        "SequenceNumber": str(sequence),
        "Timestamp": rfc2822(when),
    }
    if participant is not None:
        params.update(
            {
                "CallSid": participant.call_sid,
                "Muted": _flag(participant.muted),
                "Hold": _flag(participant.hold),
                "Coaching": _flag(participant.coaching),
                "EndConferenceOnExit": _flag(participant.end_conference_on_exit),
                "StartConferenceOnEnter": _flag(participant.start_conference_on_enter),
            }
        )
        if participant.label is not None:
            params["ParticipantLabel"] = participant.label
    if event == CONFERENCE_END:
        if reason_ended is not None:
            params["ReasonConferenceEnded"] = reason_ended
        if call_sid_ending is not None:
            params["CallSidEndingConference"] = call_sid_ending
    return params
