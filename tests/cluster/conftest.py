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

#: Failed digest attempts from one address that block it (CONFSTREAM_SIP_AUTH_MAX_FAILURES).
GUESSES_BEFORE_BLOCK = 3


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


@pytest.fixture(scope="package")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[LocalCluster]:
    """Two nodes behind Kamailio, trusting the test CA for streams, started once for the
    package (each test uses an account of its own). Three failed digest attempts block a
    caller's address (tests/cluster/test_cluster_sip.py)."""
    local = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        nodes=2,
        env={
            "CONFSTREAM_STREAM_CA_FILE": str(tls.ca_file),
            "CONFSTREAM_SIP_AUTH_MAX_FAILURES": str(GUESSES_BEFORE_BLOCK),
        },
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster(shared_cluster: LocalCluster) -> LocalCluster:
    """The shared cluster with every node running and routed to (a test before may have
    killed or stopped one)."""
    shared_cluster.heal()
    return shared_cluster
