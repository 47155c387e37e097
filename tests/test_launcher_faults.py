"""The launcher (in this process) under faults it must survive: a launcher
that dies while holding requests, a node record some tool broke while its
server is in use, and a reload that fails half way.

Real ZooKeeper, the fakecloud over HTTP, real openstacksdk.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from nodepool.driver import registry
from nodepool.requests import protocol
from nodepool.zk import paths
from nodepool.zk.components import read_components
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.fakecloud import wait_for
from tests.fixtures.zk import other_pool
from tests.test_launcher import (finished, run_launcher, store,  # noqa: F401
                                 write_config, zuul_request)

pytestmark = pytest.mark.timeout(120)


def test_requests_of_a_dead_launcher_are_served_without_waiting_for_housekeeping(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, zk_connect):  # noqa: F811
    cloud = make_fakecloud()
    # Another launcher accepted two requests and dies (its session ends).
    other = ZooKeeperStore(zk_connect())
    other_pool(other.client, labels=("small",), provider="gone")
    held = []
    for _ in range(2):
        req = zuul_request(store, ["small"])
        lock = other.try_lock_request(req.id)
        fresh = other.get_request(req.id)
        protocol.apply_accept(fresh, 0.0)
        other.store_request(fresh, lock)
        held.append(req.id)
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    newer = zuul_request(store, ["small"])
    wait_for(lambda: finished(store, newer.id), 60, what="the newer request")
    assert all(store.get_request(r).state == "pending" for r in held)
    other.client.stop()  # the session ends: its locks and registration go
    # Housekeeping runs every 60 s; this must not wait for it.
    for rid in held:
        wait_for(lambda rid=rid: finished(store, rid), 25,
                 what=f"lost request {rid} to be served")
    assert launcher.health.errors == {}


def _builds_of(launcher, node_id) -> list[dict]:
    return [b for b in launcher.providers["fake"].status()["builds"] if b["node"] == node_id]


def test_build_of_an_expired_launcher_is_cancelled_when_another_reaps_its_node(
        tmp_path, make_fakecloud, zk_settings, store):  # noqa: F811
    """An HA pair.  Launcher A is cut off from ZooKeeper while a server
    boots for it, and its session expires; launcher B resets A's request
    and reaps A's node, deleting the server.  A's build sees its server
    deleted and would boot another one for the node that is gone.  Once A
    has a new session, that build is cancelled: no server of the node is
    left, its quota is released, nothing of it stays in A's provider."""
    from kazoo.client import KazooClient

    from nodepool.launcher.launcher import Launcher
    from tests.fixtures.tcpproxy import TcpProxy
    server = zk_settings.servers[0]
    proxy = TcpProxy(server.host, server.port)
    # Boots outlast the test: every server of it is still building.
    cloud = make_fakecloud({"servers": {"boot_seconds": [120.0, 120.0]}})
    options = {"server_list_interval": 0.5, "leak_interval": 2.0}
    launchers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            write_config(tmp_path / name, cloud, zk_settings)
        data = _config_dict(tmp_path / "a")
        data["zookeeper-servers"][0]["port"] = proxy.port
        a = Launcher(_load(tmp_path / "a", data), hostname="launcher-a",
                     provider_options=options)
        launchers.append(a)
        a.start()
        req = zuul_request(store, ["small"])
        (first,) = wait_for(lambda: cloud.servers(), 60, what="A's server")
        node_id = first["metadata"]["nodepool_node_id"]
        b = Launcher(_load(tmp_path / "b", _config_dict(tmp_path / "b")),
                     hostname="launcher-b", provider_options=options)
        launchers.append(b)
        b.start()
        session = a.client.client_id     # kazoo tells it only while connected
        proxy.cut()
        wait_for(lambda: not a.store.connected, 20, what="A to see the cut")
        thief = KazooClient(hosts=zk_settings.hosts, client_id=session)
        thief.start(timeout=10)
        thief.stop()    # closes A's session on the server
        thief.close()
        wait_for(lambda: store.get_node(node_id) is None, 60, what="B to reap A's node")
        # It retries (another server for the gone node) once its share of
        # the quota book can be written again, after the reconnect.
        wait_for(lambda: any(b["failures"] >= 1 for b in _builds_of(a, node_id)), 30,
                 what="A's build to see its server deleted")
        proxy.heal()
        wait_for(lambda: a.store.connected, 30, what="A's new session")

        def settled() -> bool:
            servers = [s for s in cloud.servers()
                       if s["metadata"].get("nodepool_node_id") == node_id]
            keys = [k for k in a.ledger.keys("fake") if k.startswith(f"{node_id}/")]
            return not servers and not keys and not _builds_of(a, node_id)

        wait_for(settled, 30, what="A's build cancelled, its server deleted, its quota free")
        assert store.get_request(req.id).state in ("pending", "fulfilled")   # B serves it
    finally:
        for launcher in launchers:
            launcher.stop(wait=10)
        proxy.close()


def _leak_passes(launcher):
    provider = launcher.providers["fake"]
    return provider.reconciler.last_leak_pass


def test_server_of_a_malformed_node_is_not_deleted(tmp_path, make_fakecloud, zk_settings,
                                                   store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 60, what="fulfilment")
    (node_id,) = done.nodes
    node = store.get_node(node_id)
    # An operator held it; some tool then wrote host_keys as a string.
    raw = node.to_dict()
    raw.update(state="hold", host_keys="ssh-ed25519 AAAA", allocated_to=None)
    store.client.set(paths.node_path(node_id), json.dumps(raw).encode())
    wait_for(lambda: launcher.store.nodes_cache.malformed().get(node_id), 10,
             what="the cache to see the malformed node")
    seen = []

    def passes() -> bool:
        at = _leak_passes(launcher)
        if at is not None and (not seen or seen[-1] != at):
            seen.append(at)
        return len(seen) >= 4

    wait_for(passes, 60, what="several leak-cleaner passes")
    assert [s["id"] for s in cloud.servers()] == [node.external_id]
    assert launcher.providers["fake"].counters["leaks_deleted"] == 0
    # The status API and the other labels' work go on.
    url = f"http://127.0.0.1:{launcher.webapp.port}/node-list.json"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
    other = zuul_request(store, ["small"])
    assert wait_for(lambda: finished(store, other.id), 60, what="another request").state \
        == "fulfilled"


def test_reload_that_fails_half_way_changes_nothing(tmp_path, make_fakecloud, zk_settings,
                                                    store, run_launcher):  # noqa: F811
    cloud = make_fakecloud()
    config = write_config(tmp_path, cloud, zk_settings)
    launcher = run_launcher(config)
    before = sorted(p.id for p in store.registered_pools())
    extra_pool = dict(name="second", **{"max-servers": 2, "host-key-checking": False,
                                        "auto-floating-ip": False,
                                        "labels": [{"name": "small", "cloud-image": "img",
                                                    "flavor-name": "m1.small"}]})
    broken = {"name": "broken", "cloud": "fakecloud", "rate": 0.01,
              "cloud-images": [{"name": "img", "image-name": "cirros"}],
              "pools": [dict(extra_pool, name="main")]}
    data = _config_dict(tmp_path)
    data["providers"][0]["pools"].append(extra_pool)
    data["providers"].append(broken)
    new = _load(tmp_path, data)
    factory = launcher.provider_factory

    def failing(cfg, *args, **kwargs):
        if cfg.name == "broken":
            raise RuntimeError("cannot build provider broken")
        return registry.provider_class(cfg)(cfg, *args, **kwargs)

    launcher.provider_factory = failing
    assert launcher.reload(new) is False
    assert launcher.config is config
    assert sorted(launcher.providers) == ["fake"]
    assert sorted(launcher.pool_workers) == ["fake-main"]
    wait_for(lambda: sorted(p.id for p in store.registered_pools()) == before, 10,
             what="no registration left from the failed reload")
    launcher.provider_factory = factory
    assert launcher.reload(new) is True
    assert sorted(launcher.pool_workers) == ["broken-main", "fake-main", "fake-second"]


def _config_dict(tmp_path) -> dict:
    import yaml
    return yaml.safe_load((tmp_path / "nodepool.yaml").read_text())


def _load(tmp_path, data: dict):
    import yaml

    from nodepool.config import load_config
    path = tmp_path / "nodepool-new.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(str(path), str(tmp_path / "clouds.yaml"), drivers=registry.drivers())
    return config


def test_reload_while_zookeeper_is_unreachable_waits_for_it(tmp_path, make_fakecloud,
                                                            zk_settings, run_launcher):  # noqa: F811
    from tests.fixtures.tcpproxy import TcpProxy
    server = zk_settings.servers[0]
    proxy = TcpProxy(server.host, server.port)
    try:
        cloud = make_fakecloud()
        config = write_config(tmp_path, cloud, zk_settings)
        data = _config_dict(tmp_path)
        data["zookeeper-servers"][0]["port"] = proxy.port
        launcher = run_launcher(_load(tmp_path, data))
        second = dict(data["providers"][0]["pools"][0], name="second")
        data["providers"][0]["pools"].append(second)
        new = _load(tmp_path, data)
        proxy.cut()
        wait_for(lambda: not launcher.store.connected, 20, what="the launcher to see the cut")
        assert launcher.reload(new) is False
        assert "fake-second" not in launcher.pool_workers
        proxy.heal()
        wait_for(lambda: "fake-second" in launcher.pool_workers, 30,
                 what="the waiting configuration to be applied")
        assert launcher.config is new
        wait_for(lambda: launcher.health_problems() == [], 30, what="a healthy launcher")
        assert config.providers["fake"].pools.keys() == {"main"}
        # Stopping while ZooKeeper is unreachable must not hang either.
        proxy.cut()
        wait_for(lambda: not launcher.store.connected, 20, what="the launcher to see the cut")
        launcher.stop(wait=10)
    finally:
        proxy.close()


def test_launcher_registration_removed_is_made_again(tmp_path, make_fakecloud, zk_settings,
                                                     store, run_launcher):  # noqa: F811
    launcher = run_launcher(write_config(tmp_path, make_fakecloud(), zk_settings))
    (first,) = [c.path for c in read_components(store.client, "launcher")]
    store.client.delete(first)
    wait_for(lambda: [c.path for c in read_components(store.client, "launcher")], 20,
             what="the launcher registration to be made again")
    assert launcher.health_problems() == []


def test_loop_health_reports_loops_that_never_pass_or_always_fail():
    from nodepool.launcher.loop_health import LoopHealth
    health = LoopHealth()
    health.start("pool a")
    health.start("pool b")
    health.beat("pool b", ok=False)
    problems = health.problems(deadline=-1)
    assert any("pool a loop has not finished a pass since it started" in p for p in problems)
    assert any("every pass of the pool b loop has failed" in p for p in problems)
    health.beat("pool a")
    health.beat("pool b", ok=True)
    assert health.problems(deadline=60) == []
