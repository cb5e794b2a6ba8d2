"""cXML (TwiML) documents: bytes in, typed verbs out. Sans-I/O, no network, no clock.

:func:`parse` turns one document into a :class:`Document`: a tuple of frozen verb dataclasses
(attribute values already checked, defaulted and resolved) and the warnings met on the way.
The rules, defaults and limits are those of ``docs/voice.md`` (cXML support); in short:

* **Refused documents** raise a :class:`CxmlError` carrying a Twilio error code: not
  well-formed XML, a ``DOCTYPE``/entity declaration, more than :data:`MAX_DEPTH` levels or
  :data:`MAX_ELEMENTS` elements (12100, Document parse failure); a root other than
  ``<Response>`` (12102); more than :data:`MAX_DOCUMENT_BYTES` bytes (11750); a Content-Type
  that is not XML (12300).
* **Tolerated problems** become a :class:`CxmlWarning` (12200, Schema validation warning) and
  the document still runs: an unknown or wrongly cased verb or noun is skipped, an unknown
  attribute is ignored, an invalid attribute value falls back to its default, a verb that
  cannot run without a missing value (``<Play>`` with no URL, ``<Redirect>`` to a non-HTTP
  URL...) is skipped. Verbs and attributes that are valid TwiML but that confstream does not
  implement (``<Record>``, ``<Dial><Number>``, ``record=``...) also warn, saying so.

The parser is pyexpat driven directly, so no tree is ever built beyond the limits: a DTD,
an entity declaration or an external entity stops the parse at once (no "billion laughs",
no external fetch), and nesting depth and element count are checked as each element opens.
No extra dependency is needed for that (``defusedxml`` does the same on top of pyexpat).
"""

from __future__ import annotations

import re
import xml.parsers.expat as expat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias
from urllib.parse import urljoin, urlsplit

from confstream.errors import ConfstreamError

#: Largest document accepted, in bytes (Twilio's limit on a TwiML answer, error 11750).
MAX_DOCUMENT_BYTES = 64 * 1024
#: Deepest element nesting accepted; ``<Response>`` is depth 1. Real documents stay below 6
#: (``Response/Connect/Stream/Parameter`` is 4, SSML inside ``<Say>`` a few more).
MAX_DEPTH = 16
#: Most elements accepted in one document (about 30 bytes each fill 64 KiB).
MAX_ELEMENTS = 2000
#: ``<Say>`` text beyond this many characters is cut, with a warning (the documented limit).
MAX_SAY_CHARS = 4096
#: ``loop="0"`` on ``<Play>``/``<Say>`` means "until hang-up or 1000 iterations" (Twilio).
LOOP_FOREVER = 1000
#: ``<Pause length>`` above this many seconds is cut to it, with a warning (confstream bound).
MAX_PAUSE_SECONDS = 3600
#: ``participantLabel`` longer than this is refused (warning, no label), as Twilio documents.
MAX_LABEL_CHARS = 128

Method: TypeAlias = Literal["GET", "POST"]
Beep: TypeAlias = Literal["true", "false", "onEnter", "onExit"]
Track: TypeAlias = Literal["inbound_track", "outbound_track", "both_tracks"]
RejectReason: TypeAlias = Literal["rejected", "busy"]

#: ``statusCallbackEvent`` values of ``<Conference>`` (space separated in the attribute).
CONFERENCE_EVENTS = frozenset(
    {"start", "end", "join", "leave", "mute", "hold", "modify", "speaker", "announcement"}
)
_XML_CONTENT_TYPES = frozenset({"text/xml", "application/xml", "text/html"})
_PLAY_DIGITS = re.compile(r"[0-9A-Da-d#*wW]+")
_DTMF_KEYS = frozenset("0123456789#*")


# ----------------------------------------------------------------------------- errors


class CxmlError(ConfstreamError):
    """A document that cannot run at all (12100, Document parse failure, unless a subclass
    says otherwise). ``line`` is the 1-based line of the problem when known."""

    code: ClassVar[int] = 12100

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class CxmlRootError(CxmlError):
    """The root element is not ``<Response>`` (12102)."""

    code = 12102


class CxmlTooLarge(CxmlError):
    """The document is larger than :data:`MAX_DOCUMENT_BYTES` (11750)."""

    code = 11750


class CxmlContentTypeError(CxmlError):
    """The answer's Content-Type is not an XML type (12300, Invalid Content-Type)."""

    code = 12300


@dataclass(frozen=True, slots=True)
class CxmlWarning:
    """A tolerated problem: the document runs without the offending part.

    ``code`` is 12200 (Schema validation warning); ``unsupported`` is True when the part is
    valid TwiML that confstream does not implement (rather than invalid TwiML)."""

    message: str
    line: int | None = None
    code: int = 12200
    unsupported: bool = False


# ----------------------------------------------------------------------------- verbs


@dataclass(frozen=True, slots=True)
class SayVerb:
    """``<Say>``: text to speak ``loop`` times (1..:data:`LOOP_FOREVER`; ``loop="0"`` means
    :data:`LOOP_FOREVER`). ``voice`` defaults to ``man``, ``language`` to ``en-US``."""

    text: str
    voice: str = "man"
    language: str = "en-US"
    loop: int = 1


@dataclass(frozen=True, slots=True)
class PlayVerb:
    """``<Play>``: a WAV URL played ``loop`` times, and/or DTMF ``digits`` (``w`` = 0.5 s
    pause) sent first. At least one of ``url`` and ``digits`` is set."""

    url: str | None
    loop: int = 1
    digits: str | None = None


@dataclass(frozen=True, slots=True)
class PauseVerb:
    """``<Pause>``: ``length`` seconds of silence (default 1, at most
    :data:`MAX_PAUSE_SECONDS`)."""

    length: int = 1


Prompt: TypeAlias = SayVerb | PlayVerb | PauseVerb


@dataclass(frozen=True, slots=True)
class GatherVerb:
    """``<Gather input="dtmf">``: play ``prompts`` and collect keys.

    Ends after ``timeout`` seconds without a key (default 5), when a key of ``finish_on_key``
    is pressed (default ``#``; empty = none), or after ``num_digits`` keys (default
    unlimited). ``action`` defaults to the document's own URL (None for a document without
    one); ``method`` to POST."""

    action: str | None
    method: Method = "POST"
    timeout: int = 5
    finish_on_key: str = "#"
    num_digits: int | None = None
    action_on_empty_result: bool = False
    prompts: tuple[Prompt, ...] = ()


@dataclass(frozen=True, slots=True)
class ConferenceNoun:
    """``<Conference>`` inside ``<Dial>``, with Twilio's defaults.

    ``wait_url`` None means silence while waiting: confstream has no default hold-music
    playlist, so an absent ``waitUrl`` and ``waitUrl=""`` both mean none."""

    name: str
    muted: bool = False
    beep: Beep = "true"
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    wait_url: str | None = None
    wait_method: Method = "POST"
    max_participants: int = 250
    status_callback: str | None = None
    status_callback_event: frozenset[str] = frozenset()
    status_callback_method: Method = "POST"
    participant_label: str | None = None


@dataclass(frozen=True, slots=True)
class DialVerb:
    """``<Dial>``. ``conference`` is None when the dial target is one confstream does not
    support (a number, ``<Sip>``, ``<Client>``...): the dial then fails at once
    (``DialCallStatus=failed``). ``action`` None: continue with the next verb."""

    conference: ConferenceNoun | None
    action: str | None = None
    method: Method = "POST"
    time_limit: int = 14400
    hangup_on_star: bool = False


@dataclass(frozen=True, slots=True)
class StreamNoun:
    """``<Stream>`` of ``<Start>`` or ``<Connect>``: ``url`` (resolved against the document
    URL; the stream itself refuses anything but ``wss://``), ``name``, ``track`` (default
    ``inbound_track``), ``status_callback``/``status_callback_method`` and the
    ``<Parameter>`` name/value pairs in document order."""

    url: str
    name: str | None = None
    track: Track = "inbound_track"
    status_callback: str | None = None
    status_callback_method: Method = "POST"
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StartVerb:
    """``<Start>``: start each unidirectional stream, then go on at once."""

    streams: tuple[StreamNoun, ...]


@dataclass(frozen=True, slots=True)
class StopVerb:
    """``<Stop>``: stop the streams named (a None name stops every stream the call started
    with ``<Start>``)."""

    names: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class ConnectVerb:
    """``<Connect><Stream>``: a bidirectional stream; the script waits until it ends, then
    requests ``action`` (if any) or goes on."""

    stream: StreamNoun
    action: str | None = None
    method: Method = "POST"


@dataclass(frozen=True, slots=True)
class RedirectVerb:
    """``<Redirect>``: fetch ``url`` (default: the document's own URL) and run it instead of
    the rest of this document."""

    url: str
    method: Method = "POST"


@dataclass(frozen=True, slots=True)
class HangupVerb:
    """``<Hangup>``: end the call."""


@dataclass(frozen=True, slots=True)
class RejectVerb:
    """``<Reject>``: refuse the call with ``reason`` (``rejected`` or ``busy``)."""

    reason: RejectReason = "rejected"


Verb: TypeAlias = (
    SayVerb
    | PlayVerb
    | PauseVerb
    | GatherVerb
    | DialVerb
    | StartVerb
    | StopVerb
    | ConnectVerb
    | RedirectVerb
    | HangupVerb
    | RejectVerb
)


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed document: its verbs in order, the warnings met, and its URL (None for a
    document given inline, whose relative URLs cannot be resolved)."""

    verbs: tuple[Verb, ...]
    warnings: tuple[CxmlWarning, ...] = ()
    url: str | None = None


# ----------------------------------------------------------------------------- XML reading


@dataclass(slots=True)
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # character data, direct children only
    # character data anywhere below, in order (for <Say> with SSML inside)
    all_text: list[str] = field(default_factory=list)


class _Refused(Exception):
    pass


def _read_xml(data: bytes, encoding: str | None) -> _Node:
    parser = expat.ParserCreate(encoding)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[_Node] = []
    root: list[_Node] = []
    count = 0

    def refuse(what: str) -> Callable[..., None]:
        def handler(*_: object) -> None:
            raise _Refused(f"{what} is not allowed in cXML")

        return handler

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise _Refused(f"more than {MAX_ELEMENTS} elements")
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_DEPTH} levels")
        node = _Node(tag, attrs, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def chars(data: str) -> None:
        if stack:
            stack[-1].text.append(data)
            for node in stack:
                node.all_text.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = refuse("A DOCTYPE")
    parser.EntityDeclHandler = refuse("An entity declaration")
    parser.UnparsedEntityDeclHandler = refuse("An entity declaration")
    parser.NotationDeclHandler = refuse("A notation declaration")
    parser.ExternalEntityRefHandler = refuse("An external entity")  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise CxmlError(f"Document parse failure: {exc}", parser.CurrentLineNumber) from None
    except expat.ExpatError as exc:
        raise CxmlError(f"Document parse failure: {exc}", exc.lineno) from None
    except ValueError as exc:  # bad encodings surface as UnicodeError from pyexpat
        raise CxmlError(f"Document parse failure: {exc}") from None
    if not root:  # pragma: no cover - expat refuses a document without an element
        raise CxmlError("Document parse failure: no root element")
    return root[0]


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Turns the element tree into verbs, collecting warnings. One per document."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.warnings: list[CxmlWarning] = []

    # -- reporting

    def warn(self, node: _Node, message: str, *, unsupported: bool = False) -> None:
        self.warnings.append(CxmlWarning(message, node.line, unsupported=unsupported))

    def check_attrs(
        self, node: _Node, known: Iterable[str], unsupported: Iterable[str] = ()
    ) -> None:
        known_set, unsupported_set = set(known), set(unsupported)
        for name in node.attrs:
            if name in unsupported_set:
                self.warn(
                    node,
                    f"<{node.tag}> attribute {name!r} is not supported by confstream; ignored",
                    unsupported=True,
                )
            elif name not in known_set:
                self.warn(node, f"Unknown attribute {name!r} on <{node.tag}>; ignored")

    def no_children(self, node: _Node) -> None:
        for child in node.children:
            self.warn(child, f"<{child.tag}> cannot be nested in <{node.tag}>; skipped")

    # -- attribute values

    def _bad(self, node: _Node, name: str, value: str, allowed: str) -> None:
        self.warn(node, f"Invalid {name}={value!r} on <{node.tag}> ({allowed}); default used")

    def boolean(self, node: _Node, name: str, default: bool) -> bool:
        value = node.attrs.get(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        self._bad(node, name, value, "true or false")
        return default

    def integer(
        self, node: _Node, name: str, default: int, low: int, high: int | None = None
    ) -> int:
        value = node.attrs.get(name)
        if value is None:
            return default
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < low:
            self._bad(node, name, value, f"an integer >= {low}")
            return default
        number = int(text)
        if high is not None and number > high:
            self.warn(node, f"{name}={number} on <{node.tag}> is above {high}; {high} used")
            return high
        return number

    def method(self, node: _Node, name: str) -> Method:
        value = node.attrs.get(name)
        if value is None:
            return "POST"
        upper = value.strip().upper()
        if upper == "GET":
            return "GET"
        if upper != "POST":
            self._bad(node, name, value, "GET or POST")
        return "POST"

    def resolve(self, node: _Node, raw: str, what: str, schemes: frozenset[str]) -> str | None:
        """``raw`` resolved against the document URL; None (with a warning) when it cannot
        be, or when the result's scheme is not one of ``schemes``."""
        text = raw.strip()
        try:
            resolved = urljoin(self.url, text) if self.url is not None else text
            parts = urlsplit(resolved)
        except ValueError:
            self.warn(node, f"{what} {raw!r} on <{node.tag}> is not a valid URL; ignored")
            return None
        if parts.scheme.lower() not in schemes or not parts.netloc:
            allowed = " or ".join(sorted(schemes))
            self.warn(
                node,
                f"{what} {raw!r} on <{node.tag}> is not an absolute {allowed} URL "
                "(relative URLs need a document URL); ignored",
            )
            return None
        return resolved

    def http_url(self, node: _Node, name: str) -> str | None:
        value = node.attrs.get(name)
        if value is None:
            return None
        return self.resolve(node, value, name, frozenset({"http", "https"}))

    # -- verbs

    def response(self, root: _Node) -> tuple[Verb, ...]:
        if root.tag != "Response":
            raise CxmlRootError(f"The root element must be Response, not <{root.tag}>", root.line)
        self.check_attrs(root, ())
        verbs: list[Verb] = []
        for node in root.children:
            verb = self.verb(node)
            if verb is not None:
                verbs.append(verb)
        return tuple(verbs)

    def verb(self, node: _Node) -> Verb | None:
        reader = _VERBS.get(node.tag)
        if reader is not None:
            return reader(self, node)
        if node.tag in _UNSUPPORTED_VERBS:
            self.warn(
                node, f"<{node.tag}> is not supported by confstream; skipped", unsupported=True
            )
        else:
            self.warn(node, f"Unknown verb <{node.tag}> (verbs are case-sensitive); skipped")
        return None

    def say(self, node: _Node) -> SayVerb | None:
        self.check_attrs(node, ("voice", "language", "loop"))
        for child in node.children:
            if child.tag not in _SSML:
                self.warn(child, f"<{child.tag}> is not SSML; its text is spoken as is")
        text = " ".join("".join(node.all_text).split())
        if not text:
            self.warn(node, "<Say> without text; skipped")
            return None
        if len(text) > MAX_SAY_CHARS:
            self.warn(node, f"<Say> text longer than {MAX_SAY_CHARS} characters; cut")
            text = text[:MAX_SAY_CHARS]
        voice = node.attrs.get("voice", "").strip() or "man"
        language = node.attrs.get("language", "").strip() or "en-US"
        loop = self.integer(node, "loop", 1, 0) or LOOP_FOREVER
        return SayVerb(text, voice, language, min(loop, LOOP_FOREVER))

    def play(self, node: _Node) -> PlayVerb | None:
        self.check_attrs(node, ("loop", "digits"))
        self.no_children(node)
        loop = self.integer(node, "loop", 1, 0) or LOOP_FOREVER
        digits = node.attrs.get("digits")
        if digits is not None and not _PLAY_DIGITS.fullmatch(digits.strip()):
            self._bad(node, "digits", digits, "0-9, A-D, #, * and w")
            digits = None
        elif digits is not None:
            digits = digits.strip()
        raw = "".join(node.text).strip()
        url = self.resolve(node, raw, "URL", frozenset({"http", "https"})) if raw else None
        if url is None and digits is None:
            if not raw:
                self.warn(node, "<Play> without a URL or digits; skipped")
            return None
        return PlayVerb(url, min(loop, LOOP_FOREVER), digits)

    def pause(self, node: _Node) -> PauseVerb:
        self.check_attrs(node, ("length",))
        self.no_children(node)
        return PauseVerb(self.integer(node, "length", 1, 1, MAX_PAUSE_SECONDS))

    def gather(self, node: _Node) -> GatherVerb:
        self.check_attrs(
            node,
            (
                "action",
                "method",
                "timeout",
                "finishOnKey",
                "numDigits",
                "input",
                "actionOnEmptyResult",
            ),
            _GATHER_SPEECH,
        )
        inputs = node.attrs.get("input", "dtmf").split()
        if "dtmf" not in inputs or any(i not in ("dtmf", "speech") for i in inputs):
            self.warn(
                node,
                f"input={node.attrs.get('input')!r} on <Gather>: confstream "
                'collects DTMF only; input="dtmf" used',
                unsupported=True,
            )
        elif "speech" in inputs:
            self.warn(
                node,
                "<Gather> speech input is not supported by confstream; DTMF only",
                unsupported=True,
            )
        action = self.http_url(node, "action") if "action" in node.attrs else self.url
        finish = node.attrs.get("finishOnKey", "#")
        if any(key not in _DTMF_KEYS for key in finish):
            self._bad(node, "finishOnKey", finish, "0-9, # or *, or empty")
            finish = "#"
        prompts: list[Prompt] = []
        for child in node.children:
            if child.tag in ("Say", "Play", "Pause"):
                prompt = self.verb(child)
                if isinstance(prompt, SayVerb | PlayVerb | PauseVerb):
                    prompts.append(prompt)
            else:
                self.warn(child, f"<{child.tag}> cannot be nested in <Gather>; skipped")
        num_digits: int | None = None
        if "numDigits" in node.attrs:
            num_digits = self.integer(node, "numDigits", 0, 1) or None
        return GatherVerb(
            action=action,
            method=self.method(node, "method"),
            timeout=self.integer(node, "timeout", 5, 1),
            finish_on_key=finish,
            num_digits=num_digits,
            action_on_empty_result=self.boolean(node, "actionOnEmptyResult", False),
            prompts=tuple(prompts),
        )

    def dial(self, node: _Node) -> DialVerb:
        self.check_attrs(
            node, ("action", "method", "timeLimit", "hangupOnStar", "timeout"), _DIAL_UNSUPPORTED
        )
        conference: ConferenceNoun | None = None
        number = "".join(node.text).strip()
        target_seen = bool(number)
        for child in node.children:
            if child.tag == "Conference":
                if conference is not None or target_seen:
                    self.warn(child, "Only one <Conference> per <Dial>; skipped")
                    continue
                conference = self.conference(child)
                target_seen = True
            elif child.tag in _DIAL_NOUNS:
                self.warn(
                    child, f"<Dial><{child.tag}> is not supported by confstream", unsupported=True
                )
                target_seen = True
            else:
                self.warn(child, f"Unknown noun <{child.tag}> in <Dial>; skipped")
        if number:
            self.warn(node, "<Dial> to a number is not supported by confstream", unsupported=True)
        elif not node.children:
            self.warn(node, "<Dial> without a <Conference>; the dial fails")
        return DialVerb(
            conference=conference,
            action=self.http_url(node, "action"),
            method=self.method(node, "method"),
            time_limit=self.integer(node, "timeLimit", 14400, 1, 14400),
            hangup_on_star=self.boolean(node, "hangupOnStar", False),
        )

    def conference(self, node: _Node) -> ConferenceNoun | None:
        self.check_attrs(node, _CONFERENCE_ATTRS, _CONFERENCE_UNSUPPORTED)
        self.no_children(node)
        name = " ".join("".join(node.text).split())
        if not name:
            self.warn(node, "<Conference> without a name; the dial fails")
            return None
        beep_raw = node.attrs.get("beep", "true").strip()
        beep: Beep = "true"
        if beep_raw.lower() in ("true", "false"):
            beep = "true" if beep_raw.lower() == "true" else "false"
        elif beep_raw in ("onEnter", "onExit"):
            beep = "onEnter" if beep_raw == "onEnter" else "onExit"
        else:
            self._bad(node, "beep", beep_raw, "true, false, onEnter or onExit")
        wait_url = None
        if node.attrs.get("waitUrl", "").strip():
            wait_url = self.http_url(node, "waitUrl")
        label = node.attrs.get("participantLabel")
        if label is not None and not (0 < len(label) <= MAX_LABEL_CHARS):
            self.warn(
                node, f"participantLabel must be 1..{MAX_LABEL_CHARS} characters; no label used"
            )
            label = None
        return ConferenceNoun(
            name=name,
            muted=self.boolean(node, "muted", False),
            beep=beep,
            start_conference_on_enter=self.boolean(node, "startConferenceOnEnter", True),
            end_conference_on_exit=self.boolean(node, "endConferenceOnExit", False),
            wait_url=wait_url,
            wait_method=self.method(node, "waitMethod"),
            max_participants=self.integer(node, "maxParticipants", 250, 1, 250),
            status_callback=self.http_url(node, "statusCallback"),
            status_callback_event=self.events(node),
            status_callback_method=self.method(node, "statusCallbackMethod"),
            participant_label=label,
        )

    def events(self, node: _Node) -> frozenset[str]:
        raw = node.attrs.get("statusCallbackEvent")
        if raw is None:
            return frozenset()
        # Space separated per Twilio; the twilio SDK renders a Python list as "['a', 'b']",
        # so brackets, quotes and commas are read as separators too.
        tokens = re.split(r"[\s,\[\]'\"]+", raw)
        events = set()
        for token in filter(None, tokens):
            if token in CONFERENCE_EVENTS:
                events.add(token)
            else:
                self.warn(node, f"Unknown statusCallbackEvent {token!r} on <Conference>; ignored")
        return frozenset(events)

    def stream(self, node: _Node) -> StreamNoun | None:
        self.check_attrs(node, _STREAM_ATTRS, ("connectorName",))
        raw = node.attrs.get("url")
        if raw is None or not raw.strip():
            self.warn(node, "<Stream> without a url; skipped")
            return None
        url = self.resolve(node, raw, "url", frozenset({"wss", "ws", "http", "https"}))
        if url is None:
            return None
        track_raw = node.attrs.get("track", "inbound_track").strip()
        track: Track = "inbound_track"
        if track_raw == "outbound_track":
            track = "outbound_track"
        elif track_raw == "both_tracks":
            track = "both_tracks"
        elif track_raw != "inbound_track":
            self._bad(node, "track", track_raw, "inbound_track, outbound_track or both_tracks")
        parameters: list[tuple[str, str]] = []
        for child in node.children:
            if child.tag != "Parameter":
                self.warn(child, f"<{child.tag}> cannot be nested in <Stream>; skipped")
                continue
            self.check_attrs(child, ("name", "value"))
            self.no_children(child)
            name = child.attrs.get("name", "")
            if not name:
                self.warn(child, "<Parameter> without a name; skipped")
                continue
            parameters.append((name, child.attrs.get("value", "")))
        name_attr = node.attrs.get("name")
        return StreamNoun(
            url=url,
            name=name_attr if name_attr else None,
            track=track,
            status_callback=self.http_url(node, "statusCallback"),
            status_callback_method=self.method(node, "statusCallbackMethod"),
            parameters=tuple(parameters),
        )

    def start(self, node: _Node) -> StartVerb | None:
        self.check_attrs(node, (), ("action", "method"))
        streams = []
        for child in node.children:
            if child.tag == "Stream":
                stream = self.stream(child)
                if stream is not None:
                    streams.append(stream)
            elif child.tag in ("Siprec", "Transcription", "Recording"):
                self.warn(
                    child,
                    f"<Start><{child.tag}> is not supported by confstream; skipped",
                    unsupported=True,
                )
            else:
                self.warn(child, f"<{child.tag}> cannot be nested in <Start>; skipped")
        return StartVerb(tuple(streams)) if streams else None

    def stop(self, node: _Node) -> StopVerb | None:
        self.check_attrs(node, ())
        names: list[str | None] = []
        for child in node.children:
            if child.tag == "Stream":
                self.check_attrs(child, _STREAM_ATTRS, ("connectorName",))
                names.append(child.attrs.get("name") or None)
            elif child.tag in ("Siprec", "Transcription", "Recording"):
                self.warn(
                    child,
                    f"<Stop><{child.tag}> is not supported by confstream; skipped",
                    unsupported=True,
                )
            else:
                self.warn(child, f"<{child.tag}> cannot be nested in <Stop>; skipped")
        return StopVerb(tuple(names)) if names else None

    def connect(self, node: _Node) -> ConnectVerb | None:
        self.check_attrs(node, ("action", "method"))
        stream: StreamNoun | None = None
        for child in node.children:
            if child.tag == "Stream" and stream is None:
                stream = self.stream(child)
                if stream is not None and stream.track != "inbound_track":
                    self.warn(
                        child, "<Connect><Stream> carries the inbound track only; track ignored"
                    )
                    stream = StreamNoun(
                        stream.url,
                        stream.name,
                        "inbound_track",
                        stream.status_callback,
                        stream.status_callback_method,
                        stream.parameters,
                    )
            elif child.tag == "Stream":
                self.warn(child, "Only one <Stream> per <Connect>; skipped")
            elif child.tag in _CONNECT_NOUNS:
                self.warn(
                    child,
                    f"<Connect><{child.tag}> is not supported by confstream; skipped",
                    unsupported=True,
                )
            else:
                self.warn(child, f"<{child.tag}> cannot be nested in <Connect>; skipped")
        if stream is None:
            self.warn(node, "<Connect> without a usable <Stream>; skipped")
            return None
        return ConnectVerb(stream, self.http_url(node, "action"), self.method(node, "method"))

    def redirect(self, node: _Node) -> RedirectVerb | None:
        self.check_attrs(node, ("method",))
        self.no_children(node)
        url = self.resolve(node, "".join(node.text), "URL", frozenset({"http", "https"}))
        if url is None:
            return None
        return RedirectVerb(url, self.method(node, "method"))

    def hangup(self, node: _Node) -> HangupVerb:
        self.check_attrs(node, ())
        self.no_children(node)
        return HangupVerb()

    def reject(self, node: _Node) -> RejectVerb:
        self.check_attrs(node, ("reason",))
        self.no_children(node)
        reason = node.attrs.get("reason", "rejected").strip()
        if reason == "busy":
            return RejectVerb("busy")
        if reason != "rejected":
            self._bad(node, "reason", reason, "rejected or busy")
        return RejectVerb("rejected")


_VERBS: dict[str, Callable[[_Reader, _Node], Verb | None]] = {
    "Say": _Reader.say,
    "Play": _Reader.play,
    "Pause": _Reader.pause,
    "Gather": _Reader.gather,
    "Dial": _Reader.dial,
    "Start": _Reader.start,
    "Stop": _Reader.stop,
    "Connect": _Reader.connect,
    "Redirect": _Reader.redirect,
    "Hangup": _Reader.hangup,
    "Reject": _Reader.reject,
}
#: TwiML voice verbs confstream does not implement: skipped with an "unsupported" warning.
_UNSUPPORTED_VERBS = frozenset({"Record", "Enqueue", "Leave", "Refer", "Pay", "Sms", "Echo"})
_DIAL_NOUNS = frozenset({"Number", "Sip", "Client", "Queue", "Application", "WhatsApp"})
_DIAL_UNSUPPORTED = (
    "answerOnBridge",
    "callerId",
    "callReason",
    "record",
    "recordingStatusCallback",
    "recordingStatusCallbackMethod",
    "recordingStatusCallbackEvent",
    "recordingTrack",
    "referUrl",
    "referMethod",
    "ringTone",
    "trim",
    "sequential",
    "recordingConfigurationId",
)
_CONFERENCE_ATTRS = (
    "muted",
    "beep",
    "startConferenceOnEnter",
    "endConferenceOnExit",
    "waitUrl",
    "waitMethod",
    "maxParticipants",
    "statusCallback",
    "statusCallbackEvent",
    "statusCallbackMethod",
    "participantLabel",
)
_CONFERENCE_UNSUPPORTED = (
    "record",
    "region",
    "trim",
    "coach",
    "jitterBufferSize",
    "whisper",
    "recordingStatusCallback",
    "recordingStatusCallbackMethod",
    "recordingStatusCallbackEvent",
    "eventCallbackUrl",
    "recordingConfigurationId",
)
_GATHER_SPEECH = (
    "hints",
    "language",
    "partialResultCallback",
    "partialResultCallbackMethod",
    "profanityFilter",
    "speechTimeout",
    "speechModel",
    "enhanced",
    "bargeIn",
    "debug",
    "maxSpeechTime",
    "actionOnEmptyResultMethod",
)
_STREAM_ATTRS = ("url", "name", "track", "statusCallback", "statusCallbackMethod")
_CONNECT_NOUNS = frozenset(
    {
        "Room",
        "ConversationRelay",
        "VirtualAgent",
        "Autopilot",
        "Conversation",
        "AiSession",
        "Assistant",
    }
)
_SSML = frozenset(
    {
        "break",
        "emphasis",
        "lang",
        "p",
        "phoneme",
        "prosody",
        "s",
        "say-as",
        "sub",
        "w",
        "amazon:effect",
        "amazon:domain",
    }
)


def parse(
    document: bytes | str, url: str | None = None, content_type: str | None = None
) -> Document:
    """Parse one cXML document (see the module docstring for what is refused and what is
    tolerated). ``url`` is where it came from (relative URLs resolve against it; None for an
    inline document); ``content_type`` is the answer's header, None when not known.

    Raises :class:`CxmlError` (or a subclass) and nothing else, whatever the input."""
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in _XML_CONTENT_TYPES:
            raise CxmlContentTypeError(
                f"Invalid Content-Type {content_type!r}: cXML must be text/xml or application/xml"
            )
    if len(document) > MAX_DOCUMENT_BYTES:  # a character is at least one byte
        raise CxmlTooLarge(f"The document is larger than {MAX_DOCUMENT_BYTES} bytes")
    if isinstance(document, str):
        try:
            data = document.lstrip().encode("utf-8")
        except UnicodeError as exc:
            raise CxmlError(f"Document parse failure: {exc}") from None
        encoding: str | None = "utf-8"  # the str is already decoded: ignore any declaration
    else:
        data, encoding = document, None
        if data[:1] in (b" ", b"\t", b"\r", b"\n"):  # tolerated: whitespace before <?xml
            data = data.lstrip(b" \t\r\n")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CxmlTooLarge(f"The document is larger than {MAX_DOCUMENT_BYTES} bytes")
    root = _read_xml(data, encoding)
    reader = _Reader(url)
    verbs = reader.response(root)
    return Document(verbs, tuple(reader.warnings), url)


__all__ = [
    "CONFERENCE_EVENTS",
    "LOOP_FOREVER",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_ELEMENTS",
    "MAX_PAUSE_SECONDS",
    "MAX_SAY_CHARS",
    "ConferenceNoun",
    "ConnectVerb",
    "CxmlContentTypeError",
    "CxmlError",
    "CxmlRootError",
    "CxmlTooLarge",
    "CxmlWarning",
    "DialVerb",
    "Document",
    "GatherVerb",
    "HangupVerb",
    "PauseVerb",
    "PlayVerb",
    "Prompt",
    "RedirectVerb",
    "RejectVerb",
    "SayVerb",
    "StartVerb",
    "StopVerb",
    "StreamNoun",
    "Verb",
    "parse",
]
