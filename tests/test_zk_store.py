"""The store against the real server, with znodes written byte for byte as
Zuul 14.3.0 and Nodepool 11 write them."""

from __future__ import annotations

import json
import logging
import os

import pytest

from nodepool.requests.builder import DeleteSpec
from nodepool.zk.client import connect, disconnect
from nodepool.zk.locks import LockNotAcquired
from nodepool.zk.node_admin import hold_node, mark_node_deleting
from nodepool.zk.records import MIN_READY_REQUESTOR, Node, NodeRequest
from nodepool.zk.store import (NotLocked, RecordChanged, RecordGone,
                               RecordNotFound, ZooKeeperStore)
from tests.fixtures.zk import SYNC_TIMEOUT, wait_for

DATA = os.path.join(os.path.dirname(__file__), "data")
ZUUL_REQUEST_KEYS = {"requestor_data", "requestor", "node_types", "provider", "state",
                     "state_time", "event_id"}


def raw(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def zuul_submit(client, name="zuul14_request_new.json", priority=200) -> str:
    """Create a request the way Zuul's submitNodeRequest does."""
    data = json.dumps(json.loads(raw(name))).encode()
    path = client.create(f"/nodepool/requests/{priority:03d}-", data, makepath=True,
                         sequence=True)
    return path.rsplit("/", 1)[1]


@pytest.fixture
def store(zk):
    return ZooKeeperStore(zk)


def test_zuul_request_read_locked_written_keeps_every_zuul_key(store, zk):
    rid = zuul_submit(zk)
    assert rid == "200-0000000000"
    assert zk.exists(f"/nodepool/requests/{rid}").ephemeralOwner == 0
    original = json.loads(raw("zuul14_request_new.json"))
    req = store.get_request(rid)
    lock = store.try_lock_request(rid)
    req.set_state("pending")
    store.store_request(req, lock)
    lock.release()
    written = json.loads(zk.get(f"/nodepool/requests/{rid}")[0])
    for key in original:
        if key not in ("state", "state_time"):
            assert written[key] == original[key], key
    assert written["state"] == "pending"
    assert (written["declined_by"], written["nodes"], written["reuse"]) == ([], [], True)


def test_nodepool_request_round_trips_through_zookeeper(store, zk):
    original = json.loads(raw("nodepool11_request_fulfilled.json"))
    zk.create("/nodepool/requests/100-0000000005", json.dumps(original).encode(),
              makepath=True)
    req = store.get_request("100-0000000005")
    lock = store.try_lock_request("100-0000000005")
    store.store_request(req, lock)
    lock.release()
    assert json.loads(zk.get("/nodepool/requests/100-0000000005")[0]) == original


@pytest.mark.parametrize("name", ["nodepool11_node_ready.json", "zuul14_node_in_use.json",
                                  "nodepool11_node_k8s.json"])
def test_node_round_trips_through_zookeeper(store, zk, name):
    original = json.loads(raw(name))
    zk.create("/nodepool/nodes/0000000042", json.dumps(original).encode(), makepath=True)
    node, lock = store.lock_and_read_node("0000000042")
    store.store_node(node, lock)
    lock.release()
    assert json.loads(zk.get("/nodepool/nodes/0000000042")[0]) == original


def test_create_request_ids_and_ordering(store, zk):
    ids = [store.create_request(NodeRequest(node_types=["a"], relative_priority=rel), prio).id
           for prio, rel in [(200, 0), (100, 3), (100, 1), (300, 0), (200, 0)]]
    assert ids == ["200-0000000000", "100-0000000001", "100-0000000002", "300-0000000003",
                   "200-0000000004"]
    assert [r.id for r in store.list_requests()] == [
        "100-0000000002", "100-0000000001", "200-0000000000", "200-0000000004",
        "300-0000000003"]
    assert zk.exists("/nodepool/requests/200-0000000000").ephemeralOwner == 0


def test_min_ready_request_is_ephemeral_and_complete(store, zk):
    req = store.create_min_ready_request("ubuntu-jammy")
    assert req.id.startswith("900-")
    stat = zk.exists(f"/nodepool/requests/{req.id}")
    assert stat.ephemeralOwner == store.session_id
    data = json.loads(zk.get(f"/nodepool/requests/{req.id}")[0])
    assert ZUUL_REQUEST_KEYS <= set(data)
    assert (data["requestor"], data["reuse"], data["node_types"], data["state"]) == \
        (MIN_READY_REQUESTOR, False, ["ubuntu-jammy"], "requested")
    assert data["event_id"]


def test_store_request_requires_lock_and_version(store, zk, zk_connect):
    rid = zuul_submit(zk)
    req = store.get_request(rid)
    with pytest.raises(NotLocked):
        store.store_request(req, None)
    lock = store.try_lock_request(rid)
    other = ZooKeeperStore(zk_connect())
    stale = store.get_request(rid)
    # Someone else writes meanwhile (Zuul revising relative_priority, say).
    fresh = other.get_request(rid)
    fresh.relative_priority = 7
    other.client.set(f"/nodepool/requests/{rid}", fresh.to_json(), version=fresh.version)
    stale.set_state("pending")
    with pytest.raises(RecordChanged):
        store.store_request(stale, lock)
    zk.delete(f"/nodepool/requests/{rid}")
    req = NodeRequest(id=rid, version=1)
    with pytest.raises(RecordGone):
        store.store_request(req, lock)
    lock.release()
    with pytest.raises(NotLocked):
        store.store_request(req, lock)


def test_never_deletes_someone_elses_request(store, zk):
    rid = zuul_submit(zk)
    with pytest.raises(ValueError):
        store.delete_own_request(store.get_request(rid))
    assert store.request_exists(rid)
    own = store.create_min_ready_request("x")
    assert store.delete_own_request(own)
    assert not store.request_exists(own.id)


def test_create_store_delete_node(store, zk, zk_connect):
    node = store.create_node(Node(state="init", type=["a"], provider="p", pool="main"))
    assert node.id == "0000000000" and node.created_time and node.state_time
    lock = store.try_lock_node(node.id)
    node.set_state("building")
    store.store_node(node, lock)
    other = ZooKeeperStore(zk_connect())
    assert other.try_lock_node(node.id) is None
    with pytest.raises(NotLocked):
        other.store_node(other.get_node(node.id), None)
    store.delete_node(node, lock)
    assert not zk.exists("/nodepool/nodes/0000000000")
    assert not lock.held
    assert store.create_node(Node(type=["a"])).id == "0000000001"


def test_lock_and_read_node_does_not_recreate_a_deleted_node(store, zk):
    assert store.lock_and_read_node("0000000099") is None
    assert not zk.exists("/nodepool/nodes/0000000099")


def test_listings_skip_malformed_znodes_with_their_path(store, zk, caplog):
    zuul_submit(zk)
    zk.create("/nodepool/requests/200-0000000001", b"{broken", makepath=True)
    zk.create("/nodepool/requests/not-a-request", b'{"state": "requested"}')
    zk.create("/nodepool/requests/200-0000000003", b'{"state": "weird"}')
    zk.create("/nodepool/nodes/0000000000", json.dumps({"state": "ready", "type": ["a"]}).encode(),
              makepath=True)
    zk.create("/nodepool/nodes/0000000001", b"[]")
    with caplog.at_level(logging.ERROR):
        assert [r.id for r in store.list_requests()] == ["200-0000000000"]
        assert [n.id for n in store.list_nodes()] == ["0000000000"]
    text = caplog.text
    for path in ("/nodepool/requests/200-0000000001", "/nodepool/requests/not-a-request",
                 "/nodepool/requests/200-0000000003", "/nodepool/nodes/0000000001"):
        assert path in text


def test_operator_delete_and_hold(store, zk, zk_connect):
    node = store.create_node(Node(state="ready", type=["a"], provider="p", pool="main"))
    held = hold_node(store, node.id, reason="debugging")
    assert (held.state, held.comment) == ("hold", "debugging")
    assert store.get_node(node.id).state == "hold"
    assert mark_node_deleting(store, node.id).state == "deleting"
    assert not store.node_locked(node.id)
    with pytest.raises(RecordNotFound) as e:
        mark_node_deleting(store, "0000000077")
    assert "0000000077" in str(e.value)
    with pytest.raises(RecordNotFound):
        hold_node(store, "0000000077")
    blocker = ZooKeeperStore(zk_connect()).try_lock_node(node.id)
    with pytest.raises(LockNotAcquired) as e:
        hold_node(store, node.id, timeout=0.3)
    assert "locked by someone else" in str(e.value)
    blocker.release()


def test_a_delete_begins_one_way_and_its_spec_carries_the_state_before(store):
    node = store.create_node(Node(state="ready", type=["a", "b"], provider="p", pool="main",
                                  external_id="server-1"))
    lock = store.try_lock_node(node.id)
    try:
        assert store.begin_delete(node, lock) == "ready"
        assert store.get_node(node.id).state == "deleting"
        version = node.version
        # Already deleting (a retry): nothing is written again.
        assert store.begin_delete(node, lock) == "deleting"
        assert node.version == version
    finally:
        lock.release()
    spec = DeleteSpec.for_node(node, state="ready")
    assert spec == DeleteSpec(node_id=node.id, provider_name="p", pool_name="main",
                              labels=("a", "b"), external_id="server-1", state="ready")
    assert DeleteSpec.for_node(node).state == "deleting"
    other = store.create_node(Node(state="ready", type=["a"], provider="p", pool="main"))
    with pytest.raises(NotLocked):
        store.begin_delete(other, None)


def test_label_names_and_registered_pools(store, zk):
    zk.create("/nodepool/components/pool/h0000000000", raw("nodepool11_pool_component.json"),
              makepath=True, ephemeral=True)
    zk.create("/nodepool/components/pool/h0000000001", json.dumps(
        {"hostname": "h2", "id": "p2", "supported_labels": ["centos", "ubuntu-jammy"]}).encode(),
        ephemeral=True)
    zk.create("/nodepool/components/pool/h0000000002", b"garbage", ephemeral=True)
    assert [p.id for p in store.registered_pools()][1] == "p2"
    assert store.label_names() == ["centos", "ubuntu-jammy", "ubuntu-noble"]


def test_store_locks_and_caches_over_tls(zk_tls_settings):
    client = connect(zk_tls_settings)
    store = ZooKeeperStore(client)
    try:
        store.start_caches()
        assert store.wait_synced(SYNC_TIMEOUT)
        req = store.create_request(NodeRequest(node_types=["a"], requestor="zuul"), 200)
        lock = store.try_lock_request(req.id)
        req.set_state("pending")
        store.store_request(req, lock)
        lock.release()
        wait_for(lambda: (r := store.get_request(req.id, cached=True)) and r.state == "pending",
                 message="the cache over TLS")
    finally:
        store.stop_caches()
        disconnect(client)
