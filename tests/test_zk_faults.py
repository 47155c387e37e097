"""The request handler and the reaper under ZooKeeper faults: a dropped
connection (the session survives), an expired session, a lost reply, a node
znode removed mid-build, abandoned ``init`` nodes and junk records.

Real ZooKeeper; connections go through a TCP proxy that can cut them.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kazoo.exceptions import ConnectionLoss

from nodepool.requests.reaper import NodeReaper
from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperServer, ZooKeeperSettings, connect, disconnect
from nodepool.zk.records import (INIT, MalformedRecord, Node, NodeRequest,
                                 PoolComponent)
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.tcpproxy import TcpProxy
from tests.fixtures.zk import (SYNC_TIMEOUT, FakeBuilder, drive, expire_session,
                               start_pool, state_of, wait_for, zuul_request)


@pytest.fixture
def proxy(zk_settings):
    server = zk_settings.servers[0]
    p = TcpProxy(server.host, server.port)
    yield p
    p.close()


@pytest.fixture
def proxied(zk_settings, proxy):
    """A store whose client reaches ZooKeeper through ``proxy``."""
    settings = ZooKeeperSettings((ZooKeeperServer("127.0.0.1", proxy.port,
                                                  zk_settings.chroot),),
                                 session_timeout=zk_settings.session_timeout)
    client = connect(settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    store.start_caches()
    assert store.wait_synced(SYNC_TIMEOUT)
    yield store
    store.stop_caches()
    disconnect(client)


@pytest.fixture
def observer(zk):
    store = ZooKeeperStore(zk)
    store.ensure_roots()
    return store


def cut_until_suspended(proxy, store):
    proxy.cut()
    wait_for(lambda: not store.connected, message="the client to notice the cut")


def heal_until_connected(proxy, store):
    proxy.heal()
    wait_for(lambda: store.connected, timeout=20, message="the client to reconnect")


# -- a disconnect is not a lost session -----------------------------------------------

def test_disconnect_keeps_the_requests_and_builds(proxied, proxy, observer, zk):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(proxied, labels=("small",), builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(proxied, handler, until=lambda: builder.builds, message="a build to start")
    session = proxied.session_id
    cut_until_suspended(proxy, proxied)
    report = handler.run_once()
    assert report.disconnected and not report.errors
    assert handler.active_request_ids == [rid]
    heal_until_connected(proxy, proxied)
    assert proxied.session_id == session, "the session should have survived"
    builder.finish_builds()
    drive(proxied, handler, until=lambda: state_of(observer, rid) == "fulfilled",
          message="the request to be fulfilled with the same build")
    assert len(builder.started) == 1
    # Nothing stays locked by nobody.
    wait_for(lambda: not observer.request_lock_holders(rid), message="the request lock to go")
    node_id = observer.get_request(rid).nodes[0]
    assert observer.get_node(node_id).state == "ready"
    assert not observer.node_lock_holders(node_id)


def test_disconnect_keeps_deletes_in_flight(proxied, proxy, observer, zk):
    builder = FakeBuilder(delete_polls=math.inf)
    node = observer.create_node(Node(state="used", type=["small"], provider="cloud",
                                     pool="main", external_id="server-x"))
    reaper = NodeReaper(proxied, {"cloud": builder})
    drive(proxied, reaper, until=lambda: builder.deletes, message="the delete to start")
    cut_until_suspended(proxy, proxied)
    assert reaper.run_once().disconnected
    assert reaper.in_progress == [node.id]
    heal_until_connected(proxy, proxied)
    builder.delete_polls = 0
    drive(proxied, reaper, until=lambda: observer.get_node(node.id) is None,
          message="the node to be deleted")
    assert len(builder.deletes) == 1, "the delete should not have been started twice"


def test_lock_released_while_disconnected_is_deleted_after_reconnect(proxied, proxy,
                                                                     observer, zk):
    rid = zuul_request(zk, ["small"])
    lock = proxied.try_lock_request(rid)
    assert lock is not None
    cut_until_suspended(proxy, proxied)
    lock.release()  # must not wait for the reconnect
    assert not lock.held
    heal_until_connected(proxy, proxied)
    proxied.session.retry_deferred()
    wait_for(lambda: not observer.request_lock_holders(rid), message="the contender to go")


def test_expired_session_drops_work_and_the_request_is_served_again(
        proxied, zk_settings, observer, zk):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(proxied, labels=("small",), builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(proxied, handler, until=lambda: builder.builds, message="a build to start")
    expire_session(proxied.client, proxied_settings(proxied, zk_settings))
    wait_for(lambda: proxied.connected, message="a new session")
    handler.run_once()
    assert handler.active_request_ids == []
    from nodepool.requests.housekeeping import reset_lost_requests
    wait_for(lambda: reset_lost_requests(observer) == [rid] or
             state_of(observer, rid) == "requested", message="the request to be reset")
    builder.finish_builds()
    drive(proxied, handler, until=lambda: state_of(observer, rid) == "fulfilled",
          message="the request to be served again")


def test_builds_of_an_expired_session_are_cancelled(zk_store, zk, zk_settings, observer):
    """Another launcher reaps the nodes of a lost session and deletes their
    servers: a build left running would keep its quota, or boot a new
    server for a node that is gone.  Both the request's build and the
    orphan build (its request cancelled) are stopped and their servers
    deleted."""
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(zk_store, labels=("small",), builder=builder)
    kept = zuul_request(zk, ["small"])
    cancelled = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: len(builder.builds) == 2,
          message="two builds to start")
    servers = sorted(b.server for b in builder.builds.values())
    zk.delete(f"/nodepool/requests/{cancelled}")
    drive(zk_store, handler, until=lambda: handler.orphan_node_ids,
          message="the cancelled request's build to go on as an orphan")
    expire_session(zk, zk_settings)
    handler.run_once()
    assert handler.active_request_ids == [] and handler.orphan_node_ids == []
    assert sorted(builder.cancelled) == servers
    assert handler.abandoned_node_ids == []
    assert state_of(observer, kept) == "pending"   # reset by housekeeping, as before


def test_finished_build_recorded_before_the_session_was_lost_is_kept(zk, zk_settings,
                                                                     observer):
    """The ready write landed but its reply was lost, then the session
    expired: the node's record owns the server, so the build is forgotten,
    not cancelled (its server may be handed out)."""
    store = LossyStore(zk, after=True)
    store.start_caches()
    assert store.wait_synced(SYNC_TIMEOUT)
    try:
        builder = FakeBuilder()
        handler = start_pool(store, labels=("small",), builder=builder)
        zuul_request(zk, ["small"])
        wait_for(lambda: handler.run_once() and store.lost, message="the lost reply")
        (build,) = builder.builds.values()
        node_id = build.spec.node_id
        assert observer.get_node(node_id).state == "ready"
        expire_session(zk, zk_settings)
        handler.run_once()
        assert builder.cancelled == [] and handler.abandoned_node_ids == []
        assert f"build-{node_id}-{build.server}" in builder.forgotten
    finally:
        store.stop_caches()


def test_delete_of_an_expired_session_is_polled_to_its_end(zk_store, zk, zk_settings,
                                                           observer):
    """The builder keeps a delete until it is polled to its end; the reaper
    that lost the node's lock polls it on (and starts no second delete of
    the node meanwhile)."""
    builder = FakeBuilder(delete_polls=3)
    node = observer.create_node(Node(state="used", type=["small"], provider="cloud",
                                     pool="main", external_id="server-x"))
    wait_for(lambda: zk_store.get_node(node.id, cached=True), message="the cache")
    reaper = NodeReaper(zk_store, {"cloud": builder})
    assert reaper.run_once().started == [node.id]
    (handle,) = builder.deletes
    expire_session(zk, zk_settings)
    drive(zk_store, reaper, until=lambda: observer.get_node(node.id) is None,
          message="the node to be deleted")
    assert builder.deletes[handle][1] >= 3, "the first delete was left unpolled"
    assert builder.deleted_servers[0] == "server-x"


def proxied_settings(store, zk_settings):
    host, port = store.client.hosts[0]
    return ZooKeeperSettings((ZooKeeperServer(host, port, zk_settings.chroot),),
                             session_timeout=zk_settings.session_timeout)


# -- lost replies and failed writes when a build finishes ------------------------------

class LossyStore(ZooKeeperStore):
    """Loses the reply of the first write that marks a node ``ready``
    (``after=True``: the write landed) or fails it (``after=False``)."""

    def __init__(self, client, after: bool):
        super().__init__(client)
        self.after = after
        self.lost = 0

    def _write(self, path, record, kind):
        ready = kind == "node" and record.state == "ready"
        if ready and not self.lost:
            self.lost += 1
            if self.after:
                super()._write(path, record, kind)
                record.version -= 1  # as if we never saw the reply
            raise ConnectionLoss()
        return super()._write(path, record, kind)


@pytest.mark.parametrize("after", [True, False], ids=["reply-lost", "write-failed"])
def test_failed_ready_write_is_written_again(zk, observer, after):
    store = LossyStore(zk, after)
    store.start_caches()
    assert store.wait_synced(SYNC_TIMEOUT)
    try:
        builder = FakeBuilder()
        handler = start_pool(store, labels=("small",), builder=builder)
        rid = zuul_request(zk, ["small"])
        report = handler.run_once()
        for _ in range(50):
            if state_of(observer, rid) == "fulfilled":
                break
            report = handler.run_once()
            store.wait_for_change(0.05)
        assert state_of(observer, rid) == "fulfilled", report
        assert store.lost == 1
        node = observer.get_node(observer.get_request(rid).nodes[0])
        assert node.state == "ready" and node.external_id
        assert builder.forgotten, "the builder should be told the result is recorded"
    finally:
        store.stop_caches()


# -- a node znode removed mid-build -------------------------------------------------------

def test_node_removed_mid_build_cancels_the_build(zk_store, observer, zk):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(zk_store, labels=("small",), builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: builder.builds, message="a build to start")
    (first,) = [b.spec.node_id for b in builder.builds.values()]
    server = next(iter(builder.builds.values())).server
    zk.delete(paths.node_path(first), recursive=True)
    drive(zk_store, handler, until=lambda: builder.cancelled, message="the build to be cancelled")
    assert builder.cancelled == [server]
    builder.finish_builds()
    drive(zk_store, handler, until=lambda: state_of(observer, rid) == "fulfilled",
          message="the request to get another node")
    assert observer.get_request(rid).nodes != [first]


# -- init nodes nobody will finish ----------------------------------------------------------

def test_abandoned_init_node_is_reaped(zk_store, observer):
    old = 1_000_000.0
    gone = observer.create_node(Node(state=INIT, type=["small"], provider="cloud",
                                     pool="main", allocated_to="200-0000009999",
                                     state_time=old, created_time=old))
    fresh = observer.create_node(Node(state=INIT, type=["small"], provider="cloud",
                                      pool="main", allocated_to="200-0000009998"))
    builder = FakeBuilder()
    reaper = NodeReaper(zk_store, {"cloud": builder})
    drive(zk_store, reaper, until=lambda: observer.get_node(gone.id) is None,
          message="the abandoned init node to be deleted")
    # One just created (its worker is about to lock it) is left alone.
    assert observer.get_node(fresh.id).state == INIT


# -- junk records --------------------------------------------------------------------------------

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                        st.floats(allow_nan=True, allow_infinity=True))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)
NODE_KEYS = sorted(Node.KEYS)
REQUEST_KEYS = sorted(NodeRequest.KEYS)


def _junk(keys):
    return st.dictionaries(st.sampled_from(keys), JSON_VALUES, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_junk(NODE_KEYS), state=JSON_VALUES)
def test_any_junk_node_is_malformed_or_valid(body, state):
    body = dict(body, state=state)
    data = json.dumps(body, allow_nan=True).encode()
    try:
        Node.from_json(data, "0000000001", "/nodepool/nodes/0000000001")
    except MalformedRecord as e:
        assert e.path == "/nodepool/nodes/0000000001"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_junk(REQUEST_KEYS))
def test_any_junk_request_is_malformed_or_valid(body):
    data = json.dumps(body, allow_nan=True).encode()
    try:
        NodeRequest.from_json(data, "200-0000000001", "/nodepool/requests/200-0000000001")
    except MalformedRecord:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_are_malformed_or_valid(data):
    for parse in (lambda: Node.from_json(data, "0000000001", "p"),
                  lambda: NodeRequest.from_json(data, "200-0000000001", "p")):
        try:
            parse()
        except MalformedRecord:
            pass


@pytest.mark.parametrize("body", [
    {"state": []},
    {"state": "hold", "hold_expiration": 1e400},
    {"state": "ready", "state_time": float("nan")},
    {"state": "ready", "state_time": float("inf")},
    {"state": "ready", "host_keys": "ssh-ed25519 AAAA"},
    {"state": "ready", "resources": [1, 2]},
    {"state": "ready", "hostname": {"a": 1}},
], ids=["state-list", "huge-hold", "nan-time", "inf-time", "host-keys-string",
        "resources-list", "hostname-object"])
def test_known_junk_nodes_are_malformed(body):
    data = json.dumps(body, allow_nan=True).encode()
    if b"1e+400" not in data and "hold_expiration" in body:
        data = data.replace(b"Infinity", b"1e400")
    with pytest.raises(MalformedRecord) as info:
        Node.from_json(data, "0000000001", "/nodepool/nodes/0000000001")
    assert info.value.path == "/nodepool/nodes/0000000001"


def test_ready_node_overwritten_with_junk_does_not_stop_its_label(zk_store, observer, zk):
    builder = FakeBuilder()
    handler = start_pool(zk_store, labels=("small",), builder=builder)
    ready = observer.create_node(Node(state="ready", type=["small"], provider="cloud",
                                      pool="main", external_id="server-old"))
    wait_for(lambda: zk_store.get_node(ready.id, cached=True) is not None,
             message="the cache to see the ready node")
    zk.set(paths.node_path(ready.id), json.dumps(
        {"state": [], "type": ["small"], "provider": "cloud", "hold_expiration": 1e300,
         "state_time": "yesterday"}).encode())
    wait_for(lambda: zk_store.nodes_cache.malformed().get(ready.id),
             message="the cache to see the junk")
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(observer, rid) == "fulfilled",
          message="the request to be served beside the junk node")
    assert ready.id not in observer.get_request(rid).nodes
    assert zk_store.node_exists(ready.id, cached=True)


def test_pool_registration_is_not_doubled_by_a_disconnect(proxied, proxy, observer):
    handler = start_pool(proxied, labels=("small",))
    handler.run_once()
    cut_until_suspended(proxy, proxied)
    handler.run_once()
    assert handler.registration.ensure_registered() is False
    heal_until_connected(proxy, proxied)
    handler.run_once()
    pools = [p for p in observer.registered_pools() if isinstance(p, PoolComponent)]
    assert len(pools) == 1
    assert handler.registration.registrations == 1
