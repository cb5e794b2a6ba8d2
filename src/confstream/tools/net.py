"""Free ports and RTP ranges on 127.0.0.1 for the tests, the demo and the benchmark.

Two kinds of port, kept apart on purpose:

* **Kernel-chosen ports** (:func:`free_port`, :func:`free_udp_port`, :func:`free_media_port`)
  come from the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, usually
  32768-60999). They suit a peer's own sockets: a caller's SIP or media port, a receiver.
* **The server's RTP pool** (:func:`rtp_port_bounds`, :func:`rtp_port_range`) lies *outside*
  the ephemeral range, so sockets the kernel hands to callers and receivers never hold the
  ports the server allocates (``CONFSTREAM_RTP_PORTS``, docs/operations.md). A port that is
  busy anyway is skipped when a session opens (docs/sip.md), so runs sharing a range still work.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

HOST = "127.0.0.1"

#: The kernel's usual ephemeral range, used when /proc cannot be read.
DEFAULT_EPHEMERAL = (32768, 60999)

#: The lowest port an RTP range may start at (below it: well-known and registered services).
LOWEST_RTP_PORT = 1024


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (inclusive), or :data:`DEFAULT_EPHEMERAL`."""
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    return DEFAULT_EPHEMERAL


def free_udp_port(*, even: bool = False) -> int:
    """A UDP port on 127.0.0.1 the kernel just reported free (even when ``even``)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not even or port % 2 == 0:
            return port


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (SIP listens on both, docs/sip.md)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((HOST, port))
            except OSError:
                continue
        return port


def free_media_port() -> int:
    """An even, currently free, kernel-chosen UDP port for a caller's RTP (sipp's ``-mp``; sipp
    also binds port+2, so that must exist too)."""
    while True:
        port = free_udp_port(even=True)
        if port + 3 < 65536:
            return port


def rtp_port_bounds(size: int | None = None, *, needed: int = 2500) -> tuple[int, int]:
    """An RTP port range (inclusive) outside the kernel's ephemeral ports.

    Without ``size``: the whole region above the ephemeral range when it has room for
    ``needed`` even ports, else the region just below it (``2 * needed`` ports). With ``size``:
    a random ``size``-port slice of that region starting at an even port that is free on
    127.0.0.1 right now, so parallel test servers rarely share ports.
    """
    low, high = ephemeral_range()
    if 65535 - (high + 1) >= 2 * needed:
        region = (high + 1, 65535)
    else:
        region = (max(LOWEST_RTP_PORT, low - 2 * needed), low - 1)
    if size is None:
        return region
    first, last = region
    first += first % 2
    if last - first < size:
        raise ValueError(f"no room for {size} RTP ports in {first}-{last}")
    for _ in range(100):
        start = first + 2 * random.randrange(0, (last - first - size) // 2 + 1)
        if _udp_free(start):
            return start, start + size
    raise RuntimeError(f"no free even port found in {first}-{last}")


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def rtp_port_range(size: int | None = None, *, needed: int = 2500) -> str:
    """:func:`rtp_port_bounds` as a ``CONFSTREAM_RTP_PORTS`` value (``"low-high"``)."""
    low, high = rtp_port_bounds(size, needed=needed)
    return f"{low}-{high}"
