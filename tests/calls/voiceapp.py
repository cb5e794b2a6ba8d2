"""A real voice webhook application for tests: Starlette on uvicorn, in a thread of its own
(so any test, sync or async, can use it), answering with documents built by the official
``twilio`` SDK's ``VoiceResponse``.

Every request is recorded (path, method, the full URL, the parameters, the headers) so tests
can check what confstream sent, and validate its signature with the SDK's
``RequestValidator``. ``/voice`` answers according to the ``To`` user (the number dialled):
``routes`` maps that user to a function building the answer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from confstream.media.analysis import tone
from confstream.media.wav import wav_bytes

XML = "application/xml"


@dataclass(frozen=True)
class Recorded:
    path: str
    method: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]

    def signed_by(self, auth_token: str) -> bool:
        """The SDK's RequestValidator accepts the request (both signature headers agree)."""
        signature = self.headers.get("x-twilio-signature", "")
        if signature != self.headers.get("x-signalwire-signature"):
            return False
        validator = RequestValidator(auth_token)
        params = self.params if self.method == "POST" else {}
        return bool(validator.validate(self.url, params, signature))


Answer = Callable[[Recorded], Response | str]


def to_user(params: dict[str, str]) -> str:
    """``sip:gather@127.0.0.1:5060`` -> ``gather``."""
    to = params.get("To", "")
    return unquote(to.split(":", 1)[-1].split("@", 1)[0])


@dataclass
class VoiceApp:
    """See the module docstring. ``base`` is ``http://127.0.0.1:PORT`` once started."""

    routes: dict[str, Answer] = field(default_factory=dict)
    paths: dict[str, Answer] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    tone_hz: float = 1000.0
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def _handle(self, request: Request) -> Response:
        if request.method == "POST":
            body = (await request.body()).decode()
            params = dict(parse_qsl(body, keep_blank_values=True))
        else:
            params = dict(request.query_params)
        recorded = Recorded(
            request.url.path,
            request.method,
            str(request.url),
            params,
            {k.lower(): v for k, v in request.headers.items()},
        )
        self.requests.append(recorded)
        path = request.url.path
        if path == "/tone.wav":
            pcm = tone(self.tone_hz, 3.0, amplitude=12000)
            return Response(wav_bytes(pcm), media_type="audio/wav")
        if path == "/slow":
            await asyncio.sleep(8)
            return Response("<Response/>", media_type=XML)
        answer: Answer | None = self.paths.get(path)
        if answer is None and path == "/voice":
            answer = self.routes.get(to_user(params))
        if answer is None:
            return PlainTextResponse("no such route", status_code=404)
        result = answer(recorded)
        if isinstance(result, Response):
            return result
        return Response(result, media_type=XML)

    def start(self) -> VoiceApp:
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])],
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the voice app did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def of(self, path: str, **params: str) -> list[Recorded]:
        """The requests to ``path`` whose parameters include ``params``."""
        return [
            r
            for r in list(self.requests)
            if r.path == path and all(r.params.get(k) == v for k, v in params.items())
        ]

    def wait_for(self, path: str, within: float = 15.0, **params: str) -> Recorded:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = self.of(path, **params)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no request to {path} with {params}: {self.requests}")


def parameters(recorded: Recorded) -> dict[str, Any]:
    return dict(recorded.params)
