"""What the launcher lets its providers read of ZooKeeper (the ``LauncherViews``
callables that need the node store): which nodes exist, whether a node
still claims a server, and a tenant's usage by other launchers.  Each
answers "cannot tell now" rather than guess while ZooKeeper is out of reach.
"""

from __future__ import annotations

import logging
from typing import Iterable

from nodepool.quota import ZERO, Resources
from nodepool.zk import paths
from nodepool.zk.records import MalformedRecord, Node
from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.launcher")


def known_nodes(store: ZooKeeperStore | None) -> dict[str, str | None] | None:
    """node id -> external id, from ZooKeeper; None if that view is not
    trustworthy (not synced), so the leak cleaner never guesses."""
    if store is None or not store.synced or not store.connected:
        return None
    known = {n.id: n.external_id for n in store.list_nodes(cached=True)}
    cache = store.nodes_cache
    if cache is not None:
        # A record we cannot read still exists: its server is not a leak.
        for node_id in cache.malformed():
            known.setdefault(node_id, None)
    return known


def node_claims_server(store: ZooKeeperStore | None, node_id: str | None,
                       server_id: str) -> bool | None:
    """A fresh read of one node before the leak cleaner deletes its
    server: True when the node exists and may own the server (its
    external id is that server, unknown, or unreadable), False when it
    is gone or owns another server, None when ZooKeeper cannot tell now."""
    if store is None or not store.connected:
        return None
    if not node_id:
        return False
    try:
        raw = store.raw_node(node_id)
    except Exception:  # e.g. a connection loss, or a junk id
        log.debug("could not read node %s", node_id, exc_info=True)
        return None
    if not raw:
        return False
    try:
        node = Node.from_json(raw, node_id, paths.node_path(node_id))
    except MalformedRecord as e:
        log.warning("node %s is malformed (%s); keeping its server %s", node_id,
                    e.reason, server_id)
        return True
    return node.external_id in (None, server_id)


def tenant_usage_elsewhere(store: ZooKeeperStore | None, tenant: str,
                           own_providers: Iterable[str]) -> Resources:
    """What the tenant's nodes of other launchers' providers use, from
    ZooKeeper (``resources`` as upstream writes it).  Nodes of this
    process's providers (``own_providers``, read at each call) are left
    out: the quota ledger counts those.  The node cache keeps these sums
    per tenant and provider as nodes change, so a request's tenant check
    does not scan every node."""
    if store is None:
        return ZERO
    return store.tenant_usage(tenant, exclude_providers=set(own_providers))
