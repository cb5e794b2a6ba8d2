"""Databases for store tests: a real SQLite file and a real PostgreSQL server.

The PostgreSQL server (:class:`confstream.tools.cluster.PostgresServer`, the one ``make
cluster`` starts) is started once per test session and stopped at the end. When it cannot be
started the tests depending on it fail: they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from confstream.tools.cluster import PostgresServer


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    try:
        server.start()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log = server.root / "log"
        if log.exists():
            detail += log.read_bytes()
        shutil.rmtree(server.root, ignore_errors=True)
        message = detail.decode(errors="replace")
        raise RuntimeError(f"could not start PostgreSQL: {exc}\n{message}") from exc
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
