"""Diskimage labels end to end: upstream-shaped image records in the real
ZooKeeper (as upstream's nodepool-builder writes them), the launcher, the
fakecloud over HTTP through openstacksdk."""

from __future__ import annotations

import logging

import pytest

from nodepool.cmd import nodepoolcmd
from nodepool.launcher import maintenance
from tests.fixtures.fakecloud import wait_for
from tests.fixtures.images import set_upload, write_build, write_upload
from tests.test_launcher import (SMALL, finished, run_launcher, store,  # noqa: F401 - fixtures
                                 use_and_return, write_config, zuul_request)

DIB = {"name": "dib", "diskimage": "ubuntu", "flavor-name": "m1.small"}
# The cloud holds the images the builder uploaded (and cirros, for "small").
IMAGES = {"images": [{"name": "cirros"}, {"id": "glance-old", "name": "ubuntu-1"},
                     {"id": "glance-new", "name": "ubuntu-2"},
                     {"id": "glance-elsewhere", "name": "ubuntu-3"}]}


def dib_config(tmp_path, cloud, zk_settings, min_ready=0):
    return write_config(
        tmp_path, cloud, zk_settings,
        labels=[{"name": "small"}, {"name": "dib", "min-ready": min_ready}],
        pool={"labels": [SMALL, DIB]},
        provider={"diskimages": [{"name": "ubuntu", "connection-port": 2022,
                                  "meta": {"hw_disk_bus": "scsi"}}]},
        extra={"elements-dir": "/etc/nodepool/elements", "images-dir": "/opt/dib",
               "diskimages": [{"name": "ubuntu", "elements": ["ubuntu-minimal"],
                               "release": "jammy", "username": "ci",
                               "python-path": "/usr/bin/python3"}]})


def server_image(cloud, server_id: str) -> str | None:
    """The image nova booted the server from (the fakecloud's own record)."""
    with cloud.state.lock:
        return next(s.image_id for s in cloud.state.iter_servers(None) if s.id == server_id)


def image_tree(client, path="/nodepool/images") -> dict:
    """Every znode under ``path`` with its data and version."""
    out = {}
    if not client.exists(path):
        return out
    data, stat = client.get(path)
    out[path] = (data, stat.version)
    for child in client.get_children(path):
        out.update(image_tree(client, f"{path}/{child}"))
    return out


def test_a_diskimage_label_boots_the_newest_ready_upload_and_nothing_touches_images(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud(IMAGES)
    zk = store.client
    old = write_build(zk, "ubuntu", state_time=100)
    new = write_build(zk, "ubuntu", state_time=200)
    write_upload(zk, "ubuntu", old, "fake", state_time=110, external_id="glance-old")
    newest = write_upload(zk, "ubuntu", new, "fake", state_time=210, external_id="glance-new")
    # Later, but not bootable here: uploading, failed, or for another provider.
    write_upload(zk, "ubuntu", new, "fake", state="uploading", state_time=300, external_id=None)
    write_upload(zk, "ubuntu", old, "fake", state="failed", state_time=310, external_id=None)
    write_upload(zk, "ubuntu", new, "other", state_time=320, external_id="glance-elsewhere")
    zk.create("/nodepool/images/ubuntu/pause")  # the builder's pause: uploads still boot
    before = image_tree(zk)
    launcher = run_launcher(dib_config(tmp_path, cloud, zk_settings))

    req = zuul_request(store, ["dib"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    node = store.get_node(done.nodes[0])
    assert node.image_id == newest
    assert (node.username, node.python_path, node.connection_port) == (
        "ci", "/usr/bin/python3", 2022)
    assert server_image(cloud, node.external_id) == "glance-new"
    # Inventory groups name the diskimage, as upstream's.
    [server] = cloud.servers()
    assert server["metadata"]["groups"] == "fake,ubuntu,dib"

    use_and_return(store, done)
    wait_for(lambda: not store.list_nodes(), 30, what="used node deleted")
    # Housekeeping and the leak cleaner passed, then the operator erases the
    # provider: the builder's records and the cloud's images stay as they were.
    provider = launcher.providers["fake"]
    passes = provider.reconciler.last_leak_pass
    wait_for(lambda: provider.reconciler.last_leak_pass != passes, 15, what="a leak pass")
    launcher.maintenance.housekeeping()
    config_path = str(tmp_path / "nodepool.yaml")
    assert nodepoolcmd.main(["-c", config_path, "erase", "fake", "--force"]) == 0
    assert image_tree(zk) == before
    assert {"glance-old", "glance-new", "glance-elsewhere"} <= set(cloud.state.images)


def test_without_a_ready_upload_the_pool_declines_and_min_ready_waits(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, monkeypatch,  # noqa: F811
        caplog):
    monkeypatch.setattr(maintenance, "MIN_READY_INTERVAL", 0.1)
    cloud = make_fakecloud(IMAGES)
    zk = store.client
    build = write_build(zk, "ubuntu")
    # Not bootable on this provider: deleting, failed, uploading, elsewhere.
    write_upload(zk, "ubuntu", build, "fake", state="deleting", external_id="glance-old")
    write_upload(zk, "ubuntu", build, "fake", state="failed", external_id=None)
    write_upload(zk, "ubuntu", build, "other", external_id="glance-elsewhere")
    launcher = run_launcher(dib_config(tmp_path, cloud, zk_settings, min_ready=1))

    req = zuul_request(store, ["dib"])
    with caplog.at_level(logging.INFO, logger="nodepool.requests.handler"):
        done = wait_for(lambda: finished(store, req.id), 30, what="the decline")
    assert done.state == "failed" and done.declined_by
    # Upstream's reason, before any quota question.
    assert "images are not available: no READY upload of ubuntu" in caplog.text
    # min-ready asks for nothing meanwhile (no request, no node, no server).
    seen = []
    last_runs = launcher.maintenance._last
    wait_for(lambda: seen.append(last_runs.get("min-ready")) or len(set(seen)) > 3, 15,
             what="min-ready passes")
    assert [r.id for r in store.list_requests()] == [req.id]
    assert store.list_nodes() == [] and cloud.servers() == []

    # The builder uploads: min-ready builds its node from that upload.
    ready = write_upload(zk, "ubuntu", build, "fake", external_id="glance-new")
    node = wait_for(lambda: next((n for n in store.list_nodes() if n.state == "ready"), None),
                    30, what="the min-ready node")
    assert node.image_id == ready and node.type == ["dib"]


def test_an_upload_deleted_while_its_node_boots_keeps_that_node(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud(merged_images(boot_seconds=2.0))
    zk = store.client
    build = write_build(zk, "ubuntu")
    older = write_upload(zk, "ubuntu", build, "fake", state_time=100, external_id="glance-old")
    newest = write_upload(zk, "ubuntu", build, "fake", state_time=200, external_id="glance-new")
    launcher = run_launcher(dib_config(tmp_path, cloud, zk_settings))

    first = zuul_request(store, ["dib"])
    wait_for(lambda: cloud.servers(), 30, what="the first server booting")
    set_upload(zk, newest, state="deleting", state_time=300, external_id="glance-new")
    wait_for(lambda: launcher.images.newest_ready_upload("ubuntu", "fake").path == older, 15,
             what="the launcher to see the deletion")
    second = zuul_request(store, ["dib"])
    done = wait_for(lambda: finished(store, first.id), 30, what="the first node")
    assert done.state == "fulfilled"
    assert store.get_node(done.nodes[0]).image_id == newest
    again = wait_for(lambda: finished(store, second.id), 30, what="the second node")
    assert again.state == "fulfilled"
    node = store.get_node(again.nodes[0])
    assert node.image_id == older
    assert server_image(cloud, node.external_id) == "glance-old"


def merged_images(boot_seconds: float) -> dict:
    return {**IMAGES, "servers": {"boot_seconds": boot_seconds, "delete_seconds": 0.2}}


@pytest.fixture(autouse=True)
def _fast_housekeeping(monkeypatch):
    # Housekeeping runs at start and when the test calls it.
    monkeypatch.setattr(maintenance, "HOUSEKEEPING_INTERVAL", 3600.0)


def test_a_reload_that_adds_diskimages_starts_the_image_cache(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud(IMAGES)
    zk = store.client
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    assert launcher.images is None and not zk.exists("/nodepool/images")
    build = write_build(zk, "ubuntu")
    upload = write_upload(zk, "ubuntu", build, "fake", external_id="glance-new")
    assert launcher.reload(dib_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["dib"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled" and store.get_node(done.nodes[0]).image_id == upload
    # And one that removes them stops it.
    assert launcher.reload(write_config(tmp_path, cloud, zk_settings))
    assert launcher.images is None
