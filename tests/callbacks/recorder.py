"""A real HTTP server on 127.0.0.1 (Starlette + uvicorn, ephemeral port) that records requests.

Used by the callback tests and the stream tests. ``statuses`` scripts the answers: each request
to a path pops the next status from ``statuses[path]`` (200 once the list is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    form: dict[str, str]

    @property
    def params(self) -> dict[str, str]:
        """Form params for POST, query params for GET."""
        if self.method == "GET":
            return dict(parse_qsl(self.query, keep_blank_values=True))
        return self.form


@dataclass
class Recorder:
    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return self.base_url + path

    def for_path(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, pred: object, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        assert callable(pred)
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: bool(pred()))

    async def _handle(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        form = dict(parse_qsl(body.decode(), keep_blank_values=True)) if body else {}
        path = request.url.path
        rec = Recorded(
            method=request.method,
            path=path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            form=form,
        )
        script = self.statuses.get(path)
        status = script.pop(0) if script else 200
        self.requests.append(rec)
        async with self.arrived:
            self.arrived.notify_all()
        return PlainTextResponse("ok", status_code=status)


@contextlib.asynccontextmanager
async def http_recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = Starlette(
        routes=[Route("/{path:path}", rec._handle, methods=["GET", "POST"])],
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes only a flag)
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        rec.base_url = f"http://127.0.0.1:{port}"
        yield rec
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
