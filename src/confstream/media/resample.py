"""Sample-rate conversion with soxr (libsoxr), one-shot and streaming.

The engine mixes at 8 kHz. Streams with ``L16@16000h``/``L16@24000h`` need 8 kHz frames turned
into 16/24 kHz frames (160 -> 320/480 samples) and, for bidirectional streams, returned audio
turned back into 8 kHz; announcements arrive at any rate and are converted once.

Streaming design, and why not ``soxr.ResampleStream``
------------------------------------------------------
``soxr.ResampleStream`` works on large internal blocks: fed 20 ms at a time it returns nothing
for several calls and then a burst (measured with python-soxr 1.1 and ``HQ``: output lags input
by up to 115 ms for 8k<->16k, 73 ms for 8k<->24k; still 40-60 ms at ``LQ``). To give "20 ms out
per 20 ms in" it would need 115 ms of zero fill. :class:`Resampler` instead runs soxr's one-shot
resampler on each chunk together with ``context`` input samples before it and ``lookahead``
samples after it, and keeps only the middle part. The filter's impulse response (``HQ``) spans
less than +/-9 ms, so with 10 ms of context on each side the kept samples equal those of one
long one-shot conversion (to within rounding: the tests compare). One call costs about 20 µs
for a 20 ms frame.

**Latency**: exactly the lookahead, :data:`STREAM_LATENCY_MS` (10 ms, rounded up to a whole
number of "rate units" — see below). The stream starts with that much silence, so every chunk
of input gives the exact corresponding amount of output from the very first call: 160 samples
at 8 kHz in give 320 (16 kHz) or 480 (24 kHz) out, and 320/480 in give 160 out.

Rates: output positions must fall on the same grid in every chunk, so input is consumed in
whole units of ``in_rate / gcd(in_rate, out_rate)`` samples (1 for 8k->16k, 2 for 16k->8k,
441 for 44.1k->8k); an incomplete unit waits for the next call. Any 20 ms chunk at a rate that
is a multiple of 50 Hz is a whole number of units, so frame sizes stay exact.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import soxr

Int16Array = npt.NDArray[np.int16]

#: soxr quality used everywhere: "HQ" (20-bit, steep low-pass; ample for telephone audio).
QUALITY = "HQ"
#: Latency added by :class:`Resampler` (before rounding up to whole rate units).
STREAM_LATENCY_MS = 10


def _to_int16(samples: npt.NDArray[np.floating]) -> Int16Array:
    out: Int16Array = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
    return out


def resample(pcm: npt.ArrayLike, in_rate: int, out_rate: int) -> Int16Array:
    """Convert a whole int16 signal from ``in_rate`` to ``out_rate`` (one shot, no added delay).

    The output has ``round(len * out_rate / in_rate)`` samples (soxr's rule). Returns a copy
    even when the rates are equal.
    """
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError("sample rates must be positive")
    data = np.asarray(pcm, dtype=np.int16)
    if in_rate == out_rate:
        return data.copy()
    if data.size == 0:
        return np.zeros(0, dtype=np.int16)
    out = soxr.resample(data.astype(np.float32), in_rate, out_rate, quality=QUALITY)
    return _to_int16(out)


class Resampler:
    """Streaming resampler that keeps state across chunks (see the module docstring).

    ``process(chunk)`` returns the output for the input consumed so far, delayed by
    :attr:`latency_samples` input samples; lengths are exact (``units * out_unit``).
    Equal rates pass audio through unchanged with no latency.
    """

    def __init__(self, in_rate: int, out_rate: int, latency_ms: int = STREAM_LATENCY_MS) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = math.gcd(in_rate, out_rate)
        self.in_unit = in_rate // g
        self.out_unit = out_rate // g
        units = math.ceil(in_rate * latency_ms / 1000 / self.in_unit) if in_rate != out_rate else 0
        #: Lookahead (= context) in input samples; also the latency the stream adds.
        self.latency_samples = units * self.in_unit
        # Buffer = context (already output) + pending input not yet output.
        # The stream starts with `context` zeros (left context) and `lookahead` zeros (latency).
        self._buf = np.zeros(2 * self.latency_samples, dtype=np.float32)
        self._context = self.latency_samples  # samples at the start of _buf already emitted

    @property
    def latency_ms(self) -> float:
        """The latency the stream adds, in milliseconds."""
        return 1000.0 * self.latency_samples / self.in_rate

    def process(self, pcm: npt.ArrayLike) -> Int16Array:
        """Feed int16 input of any length; return all the output now available (a new array)."""
        data = np.asarray(pcm, dtype=np.int16)
        if self.in_rate == self.out_rate:
            return data.copy()
        buf = np.concatenate((self._buf, data.astype(np.float32)))
        ctx = self._context
        available = buf.size - ctx - self.latency_samples
        units = available // self.in_unit if available > 0 else 0
        if units == 0:
            self._buf = buf
            return np.zeros(0, dtype=np.int16)
        n_in = units * self.in_unit
        block = buf[: ctx + n_in + self.latency_samples]
        out = soxr.resample(block, self.in_rate, self.out_rate, quality=QUALITY)
        start = (ctx // self.in_unit) * self.out_unit
        result = _to_int16(out[start : start + units * self.out_unit])
        # Keep `latency_samples` of context before the next unconsumed sample.
        keep_from = ctx + n_in - self.latency_samples
        self._buf = buf[keep_from:].copy()
        self._context = self.latency_samples
        return result

    def flush(self) -> Int16Array:
        """Push the held-back tail out (padding with silence); the stream can continue after."""
        if self.in_rate == self.out_rate:
            return np.zeros(0, dtype=np.int16)
        pending = self._buf.size - self._context - self.latency_samples
        pad = self.latency_samples + (-pending) % self.in_unit
        return self.process(np.zeros(pad, dtype=np.int16))
