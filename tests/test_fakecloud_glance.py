"""The fakecloud's Glance v2 image uploads, as openstacksdk drives them for an
image builder (upstream's nodepool-builder calls ``create_image(name,
filename=..., is_public=False, wait=True, md5=..., sha256=..., **meta)`` and
later ``delete_image(id)``), over real HTTP."""

from __future__ import annotations

import hashlib

from tests.fixtures.fakecloud import wait_for


def _image_file(tmp_path, data: bytes = b"\0fake qcow2 image\0" * 100) -> str:
    path = tmp_path / "fake-image-0000000001.qcow2"
    path.write_bytes(data)
    return str(path)


def test_builder_style_upload_creates_puts_and_becomes_active(tmp_path, fakecloud,
                                                              fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=10)
    data = b"\0fake qcow2 image\0" * 100
    md5, sha256 = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()  # noqa: S324
    image = conn.create_image("fake-image-0000000001", filename=_image_file(tmp_path, data),
                              is_public=False, wait=True, md5=md5, sha256=sha256,
                              timeout=30, disk_format="qcow2",
                              nodepool_build_id="0000000001", nodepool_upload_id="0000000001")
    assert image.status == "active"
    assert fakecloud.request_count("POST /image/v2/images", 201) == 1
    assert fakecloud.request_count("PUT /image/v2/images/{image_id}/file", 204) == 1

    got = conn.get_image(image.id)
    assert got.name == "fake-image-0000000001" and got.visibility == "private"
    assert got.size == len(data) and got.checksum == md5
    assert got.disk_format == "qcow2" and got.container_format == "bare"
    # The builder's metadata comes back as properties (as strings, as glance keeps them).
    assert got.properties["nodepool_build_id"] == "0000000001"
    assert got.properties["owner_specified.openstack.md5"] == md5
    # The launcher finds it by name among active images.
    assert conn.get_image("fake-image-0000000001", filters={"status": "active"}).id == image.id

    # Booting from it works like from a configured image.
    server = conn.create_server("n1", image=image.id, flavor="m1.small", wait=False)
    assert wait_for(lambda: conn.get_server(server.id).status == "ACTIVE", what="boot")

    assert conn.delete_image(image.id, wait=True, timeout=10)
    assert conn.get_image(image.id) is None
    assert fakecloud.request_count("DELETE /image/v2/images/{image_id}", 204) == 1


def test_an_image_of_another_project_is_private(tmp_path, make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"projects": [{"name": n, "users": [{"name": f"u{n}", "password": "p"}]}
                                         for n in ("a", "b")]})
    a = fakecloud_connect(cloud, project="a")
    b = fakecloud_connect(cloud, project="b")
    image = a.create_image("mine", filename=_image_file(tmp_path), is_public=False,
                           wait=True, disk_format="qcow2")
    assert b.get_image(image.id) is None
    assert [i.name for i in b.list_images()] == ["cirros", "debian-bookworm"]
    assert b.image.delete("/images/" + image.id).status_code == 404


def test_import_goes_through_uploading_and_importing(tmp_path, fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    image = conn.image.create_image("imported", filename=_image_file(tmp_path),
                                    disk_format="qcow2", use_import=True)
    # glance-direct: staged, then imported in the background.
    assert conn.image.get_image(image.id).status in ("importing", "active")
    assert wait_for(lambda: conn.image.get_image(image.id).status == "active",
                    what="import")
    assert fakecloud.request_count("PUT /image/v2/images/{image_id}/stage", 204) == 1
    assert fakecloud.request_count("POST /image/v2/images/{image_id}/import", 202) == 1


def test_glance_refusals(tmp_path, fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    queued = conn.image.create_image("queued", disk_format="qcow2", container_format="bare",
                                     allow_duplicates=True)
    assert queued.status == "queued"
    resp = conn.image.post("/images", json={"name": "x", "status": "active"})
    assert resp.status_code == 403 and "read-only" in resp.text
    resp = conn.image.post("/images", json={"name": "x", "disk_format": "floppy"})
    assert resp.status_code == 400 and "disk_format" in resp.text
    no_format = conn.image.post("/images", json={"name": "y"}).json()
    resp = conn.image.put(f"/images/{no_format['id']}/file", data=b"abc",
                          headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 400 and "disk_format" in resp.text
    protected = conn.image.post("/images", json={"name": "p", "protected": True}).json()
    resp = conn.image.delete(f"/images/{protected['id']}")
    assert resp.status_code == 403
    resp = conn.image.post(f"/images/{queued.id}/import",
                           json={"method": {"name": "glance-direct"}})
    assert resp.status_code == 409 and "uploading" in resp.text  # nothing staged
    resp = conn.image.post(f"/images/{queued.id}/import", json={"method": {"name": "copy"}})
    assert resp.status_code == 400


def test_upload_of_unknown_length_arrives_chunked(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    image = conn.image.post("/images", json={"name": "streamed", "disk_format": "raw",
                                             "container_format": "bare"}).json()
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    # A generator has no length: requests sends it with Transfer-Encoding: chunked.
    resp = conn.image.put(f"/images/{image['id']}/file", data=(p for p in parts),
                          headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 204
    got = conn.image.get(f"/images/{image['id']}").json()
    assert got["status"] == "active" and got["size"] == 71001
    assert got["checksum"] == hashlib.md5(b"".join(parts)).hexdigest()  # noqa: S324
    # The connection is still usable after the chunked body.
    assert conn.image.get(f"/images/{image['id']}").status_code == 200
