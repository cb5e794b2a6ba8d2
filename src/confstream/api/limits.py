"""The request body limit of the REST API (docs/api.md, Conventions; docs/operations.md).

:class:`BodyLimit` is ASGI middleware in front of every route, so it holds before
authentication and routing:

* a ``Content-Length`` over the limit is answered 413 (code 20413) at once, without reading
  a byte of the body;
* otherwise (and for chunked bodies, which have no length) the body is read as it arrives and
  counted; the first chunk that takes the total over the limit ends the reading with the same
  413. At most ``max_bytes`` bytes are ever kept, whatever the client sends.

A body within the limit is handed to the application unchanged. The 413 answer carries
``Connection: close``: the rest of the body is never read, so the connection cannot be reused.

The number of form fields is bounded where the body is parsed
(:func:`confstream.api.common.form`).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from confstream.api.common import JSONResponse
from confstream.api.errors import too_large


class BodyLimit:
    """Refuse HTTP request bodies over ``max_bytes`` with 413 (20413); see the module doc."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = too_large(f"The request body is larger than {self.max_bytes} bytes")
        response = JSONResponse(
            error.body(), status_code=error.http_status, headers={"Connection": "close"}
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                too_long = int(declared) > self.max_bytes
            except ValueError:
                too_long = True  # the HTTP server normally refuses these first
            if too_long:
                await self._refuse(scope, receive, send)
                return

        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: the client went away before the body ended
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


__all__ = ["BodyLimit"]
