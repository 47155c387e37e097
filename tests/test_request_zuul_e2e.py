"""Wire compatibility with Zuul's own client classes.

Zuul's side is the real ``zuul.zk.nodepool.ZooKeeperNodepool`` (zuul 14.3.0,
installed by tools/install-zuul-client.sh), driven as zuul/nodepool.py and
the executor drive it (doc/protocol.rst, "Zuul's client as a test client").  The
launcher side is this project's handler, reaper and housekeeping with the
test-double builder.  Both talk to the same real ZooKeeper chroot.
"""

from __future__ import annotations

import configparser
import json
import logging
import threading

import pytest

from nodepool.requests.reaper import NodeReaper
from nodepool.requests import housekeeping as hk
from tests.conftest import KAZOO_CONNECTION_HANDLER
from tests.fixtures.zk import FakeBuilder, drive, start_pool, wait_for

try:
    import kazoo.client
    import zuul.model
    import zuul.zk
    from zuul.lib import tracing
    from zuul.zk.exceptions import LockException
    from zuul.zk.nodepool import NodeRequestEvent, ZooKeeperNodepool
    from zuul.zk.vendor.connection import ZuulConnectionHandler
    # Importing zuul.zk swaps kazoo's connection handler for Zuul's, process
    # wide; tests/conftest.py gives every test kazoo's own back, and Zuul's is
    # set only while Zuul connects.
    HAVE_ZUUL = True
except ImportError:  # pragma: no cover - depends on the venv
    HAVE_ZUUL = False

pytestmark = pytest.mark.skipif(
    not HAVE_ZUUL, reason="zuul is not importable; run tools/install-zuul-client.sh "
                          ".venv/bin/python to install Zuul's client classes")

SYSTEM_ID = "0a1b2c3d4e5f"


class ZuulSide:
    """Zuul's ZooKeeperNodepool with the completion callback recorded."""

    def __init__(self, hosts: str, **tls):
        """``tls``: ZooKeeperClient's tls_cert, tls_key and tls_ca."""
        self.events: list[tuple[str, object]] = []
        self._cond = threading.Condition()
        kazoo.client.ConnectionHandler = ZuulConnectionHandler
        try:
            self.client = zuul.zk.ZooKeeperClient(hosts, timeout=10.0, **tls)
            self.client.connect()
        finally:
            kazoo.client.ConnectionHandler = KAZOO_CONNECTION_HANDLER
        self.nodepool = ZooKeeperNodepool(self.client, enable_node_request_cache=True,
                                          node_request_event_callback=self._on_event,
                                          enable_node_cache=True)

    def _on_event(self, request, event):
        with self._cond:
            self.events.append((request.id, event))

    def completed(self, request_id: str) -> bool:
        with self._cond:
            return (request_id, NodeRequestEvent.COMPLETED) in self.events

    def submit(self, labels, priority=200, provider=None) -> "zuul.model.NodeRequest":
        req = zuul.model.NodeRequest(SYSTEM_ID, "bs-1", "tenant-one", "check", "job-uuid",
                                     "tox-py311", list(labels), provider, 0, event_id="ev-1")
        self.nodepool.submitNodeRequest(req, priority)
        return req

    def close(self):
        self.client.disconnect()


_tracing_installed = False


@pytest.fixture
def zuul_side(zk_settings, caplog):
    global _tracing_installed
    if not _tracing_installed:
        # Gotcha 1 in section 6: submitNodeRequest needs an SDK TracerProvider.
        tracing.Tracing(configparser.ConfigParser())
        _tracing_installed = True
    side = ZuulSide(zk_settings.hosts)
    with caplog.at_level(logging.WARNING, logger="zuul"):
        yield side
        side.close()
    zuul_errors = [r for r in caplog.records
                   if r.name.startswith("zuul") and r.levelno >= logging.ERROR]
    assert zuul_errors == [], [r.getMessage() for r in zuul_errors]


def test_request_fulfil_use_and_return_with_zuuls_client(zk_store, zk, zuul_side):
    builder = FakeBuilder()
    handler = start_pool(zk_store, builder=builder)
    reaper = NodeReaper(zk_store, {"cloud": builder})
    launchers = zuul_side.nodepool.getRegisteredLaunchers()
    assert [(launcher.id, launcher.supported_labels) for launcher in launchers] == \
        [(handler.pool.pool_id, {"small", "large"})]

    zreq = zuul_side.submit(["small", "large"])
    assert zreq.id == "200-0000000000"
    # What `nodepool request-list` would show.
    assert [r.id for r in zk_store.list_requests()] == [zreq.id]
    drive(zk_store, handler, until=lambda: zuul_side.completed(zreq.id),
          message="Zuul's completion callback")

    # The scheduler and the executor read it back.
    fetched = zuul_side.nodepool.getNodeRequest(zreq.id)
    assert fetched.state == "fulfilled" and len(fetched.nodes) == 2
    assert fetched.build_set_uuid == "bs-1" and fetched.job_name == "tox-py311"
    nodes = [zuul.model.Node(["controller"], "small"), zuul.model.Node(["compute"], "large")]
    for node, node_id in zip(nodes, fetched.nodes, strict=True):
        zuul_side.nodepool.updateNode(node, node_id)
        assert node.allocated_to == fetched.id
        assert node.interface_ip and node.host_keys and node.connection_type == "ssh"
        zuul_side.nodepool.lockNode(node, timeout=30)
    assert [n.type for n in nodes] == [["small"], ["large"]]
    assert zuul_side.nodepool.deleteNodeRequest(fetched.id)

    for node in nodes:
        node.state = "in-use"
        node.user_data = {"zuul_system": SYSTEM_ID, "project_name": "example.org/project"}
        zuul_side.nodepool.storeNode(node)
    # What `nodepool list` would show: in use and locked.
    for node in nodes:
        ours = zk_store.get_node(node.id)
        assert ours.state == "in-use" and zk_store.node_locked(node.id)
        assert ours.user_data["zuul_system"] == SYSTEM_ID
        raw = json.loads(zk.get(f"/nodepool/nodes/{node.id}")[0])
        assert raw["id"] == node.id and raw["launcher"] == handler.pool.pool_id

    # While Zuul holds the nodes, nothing on our side touches them.
    wait_for(lambda: all(zk_store.node_locked(n.id, cached=True) for n in nodes) and
             not zk_store.request_exists(fetched.id, cached=True), message="the caches")
    for _ in range(3):
        handler.run_once()
        reaper.run_once()
        hk.run_housekeeping(zk_store, {"cloud"})
    assert {zk_store.get_node(n.id).state for n in nodes} == {"in-use"}

    for node in nodes:
        node.state = "used"
        zuul_side.nodepool.storeNode(node)
        zuul_side.nodepool.unlockNode(node)
    drive(zk_store, reaper, until=lambda: zk_store.list_nodes() == [],
          message="the used nodes to be reaped")
    assert builder.servers == {}
    assert sorted(builder.deleted_servers) == ["server-1", "server-2"]


def test_unknown_label_declined_to_failed_with_zuuls_client(zk_store, zuul_side):
    handler = start_pool(zk_store)
    zreq = zuul_side.submit(["gpu"])
    drive(zk_store, handler, until=lambda: zuul_side.completed(zreq.id),
          message="Zuul's completion callback")
    fetched = zuul_side.nodepool.getNodeRequest(zreq.id)
    assert fetched.state == "failed"
    assert zk_store.get_request(zreq.id).declined_by == [handler.pool.pool_id]
    # Zuul deletes failed requests itself.
    assert zuul_side.nodepool.deleteNodeRequest(zreq.id)
    assert zk_store.list_requests() == []


def test_zuul_revises_priority_only_when_we_do_not_hold_the_lock(zk_store, zuul_side):
    handler = start_pool(zk_store, labels=("small",))
    zreq = zuul_side.submit(["gpu", "small"], priority=99)
    assert zreq.id.startswith("099-")
    drive(zk_store, handler, until=lambda: zk_store.get_request(zreq.id).declined_by)
    ours = zk_store.try_lock_request(zreq.id)
    cached = wait_for(lambda: (r := zuul_side.nodepool.getNodeRequest(zreq.id, cached=True))
                      and r.stat.version == zk_store.get_request(zreq.id).version and r,
                      message="Zuul's cache")
    with pytest.raises(LockException):
        zuul_side.nodepool.lockNodeRequest(cached, blocking=False)
    ours.release()
    zuul_side.nodepool.lockNodeRequest(cached, blocking=False)
    cached.relative_priority = 5
    zuul_side.nodepool.storeNodeRequest(cached)
    zuul_side.nodepool.unlockNodeRequest(cached)
    revised = zk_store.get_request(zreq.id)
    assert revised.relative_priority == 5
    assert revised.priority == ("099", 5, zreq.id[4:])
    assert revised.declined_by == [handler.pool.pool_id] and revised.reuse is True


def test_zuul_parses_our_min_ready_requests(zk_store, zuul_side):
    # Zuul's TreeCache parses every child of /nodepool/requests, ours too.
    req = zk_store.create_min_ready_request("small")
    wait_for(lambda: req.id in zuul_side.nodepool.getNodeRequests(cached=True),
             message="Zuul's request cache to parse our request")
    parsed = zuul_side.nodepool._node_request_cache[req.id]
    assert parsed.requestor == "NodePool:min-ready" and parsed.state == "requested"
    assert parsed.labels == ["small"]
