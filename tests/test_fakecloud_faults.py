"""Injected faults seen by the real openstacksdk: errors, latency, hangs, slow creates."""

from __future__ import annotations

import threading

import keystoneauth1.exceptions as ks_exc
import pytest
from openstack import exceptions as os_exc

from tests.fixtures.fakecloud import wait_for

DETAIL = "GET /compute/v2.1/servers/detail"


def test_500_and_503_rates(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    # Authenticate and discover compute before the API starts failing.
    assert conn.list_servers(bare=True) == []
    fakecloud.reset_counters()
    fakecloud.set_faults(error_500_rate=1.0)
    with pytest.raises(os_exc.HttpException) as e:
        conn.list_servers(bare=True)
    assert e.value.status_code == 500
    fakecloud.set_faults(error_500_rate=0.0, error_503_rate=1.0)
    with pytest.raises(os_exc.HttpException) as e:
        conn.list_servers(bare=True)
    assert e.value.status_code == 503
    fakecloud.set_faults(error_503_rate=0.0)
    assert conn.list_servers(bare=True) == []
    counters = fakecloud.counters()
    assert counters["requests"][DETAIL] == {"200": 1, "500": 1, "503": 1}
    assert counters["faults"] == {"error_500": 1, "error_503": 1}
    # With 0 < rate < 1, some requests fail and some do not.
    fakecloud.set_faults(error_503_rate=0.5)
    outcomes = set()
    for _ in range(40):
        try:
            conn.get_compute_limits()
            outcomes.add("ok")
        except os_exc.HttpException as err:
            outcomes.add(err.status_code)
    assert outcomes == {"ok", 503}


def test_faults_can_target_one_route(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_faults(error_500_rate=1.0, match=r"^GET /compute/v2\.1/servers/detail$")
    assert conn.get_compute_limits().max_total_instances == 10  # auth and limits unaffected
    with pytest.raises(os_exc.HttpException):
        conn.list_servers(bare=True)
    with pytest.raises(ValueError, match="faults.match|match"):
        fakecloud.set_faults(match="(unclosed")


def test_latency_beyond_api_timeout_times_out(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=0.5)
    conn.list_servers(bare=True)
    fakecloud.set_faults(latency_seconds=[3, 4], match="servers/detail")
    with pytest.raises(ks_exc.ConnectTimeout):
        conn.list_servers(bare=True)
    fakecloud.set_faults(latency_seconds=0.05)
    assert conn.list_servers(bare=True) == []
    assert fakecloud.counters()["faults"]["latency"] == 2


def test_hang_fires_api_timeout_then_release(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=1)
    conn.list_servers(bare=True)  # token and compute discovery before the hang
    fakecloud.set_faults(hang=True)
    with pytest.raises(ks_exc.ConnectTimeout):
        conn.list_servers(bare=True)
    # The client gave up; the cloud still holds the request until released.
    assert fakecloud.hung_requests() == 1
    assert fakecloud.release_hung() == 1
    wait_for(lambda: fakecloud.hung_requests() == 0)
    fakecloud.set_faults(hang=False)
    assert conn.list_servers(bare=True) == []
    assert fakecloud.counters()["faults"]["hang"] == 1


def test_released_request_completes_for_a_patient_client(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=30)
    conn.get_compute_limits()
    fakecloud.set_faults(hang=True)
    result: dict = {}

    def call():
        try:
            result["limits"] = conn.get_compute_limits().max_total_instances
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: fakecloud.hung_requests() == 1, what="the request to hang")
    assert "limits" not in result
    fakecloud.set_faults(hang=False)  # turning hang off releases what it holds
    t.join(timeout=10)
    assert result == {"limits": 10}


def test_hang_seconds_ends_by_itself(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=10)
    conn.get_compute_limits()
    fakecloud.set_faults(hang=True, hang_seconds=0.2)
    assert conn.get_compute_limits().max_total_instances == 10
    assert fakecloud.counters()["faults"]["hang"] == 1


def test_stop_ends_hung_requests(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud()
    conn = fakecloud_connect(cloud, api_timeout=30)
    conn.list_servers(bare=True)
    cloud.set_faults(hang=True)
    errors: list = []
    t = threading.Thread(target=lambda: _record_error(conn.list_servers, errors))
    t.start()
    wait_for(lambda: cloud.hung_requests() == 1)
    cloud.stop()
    t.join(timeout=10)
    assert not t.is_alive()


def _record_error(fn, errors):
    try:
        fn(bare=True)
    except Exception as e:  # noqa: BLE001 - the test asserts what was caught
        errors.append(e)


def test_create_times_out_but_the_server_is_created(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud, api_timeout=1)
    conn.get_compute_limits()
    flavor = conn.get_flavor("m1.small")
    image = conn.get_image("cirros")
    fakecloud.set_faults(slow_create_seconds=3)
    with pytest.raises(ks_exc.ConnectTimeout):
        conn.create_server("ghost", image=image, flavor=flavor, wait=False,
                           meta={"attempt": "a1"})
    [ghost] = fakecloud.servers()
    assert ghost["name"] == "ghost" and ghost["metadata"] == {"attempt": "a1"}
    fakecloud.set_faults(slow_create_seconds=0)
    found = conn.get_server("ghost")
    assert found is not None and found.metadata == {"attempt": "a1"}
    assert conn.get_compute_limits().total_instances_used == 1
    assert fakecloud.counters()["faults"]["slow_create"] == 1


def test_slow_create_share_picks_some_creates(fakecloud, fakecloud_connect):
    fakecloud.set_faults(slow_create_seconds=0.01, slow_create_share=0.5)
    conn = fakecloud_connect(fakecloud)
    for i in range(10):
        conn.create_server(f"n{i}", image="cirros", flavor="1", wait=False)
    slow = fakecloud.counters()["faults"].get("slow_create", 0)
    assert 0 < slow < 10  # the seed makes the draw the same on every run


def test_429_carries_retry_after(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    assert conn.list_servers(bare=True) == []
    fakecloud.set_faults(error_429_rate=1.0, retry_after_seconds=2.5)
    with pytest.raises(os_exc.HttpException) as e:
        conn.list_servers(bare=True)
    assert e.value.status_code == 429
    assert e.value.response.headers["Retry-After"] == "2.5"
    fakecloud.set_faults(error_429_rate=0.0)
    assert conn.list_servers(bare=True) == []
    assert fakecloud.counters()["faults"] == {"error_429": 1}


def test_capacity_model_slows_then_refuses_concurrent_requests(fakecloud, fakecloud_connect):
    conns = [fakecloud_connect(fakecloud) for _ in range(6)]
    for conn in conns:
        conn.list_servers(bare=True)
    fakecloud.reset_counters()
    # Two at full speed, up to four slower, beyond that 503; requests are
    # held long enough (latency) that they overlap.
    fakecloud.set_faults(capacity=2, overload_503_factor=2.0, overload_seconds=0.1,
                         latency_seconds=0.3, match="servers/detail")
    outcomes: list = []
    start = threading.Barrier(6)

    def one(conn):
        start.wait()
        try:
            conn.list_servers(bare=True)
            outcomes.append("ok")
        except os_exc.HttpException as err:
            outcomes.append(err.status_code)
    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    faults = fakecloud.counters()["faults"]
    assert outcomes.count("ok") >= 2 and 503 in outcomes, outcomes
    assert faults.get("overload_503", 0) == outcomes.count(503)
    assert faults.get("overload_latency", 0) >= 1
    fakecloud.set_faults(capacity=0, latency_seconds=0)
    assert conns[0].list_servers(bare=True) == []


def test_a_down_cell_hides_servers_below_2_69_and_lists_them_partially_from_it(
        fakecloud, fakecloud_connect):
    from nodepool.driver.openstack.cloud import OpenStackCloud
    conn = fakecloud_connect(fakecloud)
    for i in range(3):
        conn.create_server(f"n{i}", image="cirros", flavor="1", wait=False, meta={"k": "v"})
    cloud = OpenStackCloud(conn)
    assert len(cloud.list_servers()) == 3
    fakecloud.set_faults(down_cell_share=1.0)
    # Asked as openstacksdk asks by default: the servers look deleted.
    assert conn.compute.get("/servers/detail").json()["servers"] == []
    # At 2.69: there, with what a down cell lets nova say.
    partial = cloud.list_servers()
    assert len(partial) == 3
    assert all(s["status"] == "UNKNOWN" and "metadata" not in s for s in partial)
    # For a number of lists only: the first is partial, then the cell is back.
    fakecloud.set_faults(down_cell_share=1.0, down_cell_lists=1)
    assert {s["status"] for s in cloud.list_servers()} == {"UNKNOWN"}
    assert all(s["metadata"] == {"k": "v"} for s in cloud.list_servers())
    assert fakecloud.counters()["faults"]["down_cell"] == 3
