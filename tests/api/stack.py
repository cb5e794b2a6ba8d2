"""A real stack for API and services tests: SQLite file store, real Engine, real
StreamManager, Services and the Starlette app."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.applications import Starlette

from confstream.api.routes import create_api
from confstream.conference.base import Frame
from confstream.conference.engine import Engine
from confstream.services import Services
from confstream.settings import Settings
from confstream.store import Account, Store, open_store
from confstream.streams.manager import StreamManager


class FakeCallParticipant:
    """An in-process participant joining through Services.join as the SIP edge does; on
    hangup it leaves like a SIP dialog ending with BYE."""

    def __init__(self, call_sid: str, services: Services) -> None:
        self.call_sid = call_sid
        self.muted = False
        self.hold = False
        self.services = services
        self.hangups: list[str] = []
        self.dtmf: list[tuple[str, int]] = []
        self.frames_heard = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def read_frame(self) -> Frame | None:
        return np.full(160, 1000, dtype=np.int16)

    def write_frame(self, frame: Frame) -> None:
        self.frames_heard += 1

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf.append((digit, duration_ms))

    def hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        task = asyncio.get_running_loop().create_task(self.services.leave(self.call_sid, "bye"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the leave tasks its hang-ups started."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass
class Stack:
    settings: Settings
    store: Store
    engine: Engine
    services: Services
    streams: StreamManager
    app: Starlette
    account: Account
    other: Account
    participants: dict[str, FakeCallParticipant] = field(default_factory=dict)

    def auth(self, account: Account | None = None) -> tuple[str, str]:
        account = account or self.account
        return (account.sid, account.auth_token)

    def basic(self, account: Account | None = None) -> dict[str, str]:
        sid, token = self.auth(account)
        raw = base64.b64encode(f"{sid}:{token}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    async def join(self, call_sid: str, room: str, account: Account | None = None) -> str:
        participant = FakeCallParticipant(call_sid, self.services)
        self.participants[call_sid] = participant
        return await self.services.join((account or self.account).sid, room, participant)


def make_engine(settings: Settings) -> Engine:
    return Engine()


@asynccontextmanager
async def open_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Store file, engine, stream manager, services, API app and two accounts; torn down in
    order at exit."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        allowed_networks=["127.0.0.0/8"],
        stream_connect_timeout=30.0,
    )
    store = await open_store(settings.database_url)
    engine = make_engine(settings)
    await engine.start()
    services = Services(settings, store, engine)
    streams = StreamManager(settings, engine, services.on_stream_status)
    services.attach_streams(streams)
    account = await store.create_account("main")
    other = await store.create_account("other")
    app = create_api(services)
    app.state.ready = True
    stack: Stack | None = None
    try:
        stack = Stack(settings, store, engine, services, streams, app, account, other)
        yield stack
    finally:
        await services.shutdown()
        # the fake participants' hang-ups leave in tasks of their own: let them finish
        # before the store closes (else their session's connection is never returned)
        for participant in list(stack.participants.values()) if stack else ():
            await participant.settle()
        await streams.close(1.0)
        await engine.stop()
        await store.close()
