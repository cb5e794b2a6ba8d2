"""The pool of local RTP ports (``--rtp-ports LOW-HIGH``, default 20000-29999).

Only even ports are handed out (RFC 3550 §11: RTP on an even port, RTCP on the next odd one,
which is therefore never handed out either). Free ports are reused in FIFO order, so a port
released by one call is the last to be picked again: stray packets still in flight for the old
call are unlikely to reach a new one. The ``confstream_rtp_ports_in_use`` gauge follows every
allocation and release.
"""

from __future__ import annotations

from collections import deque

from confstream import metrics

__all__ = ["RtpPortPool", "RtpPortsExhausted"]


class RtpPortsExhausted(RuntimeError):
    """Every port of the pool is allocated."""


class RtpPortPool:
    """Even ports from ``low`` to ``high`` inclusive (an odd ``low`` starts at ``low + 1``)."""

    def __init__(self, low: int, high: int) -> None:
        first = low + (low & 1)
        if not 0 < first <= high <= 65535:
            raise ValueError(f"empty or invalid RTP port range {low}-{high}")
        self.low = low
        self.high = high
        self._free: deque[int] = deque(range(first, high + 1, 2))
        self._used: set[int] = set()
        self.size = len(self._free)

    @property
    def in_use(self) -> int:
        """How many ports are allocated now."""
        return len(self._used)

    def allocate(self) -> int:
        """Take the least recently used free port. Raises :class:`RtpPortsExhausted`."""
        if not self._free:
            raise RtpPortsExhausted(f"all {self.size} RTP ports of {self.low}-{self.high} in use")
        port = self._free.popleft()
        self._used.add(port)
        metrics.RTP_PORTS_IN_USE.inc()
        return port

    def release(self, port: int) -> None:
        """Give a port back. Releasing a port that is not allocated does nothing (idempotent)."""
        if port not in self._used:
            return
        self._used.remove(port)
        self._free.append(port)
        metrics.RTP_PORTS_IN_USE.dec()
