"""The pool of local RTP ports (``--rtp-ports LOW-HIGH``, default 20000-29999).

Rules (docs/sip.md, "RTP security"; docs/operations.md for the settings):

* Only even ports are handed out (RFC 3550 §11: RTP on an even port, RTCP on the next odd one,
  which is therefore never handed out either).
* A free port is picked **at random** (:func:`secrets.randbelow`) among all free ports, so the
  port the next caller gets cannot be predicted from the ports earlier callers got.
* A released port **cools down** for ``cooldown`` seconds (``CONFSTREAM_RTP_PORT_COOLDOWN``,
  default 32 s: a BYE that is never answered is retransmitted for 64·T1 = 32 s, so the old peer
  may go on sending that long) before it can be picked again. Only when no other port is free
  is the port that has cooled longest handed out early, rather than refusing the call.
* **Quarantined** ports (:meth:`RtpPortPool.quarantine`: ports a previous run of the server
  still had in calls when it died, see :mod:`confstream.rtp.portstate`) are never handed out
  before their quarantine has passed, not even when the pool is otherwise exhausted.

The ``confstream_rtp_ports_in_use`` gauge follows every allocation and release. Every
allocation and release is also told to the optional :class:`PortLog` (the state file that the
next run reads after a crash). The pool itself does no I/O and takes its clock as a parameter.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from confstream import metrics

__all__ = ["DEFAULT_COOLDOWN", "PortLog", "RtpPortPool", "RtpPortsExhausted"]

log = logging.getLogger(__name__)

#: Seconds a released port rests before it is handed out again (64·T1 of RFC 3261).
DEFAULT_COOLDOWN = 32.0


class RtpPortsExhausted(RuntimeError):
    """Every port of the pool is allocated (or quarantined)."""


class PortLog(Protocol):
    """Where the pool records what it hands out (see :mod:`confstream.rtp.portstate`)."""

    def allocated(self, port: int) -> None: ...

    def released(self, port: int) -> None: ...

    def close(self) -> None: ...


class RtpPortPool:
    """Even ports from ``low`` to ``high`` inclusive (an odd ``low`` starts at ``low + 1``).

    ``clock`` is a monotonic clock in seconds (``time.monotonic`` by default); ``cooldown`` is
    the rest of a released port in seconds (0 disables it); ``journal`` receives every
    allocation and release.
    """

    def __init__(
        self,
        low: int,
        high: int,
        *,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        journal: PortLog | None = None,
    ) -> None:
        first = low + (low & 1)
        if not 0 < first <= high <= 65535:
            raise ValueError(f"empty or invalid RTP port range {low}-{high}")
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0")
        self.low = low
        self.high = high
        self.cooldown = cooldown
        self.journal = journal
        self._clock = clock
        self._all = range(first, high + 1, 2)
        #: Free ports in no particular order (picked at random, removed by swapping).
        self._free: list[int] = list(self._all)
        #: Released ports resting, oldest first: (free again at, port).
        self._cooling: deque[tuple[float, int]] = deque()
        #: Quarantined ports: a heap of (free again at, port).
        self._quarantine: list[tuple[float, int]] = []
        self._used: set[int] = set()
        self.size = len(self._free)

    # -- state -----------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """How many ports are allocated now."""
        return len(self._used)

    @property
    def quarantined(self) -> frozenset[int]:
        """Ports in quarantine now."""
        self._refresh(self._clock())
        return frozenset(port for _, port in self._quarantine)

    @property
    def cooling(self) -> frozenset[int]:
        """Ports resting after a release now."""
        self._refresh(self._clock())
        return frozenset(port for _, port in self._cooling)

    def __contains__(self, port: object) -> bool:
        return port in self._all

    # -- setting up after a restart -----------------------------------------------------------

    def quarantine(self, ports: Iterable[int], seconds: float) -> None:
        """Keep ``ports`` (those of this range not allocated) out of use for ``seconds``, even
        when the pool is otherwise exhausted. For start-up, before the first allocation."""
        until = self._clock() + seconds
        for port in self._take_free(ports):
            heapq.heappush(self._quarantine, (until, port))

    def rest(self, ports: Iterable[tuple[int, float]]) -> None:
        """Let each ``(port, seconds)`` cool down that many more seconds, as if released
        recently (start-up: ports a previous run released shortly before it stopped). For
        start-up, before the first release."""
        now = self._clock()
        remaining = {port: seconds for port, seconds in ports if seconds > 0}
        taken = self._take_free(remaining)
        for port in sorted(taken, key=remaining.__getitem__):
            self._cooling.append((now + remaining[port], port))

    def _take_free(self, ports: Iterable[int]) -> set[int]:
        """Remove ``ports`` from the free list; returns those that were free."""
        wanted = {p for p in ports if p in self._all}
        if not wanted:
            return set()
        taken = wanted.intersection(self._free)
        self._free = [p for p in self._free if p not in wanted]
        return taken

    # -- allocation ---------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        """Return ports whose cool-down or quarantine has passed to the free list."""
        cooling = self._cooling
        while cooling and cooling[0][0] <= now:
            self._free.append(cooling.popleft()[1])
        quarantine = self._quarantine
        while quarantine and quarantine[0][0] <= now:
            port = heapq.heappop(quarantine)[1]
            self._free.append(port)
            if self.journal is not None:
                self.journal.released(port)  # no longer possibly in use by the old run

    def allocate(self) -> int:
        """Take a random free port; when none is free, the port that has cooled longest.
        Raises :class:`RtpPortsExhausted` when every port is allocated or quarantined."""
        self._refresh(self._clock())
        free = self._free
        if free:
            i = secrets.randbelow(len(free))
            free[i], free[-1] = free[-1], free[i]
            port = free.pop()
        elif self._cooling:
            port = self._cooling.popleft()[1]
            log.warning("RTP port pool: no rested port free, reusing %d before its cool-down", port)
        else:
            held = f" ({len(self._quarantine)} quarantined)" if self._quarantine else ""
            raise RtpPortsExhausted(
                f"all {self.size} RTP ports of {self.low}-{self.high} in use{held}"
            )
        self._used.add(port)
        metrics.RTP_PORTS_IN_USE.inc()
        if self.journal is not None:
            self.journal.allocated(port)
        return port

    def release(self, port: int) -> None:
        """Give a port back; it cools down before it is handed out again. Releasing a port that
        is not allocated does nothing (idempotent)."""
        if port not in self._used:
            return
        self._used.remove(port)
        if self.cooldown > 0:
            self._cooling.append((self._clock() + self.cooldown, port))
        else:
            self._free.append(port)
        metrics.RTP_PORTS_IN_USE.dec()
        if self.journal is not None:
            self.journal.released(port)

    def close(self) -> None:
        """Close the journal (at shutdown, after every session has released its port)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
