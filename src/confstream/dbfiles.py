"""Owner-only permissions for the SQLite database (docs/operations.md, "Secrets").

The database holds every account's AuthToken in plaintext (it is the HMAC key of the callback
signatures, so it must be recoverable), so the file must not be readable by other users.
:func:`secure_sqlite_files` runs before the store opens the file:

* missing parent directories are created with mode 0700;
* the database file is created empty with mode 0600 when missing (SQLite takes an empty file
  as a new database), and an existing database, ``-wal``, ``-shm`` or ``-journal`` file is set
  to 0600;
* SQLite creates its ``-wal``, ``-shm`` and ``-journal`` files, whenever it (re)creates them,
  with the mode of the database file, so they are 0600 too. No process-wide ``umask`` is
  needed, and none is set (it would change the mode of every file the process creates).

PostgreSQL URLs and in-memory SQLite are left alone: there the database's own access control
protects the tokens.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_path(database_url: str) -> Path | None:
    """The file of a ``sqlite:`` URL (any driver), None for other databases and ``:memory:``."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)


def secure_sqlite_files(database_url: str) -> Path | None:
    """Prepare the SQLite file of ``database_url`` as the module docstring says; return its
    path (None when the URL is not a SQLite file). A file owned by someone else whose mode
    cannot be changed is logged, not fatal."""
    path = sqlite_path(database_url)
    if path is None:
        return None
    _make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            if candidate.exists() and candidate.stat().st_mode & 0o777 != FILE_MODE:
                candidate.chmod(FILE_MODE)
        except OSError as exc:
            log.warning("cannot make %s private (mode 0600): %s", candidate, exc)
    return path
