"""Node membership in Redis: registration, heartbeat lease, dead-node detection and sweeping
(docs/cluster.md, "What lives in Redis" and "Failures").

* A node registers by writing its hash ``confstream:node:<id>`` (:class:`NodeInfo`: boot id,
  internal HTTP endpoint, SIP and media addresses, state, load) with a lease of
  ``cluster_lease`` seconds (default 5), and adds its id to ``confstream:nodes``.
* Every ``cluster_heartbeat`` seconds (default 1) one Lua script (:data:`keys.HEARTBEAT`)
  refreshes the hash and its lease and renews the lease of every key the node owns; it
  returns the keys the node lost (their lease ran out while it could not renew, and another
  node took them), which the node must give up.
* A node in ``confstream:nodes`` whose hash is gone is dead. One survivor, holding
  ``confstream:sweep:<id>`` (``SET NX``, 60 s), reads the dead node's owned keys, has its
  conferences ended (:mod:`confstream.cluster.recovery`), deletes the keys that still name it
  and forgets the node. A restarted node sweeps its own previous incarnation the same way
  before it registers again.
* A node stopping gracefully deletes its hash and leaves the set.

Nothing here runs on the 20 ms clock: the heartbeat and the sweeps are tasks of their own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from confstream.cluster import keys

log = logging.getLogger(__name__)

#: How long the sweep of one dead node may hold its lock (ms).
SWEEP_LOCK_MS = 60_000

#: ``on_lost(node_id, conference_sids, call_sids)``: end what a lost node held.
OnLost = Callable[[str, list[str], list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Load:
    """What a node carries now (published on every heartbeat)."""

    participants: int = 0
    streams: int = 0
    conferences: int = 0
    cpu: float = 0.0


@dataclass(frozen=True)
class NodeInfo:
    """One node as published in its hash."""

    node_id: str
    boot: str
    http: str
    sip: str
    media: str
    state: str = keys.STATE_ACTIVE
    load: Load = Load()

    def fields(self) -> dict[str, str]:
        return {
            "id": self.node_id,
            "boot": self.boot,
            "http": self.http,
            "sip": self.sip,
            "media": self.media,
            "state": self.state,
            "participants": str(self.load.participants),
            "streams": str(self.load.streams),
            "conferences": str(self.load.conferences),
            "cpu": f"{self.load.cpu:.1f}",
        }

    @classmethod
    def from_fields(cls, node_id: str, data: dict[str, str]) -> NodeInfo:
        def number(name: str) -> int:
            try:
                return int(data.get(name, "0"))
            except ValueError:
                return 0

        try:
            cpu = float(data.get("cpu", "0"))
        except ValueError:
            cpu = 0.0
        return cls(
            node_id=node_id,
            boot=data.get("boot", ""),
            http=data.get("http", ""),
            sip=data.get("sip", ""),
            media=data.get("media", ""),
            state=data.get("state", keys.STATE_ACTIVE),
            load=Load(number("participants"), number("streams"), number("conferences"), cpu),
        )


class Membership:
    """This node's membership. ``redis`` is a ``redis.asyncio.Redis`` with
    ``decode_responses=True``; ``lease`` is in seconds."""

    def __init__(self, redis: Any, me: NodeInfo, lease: float) -> None:
        self.redis = redis
        self.me = me
        self.lease_ms = int(lease * 1000)
        self._heartbeat = redis.register_script(keys.HEARTBEAT)
        self._release = redis.register_script(keys.RELEASE)

    @property
    def node_id(self) -> str:
        return self.me.node_id

    async def heartbeat(self, load: Load, state: str) -> list[str]:
        """Publish ``load``/``state`` and renew every lease; returns the keys lost."""
        self.me = NodeInfo(
            self.me.node_id, self.me.boot, self.me.http, self.me.sip, self.me.media, state, load
        )
        args: list[str] = [self.node_id, str(self.lease_ms)]
        for name, value in self.me.fields().items():
            args += [name, value]
        lost = await self._heartbeat(
            keys=[keys.node_key(self.node_id), keys.node_keys_set(self.node_id), keys.NODES],
            args=args,
        )
        return [str(k) for k in lost or []]

    async def leave(self) -> None:
        """Graceful exit: the hash goes at once (no lease to wait for)."""
        await self.redis.delete(keys.node_key(self.node_id))
        await self.redis.srem(keys.NODES, self.node_id)

    async def node(self, node_id: str) -> NodeInfo | None:
        """The node's published hash, or None when its lease has expired."""
        data = await self.redis.hgetall(keys.node_key(node_id))
        return NodeInfo.from_fields(node_id, data) if data else None

    async def nodes(self) -> list[NodeInfo]:
        """Every live node, by id."""
        found = []
        for node_id in sorted(await self.redis.smembers(keys.NODES)):
            info = await self.node(node_id)
            if info is not None:
                found.append(info)
        return found

    async def dead_nodes(self) -> list[str]:
        """Ids in ``confstream:nodes`` (other than this one) whose lease has expired."""
        dead = []
        for node_id in sorted(await self.redis.smembers(keys.NODES)):
            if node_id != self.node_id and not await self.redis.exists(keys.node_key(node_id)):
                dead.append(node_id)
        return dead

    async def sweep(self, node_id: str, on_lost: OnLost, *, wait: float = 0.0) -> bool:
        """Take the sweep lock of ``node_id`` and clean up after it: ``on_lost(node_id,
        conference_sids, call_sids)`` ends its conferences and calls, then its keys and its
        membership go. With
        ``wait`` > 0 the lock is awaited that long (a restarting node sweeping itself while a
        survivor does it). False when another node holds the lock."""
        lock = keys.sweep_lock(node_id)
        token = secrets.token_hex(8)
        deadline = asyncio.get_running_loop().time() + wait
        while not await self.redis.set(lock, token, nx=True, px=SWEEP_LOCK_MS):
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.2)
        try:
            owned_set = keys.node_keys_set(node_id)
            owned = sorted(await self.redis.smembers(owned_set))
            conferences = [sid for k in owned if (sid := keys.conference_of(k)) is not None]
            calls = [sid for k in owned if (sid := keys.call_of(k)) is not None]
            if conferences or calls:
                log.warning(
                    "node %s is gone: ending its %d conference(s) and %d call(s)",
                    node_id,
                    len(conferences),
                    len(calls),
                )
            await on_lost(node_id, conferences, calls)
            for key in owned:
                await self._release(keys=[key, owned_set], args=[node_id])
            await self.redis.delete(owned_set)
            if node_id != self.node_id:
                await self.redis.srem(keys.NODES, node_id)
            return True
        finally:
            if await self.redis.get(lock) == token:
                await self.redis.delete(lock)

    async def shared_secret(self) -> bytes:
        """The digest nonce key every node uses (created by the first node): a 401 challenge
        from one node is answered on another (docs/cluster.md, "Digest nonces")."""
        await self.redis.set(keys.NONCE_SECRET, secrets.token_hex(32), nx=True)
        value = await self.redis.get(keys.NONCE_SECRET)
        return bytes.fromhex(str(value))
