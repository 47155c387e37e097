"""Indexes over the cached nodes, kept up to date as each node changes.

The launcher asks the same questions of the node cache many times a pass:
how many nodes a pool has (max-servers), which ready nodes a pool could
reuse, what a tenant's nodes on other launchers' providers use.  Answering
them by scanning every cached node made each request's check cost O(nodes),
so a pass with R requests cost O(R x nodes).  ``NodeIndex`` answers them in
O(answer) from sets it updates on each change of one node (O(1) per change),
and keeps the id-sorted list of all nodes until the next change.

Pure logic, no I/O and no locking: ``RecordCache`` calls ``put`` and
``discard`` and asks its questions under its own lock.
"""

from __future__ import annotations

import logging
from typing import Collection

from nodepool.quota.resources import ZERO, Resources
from nodepool.zk.records import DELETED, READY, Node

log = logging.getLogger("nodepool.zk.node_index")

PoolKey = tuple[str | None, str | None]
TenantKey = tuple[str, str | None]
# The keys of a node's ``resources`` as upstream writes them, in Resources' order.
RESOURCE_KEYS = ("instances", "cores", "ram", "volumes", "volume-gb")
# Earlier versions of this launcher wrote ``volume_gb``; their nodes still count.
_OLD_SPELLINGS = {"volume-gb": "volume_gb"}


def node_resources(node: Node) -> Resources | None:
    """What the node's ``resources`` says it uses; None when unreadable."""
    res = node.resources if isinstance(node.resources, dict) else {}
    try:
        return Resources(*(float(res.get(k) or res.get(_OLD_SPELLINGS.get(k, k)) or 0)
                           for k in RESOURCE_KEYS))
    except (TypeError, ValueError):
        return None


class NodeIndex:
    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        # Nodes not DELETED, by (provider, pool): what max-servers counts.
        self._by_pool: dict[PoolKey, dict[str, Node]] = {}
        # READY and unallocated, by (provider, pool): reuse candidates.
        self._ready_free: dict[PoolKey, dict[str, Node]] = {}
        # Sum of ``resources`` by (tenant, provider), and how many nodes.
        self._tenant: dict[TenantKey, tuple[Resources, int]] = {}
        self._sorted: list[Node] | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    # -- changes ------------------------------------------------------------------

    def put(self, name: str, node: Node) -> None:
        self.discard(name)
        self._nodes[name] = node
        key = (node.provider, node.pool)
        if node.state != DELETED:
            self._by_pool.setdefault(key, {})[name] = node
        if node.state == READY and node.allocated_to is None:
            self._ready_free.setdefault(key, {})[name] = node
        if node.tenant_name:
            res = node_resources(node)
            if res is None:
                log.warning("node %s: unreadable resources %r; not counted for tenant %s",
                            name, node.resources, node.tenant_name)
            else:
                tkey = (node.tenant_name, node.provider)
                total, count = self._tenant.get(tkey, (ZERO, 0))
                self._tenant[tkey] = (total + res, count + 1)
        self._sorted = None

    def discard(self, name: str) -> None:
        node = self._nodes.pop(name, None)
        if node is None:
            return
        key = (node.provider, node.pool)
        _drop(self._by_pool, key, name)
        _drop(self._ready_free, key, name)
        if node.tenant_name:
            res = node_resources(node)
            tkey = (node.tenant_name, node.provider)
            if res is not None and tkey in self._tenant:
                total, count = self._tenant[tkey]
                if count <= 1:
                    del self._tenant[tkey]
                else:
                    self._tenant[tkey] = (total - res, count - 1)
        self._sorted = None

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # -- questions ----------------------------------------------------------------

    def sorted_nodes(self) -> list[Node]:
        """Every node, by id; the same list object until the next change
        (callers must not modify it)."""
        if self._sorted is None:
            self._sorted = sorted(self._nodes.values(), key=lambda n: n.id or "")
        return self._sorted

    def pool_nodes(self, provider: str | None, pool: str | None) -> list[Node]:
        """The pool's nodes that are not DELETED."""
        return list(self._by_pool.get((provider, pool), {}).values())

    def ready_unallocated(self, provider: str | None, pool: str | None) -> list[Node]:
        return list(self._ready_free.get((provider, pool), {}).values())

    def tenant_usage(self, tenant: str, exclude_providers: Collection[str] = ()) -> Resources:
        """What the tenant's nodes use (their ``resources``), on every provider
        but ``exclude_providers``; O(tenants x providers), not O(nodes)."""
        total = ZERO
        for (t, provider), (res, _) in self._tenant.items():
            if t == tenant and provider not in exclude_providers:
                total = total + res
        return total


def _drop(index: dict[PoolKey, dict[str, Node]], key: PoolKey, name: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(name, None)
        if not bucket:
            del index[key]
