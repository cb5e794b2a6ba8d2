"""Alembic migrations of the store, run programmatically by :func:`confstream.store.open_store`."""
