"""REST on any node of a cluster: requests about another node's conference are served by the
owner (docs/cluster.md, "Routing of a REST call").

:class:`ForwardToOwner` is ASGI middleware in front of the API, inside the body limit
(:class:`~confstream.api.limits.BodyLimit`). The choice: **HTTP forwarding**, not commands
over Redis. The request is sent as it came (method, path, query, body and the caller's
``Authorization`` header) to the owner's advertised HTTP endpoint, and the owner's answer is
returned as it is. The owner authenticates the caller itself against the shared database, so
forwarding grants nothing: a forwarded request is exactly one the caller could have sent to the
owner. Every REST rule (validation, errors, the JSON shapes) is applied once, by the node that
acts.

* Forwarded: ``POST`` and ``DELETE`` under ``…/Conferences/{ConferenceSid}`` (the conference,
  its participants, its streams) and ``…/Calls/{CallSid}``, when Redis names another live
  node as the owner (``confstream:conf:<sid>``, ``confstream:call:<sid>``). They change live
  media, which only the owner holds. ``…/Conferences/{FriendlyName}/Participants`` goes to
  the owner of the room (``confstream:room:<account>:<name>``), so that a dial-out into a
  named conference is placed by the node that hosts it.
* Served locally: every ``GET`` (the records are in the shared database: lists and fetches
  read it on any node), everything else, and a resource whose owner is this node, nobody, or a
  node whose lease has expired (its conferences are being ended by the sweep).
* A request carrying ``X-Confstream-Forwarded-By`` is never forwarded again (no loops, even
  while ownership moves). A forwarded answer carries ``X-Confstream-Node``: the node that
  acted.
* The owner not answering within ``callback_timeout`` (connection refused, timeout) gives 503
  with code 20503 (docs/errors.md): nothing was changed, the caller may retry.
* Internal HTTPS endpoints are verified against the system CAs and ``stream_ca_file``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from typing import Protocol
from urllib.parse import unquote

import httpx
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from confstream.api.common import JSONResponse
from confstream.api.errors import ApiError
from confstream.cluster import keys

log = logging.getLogger(__name__)

#: Set on forwarded requests (the forwarding node's id) and checked to never forward twice.
FORWARDED_BY = "x-confstream-forwarded-by"
#: Set on forwarded answers: the node that acted.
SERVED_BY = "x-confstream-node"
#: Methods that change live media and so go to the owner.
FORWARDED_METHODS = frozenset({"POST", "DELETE"})
#: Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1), plus the ones
#: httpx sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_TARGET = re.compile(
    r"^(?:/api/laml)?/2010-04-01/Accounts/([^/]+)/(Conferences|Calls)/([^/]+?)(?:\.json)?(?:/|$)"
)


class OwnerRouter(Protocol):
    node_id: str

    def forward_target(self, key: str) -> Awaitable[tuple[str, str] | None]:
        """(owner node id, its HTTP endpoint) when another live node owns ``key``, else
        None."""
        ...


def routing_keys(path: str) -> list[str]:
    """The Redis keys that may name the owner of what ``path`` is about, in order:
    ``confstream:conf:<sid>`` or ``confstream:call:<sid>``; for a conference also its room
    (``…/Conferences/{FriendlyName}/Participants`` names it by its FriendlyName). Empty for
    paths that are not about one conference or call."""
    match = _TARGET.match(path)
    if match is None:
        return []
    account, kind, sid = match.groups()
    if kind == "Calls":
        return [keys.call_key(sid)]
    return [keys.conference_key(sid), keys.room_key(account, unquote(sid))]


class ForwardToOwner:
    """See the module docstring. ``client`` is the HTTP client forwards go through."""

    def __init__(self, app: ASGIApp, router: OwnerRouter, client: httpx.AsyncClient) -> None:
        self.app = app
        self.router = router
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in FORWARDED_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        candidates = routing_keys(scope["path"])
        if FORWARDED_BY in headers:
            candidates = []
        target = None
        for key in candidates:
            try:
                target = await self.router.forward_target(key)
            except Exception as exc:
                log.warning("owner lookup of %s failed, serving locally: %s", key, exc)
                break
            if target is not None:
                break
        if target is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self._forward(scope, headers, b"".join(chunks), target, send)

    async def _forward(
        self,
        scope: Scope,
        headers: Headers,
        body: bytes,
        target: tuple[str, str],
        send: Send,
    ) -> None:
        owner, endpoint = target
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{endpoint}{path}" + (f"?{query}" if query else "")
        out_headers = [(k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]
        out_headers.append((FORWARDED_BY, self.router.node_id))
        client = scope.get("client")
        if client:
            out_headers.append(("x-forwarded-for", str(client[0])))
        try:
            answer = await self.client.request(
                scope["method"], url, headers=out_headers, content=body
            )
        except httpx.HTTPError as exc:
            log.warning("forward to node %s (%s) failed: %s", owner, endpoint, exc)
            error = ApiError(
                20503,
                "The node that owns this resource cannot be reached; nothing was changed, retry",
                status=503,
            )
            await JSONResponse(error.body(), status_code=503)(scope, _no_body, send)
            return
        response_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.multi_items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"
        ]
        content = answer.content
        response_headers.append((b"content-length", str(len(content)).encode()))
        response_headers.append((SERVED_BY.encode(), owner.encode("latin-1")))
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": response_headers,
            }
        )
        await send({"type": "http.response.body", "body": content})


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


__all__ = ["FORWARDED_BY", "SERVED_BY", "ForwardToOwner", "OwnerRouter", "routing_keys"]
