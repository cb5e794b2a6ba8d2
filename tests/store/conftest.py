"""Databases for store tests: a real SQLite file and a real PostgreSQL server.

The PostgreSQL server is started once per test session from the binaries on PATH or under
``/usr/lib/postgresql/*/bin``, listening on 127.0.0.1 on a free port with its socket in a
temporary folder, and stopped at the end. ``initdb`` refuses to run as root, so as root the
data folder is given to an unprivileged user (``postgres``, else ``nobody``) and the tools run
through ``runuser``. When the server cannot be started the tests depending on it fail: they
never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confstream.tools.net import free_port


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True):
        return candidate
    raise RuntimeError(f"PostgreSQL tool {tool!r} not found on PATH or /usr/lib/postgresql")


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="confstream-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            entry = pwd.getpwnam(user)
            self.prefix = ["runuser", "-u", user, "--"]
            self.root.chmod(0o755)
            self.sockets.mkdir()
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)
        else:
            self.sockets.mkdir()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -F"
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self._run(
            _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
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
