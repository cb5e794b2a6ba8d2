"""The cXML call script: a sans-I/O state machine that runs documents verb by verb.

A :class:`CallScript` never touches a socket or a clock. The call runner (the code that owns
the call's media and HTTP client) drives it:

1. ``action = script.next_action()`` gives the next thing to do, or None when the script
   waits for an input (see :attr:`CallScript.waiting_for`) or has finished.
2. Actions that simply happen (:class:`Say`, :class:`PlayAudio`, :class:`SendDigits`,
   :class:`Pause`, :class:`StartStream`, :class:`StopStream`, :class:`ReportWarning`) are done
   in order, then ``next_action()`` is called again.
3. Actions that wait are answered by exactly one input: :class:`CollectDigits` by
   :meth:`~CallScript.digits_collected`, :class:`JoinConference` by
   :meth:`~CallScript.conference_left`, :class:`ConnectStream` by
   :meth:`~CallScript.stream_ended`, :class:`FetchDocument` by
   :meth:`~CallScript.document_fetched` or :meth:`~CallScript.fetch_failed`.
4. :class:`Hangup` and :class:`Reject` end the script. :meth:`~CallScript.hung_up` ends it
   from the outside (the caller hung up) at any time.

The flow follows Twilio's documented one (``docs/voice.md``, cXML support):

* ``<Gather>``: keys collected (or ``actionOnEmptyResult="true"``) request ``action`` with
  ``Digits`` and ``FinishedOnKey``, and the answer replaces the rest of the document; no key
  pressed goes on with the next verb.
* ``<Dial><Conference>``: when the call leaves the conference, ``action`` (if any) is
  requested with ``DialCallStatus`` (``answered`` when the call was in the conference,
  ``failed`` when it could not join) and replaces the rest; without ``action`` the next verb
  runs.
* ``<Connect><Stream>``: when the stream ends, ``action`` (if any) is requested, else the
  next verb runs.
* ``<Redirect>``: the fetched document replaces the rest.
* The end of a document hangs up.
* A document that cannot be used (parse error, wrong root, fetch failure) ends the call:
  :class:`Hangup` with ``error`` set.
* At most :data:`MAX_FETCHES_WITHOUT_MEDIA` documents may be fetched in a row without a
  verb the caller hears or answers in between (``Say``, ``Play``, ``Pause``, ``Gather``,
  ``Dial``, ``Connect``); the next fetch ends the call with :class:`CxmlLoopError`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from confstream.voice.cxml import (
    LOOP_FOREVER,
    ConferenceNoun,
    ConnectVerb,
    CxmlError,
    CxmlWarning,
    DialVerb,
    Document,
    GatherVerb,
    HangupVerb,
    Method,
    PauseVerb,
    PlayVerb,
    RedirectVerb,
    RejectReason,
    RejectVerb,
    SayVerb,
    StartVerb,
    StopVerb,
    StreamNoun,
    Verb,
    parse,
)

#: Documents fetched in a row without a verb the caller hears or answers (a redirect loop
#: bound; confstream's choice, Twilio documents none).
MAX_FETCHES_WITHOUT_MEDIA = 10


class CxmlLoopError(CxmlError):
    """More than :data:`MAX_FETCHES_WITHOUT_MEDIA` documents fetched without a verb the
    caller hears or answers in between (12199, *extension*)."""

    code = 12199


class FetchFailed(CxmlError):
    """A document could not be fetched (11200, HTTP retrieval failure)."""

    code = 11200


class ScriptStateError(RuntimeError):
    """An input that the script is not waiting for (a bug in the driver, not the document)."""


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Say:
    """Speak ``text`` ``loop`` times (1..1000)."""

    text: str
    voice: str = "man"
    language: str = "en-US"
    loop: int = 1


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Play the WAV file at ``url`` ``loop`` times (1..1000)."""

    url: str
    loop: int = 1


@dataclass(frozen=True, slots=True)
class SendDigits:
    """Send DTMF ``digits`` to the caller (``w`` = 0.5 s pause)."""

    digits: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Silence for ``seconds``."""

    seconds: int


PromptAction: TypeAlias = Say | PlayAudio | SendDigits | Pause


@dataclass(frozen=True, slots=True)
class CollectDigits:
    """Play ``prompts`` while listening for keys (a key stops the prompts), then wait up to
    ``timeout`` seconds for each next key. Done at a key of ``finish_on_key``, after
    ``num_digits`` keys (None: no limit) or at the timeout. Answer with
    :meth:`CallScript.digits_collected`, passing the keys as pressed (finishing key
    included)."""

    prompts: tuple[PromptAction, ...]
    timeout: int
    finish_on_key: str
    num_digits: int | None


@dataclass(frozen=True, slots=True)
class JoinConference:
    """Put the call in ``conference`` (the noun with its attributes) for at most
    ``time_limit`` seconds; with ``hangup_on_star`` the caller leaves by pressing ``*``.
    Answer with :meth:`CallScript.conference_left` when the call leaves it."""

    conference: ConferenceNoun
    time_limit: int = 14400
    hangup_on_star: bool = False


@dataclass(frozen=True, slots=True)
class StartStream:
    """Start a unidirectional stream of the call (``<Start><Stream>``) and go on."""

    stream: StreamNoun


@dataclass(frozen=True, slots=True)
class StopStream:
    """Stop the call's stream named ``name`` (None: every stream it started)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class ConnectStream:
    """Open a bidirectional stream (``<Connect><Stream>``) and stay on it; answer with
    :meth:`CallScript.stream_ended` when it ends."""

    stream: StreamNoun


FetchPurpose: TypeAlias = Literal["redirect", "gather", "dial", "connect"]


@dataclass(frozen=True, slots=True)
class FetchDocument:
    """Request the next document: ``method`` to ``url`` with ``params`` added to the
    standard call parameters. Answer with :meth:`CallScript.document_fetched` or
    :meth:`CallScript.fetch_failed`."""

    url: str
    method: Method
    purpose: FetchPurpose
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call. ``error`` is set when the call ends because a document could not be
    used (Twilio plays an "application error" message before hanging up)."""

    error: CxmlError | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the call with ``reason``. ``before_answer`` is True when nothing was played
    to the caller yet (the call can still be refused unanswered, SIP 486/603); otherwise
    the call is simply hung up."""

    reason: RejectReason
    before_answer: bool


@dataclass(frozen=True, slots=True)
class ReportWarning:
    """A tolerated problem in the document at ``url``: log it and report it to the
    account's error callback; the script goes on."""

    warning: CxmlWarning
    url: str | None


Action: TypeAlias = (
    Say
    | PlayAudio
    | SendDigits
    | Pause
    | CollectDigits
    | JoinConference
    | StartStream
    | StopStream
    | ConnectStream
    | FetchDocument
    | Hangup
    | Reject
    | ReportWarning
)

WaitingFor: TypeAlias = Literal["digits", "conference", "stream", "document"]
LeaveReason: TypeAlias = Literal["left", "failed"]


def _prompt(verb: SayVerb | PlayVerb | PauseVerb) -> list[PromptAction]:
    if isinstance(verb, SayVerb):
        return [Say(verb.text, verb.voice, verb.language, min(verb.loop, LOOP_FOREVER))]
    if isinstance(verb, PauseVerb):
        return [Pause(verb.length)]
    out: list[PromptAction] = []
    if verb.digits is not None:
        out.append(SendDigits(verb.digits))
    if verb.url is not None:
        out.append(PlayAudio(verb.url, min(verb.loop, LOOP_FOREVER)))
    return out


class CallScript:
    """Runs a call's cXML: the first document, then each one fetched. See the module
    docstring for the protocol and the flow rules."""

    #: Verbs the caller hears or answers: running one resets the redirect-loop count.
    _MEDIA: ClassVar[tuple[type, ...]] = (
        SayVerb,
        PlayVerb,
        PauseVerb,
        GatherVerb,
        DialVerb,
        ConnectVerb,
    )

    def __init__(
        self,
        document: bytes | str | Document,
        url: str | None = None,
        *,
        content_type: str | None = None,
        max_fetches_without_media: int = MAX_FETCHES_WITHOUT_MEDIA,
    ) -> None:
        self._pending: deque[Action] = deque()
        self._verbs: deque[Verb] = deque()
        self._url: str | None = None
        self._waiting: WaitingFor | None = None
        self._current: GatherVerb | DialVerb | ConnectVerb | None = None
        self._finished = False
        self._answered = False
        self._fetches = 0
        self._max_fetches = max_fetches_without_media
        self._load(document, url, content_type)

    # -- state

    @property
    def waiting_for(self) -> WaitingFor | None:
        """The input the script waits for, or None."""
        return self._waiting

    @property
    def finished(self) -> bool:
        """True once a :class:`Hangup` or :class:`Reject` was given, or the call hung up."""
        return self._finished and not self._pending

    @property
    def url(self) -> str | None:
        """The URL of the document being run."""
        return self._url

    # -- output

    def next_action(self) -> Action | None:
        """The next action, or None when waiting for an input or finished."""
        while not self._pending and not self._waiting and not self._finished:
            self._step()
        if self._pending:
            return self._pending.popleft()
        return None

    def _step(self) -> None:
        if not self._verbs:
            self._end(Hangup())
            return
        verb = self._verbs.popleft()
        if isinstance(verb, self._MEDIA):
            self._fetches = 0
        if not isinstance(verb, RedirectVerb | RejectVerb):
            self._answered = True  # only a <Reject> before any other verb refuses unanswered
        if isinstance(verb, SayVerb | PlayVerb | PauseVerb):
            self._pending.extend(_prompt(verb))
        elif isinstance(verb, GatherVerb):
            prompts = [a for p in verb.prompts for a in _prompt(p)]
            self._pending.append(
                CollectDigits(tuple(prompts), verb.timeout, verb.finish_on_key, verb.num_digits)
            )
            self._wait("digits", verb)
        elif isinstance(verb, DialVerb):
            if verb.conference is None:
                self._dial_done(verb, "failed")
            else:
                self._pending.append(
                    JoinConference(verb.conference, verb.time_limit, verb.hangup_on_star)
                )
                self._wait("conference", verb)
        elif isinstance(verb, StartVerb):
            self._pending.extend(StartStream(s) for s in verb.streams)
        elif isinstance(verb, StopVerb):
            self._pending.extend(StopStream(n) for n in verb.names)
        elif isinstance(verb, ConnectVerb):
            self._pending.append(ConnectStream(verb.stream))
            self._wait("stream", verb)
        elif isinstance(verb, RedirectVerb):
            self._fetch(FetchDocument(verb.url, verb.method, "redirect"))
        elif isinstance(verb, HangupVerb):
            self._end(Hangup())
        elif isinstance(verb, RejectVerb):  # pragma: no branch - the Verb union is closed
            self._end(Reject(verb.reason, before_answer=not self._answered))

    def _wait(self, what: WaitingFor, verb: GatherVerb | DialVerb | ConnectVerb) -> None:
        self._waiting = what
        self._current = verb

    def _end(self, action: Hangup | Reject) -> None:
        self._pending.append(action)
        self._verbs.clear()
        self._finished = True
        self._waiting = None

    def _fetch(self, action: FetchDocument) -> None:
        self._fetches += 1
        if self._fetches > self._max_fetches:
            self._end(
                Hangup(
                    CxmlLoopError(
                        f"More than {self._max_fetches} documents fetched without a verb "
                        "the caller hears or answers; the call is ended"
                    )
                )
            )
            return
        self._pending.append(action)
        self._verbs.clear()  # the fetched document replaces the rest of this one
        self._waiting = "document"
        self._current = None

    def _dial_done(self, verb: DialVerb, reason: LeaveReason) -> None:
        if verb.action is None:
            return
        status = "answered" if reason == "left" else "failed"
        params = {"DialCallStatus": status, "DialBridged": str(reason == "left").lower()}
        self._fetch(FetchDocument(verb.action, verb.method, "dial", params))

    # -- inputs

    def _take(self, what: WaitingFor) -> GatherVerb | DialVerb | ConnectVerb | None:
        if self._waiting != what:
            raise ScriptStateError(f"not waiting for {what} (waiting for {self._waiting})")
        if self._pending:
            raise ScriptStateError(f"{what} given before every action was taken")
        verb = self._current
        self._waiting = None
        self._current = None
        return verb

    def digits_collected(self, keys: str) -> None:
        """The keys pressed during :class:`CollectDigits`, finishing key included ("" when
        it timed out). A finishing key is not part of ``Digits``."""
        verb = self._take("digits")
        assert isinstance(verb, GatherVerb)
        finished_on = ""
        if keys and keys[-1] in verb.finish_on_key:
            keys, finished_on = keys[:-1], keys[-1]
        if not keys and not verb.action_on_empty_result:
            return  # no input: the next verb runs
        if verb.action is None:
            return  # an inline document without a URL has nowhere to send them
        params = {"Digits": keys, "FinishedOnKey": finished_on}
        self._fetch(FetchDocument(verb.action, verb.method, "gather", params))

    def conference_left(self, reason: LeaveReason = "left") -> None:
        """The call left the conference of :class:`JoinConference`: ``left`` when it had
        been in it (ended, kicked, ``*`` pressed, time limit), ``failed`` when it could not
        join (full, refused)."""
        verb = self._take("conference")
        assert isinstance(verb, DialVerb)
        self._dial_done(verb, reason)

    def stream_ended(self) -> None:
        """The stream of :class:`ConnectStream` ended (closed by either side or failed)."""
        verb = self._take("stream")
        assert isinstance(verb, ConnectVerb)
        if verb.action is not None:
            self._fetch(FetchDocument(verb.action, verb.method, "connect"))

    def document_fetched(
        self, document: bytes | str, url: str, content_type: str | None = None
    ) -> None:
        """The answer to :class:`FetchDocument` (``url`` after any HTTP redirects): it
        replaces what was left of the previous document. An unusable document ends the
        call (:class:`Hangup` with ``error``)."""
        self._take("document")
        self._load(document, url, content_type)

    def fetch_failed(self, message: str) -> None:
        """:class:`FetchDocument` failed (connection, timeout, HTTP error status): the call
        ends with a :class:`FetchFailed` (11200)."""
        self._take("document")
        self._end(Hangup(FetchFailed(message)))

    def hung_up(self) -> None:
        """The caller hung up: nothing more runs (no action URL is requested)."""
        self._pending.clear()
        self._verbs.clear()
        self._finished = True
        self._waiting = None
        self._current = None

    def _load(self, document: bytes | str | Document, url: str | None, ctype: str | None) -> None:
        try:
            doc = document if isinstance(document, Document) else parse(document, url, ctype)
        except CxmlError as exc:
            self._url = url
            self._end(Hangup(exc))
            return
        self._url = doc.url if isinstance(document, Document) else url
        self._pending.extend(ReportWarning(w, self._url) for w in doc.warnings)
        self._verbs = deque(doc.verbs)


__all__ = [
    "MAX_FETCHES_WITHOUT_MEDIA",
    "Action",
    "CallScript",
    "CollectDigits",
    "ConnectStream",
    "CxmlLoopError",
    "FetchDocument",
    "FetchFailed",
    "Hangup",
    "JoinConference",
    "LeaveReason",
    "Pause",
    "PlayAudio",
    "PromptAction",
    "Reject",
    "ReportWarning",
    "Say",
    "ScriptStateError",
    "SendDigits",
    "StartStream",
    "StopStream",
    "WaitingFor",
]
