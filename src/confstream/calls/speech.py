"""``<Say>``: text to 8 kHz speech with espeak-ng (docs/voice.md, "Say").

:class:`Speaker` runs ``espeak-ng`` (Debian package ``espeak-ng``, installed by
``scripts/ensure-sysdeps.sh``) as a subprocess, never on the event loop: the text goes in on
stdin (so text starting with ``-`` is never read as an option), the WAV comes out in a
temporary file, and decoding and resampling to 8 kHz run in a worker thread.

* **Voices**: ``language`` (``en-US``, ``fr-FR``…) picks the espeak-ng voice of that tag,
  else of its primary language (``fr``), else ``en-us``. ``voice`` picks the variant:
  ``woman``, ``alice`` and the female Amazon Polly / Google names listed in
  :data:`FEMALE_VOICES` speak with a female variant (``+f3``), anything else (``man``, the
  default) with a male one (``+m3``).
* **Cache**: rendered speech is kept per (text, voice, language), least recently used first
  out, at most :data:`CACHE_SAMPLES` samples in all (about 8 minutes, 8 MiB).
* **Bounds**: one rendering takes at most :data:`RENDER_TIMEOUT_S`; at most
  :data:`MAX_RENDERS` run at once (others wait).
* **Failures** (espeak-ng missing, times out, fails): :class:`SpeechUnavailable`; the call
  runtime logs it and goes on without the speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from confstream.media.wav import WavError, parse_wav

log = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]

#: Samples of rendered speech kept in the cache (8 kHz: 4 M samples = 500 s, 8 MiB).
CACHE_SAMPLES: Final = 4_000_000
#: Longest one rendering may take.
RENDER_TIMEOUT_S: Final = 30.0
#: Renderings running at once (each is one espeak-ng process).
MAX_RENDERS: Final = 2
#: Words per minute (espeak-ng's default is 175; a little slower is clearer on a phone).
RATE_WPM: Final = 160
#: ``voice`` values spoken with a female variant (compared lowercased; ``Polly.`` and
#: ``Google.`` prefixes and ``-Neural``/``-Standard`` suffixes are ignored).
FEMALE_VOICES: Final = frozenset(
    {
        "woman",
        "alice",
        "female",
        "joanna",
        "salli",
        "kimberly",
        "kendra",
        "ivy",
        "amy",
        "emma",
        "olivia",
        "nicole",
        "aditi",
        "raveena",
        "celine",
        "lea",
        "vicki",
        "marlene",
        "conchita",
        "lucia",
        "penelope",
        "lupe",
        "camila",
        "vitoria",
        "ines",
        "carla",
        "bianca",
        "mizuki",
        "seoyeon",
        "zhiyu",
    }
)
_DEFAULT_VOICE: Final = "en-us"


class SpeechUnavailable(Exception):
    """The text could not be rendered (espeak-ng missing, failed or too slow)."""


def variant(voice: str) -> str:
    """``+f3`` for a female ``voice`` (see :data:`FEMALE_VOICES`), else ``+m3``."""
    name = voice.strip().lower()
    name = re.sub(r"^(polly|google)\.", "", name)
    name = re.sub(r"-(neural|standard|generative|wavenet)$", "", name)
    return "+f3" if name in FEMALE_VOICES else "+m3"


def pick_language(language: str, available: frozenset[str]) -> str:
    """The espeak-ng voice for a language tag: the tag itself, else its primary language,
    else ``en-us`` (see the module docstring)."""
    tag = language.strip().lower().replace("_", "-")
    if tag in available:
        return tag
    primary = tag.split("-", 1)[0]
    if primary in available:
        return primary
    return _DEFAULT_VOICE


def parse_voice_list(text: str) -> frozenset[str]:
    """The language column of ``espeak-ng --voices``."""
    names = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            names.add(fields[1].lower())
    return frozenset(names)


class Speaker:
    """Renders and caches speech (see the module docstring)."""

    def __init__(self, command: str = "espeak-ng") -> None:
        self.command = command
        self._cache: OrderedDict[tuple[str, str, str], Int16Array] = OrderedDict()
        self._cached_samples = 0
        self._languages: frozenset[str] | None = None
        self._slots = asyncio.Semaphore(MAX_RENDERS)

    async def _run(self, *args: str, stdin: bytes = b"") -> bytes:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SpeechUnavailable(f"{self.command} cannot run: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), RENDER_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SpeechUnavailable(f"{self.command} took over {RENDER_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip()[:200]
            raise SpeechUnavailable(f"{self.command} failed ({proc.returncode}): {message}")
        return out

    async def languages(self) -> frozenset[str]:
        if self._languages is None:
            self._languages = parse_voice_list((await self._run("--voices")).decode())
        return self._languages

    async def render(self, text: str, voice: str = "man", language: str = "en-US") -> Int16Array:
        """``text`` spoken, as int16 8 kHz mono. Raises :class:`SpeechUnavailable`."""
        key = (text, voice, language)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        async with self._slots:
            espeak_voice = pick_language(language, await self.languages()) + variant(voice)
            with tempfile.TemporaryDirectory(prefix="confstream-say-") as tmp:
                out = Path(tmp) / "say.wav"
                await self._run(
                    "-v",
                    espeak_voice,
                    "-s",
                    str(RATE_WPM),
                    "-w",
                    str(out),
                    "--stdin",
                    stdin=text.encode("utf-8"),
                )
                data = await asyncio.to_thread(out.read_bytes)
        try:
            pcm = await asyncio.to_thread(parse_wav, data)
        except WavError as exc:
            raise SpeechUnavailable(f"{self.command} wrote an unreadable WAV: {exc}") from exc
        self._remember(key, pcm)
        return pcm

    def _remember(self, key: tuple[str, str, str], pcm: Int16Array) -> None:
        if pcm.size > CACHE_SAMPLES:
            return
        self._cache[key] = pcm
        self._cached_samples += int(pcm.size)
        while self._cached_samples > CACHE_SAMPLES:
            _, old = self._cache.popitem(last=False)
            self._cached_samples -= int(old.size)


__all__ = [
    "CACHE_SAMPLES",
    "FEMALE_VOICES",
    "Speaker",
    "SpeechUnavailable",
    "parse_voice_list",
    "pick_language",
    "variant",
]
