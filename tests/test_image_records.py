"""Image build and upload records as upstream's builder writes them (pure)."""

from __future__ import annotations

import json

import pytest

from nodepool.zk import paths
from nodepool.zk.image_records import (DELETING, FAILED, READY, UPLOADING, ImageUpload,
                                       build_from_json, newest_ready_upload,
                                       upload_from_json)
from nodepool.zk.records import MalformedRecord
from tests.fixtures.images import build_json, upload_json


def _upload(build: str, provider: str, upload: str, state: str, t: float,
            external_id: str | None = "x", image: str = "img") -> ImageUpload:
    data = json.dumps(upload_json(state=state, state_time=t, external_id=external_id)).encode()
    return upload_from_json(data, image, build, provider, upload)


def test_upstream_build_reads_and_writes_back_the_same_json():
    d = build_json(state_time=1700000000.5, formats="raw,qcow2", shell_type="sh")
    d["future_key"] = [1]
    build = build_from_json(json.dumps(d).encode(), "ubuntu", "abc123")
    assert (build.state, build.state_time, build.formats) == (READY, 1700000000.5,
                                                              ("qcow2", "raw"))
    assert (build.builder, build.username, build.python_path, build.shell_type) == (
        "builder01.example.org", "zuul", "auto", "sh")
    assert build.path == "/nodepool/images/ubuntu/builds/abc123"
    assert json.loads(build.to_json()) == {**d, "formats": "qcow2,raw"}


def test_upstream_upload_reads_and_writes_back_the_same_json():
    d = upload_json(state=UPLOADING, state_time=5.0, external_id=None)
    upload = upload_from_json(json.dumps(d).encode(), "ubuntu", "abc", "cloud-a",
                              "0000000007")
    assert upload.state == UPLOADING and upload.external_id is None
    assert upload.path == ("/nodepool/images/ubuntu/builds/abc/providers/cloud-a/images/"
                           "0000000007")
    assert json.loads(upload.to_json()) == d


def test_missing_fields_get_upstreams_defaults():
    build = build_from_json(b'{"state": "building", "state_time": 1}', "i", "b")
    assert (build.username, build.python_path, build.formats, build.builder) == (
        "zuul", "/usr/bin/python2", (), None)
    # Upstream leaves out formats and builder when unknown.
    assert set(json.loads(build.to_json())) == {"state", "state_time", "username",
                                                "python_path", "shell_type"}


@pytest.mark.parametrize("data, reason", [
    (b"{not json", "invalid JSON"),
    (b"[]", "expected a JSON object"),
    (b"", "empty znode"),
    (b'{"state_time": 1}', "missing key 'state'"),
    (b'{"state": "uploading", "state_time": 1}', "unknown state"),  # not a build state
    (b'{"state": "ready"}', "missing key 'state_time'"),
    (b'{"state": "ready", "state_time": "yesterday"}', "'state_time' must be a number"),
    (b'{"state": "ready", "state_time": 1, "formats": ["qcow2"]}', "'formats' must be"),
])
def test_malformed_build_is_refused_with_its_path(data, reason):
    with pytest.raises(MalformedRecord) as e:
        build_from_json(data, "img", "b1")
    assert e.value.path == "/nodepool/images/img/builds/b1"
    assert reason in e.value.reason


@pytest.mark.parametrize("data, reason", [
    (b'{"state": "building", "state_time": 1}', "unknown state"),  # not an upload state
    (b'{"state": "ready", "state_time": 1, "external_id": 42}', "'external_id' must be"),
])
def test_malformed_upload_is_refused(data, reason):
    with pytest.raises(MalformedRecord) as e:
        upload_from_json(data, "img", "b1", "p", "0000000001")
    assert reason in e.value.reason


def test_newest_ready_upload_across_builds_for_one_provider():
    uploads = [
        _upload("b1", "cloud-a", "0000000001", READY, 100),
        _upload("b2", "cloud-a", "0000000001", READY, 300),
        _upload("b3", "cloud-a", "0000000001", DELETING, 400),
        _upload("b3", "cloud-a", "0000000002", FAILED, 500),
        _upload("b4", "cloud-a", "0000000001", UPLOADING, 600),
        _upload("b4", "cloud-b", "0000000001", READY, 700),
        _upload("b5", "cloud-a", "0000000001", READY, 800, image="other"),
    ]
    best = newest_ready_upload(uploads, "img", "cloud-a")
    assert (best.build_id, best.upload_id) == ("b2", "0000000001")
    assert newest_ready_upload(uploads, "img", "cloud-b").build_id == "b4"
    assert newest_ready_upload(uploads, "img", "cloud-c") is None
    assert newest_ready_upload(uploads[2:5], "img", "cloud-a") is None


def test_equal_times_pick_the_first_by_build_then_upload():
    uploads = [_upload("b2", "p", "0000000001", READY, 10),
               _upload("b1", "p", "0000000002", READY, 10),
               _upload("b1", "p", "0000000001", READY, 10)]
    best = newest_ready_upload(uploads, "img", "p")
    assert (best.build_id, best.upload_id) == ("b1", "0000000001")


def test_a_ready_upload_without_external_id_cannot_be_booted():
    uploads = [_upload("b1", "p", "0000000001", READY, 10),
               _upload("b2", "p", "0000000001", READY, 20, external_id=None)]
    assert newest_ready_upload(uploads, "img", "p").build_id == "b1"


def test_image_paths_parse_as_upstream_lays_them_out():
    root = paths.IMAGE_ROOT
    assert paths.parse_image_path(f"{root}/img") == ("image", "img")
    assert paths.parse_image_path(f"{root}/img/pause") == ("pause", "img")
    assert paths.parse_image_path(f"{root}/img/request-build") == ("request-build", "img")
    assert paths.parse_image_path(f"{root}/img/builds/b1") == ("build", "img", "b1")
    upload = paths.image_upload_path("img", "b1", "p", "0000000003")
    assert paths.parse_image_path(upload) == ("upload", "img", "b1", "p", "0000000003")
    for other in (f"{root}/img/builds", f"{root}/img/builds/lock", f"{root}/img/builds/b1/lock",
                  f"{root}/img/builds/b1/providers", f"{root}/img/builds/b1/providers/p/images",
                  f"{root}/img/builds/b1/providers/p/images/lock",
                  f"{root}/img/builds/b1/providers/p/images/0000000003/lock",
                  "/nodepool/nodes/0000000001"):
        assert paths.parse_image_path(other) is None, other
