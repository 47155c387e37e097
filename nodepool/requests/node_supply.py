"""Where the node of an accepted request's slot comes from, and where it goes
back to.

An empty slot takes a ready node of the pool that nobody uses (``reuse``),
else a new record (``create``) in the request's availability zone
(``choose_az``).  A pool filled by ready nodes nobody uses makes room by
deleting the oldest of them (``delete_oldest_unused``).  When the request
is done with a node it goes back (``release``): a ready node unallocated
(reusable), one whose build never started deleted.

The pool's settings are passed to every call: a config reload replaces
them while requests are in flight.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Callable

from nodepool.requests import protocol
from nodepool.requests.builder import NodeBuilder
from nodepool.requests.protocol import PoolSettings
from nodepool.requests.slots import ActiveRequest, Slot, SlotState
from nodepool.zk.records import DELETING, INIT, MalformedRecord, Node, NodeRequest
from nodepool.zk.store import NotLocked, RecordChanged, RecordGone, ZooKeeperStore

# The handler's logger: operators follow one logger for what a pool decides.
log = logging.getLogger("nodepool.requests.handler")

# A request without room looks for an unused node to delete at most this
# often (each look reads the pool's nodes).
UNUSED_DELETE_INTERVAL = 1.0


class NodeSupply:
    def __init__(self, store: ZooKeeperStore, builder: NodeBuilder,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.builder = builder
        self.clock = clock
        self._unused_delete_at = float("-inf")

    def reuse(self, pool: PoolSettings, active: ActiveRequest, slot: Slot,
              taken: set[str]) -> str | None:
        """Allocate a ready node to the request and put it in ``slot``: its
        id, or None.  ``taken``: the nodes the pool's requests hold."""
        # Only the pool's ready, unallocated nodes (the cache's index).
        nodes = self.store.ready_unallocated_nodes(pool.provider_name, pool.pool_name)
        cache = self.store.nodes_cache
        # Without a cache, the lock attempt itself tells.
        locked = {n.id for n in nodes if cache is not None and cache.is_locked(n.id)}
        for candidate in protocol.reusable_nodes(nodes, slot.label, pool, locked, taken,
                                                 az=active.az):
            try:
                got = self.store.lock_and_read_node(candidate.id)
            except MalformedRecord:
                continue
            if got is None:
                continue
            node, lock = got
            with contextlib.ExitStack() as unless_allocated:
                unless_allocated.enter_context(lock)
                if not protocol.can_reuse(node, slot.label, pool, az=active.az):
                    continue
                node.allocated_to = active.request.id
                node.tenant_name = active.request.tenant_name
                node.requestor = active.request.requestor
                try:
                    self.store.store_node(node, lock)
                except (RecordChanged, RecordGone):
                    continue
                unless_allocated.pop_all()    # the slot holds it now
            slot.state, slot.node, slot.lock = SlotState.READY, node, lock
            active.az = active.az or node.az
            log.info("request %s: reusing ready node %s", active.request.id, node.id)
            return node.id
        return None

    def create(self, pool: PoolSettings, request: NodeRequest, label: str) -> Node:
        """A new node record (``init``) allocated to the request."""
        node = Node(state=INIT, type=[label], provider=pool.provider_name,
                    pool=pool.pool_name, launcher=pool.pool_id,
                    allocated_to=request.id, tenant_name=request.tenant_name,
                    requestor=request.requestor,
                    attributes=dict(pool.node_attributes)
                    if pool.node_attributes is not None else None)
        node = self.store.create_node(node, self.clock())
        log.info("request %s: created node %s (%s)", request.id, node.id, label)
        return node

    def choose_az(self, pool: PoolSettings) -> str | None:
        """Upstream's choice: a random one of the pool's availability-zones,
        else of the zones the cloud lists (None: the cloud places the server)."""
        zones = list(pool.availability_zones)
        if not zones:
            listed = getattr(self.builder, "availability_zones", None)
            try:
                zones = list(listed() or []) if callable(listed) else []
            except Exception:  # without a list the cloud chooses
                log.debug("pool %s: reading availability zones failed", pool.pool_id,
                          exc_info=True)
                zones = []
        return random.choice(zones) if zones else None

    def delete_oldest_unused(self, pool: PoolSettings, request_id: str) -> None:
        """Upstream's way out of a pool filled by ready nodes nobody uses
        (min-ready of other labels): delete the oldest of them."""
        if not getattr(self.builder, "deleting_frees_capacity", True):
            return  # e.g. static hosts: the slot is registered again at once
        now = self.clock()
        if now - self._unused_delete_at < UNUSED_DELETE_INTERVAL:
            return
        self._unused_delete_at = now
        nodes = self.store.pool_nodes(pool.provider_name, pool.pool_name)
        cache = self.store.nodes_cache
        locked = {n.id for n in nodes if cache is not None and cache.is_locked(n.id)}
        for candidate in protocol.oldest_unused_nodes(nodes, pool, locked, now):
            if self.store.update_unlocked_node(
                    candidate.id, lambda fresh: protocol.retire_ready(fresh, now),
                    "delete the unused"):
                log.info("request %s: pool %s is at capacity; deleting its oldest unused "
                         "ready node %s", request_id, pool.pool_id, candidate.id)
                return

    def release(self, request_id: str, slot: Slot) -> None:
        """The request is done with the slot's node (reused, built ready, or
        created and not started): unallocate and unlock it, so a ready node
        becomes reusable; one whose build never started is marked deleting."""
        node = slot.node
        if node is None:
            return
        lock = slot.lock if slot.lock is not None and slot.lock.held else None
        slot.lock = None
        relocked = lock is None
        if relocked:
            # Let go already (fulfilling) or never locked: lock it again.
            got = self.store.lock_and_read_node(node.id)
            if got is None:
                log.warning("node %s: could not lock it to release it; "
                            "housekeeping will", node.id)
                return
            node, lock = got
        with lock:
            if relocked and node.allocated_to != request_id:
                return
            node.allocated_to = None
            if slot.state is SlotState.CREATED:
                # Nothing was started in the cloud for it.
                node.set_state(DELETING, self.clock())
            try:
                self.store.store_node(node, lock)
            except (RecordGone, RecordChanged, NotLocked) as e:
                log.warning("node %s: could not release it: %s", node.id, e)
