"""Storage: tables, repositories and migrations (SQLite by default, PostgreSQL).

Use :func:`open_store` to get a :class:`Store`; see :mod:`confstream.store.store`.
"""

from __future__ import annotations

from confstream.errors import NameInUse
from confstream.store.models import (
    Account,
    Call,
    Conference,
    Participant,
    Stream,
    StreamStatusChange,
    utcnow,
)
from confstream.store.store import (
    CallFilter,
    ConferenceFilter,
    DateFilter,
    Store,
    async_database_url,
    new_auth_token,
    new_sid,
    open_store,
)

__all__ = [
    "Account",
    "Call",
    "CallFilter",
    "Conference",
    "ConferenceFilter",
    "DateFilter",
    "NameInUse",
    "Participant",
    "Store",
    "Stream",
    "StreamStatusChange",
    "async_database_url",
    "new_auth_token",
    "new_sid",
    "open_store",
    "utcnow",
]
