"""The launcher end to end: real ZooKeeper, the fakecloud over HTTP, real openstacksdk."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.launcher import maintenance
from nodepool.launcher.launcher import Launcher
from nodepool.zk.client import connect, disconnect
from nodepool.zk.node_admin import mark_node_deleting
from nodepool.zk.records import Node, NodeRequest
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.fakecloud import wait_for

SMALL = {"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}


def write_config(tmp_path, cloud, zk_settings, *, labels=None, pool=None, provider=None,
                 extra=None):
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    server = zk_settings.servers[0]
    pool_cfg = {"name": "main", "max-servers": 10, "host-key-checking": False,
                "auto-floating-ip": False, "labels": [SMALL]}
    pool_cfg.update(pool or {})
    provider_cfg = {"name": "fake", "cloud": "fakecloud", "rate": 0.01,
                    "launch-retries": 2,
                    "cloud-images": [{"name": "img", "image-name": "cirros"}],
                    "pools": [pool_cfg]}
    provider_cfg.update(provider or {})
    data = {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                   "chroot": zk_settings.chroot}],
            "labels": labels or [{"name": "small"}],
            # A free port: tests run next to other launchers (benchmark, quick start).
            "webapp": {"port": 0},
            "providers": [provider_cfg]}
    data.update(extra or {})
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(str(path), str(clouds), drivers=registry.drivers())
    return config


@pytest.fixture
def store(zk_settings):
    client = connect(zk_settings)
    s = ZooKeeperStore(client)
    s.ensure_roots()
    yield s
    disconnect(client)


@pytest.fixture
def run_launcher():
    started = []

    def start(config):
        launcher = Launcher(config, provider_options={"server_list_interval": 0.5,
                                                      "leak_interval": 2.0})
        launcher.start()
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop(wait=10)


def zuul_request(store, labels, priority=200, **kw):
    req = NodeRequest(state="requested", node_types=list(labels), requestor="zuul-test",
                      requestor_data={"build_set_uuid": "bs1", "job_name": "tox"},
                      event_id="ev", tenant_name=kw.pop("tenant_name", "tenant-one"), **kw)
    return store.create_request(req, priority)


def finished(store, request_id):
    req = store.get_request(request_id)
    return req if req is not None and req.state in ("fulfilled", "failed") else None


def use_and_return(store, request):
    """What Zuul's executor does: lock the nodes, delete the request, in-use, used."""
    locks = []
    for node_id in request.nodes:
        node, lock = store.lock_and_read_node(node_id, timeout=30)
        assert node.allocated_to == request.id
        locks.append((node, lock))
    store.client.delete(f"/nodepool/requests/{request.id}")
    for node, lock in locks:
        node.state = "in-use"
        store.store_node(node, lock)
        node.state = "used"
        store.store_node(node, lock)
        lock.release()


def test_requests_fulfilled_used_nodes_deleted_no_leaks(tmp_path, make_fakecloud, zk_settings,
                                                         store, run_launcher):
    cloud = make_fakecloud()
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["small", "small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    assert len(done.nodes) == 2
    assert done.requestor_data == {"build_set_uuid": "bs1", "job_name": "tox"}
    for node_id in done.nodes:
        node = store.get_node(node_id)
        assert node.state == "ready" and node.allocated_to == req.id
        assert node.interface_ip and node.external_id and node.provider == "fake"
        assert node.connection_type == "ssh" and node.python_path == "auto"
        assert node.resources["instances"] == 1
        assert not store.node_locked(node_id)  # released before fulfilled
    use_and_return(store, done)
    wait_for(lambda: not store.list_nodes(), 30, what="used nodes deleted")
    wait_for(lambda: not cloud.servers(), 30, what="servers gone")
    assert cloud.counters()["quota_403"] == 0
    assert launcher.ledger.estimate("fake").ledger_used.instances == 0


def test_instance_properties_reach_the_server_formatted_with_the_request(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):
    cloud = make_fakecloud()
    label = dict(SMALL, **{
        "instance-properties": {"team": "ci", "long": "x" * 300},
        "dynamic-instance-properties": {
            "zuul_job": "{request.requestor_data[job_name]}",
            "zuul_request": "{request.id}/{request.tenant_name}",
            # Zuul did not send this key: left out, the node still boots.
            "zuul_branch": "{request.requestor_data[branch]}"}})
    run_launcher(write_config(tmp_path, cloud, zk_settings, pool={"labels": [label]}))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    [server] = cloud.servers()
    meta = server["metadata"]
    assert meta["zuul_job"] == "tox"
    assert meta["zuul_request"] == f"{req.id}/tenant-one"
    assert "zuul_branch" not in meta
    assert meta["team"] == "ci" and meta["long"] == "x" * 255   # nova's limit
    assert meta["nodepool_node_id"] == done.nodes[0]


def test_unknown_label_is_declined_to_failed(tmp_path, make_fakecloud, zk_settings, store,
                                             run_launcher):
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["no-such-label"])
    done = wait_for(lambda: finished(store, req.id), 30, what="decline")
    assert done.state == "failed"
    assert len(done.declined_by) == 1
    assert not cloud.servers()


def test_min_ready_and_reuse(tmp_path, make_fakecloud, zk_settings, store, run_launcher):
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              labels=[{"name": "small", "min-ready": 2}]))
    wait_for(lambda: len([n for n in store.list_nodes()
                          if n.state == "ready" and not n.allocated_to]) == 2,
             40, what="two min-ready nodes")
    ready_ids = {n.id for n in store.list_nodes()}
    creates_before = cloud.request_count("POST /compute/v2.1/servers", 202)
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    assert done.nodes[0] in ready_ids  # an existing ready node was handed over
    # ...and min-ready builds a replacement.
    wait_for(lambda: len([n for n in store.list_nodes()
                          if n.state == "ready" and not n.allocated_to]) == 2,
             40, what="min-ready replenished")
    assert cloud.request_count("POST /compute/v2.1/servers", 202) >= creates_before + 1


def test_max_ready_age_replaces_old_ready_nodes(tmp_path, make_fakecloud, zk_settings,
                                                store, run_launcher, monkeypatch):
    monkeypatch.setattr(maintenance, "MAX_READY_AGE_INTERVAL", 0.5)
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              labels=[{"name": "small", "min-ready": 1, "max-ready-age": 3}]))
    first = wait_for(lambda: [n for n in store.list_nodes() if n.state == "ready"], 40,
                     what="a min-ready node")[0]
    # Past its age it is deleted, server included, and min-ready builds another.
    wait_for(lambda: first.id not in {n.id for n in store.list_nodes()}, 30,
             what="the old ready node deleted")
    wait_for(lambda: first.external_id not in {s["id"] for s in cloud.servers()}, 30,
             what="its server deleted")
    second = wait_for(lambda: [n for n in store.list_nodes() if n.state == "ready"], 40,
                      what="a new min-ready node")[0]
    assert second.id != first.id and second.external_id != first.external_id


def test_quota_contention_has_no_403s_and_no_leaks(tmp_path, make_fakecloud, zk_settings,
                                                   store, run_launcher):
    cloud = make_fakecloud({"projects": [{"name": "ci",
                                          "users": [{"name": "nodepool", "password": "pw"}],
                                          "limits": {"instances": 3, "cores": 100,
                                                     "ram": 1000000}}],
                            "servers": {"boot_seconds": 0.5, "delete_seconds": 1.5}})
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    requests = [zuul_request(store, ["small"]) for _ in range(8)]
    pending = {r.id for r in requests}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for rid in sorted(pending):
            done = finished(store, rid)
            if done is not None:
                assert done.state == "fulfilled", done
                use_and_return(store, done)
                pending.discard(rid)
        time.sleep(0.1)
    assert not pending, f"unfulfilled: {pending}"
    wait_for(lambda: not cloud.servers() and not store.list_nodes(), 60, what="drained")
    counters = cloud.counters()
    assert counters["quota_403"] == 0
    assert cloud.peak_usage()["instances"] <= 3
    assert launcher.ledger.estimate("fake").ledger_used.instances == 0


def test_tenant_limit_counts_other_launchers_nodes(tmp_path, make_fakecloud, zk_settings,
                                                   store, run_launcher):
    cloud = make_fakecloud()
    launcher = run_launcher(write_config(
        tmp_path, cloud, zk_settings,
        extra={"tenant-resource-limits": [{"tenant-name": "tenant-one", "max-servers": 2}]}))
    # Another launcher's node of the tenant, as ZooKeeper shows it.
    other = store.create_node(Node(state="in-use", provider="other-cloud", pool="p",
                                   type=["small"], tenant_name="tenant-one",
                                   resources={"instances": 1, "cores": 1, "ram": 512}))
    # The launcher counts it from its cache: let the cache see it first.
    wait_for(lambda: launcher.store.get_node(other.id, cached=True), 10,
             what="the launcher's cache to see the other launcher's node")
    limited = zuul_request(store, ["small", "small"], tenant_name="tenant-one")
    free = zuul_request(store, ["small", "small"], tenant_name="tenant-two")
    assert wait_for(lambda: finished(store, free.id), 30, what="unlimited tenant").state \
        == "fulfilled"
    # Room for one more of tenant-one's nodes, not two: the request waits,
    # unaccepted, without pausing the pool for other tenants.
    worker = launcher.pool_workers["fake-main"]
    wait_for(lambda: worker.last_report and limited.id in worker.last_report.deferred, 30,
             what="request deferred on the tenant limit")
    later = zuul_request(store, ["small"], tenant_name="tenant-two")
    assert wait_for(lambda: finished(store, later.id), 30, what="other tenant").state \
        == "fulfilled"
    assert store.get_request(limited.id).state == "requested"
    assert not [n for n in store.list_nodes() if n.tenant_name == "tenant-one"
                and n.provider == "fake"]
    assert not launcher.status()["pools"]["fake-main"]["paused"]
    # The other launcher's node goes: the request is served.
    store.client.delete(f"/nodepool/nodes/{other.id}", recursive=True)
    done = wait_for(lambda: finished(store, limited.id), 30, what="limited tenant served")
    assert done.state == "fulfilled" and len(done.nodes) == 2
    # More than the tenant may ever have is declined, not left waiting.
    too_big = zuul_request(store, ["small"] * 3, tenant_name="tenant-one")
    assert wait_for(lambda: finished(store, too_big.id), 30, what="decline").state == "failed"
    assert cloud.counters()["quota_403"] == 0


def test_cli_marked_node_is_deleted_in_the_cloud(tmp_path, make_fakecloud, zk_settings, store,
                                                 run_launcher):
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              labels=[{"name": "small", "min-ready": 1}]))
    node = wait_for(lambda: next((n for n in store.list_nodes() if n.state == "ready"), None),
                    40, what="a ready node")
    server_id = node.external_id
    mark_node_deleting(store, node.id)
    wait_for(lambda: store.get_node(node.id) is None, 30, what="node removed")
    wait_for(lambda: all(s["id"] != server_id for s in cloud.servers()), 30,
             what="server deleted")


def test_restart_cleans_up_nodes_left_building(tmp_path, make_fakecloud, zk_settings, store,
                                               run_launcher):
    cloud = make_fakecloud({"servers": {"boot_seconds": 3.0, "delete_seconds": 0.2}})
    config = write_config(tmp_path, cloud, zk_settings)
    first = Launcher(config, provider_options={"server_list_interval": 0.5,
                                               "leak_interval": 2.0})
    first.start()
    try:
        req = zuul_request(store, ["small"])
        wait_for(lambda: cloud.servers(), 30, what="a server being built")
    finally:
        first.stop(wait=10)
    # The request is pending without a lock and its node is building,
    # unlocked: a new launcher resets the one and reaps the other, and
    # serves the request with a fresh node.
    run_launcher(config)
    done = wait_for(lambda: finished(store, req.id), 60, what="fulfilment after restart")
    assert done.state == "fulfilled"
    use_and_return(store, done)
    wait_for(lambda: not cloud.servers() and not store.list_nodes(), 60, what="no leaks")


def test_freed_instance_is_reused_soon_after_the_server_disappears(
        tmp_path, make_fakecloud, zk_settings, store):
    # One instance of quota; the deleted server lingers 3 s in nova.  The
    # launcher runs with the production server-list interval (2.5 s), so only
    # the early look for gone servers (and waking the pool on the ledger
    # change) makes the reuse prompt.
    log_path = str(tmp_path / "requests.log")
    delete_seconds = 3.0
    cloud = make_fakecloud({"projects": [{"name": "ci",
                                          "users": [{"name": "nodepool", "password": "pw"}],
                                          "limits": {"instances": 1, "cores": 100,
                                                     "ram": 1000000}}],
                            "servers": {"boot_seconds": 0.3,
                                        "delete_seconds": delete_seconds},
                            "request_log": log_path})
    launcher = Launcher(write_config(tmp_path, cloud, zk_settings),
                        provider_options={"leak_interval": 3600.0})
    launcher.start()
    try:
        first = zuul_request(store, ["small"])
        done = wait_for(lambda: finished(store, first.id), 30, what="first fulfilment")
        second = zuul_request(store, ["small"])
        # The second request waits for the only instance.
        wait_for(lambda: any(p.last_report and p.last_report.paused
                             for p in launcher.pool_workers.values()), 15,
                 what="pool paused for quota")
        use_and_return(store, done)
        assert wait_for(lambda: finished(store, second.id), 30,
                        what="second fulfilment").state == "fulfilled"
    finally:
        launcher.stop(wait=10)
    with open(log_path) as f:
        entries = [json.loads(line) for line in f]
    deletes = [e for e in entries if e["route"] == "DELETE /compute/v2.1/servers/{server_id}"
               and e["status"] == 204]
    creates = [e for e in entries if e["route"] == "POST /compute/v2.1/servers"
               and e["status"] == 202]
    assert len(deletes) == 1 and len(creates) == 2
    # The cloud dropped the server delete_seconds after the DELETE; the next
    # create came within about a second of that (generous bound: 1.5 s).
    gone_at = deletes[0]["finished"] + delete_seconds
    assert creates[1]["started"] - gone_at <= 1.5, (creates[1]["started"] - gone_at)
    assert cloud.counters()["quota_403"] == 0
