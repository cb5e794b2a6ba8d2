"""Real peers for stream tests: a TLS WebSocket receiver (trustme CA), raw TCP/TLS servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers

from confstream.tools.tls import Tls

__all__ = [
    "LOOPBACK",
    "Behaviour",
    "Conn",
    "RawServer",
    "Receiver",
    "Tls",
    "raw_server",
    "ws_receiver",
]

LOOPBACK = ["127.0.0.0/8", "::1/128"]


@dataclass
class Conn:
    """One accepted WebSocket connection, as the receiver saw it."""

    ws: ServerConnection
    headers: Headers
    path: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))


Behaviour = Callable[[Conn], Awaitable[None]]


@dataclass
class Receiver:
    """A TLS WebSocket server on 127.0.0.1. ``behaviour`` runs per connection (default: read
    and record every message until the client closes)."""

    port: int = 0
    conns: list[Conn] = field(default_factory=list)
    behaviour: Behaviour | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/media", host: str = "localhost") -> str:
        return f"wss://{host}:{self.port}{path}"

    async def wait_for(self, pred: Callable[[], object], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: bool(pred()))

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def record(self, conn: Conn) -> None:
        """Default behaviour: record until closed."""
        with contextlib.suppress(Exception):
            async for message in conn.ws:
                assert isinstance(message, str), "stream messages must be text frames"
                conn.raw.append(message)
                conn.messages.append(json.loads(message))
                await self.notify()

    async def read_one(self, conn: Conn) -> dict[str, Any]:
        message = await conn.ws.recv()
        assert isinstance(message, str)
        conn.raw.append(message)
        obj: dict[str, Any] = json.loads(message)
        conn.messages.append(obj)
        await self.notify()
        return obj


@contextlib.asynccontextmanager
async def ws_receiver(
    tls: Tls, behaviour: Behaviour | None = None, *, rcvbuf: int | None = None, **kw: Any
) -> AsyncIterator[Receiver]:
    """``rcvbuf`` shrinks the kernel receive buffer (a receiver that stops reading then pushes
    back on the sender within a few kilobytes)."""
    rec = Receiver(behaviour=behaviour)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Conn(ws, ws.request.headers, ws.request.path)
        rec.conns.append(conn)
        await rec.notify()
        try:
            await (rec.behaviour or rec.record)(conn)
        finally:
            conn.closed.set()
            await rec.notify()

    if rcvbuf is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))
        kw["sock"] = sock
    else:
        kw["host"], kw["port"] = "127.0.0.1", 0
    kw.setdefault("close_timeout", 1)
    async with serve(handler, ssl=tls.server_ctx, **kw) as server:
        rec.port = next(iter(server.sockets)).getsockname()[1]
        yield rec


@dataclass
class RawServer:
    port: int
    accepted: int = 0


@contextlib.asynccontextmanager
async def raw_server(
    answer: bytes | None, ssl_ctx: ssl.SSLContext | None = None, *, drop: bool = False
) -> AsyncIterator[RawServer]:
    """A TCP (or TLS) server on 127.0.0.1 that counts connections; it reads the request head
    and writes ``answer`` (or stays silent / drops the connection)."""
    info = RawServer(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.accepted += 1
        try:
            if drop:
                writer.transport.abort()
                return
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await asyncio.sleep(30)
            else:
                writer.write(answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_ctx)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
