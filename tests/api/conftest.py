"""Fixtures for API tests: the real stack (see stack.py), an in-process client and a real
uvicorn server on an ephemeral port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from .stack import Stack, open_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(tmp_path) as opened:
        yield opened


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """In-process client (httpx ASGITransport) authenticated as the main account."""
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=stack.auth()
    ) as c:
        yield c


@pytest.fixture
async def server_url(stack: Stack) -> AsyncIterator[str]:
    """The app served by a real uvicorn server on 127.0.0.1 and an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(stack.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
