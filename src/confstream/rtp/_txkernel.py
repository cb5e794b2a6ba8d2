"""The compiled kernel of :mod:`confstream.rtp.txlane` (imported only when the lane is used:
importing numba takes a noticeable fraction of a second). See that module's docstring."""

from __future__ import annotations

from typing import Any

from numba import njit, types

#: libc's send(2) and errno, as external symbols: a kernel that calls ctypes function pointers
#: cannot be cached (their addresses change per process); symbols are resolved at load time.
_send = types.ExternalFunction(
    "send", types.intp(types.int32, types.voidptr, types.uintp, types.int32)
)
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.int32)())

#: send(2) flag: never block (the sockets are non-blocking anyway).
_MSG_DONTWAIT = 0x40


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def send_rows(
    codes: Any,
    row_keys: Any,
    keys: Any,
    enabled: Any,
    fds: Any,
    seq: Any,
    ts: Any,
    ssrc: Any,
    first: Any,
    sent: Any,
    pkt: Any,
    done: Any,
    errs: Any,
) -> tuple[int, int]:
    """Build and send row ``i`` of ``codes`` (``(n, 160)`` µ-law) on the slot named by
    ``row_keys[i]`` when that key is current and the slot enabled: RTP header (V=2, marker on
    the first audio packet, PT 0, the slot's sequence number, timestamp and SSRC) and the 160
    codes, one ``send`` each. Per row, ``done`` is 1 for a row taken (sent, or dropped by a
    failed send with its errno in ``errs``), else 0. Returns (sent, failed)."""
    n = row_keys.shape[0]
    nslots = keys.shape[0]
    ok = 0
    failed = 0
    for i in range(n):
        done[i] = 0
        errs[i] = 0
        k = row_keys[i]
        if k < 0:
            continue
        s = k & 0xFFFFFF  # txlane.SLOT_BITS
        if s >= nslots or keys[s] != k or enabled[s] == 0:
            continue
        q = seq[s]
        t = ts[s]
        c = ssrc[s]
        pkt[0] = 0x80
        pkt[1] = 0x80 if first[s] != 0 else 0
        pkt[2] = (q >> 8) & 0xFF
        pkt[3] = q & 0xFF
        pkt[4] = (t >> 24) & 0xFF
        pkt[5] = (t >> 16) & 0xFF
        pkt[6] = (t >> 8) & 0xFF
        pkt[7] = t & 0xFF
        pkt[8] = (c >> 24) & 0xFF
        pkt[9] = (c >> 16) & 0xFF
        pkt[10] = (c >> 8) & 0xFF
        pkt[11] = c & 0xFF
        for j in range(160):
            pkt[12 + j] = codes[i, j]
        first[s] = 0
        seq[s] = (q + 1) & 0xFFFF
        ts[s] = (t + 160) & 0xFFFFFFFF
        sent[s] += 1
        done[i] = 1
        r = _send(fds[s], pkt.ctypes.data, 172, _MSG_DONTWAIT)
        if r < 0:
            errs[i] = _errno_location()[0]
            failed += 1
        else:
            ok += 1
    return ok, failed
