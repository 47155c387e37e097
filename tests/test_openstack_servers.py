"""Pure helpers of the OpenStack driver: what is sent to nova, what is read back."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodepool.driver.openstack import errors
from nodepool.driver.openstack import servers as srv
from nodepool.quota import is_quota_fault

FORMAT = "{label.name}-{provider.name}-{node.id}"


# -- hostname ----------------------------------------------------------------


def test_hostname_fills_the_format():
    assert srv.hostname(FORMAT, label="ubuntu-noble", provider="rax-dfw", pool="main",
                        node_id="0000000042") == "ubuntu-noble-rax-dfw-0000000042"
    assert srv.hostname("{pool.name}.{node.id}", label="l", provider="p", pool="main",
                        node_id="7") == "main.7"


def test_hostname_replaces_what_guests_cannot_use():
    name = srv.hostname(FORMAT, label="py_3.12 büild", provider="p", pool="x", node_id="1")
    assert name == "py-3.12-b-ild-p-1"


def test_hostname_never_starts_or_ends_with_a_separator_nor_is_empty():
    assert srv.hostname("{label.name}", label="_x_", provider="p", pool="x",
                        node_id="1") == "x"
    assert srv.hostname("{label.name}", label="日本", provider="p", pool="x",
                        node_id="0000000005") == "node-0000000005"


@given(st.text(max_size=100), st.text(alphabet=string.digits, min_size=1, max_size=12))
def test_hostname_is_always_a_usable_name(label, node_id):
    name = srv.hostname(FORMAT, label=label, provider="prov", pool="main", node_id=node_id)
    assert 1 <= len(name) <= 63
    assert all((c.isascii() and c.isalnum()) or c in "-." for c in name)
    assert name[0] not in "-." and name[-1] not in "-."


# -- the create request ----------------------------------------------------------


def test_create_request_minimal():
    meta = srv.server_metadata(provider="p1", pool="main", node_id="0000000001",
                               label="small", image="img", attempt=2)
    body = srv.create_request(name="n", flavor_id="f", image_id="i", metadata=meta)
    assert body == {"name": "n", "flavorRef": "f", "imageRef": "i", "metadata": meta,
                    "min_count": 1, "max_count": 1}
    assert meta == {srv.META_NODE: "0000000001", srv.META_POOL: "main",
                    srv.META_PROVIDER: "p1", srv.META_LABEL: "small",
                    srv.META_IMAGE: "img", srv.META_ATTEMPT: "2"}


def test_create_request_everything():
    body = srv.create_request(
        name="n", flavor_id="f", image_id="i", metadata={srv.META_NODE: "1"},
        network_ids=["net-a", "net-b"], key_name="k", userdata="#cloud-config\n",
        availability_zone="az1", security_groups=["default", "ssh"], config_drive=True,
        instance_properties={"team": "ci", "prio": 3, srv.META_NODE: "forged"})
    assert body["networks"] == [{"uuid": "net-a"}, {"uuid": "net-b"}]
    assert body["key_name"] == "k"
    assert base64.b64decode(body["user_data"]).decode() == "#cloud-config\n"
    assert body["availability_zone"] == "az1"
    assert body["security_groups"] == [{"name": "default"}, {"name": "ssh"}]
    assert body["config_drive"] is True
    # instance-properties become string metadata, and cannot overwrite ours.
    assert body["metadata"] == {"team": "ci", "prio": "3", srv.META_NODE: "1"}


def test_create_request_metadata_is_built_in_upstreams_order():
    """``groups`` first (inventory scripts read it; an instance property of
    that name replaces it, as upstream's), then the instance properties,
    then upstream's three keys, which always win, then this launcher's."""
    meta = srv.server_metadata(provider="p1", pool="main", node_id="0000000001",
                               label="small", image="img", attempt=1)
    groups = srv.server_groups(provider="p1", image="img", label="small")
    body = srv.create_request(name="n", flavor_id="f", image_id="i", metadata=meta,
                              instance_properties={"team": "ci"}, inventory_groups=groups)
    assert list(body["metadata"])[:5] == ["groups", "team", srv.META_NODE, srv.META_POOL,
                                          srv.META_PROVIDER]
    assert body["metadata"]["groups"] == "p1,img,small"
    body = srv.create_request(name="n", flavor_id="f", image_id="i", metadata=meta,
                              instance_properties={"groups": "mine"}, inventory_groups=groups)
    assert body["metadata"]["groups"] == "mine"


def test_create_request_boot_from_volume():
    body = srv.create_request(name="n", flavor_id="f", image_id="img-1", metadata={},
                              boot_from_volume=True, volume_size=80)
    assert body["imageRef"] == ""
    assert body["block_device_mapping_v2"] == [{
        "boot_index": 0, "uuid": "img-1", "source_type": "image",
        "destination_type": "volume", "volume_size": 80, "delete_on_termination": True}]


# -- server state ---------------------------------------------------------------------


def test_fault_and_deleting():
    assert srv.fault_message({"fault": {"message": "No valid host"}}) == "No valid host"
    assert srv.fault_message({"fault": {"details": "trace"}}) == "trace"
    assert srv.fault_message({}) == "no fault given"
    assert srv.is_deleting({"status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"})
    assert srv.is_deleting({"status": "SOFT_DELETED"})
    assert not srv.is_deleting({"status": "BUILD", "OS-EXT-STS:task_state": "spawning"})


def test_quota_faults_are_recognised():
    # One classifier (nodepool.quota.errors) for refused creates and ERROR faults.
    assert is_quota_fault("Quota exceeded for instances: Requested 1, but "
                          "already used 10 of 10 instances")
    assert is_quota_fault("VolumeLimitExceeded: Maximum number of volumes "
                          "allowed (10) exceeded for quota 'volumes'.")
    assert is_quota_fault("Maximum number of ports exceeded")
    assert is_quota_fault({"code": 413, "message": "Maximum instances exceeded"})
    assert not is_quota_fault({"code": 413, "message": "Rate limit exceeded"})
    assert not is_quota_fault("No valid host was found.")
    assert not is_quota_fault(None)


def _http_error(status: int, message: str):
    from openstack import exceptions as sdk

    class _Response:
        status_code = status
        headers: dict = {}
        reason = message

        def json(self):
            return {}

    return sdk.HttpException(message, response=_Response())


@pytest.mark.parametrize("status,message,kind", [
    (403, "Quota exceeded for instances: Requested 1, but already used 10 of 10", "quota"),
    (413, "Quota exceeded for ram", "quota"),
    (413, "Maximum number of servers exceeded", "quota"),
    (409, "Quota exceeded for resources: ['port']", "quota"),
    # A rate limit is not quota: the call is tried again later.
    (413, "Rate limit exceeded; retry after 30s", "unavailable"),
    (429, "Rate limit exceeded", "unavailable"),
    (403, "Policy does not allow compute:create to be performed", "other"),
])
def test_classify_uses_the_one_quota_classifier(status, message, kind):
    assert errors.classify(_http_error(status, message)).kind == kind


# -- catalog lookups ----------------------------------------------------------------------

IMAGES = [{"id": "a", "name": "debian", "status": "active", "created_at": "2024-01-01"},
          {"id": "b", "name": "debian", "status": "active", "created_at": "2025-01-01"},
          {"id": "c", "name": "debian", "status": "queued", "created_at": "2026-01-01"},
          {"id": "d", "name": "cirros", "status": "deactivated"}]


def test_pick_image():
    assert srv.pick_image(IMAGES, image_id=None, image_name="debian",
                          fallback_name="x")["id"] == "b"
    assert srv.pick_image(IMAGES, image_id=None, image_name=None,
                          fallback_name="debian")["id"] == "b"
    assert srv.pick_image(IMAGES, image_id="a", image_name="ignored",
                          fallback_name="x")["id"] == "a"
    assert srv.pick_image(IMAGES, image_id="zz", image_name=None, fallback_name="x") is None
    assert srv.pick_image(IMAGES, image_id=None, image_name="cirros",
                          fallback_name="x") is None


def test_pick_network_by_id_before_name():
    nets = [{"id": "n1", "name": "private"}, {"id": "private", "name": "odd"}]
    assert srv.pick_network(nets, "private")["name"] == "odd"
    assert srv.pick_network(nets, "n1")["name"] == "private"
    assert srv.pick_network(nets, "public") is None
