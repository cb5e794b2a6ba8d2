"""The call script: actions out in document order, inputs in, Twilio's flow for Gather,
Dial action, Connect, Redirect, Hangup/Reject, unusable documents and redirect loops."""

from __future__ import annotations

import pytest
from twilio.twiml.voice_response import VoiceResponse

from confstream.voice.cxml import ConferenceNoun, CxmlError, CxmlRootError, StreamNoun
from confstream.voice.runner import (
    MAX_FETCHES_WITHOUT_MEDIA,
    Action,
    CallScript,
    CollectDigits,
    ConnectStream,
    CxmlLoopError,
    FetchDocument,
    FetchFailed,
    Hangup,
    JoinConference,
    Pause,
    PlayAudio,
    Reject,
    ReportWarning,
    Say,
    ScriptStateError,
    SendDigits,
    StartStream,
    StopStream,
)

URL = "https://app.example.com/voice"


def drain(script: CallScript) -> list[Action]:
    """Every action until the script waits or finishes."""
    out: list[Action] = []
    while (action := script.next_action()) is not None:
        out.append(action)
    return out


def test_simple_verbs_run_in_order_then_the_end_hangs_up() -> None:
    r = VoiceResponse()
    r.say("Hello", voice="woman")
    r.play("/a.wav", loop=2)
    r.play(digits="1w2")
    r.pause(length=3)
    r.start().stream(url="wss://m.example.com/s", name="mon")
    r.stop().stream(name="mon")
    script = CallScript(str(r), URL)
    assert drain(script) == [
        Say("Hello", "woman"),
        PlayAudio("https://app.example.com/a.wav", 2),
        SendDigits("1w2"),
        Pause(3),
        StartStream(StreamNoun("wss://m.example.com/s", name="mon")),
        StopStream("mon"),
        Hangup(),
    ]
    assert script.finished and script.waiting_for is None
    assert script.next_action() is None


def test_gather_with_digits_fetches_the_action_and_drops_the_rest() -> None:
    r = VoiceResponse()
    g = r.gather(action="/menu", num_digits=4, timeout=8)
    g.say("Enter your PIN")
    g.play("/beep.wav")
    r.say("never heard")
    script = CallScript(str(r), URL)
    assert drain(script) == [
        CollectDigits(
            (Say("Enter your PIN"), PlayAudio("https://app.example.com/beep.wav")),
            timeout=8,
            finish_on_key="#",
            num_digits=4,
        )
    ]
    assert script.waiting_for == "digits"
    script.digits_collected("12#")
    assert drain(script) == [
        FetchDocument(
            "https://app.example.com/menu",
            "POST",
            "gather",
            {"Digits": "12", "FinishedOnKey": "#"},
        )
    ]
    waiting: str | None = script.waiting_for  # a property: it changed with the digits
    assert waiting == "document"
    script.document_fetched("<Response><Say>PIN ok</Say></Response>", URL + "/menu")
    assert drain(script) == [Say("PIN ok"), Hangup()]
    assert script.url == URL + "/menu"


def test_gather_without_input_goes_on_with_the_next_verb() -> None:
    r = VoiceResponse()
    r.gather(action="/menu")
    r.say("We did not receive any input. Goodbye!")
    script = CallScript(str(r), URL)
    drain(script)
    script.digits_collected("")
    assert drain(script) == [Say("We did not receive any input. Goodbye!"), Hangup()]


def test_only_the_finishing_key_counts_as_no_input() -> None:
    script = CallScript("<Response><Gather/><Say>next</Say></Response>", URL)
    drain(script)
    script.digits_collected("#")
    assert drain(script) == [Say("next"), Hangup()]


def test_action_on_empty_result_fetches_even_without_digits() -> None:
    r = VoiceResponse()
    r.gather(action_on_empty_result=True, method="GET")
    script = CallScript(str(r), URL)
    drain(script)
    script.digits_collected("")
    assert drain(script) == [
        FetchDocument(URL, "GET", "gather", {"Digits": "", "FinishedOnKey": ""})
    ]


def test_gather_digits_go_to_the_document_url_by_default() -> None:
    script = CallScript('<Response><Gather numDigits="2" finishOnKey=""/></Response>', URL)
    drain(script)
    script.digits_collected("7#")  # '#' is an ordinary key when finishOnKey is empty
    (fetch,) = drain(script)
    assert fetch == FetchDocument(URL, "POST", "gather", {"Digits": "7#", "FinishedOnKey": ""})


def test_dial_conference_then_action_with_dial_call_status() -> None:
    r = VoiceResponse()
    r.say("Joining")
    r.dial(action="/after", method="GET", hangup_on_star=True).conference(
        "Room 1", muted=True, beep="onExit", wait_url=""
    )
    r.say("unreachable after an action")
    script = CallScript(str(r), URL)
    assert drain(script) == [
        Say("Joining"),
        JoinConference(ConferenceNoun("Room 1", muted=True, beep="onExit"), 14400, True),
    ]
    assert script.waiting_for == "conference"
    script.conference_left("left")
    assert drain(script) == [
        FetchDocument(
            "https://app.example.com/after",
            "GET",
            "dial",
            {"DialCallStatus": "answered", "DialBridged": "true"},
        )
    ]
    script.document_fetched("<Response><Hangup/></Response>", "https://app.example.com/after")
    assert drain(script) == [Hangup()]


def test_dial_without_action_continues_with_the_next_verb() -> None:
    script = CallScript(
        "<Response><Dial><Conference>c</Conference></Dial><Say>bye</Say></Response>", URL
    )
    assert drain(script) == [JoinConference(ConferenceNoun("c"))]
    script.conference_left()
    assert drain(script) == [Say("bye"), Hangup()]


def test_a_conference_that_cannot_be_joined_reports_failed() -> None:
    script = CallScript(
        '<Response><Dial action="/d"><Conference>full</Conference></Dial></Response>', URL
    )
    drain(script)
    script.conference_left("failed")
    (fetch,) = drain(script)
    assert isinstance(fetch, FetchDocument)
    assert fetch.params == {"DialCallStatus": "failed", "DialBridged": "false"}


def test_an_unsupported_dial_target_fails_at_once() -> None:
    script = CallScript('<Response><Dial action="/d">+15551234567</Dial></Response>', URL)
    actions = drain(script)
    assert isinstance(actions[0], ReportWarning) and actions[0].warning.unsupported
    assert actions[1:] == [
        FetchDocument(
            "https://app.example.com/d",
            "POST",
            "dial",
            {"DialCallStatus": "failed", "DialBridged": "false"},
        )
    ]


def test_connect_stream_waits_for_the_stream_then_requests_the_action() -> None:
    r = VoiceResponse()
    r.connect(action="/after-bot").stream(url="wss://bot.example.com/ws")
    r.say("unreachable")
    script = CallScript(str(r), URL)
    assert drain(script) == [ConnectStream(StreamNoun("wss://bot.example.com/ws"))]
    assert script.waiting_for == "stream"
    script.stream_ended()
    assert drain(script) == [FetchDocument("https://app.example.com/after-bot", "POST", "connect")]


def test_connect_without_action_goes_on() -> None:
    script = CallScript(
        '<Response><Connect><Stream url="wss://b.example.com"/></Connect><Say>after</Say>'
        "</Response>",
        URL,
    )
    drain(script)
    script.stream_ended()
    assert drain(script) == [Say("after"), Hangup()]


def test_redirect_replaces_the_rest_of_the_document() -> None:
    script = CallScript(
        '<Response><Say>one</Say><Redirect method="GET">/two</Redirect><Say>never</Say></Response>',
        URL,
    )
    assert drain(script) == [
        Say("one"),
        FetchDocument("https://app.example.com/two", "GET", "redirect"),
    ]
    script.document_fetched("<Response><Say>two</Say></Response>", "https://app.example.com/two")
    assert drain(script) == [Say("two"), Hangup()]


def test_hangup_ends_the_script_and_later_verbs_never_run() -> None:
    script = CallScript("<Response><Say>a</Say><Hangup/><Say>b</Say></Response>", URL)
    assert drain(script) == [Say("a"), Hangup()]
    assert script.finished


def test_reject_first_is_refused_unanswered_and_later_is_not() -> None:
    first = CallScript('<Response><Reject reason="busy"/><Say>x</Say></Response>', URL)
    assert drain(first) == [Reject("busy", before_answer=True)]
    later = CallScript("<Response><Say>hi</Say><Reject/></Response>", URL)
    assert drain(later) == [Say("hi"), Reject("rejected", before_answer=False)]


def test_warnings_are_reported_before_the_verbs_of_their_document() -> None:
    script = CallScript("<Response><Dance/><Say>x</Say></Response>", URL)
    warning, say, hangup = drain(script)
    assert isinstance(warning, ReportWarning) and warning.url == URL
    assert warning.warning.code == 12200 and "<Dance>" in warning.warning.message
    assert (say, hangup) == (Say("x"), Hangup())


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        ("not xml", None, 12100),
        ("<Reply/>", None, 12102),
        ("<Response/>", "text/plain", 12300),
    ],
)
def test_an_unusable_fetched_document_ends_the_call(
    body: str, ctype: str | None, code: int
) -> None:
    script = CallScript("<Response><Redirect>/next</Redirect></Response>", URL)
    drain(script)
    script.document_fetched(body, "https://app.example.com/next", ctype)
    (hangup,) = drain(script)
    assert isinstance(hangup, Hangup) and isinstance(hangup.error, CxmlError)
    assert hangup.error.code == code
    assert script.finished


def test_an_unusable_first_document_ends_the_call() -> None:
    (hangup,) = drain(CallScript("<Hello/>", URL))
    assert isinstance(hangup, Hangup) and isinstance(hangup.error, CxmlRootError)


def test_a_fetch_failure_ends_the_call_with_11200() -> None:
    script = CallScript("<Response><Redirect>/next</Redirect></Response>", URL)
    drain(script)
    script.fetch_failed("HTTP 500")
    (hangup,) = drain(script)
    assert isinstance(hangup, Hangup) and isinstance(hangup.error, FetchFailed)
    assert hangup.error.code == 11200


def test_a_redirect_loop_without_media_is_bounded() -> None:
    loop = "<Response><Redirect/></Response>"
    script = CallScript(loop, URL)
    fetches = 0
    while True:
        actions = drain(script)
        if isinstance(actions[-1], Hangup):
            break
        assert actions == [FetchDocument(URL, "POST", "redirect")]
        fetches += 1
        script.document_fetched(loop, URL)
    assert fetches == MAX_FETCHES_WITHOUT_MEDIA
    assert isinstance(actions[-1].error, CxmlLoopError)


def test_a_loop_with_media_between_fetches_is_not_cut() -> None:
    loop = "<Response><Pause/><Redirect/></Response>"
    script = CallScript(loop, URL)
    for _ in range(MAX_FETCHES_WITHOUT_MEDIA * 3):
        assert drain(script) == [Pause(1), FetchDocument(URL, "POST", "redirect")]
        script.document_fetched(loop, URL)


def test_streams_alone_do_not_reset_the_loop_count() -> None:
    loop = '<Response><Start><Stream url="wss://s.example.com"/></Start><Redirect/></Response>'
    script = CallScript(loop, URL, max_fetches_without_media=2)
    for _ in range(2):
        assert isinstance(drain(script)[-1], FetchDocument)
        script.document_fetched(loop, URL)
    last = drain(script)[-1]
    assert isinstance(last, Hangup) and isinstance(last.error, CxmlLoopError)


def test_hung_up_stops_everything_and_requests_no_action() -> None:
    script = CallScript(
        '<Response><Dial action="/after"><Conference>c</Conference></Dial></Response>', URL
    )
    drain(script)
    script.hung_up()
    assert script.next_action() is None and script.finished


def test_inputs_out_of_turn_are_refused() -> None:
    script = CallScript("<Response><Gather/></Response>", URL)
    with pytest.raises(ScriptStateError):
        script.digits_collected("1")  # the CollectDigits action was not taken yet
    drain(script)
    with pytest.raises(ScriptStateError):
        script.conference_left()
    with pytest.raises(ScriptStateError):
        script.document_fetched("<Response/>", URL)
    script.digits_collected("1")
    with pytest.raises(ScriptStateError):
        script.stream_ended()


def test_inline_gather_without_url_continues() -> None:
    script = CallScript("<Response><Gather/><Say>next</Say></Response>", None)
    drain(script)
    script.digits_collected("5")
    assert drain(script) == [Say("next"), Hangup()]
