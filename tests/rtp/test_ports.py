"""RtpPortPool: even ports, random choice, cool-down, quarantine, exhaustion, the in-use gauge;
the port journal that carries the quarantine across an unclean restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from confstream.rtp.ports import RtpPortPool, RtpPortsExhausted
from confstream.rtp.portstate import PortJournal, PortState, open_port_pool, read_state, state_path
from confstream.settings import Settings
from confstream.tools.metrics import sample


def gauge() -> float:
    return sample("confstream_rtp_ports_in_use")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_even_ports_exhaustion_and_release() -> None:
    before = gauge()
    pool = RtpPortPool(30001, 30010, cooldown=0)  # even ports 30002..30010
    assert pool.size == 5
    ports = [pool.allocate() for _ in range(5)]
    assert sorted(ports) == [30002, 30004, 30006, 30008, 30010]  # never RTCP's odd ports
    assert pool.in_use == 5
    assert gauge() == before + 5
    with pytest.raises(RtpPortsExhausted):
        pool.allocate()
    pool.release(30006)
    pool.release(30006)  # idempotent
    pool.release(40000)  # not ours: ignored
    assert pool.in_use == 4
    assert gauge() == before + 4
    assert pool.allocate() == 30006
    for port in ports:
        pool.release(port)
    assert pool.in_use == 0
    assert gauge() == before


def test_ports_are_picked_at_random_across_the_range() -> None:
    firsts = set()
    for _ in range(40):
        pool = RtpPortPool(20000, 29999)
        firsts.add(pool.allocate())
    # In order from the bottom would give 20000 every time.
    assert len(firsts) > 30
    assert min(firsts) >= 20000 and max(firsts) <= 29998
    pool = RtpPortPool(20000, 20199)
    seq = [pool.allocate() for _ in range(50)]
    assert seq != sorted(seq)
    assert len(set(seq)) == 50


def test_released_port_cools_down_before_reuse() -> None:
    clock = Clock()
    pool = RtpPortPool(40000, 40006, cooldown=30, clock=clock)  # 4 ports
    first = pool.allocate()
    pool.release(first)
    assert pool.cooling == {first}
    others = [pool.allocate() for _ in range(3)]
    assert first not in others
    # Only the cooling port is left: taken early rather than refusing the call.
    assert pool.allocate() == first
    for port in [*others, first]:
        pool.release(port)
    clock.now += 10
    again = {pool.allocate() for _ in range(4)}  # all cooling: oldest first
    assert again == {40000, 40002, 40004, 40006}


def test_cooled_port_comes_back_after_the_cooldown() -> None:
    clock = Clock()
    pool = RtpPortPool(40000, 40002, cooldown=30, clock=clock)
    a = pool.allocate()
    b = pool.allocate()
    pool.release(a)
    pool.release(b)
    clock.now += 29.9
    assert pool.cooling == {a, b}
    clock.now += 0.2
    assert pool.cooling == frozenset()
    assert {pool.allocate(), pool.allocate()} == {a, b}


def test_quarantined_ports_are_never_handed_out_early() -> None:
    clock = Clock()
    pool = RtpPortPool(40000, 40006, clock=clock)
    pool.quarantine([40002, 40006, 50000], 60)  # 50000 is not in the range: ignored
    assert pool.quarantined == {40002, 40006}
    got = {pool.allocate(), pool.allocate()}
    assert got == {40000, 40004}
    with pytest.raises(RtpPortsExhausted, match="quarantined"):
        pool.allocate()
    clock.now += 60
    assert {pool.allocate(), pool.allocate()} == {40002, 40006}


def test_rest_lets_recent_releases_of_a_previous_run_cool() -> None:
    clock = Clock()
    pool = RtpPortPool(40000, 40004, clock=clock)
    pool.rest([(40000, 5.0), (40002, 0.0)])
    assert pool.cooling == {40000}
    assert {pool.allocate(), pool.allocate()} == {40002, 40004}
    clock.now += 5
    assert pool.allocate() == 40000


def test_invalid_ranges() -> None:
    with pytest.raises(ValueError):
        RtpPortPool(5001, 5001)
    with pytest.raises(ValueError):
        RtpPortPool(0, 0)
    with pytest.raises(ValueError):
        RtpPortPool(5000, 5002, cooldown=-1)
    assert RtpPortPool(5000, 5000).size == 1


# -- the journal and the restart ----------------------------------------------------------


def settings(tmp_path: Path, **extra: Any) -> Settings:
    """Settings with a journal under ``tmp_path``; ``extra`` are further Settings fields."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'confstream.db'}",
        rtp_ports="40000-40007",  # 4 even ports
        **extra,
    )


def test_state_file_place() -> None:
    assert state_path(Settings(database_url="sqlite:////srv/cs/db.sqlite")) == Path(
        "/srv/cs/db.sqlite.rtp-ports"
    )
    assert state_path(Settings(database_url="sqlite:///var/x.db")) == Path("var/x.db.rtp-ports")
    assert state_path(Settings(database_url="sqlite:///:memory:")) is None
    assert state_path(Settings(database_url="postgresql://u:p@db/cs")) == Path(
        "var/confstream.rtp-ports"
    )
    assert state_path(Settings(rtp_state_file="/run/cs.ports")) == Path("/run/cs.ports")
    assert state_path(Settings(rtp_state_file="off")) is None


def test_unclean_stop_quarantines_the_live_ports_at_the_next_start(tmp_path: Path) -> None:
    clock, wall = Clock(), Clock(1_700_000_000.0)
    cfg = settings(tmp_path, rtp_port_quarantine=60, rtp_port_cooldown=30)
    first_run = open_port_pool(cfg, clock=clock, wall_clock=wall)
    live = first_run.allocate()
    ended = first_run.allocate()
    first_run.release(ended)
    # kill -9: nothing else happens; the journal is what is on disk.
    wall.now += 5
    clock2 = Clock(0.0)
    second_run = open_port_pool(cfg, clock=clock2, wall_clock=wall)
    assert second_run.quarantined == {live}
    assert second_run.cooling == {ended}  # released 5 s ago: 25 s of rest left
    free = {second_run.allocate(), second_run.allocate()}
    assert live not in free and ended not in free
    assert second_run.allocate() == ended  # only the cooling one is left: taken early
    with pytest.raises(RtpPortsExhausted):
        second_run.allocate()  # the quarantined one never
    clock2.now += 60
    assert second_run.allocate() == live


def test_a_second_crash_within_the_quarantine_quarantines_again(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    run1 = open_port_pool(cfg, clock=Clock())
    live = run1.allocate()
    run2 = open_port_pool(cfg, clock=Clock())
    assert run2.quarantined == {live}
    run3 = open_port_pool(cfg, clock=Clock())  # run 2 crashed too, within the quarantine
    assert run3.quarantined == {live}
    # Once the quarantine has passed, the port is released in the journal.
    clock = Clock()
    run4 = open_port_pool(cfg, clock=clock)
    clock.now += cfg.rtp_port_quarantine
    assert run4.quarantined == frozenset()
    run4.close()
    journal = state_path(cfg)
    assert journal is not None
    assert live not in read_state(journal).live


def test_clean_shutdown_leaves_no_quarantine(tmp_path: Path) -> None:
    cfg = settings(tmp_path, rtp_port_cooldown=0)
    pool = open_port_pool(cfg)
    ports = [pool.allocate() for _ in range(3)]
    for port in ports:
        pool.release(port)  # every call hung up
    pool.close()
    after = open_port_pool(cfg)
    assert after.quarantined == frozenset() and after.cooling == frozenset()


def test_journal_is_compacted_and_tolerates_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ports"
    path.write_text("a 40000 1\nnonsense\nr x y\na 40002\nr 40000 2\na 40004 3\n")
    state = read_state(path)
    assert state.live == {40004} and set(state.released) == {40000}
    wall = Clock(10.0)
    journal = PortJournal(path, state, cooldown=5, clock=wall)  # compacts at once
    assert read_state(path).live == {40004}
    assert read_state(path).released == {}  # released at t=2, older than the cool-down
    for _ in range(2000):
        journal.allocated(40006)
        journal.released(40006)
    journal.close()
    lines = path.read_text().splitlines()
    assert len(lines) <= 1100
    final = read_state(path)
    assert final.live == {40004} and set(final.released) == {40006}


def test_an_unwritable_journal_does_not_break_allocation(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = settings(tmp_path, rtp_state_file=str(blocker / "ports"))
    pool = open_port_pool(cfg)
    port = pool.allocate()
    pool.release(port)
    pool.close()


def test_port_state_lines_round_trip(tmp_path: Path) -> None:
    state = PortState({40002}, {40004: 123.5})
    path = tmp_path / "s"
    path.write_text(state.lines())
    assert read_state(path) == state
