"""Cluster mode: N confstream nodes acting as one server (docs/cluster.md).

Redis holds the live shared state (node membership with heartbeat leases, conference
ownership: :mod:`.keys`, :mod:`.membership`, :mod:`.ownership`), PostgreSQL the records (the
same store every node opens), Kamailio routes SIP (``deploy/kamailio/kamailio.cfg``) and any
node serves REST, forwarding to the owner (:mod:`confstream.api.cluster`). :mod:`.node` ties
the parts together for the app; :mod:`.recovery` ends what a dead node left. Without
``cluster_redis_url`` none of this runs.
"""
