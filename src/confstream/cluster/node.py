"""One node of a confstream cluster: membership, ownership, sweeps and drain in one object
(docs/cluster.md).

:class:`ClusterNode` is built by the app when ``cluster_redis_url`` is set:

1. :meth:`connect` (before the SIP edge exists): reach Redis and read the shared digest nonce
   key, so that a 401 challenge from one node is answered on any other. :meth:`prepare`
   (before any listener opens): sweep this node's previous incarnation (a restart after a
   crash ends what it left, with callbacks).
2. :meth:`start` (once SIP and HTTP listen): sweep dead nodes, register, then run two
   tasks: the **heartbeat** (every ``cluster_heartbeat`` s: publish load and state, renew every
   lease, give up conferences lost to another node) and the **sweeper** (dead nodes every
   heartbeat; orphaned records every :data:`ORPHAN_SWEEP_EVERY` s).
3. :class:`~confstream.cluster.placement.Placement` for the services: claim a room at join
   (503 when another node owns it or this one drains), publish conference and call SIDs, give
   them up at leave and end.
4. :meth:`forward_target` for the REST forwarding (:mod:`confstream.api.cluster`).
5. :meth:`begin_drain` / :meth:`wait_drained` on a graceful stop, :meth:`stop` last.

The heartbeat and the sweeps are tasks of their own: the 20 ms clock never waits on Redis, and
a long sweep never delays this node's own lease. Redis failures are logged and retried on the
next beat; a join that cannot check ownership is refused with 503 (Kamailio tries another
node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from confstream.cluster import keys
from confstream.cluster.membership import Load, Membership, NodeInfo
from confstream.cluster.ownership import Ownership
from confstream.cluster.placement import (
    NOT_HERE_SIP_STATUS,
    REASON_NODE_LOST,
)
from confstream.cluster.recovery import Recovery
from confstream.errors import JoinRefused
from confstream.settings import Settings, parse_hostport

log = logging.getLogger(__name__)

#: Seconds between sweeps for orphaned live records (no owner in Redis).
ORPHAN_SWEEP_EVERY = 30.0

LoadProbe = Callable[[], Load]
EndLocal = Callable[[str], Awaitable[None]]


def default_node_id(settings: Settings) -> str:
    """``node_id``, else ``<hostname>-<HTTP port>`` (random when the port is chosen at start)."""
    if settings.node_id:
        return settings.node_id
    port = settings.http_address[1]
    return f"{socket.gethostname()}-{port or secrets.token_hex(4)}"


def _public_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        raise ValueError(
            "a wildcard listen address needs advertise_http/advertise_sip (docs/cluster.md)"
        )
    return f"[{host}]" if ":" in host else host


def advertised_addresses(
    settings: Settings, http_port: int, sip_port: int, media_host: str
) -> tuple[str, str, str]:
    """(HTTP endpoint URL, SIP ``host:port``, media host) this node publishes."""
    http = settings.advertise_http
    if not http:
        host = _public_host(settings.http_address[0])
        http = f"{settings.http_scheme}://{host}:{http_port}"
    sip = settings.advertise_sip
    if not sip:
        sip = f"{_public_host(settings.sip_address[0])}:{sip_port}"
    else:
        host, port = parse_hostport(sip)
        sip = f"{_public_host(host)}:{port}"
    return http.rstrip("/"), sip, media_host


class ClusterNode:
    """See the module docstring. ``redis`` may be given (tests); otherwise one is made from
    ``settings.cluster_redis_url``."""

    def __init__(self, settings: Settings, redis: Any = None) -> None:
        self.settings = settings
        self.node_id = default_node_id(settings)
        if redis is None:
            import redis.asyncio as aioredis

            redis = aioredis.Redis.from_url(
                settings.cluster_redis_url,
                decode_responses=True,
                socket_timeout=max(settings.cluster_heartbeat, 1.0),
                socket_connect_timeout=max(settings.cluster_heartbeat, 1.0),
            )
        self.redis = redis
        self.lease = settings.cluster_lease
        self.ownership = Ownership(redis, self.node_id, self.lease)
        self.membership: Membership | None = None
        self.recovery: Recovery | None = None
        self.draining = False
        self._load: LoadProbe = Load
        self._end_local: EndLocal | None = None
        self._room_of: dict[str, str] = {}  # conference SID -> room key
        self._unbound: set[str] = set()  # keys to (re)bind at the next heartbeat
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._cpu = (time.monotonic(), time.process_time())
        self._redis_ok = True

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> bytes:
        """Reach Redis and return the shared digest nonce key. ``OSError`` when Redis cannot
        be reached."""
        try:
            await self.redis.ping()
            secret: bytes = await Membership(
                self.redis, NodeInfo(self.node_id, "", "", "", ""), self.lease
            ).shared_secret()
        except Exception as exc:
            raise OSError(f"cannot reach the cluster Redis: {exc}") from exc
        return secret

    async def prepare(self, recovery: Recovery, load: LoadProbe, end_local: EndLocal) -> None:
        """Before any listener opens: end what this node's previous run left (its keys in
        Redis name its conferences; a crash left them live), waiting up to two leases for a
        survivor that is sweeping it already."""
        self.recovery = recovery
        self._load = load
        self._end_local = end_local
        previous = Membership(self.redis, NodeInfo(self.node_id, "", "", "", ""), self.lease)
        swept = await previous.sweep(self.node_id, self._on_node_lost, wait=2 * self.lease)
        if not swept:
            log.warning("node %s: could not sweep its previous run (lock held)", self.node_id)

    async def start(self, *, http: str, sip: str, media: str) -> None:
        """Once SIP and HTTP listen: sweep dead nodes, register, start the tasks."""
        me = NodeInfo(self.node_id, secrets.token_hex(8), http, sip, media)
        self.membership = Membership(self.redis, me, self.lease)
        await self._sweep_dead()
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"),
            asyncio.create_task(self._sweeper_loop(), name="cluster-sweeper"),
        ]
        log.info("cluster node %s registered: http=%s sip=%s", self.node_id, http, sip)

    def begin_drain(self) -> None:
        """Take no new conferences (joins of this node's own go on); published at once."""
        if not self.draining:
            self.draining = True
            log.info("cluster node %s draining: no new conferences", self.node_id)
            self._spawn(self._beat())

    async def wait_drained(self, timeout: float, stop: asyncio.Event | None = None) -> bool:  # noqa: ASYNC109
        """Wait until this node hosts no conference (True), ``timeout`` passes or ``stop``
        is set (False)."""
        deadline = time.monotonic() + timeout
        while self._load().conferences > 0:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            await asyncio.sleep(0.2)
        return True

    async def stop(self) -> None:
        """Stop the tasks, leave the membership, close Redis. Call after the services have
        ended this node's conferences (their keys are released then)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._spawned:
            await asyncio.gather(*list(self._spawned), return_exceptions=True)
        if self.membership is not None:
            try:
                await self.membership.leave()
            except Exception as exc:
                log.warning("cluster node %s: could not leave cleanly: %s", self.node_id, exc)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # ------------------------------------------------------------------ Placement
    async def claim(self, account_sid: str, conference_name: str) -> None:
        try:
            if self.draining:
                owner = await self.ownership.room_owner(account_sid, conference_name)
            else:
                owner = await self.ownership.claim_room(account_sid, conference_name)
        except Exception as exc:
            raise JoinRefused(f"cluster state unavailable: {exc}", NOT_HERE_SIP_STATUS) from exc
        if owner != self.node_id:
            why = "draining" if self.draining else f"owned by node {owner}"
            raise JoinRefused(f"conference {why}", NOT_HERE_SIP_STATUS)

    async def end_stale(self, conference_sid: str) -> None:
        if self.recovery is not None:
            owner = await self._quiet(self.ownership.owner(keys.conference_key(conference_sid)))
            await self.recovery.end_conferences([conference_sid], str(owner or "unknown"))

    async def hosted(self, conference_sid: str, account_sid: str, conference_name: str) -> None:
        await self._publish(conference_sid, account_sid, conference_name, [])

    def holds(self, conference_sid: str) -> bool:
        return conference_sid in self._room_of

    async def joined(
        self, conference_sid: str, account_sid: str, conference_name: str, call_sid: str
    ) -> None:
        await self._publish(conference_sid, account_sid, conference_name, [call_sid])

    async def _publish(
        self, conference_sid: str, account_sid: str, conference_name: str, call_sids: list[str]
    ) -> None:
        wanted = [keys.call_key(sid) for sid in call_sids]
        if conference_sid not in self._room_of:
            self._room_of[conference_sid] = keys.room_key(account_sid, conference_name)
            wanted.insert(0, keys.conference_key(conference_sid))
        for key in wanted:
            if not await self._quiet(self.ownership.bind(key), default=False, ok=True):
                self._unbound.add(key)

    async def left(self, call_sid: str) -> None:
        await self.call_ended(call_sid)

    async def call_started(self, call_sid: str) -> None:
        key = keys.call_key(call_sid)
        if not await self._quiet(self.ownership.bind(key), default=False, ok=True):
            self._unbound.add(key)

    async def call_ended(self, call_sid: str) -> None:
        key = keys.call_key(call_sid)
        self._unbound.discard(key)
        await self._quiet(self.ownership.release(key))

    async def ended(self, conference_sid: str) -> None:
        room = self._room_of.pop(conference_sid, None)
        for key in (keys.conference_key(conference_sid), room):
            if key is not None:
                self._unbound.discard(key)
                await self._quiet(self.ownership.release(key))

    # ------------------------------------------------------------------ REST routing
    async def forward_target(self, key: str) -> tuple[str, str] | None:
        """(node id, HTTP endpoint) of the live node that owns ``key`` when it is another
        node; None when it is this node, nobody, or a node whose lease has expired."""
        owner = await self.ownership.owner(key)
        if owner is None or owner == self.node_id or self.membership is None:
            return None
        info = await self.membership.node(owner)
        if info is None or not info.http:
            return None
        return owner, info.http

    # ------------------------------------------------------------------ internals
    async def _quiet(self, coro: Awaitable[Any], default: Any = None, *, ok: Any = None) -> Any:
        """Await ``coro``; a Redis failure is logged and ``default`` returned (``ok`` on
        success when given)."""
        try:
            value = await coro
        except Exception as exc:
            log.warning("cluster node %s: redis: %s", self.node_id, exc)
            return default
        return value if ok is None else ok

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("cluster node %s: background task failed", self.node_id)

        task = asyncio.get_running_loop().create_task(run())
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def _measure(self) -> Load:
        load = self._load()
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu
        self._cpu = (wall, cpu)
        share = 100.0 * (cpu - last_cpu) / (wall - last_wall) if wall > last_wall else 0.0
        return Load(load.participants, load.streams, load.conferences, round(share, 1))

    async def _beat(self) -> None:
        assert self.membership is not None
        for key in list(self._unbound):
            await self.ownership.bind(key)
            self._unbound.discard(key)
        state = keys.STATE_DRAINING if self.draining else keys.STATE_ACTIVE
        lost = await self.membership.heartbeat(self._measure(), state)
        if lost:
            self._lost(lost)

    def _lost(self, lost: list[str]) -> None:
        """Keys another node took while this one could not renew: the newer owner wins, the
        conference here ends (:data:`~confstream.cluster.placement.REASON_OWNERSHIP_LOST`)."""
        by_room = {room: sid for sid, room in self._room_of.items()}
        sids = {keys.conference_of(k) or by_room.get(k) for k in lost} - {None}
        for sid in sorted(s for s in sids if s is not None):
            log.error("cluster node %s lost conference %s to another node", self.node_id, sid)
            if self._end_local is not None:
                self._spawn(self._end_local(sid))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cluster_heartbeat)
            try:
                await self._beat()
                if not self._redis_ok:
                    log.info("cluster node %s: redis reachable again", self.node_id)
                self._redis_ok = True
            except Exception as exc:
                if self._redis_ok:
                    log.error("cluster node %s: heartbeat failed: %s", self.node_id, exc)
                self._redis_ok = False

    async def _sweeper_loop(self) -> None:
        next_orphans = time.monotonic()
        while True:
            try:
                await self._sweep_dead()
                if time.monotonic() >= next_orphans:
                    next_orphans = time.monotonic() + ORPHAN_SWEEP_EVERY
                    await self._sweep_orphans()
            except Exception as exc:
                log.warning("cluster node %s: sweep failed: %s", self.node_id, exc)
            await asyncio.sleep(self.settings.cluster_heartbeat)

    async def _sweep_dead(self) -> None:
        assert self.membership is not None
        for node_id in await self.membership.dead_nodes():
            await self.membership.sweep(node_id, self._on_node_lost)

    async def _on_node_lost(
        self, node_id: str, conference_sids: list[str], call_sids: list[str]
    ) -> None:
        if self.recovery is None:
            return
        if conference_sids:
            await self.recovery.end_conferences(conference_sids, node_id, REASON_NODE_LOST)
        if call_sids:
            await self.recovery.end_calls(call_sids, node_id)

    async def _sweep_orphans(self) -> None:
        """End live records no node owns (see :mod:`confstream.cluster.recovery`), one node
        at a time. Records younger than two leases are left alone: their owner may be
        publishing them right now."""
        if self.recovery is None:
            return
        lock_ms = int(ORPHAN_SWEEP_EVERY * 1000)
        if not await self.redis.set(keys.ORPHAN_SWEEP_LOCK, self.node_id, nx=True, px=lock_ms):
            return
        orphans = []
        for sid in await self.recovery.live_conferences(older_than=2 * self.lease):
            if sid in self._room_of:
                continue
            if not await self.redis.exists(keys.conference_key(sid)):
                orphans.append(sid)
        if orphans:
            log.warning("ending %d live conference(s) no node owns", len(orphans))
            await self.recovery.end_conferences(orphans, "unknown")
        calls = []
        for sid in await self.recovery.live_calls(older_than=2 * self.lease):
            key = keys.call_key(sid)
            if key in self._unbound:  # this node holds it; publishing it failed
                continue
            if not await self.redis.exists(key):
                calls.append(sid)
        if calls:
            log.warning("ending %d live call(s) no node holds", len(calls))
            await self.recovery.end_calls(calls, "unknown")
