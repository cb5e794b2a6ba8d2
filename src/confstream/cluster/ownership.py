"""Conference ownership in Redis (docs/cluster.md, "What lives in Redis").

Each live conference has exactly one owner node:

* **Room** ``confstream:room:<AccountSid>:<name>``: claimed atomically by the node a caller
  reaches (:data:`keys.CLAIM`: create-if-absent with a lease, or take-over when the holder's
  node lease has expired). Kamailio reads it to relay later callers of the same conference to
  the owner (``deploy/kamailio/kamailio.cfg``).
* **Conference** ``confstream:conf:<ConferenceSid>`` and **call** ``confstream:call:<CallSid>``:
  set by the owner once the record exists; any node reads them to forward a REST request to
  the owner (:mod:`confstream.api.cluster`).

Every owned key is also in the owner's ``node-keys`` set, whose leases the heartbeat renews
(:mod:`confstream.cluster.membership`). Releasing is compare-and-delete: a key another node
has taken since is left alone.
"""

from __future__ import annotations

from typing import Any

from confstream.cluster import keys


class Ownership:
    """This node's view of ownership. ``redis`` decodes responses; ``lease`` in seconds."""

    def __init__(self, redis: Any, node_id: str, lease: float) -> None:
        self.redis = redis
        self.node_id = node_id
        self.lease_ms = int(lease * 1000)
        self._owned_set = keys.node_keys_set(node_id)
        self._claim = redis.register_script(keys.CLAIM)
        self._bind = redis.register_script(keys.BIND)
        self._release = redis.register_script(keys.RELEASE)

    async def claim_room(self, account_sid: str, conference_name: str) -> str:
        """Claim the room (see :data:`keys.CLAIM`); returns its owner, this node on success."""
        owner = await self._claim(
            keys=[keys.room_key(account_sid, conference_name), self._owned_set],
            args=[self.node_id, str(self.lease_ms), keys.NODE_PREFIX],
        )
        return str(owner)

    async def room_owner(self, account_sid: str, conference_name: str) -> str | None:
        owner = await self.redis.get(keys.room_key(account_sid, conference_name))
        return None if owner is None else str(owner)

    async def bind(self, key: str) -> None:
        """Own ``key`` (a ``conf:`` or ``call:`` key) with a lease."""
        await self._bind(keys=[key, self._owned_set], args=[self.node_id, str(self.lease_ms)])

    async def release(self, key: str) -> bool:
        """Give ``key`` up when it is still this node's."""
        return bool(await self._release(keys=[key, self._owned_set], args=[self.node_id]))

    async def owner(self, key: str) -> str | None:
        """The node id a key names, or None."""
        value = await self.redis.get(key)
        return None if value is None else str(value)
