"""The GC policy (confstream.gcpolicy): which collection runs between two ticks, pure logic;
and that the policy's collections are told apart from Python's in the pause metric."""

from __future__ import annotations

import gc
import weakref

import pytest

from confstream import gcpolicy
from confstream.gcpolicy import GcPolicy
from confstream.tools.metrics import sample

POLICY = GcPolicy(thresholds=(1000, 10, 10), young_share=0.5, min_slack_s=0.004, full_slack_s=0.01)


@pytest.mark.parametrize(
    ("counts", "slack", "expected"),
    [
        ((499, 0, 0), 0.019, None),  # young generation not half full yet
        ((500, 0, 0), 0.019, 0),  # half full: collect it now, between ticks
        ((900, 0, 0), 0.003, None),  # no time left before the next tick: leave it to Python
        ((600, 9, 0), 0.005, 1),  # the next young collection would take the middle one along
        ((600, 9, 9), 0.015, 2),  # ... and the old one: a full collection, there is time
        ((600, 9, 9), 0.008, None),  # a full one is due but there is not time for it
        ((600, 8, 9), 0.008, 0),
    ],
)
def test_the_policy_runs_what_python_would_run_next_when_there_is_time(
    counts: tuple[int, int, int], slack: float, expected: int | None
) -> None:
    assert POLICY.due(counts, slack) == expected


def test_defaults_collect_young_between_ticks_long_before_python_would() -> None:
    policy = GcPolicy()
    t0 = gcpolicy.THRESHOLDS[0]
    assert t0 > 700  # fewer young collections than Python's default
    assert policy.due((t0 // 2, 0, 0), 0.015) == 0
    assert policy.due((t0 // 2 - 1, 0, 0), 0.015) is None


def test_policy_collections_are_labelled_after_tick() -> None:
    gcpolicy.install_timer()
    gcpolicy.install_timer()  # once per process
    assert sum(cb is gcpolicy._timer for cb in gc.callbacks) == 1
    before = sample("confstream_gc_pause_seconds_count", generation="0", when="after_tick")
    eager = GcPolicy((2, 1000, 1000), young_share=0.0, min_slack_s=0.0, native_budget=2**62)
    assert gcpolicy.after_tick(eager, 0.02) == 0
    after = sample("confstream_gc_pause_seconds_count", generation="0", when="after_tick")
    assert after == before + 1
    assert gcpolicy.after_tick(POLICY, 0.0) is None  # no time left: nothing run


@pytest.mark.parametrize(
    ("native", "slack", "expected"),
    [
        (4 * 2**20, 0.015, 2),  # closed TLS connections hold the budget: a full collection
        (4 * 2**20, 0.008, None),  # ... but only with time for a full one
        (4 * 2**20 - 1, 0.015, None),  # under the budget: the young count decides (empty)
    ],
)
def test_native_memory_held_by_garbage_makes_a_full_collection_due(
    native: int, slack: float, expected: int | None
) -> None:
    assert GcPolicy(native_budget=4 * 2**20).due((0, 0, 0), slack, native) == expected


def test_after_tick_frees_native_holding_cycles_once_the_budget_is_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reference cycle promoted to the oldest generation (like a closed TLS connection's
    transport and protocol) is freed by the full collection the noted native bytes trigger,
    and the count starts again."""

    class Holder:
        def __init__(self) -> None:
            self.me = self

    held = Holder()
    gone = weakref.ref(held)
    gc.collect(1)
    gc.collect(1)  # promoted to the oldest generation, as a long-lived connection is
    del held
    gc.collect(1)
    assert gone() is not None  # young and middle collections never reach it
    monkeypatch.setattr(gcpolicy, "track_native", True)
    policy = GcPolicy(native_budget=3 * gcpolicy.TLS_CONNECTION_BYTES)
    for _ in range(3):
        gcpolicy.note_native_garbage(gcpolicy.TLS_CONNECTION_BYTES)
    assert gcpolicy.after_tick(policy, 0.015) == 2
    assert gone() is None
    assert gcpolicy.native_pending() == 0
