"""The compiled RTP send lane: every eligible participant's packet of a tick built and sent by
one compiled call (bench/history.md, section 11; issue 14).

Why compiled: after years of micro-optimisation (bench/history.md) what was left on the send
side is Python's per-packet overhead: a call per row, a ``bytes`` header and payload joined,
a bound ``send``, the counters; ``RtpSession.write_ulaw`` was the top function of the profile
at 250 callers. The lane is a `numba <https://numba.pydata.org>`_ ``@njit`` loop (numba has
wheels for this platform: no compiler on a fresh machine, ``make run`` unchanged) that calls
libc ``send`` directly, once per packet, with no Python object made per packet. numba was
chosen over a C extension of our own (a compiler at install) and over Cython (the same, or
wheels built by us per platform); it is a well-kept library (Anaconda, NumPy's release
cadence) that compiles plain Python on NumPy arrays, so the lane stays readable Python.

Shape:

* One :class:`TxLane` per event loop, installed by the server at start (:func:`install`;
  nothing else uses it: without it every session sends from Python, as before). It owns
  growable NumPy arrays indexed by *slot*: the socket's fd, whether the slot is enabled, the
  sequence number, timestamp, SSRC, first-audio flag and packets sent.
* A session (:class:`~confstream.rtp.session.RtpSession`) takes a slot when it opens and keeps
  it for life. It names it by a *key* (slot plus a generation, :data:`SLOT_BITS`), so a row
  that still names a slot given back and taken by another session is not sent by the lane
  (it falls back to the Python path, which does nothing for a closed session).
* The session enables its slot while it can take µ-law codes on its connected socket: latched
  with the connected socket open (:mod:`confstream.rtp.session`, "Connected after the latch"),
  PCMU negotiated, no DTMF digit playing. Enabling copies the endpoint's sequence number,
  timestamp and first-audio flag into the slot; disabling copies them back and adds the
  packets sent to the endpoint's stats, so the packets are exactly those of the Python path
  across every switch (a DTMF digit, a re-INVITE that un-latches, a codec change).
* The conference engine knows nothing of RTP (tests/test_layers.py): it reads each
  participant's ``tx_key`` once per layout rebuild and, every tick, hands the encoded µ-law
  rows and their keys to :meth:`TxLane.send` (``Engine.tx_lane``, wired by the app), which
  returns which rows it sent; the other rows take ``write_ulaw``/``write_frame`` as before.
* A failed send (``EAGAIN``, ``ENOBUFS``, ``ECONNREFUSED`` after an ICMP error...) drops that
  packet exactly as the Python path does (sequence number and timestamp advance, the endpoint's
  ``packets_sent`` counts it, ``confstream_rtp_packets_sent_total`` does not) and counts
  ``confstream_rtp_send_failures_total{reason}`` with the errno's name (read in the compiled
  loop through libc's ``__errno_location``). Nothing raises into the tick.
* The receive side (jitter buffers) can join later as one more kernel on the same slots.

Compilation: ``@njit(cache=True)``; :func:`warm_up` (the server calls it at start, before the
clock runs) compiles the kernel, or loads it from numba's cache (``__pycache__`` next to this
file, or numba's per-user cache directory when that is not writable, or ``NUMBA_CACHE_DIR``),
so the JIT never runs in a tick. libc's ``send`` and ``__errno_location`` are named as
external symbols (not ctypes pointers, which would make the kernel uncacheable).

Without numba (not installed, or it fails to import) :func:`available` is False, the server
logs it once and every row takes the Python path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from confstream import metrics
from confstream.rtp.endpoint import PENDING

__all__ = [
    "MSG_DONTWAIT",
    "SLOT_BITS",
    "TxLane",
    "available",
    "install",
    "lane_of",
    "uninstall",
    "warm_up",
]

log = logging.getLogger(__name__)

#: A key is ``generation << SLOT_BITS | slot``.
SLOT_BITS = 24
_SLOT_MASK = (1 << SLOT_BITS) - 1
#: send(2) flag: never block (the sockets are non-blocking anyway).
MSG_DONTWAIT = 0x40
#: µ-law codes per packet (20 ms at 8 kHz) and the datagram's size.
PAYLOAD = 160
_PACKET = 12 + PAYLOAD

Int64Array = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]

_kernel: Callable[..., tuple[int, int]] | None = None
_import_error: str | None = None
_tried = False


def _build() -> Callable[..., tuple[int, int]]:
    """Import numba and the kernel (compiled at its first call, or loaded from cache)."""
    # (numba's import takes ~0.2 s: only when the lane is used)
    from confstream.rtp import _txkernel

    kernel: Callable[..., tuple[int, int]] = _txkernel.send_rows
    return kernel


def available() -> bool:
    """Whether the lane can run here (numba imports); tried once."""
    global _kernel, _import_error, _tried
    if not _tried:
        _tried = True
        try:
            _kernel = _build()
        except Exception as exc:  # ImportError, or a numba/llvmlite that fails to load
            _import_error = f"{type(exc).__name__}: {exc}"
    return _kernel is not None


def warm_up() -> float | None:
    """Compile the kernel, or load it from numba's cache, now (the server calls this at start,
    before its clock runs). Returns the seconds it took (numba's import included, when this is
    the first use), or None when numba is not available."""
    t0 = time.perf_counter()
    if not available():
        return None
    lane = TxLane()
    lane.send(np.zeros((0, PAYLOAD), dtype=np.uint8), np.zeros(0, dtype=np.int64))
    return time.perf_counter() - t0


def unavailable_reason() -> str | None:
    """Why numba could not be used (after :func:`available` said False), else None."""
    return _import_error


def _grown(a: npt.NDArray[Any], size: int, fill: int = 0) -> npt.NDArray[Any]:
    b = np.full(size, fill, dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


class TxLane:
    """The send slots of one event loop (see the module docstring)."""

    def __init__(self) -> None:
        n = 64
        self.keys: Int64Array = np.full(n, -1, dtype=np.int64)
        self.enabled: UInt8Array = np.zeros(n, dtype=np.uint8)
        self.fds: npt.NDArray[np.int32] = np.full(n, -1, dtype=np.int32)
        self.seq: Int64Array = np.zeros(n, dtype=np.int64)
        self.ts: Int64Array = np.zeros(n, dtype=np.int64)
        self.ssrc: Int64Array = np.zeros(n, dtype=np.int64)
        self.first: UInt8Array = np.zeros(n, dtype=np.uint8)
        self.sent: Int64Array = np.zeros(n, dtype=np.int64)
        self._pkt: UInt8Array = np.zeros(_PACKET, dtype=np.uint8)
        self._done: UInt8Array = np.zeros(64, dtype=np.uint8)
        self._errs: npt.NDArray[np.int32] = np.zeros(64, dtype=np.int32)
        self._free: list[int] = list(range(n - 1, -1, -1))
        self._generation = 0
        #: Packets sent and calls made since creation (for tests and the benchmark).
        self.packets = 0
        self.calls = 0

    @property
    def taken(self) -> int:
        """Slots taken (no ``__len__``: an empty lane must not be falsy)."""
        return int(self.keys.shape[0]) - len(self._free)

    # -- slots (the session's side) ---------------------------------------------------------

    def take(self, ssrc: int) -> int:
        """A slot for a session whose SSRC is ``ssrc``, disabled; returns its key."""
        if not self._free:
            old = self.keys.shape[0]
            new = 2 * old
            self.keys = _grown(self.keys, new, -1)
            self.enabled = _grown(self.enabled, new)
            self.fds = _grown(self.fds, new, -1)
            self.seq = _grown(self.seq, new)
            self.ts = _grown(self.ts, new)
            self.ssrc = _grown(self.ssrc, new)
            self.first = _grown(self.first, new)
            self.sent = _grown(self.sent, new)
            self._free = list(range(new - 1, old - 1, -1))
        slot = self._free.pop()
        self._generation += 1
        key = (self._generation << SLOT_BITS) | slot
        self.keys[slot] = key
        self.enabled[slot] = 0
        self.fds[slot] = -1
        self.ssrc[slot] = ssrc
        self.sent[slot] = 0
        return key

    def release(self, key: int) -> None:
        """Give the slot back (the session closes; it must be disabled first). Idempotent."""
        slot = key & _SLOT_MASK
        if slot < self.keys.shape[0] and self.keys[slot] == key:
            self.keys[slot] = -1
            self.enabled[slot] = 0
            self.fds[slot] = -1
            self._free.append(slot)

    def enable(self, key: int, fd: int, seq: int, ts: int, first_audio: bool) -> None:
        """Send this slot's packets from the lane, on ``fd`` (a connected socket), from this
        sequence number, timestamp and first-audio flag on."""
        slot = key & _SLOT_MASK
        if self.keys[slot] != key:
            raise ValueError(f"lane key {key} is not taken")
        self.fds[slot] = fd
        self.seq[slot] = seq
        self.ts[slot] = ts
        self.first[slot] = 1 if first_audio else 0
        self.enabled[slot] = 1

    def disable(self, key: int) -> tuple[int, int, bool]:
        """Stop sending this slot's packets; returns its (sequence number, timestamp,
        first-audio flag) to carry on from. Its sent count stays for :meth:`take_sent`."""
        slot = key & _SLOT_MASK
        self.enabled[slot] = 0
        self.fds[slot] = -1
        return int(self.seq[slot]), int(self.ts[slot]), bool(self.first[slot])

    def take_sent(self, key: int) -> int:
        """Packets the lane made for this slot since the last call (each 160 payload bytes),
        zeroed."""
        slot = key & _SLOT_MASK
        if self.keys[slot] != key:
            return 0
        n = int(self.sent[slot])
        if n:
            self.sent[slot] = 0
        return n

    # -- the engine's side ------------------------------------------------------------------

    def send(self, codes: UInt8Array, row_keys: Int64Array) -> UInt8Array:
        """Send row ``i`` of ``codes`` (``(n, 160)`` µ-law, C-contiguous) for every row whose
        key ``row_keys[i]`` names an enabled slot. Returns, per row, 1 when the lane took it
        (sent, or dropped by a failed send and counted), 0 when the caller must send it."""
        kernel = _kernel
        n = row_keys.shape[0]
        if self._done.shape[0] < n:
            size = max(n, 2 * self._done.shape[0])
            self._done = np.zeros(size, dtype=np.uint8)
            self._errs = np.zeros(size, dtype=np.int32)
        done = self._done[:n]
        if kernel is None:
            done.fill(0)
            return done
        errs = self._errs[:n]
        ok, failed = kernel(
            codes,
            row_keys,
            self.keys,
            self.enabled,
            self.fds,
            self.seq,
            self.ts,
            self.ssrc,
            self.first,
            self.sent,
            self._pkt,
            done,
            errs,
        )
        self.calls += 1
        if ok:
            PENDING.packets_out += ok
            self.packets += ok
        if failed:
            for e in errs[np.flatnonzero(errs)].tolist():
                reason = errno.errorcode.get(e, "other")
                metrics.RTP_SEND_FAILURES.labels(reason=reason).inc()
                log.debug("rtp send failed: %s", reason)
        return done


_lanes: dict[asyncio.AbstractEventLoop, TxLane] = {}


def install(loop: asyncio.AbstractEventLoop) -> TxLane | None:
    """Give ``loop`` a lane (the server does, at start); sessions opened on it from then on take
    slots. None, and nothing installed, when numba is not available."""
    if not available():
        return None
    lane = _lanes.get(loop)
    if lane is None:
        for old in [x for x in _lanes if x.is_closed()]:
            del _lanes[old]
        lane = _lanes[loop] = TxLane()
    return lane


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """Forget ``loop``'s lane (server stop). Sessions that hold slots keep working: their
    lane object lives as long as they do."""
    _lanes.pop(loop, None)


def lane_of(loop: asyncio.AbstractEventLoop) -> TxLane | None:
    """The lane installed on ``loop``, or None."""
    return _lanes.get(loop)
