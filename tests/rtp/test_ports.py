"""RtpPortPool: even ports, exhaustion, release, FIFO reuse, the in-use gauge."""

from __future__ import annotations

import pytest

from confstream.rtp.ports import RtpPortPool, RtpPortsExhausted
from confstream.tools.metrics import sample


def gauge() -> float:
    return sample("confstream_rtp_ports_in_use")


def test_even_ports_exhaustion_and_release() -> None:
    before = gauge()
    pool = RtpPortPool(30001, 30010)  # even ports 30002..30010
    assert pool.size == 5
    ports = [pool.allocate() for _ in range(5)]
    assert ports == [30002, 30004, 30006, 30008, 30010]
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


def test_released_port_is_reused_last() -> None:
    pool = RtpPortPool(40000, 40006)
    first = pool.allocate()
    pool.release(first)
    assert [pool.allocate() for _ in range(4)] == [40002, 40004, 40006, 40000]


def test_invalid_ranges() -> None:
    with pytest.raises(ValueError):
        RtpPortPool(5001, 5001)
    with pytest.raises(ValueError):
        RtpPortPool(0, 0)
    assert RtpPortPool(5000, 5000).size == 1
