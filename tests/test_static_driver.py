"""The static driver: hosts on 127.0.0.1 (TCP listeners started here), a real
ZooKeeper, the launcher, and Zuul's own client where it is what matters.

A host is "up" while its listener accepts connections; the provider checks
it on its own loop.  Every wait has a deadline.
"""

from __future__ import annotations

import socket
import threading

import pytest
import yaml

from nodepool import tables
from nodepool.config import load_config, validate
from nodepool.driver import registry
from nodepool.driver.static import provider as static_provider
from nodepool.requests import standing
from nodepool.launcher.webapp import quota_view
from nodepool.requests.builder import NodeInfo, StandingNode
from nodepool.zk.records import Node
from tests.fixtures.fakecloud import wait_for
from tests.fixtures.sshhost import SSHKeyHost
from tests.test_launcher import (finished, run_launcher, store,  # noqa: F401
                                 use_and_return, write_config, zuul_request)
from tests.test_request_zuul_e2e import HAVE_ZUUL, zuul_side  # noqa: F401
from tests.test_stats import statsd  # noqa: F401

if HAVE_ZUUL:
    import zuul.model

pytestmark = pytest.mark.timeout(120)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummyKeyForTestsOnly00000000000000000"


class Host:
    """A TCP listener on 127.0.0.1 that accepts and closes connections; it
    can go away and come back on the same port."""

    def __init__(self):
        self.port = 0
        self._sock: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    def down(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _started(cls):
    """A fixture's factory of hosts of ``cls``, all taken down at the end."""
    made = []

    def make():
        h = cls()
        made.append(h)
        return h

    yield make
    for h in made:
        h.down()


@pytest.fixture
def hosts():
    yield from _started(Host)


@pytest.fixture
def ssh_host():
    """A host that shows an SSH host key (``.key``) to ssh-keyscan."""
    yield from _started(SSHKeyHost)


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch):
    monkeypatch.setattr(static_provider, "CHECK_INTERVAL", 0.3)


def static_entry(*nodes: dict, name: str = "lab") -> dict:
    return {"name": name, "driver": "static", "pools": [{"name": "main", "nodes": list(nodes)}]}


def host_node(host: Host, **kw) -> dict:
    node = {"name": "127.0.0.1", "labels": ["metal"], "connection-port": host.port,
            "timeout": 2, "host-key-checking": False}
    node.update(kw)
    return node


def write_static(tmp_path, zk_settings, providers: list[dict], labels=("metal",)):
    server = zk_settings.servers[0]
    data = {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                   "chroot": zk_settings.chroot}],
            "labels": [{"name": n} for n in labels], "webapp": {"port": 0},
            "providers": providers}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(str(path), drivers=registry.drivers())
    return config


def ready_nodes(store, provider="lab"):  # noqa: F811
    return sorted((n for n in store.list_nodes()
                   if n.provider == provider and n.state == "ready" and not n.allocated_to),
                  key=lambda n: n.id)


# -- configuration ---------------------------------------------------------------


def test_config_upstream_keys_and_clear_errors(tmp_path):
    data = {"zookeeper-servers": [{"host": "127.0.0.1"}],
            "labels": [{"name": "metal"}, {"name": "gpu"}],
            "providers": [static_entry(
                {"name": "a.example.org", "labels": "metal gpu", "username": "ci",
                 "connection-type": "ssh", "connection-port": 2222,
                 "host-key-checking": True, "host-key": KEY, "python-path": "/usr/bin/python3",
                 "shell-type": "sh", "max-parallel-jobs": 3, "timeout": 7},
                {"name": "b.example.org", "labels": ["metal"]})]}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    config, problems = validate(str(path), drivers=registry.drivers())
    assert [p for p in problems if p.severity == "error"] == []
    pool = config.providers["lab"].pools["main"]
    a, b = pool.nodes
    assert a.labels == ("metal", "gpu") and a.username == "ci" and a.connection_port == 2222
    assert a.host_keys == (KEY,) and a.python_path == "/usr/bin/python3"
    assert a.max_parallel_jobs == 3 and a.timeout == 7 and a.shell_type == "sh"
    assert b.username == "zuul" and b.connection_port == 22 and b.host_key_checking
    assert pool.labels == {"metal", "gpu"}
    assert pool.max_servers == 4  # capacity in slots

    data["providers"][0]["pools"][0]["nodes"] = [
        {"name": "a", "labels": ["nope"]},
        {"name": "b", "labels": ["metal"], "max-parallel-jobs": 0},
        {"name": "a", "labels": ["metal"]},
        {"name": "c", "labels": 5}]
    path.write_text(yaml.safe_dump(data))
    config, problems = validate(str(path), drivers=registry.drivers())
    text = "\n".join(str(p) for p in problems)
    assert config is None
    assert "providers[0].pools[0].nodes[0].labels: label 'nope' is not defined" in text
    assert "nodes[1].max-parallel-jobs: must be at least 1" in text
    assert "nodes[2]: host a (user zuul, port 22) is already node 0" in text
    assert "nodes[3].labels: expected a label name" in text
    assert "Traceback" not in text


# -- the plan (pure) -------------------------------------------------------------------


def _slot(slot: int, name="h1", labels=("metal",)) -> StandingNode:
    return StandingNode("main", labels, slot, NodeInfo(
        external_id=name, hostname=name, interface_ip=name, username="zuul",
        connection_type="ssh", connection_port=22, python_path="auto", host_keys=[]))


def _node(nid: str, slot: int, state="ready", allocated=None, name="h1", labels=("metal",)):
    return Node(id=nid, state=state, type=list(labels), provider="lab", pool="main",
                external_id=name, username="zuul", connection_type="ssh",
                connection_port=22, python_path="auto", slot=slot, allocated_to=allocated)


def test_plan_registers_missing_slots_and_retires_what_no_longer_matches():
    offered = [_slot(0), _slot(1)]
    p = standing.plan(offered, [], "lab")
    assert [s.slot for s in p.create] == [0, 1] and p.retire == []
    # In use holds its slot; a ready one is kept; nothing new.
    nodes = [_node("1", 0, state="in-use", allocated="r"), _node("2", 1)]
    p = standing.plan(offered, nodes, "lab")
    assert p.create == [] and p.retire == []
    # The host went away: the ready node is retired, the one in use stays.
    p = standing.plan([], nodes, "lab")
    assert [n.id for n in p.retire] == ["2"] and p.create == []
    # Its labels changed in the config: the ready node is replaced.
    p = standing.plan([_slot(0), _slot(1, labels=("gpu",))], nodes, "lab")
    assert [n.id for n in p.retire] == ["2"] and [s.slot for s in p.create] == [1]
    # A node just created that the list does not show yet counts.
    p = standing.plan(offered, [], "lab", pending=[offered[0].key])
    assert [s.slot for s in p.create] == [1]
    # Two ready nodes for one slot: the second is retired.
    p = standing.plan(offered[:1], [_node("1", 0), _node("2", 0)], "lab")
    assert [n.id for n in p.retire] == ["2"]
    # Other providers' nodes are not ours.
    other = _node("9", 0)
    other.provider = "elsewhere"
    assert standing.plan([], [other], "lab").retire == []


# -- the launcher -----------------------------------------------------------------------


def test_slots_registered_used_node_re_registered_max_parallel_jobs(
        tmp_path, zk_settings, store, run_launcher, hosts):  # noqa: F811
    host = hosts()
    config = write_static(tmp_path, zk_settings, [static_entry(
        host_node(host, **{"max-parallel-jobs": 2}))])
    launcher = run_launcher(config)
    first = wait_for(lambda: len(ready_nodes(store)) == 2 and ready_nodes(store), 20,
                     what="one ready node per slot")
    assert sorted(n.slot for n in first) == [0, 1]
    node = first[0]
    assert (node.hostname, node.interface_ip, node.connection_port, node.username) == \
        ("127.0.0.1", "127.0.0.1", host.port, "zuul")

    # max-parallel-jobs: 2 -> two requests served, the third waits.
    reqs = [zuul_request(store, ["metal"]) for _ in range(3)]
    wait_for(lambda: sum(1 for r in reqs if finished(store, r.id)) == 2, 20,
             what="two requests fulfilled")
    served = [finished(store, r.id) for r in reqs if finished(store, r.id)]
    waiting = [r for r in reqs if not finished(store, r.id)]
    assert {s.state for s in served} == {"fulfilled"}
    assert len({store.get_node(s.nodes[0]).slot for s in served}) == 2
    assert not finished(store, waiting[0].id)
    assert len([n for n in store.list_nodes() if n.provider == "lab"]) == 2
    # The quota views count slots: both of the pool's two are used.
    slots = wait_for(lambda: (q := quota_view(launcher, "lab")["lab"]["pools"]["main"]
                              ["resources"]["instances"])["used"] == 2 and q, 10,
                     what="the ledger to count the slots in use")
    assert (slots["limit"], slots["headroom"]) == (2, 0)
    assert "pool main" in tables.format_quota(quota_view(launcher, "lab"))

    # Returned used: the record goes, the slot is registered again and the
    # waiting request gets it.
    use_and_return(store, served[0])
    done = wait_for(lambda: finished(store, waiting[0].id), 20, what="the third request")
    assert done.state == "fulfilled"
    assert done.nodes[0] not in {n.id for n in first}
    assert store.get_node(served[0].nodes[0]) is None


@pytest.mark.skipif(not HAVE_ZUUL, reason="zuul is not importable; run "
                    "tools/install-zuul-client.sh .venv/bin/python")
def test_served_to_zuuls_client_returned_used_and_registered_again(
        tmp_path, zk_settings, store, run_launcher, ssh_host, zuul_side):  # noqa: F811
    host = ssh_host()
    run_launcher(write_static(tmp_path, zk_settings, [static_entry(
        host_node(host, **{"host-key-checking": True, "host-key": host.key, "username": "ci",
                           "python-path": "/usr/bin/python3"}))]))
    first = wait_for(lambda: ready_nodes(store), 20, what="the host in service")[0]
    launchers = zuul_side.nodepool.getRegisteredLaunchers()
    assert [sorted(launcher.supported_labels) for launcher in launchers] == [["metal"]]

    zreq = zuul_side.submit(["metal"])
    wait_for(lambda: zuul_side.completed(zreq.id), 20, what="Zuul's completion callback")
    fetched = zuul_side.nodepool.getNodeRequest(zreq.id)
    assert fetched.state == "fulfilled" and fetched.nodes == [first.id]
    node = zuul.model.Node(["controller"], "metal")
    zuul_side.nodepool.updateNode(node, fetched.nodes[0])
    assert (node.interface_ip, node.connection_port, node.username, node.host_keys,
            node.python_path, node.connection_type) == \
        ("127.0.0.1", host.port, "ci", [host.key], "/usr/bin/python3", "ssh")
    zuul_side.nodepool.lockNode(node, timeout=30)
    assert zuul_side.nodepool.deleteNodeRequest(fetched.id)
    node.state = "in-use"
    zuul_side.nodepool.storeNode(node)
    node.state = "used"
    zuul_side.nodepool.storeNode(node)
    zuul_side.nodepool.unlockNode(node)

    # Nothing is deleted but the record: the slot is registered again.
    again = wait_for(lambda: [n for n in ready_nodes(store) if n.id != first.id], 20,
                     what="the slot registered again")
    assert store.get_node(first.id) is None
    assert (again[0].slot, again[0].connection_port) == (first.slot, host.port)


def test_statsd_counts_slots_and_nodes(tmp_path, zk_settings, store, run_launcher, hosts,  # noqa: F811
                                       statsd):  # noqa: F811
    host = hosts()
    run_launcher(write_static(tmp_path, zk_settings, [static_entry(
        host_node(host, **{"max-parallel-jobs": 2}))]))
    wait_for(lambda: 2.0 in statsd.values("nodepool.provider.lab.nodes.ready", "g"), 20,
             what="the ready gauge of the static provider")
    assert statsd.values("nodepool.provider.lab.max_servers", "g")[-1] == 2.0
    assert 2.0 in statsd.values("nodepool.label.metal.nodes.ready", "g")


def test_host_that_stops_answering_leaves_service_and_comes_back(
        tmp_path, zk_settings, store, run_launcher, hosts):  # noqa: F811
    a, b = hosts(), hosts()
    config = write_static(tmp_path, zk_settings, [static_entry(
        host_node(a), host_node(b, **{"host-key-checking": False, "host-key": [KEY]}))])
    launcher = run_launcher(config)
    wait_for(lambda: len(ready_nodes(store)) == 2, 20, what="both hosts in service")
    in_b = next(n for n in ready_nodes(store) if n.connection_port == b.port)
    # Checking off: the configured keys still go to Zuul, as upstream's do.
    assert in_b.host_keys == [KEY]

    a.down()
    wait_for(lambda: [n.connection_port for n in ready_nodes(store)] == [b.port], 20,
             what="host a out of service")
    status = launcher.providers["lab"].status()
    assert {h["port"]: h["up"] for h in status["hosts"]} == {a.port: False, b.port: True}
    req = zuul_request(store, ["metal"])
    done = wait_for(lambda: finished(store, req.id), 20, what="fulfilment by host b")
    assert store.get_node(done.nodes[0]).connection_port == b.port

    a.up()
    wait_for(lambda: [n.connection_port for n in ready_nodes(store)] == [a.port], 20,
             what="host a back in service")


def test_config_change_adds_and_removes_hosts_without_touching_nodes_in_use(
        tmp_path, zk_settings, store, run_launcher, hosts):  # noqa: F811
    a, b = hosts(), hosts()
    launcher = run_launcher(write_static(tmp_path, zk_settings, [static_entry(host_node(a))]))
    wait_for(lambda: len(ready_nodes(store)) == 1, 20, what="host a in service")
    req = zuul_request(store, ["metal"])
    done = wait_for(lambda: finished(store, req.id), 20, what="fulfilment")
    node_id = done.nodes[0]
    node, lock = store.lock_and_read_node(node_id, timeout=30)
    node.state = "in-use"
    store.store_node(node, lock)

    # Host a leaves the config, host b joins: a's node in use stays.
    assert launcher.reload(write_static(tmp_path, zk_settings,
                                        [static_entry(host_node(b))]))
    wait_for(lambda: [n.connection_port for n in ready_nodes(store)] == [b.port], 20,
             what="host b in service")
    assert store.get_node(node_id).state == "in-use"
    # Returned, a's node is deleted and not registered again.
    node.state = "used"
    store.store_node(node, lock)
    lock.release()
    wait_for(lambda: store.get_node(node_id) is None, 20, what="the used node reaped")
    assert [n.connection_port for n in store.list_nodes() if n.provider == "lab"] == [b.port]


def test_static_and_openstack_in_one_launcher(tmp_path, make_fakecloud, zk_settings, store,  # noqa: F811
                                             run_launcher, hosts):  # noqa: F811
    host = hosts()
    cloud = make_fakecloud()
    base = write_config(tmp_path, cloud, zk_settings)  # writes clouds.yaml and nodepool.yaml
    data = yaml.safe_load((tmp_path / "nodepool.yaml").read_text())
    data["labels"].append({"name": "metal"})
    data["providers"].append(static_entry(host_node(host)))
    (tmp_path / "nodepool.yaml").write_text(yaml.safe_dump(data))
    config, _ = load_config(str(tmp_path / "nodepool.yaml"), str(tmp_path / "clouds.yaml"),
                            drivers=registry.drivers())
    assert {p.driver for p in config.providers.values()} == {"openstack", "static"}
    assert base.providers["fake"].driver == "openstack"
    launcher = run_launcher(config)
    metal = zuul_request(store, ["metal"])
    small = zuul_request(store, ["small"])
    done_metal = wait_for(lambda: finished(store, metal.id), 30, what="the static request")
    done_small = wait_for(lambda: finished(store, small.id), 30, what="the cloud request")
    assert done_metal.state == done_small.state == "fulfilled"
    assert store.get_node(done_metal.nodes[0]).provider == "lab"
    assert store.get_node(done_small.nodes[0]).provider == "fake"
    assert sorted(launcher.status()["providers"]) == ["fake", "lab"]


# -- upstream's host-key check and pool keys --------------------------------------------


def test_a_configured_host_key_is_checked_against_the_keys_the_host_shows(
        tmp_path, zk_settings, store, run_launcher, ssh_host):  # noqa: F811
    good, impostor = ssh_host(), ssh_host()
    launcher = run_launcher(write_static(tmp_path, zk_settings, [static_entry(
        host_node(good, **{"host-key-checking": True, "host-key": good.key}),
        # Shows another key than the one configured: never in service.
        host_node(impostor, **{"host-key-checking": True, "host-key": [good.key]}))]))
    [node] = wait_for(lambda: ready_nodes(store), 20, what="the matching host in service")
    assert node.connection_port == good.port and node.host_keys == [good.key]

    def impostor_refused():
        hosts = {h["port"]: h for h in launcher.providers["lab"].status()["hosts"]}
        return hosts[impostor.port]["up"] is False and hosts[impostor.port]["error"]

    error = wait_for(impostor_refused, 20, what="the impostor refused")
    assert "host key mismatch" in error and impostor.key in error
    assert [n.connection_port for n in ready_nodes(store)] == [good.port]


def test_static_pool_takes_upstreams_max_servers_and_max_concurrency(
        tmp_path, zk_settings, store, run_launcher, hosts):  # noqa: F811
    host = hosts()
    entry = static_entry(host_node(host, **{"max-parallel-jobs": 2}))
    entry["max-concurrency"] = 5
    entry["pools"][0]["max-servers"] = 10   # capacity stays the hosts' slots
    config = write_static(tmp_path, zk_settings, [entry])
    assert config.providers["lab"].pools["main"].max_servers == 2
    # max-servers 0 disables the pool, as upstream: requests are declined.
    entry["pools"][0]["max-servers"] = 0
    run_launcher(write_static(tmp_path, zk_settings, [entry]))
    req = zuul_request(store, ["metal"])
    assert wait_for(lambda: finished(store, req.id), 20, what="the decline").state == "failed"


def test_a_static_pool_at_capacity_deletes_no_unused_node(
        tmp_path, zk_settings, store, run_launcher, hosts):  # noqa: F811
    a, b = hosts(), hosts()
    launcher = run_launcher(write_static(tmp_path, zk_settings, [static_entry(
        host_node(a), host_node(b, labels=["gpu"]))], labels=("metal", "gpu")))
    wait_for(lambda: len(ready_nodes(store)) == 2, 20, what="both hosts in service")
    gpu = next(n for n in ready_nodes(store) if n.connection_port == b.port)
    first = zuul_request(store, ["metal"])
    assert wait_for(lambda: finished(store, first.id), 20, what="metal").state == "fulfilled"
    # The only metal slot is taken: the next request waits, and the unused
    # gpu node stays (deleting it would free nothing).
    waiting = zuul_request(store, ["metal"])
    worker = launcher.pool_workers["lab-main"]
    wait_for(lambda: worker.handler.paused, 20, what="the pool paused for the request")
    passes = []
    wait_for(lambda: passes.append(worker.last_report) or len(set(map(id, passes))) > 4, 20,
             what="a few passes while the request waits")
    assert store.get_node(gpu.id).state == "ready"
    assert not finished(store, waiting.id)
