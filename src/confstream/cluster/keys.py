"""The cluster's Redis keys and the Lua scripts that change them (docs/cluster.md, "What lives
in Redis"). Pure: names and script text only, no I/O.

Every key starts with ``confstream:``; ``deploy/kamailio/kamailio.cfg`` reads two of them
(``room:`` and ``node:``), so their shape is part of the deployment contract:

=====================================  ======  ===========================================
key                                    type    holds
=====================================  ======  ===========================================
``confstream:nodes``                   set     every node id seen (swept when it dies)
``confstream:node:<node>``             hash    ``boot``, ``http``, ``sip``, ``media``,
                                               ``state`` (active/draining), ``participants``,
                                               ``streams``, ``conferences``, ``cpu``;
                                               lease: ``cluster_lease``
``confstream:node-keys:<node>``        set     the room/conf/call keys the node owns
``confstream:room:<AccountSid>:<name>`` string owner node id of the account's live
                                               conference of that name; lease
``confstream:conf:<ConferenceSid>``    string owner node id; lease (REST routing)
``confstream:call:<CallSid>``          string node holding the call; lease (REST routing)
``confstream:sweep:<node>``            string lock of the node sweeping a dead node
``confstream:orphan-sweep``            string lock of the periodic orphan sweep
``confstream:sip-nonce-secret``        string the digest nonce HMAC key all nodes share
=====================================  ======  ===========================================

A lease is a ``PEXPIRE`` the owner renews on every heartbeat (:data:`HEARTBEAT`); a key whose
owner stops renewing disappears after ``cluster_lease`` seconds. The conference name in a room
key is the Request-URI user part URL-unescaped, as the SIP edge reads it (docs/sip.md); the
scripts touch keys they are not passed in ``KEYS``, so the cluster needs one Redis server (with
replicas or Sentinel for availability), not Redis Cluster.
"""

from __future__ import annotations

PREFIX = "confstream:"
NODES = f"{PREFIX}nodes"
NODE_PREFIX = f"{PREFIX}node:"
ROOM_PREFIX = f"{PREFIX}room:"
CONF_PREFIX = f"{PREFIX}conf:"
CALL_PREFIX = f"{PREFIX}call:"
NONCE_SECRET = f"{PREFIX}sip-nonce-secret"
ORPHAN_SWEEP_LOCK = f"{PREFIX}orphan-sweep"

#: Node states (the ``state`` field of the node hash).
STATE_ACTIVE = "active"
STATE_DRAINING = "draining"


def node_key(node_id: str) -> str:
    return f"{NODE_PREFIX}{node_id}"


def node_keys_set(node_id: str) -> str:
    return f"{PREFIX}node-keys:{node_id}"


def sweep_lock(node_id: str) -> str:
    return f"{PREFIX}sweep:{node_id}"


def room_key(account_sid: str, conference_name: str) -> str:
    return f"{ROOM_PREFIX}{account_sid}:{conference_name}"


def conference_key(conference_sid: str) -> str:
    return f"{CONF_PREFIX}{conference_sid}"


def call_key(call_sid: str) -> str:
    return f"{CALL_PREFIX}{call_sid}"


def conference_of(key: str) -> str | None:
    """The ConferenceSid of a ``conf:`` key, else None."""
    return key[len(CONF_PREFIX) :] if key.startswith(CONF_PREFIX) else None


def call_of(key: str) -> str | None:
    """The CallSid of a ``call:`` key, else None."""
    return key[len(CALL_PREFIX) :] if key.startswith(CALL_PREFIX) else None


#: Claim a room (create-if-absent with a lease). KEYS: room key, the claimer's node-keys set.
#: ARGV: claimer id, lease ms, node key prefix. The room is taken when it is free, already the
#: claimer's (lease renewed), or held by a node whose lease has expired. Returns the owner.
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return cur
end
if cur and redis.call('EXISTS', ARGV[3] .. cur) == 1 then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
return ARGV[1]
"""

#: Own a key outright (a conference or call this node has just created). KEYS: the key, the
#: node-keys set. ARGV: node id, lease ms.
BIND = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""

#: Give a key up when it is still ours (compare-and-delete). KEYS: the key, the node-keys set
#: of the node named in ARGV[1]. Returns 1 when deleted.
RELEASE = """
redis.call('SREM', KEYS[2], KEYS[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: One heartbeat. KEYS: node hash, node-keys set, nodes set. ARGV: node id, lease ms, then
#: field/value pairs of the node hash. Renews the node's lease and every key it owns; returns
#: the keys it no longer owns (their lease ran out and another node took them).
HEARTBEAT = """
redis.call('SADD', KEYS[3], ARGV[1])
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local lost = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
  else
    redis.call('SREM', KEYS[2], k)
    table.insert(lost, k)
  end
end
return lost
"""
