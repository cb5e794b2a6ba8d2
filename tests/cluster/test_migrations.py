"""Several nodes starting together on one PostgreSQL database migrate it once (advisory lock,
docs/cluster.md): a real PostgreSQL server, concurrent ``open_store`` calls."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from confstream.store import open_store
from confstream.tools.cluster import PostgresServer


async def test_nodes_starting_together_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        async with stores[0].session() as session:
            versions = list(await session.scalars(text("SELECT version_num FROM alembic_version")))
        assert len(versions) == 1
        # every node sees the schema and the others' records: SIDs are UUIDs
        accounts = [await store.create_account() for store in stores]
        assert len({a.sid for a in accounts}) == 4
        listed = await stores[3].list_accounts()
        assert {a.sid for a in listed} == {a.sid for a in accounts}
    finally:
        for store in stores:
            await store.close()
