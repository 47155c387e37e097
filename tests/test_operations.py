"""Operating the launcher: status API, `nodepool quota` / `info`, config reload."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.quota.refresh import RefreshPolicy
from nodepool.launcher.launcher import Launcher
from nodepool.launcher.webapp import health
from nodepool.zk.client import connect, disconnect
from nodepool.zk.records import NodeRequest
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.fakecloud import wait_for

BIN = os.path.dirname(sys.executable)
PASSWORD = "very-secret-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_data(zk_settings, port, pools=None, labels=None):
    server = zk_settings.servers[0]
    return {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                   "chroot": zk_settings.chroot}],
            "webapp": {"port": port, "listen_address": "127.0.0.1"},
            "labels": labels or [{"name": "small"}, {"name": "large"}],
            "providers": [{"name": "fake", "cloud": "fakecloud", "rate": 0.01,
                           "cloud-images": [{"name": "img", "image-name": "cirros"}],
                           "pools": pools or [{
                               "name": "main", "max-servers": 5, "host-key-checking": False,
                               "auto-floating-ip": False,
                               "labels": [{"name": "small", "cloud-image": "img",
                                           "flavor-name": "m1.small"}]}]}]}


@pytest.fixture
def setup(tmp_path, make_fakecloud, zk_settings):
    cloud = make_fakecloud({"projects": [{"name": "ci", "users": [
        {"name": "nodepool", "password": PASSWORD}],
        "limits": {"instances": 4, "cores": 20, "ram": 50000}}],
        "servers": {"boot_seconds": 1.0, "delete_seconds": 0.5}})
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    port = free_port()
    path = tmp_path / "nodepool.yaml"

    def write(**kw):
        path.write_text(yaml.safe_dump(config_data(zk_settings, port, **kw)))
        config, _ = load_config(str(path), str(clouds), drivers=registry.drivers())
        return config

    config = write()
    launcher = Launcher(config, provider_options={"server_list_interval": 0.5})
    launcher.start()
    client = connect(zk_settings)
    store = ZooKeeperStore(client)
    yield {"cloud": cloud, "launcher": launcher, "store": store, "port": port,
           "config": str(path), "clouds": str(clouds), "write": write}
    launcher.stop(wait=10)
    disconnect(client)


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def request(store, labels):
    return store.create_request(NodeRequest(state="requested", node_types=list(labels),
                                            requestor="ops-test", event_id="e"), 200)


def test_status_api_endpoints(setup):
    port, store = setup["port"], setup["store"]
    req = request(store, ["small"])
    wait_for(lambda: store.get_request(req.id).state == "fulfilled", 30, what="fulfilment")
    node_id = store.get_request(req.id).nodes[0]

    status, body = get(port, "/ready")
    assert status == 200 and body == "OK"
    status, body = get(port, "/health")
    assert status == 200 and json.loads(body)["healthy"] is True
    status, body = get(port, "/node-list.json")
    rows = json.loads(body)
    assert status == 200 and [r["id"] for r in rows] == [node_id]
    assert rows[0]["state"] == "ready" and rows[0]["provider"] == "fake"
    status, body = get(port, f"/node-list.json?node_id={node_id}")
    assert len(json.loads(body)) == 1
    status, body = get(port, "/node-list")
    assert status == 200 and node_id in body and "ready" in body
    status, body = get(port, "/request-list.json")
    assert [r["id"] for r in json.loads(body)] == [req.id]
    status, body = get(port, "/request-list")
    assert req.id in body
    status, body = get(port, "/label-list.json")
    assert json.loads(body) == [{"label": "small"}]
    status, body = get(port, "/label-list")
    assert "small" in body
    status, body = get(port, "/quota.json")
    quota = json.loads(body)["fake"]
    assert quota["resources"]["instances"]["limit"] == 4
    status, body = get(port, "/quota")
    assert status == 200 and "cloud limit" in body and "instances" in body
    status, body = get(port, "/quota.json?provider=nope")
    assert status == 404
    status, body = get(port, "/providers.json")
    calls = json.loads(body)["fake"]["api_calls"]
    assert calls["compute.create_server"]["count"] >= 1
    assert {"wait_seconds", "max_wait_seconds", "in_flight"} <= set(
        calls["compute.create_server"])
    budget = json.loads(body)["fake"]["api_budget"]
    assert budget["mode"] == "rate" and budget["concurrency_limit"] >= budget["concurrency_floor"]
    status, body = get(port, "/nothing-here")
    assert status == 404 and "endpoints" in json.loads(body)
    # No output carries the cloud's password.
    for path in ("/node-list.json", "/request-list.json", "/quota.json", "/providers.json",
                 "/health", "/node-list", "/quota"):
        assert PASSWORD not in get(port, path)[1]


def test_quota_command_shows_the_figures(setup):
    store, cloud = setup["store"], setup["cloud"]
    launcher = setup["launcher"]
    # Read limits often, so the reading that sees both servers comes soon.
    launcher.ledger.refresh_policy = RefreshPolicy(min_interval=0.5, max_age=1.0)
    req = request(store, ["small", "small"])
    wait_for(lambda: store.get_request(req.id).state == "fulfilled", 30, what="fulfilment")
    # Nova reports two servers in use once the limits are read again.
    wait_for(lambda: launcher.ledger.estimate("fake").limits is not None and
             launcher.ledger.estimate("fake").limits.used.instances == 2, 60,
             what="a limits reading that sees both servers")
    out = subprocess.run([f"{BIN}/nodepool", "-c", setup["config"], "quota", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)["fake"]
    instances = view["resources"]["instances"]
    assert instances["limit"] == 4
    assert instances["nova_used"] == 2 and instances["ledger_used"] == 2
    assert instances["effective_headroom"] == 2
    ram = view["resources"]["ram"]
    assert ram["limit"] == 50000 and ram["nova_used"] == cloud.usage()["ci"]["in_use"]["ram"]
    assert view["pools"]["main"]["resources"]["instances"]["limit"] == 5
    assert view["backoff"]["in_backoff"] is False
    assert view["limits"]["age"] is not None
    text = subprocess.run([f"{BIN}/nodepool", "-c", setup["config"], "quota", "fake"],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "provider fake" in text.stdout
    assert "pool main" in text.stdout and PASSWORD not in text.stdout
    info = subprocess.run([f"{BIN}/nodepool", "-c", setup["config"], "info", "fake"],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "compute.create_server" in info.stdout and "server list:" in info.stdout
    # The budget: this provider sets rate, so creates and reads have ceilings.
    assert "API budget: rate: a create or delete every 0.01s, a read every 0.002s" \
        in info.stdout
    assert "max wait s" in info.stdout


def test_quota_command_without_a_launcher(tmp_path, zk_settings):
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(config_data(zk_settings, free_port())))
    out = subprocess.run([f"{BIN}/nodepool", "-c", str(path), "quota"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no launcher status API" in out.stderr and "Traceback" not in out.stderr


def test_reload_changes_pools_without_dropping_nodes(setup):
    launcher, store, cloud = setup["launcher"], setup["store"], setup["cloud"]
    cloud.set_server_behaviour(boot_seconds=3.0)
    worker = launcher.pool_workers["fake-main"]
    pool_id = worker.settings.pool_id
    req = request(store, ["small"])
    wait_for(lambda: any(n.state == "building" for n in store.list_nodes()), 30,
             what="a node building")
    building = [n.id for n in store.list_nodes() if n.state == "building"]

    # Add a label to the pool and a second pool.
    new = setup["write"](pools=[
        {"name": "main", "max-servers": 6, "host-key-checking": False,
         "auto-floating-ip": False,
         "labels": [{"name": "small", "cloud-image": "img", "flavor-name": "m1.small"},
                    {"name": "large", "cloud-image": "img", "flavor-name": "m1.large"}]},
        {"name": "extra", "max-servers": 1, "host-key-checking": False,
         "auto-floating-ip": False,
         "labels": [{"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}]}])
    launcher.reload(new)
    assert launcher.pool_workers["fake-main"].settings.pool_id == pool_id
    pools = {p.id: p for p in store.registered_pools()}
    assert sorted(pools[pool_id].supported_labels) == ["large", "small"]
    assert len(pools) == 2
    # The request accepted before the reload is served by the node it had.
    wait_for(lambda: store.get_request(req.id).state == "fulfilled", 30,
             what="fulfilment after reload")
    assert store.get_request(req.id).nodes == building
    large = request(store, ["large"])
    wait_for(lambda: store.get_request(large.id).state == "fulfilled", 30,
             what="the new label served")

    # Remove the extra pool: it unregisters and stops.
    launcher.reload(setup["write"]())
    wait_for(lambda: "fake-extra" not in launcher.pool_workers, 30, what="extra drained")
    assert [p.id for p in store.registered_pools()] == [pool_id]


def test_sighup_reload_and_bad_config_keeps_running(tmp_path, setup):
    """Through the daemon command: an invalid file is refused, a valid one applied."""
    from nodepool.cmd import launcher as cmd

    launcher = setup["launcher"]
    args = cmd.build_parser().parse_args(["-c", setup["config"], "--clouds", setup["clouds"]])
    with open(setup["config"]) as f:
        good = f.read()
    with open(setup["config"], "w") as f:
        f.write(good.replace("max-servers: 5", "max-servers: lots"))
    assert cmd.reload_config(launcher, args) is False
    assert launcher.pool_workers["fake-main"].settings.max_servers == 5
    with open(setup["config"], "w") as f:
        f.write(good.replace("max-servers: 5", "max-servers: 2"))
    assert cmd.reload_config(launcher, args) is True
    assert launcher.pool_workers["fake-main"].settings.max_servers == 2


def test_health_reports_lost_zookeeper_and_stuck_loops():
    from types import SimpleNamespace

    from nodepool.launcher.loop_health import LoopHealth

    now = time.monotonic()
    loops = LoopHealth(last_pass={"maintenance": now - 500, "pool x": now - 1},
                       started={"maintenance": now - 600, "pool x": now - 600,
                                "reaper": now - 300})

    class StuckProvider:
        def tick_age(self):
            return 500.0

        def metrics(self):
            from nodepool.driver.base import ProviderMetrics
            # As many hung API calls as the gate writes off.
            return ProviderMetrics(api_budget={"written_off": 16, "written_off_max": 16})

    # A launcher that is not connected: what /health reports comes from the
    # launcher's own check.
    fake = SimpleNamespace(store=None, health=loops, providers={"p": StuckProvider()})
    fake.health_problems = lambda: Launcher.health_problems(fake)
    ok, problems = health(fake)
    assert not ok
    assert problems[0].startswith("ZooKeeper connection down")
    assert any("maintenance loop has not finished a pass for 500s" in p for p in problems)
    assert any("reaper loop has not finished a pass since it started 300s ago" in p
               for p in problems)
    assert "provider p loop has not finished a pass for 500s" in problems
    assert any("provider p: 16 API calls hung past their deadline" in p for p in problems)
    assert not [p for p in problems if "pool x" in p]


def test_webapp_port_in_use_stops_the_start_before_any_registration(tmp_path, make_fakecloud,
                                                                     zk_settings):
    cloud = make_fakecloud()
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "nodepool.yaml"
        path.write_text(yaml.safe_dump(config_data(zk_settings, port)))
        config, _ = load_config(str(path), str(clouds), drivers=registry.drivers())
        # The daemon's own way to start: a clear error, no traceback, exit 1.
        out = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-f", "-c", str(path),
                              "--clouds", str(clouds)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        # Without -l the foreground launcher logs to stdout, as upstream's.
        assert f"{path}: webapp: cannot listen on 127.0.0.1:{port}" in out.stdout
        assert "webapp.port" in out.stdout and "Traceback" not in out.stdout + out.stderr
        launcher = Launcher(config)
        with pytest.raises(Exception, match="webapp.port"):
            launcher.start()
        launcher.stop(wait=5)
    client = connect(zk_settings)
    try:
        store = ZooKeeperStore(client)
        assert not client.exists("/nodepool/components/pool") or \
            not client.get_children("/nodepool/components/pool")
        assert store.list_requests() == []
    finally:
        disconnect(client)


def test_delete_now_deletes_the_server_before_it_returns(setup):
    store, cloud = setup["store"], setup["cloud"]
    req = request(store, ["small"])
    wait_for(lambda: store.get_request(req.id).state == "fulfilled", 30, what="fulfilment")
    node = store.get_node(store.get_request(req.id).nodes[0])
    assert node.external_id in {s["id"] for s in cloud.servers()}
    out = subprocess.run([f"{BIN}/nodepool", "-c", setup["config"], "--clouds",
                          setup["clouds"], "delete", node.id, "--now"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # Done when the command returns: the server is gone and so is the record
    # (a ready node is nothing the running launcher would delete by itself).
    assert node.external_id not in {s["id"] for s in cloud.servers()}
    assert store.get_node(node.id) is None
    # As upstream, it prints the node's table, which has no row left.
    lines = out.stdout.splitlines()
    assert lines[1].split("|")[1].strip() == "ID" and node.id not in out.stdout
    # An unknown node is a clean error.
    out = subprocess.run([f"{BIN}/nodepool", "-c", setup["config"], "--clouds",
                          setup["clouds"], "delete", "9999999999", "--now"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no node with id '9999999999'" in out.stderr
