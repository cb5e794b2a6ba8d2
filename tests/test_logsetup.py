"""The redaction filter and logging set-up (confstream.logsetup): no secret in any log line."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from confstream import logsetup
from confstream.dbfiles import secure_sqlite_files, sqlite_path
from confstream.logsetup import SecretRegistry, redact, register_secret
from confstream.store import Account, open_store


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured at debug into a buffer; the previous root set-up restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_filters = {h: list(h.filters) for h in saved_handlers}
    names = ("httpx", "httpcore", "alembic", "sqlalchemy", "sqlalchemy.engine", "aiosqlite")
    saved_levels = {n: logging.getLogger(n).level for n in names}
    buf = io.StringIO()
    logsetup.configure("debug", stream=buf)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
            h.filters[:] = saved_filters[h]
        root.setLevel(saved_level)
        for n, level in saved_levels.items():
            logging.getLogger(n).setLevel(level)
        logsetup.SECRETS.clear()


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (
            "HTTP Request: POST http://alice:pw-9f8e7d@cb.example:8080/hook?sig=q-77aa"
            ' "HTTP/1.1 200"',
            ["alice", "pw-9f8e7d", "q-77aa"],
            ["http://***@cb.example:8080/hook?***", '"HTTP/1.1 200"'],
        ),
        (
            "> GET /media?token=tk-123456&x=1 HTTP/1.1",
            ["tk-123456", "x=1"],
            ["> GET /media?*** HTTP/1.1"],
        ),
        ("> Authorization: Bearer abc.def-ghi", ["abc.def-ghi"], ["Authorization: ***"]),
        (
            "headers=[(b'Host', b'h'), (b'Authorization', b'Basic QUM6dG9rZW4=')]",
            ["QUM6dG9rZW4"],
            ["(b'Host', b'h')", "(b'Authorization', b'***')"],
        ),
        ("sent bearer zzz-top-secret to the receiver", ["zzz-top-secret"], ["bearer ***"]),
        (
            "params {'auth_token': 'f00dfeed', 'password': 'hunter22'} url='wss://h/p?a=b'",
            ["f00dfeed", "hunter22", "a=b"],
            ["'auth_token': '***'", "'password': '***'", "wss://h/p?***"],
        ),
        ("ready: http=127.0.0.1:8080 sip=127.0.0.1:5060", [], ["http=127.0.0.1:8080"]),
    ],
)
def test_redact_removes_credentials_and_keeps_the_rest(
    text: str, gone: list[str], kept: list[str]
) -> None:
    out = redact(text)
    for secret in gone:
        assert secret not in out, out
    for piece in kept:
        assert piece in out, out


def test_registered_secrets_are_masked_anywhere_and_short_ones_ignored() -> None:
    reg = SecretRegistry()
    reg.add("0123456789abcdef0123456789abcdef")
    reg.add("0123456789abcdef")  # contained in the first: the longer one is removed whole
    reg.add("short")
    reg.add(None)
    assert "short" not in reg and len(reg) == 2
    assert reg.redact("x0123456789abcdef0123456789abcdefy") == "x***y"
    assert reg.redact("the short one 0123456789abcdef!") == "the short one ***!"


def test_registry_is_bounded_and_forgets_the_oldest() -> None:
    reg = SecretRegistry(limit=3)
    for n in range(5):
        reg.add(f"secret-number-{n}")
    assert len(reg) == 3
    assert "secret-number-0" not in reg and "secret-number-1" not in reg
    assert reg.redact("secret-number-1 secret-number-4") == "secret-number-1 ***"
    reg.add("secret-number-2")  # re-registering makes it the newest
    reg.add("secret-number-5")
    assert "secret-number-2" in reg and "secret-number-3" not in reg


def test_filter_applies_to_args_exceptions_and_library_loggers(captured: io.StringIO) -> None:
    register_secret("a1b2c3d4e5f6a7b8c9d0")
    logging.getLogger("some.library").info(
        "calling %s with %s",
        "https://u:pw-in-url@h.example/x?k=query-secret",
        "a1b2c3d4e5f6a7b8c9d0",
    )
    try:
        raise RuntimeError("token a1b2c3d4e5f6a7b8c9d0 rejected by wss://h/p?token=tb-99")
    except RuntimeError:
        logging.getLogger("confstream.test").exception("failed")
    logging.getLogger("websockets.client").debug("> Authorization: Bearer bt-0000-1111")
    out = captured.getvalue()
    for secret in ("pw-in-url", "query-secret", "a1b2c3d4e5f6a7b8c9d0", "tb-99", "bt-0000-1111"):
        assert secret not in out, out
    assert "calling https://***@h.example/x?*** with ***" in out
    assert "RuntimeError: token *** rejected by wss://h/p?***" in out
    assert "Traceback" in out


def test_record_seen_by_every_handler_is_redacted(captured: io.StringIO) -> None:
    """A second handler added to the root later (a library's or pytest's) is filtered too once
    configure() has run again, and the record it receives carries no args any more."""
    other = io.StringIO()
    extra = logging.StreamHandler(other)
    logging.getLogger().addHandler(extra)
    logsetup.configure("debug", stream=captured)
    logging.getLogger("x").warning("url %s", "http://me:pass-word-1@h/")
    assert "pass-word-1" not in other.getvalue() and "***@h/" in other.getvalue()
    assert "pass-word-1" not in captured.getvalue()
    # configure() again did not stack a second handler of ours
    ours = [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, logsetup.RedactingFilter) for f in h.filters)
    ]
    assert len(ours) == 2  # ours + the extra one, each filtered once
    assert captured.getvalue().count("pass-word") == 0
    assert captured.getvalue().count("url http://***@h/") == 1


@pytest.mark.parametrize(
    ("level", "httpx_debug", "rows"),
    [("info", False, False), ("debug", True, False)],
)
def test_library_levels(level: str, httpx_debug: bool, rows: bool) -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logsetup.configure(level, stream=buf)
        assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG) is httpx_debug
        assert logging.getLogger("httpcore").isEnabledFor(logging.INFO) is httpx_debug
        assert logging.getLogger("sqlalchemy.engine").isEnabledFor(logging.DEBUG) is rows
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        logsetup.configure("loud")


async def test_store_at_debug_logs_statements_without_parameters_or_rows(
    captured: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with no secret registered, SQLAlchemy at debug shows statements only."""
    monkeypatch.setattr(logsetup.SECRETS, "add", lambda secret: None)
    store = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        account = await store.create_account(friendly_name="x")
        await store.get_account(account.sid)
        await store.list_accounts()
    finally:
        await store.close()
    out = captured.getvalue()
    assert "INSERT INTO accounts" in out and "SELECT accounts.sid" in out
    assert "parameters hidden" in out
    assert account.auth_token not in out
    assert len(logsetup.SECRETS) == 0


async def test_tokens_of_accounts_loaded_or_created_are_registered(tmp_path: Path) -> None:
    logsetup.watch_account_tokens(Account)
    logsetup.watch_account_tokens(Account)  # idempotent
    store = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        account = await store.create_account(friendly_name="x")
        assert account.auth_token in logsetup.SECRETS
        logsetup.SECRETS.clear()
        again = await store.get_account(account.sid)
        assert again is not None and again.auth_token in logsetup.SECRETS
    finally:
        await store.close()
        logsetup.SECRETS.clear()


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "new" / "deeper" / "confstream.db"
    assert secure_sqlite_files(f"sqlite:///{db}") == db
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.parent.parent.stat().st_mode) == 0o700
    # an existing world-readable database and WAL (an older install) are tightened
    old = tmp_path / "old.db"
    for p in (old, tmp_path / "old.db-wal"):
        p.write_bytes(b"")
        os.chmod(p, 0o644)
    secure_sqlite_files(f"sqlite+aiosqlite:///{old}")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "old.db-wal").stat().st_mode) == 0o600
    assert sqlite_path("postgresql://u:p@h/db") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert secure_sqlite_files("postgresql://u:p@h/db") is None


def file_modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}


async def test_wal_and_shm_created_later_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "confstream.db"
    url = f"sqlite:///{db}"
    secure_sqlite_files(url)
    for _ in range(2):  # the WAL is removed at the last close and made again at the next open
        store = await open_store(url)
        try:
            await store.create_account(friendly_name="y")
            modes = file_modes(tmp_path)
            assert {"confstream.db", "confstream.db-wal", "confstream.db-shm"} <= set(modes)
            assert set(modes.values()) == {0o600}, modes
        finally:
            await store.close()
