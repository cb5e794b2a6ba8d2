"""Logging set-up: one place, and no secret in any log line at any level (docs/operations.md,
"Secrets").

:func:`configure` installs a handler on the root logger carrying a :class:`RedactingFilter`.
Every record that reaches a root handler, from our loggers and from libraries' (httpx,
httpcore, websockets, SQLAlchemy, aiosqlite, alembic, uvicorn, asyncio), goes through the
filter, which formats the record (``record.getMessage()``: records format lazily, so the
secret may sit in ``args`` rather than ``msg``), removes secrets from the text, and stores the
result back as ``msg`` with no ``args``. Tracebacks (``exc_text``) and ``stack_info`` are
redacted too. What is removed (:func:`redact`):

* URL user info: ``scheme://user:password@host`` becomes ``scheme://***@host``;
* URL query strings, with or without a scheme (``wss://h/p?token=x``, an HTTP request line
  ``GET /p?token=x HTTP/1.1``): the query becomes ``?***``;
* ``Authorization:``/``Proxy-Authorization:`` header values (also in the ``(b'Authorization',
  b'...')`` form of header lists) and ``Bearer``/``Basic`` credentials anywhere;
* ``key=value``/``key: value`` pairs whose key names a password, secret, token or API key;
* every string registered with :func:`register_secret` (at least :data:`MIN_SECRET_LEN`
  characters): the AuthTokens of the accounts this process has seen (registered by
  :func:`watch_account_tokens` whenever an account row is loaded or written) and stream bearer
  tokens. Each is replaced by ``***``.

Library loggers (:func:`configure`): ``httpx``/``httpcore`` at WARNING unless the level is
``debug`` (even then filtered); ``sqlalchemy`` at WARNING unless ``debug``, and then
``sqlalchemy.engine`` at INFO at most (statements only: no result rows; the engine is created
with ``hide_parameters=True`` so parameters are never in statements' logs or errors);
``aiosqlite`` at INFO at most (its debug lines print every call with its parameters);
``websockets`` debug lines (frames and handshake headers) go through the filter like the rest;
``alembic`` at WARNING unless ``debug``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any, TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
#: Shorter strings are not registered: replacing them everywhere would mangle ordinary text.
MIN_SECRET_LEN = 8
#: Registered secrets kept at most (the oldest are forgotten first).
MAX_SECRETS = 1024

_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<authority>[^\s/?#'\"<>\\]*)"
    r"(?P<path>[^\s?#'\"<>\\]*)"
    r"(?P<query>\?[^\s#'\"<>\\]*)?"
)
# A path with a query string but no scheme: HTTP request lines, ``path='/p?x'``, b'/p?x'.
_PATH_QUERY = re.compile(r"(?m)(?P<lead>(?:^|[\s'\"=(\[,]))(?P<path>/[^\s?#'\"<>]*)\?[^\s#'\"<>]+")
_AUTH_HEADER = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization\b['\"]?)(?P<sep>\s*[:=,]\s*(?:(?-i:b)?['\"])?)"
    r"(?P<value>[^\r\n'\"]+)",
    re.IGNORECASE,
)
_SCHEME_CREDENTIAL = re.compile(
    r"\b(?P<scheme>bearer|basic)(?P<sep>\s+)(?P<value>[A-Za-z0-9._~+/\-]+=*)", re.IGNORECASE
)
_KEYED_SECRET = re.compile(
    r"(?P<key>\b[\w\-]*(?:password|passwd|secret|token|api[_\-]?key)['\"]?)"
    r"(?P<sep>\s*[=:]\s*(?:(?-i:b)?['\"])?)(?P<value>[^\s'\",;&})\]]+)",
    re.IGNORECASE,
)


class SecretRegistry:
    """Strings that must never appear in a log line, at most ``limit`` of them (default
    :data:`MAX_SECRETS`; beyond that the least recently registered is forgotten, so a server
    running for months does not grow it without bound: the patterns of :func:`redact` still
    catch a forgotten secret in a URL or header). Thread-safe: aiosqlite and SQLAlchemy log
    from worker threads."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit or MAX_SECRETS
        self._lock = threading.Lock()
        self._secrets: dict[str, None] = {}  # insertion order = age
        # Longest first, so a secret containing another is removed whole.
        self._ordered: tuple[str, ...] = ()

    def add(self, secret: str | None) -> None:
        """Register ``secret`` (again: it becomes the newest); None, empty and short strings
        (< :data:`MIN_SECRET_LEN`) are ignored."""
        if not secret or len(secret) < MIN_SECRET_LEN:
            return
        with self._lock:
            known = secret in self._secrets
            self._secrets.pop(secret, None)
            self._secrets[secret] = None
            if known:
                return
            while len(self._secrets) > self.limit:
                del self._secrets[next(iter(self._secrets))]
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def discard(self, secret: str) -> None:
        with self._lock:
            if self._secrets.pop(secret, 0) is None:
                self._ordered = tuple(s for s in self._ordered if s != secret)

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._ordered = ()

    def __contains__(self, secret: object) -> bool:
        return secret in self._secrets

    def __len__(self) -> int:
        return len(self._secrets)

    def redact(self, text: str) -> str:
        # Substring tests run at C speed; a regex alternation of hundreds of literals does not.
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


#: The process-wide registry used by :func:`redact` and the log filter.
SECRETS = SecretRegistry()


def register_secret(secret: str | None) -> None:
    """Never log ``secret`` (an AuthToken, a bearer token...): see :class:`SecretRegistry`."""
    SECRETS.add(secret)


def _url_sub(m: re.Match[str]) -> str:
    authority = m["authority"]
    if "@" in authority:
        authority = MASK + "@" + authority.rsplit("@", 1)[1]
    query = "?" + MASK if m["query"] else ""
    return m["scheme"] + authority + m["path"] + query


def redact(text: str) -> str:
    """``text`` without URL user info, query strings, Authorization values, bearer/basic
    credentials, password/secret/token values and registered secrets (module docstring)."""
    text = SECRETS.redact(text)
    if "://" in text:
        text = _URL.sub(_url_sub, text)
    if "?" in text:
        text = _PATH_QUERY.sub(lambda m: f"{m['lead']}{m['path']}?{MASK}", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m['scheme']}{m['sep']}{MASK}", text)
    return _KEYED_SECRET.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites every record it sees so that it carries no secret (see :func:`redact`).

    Attach it to handlers (a handler filter sees records of every logger that propagate to the
    handler; a logger filter would only see that logger's own records). Never drops a record.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what can be shown, without args
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatter.format would fill exc_text after the filters ran; fill it now.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redacting_handlers() -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, RedactingFilter) for f in h.filters)
    ]


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Set up logging for the process: one root handler (``stream``, default stderr) with the
    redaction filter, ``level`` (debug, info, warning or error) on the root, and the library
    loggers as the module docstring says. Idempotent: calling it again replaces our handler."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in _redacting_handlers():
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    # Handlers someone else put on the root (pytest's capture, for one) are filtered too.
    for other in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in other.filters):
            other.addFilter(RedactingFilter())
    root.setLevel(numeric)
    debug = numeric <= logging.DEBUG
    quiet = logging.NOTSET if debug else logging.WARNING
    for name in ("httpx", "httpcore", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(quiet)
    # Result rows (logged at DEBUG) would carry AuthTokens and stream URLs: never below INFO.
    logging.getLogger("sqlalchemy.engine").setLevel(
        max(numeric, logging.INFO) if debug else logging.WARNING
    )
    # aiosqlite's DEBUG lines print each call with its SQL parameters.
    logging.getLogger("aiosqlite").setLevel(max(numeric, logging.INFO))


def _register_loaded(target: Any, *_: Any) -> None:
    register_secret(getattr(target, "auth_token", None))


def _register_set(_target: Any, value: object, *_: Any) -> None:
    if isinstance(value, str):
        register_secret(value)


def watch_account_tokens(account_model: Any) -> None:
    """Register the AuthToken of every account row this process loads, refreshes or writes
    (SQLAlchemy ORM events on ``account_model``, the mapped class with an ``auth_token``
    column: :class:`confstream.store.models.Account`, passed in so that this module stays below
    the store), so that a token that slips into a message, an exception or a library's log is
    masked. Idempotent."""
    from sqlalchemy import event

    targets: list[tuple[Any, str, Any]] = [
        (account_model, "load", _register_loaded),
        (account_model, "refresh", _register_loaded),
        (account_model.auth_token, "set", _register_set),
    ]
    for target, name, fn in targets:
        if not event.contains(target, name, fn):
            event.listen(target, name, fn)
