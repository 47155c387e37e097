"""Nova's quota rules in the simulated cloud, through openstacksdk, and the pure check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openstack import exceptions as os_exc

from nodepool.fakecloud import quota
from tests.fixtures.fakecloud import wait_for

POST_SERVERS = "POST /compute/v2.1/servers"


def _create(conn, name, flavor="m1.small"):
    return conn.create_server(name, image="cirros", flavor=flavor, wait=False)


def test_create_until_instances_quota(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(instances=3, cores=-1, ram=-1)
    for i in range(3):
        _create(conn, f"n{i}")
    with pytest.raises(os_exc.ForbiddenException) as e:
        _create(conn, "n3")
    assert e.value.status_code == 403
    assert "Quota exceeded for instances: Requested 1, but already used 3 of 3 instances" \
        in str(e.value)
    r = conn.compute.post("/servers", json={"server": {
        "name": "raw", "flavorRef": "2", "imageRef": next(iter(fakecloud.state.images)),
        "networks": "auto"}})
    assert r.status_code == 403
    assert r.json() == {"forbidden": {"code": 403, "message": (
        "Quota exceeded for instances: Requested 1, but already used 3 of 3 instances")}}
    counters = fakecloud.counters()
    assert counters["requests"][POST_SERVERS] == {"202": 3, "403": 2}
    assert counters["quota_403"] == 2 and counters["quota_refusals"] == {"instances": 2}
    assert len(fakecloud.servers()) == 3


def test_cores_and_ram_messages(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(instances=-1, cores=3, ram=-1)
    _create(conn, "a", "m1.medium")  # 2 vcpus
    with pytest.raises(os_exc.ForbiddenException,
                       match="Quota exceeded for cores: Requested 2, but already used 2 of 3 "
                             "cores"):
        _create(conn, "b", "m1.medium")
    fakecloud.set_limits(cores=-1, ram=5000)
    with pytest.raises(os_exc.ForbiddenException,
                       match="Quota exceeded for ram: Requested 4096, but already used 4096 "
                             "of 5000 ram"):
        _create(conn, "c", "m1.medium")
    fakecloud.set_limits(instances=1, cores=2, ram=5000)
    with pytest.raises(os_exc.ForbiddenException,
                       match="Quota exceeded for cores, instances, ram: Requested 2, 1, 4096, "
                             "but already used 2, 1, 4096 of 2, 1, 5000 cores, instances, ram"):
        _create(conn, "d", "m1.medium")
    assert fakecloud.counters()["quota_refusals"] == {"cores": 2, "instances": 1, "ram": 2}


def test_building_error_and_deleting_servers_all_count(fakecloud, fakecloud_connect):
    """The incident: 7 ACTIVE of 10 used, the other 3 building, in ERROR or deleting."""
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(instances=3)
    fakecloud.set_server_behaviour(boot_seconds=0, delete_seconds=300)
    deleting = _create(conn, "deleting")
    wait_for(lambda: conn.get_server_by_id(deleting.id).status == "ACTIVE")
    conn.delete_server(deleting.id)
    fakecloud.set_server_behaviour(error_boot_share=1.0)
    with pytest.raises(os_exc.SDKException, match="Compute service reports fault"):
        _create(conn, "error")
    fakecloud.set_server_behaviour(error_boot_share=0.0, boot_seconds=300)
    _create(conn, "building")
    assert fakecloud.servers_by_state() == {"BUILD": 1, "ACTIVE": 0, "ERROR": 1,
                                            "DELETING": 1}
    limits = conn.get_compute_limits()
    assert (limits.max_total_instances, limits.total_instances_used) == (3, 3)
    assert (limits.total_cores_used, limits.total_ram_used) == (3, 3 * 2048)
    listed = {s.name: s for s in conn.list_servers(bare=True)}
    assert set(listed) == {"deleting", "error", "building"}
    assert listed["deleting"]["OS-EXT-STS:task_state"] == "deleting"
    with pytest.raises(os_exc.ForbiddenException,
                       match="but already used 3 of 3 instances"):
        _create(conn, "one-more")
    # Zero ACTIVE servers yet a 403: exactly what nova does.
    assert fakecloud.usage()["ci"]["servers"]["ACTIVE"] == 0


def test_quota_frees_only_when_the_delete_completes(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(instances=1)
    fakecloud.set_server_behaviour(boot_seconds=0, delete_seconds=0.3)
    first = _create(conn, "first")
    conn.delete_server(first.id)
    with pytest.raises(os_exc.ForbiddenException):
        _create(conn, "too-early")
    wait_for(lambda: conn.get_compute_limits().total_instances_used == 0,
             what="the delete to complete")
    assert _create(conn, "after").name == "after"
    assert fakecloud.peak_usage()["instances"] == 1


def test_limits_change_while_running_and_minus_one_is_unlimited(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(instances=1)
    _create(conn, "a")
    with pytest.raises(os_exc.ForbiddenException):
        _create(conn, "b")
    fakecloud.set_limits(instances=-1, cores=-1, ram=-1)
    for i in range(12):  # past nova's default of 10
        _create(conn, f"n{i}", "4")  # m1.large by id: no flavor lookups
    limits = conn.get_compute_limits()
    assert limits.max_total_instances == -1 and limits.total_instances_used == 13
    assert limits.total_cores_used == 1 + 12 * 4
    with pytest.raises(ValueError, match="instances"):
        fakecloud.set_limits(instances=-2)


def test_projects_have_their_own_quota_and_servers(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"projects": [
        {"name": "ci", "users": [{"name": "nodepool", "password": "a"}],
         "limits": {"instances": 1}},
        {"name": "other", "users": [{"name": "bob", "password": "b"}],
         "limits": {"instances": 2}}]})
    ci = fakecloud_connect(cloud, project="ci")
    other = fakecloud_connect(cloud, project="other")
    _create(ci, "ci-1")
    with pytest.raises(os_exc.ForbiddenException, match="used 1 of 1 instances"):
        _create(ci, "ci-2")
    _create(other, "other-1")
    _create(other, "other-2")
    assert [s.name for s in ci.list_servers(bare=True)] == ["ci-1"]
    assert {s.name for s in other.list_servers(bare=True)} == {"other-1", "other-2"}
    assert other.get_compute_limits().total_instances_used == 2
    usage = cloud.usage()
    assert usage["ci"]["in_use"]["instances"] == 1 and usage["other"]["limits"]["instances"] == 2
    # One project cannot read or delete another's server.
    ci_server = ci.list_servers(bare=True)[0]
    assert other.compute.get(f"/servers/{ci_server.id}").status_code == 404
    assert other.compute.delete(f"/servers/{ci_server.id}").status_code == 404


def test_ports_quota_is_a_403(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(ports=3)
    fakecloud.set_server_behaviour(ports_per_server=2)
    _create(conn, "a")
    with pytest.raises(os_exc.ForbiddenException, match="Maximum number of ports exceeded"):
        _create(conn, "b")
    assert fakecloud.counters()["quota_refusals"] == {"ports": 1}


def test_floating_ip_quota_is_neutrons_409(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(floating_ips=1)
    public = conn.get_network("public")
    conn.network.create_ip(floating_network_id=public.id)
    r = conn.network.post("/floatingips", json={"floatingip": {
        "floating_network_id": public.id}})
    assert r.status_code == 409
    assert r.json()["NeutronError"]["type"] == "OverQuota"
    assert fakecloud.counters()["quota_refusals"] == {"floating_ips": 1}
    assert fakecloud.counters()["quota_403"] == 0


# ---- the pure check -------------------------------------------------------

LIMITS = {"instances": 10, "cores": 20, "ram": 51200}


def test_message_matches_nova_for_the_incident():
    with pytest.raises(quota.QuotaExceeded) as e:
        quota.check_instances(LIMITS, {"instances": 10, "cores": 10, "ram": 20480}, 1, 2048)
    assert str(e.value) == ("Quota exceeded for instances: Requested 1, but already used 10 of "
                            "10 instances")
    assert e.value.overs == ("instances",)


def test_multi_create_is_cut_to_what_fits_when_min_count_allows():
    usage = {"instances": 7, "cores": 7, "ram": 0}
    assert quota.check_instances(LIMITS, usage, 1, 1, min_count=1, max_count=5) == 3
    with pytest.raises(quota.QuotaExceeded, match="Requested 4-5, but already used 7 of 10"):
        quota.check_instances(LIMITS, usage, 1, 1, min_count=4, max_count=5)


@given(limit=st.integers(-1, 20), used=st.integers(0, 20), vcpus=st.integers(1, 8),
       count=st.integers(1, 5))
def test_grants_exactly_when_everything_fits(limit, used, vcpus, count):
    limits = {"instances": -1, "cores": limit, "ram": -1}
    usage = {"instances": 0, "cores": used, "ram": 0}
    fits = limit < 0 or used + vcpus * count <= limit
    try:
        granted = quota.check_instances(limits, usage, vcpus, 1, count, count)
    except quota.QuotaExceeded as e:
        assert not fits and e.overs == ("cores",)
        assert f"already used {used} of {limit} cores" in e.message
    else:
        assert fits and granted == count
