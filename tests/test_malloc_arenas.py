"""The glibc malloc settings ``confstream serve`` applies at start-up (docs/operations.md,
"Memory"): the arena cap and the fixed mmap threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from confstream.app import fix_mmap_threshold, limit_malloc_arenas
from confstream.settings import Settings


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False


def test_applied_on_glibc_linux() -> None:
    # in a child, so this test process keeps its own malloc settings
    code = (
        "import os; os.environ.pop('MALLOC_ARENA_MAX', None)\n"
        "from confstream.app import limit_malloc_arenas\n"
        "print(limit_malloc_arenas())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_mmap_threshold_on_by_default_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONFSTREAM_MALLOC_MMAP_THRESHOLD", raising=False)
    assert Settings().malloc_mmap_threshold == 256 * 1024
    monkeypatch.setenv("CONFSTREAM_MALLOC_MMAP_THRESHOLD", "0")
    assert Settings().malloc_mmap_threshold == 0
    assert fix_mmap_threshold(0) is False  # returns before touching malloc


def test_mmap_threshold_left_to_the_environment_and_off_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each case returns before calling mallopt, so this process's malloc is untouched
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold(256 * 1024) is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert fix_mmap_threshold(256 * 1024) is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert fix_mmap_threshold(256 * 1024) is False


# In a child process: what a large NumPy temporary does (a 2 MiB block, mmapped, freed: glibc's
# dynamic threshold rises to 2 MiB), then 64 blocks of 256 KiB like uvloop's TLS read buffer
# (one per stream), each written through, then all freed. Prints how many blocks were in the
# heap and in mappings of their own, and how many of the latter are still mapped after the
# free. (A few blocks may reuse free space start-up left in the heap: counts, not all-or-none.)
_CHILD = """
import ctypes, json, os, sys
for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
    os.environ.pop(name, None)
from confstream.app import fix_mmap_threshold
applied = fix_mmap_threshold(256 * 1024) if sys.argv[1] == "fixed" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mappings(addrs):
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi, fields[5] if len(fields) > 5 else "anonymous"))
    return [next((name for lo, hi, name in spans if lo <= a < hi), None) for a in addrs]

big = libc.malloc(2 << 20)
ctypes.memset(big, 1, 2 << 20)
libc.free(big)
bufs = [libc.malloc(256 * 1024) for _ in range(64)]
for b in bufs:
    ctypes.memset(b, 1, 256 * 1024)
where = mappings(bufs)
own = [b for b, w in zip(bufs, where) if w == "anonymous"]
for b in bufs:
    libc.free(b)
print(json.dumps({
    "applied": applied,
    "heap": where.count("[heap]"),
    "own": len(own),
    "own_mapped_after_free": sum(w is not None for w in mappings(own)),
}))
"""


def _child(mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_256_kib_buffers_get_their_own_mappings_and_go_back_when_freed() -> None:
    # without the setting the buffers land in the heap (written pages stay after the free)
    plain = _child("dynamic")
    assert plain["heap"] >= 56
    # with it, they are mappings of their own, unmapped (gone from RSS) when freed
    fixed = _child("fixed")
    assert fixed["applied"] is True
    assert fixed["own"] >= 56
    assert fixed["own_mapped_after_free"] == 0
