"""Keeping ``min-ready`` nodes: the launcher's own node requests.

``submit_min_ready`` files one ephemeral request (priority 900, requestor
``NodePool:min-ready``, ``reuse`` false) per node missing.  Pools serve them
like any other request.  ``finish_min_ready`` then releases the nodes of our
fulfilled ones (they become unallocated ``ready`` nodes, which is the
point) and deletes our finished requests.  Only requests created in this
session are ours; a launcher never deletes anyone else's requests.
"""

from __future__ import annotations

import logging
from typing import Mapping

from nodepool.requests import protocol
from nodepool.zk.records import FAILED, FULFILLED, READY, NodeRequest
from nodepool.zk.store import RecordChanged, RecordGone, ZooKeeperStore

log = logging.getLogger("nodepool.requests.minready")


def own_min_ready_requests(store: ZooKeeperStore) -> list[NodeRequest]:
    session = store.session_id
    return [r for r in store.list_requests(cached=True)
            if r.is_min_ready and r.ephemeral_owner and r.ephemeral_owner == session]


def submit_min_ready(store: ZooKeeperStore, min_ready: Mapping[str, int]) -> list[NodeRequest]:
    """File requests for the nodes missing to reach ``min_ready`` per label."""
    wanted = protocol.min_ready_wanted(min_ready, store.list_nodes(cached=True),
                                       store.list_requests(cached=True))
    created = [store.create_min_ready_request(label) for label in wanted]
    for r in created:
        log.info("min-ready: requested one %s node (%s)", r.node_types[0], r.id)
    return created


def finish_min_ready(store: ZooKeeperStore) -> list[str]:
    """Release the nodes of our fulfilled min-ready requests and delete our
    finished ones.  Returns the ids of the requests deleted."""
    finished = []
    for request in own_min_ready_requests(store):
        fresh = store.get_request(request.id)
        if fresh is None or fresh.state not in (FULFILLED, FAILED):
            continue
        if fresh.state == FULFILLED and not _release(store, fresh):
            continue
        if store.delete_own_request(fresh):
            finished.append(fresh.id)
    return finished


def _release(store: ZooKeeperStore, request: NodeRequest) -> bool:
    """Unallocate the request's nodes; False if one is locked (retry later).
    Nodes already reallocated or gone are left alone."""
    for node_id in request.nodes:
        got = store.lock_and_read_node(node_id)
        if got is None:
            if store.get_node(node_id) is None:
                continue
            return False
        node, lock = got
        try:
            if node.allocated_to == request.id and node.state == READY:
                node.allocated_to = None
                store.store_node(node, lock)
        except (RecordGone, RecordChanged) as e:
            log.warning("min-ready: could not release node %s: %s", node_id, e)
            return False
        finally:
            lock.release()
    return True
