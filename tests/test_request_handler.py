"""The request protocol end to end: the handler on the real server with the
test-double builder, and requests written the way Zuul writes them."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading


from nodepool.requests.builder import BuildState, BuildStatus
from nodepool.requests.minready import finish_min_ready, submit_min_ready
from nodepool.requests.reaper import NodeReaper
from nodepool.requests import housekeeping as hk
from nodepool.zk.records import Node
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.zk import (REQUESTOR_DATA, SYNC_TIMEOUT, FakeBuilder,
                               drive, expire_session, other_pool, start_pool,
                               state_of, wait_for, zuul_request)

# -- the main path -----------------------------------------------------------------------------

def test_accept_build_and_fulfil_in_node_types_order(zk_store, zk):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small", "large", "small"])
    drive(zk_store, handler, until=lambda: len(builder.started) == 3, message="three builds")
    req = zk_store.get_request(rid)
    assert req.state == "pending"
    assert zk_store.request_lock_holders(rid)          # the lock is kept while pending
    nodes = zk_store.list_nodes()
    assert {n.state for n in nodes} == {"building"}
    for n in nodes:
        assert (n.allocated_to, n.provider, n.pool, n.launcher, n.tenant_name, n.requestor) == \
            (rid, "cloud", "main", handler.pool.pool_id, "tenant-one", "zuul-system-id")
        assert zk_store.node_locked(n.id)
        assert n.external_id                       # recorded while still building
    builder.finish_builds()
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled",
          message="fulfilment")
    req = zk_store.get_request(rid)
    assert [zk_store.get_node(i).type for i in req.nodes] == [["small"], ["large"], ["small"]]
    assert req.requestor_data == REQUESTOR_DATA and req.event_id == "ev-1"
    assert req.declined_by == []
    for node_id in req.nodes:
        node = zk_store.get_node(node_id)
        assert node.state == "ready" and node.allocated_to == rid
        assert node.interface_ip and node.host_keys and node.python_path == "auto"
        assert node.connection_type == "ssh" and node.connection_port == 22
        assert not zk_store.node_locked(node_id)
        # Node locks were let go before "fulfilled" was written.
        lock_stat = zk.exists(f"/nodepool/nodes/{node_id}/lock")
        assert lock_stat.pzxid < zk.exists(f"/nodepool/requests/{rid}").mzxid
    assert zk_store.request_lock_holders(rid) == []
    assert handler.active_request_ids == []
    assert zk_store.request_exists(rid)              # only Zuul deletes it


def test_reuses_unallocated_ready_nodes_of_its_pool(zk_store, zk):
    builder = FakeBuilder()
    handler = start_pool(zk_store, builder=builder)
    mine = zk_store.create_node(Node(state="ready", type=["small"], provider="cloud",
                                     pool="main"))
    zk_store.create_node(Node(state="ready", type=["small"], provider="cloud", pool="other"))
    zk_store.create_node(Node(state="ready", type=["small"], provider="cloud-b", pool="main"))
    wait_for(lambda: len(zk_store.list_nodes(cached=True)) == 3, message="the nodes")
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    assert zk_store.get_request(rid).nodes == [mine.id]
    assert builder.started == []
    node = zk_store.get_node(mine.id)
    assert (node.allocated_to, node.tenant_name, node.requestor) == \
        (rid, "tenant-one", "zuul-system-id")


def test_reuse_false_builds_new_nodes(zk_store):
    builder = FakeBuilder()
    handler = start_pool(zk_store, builder=builder)
    ready = zk_store.create_node(Node(state="ready", type=["small"], provider="cloud",
                                      pool="main"))
    wait_for(lambda: zk_store.get_node(ready.id, cached=True), message="the cache")
    submit = submit_min_ready(zk_store, {"small": 2})
    assert len(submit) == 1          # one ready node already counts
    rid = submit[0].id
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    assert zk_store.get_request(rid).nodes != [ready.id]
    assert len(builder.started) == 1


# -- declining -----------------------------------------------------------------------------------

def test_unknown_label_is_declined_to_failed_by_the_only_pool(zk_store, zk):
    handler = start_pool(zk_store)
    rid = zuul_request(zk, ["gpu"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "failed")
    req = zk_store.get_request(rid)
    assert req.declined_by == [handler.pool.pool_id]
    assert req.requestor_data == REQUESTOR_DATA
    assert zk_store.request_lock_holders(rid) == []
    assert zk_store.list_nodes() == []


def test_decline_waits_for_every_registered_pool(zk_store, zk, zk_connect):
    handler = start_pool(zk_store)
    other_store = ZooKeeperStore(zk_connect())
    other_store.start_caches()
    assert other_store.wait_synced(SYNC_TIMEOUT)
    other = start_pool(other_store, labels=("medium",), provider="cloud-b")
    rid = zuul_request(zk, ["gpu"])
    drive(zk_store, handler, until=lambda: handler.pool.pool_id in
          zk_store.get_request(rid).declined_by)
    assert state_of(zk_store, rid) == "requested"
    drive(zk_store, handler, other, until=lambda: state_of(zk_store, rid) == "failed")
    assert set(zk_store.get_request(rid).declined_by) == {handler.pool.pool_id,
                                                           other.pool.pool_id}
    other_store.stop_caches()


def test_pool_without_the_label_defers_to_a_pool_that_has_it(zk_store, zk, zk_connect):
    handler = start_pool(zk_store, labels=("small",))
    able = other_pool(zk_connect(), labels=("small", "gpu"))
    rid = zuul_request(zk, ["small", "gpu"])
    wait_for(lambda: zk_store.get_request(rid, cached=True) and
             len(zk_store.registered_pools(cached=True)) == 2, message="the caches")
    report = handler.run_once()
    assert rid in report.deferred
    assert zk_store.get_request(rid).version == 0    # not touched
    able.unregister()
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "failed")


def test_defers_to_a_lower_priority_number_unless_paused(zk_store, zk, zk_connect):
    handler = start_pool(zk_store, priority=100)
    better = other_pool(zk_connect(), priority=50)
    rid = zuul_request(zk, ["small"])
    wait_for(lambda: zk_store.get_request(rid, cached=True) and
             len(zk_store.registered_pools(cached=True)) == 2, message="the caches")
    for _ in range(3):
        assert rid in handler.run_once().deferred
    assert zk_store.get_request(rid).version == 0
    better.update(paused=True)
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled",
          message="the paused better pool to be ignored")


def test_provider_preference(zk_store, zk, zk_connect):
    handler = start_pool(zk_store, provider="cloud")
    preferred = other_pool(zk_connect(), provider="cloud-b", priority=200)
    rid = zuul_request(zk, ["small"], provider="cloud-b")
    wait_for(lambda: zk_store.get_request(rid, cached=True) and
             len(zk_store.registered_pools(cached=True)) == 2, message="the caches")
    assert rid in handler.run_once().deferred
    # The preferred provider declines; then anyone may serve it.
    other_store = ZooKeeperStore(preferred.client)
    lock = other_store.try_lock_request(rid)
    req = other_store.get_request(rid)
    req.declined_by.append(preferred.component.id)
    other_store.store_request(req, lock)
    lock.release()
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")


# -- quota, failures, aborts ---------------------------------------------------------------------

def test_no_headroom_keeps_request_pending_and_pauses_the_pool(zk_store, zk):
    builder = FakeBuilder(max_servers=1)
    handler = start_pool(zk_store, builder=builder)
    reaper = NodeReaper(zk_store, {"cloud": builder})
    first = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, first) == "fulfilled")
    second = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: handler.paused, message="the pool to pause")
    assert state_of(zk_store, second) == "pending"
    assert json.loads(zk.get(handler.registration.path)[0])["paused"] is True
    third = zuul_request(zk, ["large"])
    wait_for(lambda: zk_store.get_request(third, cached=True), message="the third request")
    for _ in range(3):
        handler.run_once()
    assert state_of(zk_store, third) == "requested"   # not accepted while paused
    # Zuul uses and returns the first node; the reaper deletes it.
    node_id = zk_store.get_request(first).nodes[0]
    zk.delete(f"/nodepool/requests/{first}")
    node, lock = zk_store.lock_and_read_node(node_id)
    node.set_state("used")
    zk_store.store_node(node, lock)
    lock.release()
    drive(zk_store, handler, reaper, until=lambda: state_of(zk_store, second) == "fulfilled",
          message="the waiting request to be served once headroom returns")
    assert len(builder.servers) == 1


def test_node_failure_declines_and_leaves_the_node_for_the_reaper(zk_store, zk):
    builder = FakeBuilder(fail_labels={"large"})
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small", "large"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "failed")
    assert zk_store.get_request(rid).declined_by == [handler.pool.pool_id]
    nodes = {n.type[0]: n for n in zk_store.list_nodes()}
    assert nodes["large"].state == "failed" and not zk_store.node_locked(nodes["large"].id)
    # The good node is released for reuse, not thrown away.
    assert (nodes["small"].state, nodes["small"].allocated_to) == ("ready", None)
    assert not zk_store.node_locked(nodes["small"].id)
    reaper = NodeReaper(zk_store, {"cloud": builder})
    drive(zk_store, reaper, until=lambda: zk_store.get_node(nodes["large"].id) is None,
          message="the failed node to be reaped")
    assert zk_store.get_node(nodes["small"].id).state == "ready"


class AbortOnce(FakeBuilder):
    def __init__(self):
        super().__init__()
        self.aborted = False

    def poll_build(self, handle):
        if not self.aborted:
            self.aborted = True
            build = self.builds[handle]
            self.servers.pop(build.server, None)
            return BuildStatus(BuildState.ABORTED, reason="over quota")
        return super().poll_build(handle)


def test_aborted_node_is_rebuilt(zk_store, zk):
    builder = AbortOnce()
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    assert len(builder.started) == 2
    states = sorted(n.state for n in zk_store.list_nodes())
    assert states == ["aborted", "ready"]
    assert zk_store.get_request(rid).declined_by == []


# -- the request vanishes ------------------------------------------------------------------------

def test_request_deleted_mid_build(zk_store, zk):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small", "large"])
    drive(zk_store, handler, until=lambda: len(builder.started) == 2)
    zk.delete(f"/nodepool/requests/{rid}")           # Zuul cancels, without the lock
    drive(zk_store, handler, until=lambda: not handler.active_request_ids,
          message="the handler to let the request go")
    assert zk_store.request_lock_holders(rid) == []
    assert sorted(handler.orphan_node_ids) == sorted(n.id for n in zk_store.list_nodes())
    builder.finish_builds()
    drive(zk_store, handler, until=lambda: not handler.orphan_node_ids)
    for node in zk_store.list_nodes():
        assert (node.state, node.allocated_to) == ("ready", None)
        assert not zk_store.node_locked(node.id)
    assert not zk_store.request_exists(rid)


def test_request_deleted_after_fulfilment_releases_nodes_via_housekeeping(zk_store, zk):
    handler = start_pool(zk_store)
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    node_id = zk_store.get_request(rid).nodes[0]
    zk.delete(f"/nodepool/requests/{rid}")           # Zuul never used the node
    wait_for(lambda: not zk_store.request_exists(rid, cached=True), message="the cache")
    assert hk.deallocate_orphaned_nodes(zk_store) == [node_id]
    assert zk_store.get_node(node_id).allocated_to is None


# -- several launchers, session loss, bad data -----------------------------------------------

def test_two_launchers_serve_each_request_once(zk_store, zk, zk_connect):
    other_store = ZooKeeperStore(zk_connect())
    other_store.start_caches()
    assert other_store.wait_synced(SYNC_TIMEOUT)
    handlers = [start_pool(zk_store), start_pool(other_store)]
    labels = [["small"], ["large", "small"], ["small"], ["large"], ["small", "small"], ["large"]]
    rids = [zuul_request(zk, ls) for ls in labels * 2]
    accepted: list[list[str]] = [[], []]
    errors: list[str] = []
    stop = threading.Event()

    def loop(i):
        while not stop.is_set():
            report = handlers[i].run_once()
            accepted[i].extend(report.accepted)
            errors.extend(report.errors)
            handlers[i].store.wait_for_change(0.02)

    threads = [threading.Thread(target=loop, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(state_of(zk_store, r) == "fulfilled" for r in rids), 30,
                 "every request to be fulfilled")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    # Each request was accepted by exactly one of them, once.
    assert sorted(accepted[0] + accepted[1]) == sorted(rids)
    seen = [n for r in rids for n in zk_store.get_request(r).nodes]
    assert len(seen) == len(set(seen)) == 2 * sum(map(len, labels))
    for r in rids:
        for node_id in zk_store.get_request(r).nodes:
            assert zk_store.get_node(node_id).allocated_to == r
    other_store.stop_caches()


def test_session_loss_mid_build_recovers_without_leaking(zk_store, zk, zk_settings, zk_connect):
    builder = FakeBuilder(polls_to_ready=math.inf)
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: len(builder.started) == 1)
    first_node = zk_store.list_nodes()[0]
    expire_session(zk, zk_settings)
    handler.run_once()                              # notices; drops what it held
    assert handler.active_request_ids == []
    # Another launcher's housekeeping resets the lost request and reaps the
    # unlocked building node.
    helper = ZooKeeperStore(zk_connect())
    helper.start_caches()
    assert helper.wait_synced(SYNC_TIMEOUT)
    wait_for(lambda: not helper.node_locked(first_node.id, cached=True), message="lock gone")
    reaper = NodeReaper(helper, {"cloud": builder})
    drive(helper, reaper, until=lambda: (hk.reset_lost_requests(helper) or True)
          and state_of(helper, rid) == "requested" and helper.get_node(first_node.id) is None,
          message="reset and reaping")
    assert builder.deleted_servers == ["server-1"]
    builder.finish_builds()
    assert zk_store.wait_synced(SYNC_TIMEOUT)
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    assert len(builder.servers) == 1                # nothing leaked
    assert handler.registration.registrations == 2  # re-registered in the new session
    helper.stop_caches()


def test_malformed_request_does_not_stop_the_pool(zk_store, zk, caplog):
    handler = start_pool(zk_store)
    zk.create("/nodepool/requests/100-0000000000", b'{"state": "requested", "node_types": 5}',
              makepath=True)
    zk.create("/nodepool/requests/100-0000000001", b"\x00garbage")
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, rid) == "fulfilled")
    assert zk.get("/nodepool/requests/100-0000000001")[0] == b"\x00garbage"
    assert "/nodepool/requests/100-0000000000" in caplog.text


# -- min-ready -------------------------------------------------------------------------------------

def test_min_ready_requests_are_served_and_cleaned_up(zk_store):
    builder = FakeBuilder()
    handler = start_pool(zk_store, builder=builder)
    created = submit_min_ready(zk_store, {"small": 2, "large": 1})
    assert sorted(r.node_types[0] for r in created) == ["large", "small", "small"]
    drive(zk_store, handler, until=lambda: all(state_of(zk_store, r.id) == "fulfilled"
                                               for r in created))
    wait_for(lambda: all(zk_store.get_request(r.id, cached=True).state == "fulfilled"
                         for r in created), message="the cache")
    assert sorted(finish_min_ready(zk_store)) == sorted(r.id for r in created)
    nodes = zk_store.list_nodes()
    assert len(nodes) == 3
    assert all(n.state == "ready" and n.allocated_to is None for n in nodes)
    wait_for(lambda: not zk_store.list_requests(cached=True)
             and all(n.allocated_to is None for n in zk_store.list_nodes(cached=True)),
             message="the cache")
    assert submit_min_ready(zk_store, {"small": 2, "large": 1}) == []


def test_min_ready_request_is_declined_without_headroom(zk_store):
    handler = start_pool(zk_store, builder=FakeBuilder(max_servers=0))
    [req] = submit_min_ready(zk_store, {"small": 1})
    drive(zk_store, handler, until=lambda: state_of(zk_store, req.id) == "failed")
    assert not handler.paused
    wait_for(lambda: zk_store.get_request(req.id, cached=True).state == "failed",
             message="the cache")
    assert finish_min_ready(zk_store) == [req.id]


class _CountingBuilder(FakeBuilder):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.capacity_asks = 0

    def capacity(self, labels, pool=None):
        self.capacity_asks += 1
        return super().capacity(labels, pool)


def test_a_request_waiting_at_max_servers_is_told_to_the_builder(zk_store, zk):
    # The pool's max-servers binds, not the builder's capacity; the builder
    # is asked anyway, so it knows a request waits (an OpenStack provider then
    # hurries to see its deleted servers gone).
    builder = _CountingBuilder()
    handler = start_pool(zk_store, builder=builder, max_servers=1)
    first = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, first) == "fulfilled")
    second = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: handler.paused, message="the pool to pause")
    assert state_of(zk_store, second) == "pending"
    # While the request waits (accepted: its acceptance asked once already),
    # the builder keeps being told, about once a second.
    asked = builder.capacity_asks
    drive(zk_store, handler, until=lambda: builder.capacity_asks >= asked + 2, timeout=10,
          message="the builder to be asked again while the request waits")
    assert state_of(zk_store, second) == "pending"


def test_a_request_accepted_and_built_in_one_pass_asks_about_room_once(zk_store, zk):
    # Accepting it asks whether it would ever fit; its node then needs no
    # second answer in the same pass.
    builder = _CountingBuilder()
    handler = start_pool(zk_store, builder=builder)
    rid = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: len(builder.started) == 1, message="the build")
    assert state_of(zk_store, rid) in ("pending", "fulfilled")
    assert builder.capacity_asks == 1


# -- read from other threads -------------------------------------------------------------------

def test_pool_state_is_read_safely_from_other_threads(zk_store, zk):
    """The status API, statsd and the lost-request reset read what a pool
    holds from their own threads while the pool's thread accepts, fulfils
    and drops requests (a dict changed while it is iterated raises)."""
    builder = FakeBuilder(polls_to_ready=2)
    handler = start_pool(zk_store, labels=("small",), builder=builder)
    rids = [zuul_request(zk, ["small"]) for _ in range(40)]
    stop = threading.Event()
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                _ = (handler.paused, handler.active_request_ids, handler.orphan_node_ids)
            except RuntimeError as e:  # "dictionary changed size during iteration"
                errors.append(e)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as possible
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        drive(zk_store, handler, timeout=60,
              until=lambda: errors or all(state_of(zk_store, r) == "fulfilled" for r in rids),
              message="every request to be fulfilled")
    finally:
        stop.set()
        for t in readers:
            t.join(10)
        sys.setswitchinterval(old)
    assert errors == []


def test_a_reload_that_raises_max_servers_lets_the_waiting_request_in(zk_store, zk):
    # The launcher hands a reloaded pool's settings to its handler; the
    # admission step must decide by them too, not by the settings it began with.
    handler = start_pool(zk_store, max_servers=1)
    first = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: state_of(zk_store, first) == "fulfilled")
    second = zuul_request(zk, ["small"])
    drive(zk_store, handler, until=lambda: handler.paused, message="the pool to pause")
    assert state_of(zk_store, second) == "pending"
    handler.pool = dataclasses.replace(handler.pool, max_servers=2)
    drive(zk_store, handler, until=lambda: state_of(zk_store, second) == "fulfilled",
          message="the second request served after max-servers was raised")
