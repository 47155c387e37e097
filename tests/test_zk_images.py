"""The image cache against the real server, on znodes shaped as upstream's
nodepool-builder writes them: several builds and providers, every state,
pause and request-build flags, malformed records."""

from __future__ import annotations

import logging

import pytest

from nodepool.zk.images import ImageCache
from tests.fixtures.images import set_upload, write_build, write_upload
from tests.fixtures.zk import SYNC_TIMEOUT, wait_for


@pytest.fixture
def images(zk):
    cache = ImageCache(zk)
    cache.start()
    assert cache.wait_synced(SYNC_TIMEOUT)
    yield cache
    cache.stop()


def test_builds_uploads_and_the_newest_ready_upload_per_provider(zk, images):
    old = write_build(zk, "ubuntu", state_time=100)
    new = write_build(zk, "ubuntu", state_time=200)
    failed = write_build(zk, "ubuntu", state="failed", state_time=300)
    write_build(zk, "centos", state_time=100)
    a_old = write_upload(zk, "ubuntu", old, "cloud-a", state_time=110, external_id="a-old")
    a_new = write_upload(zk, "ubuntu", new, "cloud-a", state_time=210, external_id="a-new")
    write_upload(zk, "ubuntu", new, "cloud-a", state="uploading", state_time=250,
                 external_id=None)
    write_upload(zk, "ubuntu", new, "cloud-b", state="failed", state_time=220,
                 external_id=None)
    write_upload(zk, "ubuntu", old, "cloud-b", state="deleting", state_time=230,
                 external_id="b-old")
    wait_for(lambda: len(images.uploads("ubuntu")) == 5, message="the uploads")
    assert images.images() == ["centos", "ubuntu"]
    assert {b.build_id: b.state for b in images.builds("ubuntu")} == {
        old: "ready", new: "ready", failed: "failed"}
    assert len(images.uploads("ubuntu", build=new)) == 3
    assert len(images.uploads("ubuntu", provider="cloud-b")) == 2
    assert [u.path for u in images.uploads("ubuntu", build=new, provider="cloud-a")][0] == a_new
    newest = images.newest_ready_upload("ubuntu", "cloud-a")
    assert (newest.external_id, newest.path) == ("a-new", a_new)
    # No READY upload for cloud-b, none at all for centos.
    assert images.newest_ready_upload("ubuntu", "cloud-b") is None
    assert images.newest_ready_upload("centos", "cloud-a") is None

    # The builder deletes the newest: the one before becomes the choice.
    set_upload(zk, a_new, state="deleting", state_time=400, external_id="a-new")
    wait_for(lambda: images.newest_ready_upload("ubuntu", "cloud-a").path == a_old,
             message="the older upload to be chosen")
    zk.delete(a_old)
    wait_for(lambda: images.newest_ready_upload("ubuntu", "cloud-a") is None,
             message="no READY upload left")
    zk.delete(f"/nodepool/images/ubuntu/builds/{new}", recursive=True)
    wait_for(lambda: new not in {b.build_id for b in images.builds("ubuntu")},
             message="the build removal")
    assert images.uploads("ubuntu", build=new) == []


def test_pause_and_request_build_flags(zk, images):
    write_build(zk, "ubuntu")
    wait_for(lambda: images.images() == ["ubuntu"], message="the image")
    assert not images.paused("ubuntu") and not images.build_requested("ubuntu")
    zk.create("/nodepool/images/ubuntu/pause")
    zk.create("/nodepool/images/ubuntu/request-build")
    wait_for(lambda: images.paused("ubuntu") and images.build_requested("ubuntu"),
             message="the flags")
    zk.delete("/nodepool/images/ubuntu/pause")
    wait_for(lambda: not images.paused("ubuntu"), message="the unpause")
    assert images.build_requested("ubuntu")


def test_malformed_records_are_skipped_once_logged_and_recover(zk, images, caplog):
    build = write_build(zk, "ubuntu")
    good = write_upload(zk, "ubuntu", build, "cloud-a", external_id="good")
    bad_path = f"/nodepool/images/ubuntu/builds/{build}/providers/cloud-a/images/0000009999"
    with caplog.at_level(logging.ERROR, logger="nodepool.zk.images"):
        zk.create(bad_path, b'{"state": "ready", "state_time": "soon"}')
        zk.create("/nodepool/images/ubuntu/builds/junk", b"\xff not json")
        wait_for(lambda: len(images.malformed()) == 2, message="the malformed znodes")
    assert caplog.text.count(bad_path) == 1
    assert images.newest_ready_upload("ubuntu", "cloud-a").path == good
    assert [b.build_id for b in images.builds("ubuntu")] == [build]
    set_upload(zk, bad_path, state_time=10**10, external_id="fixed")
    wait_for(lambda: images.newest_ready_upload("ubuntu", "cloud-a").external_id == "fixed",
             message="the repaired upload")
    assert list(images.malformed()) == ["/nodepool/images/ubuntu/builds/junk"]


def test_the_cache_starts_before_any_builder_ran(zk, images):
    assert images.synced and images.images() == []
    build = write_build(zk, "ubuntu")
    write_upload(zk, "ubuntu", build, "cloud-a", external_id="first")
    wait_for(lambda: images.newest_ready_upload("ubuntu", "cloud-a"), message="the upload")
