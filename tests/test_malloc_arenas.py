"""The glibc arena cap ``confstream serve`` applies at start-up (docs/operations.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from confstream.app import limit_malloc_arenas


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
