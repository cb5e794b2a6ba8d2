"""The RTP port journal: which ports this run handed out, kept in a small state file so that
the next run, after an unclean stop (``kill -9``, a crash, the OOM killer), does not give those
ports to new callers while the old calls' phones, which never got a BYE, still send to them
(docs/sip.md, "RTP security"; settings in docs/operations.md).

At start-up (:func:`open_port_pool`) the file is read:

* a port whose last entry is an allocation was in a call when the previous run stopped without
  releasing it: it is **quarantined** for ``CONFSTREAM_RTP_PORT_QUARANTINE`` seconds (default
  60), counted from this start;
* a port released less than the cool-down (``CONFSTREAM_RTP_PORT_COOLDOWN``, 32 s) ago, by the
  wall clock, rests for the remainder;

then the file is rewritten with just those entries. A clean shutdown hangs up every call and so
releases every port first: only the cool-down then applies.

Why a file beside the database rather than a table: an entry is written at every call set-up
and tear-down, from the event loop. Appending one short line to a file kept open is a single
``write(2)`` into the page cache: no round trip, no ``await``, nothing the 20 ms clock could
wait on, and it survives ``kill -9`` of the process (not a crash of the machine: there is no
fsync). The schema stays untouched. The default place is ``<sqlite file>.rtp-ports``, or
``var/confstream.rtp-ports`` with PostgreSQL; ``CONFSTREAM_RTP_STATE_FILE`` sets it (``off``
disables the journal). Each server needs a file of its own.

Format: one line per event, ``a PORT UNIXTIME`` (allocated) or ``r PORT UNIXTIME`` (released);
the last line of a port wins; unreadable lines are skipped. The file is compacted (rewritten
with the live entries, atomically) whenever it grows past ``max(1024, 4 * entries)`` lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confstream.rtp.ports import RtpPortPool
from confstream.settings import Settings

__all__ = ["PortJournal", "PortState", "open_port_pool", "read_state", "state_path"]

log = logging.getLogger(__name__)

_MIN_COMPACT = 1024


@dataclass
class PortState:
    """What a journal says: ports still allocated, and release times (Unix time) of the
    others."""

    live: set[int] = field(default_factory=set)
    released: dict[int, float] = field(default_factory=dict)

    def apply(self, op: str, port: int, when: float) -> None:
        if op == "a":
            self.live.add(port)
            self.released.pop(port, None)
        elif op == "r":
            self.live.discard(port)
            self.released[port] = when

    def lines(self) -> str:
        entries = [f"a {p} 0\n" for p in sorted(self.live)]
        entries += [f"r {p} {t:.3f}\n" for p, t in sorted(self.released.items())]
        return "".join(entries)


def read_state(path: Path) -> PortState:
    """Replay a journal file; a missing or unreadable file is an empty state."""
    state = PortState()
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return state
    except OSError as exc:
        log.warning("cannot read the RTP port journal %s: %s", path, exc)
        return state
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            port, when = int(parts[1]), float(parts[2])
        except ValueError:
            continue
        state.apply(parts[0], port, when)
    return state


class PortJournal:
    """Appends every allocation and release to the state file (see the module docstring).

    ``clock`` is the wall clock (Unix time); ``cooldown`` is how long a release stays worth
    remembering. Write errors are logged once and never raised: a call must not fail because
    the journal cannot be written.
    """

    def __init__(
        self,
        path: Path,
        state: PortState,
        *,
        cooldown: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.state = state
        self.cooldown = cooldown
        self._clock = clock
        self._fd: int | None = None
        self._lines = 0
        self._warned = False
        self.compact()

    def allocated(self, port: int) -> None:
        self._write("a", port)

    def released(self, port: int) -> None:
        self._write("r", port)

    def _write(self, op: str, port: int) -> None:
        now = self._clock()
        self.state.apply(op, port, now)
        if self._fd is None:
            return
        try:
            os.write(self._fd, f"{op} {port} {now:.3f}\n".encode("ascii"))
        except OSError as exc:
            self._failed(exc)
            return
        self._lines += 1
        if self._lines > max(_MIN_COMPACT, 4 * (len(self.state.live) + len(self.state.released))):
            self.compact()

    def compact(self) -> None:
        """Rewrite the file with only what still matters (live ports, recent releases)."""
        horizon = self._clock() - self.cooldown
        released = self.state.released
        for port in [p for p, t in released.items() if t < horizon]:
            del released[port]
        self._close_fd()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = self.state.lines()
            tmp.write_text(text, encoding="ascii")
            os.replace(tmp, self.path)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            self._failed(exc)
            return
        self._lines = text.count("\n")

    def _failed(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.error(
                "cannot write the RTP port journal %s (%s): after a crash the next run cannot "
                "quarantine the ports of live calls",
                self.path,
                exc,
            )

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()


def state_path(settings: Settings) -> Path | None:
    """The journal file: ``rtp_state_file`` when set (``off``: none), else beside the SQLite
    file, else ``var/confstream.rtp-ports``; None for an in-memory SQLite database."""
    configured = settings.rtp_state_file.strip()
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    url = settings.database_url
    if url.startswith("sqlite"):
        db = url.split(":///", 1)[1] if ":///" in url else ""
        if not db or db.startswith(":memory:") or "mode=memory" in db:
            return None
        return Path(db.split("?", 1)[0] + ".rtp-ports")
    return Path("var/confstream.rtp-ports")


def open_port_pool(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> RtpPortPool:
    """The server's pool: the ``rtp_ports`` range with the configured cool-down, the ports of
    the previous run quarantined or resting, and the journal attached."""
    low, high = settings.rtp_port_range
    pool = RtpPortPool(low, high, cooldown=settings.rtp_port_cooldown, clock=clock)
    path = state_path(settings)
    if path is None:
        return pool
    state = read_state(path)
    leftovers = sorted(p for p in state.live if p in pool)
    if leftovers:
        log.warning(
            "the previous run stopped with %d RTP port(s) in calls; quarantined for %g s: %s",
            len(leftovers),
            settings.rtp_port_quarantine,
            " ".join(map(str, leftovers[:20])) + (" ..." if len(leftovers) > 20 else ""),
        )
        pool.quarantine(leftovers, settings.rtp_port_quarantine)
    now = wall_clock()
    cooldown = settings.rtp_port_cooldown
    pool.rest(
        (port, min(cooldown, cooldown - (now - when)))
        for port, when in state.released.items()
        if port in pool
    )
    # Quarantined ports stay recorded as allocated until their quarantine ends, so that a
    # second crash within it quarantines them again.
    kept = PortState(set(leftovers), dict(state.released))
    pool.journal = PortJournal(path, kept, cooldown=cooldown, clock=wall_clock)
    return pool
