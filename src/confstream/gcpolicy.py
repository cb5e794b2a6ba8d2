"""Keeping the garbage collector out of the 20 ms tick (docs/operations.md, "Garbage
collection").

A collection stops the whole process, the mixer clock included. Three measures keep it short
and out of the ticks:

1. :func:`freeze_startup`: once the server is up, everything alive (modules, the app, the
   API's routes, settings: hundreds of thousands of objects) is collected once and moved to
   the permanent generation with :func:`gc.freeze`, so no later full collection walks it.
2. :data:`THRESHOLDS` (set by :func:`freeze_startup`): young collections every 20,000 net
   allocations of container objects instead of 700, so a tick at 1000 participants (a few
   thousand allocations) triggers none.
3. :class:`GcPolicy`, asked by the engine after every tick (:func:`after_tick`): when the
   young generation is half full and there is time left before the next tick, it runs the
   collection Python would run next (young, middle, or full when there are at least
   ``full_slack_s`` left) right there, between two ticks. Python's own collections stay
   enabled as the safety net, so memory is bounded whatever the load.
4. Native memory held by garbage: a closed TLS connection (a stream's ``wss://`` connection)
   is a reference cycle (uvloop's transport and SSL protocol point at each other) that holds
   about 300 KiB outside Python's heap (uvloop's 256 KiB read buffer, OpenSSL's state). The
   collector does not see that memory, and such cycles live long enough to reach the oldest
   generation, which is collected rarely: with many streams ending, hundreds of them waited
   and the soak's RSS grew (docs/soak.md). :func:`note_native_garbage` counts what ended
   connections hold; once it reaches ``native_budget`` the policy runs a full collection
   after the next tick with ``full_slack_s`` left.

Every collection's pause is in ``confstream_gc_pause_seconds{generation,when}``: ``when`` is
``after_tick`` for the policy's own collections and ``automatic`` for Python's (those may fall
inside a tick; the benchmark reports their count and the largest pause).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from confstream.metrics import GC_PAUSE

__all__ = [
    "THRESHOLDS",
    "TLS_CONNECTION_BYTES",
    "GcPolicy",
    "after_tick",
    "freeze_startup",
    "install_timer",
    "native_pending",
    "note_native_garbage",
]

#: ``gc.set_threshold`` values the server runs with (Python's defaults: 700, 10, 10).
THRESHOLDS = (20_000, 10, 10)

#: Native bytes a closed TLS connection keeps until its cycle is collected (measured with
#: memray on the soak: uvloop's SSL read buffer of 256 KiB plus OpenSSL's objects).
TLS_CONNECTION_BYTES = 300 * 1024


@dataclass(frozen=True)
class GcPolicy:
    """Which collection to run between two ticks (pure: see :meth:`due`)."""

    thresholds: tuple[int, int, int] = THRESHOLDS
    #: Collect the young generation after a tick once its count reaches this share of its
    #: threshold (before Python would, inside some later tick).
    young_share: float = 0.5
    #: Seconds that must be left before the next tick for a young or middle collection ...
    min_slack_s: float = 0.004
    #: ... and for a full one.
    full_slack_s: float = 0.010
    #: Native bytes held by garbage (:func:`note_native_garbage`) that make a full collection
    #: due (about 14 closed TLS connections).
    native_budget: int = 4 * 2**20

    def due(self, counts: tuple[int, int, int], slack_s: float, native: int = 0) -> int | None:
        """The generation to collect now, given :func:`gc.get_count`, the seconds left
        before the next tick and the native bytes garbage holds (:func:`native_pending`);
        None: nothing now. It is a full collection when ``native`` reached the budget, else
        the collection Python would run at its next trigger (the oldest generation whose
        count is at its threshold), run early."""
        c0, c1, c2 = counts
        t0, t1, t2 = self.thresholds
        if native >= self.native_budget and slack_s >= self.full_slack_s:
            return 2
        if slack_s < self.min_slack_s or c0 < t0 * self.young_share:
            return None
        if c1 + 1 < t1:
            return 0
        if c2 + 1 < t2:
            return 1
        return 2 if slack_s >= self.full_slack_s else None


class _Timer:
    """``gc.callbacks`` entry timing every collection into ``confstream_gc_pause_seconds``."""

    def __init__(self) -> None:
        self._started = 0.0
        self.policy_running = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        global _native_pending
        if phase == "start":
            self._started = time.perf_counter()
            return
        if info["generation"] == 2:
            _native_pending = 0  # a full collection freed every unreachable cycle
        when = "after_tick" if self.policy_running else "automatic"
        GC_PAUSE.labels(generation=str(info["generation"]), when=when).observe(
            time.perf_counter() - self._started
        )


_timer = _Timer()
_native_pending = 0
#: Off in the test suite's process, where many apps come and go and a full collection would
#: finalize other tests' leftovers mid-test (tests/conftest.py); tests/test_gc_policy.py
#: turns it on.
track_native = True


def note_native_garbage(nbytes: int) -> None:
    """Something holding ``nbytes`` outside Python's heap has just become garbage that only
    a full collection frees (a closed TLS connection: :data:`TLS_CONNECTION_BYTES`)."""
    global _native_pending
    if track_native:
        _native_pending += nbytes


def native_pending() -> int:
    """Native bytes noted since the last full collection."""
    return _native_pending


def install_timer() -> None:
    """Time every collection (once per process)."""
    if _timer not in gc.callbacks:
        gc.callbacks.append(_timer)


def freeze_startup(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Collect once, freeze what is left (it lives as long as the process) and set the
    thresholds. Call when start-up is done, before any call arrives."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def after_tick(policy: GcPolicy, slack_s: float) -> int | None:
    """Run the collection ``policy`` asks for now, if any; returns its generation."""
    global _native_pending
    generation = policy.due(gc.get_count(), slack_s, _native_pending)
    if generation is not None:
        _timer.policy_running = True
        try:
            gc.collect(generation)
        finally:
            _timer.policy_running = False
        if generation == 2:
            _native_pending = 0
    return generation
