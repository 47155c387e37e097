"""The node cache's indexes (nodepool/zk/node_index.py) against a plain scan
of the same nodes, after random changes; and the cache keeping them against
the real server."""

from __future__ import annotations

import random

from nodepool.quota.resources import ZERO, Resources
from nodepool.zk.node_index import NodeIndex, node_resources
from nodepool.zk.records import Node
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.zk import wait_for

STATES = ["init", "building", "ready", "in-use", "used", "deleting", "deleted", "hold"]
PROVIDERS = ["p1", "p2", "p3"]
POOLS = ["main", "other"]
TENANTS = [None, "t1", "t2"]


def _random_node(rng: random.Random, node_id: str) -> Node:
    resources = rng.choice([
        None, {"instances": 1, "cores": rng.randint(1, 8), "ram": 1024 * rng.randint(1, 8)},
        {"instances": 1, "cores": 2, "ram": 2048, "volumes": 1, "volume_gb": 20},
        {"cores": "lots"}])                                  # unreadable: not counted
    return Node(id=node_id, state=rng.choice(STATES), type=["small"],
                provider=rng.choice(PROVIDERS), pool=rng.choice(POOLS),
                allocated_to=rng.choice([None, None, "200-0000000001"]),
                tenant_name=rng.choice(TENANTS), resources=resources)


def _scan_tenant(nodes, tenant, exclude) -> Resources:
    total = ZERO
    for n in nodes:
        if n.tenant_name == tenant and n.provider not in exclude:
            total = total + (node_resources(n) or ZERO)
    return total


def _check(index: NodeIndex, nodes: dict[str, Node]) -> None:
    assert [n.id for n in index.sorted_nodes()] == sorted(nodes)
    for provider in PROVIDERS + [None]:
        for pool in POOLS:
            want = {i for i, n in nodes.items()
                    if n.provider == provider and n.pool == pool and n.state != "deleted"}
            assert {n.id for n in index.pool_nodes(provider, pool)} == want
            free = {i for i, n in nodes.items()
                    if n.provider == provider and n.pool == pool and n.state == "ready"
                    and n.allocated_to is None}
            assert {n.id for n in index.ready_unallocated(provider, pool)} == free
    for tenant in ("t1", "t2", "nobody"):
        for exclude in ((), ("p1",), ("p1", "p2", "p3")):
            assert index.tenant_usage(tenant, exclude) == \
                _scan_tenant(nodes.values(), tenant, exclude)


def test_index_matches_a_scan_after_random_changes():
    rng = random.Random(5)
    index, nodes = NodeIndex(), {}
    for step in range(3000):
        node_id = f"{rng.randrange(150):010d}"
        if rng.random() < 0.25:
            index.discard(node_id)
            nodes.pop(node_id, None)
        else:
            node = _random_node(rng, node_id)
            index.put(node_id, node)
            nodes[node_id] = node
        if step % 100 == 0:
            _check(index, nodes)
    _check(index, nodes)
    for node_id in list(nodes):
        index.discard(node_id)
    _check(index, {})
    assert len(index) == 0
    assert index.tenant_usage("t1") == ZERO


def test_sorted_list_is_reused_until_a_change():
    index = NodeIndex()
    index.put("0000000002", Node(id="0000000002", state="ready"))
    index.put("0000000001", Node(id="0000000001", state="ready"))
    first = index.sorted_nodes()
    assert [n.id for n in first] == ["0000000001", "0000000002"]
    assert index.sorted_nodes() is first          # no re-sort without a change
    index.discard("0000000001")
    assert [n.id for n in index.sorted_nodes()] == ["0000000002"]


def test_node_cache_keeps_the_indexes_with_the_server(zk_store, zk_connect):
    """Changes made by another client reach the indexes through the watches."""
    other = ZooKeeperStore(zk_connect())
    res = {"instances": 1, "cores": 2, "ram": 2048}
    a = other.create_node(Node(state="ready", type=["x"], provider="p1", pool="main",
                               tenant_name="t1", resources=res))
    b = other.create_node(Node(state="in-use", type=["x"], provider="p2", pool="main",
                               tenant_name="t1", resources=res))
    wait_for(lambda: len(zk_store.list_nodes(cached=True)) == 2, message="both nodes")
    assert [n.id for n in zk_store.ready_unallocated_nodes("p1", "main")] == [a.id]
    assert [n.id for n in zk_store.pool_nodes("p2", "main")] == [b.id]
    assert zk_store.tenant_usage("t1", exclude_providers={"p1"}) == Resources(1, 2, 2048)
    assert zk_store.tenant_usage("t1") == Resources(2, 4, 4096)
    # Allocate a: no longer a reuse candidate; delete b: its usage goes.
    lock = other.try_lock_node(a.id)
    a.allocated_to = "100-0000000001"
    other.store_node(a, lock)
    lock.release()
    lock = other.try_lock_node(b.id)
    other.delete_node(b, lock)
    wait_for(lambda: not zk_store.ready_unallocated_nodes("p1", "main")
             and len(zk_store.list_nodes(cached=True)) == 1, message="the changes")
    assert zk_store.pool_nodes("p2", "main") == []
    assert zk_store.tenant_usage("t1") == Resources(1, 2, 2048)
    # Without a cache the same questions scan the server.
    plain = ZooKeeperStore(zk_connect())
    assert [n.id for n in plain.pool_nodes("p1", "main")] == [a.id]
    assert plain.tenant_usage("t1") == Resources(1, 2, 2048)
    assert plain.ready_unallocated_nodes("p1", "main") == []
