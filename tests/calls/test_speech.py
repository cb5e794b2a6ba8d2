"""``<Say>`` speech: espeak-ng renders real speech at 8 kHz; voices and languages map as
docs/voice.md says; the cache returns the same audio without running espeak-ng again."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from confstream.calls.speech import (
    Speaker,
    SpeechUnavailable,
    parse_voice_list,
    pick_language,
    variant,
)
from confstream.media.analysis import rms_dbfs

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (scripts/ensure-sysdeps.sh)"
)


def test_voice_variants() -> None:
    assert variant("man") == "+m3"
    assert variant("woman") == "+f3"
    assert variant("alice") == "+f3"
    assert variant("Polly.Joanna-Neural") == "+f3"
    assert variant("Polly.Matthew") == "+m3"


def test_language_choice() -> None:
    available = parse_voice_list(
        "Pty Language Age/Gender VoiceName File Other\n"
        " 2  en-us  --/M  English_(America) gmw/en-US (en 3)\n"
        " 5  fr-fr  --/M  French gmw/fr\n"
        " 5  de     --/M  German gmw/de\n"
    )
    assert available == frozenset({"en-us", "fr-fr", "de"})
    assert pick_language("en-US", available) == "en-us"
    assert pick_language("fr-FR", available) == "fr-fr"
    assert pick_language("de-AT", available) == "de"
    assert pick_language("xx-YY", available) == "en-us"


@needs_espeak
async def test_renders_speech_at_8khz_and_caches() -> None:
    speaker = Speaker()
    pcm = await speaker.render("-v hello, this is confstream speaking", "woman", "en-US")
    assert pcm.dtype == np.int16
    assert 8000 < pcm.size < 8000 * 10  # a second or more, well under ten
    assert rms_dbfs(pcm) > -40.0
    again = await speaker.render("-v hello, this is confstream speaking", "woman", "en-US")
    assert again is pcm


async def test_missing_program_is_reported() -> None:
    speaker = Speaker("confstream-no-such-tts")
    with pytest.raises(SpeechUnavailable):
        await speaker.render("hello")
