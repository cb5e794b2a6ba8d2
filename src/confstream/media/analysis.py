"""Signal helpers for tests, the demo and the benchmark: tones, Goertzel power, levels.

Not on the media hot path; clarity over speed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

#: Default tone amplitude: 8000 (about -12 dBFS), loud enough to measure, leaving headroom so a
#: mix of three tones does not clip.
DEFAULT_AMPLITUDE = 8000


def tone(
    freq: float,
    seconds: float,
    rate: int = 8000,
    amplitude: float = DEFAULT_AMPLITUDE,
    phase: float = 0.0,
) -> Int16Array:
    """A sine tone as int16 samples (``round(seconds * rate)`` of them)."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    out: Int16Array = np.clip(
        np.rint(amplitude * np.sin(2 * np.pi * freq * t + phase)), -32768, 32767
    ).astype(np.int16)
    return out


def goertzel_power(pcm: npt.ArrayLike, freq: float, rate: int = 8000) -> float:
    """Power of ``freq`` in ``pcm`` (Goertzel over the whole array, Hann-windowed to limit
    leakage from nearby tones). Normalised so a full-scale sine gives about 1.0."""
    x = np.asarray(pcm, dtype=np.float64) / 32768.0
    n = x.size
    if n == 0:
        return 0.0
    w = np.hanning(n)
    x = x * w
    # Goertzel as a single DFT bin at the exact frequency (vectorised; same result).
    k = np.exp(-2j * np.pi * freq * np.arange(n) / rate)
    amp = abs(np.dot(x, k)) / (w.sum() / 2)
    return float(amp * amp)


def tone_levels(pcm: npt.ArrayLike, freqs: Iterable[float], rate: int = 8000) -> dict[float, float]:
    """Power of each frequency relative to the signal's total power (0..~1): a tone that makes
    up all of the signal scores about 1, an absent one near 0. Silence gives all zeros."""
    x = np.asarray(pcm, dtype=np.float64) / 32768.0
    total = float(np.mean(x * x)) * 2  # a sine's mean square is amp²/2
    result: dict[float, float] = {}
    for f in freqs:
        result[f] = goertzel_power(pcm, f, rate) / total if total > 0 else 0.0
    return result


def rms_dbfs(pcm: npt.ArrayLike) -> float:
    """RMS level in dBFS (full-scale square wave = 0 dBFS); ``-inf`` for silence or empty."""
    x = np.asarray(pcm, dtype=np.float64) / 32768.0
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    return float(20 * np.log10(rms)) if rms > 0 else float("-inf")
