"""The admin API (/_fakecloud/), the request log and the configuration checks."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from keystoneauth1 import exceptions as ksa_exceptions
from openstack import exceptions as os_exc

from nodepool.fakecloud import FakeCloudConfigError, config_from_dict, load_config
from tests.fixtures.fakecloud import wait_for


def admin(cloud, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{cloud.url}/_fakecloud/{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_counters_by_route_template_and_reset(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, cache_expiration=None)  # the recommended cache
    fakecloud.set_server_behaviour(boot_seconds=0)
    server = conn.create_server("n", image="cirros", flavor="m1.small", wait=False)
    for _ in range(3):
        conn.list_servers(bare=True)
    conn.list_ports(filters={"device_id": server.id})
    status, counters = admin(fakecloud, "GET", "counters")
    assert status == 200
    requests = counters["requests"]
    # The clouds.yaml cache (compute.servers.detail: 5) makes three listings one call.
    assert requests["GET /compute/v2.1/servers/detail"] == {"200": 1}
    assert requests["POST /compute/v2.1/servers"] == {"202": 1}
    assert requests["GET /compute/v2.1/servers/{server_id}"]["200"] >= 1
    assert requests["GET /network/v2.0/ports"] == {"200": 1}
    assert counters["total"] == sum(counters["by_status"].values())
    assert counters == fakecloud.counters()  # same data in process and over HTTP
    status, after = admin(fakecloud, "POST", "counters/reset")
    assert status == 200 and after["total"] == 0 and after["requests"] == {}
    conn.get_compute_limits()
    assert fakecloud.request_count("GET /compute/v2.1/limits", 200) == 1


def test_unknown_paths_are_counted_apart(fakecloud):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{fakecloud.url}/compute/v2.1/os-hypervisors", timeout=5)
    e.value.close()
    assert e.value.code == 404
    assert fakecloud.request_count("GET <unmatched>") == 1


def test_servers_usage_and_peaks(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0, delete_seconds=0.1)
    ids = [conn.create_server(f"n{i}", image="cirros", flavor="m1.medium", wait=False,
                              meta={"i": str(i)}).id for i in range(3)]
    status, servers = admin(fakecloud, "GET", "servers?project=ci")
    assert status == 200
    assert [s["metadata"] for s in servers["servers"]] == [{"i": "0"}, {"i": "1"}, {"i": "2"}]
    for sid in ids:
        conn.delete_server(sid)
    wait_for(lambda: fakecloud.servers() == [], what="all deletes to complete")
    status, usage = admin(fakecloud, "GET", "usage")
    ci = usage["ci"]
    assert ci["in_use"]["instances"] == 0
    assert (ci["peak"]["instances"], ci["peak"]["cores"]) == (3, 6)
    assert ci["servers"] == {"BUILD": 0, "ACTIVE": 0, "ERROR": 0, "DELETING": 0}
    admin(fakecloud, "POST", "counters/reset")  # peaks restart from current usage
    assert fakecloud.peak_usage()["instances"] == 0
    status, summary = admin(fakecloud, "GET", "")
    assert summary["auth_url"] == fakecloud.auth_url and summary["totals"]["deleted"] == 3


def test_limits_and_settings_over_http(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    status, body = admin(fakecloud, "PATCH", "limits", {"instances": 1, "project": "ci"})
    assert status == 200 and body["ci"]["instances"] == 1
    conn.create_server("a", image="cirros", flavor="1", wait=False)
    with pytest.raises(os_exc.ForbiddenException, match="used 1 of 1 instances"):
        conn.create_server("b", image="cirros", flavor="1", wait=False)
    status, body = admin(fakecloud, "PATCH", "settings", {
        "servers": {"boot_seconds": [0, 0.1], "ports_per_server": 3},
        "faults": {"error_503_rate": 1.0, "match": "limits"}})
    assert status == 200
    assert body["servers"]["boot_seconds"] == [0, 0.1] and body["faults"]["error_503_rate"] == 1
    with pytest.raises(os_exc.HttpException) as e:
        conn.get_compute_limits()
    assert e.value.status_code == 503
    assert fakecloud.settings() == admin(fakecloud, "GET", "settings")[1]
    # A bad value changes nothing and the message names the key.
    status, body = admin(fakecloud, "PATCH", "settings", {
        "servers": {"ports_per_server": 1}, "faults": {"error_500_rate": 7}})
    assert status == 400 and "error_500_rate" in body["error"]["message"]
    assert fakecloud.settings()["servers"]["ports_per_server"] == 3
    status, body = admin(fakecloud, "PATCH", "limits", {"instances": "many"})
    assert status == 400 and "instances" in body["error"]["message"]
    status, body = admin(fakecloud, "PATCH", "limits", {"instances": 2, "project": "nope"})
    assert status == 400 and "nope" in body["error"]["message"]
    assert admin(fakecloud, "GET", "no-such-thing")[0] == 404


def test_release_and_wipe_over_http(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=0.5)
    conn.list_servers(bare=True)
    admin(fakecloud, "PATCH", "settings", {"faults": {"hang": True}})
    with pytest.raises(ksa_exceptions.ConnectionError):  # the read timed out
        conn.list_servers(bare=True)
    assert admin(fakecloud, "POST", "release")[1] == {"released": 1}
    admin(fakecloud, "PATCH", "settings", {"faults": {"hang": False}})
    conn.create_server("n", image="cirros", flavor="1", wait=False)
    assert admin(fakecloud, "POST", "wipe")[0] == 200
    assert fakecloud.servers() == [] and conn.list_servers(bare=True) == []


def test_request_log_has_one_json_line_per_request(make_fakecloud, fakecloud_connect, tmp_path):
    log = tmp_path / "requests.jsonl"
    cloud = make_fakecloud({"request_log": str(log), "projects": [
        {"name": "ci", "users": [{"name": "nodepool", "password": "x"}],
         "limits": {"instances": 0}}]})
    conn = fakecloud_connect(cloud)
    with pytest.raises(os_exc.ForbiddenException):
        conn.create_server("n", image="cirros", flavor="1", wait=False)
    cloud.stop()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == cloud.counters()["total"]
    [refused] = [x for x in lines if x["status"] == 403]
    assert refused["route"] == "POST /compute/v2.1/servers" and refused["quota"] == ["instances"]
    assert refused["project"] == "ci"


def test_transition_log_says_when_servers_booted_and_went(make_fakecloud, fakecloud_connect,
                                                          tmp_path):
    log = tmp_path / "servers.jsonl"
    cloud = make_fakecloud({"transition_log": str(log),
                            "servers": {"boot_seconds": 0.2, "delete_seconds": 0.2}})
    conn = fakecloud_connect(cloud)
    server = conn.create_server("n", image="cirros", flavor="1", wait=False)
    created = time.time()
    wait_for(lambda: cloud.servers()[0]["status"] == "ACTIVE", timeout=10)
    conn.delete_server(server.id)
    deleted = time.time()
    wait_for(lambda: not cloud.servers(), timeout=10)
    cloud.stop()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["event"], x["server"]) for x in lines] == [("active", server.id),
                                                          ("gone", server.id)]
    # The moments the transitions were due, not when someone looked.
    assert created - 0.1 < lines[0]["at"] - 0.2 < created + 0.5
    assert deleted - 0.1 < lines[1]["at"] - 0.2 < deleted + 0.5


# ---- configuration --------------------------------------------------------

def test_example_config_matches_the_example_clouds_yaml():
    import os

    import yaml
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "etc", "fakecloud.yaml"))
    with open(os.path.join(root, "etc", "clouds.yaml")) as f:
        clouds = yaml.safe_load(f)
    cloud = clouds["clouds"]["fakecloud"]
    assert cloud["auth"]["auth_url"] == f"http://{config.host}:{config.port}/identity/v3"
    assert cloud["region_name"] == config.region
    project = next(p for p in config.projects if p.name == cloud["auth"]["project_name"])
    user = next(u for u in project.users if u.name == cloud["auth"]["username"])
    assert user.password == cloud["auth"]["password"]


@pytest.mark.parametrize("data, where", [
    ({"servers": {"boot_seconds": -1}}, "servers.boot_seconds"),
    ({"servers": {"boot_sekonds": 1}}, "servers.boot_sekonds: unknown key"),
    ({"faults": {"error_503_rate": 1.5}}, "faults.error_503_rate"),
    ({"faults": {"error_500_rate": 0.6, "error_503_rate": 0.6}}, "must not exceed 1"),
    ({"projects": [{"name": "ci", "users": []}]}, "projects[0].users"),
    ({"projects": [{"name": "ci", "users": [{"name": "u", "password": "p"}],
                    "limits": {"cores": "lots"}}]}, "projects[0].limits.cores"),
    ({"networks": [{"name": "n", "cidr": "10.0.0.0/33"}]}, "networks[0].cidr"),
    ({"networks": [{"name": "n", "cidr": "10.0.0.0/24", "external": True}]}, "networks:"),
    ({"flavors": [{"name": "f", "vcpus": 0, "ram": 1}]}, "flavors[0].vcpus"),
    ({"port": 70000}, "port"),
])
def test_config_errors_name_the_key(data, where):
    with pytest.raises(FakeCloudConfigError) as e:
        config_from_dict(data, "test.yaml")
    assert any(p.startswith("test.yaml: ") and where in p for p in e.value.problems), \
        e.value.problems


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: [unclosed\n")
    with pytest.raises(FakeCloudConfigError, match=f"{bad}: line"):
        load_config(str(bad))
    with pytest.raises(FakeCloudConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
