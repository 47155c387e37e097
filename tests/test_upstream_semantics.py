"""nodepool.yaml settings that behave as upstream Nodepool's: server names,
availability zones, the readiness check of non-SSH nodes.  Real ZooKeeper,
the fakecloud over HTTP through openstacksdk."""

from __future__ import annotations

import socket

import pytest

from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import (finished, run_launcher, store,  # noqa: F401 - fixtures
                                 write_config, zuul_request)

pytestmark = pytest.mark.timeout(120)

ZONES = ["az1", "az2", "az3"]


def test_server_names_are_np_and_the_node_id_by_default(tmp_path, make_fakecloud,
                                                         zk_settings, store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    node = store.get_node(done.nodes[0])
    [server] = cloud.servers()
    assert server["name"] == f"np{node.id}" == node.hostname
    assert len(server["name"]) <= 15  # a Windows computer name fits


def test_hostname_format_still_names_servers(tmp_path, make_fakecloud, zk_settings, store,  # noqa: F811
                                             run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    run_launcher(write_config(tmp_path, cloud, zk_settings, provider={
        "hostname-format": "{label.name}-{provider.name}-{node.id}"}))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    [server] = cloud.servers()
    assert server["name"] == f"small-fake-{done.nodes[0]}"


def test_all_nodes_of_a_request_share_one_of_the_pools_zones(tmp_path, make_fakecloud,
                                                               zk_settings, store,  # noqa: F811
                                                               run_launcher):  # noqa: F811
    cloud = make_fakecloud({"availability_zones": ZONES})
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              pool={"availability-zones": ZONES}))
    for _ in range(2):
        req = zuul_request(store, ["small", "small", "small"])
        done = wait_for(lambda req=req: finished(store, req.id), 30, what="fulfilment")
        assert done.state == "fulfilled"
        zones = {store.get_node(n).az for n in done.nodes}
        assert len(zones) == 1 and zones <= set(ZONES), zones
    by_name = {s["name"]: s for s in cloud.servers()}
    for node in store.list_nodes():
        # The node records the zone nova put the server in.
        assert node.az == cloud_zone(cloud, by_name[node.hostname]["id"])


def cloud_zone(cloud, server_id: str) -> str:
    with cloud.state.lock:
        return cloud.state.servers[server_id].availability_zone


def test_a_reused_ready_node_decides_the_zone_of_the_new_ones(tmp_path, make_fakecloud,
                                                                zk_settings, store,  # noqa: F811
                                                                run_launcher):  # noqa: F811
    cloud = make_fakecloud({"availability_zones": ZONES})
    run_launcher(write_config(tmp_path, cloud, zk_settings,
                              labels=[{"name": "small", "min-ready": 1}],
                              pool={"availability-zones": ZONES}))
    ready = wait_for(lambda: [n for n in store.list_nodes()
                              if n.state == "ready" and n.allocated_to is None], 30,
                     what="a min-ready node")[0]
    req = zuul_request(store, ["small", "small", "small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert ready.id in done.nodes
    assert {store.get_node(n).az for n in done.nodes} == {ready.az}


def test_without_configured_zones_one_the_cloud_lists_is_chosen(tmp_path, make_fakecloud,
                                                                  zk_settings, store,  # noqa: F811
                                                                  run_launcher):  # noqa: F811
    cloud = make_fakecloud({"availability_zones": ZONES})
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    wait_for(lambda: launcher.providers["fake"].availability_zones() == ZONES, 15,
             what="zones listed")
    req = zuul_request(store, ["small", "small", "small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    zones = {store.get_node(n).az for n in done.nodes}
    assert len(zones) == 1 and zones <= set(ZONES), zones


@pytest.fixture
def listener():
    """A TCP port that accepts connections on every loopback address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_winrm_nodes_are_ready_when_their_port_accepts_connections(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, listener):  # noqa: F811
    # Servers get loopback addresses, so the test's listener is "the node".
    cloud = make_fakecloud({"networks": [{"name": "loop", "cidr": "127.0.0.0/24"}]})
    images = [{"name": "win", "image-name": "cirros", "connection-type": "winrm",
               "connection-port": listener},
              {"name": "win-closed", "image-name": "cirros", "connection-type": "winrm",
               "connection-port": _closed_port()}]
    labels = [{"name": "win", "cloud-image": "win", "flavor-name": "m1.small"},
              {"name": "win-closed", "cloud-image": "win-closed", "flavor-name": "m1.small"}]
    run_launcher(write_config(
        tmp_path, cloud, zk_settings, labels=[{"name": "win"}, {"name": "win-closed"}],
        pool={"host-key-checking": True, "labels": labels},
        provider={"cloud-images": images, "boot-timeout": 3, "launch-retries": 1}))
    req = zuul_request(store, ["win"])
    done = wait_for(lambda: finished(store, req.id), 30, what="winrm node ready")
    assert done.state == "fulfilled"
    node = store.get_node(done.nodes[0])
    assert node.connection_type == "winrm" and node.host_keys == []
    assert node.interface_ip.startswith("127.")

    closed = zuul_request(store, ["win-closed"])
    failed = wait_for(lambda: finished(store, closed.id), 30, what="closed port fails")
    assert failed.state == "failed"
