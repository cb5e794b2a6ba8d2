"""Fixtures for the cluster tests: real redis-server, PostgreSQL, Kamailio and confstream nodes
(:mod:`confstream.tools.cluster`). Nothing is mocked; when a part cannot start, the tests
depending on it fail (they never skip)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from confstream.tools.cluster import LocalCluster, PostgresServer, RedisServer
from confstream.tools.tls import Tls


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path, tls: Tls) -> Iterator[LocalCluster]:
    """Two nodes behind Kamailio, trusting the test CA for streams."""
    local = LocalCluster(
        tmp_path / "cluster", nodes=2, env={"CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file)}
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()
