"""JitterBuffer with injected arrival times: order, duplicates, loss, wraparound, SSRC change,
adaptation of the target depth."""

from __future__ import annotations

import math

import numpy as np

from confstream.conference.base import Frame
from confstream.rtp.jitter import MAX_JUMP, JitterBuffer, PutResult


def frame(n: int) -> Frame:
    """A recognisable frame: every sample holds ``n`` (as int16)."""
    return np.full(160, n % 30000, dtype=np.int16)


def ident(f: Frame | None) -> int | None:
    return None if f is None else int(f[0])


def feed(
    jb: JitterBuffer[Frame], seqs: list[int], *, ssrc: int = 1, start: float = 0.0
) -> list[str]:
    """Put packets with perfectly regular arrival (20 ms) in the given order."""
    out = []
    for i, seq in enumerate(seqs):
        out.append(
            jb.put(seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, frame(seq), start + i * 0.02)
        )
    return out


def test_in_order_playout_with_depth_one() -> None:
    jb = JitterBuffer()
    assert jb.get() is None  # nothing yet
    for seq in range(100, 110):
        jb.put(seq, seq * 160, 1, frame(seq), seq * 0.02)
        assert jb.target == 1
        assert ident(jb.get()) == seq
    assert jb.stats.received == 10 and jb.stats.lost == 0 and jb.stats.late == 0


def test_reorder_within_depth_is_repaired() -> None:
    jb = JitterBuffer(min_depth=3)
    feed(jb, [10, 12, 11, 14, 13])
    got = [ident(jb.get()) for _ in range(5)]
    assert got == [10, 11, 12, 13, 14]
    assert jb.stats.lost == 0


def test_duplicates_discarded_buffered_and_played() -> None:
    jb = JitterBuffer(min_depth=2)
    assert feed(jb, [1, 2, 2]) == [PutResult.ACCEPTED, PutResult.ACCEPTED, PutResult.DUPLICATE]
    assert ident(jb.get()) == 1
    assert jb.put(1, 160, 1, frame(1), 0.1) == PutResult.DUPLICATE  # already played
    assert ident(jb.get()) == 2
    assert jb.stats.duplicate == 2 and jb.stats.late == 0


def test_late_packet_discarded_and_counted() -> None:
    jb = JitterBuffer()
    feed(jb, [1, 3])
    assert ident(jb.get()) == 1
    got = jb.get()  # 2 is missing, 3 waits: 2 is concealed (half of frame 1)
    assert ident(got) == 0  # frame(1) >> 1 == 0
    assert jb.stats.concealed == 1
    assert jb.put(2, 320, 1, frame(2), 0.1) == PutResult.LATE
    assert jb.stats.late == 1
    assert ident(jb.get()) == 3


def test_loss_concealment_then_silence_then_resume() -> None:
    jb = JitterBuffer()
    jb.put(5, 800, 1, np.full(160, 1000, np.int16), 0.0)
    assert ident(jb.get()) == 1000
    # Nothing arrives: one attenuated repeat, then silence.
    assert ident(jb.get()) == 500
    assert jb.get() is None
    assert jb.get() is None
    assert jb.stats.underruns >= 1
    # 6 and 7 lost, 8 arrives: playout resumes at 8 and the loss is counted.
    jb.put(8, 8 * 160, 1, frame(8), 0.06)
    assert ident(jb.get()) == 8
    assert jb.stats.lost == 2


def test_sequence_wraparound() -> None:
    jb = JitterBuffer(min_depth=2)
    seqs = list(range(65530, 65536)) + list(range(0, 6))
    # Swap two packets across the wrap; the mixer pulls after each arrival.
    order = [*seqs[:5], seqs[6], seqs[5], *seqs[7:]]
    got = []
    for i, seq in enumerate(order):
        jb.put(seq, 160 * seqs.index(seq), 1, frame(seq), i * 0.02)
        got.append(ident(jb.get()))
    got += [ident(jb.get()) for _ in range(2)]  # drain (then one concealment frame)
    assert [g for g in got if g is not None][: len(seqs)] == [s % 30000 for s in seqs]
    assert jb.stats.lost == 0 and jb.stats.late == 0
    # A packet from before the wrap is late, not a huge jump forward.
    assert jb.put(65533, 0, 1, frame(1), 1.0) in (PutResult.LATE, PutResult.DUPLICATE)


def test_ssrc_change_resets() -> None:
    jb = JitterBuffer()
    feed(jb, [100, 101])
    assert ident(jb.get()) == 100
    # New source with unrelated sequence numbers (lower: would be "late" without the reset).
    assert jb.put(5, 0, 2, frame(5), 1.0) == PutResult.ACCEPTED
    assert jb.ssrc == 2 and jb.stats.resets == 1
    assert ident(jb.get()) == 5


def test_big_jump_restarts() -> None:
    jb = JitterBuffer()
    feed(jb, [10, 11])
    jb.get()
    assert jb.put(10 + MAX_JUMP + 50, 0, 1, frame(7), 1.0) == PutResult.ACCEPTED
    assert jb.stats.resets == 1
    assert ident(jb.get()) == 7


def test_sender_restarting_sequence_numbers_recovers() -> None:
    jb = JitterBuffer()
    feed(jb, list(range(500, 520)))
    for _ in range(20):
        jb.get()
    # Same SSRC, sequence numbers go back by 300 (a misbehaving sender): late at first...
    results = feed(jb, list(range(200, 260)), start=1.0)
    assert results[0] == PutResult.LATE
    # ...but the buffer resets and plays the new run.
    assert results[-1] == PutResult.ACCEPTED
    assert jb.stats.resets == 1
    assert jb.get() is not None


def test_placeholders_play_silence_without_loss() -> None:
    jb = JitterBuffer()
    jb.put(1, 160, 1, frame(1), 0.0)
    assert ident(jb.get()) == 1
    jb.put(2, None, 1, None, 0.02)
    assert jb.get() is None
    jb.put(3, 480, 1, frame(3), 0.04)
    assert ident(jb.get()) == 3
    assert jb.stats.lost == 0 and jb.stats.concealed == 0


def test_target_adapts_to_jitter_and_back() -> None:
    jb = JitterBuffer()
    rng = np.random.default_rng(1)
    # Arrivals with +-40 ms of random delay: the target grows.
    for seq in range(200):
        jb.put(seq, seq * 160, 1, frame(seq), seq * 0.02 + float(rng.uniform(0, 0.08)))
    assert jb.jitter > 100
    assert 4 <= jb.target <= 8
    # A calm network brings it back down to one frame.
    for seq in range(200, 600):
        jb.put(seq, seq * 160, 1, frame(seq), 10 + seq * 0.02)
    assert jb.jitter < 1
    assert jb.target == 1


def test_jittery_stream_plays_in_order_with_little_loss() -> None:
    """A simulated clock: the mixer pulls every 20 ms; packets arrive with up to 50 ms of
    jitter (and so out of order). With adaptation nearly everything plays, in order."""
    jb = JitterBuffer()
    rng = np.random.default_rng(7)
    arrivals = sorted((i * 0.02 + float(rng.uniform(0, 0.05)), i) for i in range(500))
    played: list[int] = []
    t = 0.0
    k = 0
    while t < 500 * 0.02 + 0.5:
        while k < len(arrivals) and arrivals[k][0] <= t:
            at, seq = arrivals[k]
            # Real frames hold 20000 + seq/2; concealed ones are half that, below 20000.
            jb.put(seq, seq * 160, 1, np.full(160, 20000 + seq, np.int16), at)
            k += 1
        f = jb.get()
        if f is not None and int(f[0]) >= 20000:
            played.append(int(f[0]) - 20000)
        t += 0.02
    assert played == sorted(set(played))
    assert len(played) >= 470
    assert jb.stats.late + jb.stats.lost <= 30


def test_overflow_drops_oldest_when_far_above_target() -> None:
    jb = JitterBuffer()
    feed(jb, list(range(20)))  # a burst: far more than target + slack
    first = ident(jb.get())
    assert first is not None and first > 0
    assert jb.stats.overflow > 0
    assert jb.depth <= jb.target + 2


def test_the_ring_holds_one_window_of_sequence_numbers() -> None:
    jb = JitterBuffer(min_depth=3)
    window = jb.ring_size
    assert feed(jb, [10, 11]) == [PutResult.ACCEPTED] * 2
    # a whole ring ahead of 10 and 11: they make room (overflow), it waits alone
    assert feed(jb, [11 + window]) == [PutResult.ACCEPTED]
    assert jb.depth == 1 and jb.stats.overflow == 2
    assert feed(jb, [10]) == [PutResult.LATE]  # its turn has passed now
    assert feed(jb, [12 + window]) == [PutResult.ACCEPTED]
    # a whole ring behind a waiting packet (its slot is taken): no room for it
    assert feed(jb, [12]) == [PutResult.OVERFLOW]
    assert feed(jb, [13 + window]) == [PutResult.ACCEPTED]
    assert jb.depth == 3
    jb.min_depth = jb.max_depth = 3  # (the jumps above made the jitter estimate large)
    assert [ident(jb.get()) for _ in range(3)] == [11 + window, 12 + window, 13 + window]


def _at_tick(arrival: float) -> float:
    """The arrival a packet gets when sockets are drained at the start of every 20 ms tick
    (confstream.rtp.reader): the time of the first tick at or after it arrived."""
    return math.ceil(round(arrival / 0.02, 9)) * 0.02


def test_arrival_quantised_to_the_tick_on_time_caller_shows_no_jitter() -> None:
    jb = JitterBuffer(arrival_quantum=160)
    rng = np.random.default_rng(3)
    # Sent on time, arriving 7 ms before a tick with +-1 ms of network noise: one per tick.
    for seq in range(300):
        at = seq * 0.02 + 0.013 + float(rng.uniform(-0.001, 0.001))
        assert jb.put(seq, seq * 160, 1, frame(seq), _at_tick(at)) == PutResult.ACCEPTED
        jb.get()
    assert jb.jitter < 1e-6
    assert jb.target == 1


def test_arrival_quantised_to_the_tick_jitter_across_the_boundary_is_seen() -> None:
    """Packets arriving around a tick boundary (+-1 ms) land in this tick or the next one:
    that is a whole frame to the playout, and the target grows to cover it, without asking
    for more than the 2 frames that always do."""
    jb = JitterBuffer(arrival_quantum=160)
    rng = np.random.default_rng(5)
    for seq in range(300):
        at = seq * 0.02 + 0.02 + float(rng.uniform(-0.001, 0.001))
        jb.put(seq, seq * 160, 1, frame(seq), _at_tick(at))
    assert jb.jitter > 16
    assert 2 <= jb.target <= 3
    # A caller crossing once in a while is seen, and keeps the minimum depth.
    jb1 = JitterBuffer(arrival_quantum=160)
    for seq in range(300):
        late = 0.0015 if seq % 100 == 50 else 0.0
        jb1.put(seq, seq * 160, 1, frame(seq), _at_tick(seq * 0.02 + 0.0195 + late))
        if seq == 52:
            assert jb1.jitter > 0
    assert jb1.target == 1
    # Large jitter is still estimated as large.
    jb2 = JitterBuffer(arrival_quantum=160)
    for seq in range(300):
        at = seq * 0.02 + float(rng.uniform(0, 0.08))
        jb2.put(seq, seq * 160, 1, frame(seq), _at_tick(at))
    assert jb2.jitter > 100
    assert 4 <= jb2.target <= 8


def test_in_order_fast_path_matches_the_general_path() -> None:
    """The straight-line path for the next packet of the same source gives what the general
    path gives: same results, frames, counters (loss included) and jitter estimate, over a
    stream with loss, reordering, duplicates, late packets, placeholders, SSRC changes,
    sequence jumps and wraparound. The reference buffer is fed the same sequence numbers plus
    65536, which the general path reduces to the same 16 bits but the fast path's check never
    matches."""
    rng = np.random.default_rng(14)
    fast: JitterBuffer[Frame] = JitterBuffer(arrival_quantum=160)
    ref: JitterBuffer[Frame] = JitterBuffer(arrival_quantum=160)
    seq, ssrc, t = 65000, 7, 0.0
    for step in range(3000):
        r = rng.random()
        if r < 0.80:
            seq += 1
        elif r < 0.88:
            seq += int(rng.integers(2, 5))  # loss
        elif r < 0.94:
            seq -= int(rng.integers(1, 4))  # reordered, duplicate or late
        elif r < 0.97:
            seq += int(rng.integers(MAX_JUMP + 1, 3 * MAX_JUMP))  # restart
        else:
            ssrc += 1
        placeholder = rng.random() < 0.03
        t += 0.02 + float(rng.normal(0, 0.004))
        s16 = seq & 0xFFFF
        ts = None if placeholder else (seq * 160) & 0xFFFFFFFF
        item = None if placeholder else frame(seq)
        assert fast.put(s16, ts, ssrc, item, t) == ref.put(s16 + 0x10000, ts, ssrc, item, t)
        if step % 3 != 2:  # a little slower than the sender: the latency control works too
            assert ident(fast.get()) == ident(ref.get())
        assert fast.stats == ref.stats, step
        assert fast.jitter == ref.jitter and fast.depth == ref.depth
    assert fast.stats.lost > 0 and fast.stats.late > 0 and fast.stats.duplicate > 0
    assert fast.stats.resets > 0 and fast.stats.overflow > 0
