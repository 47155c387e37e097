"""The watch-driven caches against the real server: changes, lock contenders,
malformed znodes, and recovery after the session expires."""

from __future__ import annotations

import json
import logging
import threading

from nodepool.zk.records import Node, NodeRequest
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.zk import SYNC_TIMEOUT, expire_session, wait_for


def test_requests_cache_follows_changes(zk_store, zk_connect):
    other = ZooKeeperStore(zk_connect())
    req = other.create_request(NodeRequest(node_types=["a"], requestor="zuul"), 200)
    wait_for(lambda: zk_store.get_request(req.id, cached=True), message="the new request")
    lock = other.try_lock_request(req.id)
    req.set_state("pending")
    other.store_request(req, lock)
    wait_for(lambda: zk_store.get_request(req.id, cached=True).state == "pending",
             message="the state change")
    assert zk_store.get_request(req.id, cached=True).version == req.version
    other.client.delete(f"/nodepool/requests/{req.id}")
    wait_for(lambda: not zk_store.request_exists(req.id, cached=True), message="the removal")
    lock.release()


def test_nodes_cache_tracks_lock_contenders(zk_store, zk_connect):
    other = ZooKeeperStore(zk_connect())
    node = other.create_node(Node(state="ready", type=["a"], provider="p", pool="m"))
    wait_for(lambda: zk_store.get_node(node.id, cached=True), message="the node")
    assert not zk_store.node_locked(node.id, cached=True)
    lock = other.try_lock_node(node.id)
    wait_for(lambda: zk_store.node_locked(node.id, cached=True), message="the lock contender")
    assert len(zk_store.nodes_cache.lock_contenders(node.id)) == 1
    lock.release()
    wait_for(lambda: not zk_store.node_locked(node.id, cached=True), message="the release")


def test_malformed_znode_is_skipped_logged_once_and_recovers(zk_store, zk, caplog):
    good = zk_store.create_node(Node(state="ready", type=["a"]))
    with caplog.at_level(logging.ERROR, logger="nodepool.zk.cache"):
        zk.create("/nodepool/nodes/0000000001", b"{not json")
        wait_for(lambda: "0000000001" in zk_store.nodes_cache.malformed(),
                 message="the malformed node to be noticed")
    assert "/nodepool/nodes/0000000001" in caplog.text
    assert caplog.text.count("/nodepool/nodes/0000000001") == 1
    assert zk_store.get_node("0000000001", cached=True) is None
    assert [n.id for n in zk_store.list_nodes(cached=True)] == [good.id]
    zk.set("/nodepool/nodes/0000000001", json.dumps({"state": "used", "type": ["a"]}).encode())
    wait_for(lambda: zk_store.get_node("0000000001", cached=True), message="the fixed node")
    assert zk_store.nodes_cache.malformed() == {}


def test_empty_node_znode_is_not_a_record(zk_store, zk):
    zk.create("/nodepool/nodes/0000000000/lock", makepath=True)
    zk_store.create_node(Node(state="ready", type=["a"]))
    wait_for(lambda: zk_store.get_node("0000000001", cached=True), message="the real node")
    assert zk_store.get_node("0000000000", cached=True) is None
    assert zk_store.nodes_cache.malformed() == {}


def test_cache_resyncs_after_session_expiry(zk_store, zk, zk_settings, zk_connect):
    other = ZooKeeperStore(zk_connect())
    kept = other.create_request(NodeRequest(node_types=["a"]), 200)
    own = zk_store.create_min_ready_request("a")   # ephemeral: dies with the session
    node = other.create_node(Node(state="ready", type=["a"]))
    our_lock = zk_store.try_lock_node(node.id)
    wait_for(lambda: zk_store.node_locked(node.id, cached=True)
             and zk_store.request_exists(own.id, cached=True), message="the cache")
    expire_session(zk, zk_settings)
    assert zk_store.wait_synced(SYNC_TIMEOUT)
    wait_for(lambda: not zk_store.request_exists(own.id, cached=True),
             message="the ephemeral request of the old session to leave the cache")
    wait_for(lambda: not zk_store.node_locked(node.id, cached=True),
             message="the old session's lock contender to leave the cache")
    assert zk_store.request_exists(kept.id, cached=True)
    assert not our_lock.held
    # Watches work again in the new session.
    later = other.create_request(NodeRequest(node_types=["b"]), 100)
    wait_for(lambda: zk_store.request_exists(later.id, cached=True), message="a new request")


def test_wait_for_change_wakes_on_cache_events(zk_store, zk_connect):
    zk_store.wait_for_change(0)  # clear
    other = ZooKeeperStore(zk_connect())
    other.create_request(NodeRequest(node_types=["a"]), 200)
    assert zk_store.wait_for_change(SYNC_TIMEOUT)


def test_on_added_tells_of_each_new_record_once(zk_store, zk_connect):
    """The launcher wakes its pool workers on a new request: the cache tells
    of new records only, not of updates to ones it holds."""
    added = []
    zk_store.requests_cache.on_added = added.append
    other = ZooKeeperStore(zk_connect())
    req = other.create_request(NodeRequest(node_types=["a"], requestor="zuul"), 200)
    wait_for(lambda: [r.id for r in added] == [req.id], message="the new request told")
    lock = other.try_lock_request(req.id)
    req.set_state("pending")
    other.store_request(req, lock)
    wait_for(lambda: zk_store.get_request(req.id, cached=True).state == "pending",
             message="the state change")
    second = other.create_request(NodeRequest(node_types=["b"], requestor="zuul"), 100)
    wait_for(lambda: len(added) == 2, message="the second request told")
    assert [r.id for r in added] == [req.id, second.id]
    assert added[1].node_types == ["b"]
    lock.release()


def _late_add(cache, path: str) -> None:
    """What kazoo's TreeCache delivers when a znode's data read lands after
    its DELETED watch (python-zk/kazoo#645): NODE_ADDED for a znode that is
    already gone, and no event after it."""
    from kazoo.protocol.states import ZnodeStat
    from kazoo.recipe.cache import NodeData, TreeEvent
    stat = ZnodeStat(1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1)
    cache._on_event(TreeEvent.make(TreeEvent.NODE_ADDED, NodeData.make(path, b"", stat)))


def test_a_lock_contender_added_after_it_went_is_dropped(zk_store, zk_connect, caplog):
    other = ZooKeeperStore(zk_connect())
    node = other.create_node(Node(state="used", type=["a"], provider="p", pool="m"))
    wait_for(lambda: zk_store.get_node(node.id, cached=True), message="the node")
    lock = other.try_lock_node(node.id)
    wait_for(lambda: zk_store.node_locked(node.id, cached=True), message="the contender")
    [contender] = zk_store.nodes_cache.lock_contenders(node.id)
    lock.release()
    wait_for(lambda: not zk_store.node_locked(node.id, cached=True), message="the release")
    with caplog.at_level(logging.DEBUG, logger="nodepool.zk.cache"):
        _late_add(zk_store.nodes_cache, f"/nodepool/nodes/{node.id}/lock/{contender}")
        # Without the check the node would look locked for good (never reaped).
        wait_for(lambda: not zk_store.node_locked(node.id, cached=True),
                 message="the late contender dropped")
    assert "gone in ZooKeeper; dropped" in caplog.text


def test_a_record_added_after_it_went_is_dropped(zk_store, zk_connect):
    other = ZooKeeperStore(zk_connect())
    node = other.create_node(Node(state="ready", type=["a"], provider="p", pool="m"))
    wait_for(lambda: zk_store.get_node(node.id, cached=True), message="the node")
    other.client.delete(f"/nodepool/nodes/{node.id}", recursive=True)
    wait_for(lambda: zk_store.get_node(node.id, cached=True) is None, message="the removal")
    from kazoo.protocol.states import ZnodeStat
    from kazoo.recipe.cache import NodeData, TreeEvent
    stale = json.dumps({"state": "ready", "type": ["a"], "provider": "p"}).encode()
    stat = ZnodeStat(1, 1, 0, 0, 1, 0, 0, 0, len(stale), 0, 1)
    zk_store.nodes_cache._on_event(TreeEvent.make(
        TreeEvent.NODE_ADDED, NodeData.make(f"/nodepool/nodes/{node.id}", stale, stat)))
    wait_for(lambda: zk_store.get_node(node.id, cached=True) is None,
             message="the late record dropped")


def test_lock_churn_leaves_no_node_looking_locked(zk_store, zk_connect):
    # The real race behind the two tests above: locks taken and let go at
    # once (try-locks of busy nodes, quick hand-overs).  Before the check,
    # most of these nodes stayed "locked" in the cache for good.
    other = ZooKeeperStore(zk_connect())
    nodes = [other.create_node(Node(state="used", type=["a"], provider="p", pool="m"))
             for _ in range(8)]
    wait_for(lambda: all(zk_store.get_node(n.id, cached=True) for n in nodes),
             message="the nodes")

    def churn(node_id: str) -> None:
        for _ in range(40):
            lock = other.try_lock_node(node_id)
            if lock is not None:
                lock.release()

    threads = [threading.Thread(target=churn, args=(n.id,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(other.node_locked(n.id) for n in nodes)
    wait_for(lambda: not any(zk_store.node_locked(n.id, cached=True) for n in nodes),
             message="every node unlocked in the cache")
