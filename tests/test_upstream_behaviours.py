"""What an operator's config, Zuul or inventory scripts see of a launch, as
upstream Nodepool 11 does it: node ``username``, the ``groups`` server
metadata, upstream's fields for dynamic-instance-properties, ``volume-gb``
in node resources.  Real ZooKeeper, the fakecloud over HTTP through
openstacksdk."""

from __future__ import annotations

import json

import pytest

from nodepool.launcher import maintenance
from nodepool.zk.records import Node
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import (SMALL, finished, run_launcher, store,  # noqa: F401 - fixtures
                                 write_config, zuul_request)

pytestmark = pytest.mark.timeout(120)


def test_a_cloud_image_without_username_leaves_the_nodes_username_null(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    named = {"name": "named", "cloud-image": "named-img", "flavor-name": "m1.small"}
    run_launcher(write_config(
        tmp_path, cloud, zk_settings, labels=[{"name": "small"}, {"name": "named"}],
        pool={"labels": [SMALL, named]},
        provider={"cloud-images": [{"name": "img", "image-name": "cirros"},
                                   {"name": "named-img", "image-name": "cirros",
                                    "username": "ubuntu"}]}))
    req = zuul_request(store, ["small", "named"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    plain, named_node = (store.get_node(n) for n in done.nodes)
    # null, not "zuul": Zuul's executor then applies its own default user.
    raw = json.loads(store.client.get(f"/nodepool/nodes/{plain.id}")[0])
    assert "username" in raw and raw["username"] is None
    assert named_node.username == "ubuntu"


def test_servers_carry_upstreams_groups_metadata(tmp_path, make_fakecloud, zk_settings,
                                                 store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    [server] = cloud.servers()
    meta = server["metadata"]
    # <provider>,<image name in the config>,<label>
    assert meta["groups"] == "fake,img,small"
    assert meta["nodepool_node_id"] == done.nodes[0]
    assert meta["nodepool_pool_name"] == "main" and meta["nodepool_provider_name"] == "fake"


def test_dynamic_instance_properties_format_upstreams_request_fields(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    label = dict(SMALL, **{"dynamic-instance-properties": {
        "zuul_labels": "{request.labels}",
        "zuul_first": "{request.labels[0]}",
        "zuul_created": "{request.created_time}",
        "zuul_event": "{request.event_id}"}})
    run_launcher(write_config(tmp_path, cloud, zk_settings, pool={"labels": [label]}))
    req = zuul_request(store, ["small"], created_time=1700000000.5)
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    [server] = cloud.servers()
    meta = server["metadata"]
    assert meta["zuul_labels"] == "['small']"
    assert meta["zuul_first"] == "small"
    assert meta["zuul_created"] == "1700000000.5"
    assert meta["zuul_event"] == "ev"


def test_boot_from_volume_nodes_record_volume_gb_with_upstreams_key(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    label = dict(SMALL, **{"boot-from-volume": True, "volume-size": 40})
    run_launcher(write_config(tmp_path, cloud, zk_settings, pool={"labels": [label]}))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    resources = store.get_node(done.nodes[0]).resources
    assert resources["volumes"] == 1 and resources["volume-gb"] == 40
    assert "volume_gb" not in resources


def _tenant_node_elsewhere(store, launcher, provider: str, volume_key: str) -> Node:  # noqa: F811
    """Another launcher's in-use node of tenant-one with a 40 GB volume,
    once the launcher's cache has it."""
    node = store.create_node(Node(
        state="in-use", provider=provider, pool="p", type=["small"], tenant_name="tenant-one",
        resources={"cores": 1, "instances": 1, "ram": 512, "volumes": 1, volume_key: 40}))
    wait_for(lambda: launcher.store.get_node(node.id, cached=True), 10,
             what=f"the launcher's cache to see the node of {provider}")
    return node


def test_tenant_max_volume_gb_counts_upstreams_volume_gb_key(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    label = dict(SMALL, **{"boot-from-volume": True, "volume-size": 20})
    launcher = run_launcher(write_config(
        tmp_path, cloud, zk_settings, pool={"labels": [label]},
        extra={"tenant-resource-limits": [{"tenant-name": "tenant-one",
                                           "max-volume-gb": 50}]}))
    # A node upstream's launcher booted for the tenant, as it writes it.
    other = _tenant_node_elsewhere(store, launcher, "upstream-cloud", "volume-gb")
    limited = zuul_request(store, ["small"], tenant_name="tenant-one")
    worker = launcher.pool_workers["fake-main"]
    # 40 + 20 GB is over the tenant's 50: the request waits.
    wait_for(lambda: worker.last_report and limited.id in worker.last_report.deferred, 30,
             what="request deferred on the tenant's max-volume-gb")
    assert store.get_request(limited.id).state == "requested"
    # An older node of this launcher (volume_gb) still counts.
    store.client.delete(f"/nodepool/nodes/{other.id}", recursive=True)
    older = _tenant_node_elsewhere(store, launcher, "older-cloud", "volume_gb")
    wait_for(lambda: launcher.store.get_node(other.id, cached=True) is None, 10,
             what="the launcher's cache to see the upstream node gone")
    seen = worker.last_report
    wait_for(lambda: worker.last_report is not seen
             and limited.id in worker.last_report.deferred, 30,
             what="request still deferred")
    store.client.delete(f"/nodepool/nodes/{older.id}", recursive=True)
    done = wait_for(lambda: finished(store, limited.id), 30, what="tenant served")
    assert done.state == "fulfilled"


def test_max_concurrency_zero_takes_no_request_and_declines_none(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings,
                                         provider={"max-concurrency": 0}))
    req = zuul_request(store, ["small"])
    worker = launcher.pool_workers["fake-main"]
    wait_for(lambda: launcher.store.get_request(req.id, cached=True), 10,
             what="the launcher's cache to see the request")
    # Several passes with the request in view: still untouched, so that
    # another provider may take it.
    passes = []
    wait_for(lambda: passes.append(worker.last_report) or len(set(map(id, passes))) > 3, 30,
             what="a few passes of the pool")
    after = store.get_request(req.id)
    assert after.state == "requested" and after.declined_by == []
    assert not store.list_nodes() and not cloud.servers()


def test_max_concurrency_leaves_new_requests_while_launches_are_in_progress(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    # Boots long enough that requests taken at once would build together.
    cloud = make_fakecloud({"servers": {"boot_seconds": 0.6}})
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              provider={"max-concurrency": 1}))
    requests = [zuul_request(store, ["small"]) for _ in range(3)]
    most_launching = 0
    most_pending = 0

    def all_fulfilled() -> bool:
        nonlocal most_launching, most_pending
        nodes = store.list_nodes()
        most_launching = max(most_launching,
                             sum(1 for n in nodes if n.state in ("init", "building")))
        states = [store.get_request(r.id).state for r in requests]
        most_pending = max(most_pending, states.count("pending"))
        return all(s == "fulfilled" for s in states)

    wait_for(all_fulfilled, 60, what="every request fulfilled one after the other")
    assert most_launching == 1 and most_pending == 1


def test_at_capacity_the_oldest_unused_ready_node_is_deleted(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, monkeypatch):  # noqa: F811
    monkeypatch.setattr(maintenance, "MIN_READY_INTERVAL", 0.5)
    cloud = make_fakecloud()
    big = {"name": "big", "cloud-image": "img", "flavor-name": "m1.small"}
    run_launcher(write_config(
        tmp_path, cloud, zk_settings,
        labels=[{"name": "small", "min-ready": 2}, {"name": "big"}],
        pool={"max-servers": 2, "labels": [SMALL, big]}))
    ready = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        [n for n in store.list_nodes() if n.state == "ready" and not n.allocated_to]),
        40, what="two min-ready nodes filling the pool")
    oldest, newer = sorted(ready, key=lambda n: n.state_time)
    # min-ready of "small" fills the pool; a request for "big" is still served.
    req = zuul_request(store, ["big"])
    done = wait_for(lambda: finished(store, req.id), 40, what="fulfilment of big")
    assert done.state == "fulfilled"
    left = {n.id for n in store.list_nodes()}
    assert oldest.id not in left and oldest.external_id not in {s["id"] for s in
                                                                  cloud.servers()}
    assert newer.id in left


def test_the_oldest_unused_choice_waits_for_a_deletion_under_way():
    from nodepool.requests.protocol import PoolSettings, oldest_unused_nodes
    pool = PoolSettings(pool_id="p-id", provider_name="fake", pool_name="main",
                        labels=frozenset({"small"}))

    def node(i, state, t, **kw):
        return Node(id=f"{i:010d}", state=state, state_time=t, provider="fake",
                    pool="main", type=["small"], **kw)

    old, young = node(1, "ready", 100.0), node(2, "ready", 200.0)
    others = [node(3, "ready", 50.0, allocated_to="req"), node(4, "in-use", 10.0),
              node(5, "ready", 40.0), Node(id="6", state="ready", state_time=1.0,
                                           provider="fake", pool="other")]
    now = 1000.0
    assert oldest_unused_nodes([young, old, *others], pool, locked={"0000000005"},
                               now=now) == [old, young]
    # A node of the pool deleting for less than five minutes: wait for it.
    deleting = node(7, "deleting", now - 10)
    assert oldest_unused_nodes([young, old, deleting], pool, set(), now) == []
    stuck = node(7, "deleting", now - 600)
    assert oldest_unused_nodes([young, old, stuck], pool, set(), now) == [old, young]
