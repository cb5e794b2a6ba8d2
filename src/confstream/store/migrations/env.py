"""Alembic environment: runs on the connection handed over by ``open_store``.

``confstream.store.open_store`` calls ``alembic.command.upgrade`` inside
``AsyncConnection.run_sync`` and passes the synchronous connection in
``config.attributes["connection"]``. Running the ``alembic`` command line against
``store/alembic.ini`` also works: the URL then comes from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from confstream.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # command-line use with a synchronous URL
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url in alembic.ini or pass a connection")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
