"""The simulated cloud through the real openstacksdk over HTTP: API surface."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import keystoneauth1.exceptions as ks_exc
import pytest
import yaml
from openstack import exceptions as os_exc

from nodepool.config.clouds import check_cache, check_cloud, load_clouds_file
from tests.fixtures.fakecloud import wait_for

SERVERS = "/compute/v2.1/servers"


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read() or b"null")


def test_starts_and_stops_on_a_free_port(make_fakecloud):
    cloud = make_fakecloud()
    assert cloud.port > 0 and cloud.url == f"http://127.0.0.1:{cloud.port}"
    assert cloud.auth_url == f"{cloud.url}/identity/v3"
    status, body = _get(f"{cloud.url}/identity/v3")
    assert status == 200 and body["version"]["id"].startswith("v3")
    cloud.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{cloud.url}/identity/v3", timeout=2)


def test_written_clouds_yaml_meets_the_launcher_policy(fakecloud, tmp_path):
    path = fakecloud.write_clouds_yaml(tmp_path / "clouds.yaml", cloud_name="sim",
                                       api_timeout=7, extra={"floating_ip_source": "None"})
    clouds = load_clouds_file(path)
    check_cloud(clouds, "sim")
    check_cache(clouds)
    assert [str(p) for p in clouds.problems.items] == []
    with open(path) as f:
        data = yaml.safe_load(f)
    sim = data["clouds"]["sim"]
    assert sim["api_timeout"] == 7 and sim["auth_type"] == "v3password"
    assert sim["region_name"] == "RegionOne" and sim["identity_api_version"] == 3
    assert sim["floating_ip_source"] == "None"
    assert data["cache"]["class"] == "dogpile.cache.memory"
    assert "compute.servers.detail" in data["cache"]["expiration"]
    with pytest.raises(ValueError, match="api_timeout"):
        fakecloud.write_clouds_yaml(tmp_path / "bad.yaml", api_timeout=0)


def test_auth_token_and_catalog(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    limits = conn.get_compute_limits()
    assert limits.max_total_instances == 10 and limits.total_instances_used == 0
    access = conn.session.auth.get_access(conn.session)
    types = {s["type"]: {e["region"] for e in s["endpoints"]}
             for s in access.service_catalog.catalog}
    for needed in ("compute", "image", "network", "volumev3"):
        assert types[needed] == {"RegionOne"}
    assert access.project_name == "ci"
    assert fakecloud.request_count("POST /identity/v3/auth/tokens", 201) == 1


def test_wrong_password_or_project_is_401(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"projects": [
        {"name": "ci", "users": [{"name": "nodepool", "password": "s1"}]},
        {"name": "other", "users": [{"name": "someone", "password": "s2"}]}]})
    bad = fakecloud_connect(cloud, extra={"auth": {"password": "wrong"}})
    with pytest.raises(ks_exc.Unauthorized):
        bad.get_compute_limits()
    not_member = fakecloud_connect(cloud, extra={"auth": {"project_name": "other"}})
    with pytest.raises(ks_exc.Unauthorized):
        not_member.get_compute_limits()
    assert cloud.request_count("POST /identity/v3/auth/tokens", 401) == 2
    status, body = _get(f"{cloud.url}{SERVERS}/detail")  # no token at all
    assert status == 401 and body["error"]["code"] == 401


def test_region_is_configurable(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"region": "Lab2"})
    conn = fakecloud_connect(cloud)
    assert conn.config.region_name == "Lab2"
    assert [f.name for f in conn.list_flavors(get_extra=False)][:2] == ["m1.tiny", "m1.small"]


def test_create_keeps_metadata_and_reaches_active(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    conn.compute.create_keypair(name="nodepool")
    meta = {"nodepool_node_id": "0000000042", "nodepool_provider_name": "p1",
            "weird": "ü ✓ = &"}
    server = conn.create_server("node-42", image="cirros", flavor="m1.small", meta=meta,
                                key_name="nodepool", config_drive=True, userdata="#!/bin/true",
                                network="private", availability_zone="nova", wait=False)
    assert server.metadata == meta
    active = wait_for(lambda: (s := conn.get_server_by_id(server.id)) and
                      s.status == "ACTIVE" and s, what="ACTIVE")
    assert active.metadata == meta and active.key_name == "nodepool"
    raw = conn.compute.get(f"/servers/{server.id}").json()["server"]
    assert raw["metadata"] == meta and raw["hostId"] and raw["config_drive"] == "True"
    assert raw["OS-EXT-STS:vm_state"] == "active" and raw["OS-EXT-STS:task_state"] is None
    assert raw["flavor"]["id"] == "2"  # no microversion header: 2.1 shape
    fixed = raw["addresses"]["private"][0]
    assert fixed["OS-EXT-IPS:type"] == "fixed" and fixed["addr"].startswith("10.0.")
    assert [s.name for s in conn.list_servers(bare=True)] == ["node-42"]


def test_invalid_references_are_400(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    base = {"name": "x", "imageRef": next(iter(fakecloud.state.images)), "flavorRef": "2",
            "networks": "auto"}
    cases = [({"flavorRef": "99"}, "Flavor 99 could not be found"),
             ({"imageRef": "nope"}, "Image nope could not be found"),
             ({"key_name": "missing"}, "Invalid key_name provided"),
             ({"networks": [{"uuid": "nope"}]}, "Network nope could not be found"),
             ({"availability_zone": "mars"}, "availability zone is not available"),
             ({"user_data": "not base64!"}, "valid base 64")]
    for change, message in cases:
        r = conn.compute.post("/servers", json={"server": {**base, **change}})
        assert r.status_code == 400, change
        assert message in r.json()["badRequest"]["message"]
    assert fakecloud.servers() == []


def test_find_server_by_name_and_delete_of_missing(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    for name in ("web-1", "web-10", "db-1"):
        conn.create_server(name, image="cirros", flavor="1", wait=False)
    assert conn.get_server("web-1").name == "web-1"  # exact, though "web-10" also matches
    assert conn.get_server("nope") is None
    assert conn.delete_server("nope") is False
    assert fakecloud.request_count("GET /compute/v2.1/servers/detail") >= 2


def test_list_filters_by_name_and_status(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0)
    for name in ("web-1", "web-2", "db-1"):
        conn.create_server(name, image="cirros", flavor="1", wait=False)
    fakecloud.set_server_behaviour(boot_seconds=300)
    conn.create_server("web-slow", image="cirros", flavor="1", wait=False)

    def names(query: str) -> list[str]:
        return sorted(s["name"] for s in conn.compute.get(f"/servers/detail?{query}")
                      .json()["servers"])

    assert names("name=web") == ["web-1", "web-2", "web-slow"]
    assert names("name=^web-[0-9]$") == ["web-1", "web-2"]
    assert names("status=BUILD") == ["web-slow"]
    assert names("status=ACTIVE&name=web") == ["web-1", "web-2"]
    assert names("name=nothing") == []
    assert names("is_public=None&unknown_filter=1") == ["db-1", "web-1", "web-2", "web-slow"]


def test_pagination_with_limit_marker_and_links(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    created = {conn.create_server(f"n{i}", image="cirros", flavor="1", wait=False).id
               for i in range(5)}
    first = conn.compute.get("/servers/detail?limit=2").json()
    assert len(first["servers"]) == 2
    seen = [s["id"] for s in first["servers"]]
    link = first["servers_links"][0]
    assert link["rel"] == "next" and "marker=" in link["href"] and "limit=2" in link["href"]
    while "servers_links" in (page := conn.compute.get(link["href"]).json()):
        seen += [s["id"] for s in page["servers"]]
        link = page["servers_links"][0]
    seen += [s["id"] for s in page["servers"]]
    assert len(seen) == 5 and set(seen) == created
    # Newest first, like nova's default sort.
    assert conn.compute.get("/servers?limit=1").json()["servers"][0]["name"] == "n4"
    bad = conn.compute.get("/servers/detail?marker=does-not-exist")
    assert bad.status_code == 400 and "marker [does-not-exist] not found" in bad.text
    # openstacksdk follows servers_links by itself (pages of 2 hold all 5).
    assert {s.id for s in conn.compute.servers(details=True, limit=2)} == created


def test_page_size_limit_applies_without_limit(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"max_page_size": 2})
    conn = fakecloud_connect(cloud)
    for i in range(3):
        conn.create_server(f"n{i}", image="cirros", flavor="1", wait=False)
    body = conn.compute.get("/servers/detail").json()
    assert len(body["servers"]) == 2 and body["servers_links"]
    assert len(conn.list_servers(bare=True)) == 3


def test_microversion_changes_the_flavor_shape(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    sid = conn.create_server("n", image="cirros", flavor="m1.medium", wait=False).id
    new = conn.compute.get(f"/servers/{sid}", microversion="2.96").json()["server"]
    assert new["flavor"]["vcpus"] == 2 and new["flavor"]["original_name"] == "m1.medium"
    assert "id" not in new["flavor"] and "pinned_availability_zone" in new
    r = conn.compute.get(f"/servers/{sid}", microversion="2.97")
    assert r.status_code == 406


def test_flavors_images_networks_zones(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    assert conn.compute.get("/flavors/m1.small").status_code == 404
    assert conn.get_flavor("m1.small").ram == 2048
    assert conn.get_flavor_by_id("4").vcpus == 4
    assert conn.get_image("cirros", filters={"status": "active"}).status == "active"
    assert conn.image.get("/images/nope").status_code == 404
    private = conn.get_network("private")
    assert private and not private.is_router_external
    assert conn.get_network("public").is_router_external
    assert conn.list_availability_zone_names() == ["nova"]
    assert fakecloud.request_count("GET /network/v2.0/networks/{network_id}", 404) >= 1
    status, body = _get(f"{fakecloud.url}/image")
    assert status == 300 and body["versions"][0]["status"] == "CURRENT"


def test_delete_lingers_with_task_state_deleting(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0, delete_seconds=300)
    sid = conn.create_server("n", image="cirros", flavor="m1.small", wait=False).id
    wait_for(lambda: conn.get_server_by_id(sid).status == "ACTIVE")
    assert conn.delete_server(sid) is True
    raw = conn.compute.get(f"/servers/{sid}").json()["server"]
    assert raw["OS-EXT-STS:task_state"] == "deleting" and raw["status"] == "ACTIVE"
    assert conn.get_compute_limits().total_instances_used == 1
    assert fakecloud.servers_by_state() == {"BUILD": 0, "ACTIVE": 0, "ERROR": 0,
                                            "DELETING": 1}
    # A second DELETE while deleting is accepted and changes nothing.
    assert conn.compute.delete(f"/servers/{sid}").status_code == 204
    # Shorten the linger for the next deletes; this one ends by deleting again.
    fakecloud.set_server_behaviour(delete_seconds=0.2)
    sid2 = conn.create_server("m", image="cirros", flavor="m1.small", wait=False).id
    conn.delete_server(sid2)
    assert conn.compute.get(f"/servers/{sid2}").json()["server"][
        "OS-EXT-STS:task_state"] == "deleting"
    wait_for(lambda: conn.compute.get(f"/servers/{sid2}").status_code == 404,
             what="the deleted server to disappear")
    assert conn.get_server_by_id(sid2) is None
    assert conn.get_compute_limits().total_instances_used == 1  # sid still deleting
    assert fakecloud.totals()["deleted"] == 1


def test_error_boot_has_a_fault_and_counts(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0, error_boot_share=1.0,
                                   error_boot_fault="No valid host was found.")
    with pytest.raises(os_exc.SDKException, match="No valid host was found") as e:
        conn.create_server("bad", image="cirros", flavor="m1.small", wait=False)
    server = e.value.extra_data["server"]
    raw = conn.compute.get(f"/servers/{server['id']}").json()["server"]
    assert raw["status"] == "ERROR" and raw["fault"]["message"] == "No valid host was found."
    assert raw["addresses"] == {}
    limits = conn.get_compute_limits()
    assert (limits.total_instances_used, limits.total_cores_used, limits.total_ram_used) == \
        (1, 1, 2048)
    assert fakecloud.totals()["boot_errors"] == 1


def test_boot_from_volume_counts_volumes_and_gigabytes(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_limits(volumes=2, gigabytes=50)
    fakecloud.set_server_behaviour(boot_seconds=0, delete_seconds=0.2)
    s1 = conn.create_server("bfv1", image="cirros", flavor="m1.small", boot_from_volume=True,
                            volume_size=20, terminate_volume=True, wait=False)
    absolute = conn.get_volume_limits()["absolute"]
    assert (absolute["totalVolumesUsed"], absolute["totalGigabytesUsed"]) == (1, 20)
    assert (absolute["maxTotalVolumes"], absolute["maxTotalVolumeGigabytes"]) == (2, 50)
    [vol] = conn.list_volumes()
    assert vol.size == 20
    wait_for(lambda: conn.get_volume(vol.id).status == "in-use")
    # 20 + 40 GB > 50 GB: nova accepts the create, the build fails on cinder's quota.
    with pytest.raises(os_exc.SDKException, match="gigabytes quota"):
        conn.create_server("bfv2", image="cirros", flavor="m1.small", boot_from_volume=True,
                           volume_size=40, terminate_volume=True, wait=False)
    assert conn.get_compute_limits().total_instances_used == 2
    assert conn.get_volume_limits()["absolute"]["totalVolumesUsed"] == 1
    conn.delete_server(s1.id)
    wait_for(lambda: conn.get_volume_limits()["absolute"]["totalVolumesUsed"] == 0,
             what="the volume to go with its server")
    assert fakecloud.peak_usage()["gigabytes"] == 20


def test_ports_and_floating_ips_with_filters(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0, ports_per_server=2, floating_ip=True)
    a = conn.create_server("a", image="cirros", flavor="1", wait=False, network="private")
    b = conn.create_server("b", image="cirros", flavor="1", wait=False, network="private")
    ports_a = conn.list_ports(filters={"device_id": a.id})
    assert len(ports_a) == 2 and {p.device_id for p in ports_a} == {a.id}
    assert all(p.status == "ACTIVE" for p in ports_a)
    assert len(conn.list_ports()) == 4
    assert len(conn.list_ports(filters={"status": "DOWN"})) == 0
    fips = conn.list_floating_ips()
    assert len(fips) == 2
    port_of_a = {p.id for p in ports_a}
    [fip_a] = [f for f in fips if f.port_id in port_of_a]
    by_port = conn.network.get(f"/floatingips?port_id={fip_a.port_id}").json()["floatingips"]
    assert [f["id"] for f in by_port] == [fip_a.id]
    assert conn.network.get("/floatingips?port_id=nope").json()["floatingips"] == []
    floating = [x for x in conn.get_server_by_id(a.id).addresses["private"]
                if x["OS-EXT-IPS:type"] == "floating"]
    assert [x["addr"] for x in floating] == [fip_a.floating_ip_address]
    assert conn.network.get("/ports?no_such_attribute=1").status_code == 400
    # A floating IP of our own, then unattached after delete_unattached_floating_ips.
    public = conn.get_network("public")
    extra = conn.network.create_ip(floating_network_id=public.id)
    assert extra.port_id is None and extra.status == "DOWN"
    assert conn.delete_unattached_floating_ips() == 1
    assert len(conn.list_floating_ips()) == 2
    assert fakecloud.usage()["ci"]["in_use"]["ports"] == 4
    del b


def test_full_network_fails_the_build_not_the_create(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"networks": [
        {"name": "tiny", "cidr": "10.9.0.0/29"},  # 5 addresses for servers
        {"name": "public", "cidr": "172.24.4.0/29", "external": True}]})
    conn = fakecloud_connect(cloud)
    for i in range(5):
        conn.create_server(f"n{i}", image="cirros", flavor="1", wait=False)
    with pytest.raises(os_exc.SDKException, match="Failed to allocate the network"):
        conn.create_server("n5", image="cirros", flavor="1", wait=False)
    assert len({port.fixed_ips[0]["ip_address"] for port in conn.list_ports()}) == 5
    public = conn.get_network("public")
    for _ in range(5):
        conn.network.create_ip(floating_network_id=public.id)
    r = conn.network.post("/floatingips", json={"floatingip": {
        "floating_network_id": public.id}})
    assert r.status_code == 409 and "No more IP addresses" in r.text
