"""The nodepool CLI against real ZooKeeper: tables, JSON, operator actions, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from nodepool.zk.client import connect, disconnect
from nodepool.zk.records import Node, NodeRequest
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.zk import wait_for

BIN = os.path.dirname(sys.executable)


def write_config(tmp_path, servers, chroot, tls=None, timeout=10.0):
    data = {"zookeeper-servers": [{"host": s.host, "port": s.port, "chroot": chroot}
                                  for s in servers],
            "zookeeper-timeout": timeout,
            "labels": [{"name": "small"}],
            "providers": [{"name": "p1", "cloud": "nowhere",
                           "cloud-images": [{"name": "img"}],
                           "pools": [{"name": "main", "labels": [
                               {"name": "small", "cloud-image": "img",
                                "flavor-name": "m1.small"}]}]}]}
    if tls:
        data["zookeeper-tls"] = {"ca": tls.ca, "cert": tls.cert, "key": tls.key}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def nodepool(config, *args):
    # No clouds.yaml is needed to look at ZooKeeper.
    return subprocess.run([f"{BIN}/nodepool", "-c", config, *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def populated(zk_settings):
    client = connect(zk_settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    node = store.create_node(Node(state="ready", type=["small"], provider="p1", pool="main",
                                  external_id="srv-1", public_ipv4="203.0.113.5",
                                  hostname="small-p1-0", username="zuul"))
    req = store.create_request(NodeRequest(state="requested", node_types=["small"],
                                           requestor="zuul-sys", event_id="ev-9",
                                           requestor_data={"job_name": "tox"}), 200)
    yield store, node, req
    disconnect(client)


def header(table: str) -> list[str]:
    """The column headers of a prettytable (its second line)."""
    return [cell.strip() for cell in table.splitlines()[1].strip("|").split("|")]


def table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in table.splitlines()[3:] if line.startswith("|")]


def test_list_table_and_json(tmp_path, zk_settings, populated):
    store, node, _ = populated
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    out = nodepool(config, "list")
    assert out.returncode == 0, out.stderr
    assert header(out.stdout) == ["ID", "Provider", "Label", "Server ID", "Public IPv4",
                                  "IPv6", "State", "Age", "Locked"]
    [row] = table_rows(out.stdout)
    assert row[:5] == [node.id, "p1", "small", "srv-1", "203.0.113.5"]
    assert row[6] == "ready" and row[8] == "unlocked"
    out = nodepool(config, "list", "--detail", "--json")
    rows = json.loads(out.stdout)
    assert rows[0]["id"] == node.id and rows[0]["hostname"] == "small-p1-0"
    assert rows[0]["state"] == "ready" and rows[0]["username"] == "zuul"


def test_request_and_label_list(tmp_path, zk_settings, populated):
    _, _, req = populated
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    out = nodepool(config, "request-list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == [req.id]
    assert rows[0]["requestor"] == "zuul-sys" and rows[0]["event_id"] == "ev-9"
    out = nodepool(config, "request-list")
    assert req.id in out.stdout and "requested" in out.stdout
    out = nodepool(config, "label-list", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_delete_and_hold(tmp_path, zk_settings, populated):
    store, node, _ = populated
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    out = nodepool(config, "hold", node.id, "--reason", "debugging")
    assert out.returncode == 0, out.stderr
    held = store.get_node(node.id)
    assert held.state == "hold" and held.comment == "debugging"
    # Both print the node's row, as upstream's do.
    assert header(out.stdout)[:3] == ["ID", "Provider", "Label"]
    assert [(r[0], r[6]) for r in table_rows(out.stdout)] == [(node.id, "hold")]
    out = nodepool(config, "delete", node.id)
    assert out.returncode == 0, out.stderr
    assert store.get_node(node.id).state == "deleting"
    assert [(r[0], r[6]) for r in table_rows(out.stdout)] == [(node.id, "deleting")]


def test_erase_removes_only_that_providers_records_after_asking(tmp_path, zk_settings,
                                                                populated):
    store, node, _ = populated
    gone = [store.create_node(Node(state=state, type=["small"], provider="old-cloud",
                                   external_id=f"srv-{state}"))
            for state in ("ready", "in-use")]
    # A locked one goes too: its provider is gone, nobody will unlock it.
    lock = store.lock_node(gone[1].id, 5)
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    answered_no = subprocess.run([f"{BIN}/nodepool", "-c", config, "erase", "old-cloud"],
                                 input="n\n", capture_output=True, text=True, timeout=60)
    assert answered_no.returncode == 0 and "Nothing erased." in answered_no.stdout
    assert "2 node record(s)" in answered_no.stdout
    assert all(store.get_node(n.id) for n in gone)
    out = nodepool(config, "erase", "old-cloud", "--force")
    assert out.returncode == 0, out.stderr
    assert "Erased 2 node record(s) of provider old-cloud." in out.stdout
    lock.forget()
    assert [n.id for n in store.list_nodes()] == [node.id]
    # Erasing a provider still in nodepool.yaml warns.
    out = nodepool(config, "erase", "p1", "--force")
    assert out.returncode == 0 and "still in" in out.stderr
    assert store.list_nodes() == []


def test_unknown_ids_are_clean_errors(tmp_path, zk_settings, populated):
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    for cmd in ("delete", "hold"):
        out = nodepool(config, cmd, "9999999999")
        assert out.returncode == 1
        assert "no node with id '9999999999'" in out.stderr
        assert "Traceback" not in out.stderr
    out = nodepool(config, "info", "nope")
    assert out.returncode == 1 and "no provider 'nope'" in out.stderr


def test_info_shows_provider_nodes(tmp_path, zk_settings, populated):
    _, node, _ = populated
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    out = nodepool(config, "info", "p1", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["nodes"][0]["id"] == node.id
    assert data["pools"][0]["name"] == "main"


def test_tls_connection(tmp_path, zk_tls_settings):
    client = connect(zk_tls_settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    node = store.create_node(Node(state="ready", type=["small"], provider="p1"))
    disconnect(client)
    config = write_config(tmp_path, zk_tls_settings.servers, zk_tls_settings.chroot,
                          tls=zk_tls_settings.tls)
    out = nodepool(config, "list", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [node.id]


def test_unreachable_zookeeper_fails_within_the_timeout(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = type("Server", (), {"host": "127.0.0.1", "port": port})
    config = write_config(tmp_path, [server], "/x", timeout=2.0)
    out = nodepool(config, "list")
    assert out.returncode == 1
    assert "could not connect to ZooKeeper" in out.stderr and "within 2s" in out.stderr


def test_debug_and_logging_file_options(tmp_path, zk_settings, populated):
    config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
    out = subprocess.run([f"{BIN}/nodepool", "--debug", "-c", config, "list"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and " DEBUG kazoo" in out.stderr, out.stderr
    quiet = nodepool(config, "list")
    assert " DEBUG " not in quiet.stderr
    log_file = tmp_path / "cli.log"
    for name, text in (("logging.json", json.dumps({
            "version": 1, "handlers": {"f": {"class": "logging.FileHandler",
                                             "filename": str(log_file)}},
            "root": {"level": "DEBUG", "handlers": ["f"]}})),
            ("logging.ini", "[loggers]\nkeys=root\n[handlers]\nkeys=f\n[formatters]\nkeys=\n"
                            "[logger_root]\nlevel=DEBUG\nhandlers=f\n[handler_f]\n"
                            f"class=FileHandler\nargs=({str(log_file)!r},)\n")):
        log_file.unlink(missing_ok=True)
        path = tmp_path / name
        path.write_text(text)
        out = subprocess.run([f"{BIN}/nodepool", "-l", str(path), "-c", config, "list"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Connecting to 127.0.0.1" in log_file.read_text(), name
    out = subprocess.run([f"{BIN}/nodepool", "-l", str(tmp_path / "none.yaml"), "-c", config,
                          "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "none.yaml: logging configuration file not found" in \
        out.stderr and "Traceback" not in out.stderr


def test_list_reads_hundreds_of_nodes_and_their_locks(tmp_path, zk_settings):
    """``nodepool list`` reads every node and lock with pipelined reads: each
    row matches its znode, locked ones say so (correctness, not timed; the
    timing is in tools/benchmark_scale.py)."""
    client = connect(zk_settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    try:
        nodes = [store.create_node(Node(state=("ready", "in-use", "building")[i % 3],
                                        type=["small"], provider="p1", pool="main",
                                        external_id=f"srv-{i}"))
                 for i in range(300)]
        locks = [store.try_lock_node(n.id) for n in nodes[::7]]
        # A node znode without content (a late lock attempt) is not a row.
        client.create("/nodepool/nodes/9999999999/lock", makepath=True)
        config = write_config(tmp_path, zk_settings.servers, zk_settings.chroot)
        out = nodepool(config, "list", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert [r["id"] for r in rows] == [n.id for n in nodes]
        by_id = {r["id"]: r for r in rows}
        locked_ids = {n.id for n in nodes[::7]}
        for n in nodes:
            row = by_id[n.id]
            assert (row["state"], row["server_id"]) == (n.state, n.external_id)
            assert row["locked"] == ("locked" if n.id in locked_ids else "unlocked"), n.id
        for lock in locks:
            lock.release()
    finally:
        disconnect(client)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_list_uses_the_launchers_cache_only_for_the_same_zookeeper(tmp_path, zk_settings):
    """With a launcher of this configuration running, ``nodepool list`` takes
    its status API's node list (its cache); the rows are those read from
    ZooKeeper.  A launcher of another chroot on the port is not used."""
    from nodepool.config import load_config
    from nodepool.driver import registry
    from nodepool.launcher.launcher import Launcher

    client = connect(zk_settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    port = _free_port()
    data = yaml.safe_load(open(write_config(tmp_path, zk_settings.servers,
                                            zk_settings.chroot)))
    data["providers"] = []
    data["webapp"] = {"port": port}
    config_path = tmp_path / "with-webapp.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config, _ = load_config(str(config_path), drivers=registry.drivers())
    launcher = Launcher(config)
    launcher.start()
    try:
        nodes = [store.create_node(Node(state="ready", type=["small"], provider="p1",
                                        pool="main", external_id=f"srv-{i}"))
                 for i in range(20)]
        lock = store.try_lock_node(nodes[3].id)
        wait_for(lambda: len(launcher.store.list_nodes(cached=True)) == 20
                 and launcher.store.node_locked(nodes[3].id, cached=True),
                 message="the launcher's cache")
        from nodepool.cmd.nodepoolcmd import launcher_node_rows
        from_api = launcher_node_rows(config)
        assert from_api is not None
        out = nodepool(str(config_path), "list", "--json")
        direct = nodepool(str(config_path), "list", "--json", "--zookeeper")
        assert out.returncode == direct.returncode == 0, out.stderr + direct.stderr
        key = ("id", "state", "server_id", "locked", "provider")

        def rows(text):
            return [tuple(r[k] for k in key) for r in json.loads(text)]
        assert rows(out.stdout) == rows(direct.stdout)
        assert [r["id"] for r in from_api] == [n.id for n in nodes]
        assert {r["id"]: r["locked"] for r in from_api}[nodes[3].id] == "locked"
        # The same port, another chroot: not this launcher's data.
        data["zookeeper-servers"][0]["chroot"] = zk_settings.chroot + "-other"
        other_path = tmp_path / "other.yaml"
        other_path.write_text(yaml.safe_dump(data))
        other, _ = load_config(str(other_path), drivers=registry.drivers())
        assert launcher_node_rows(other) is None
        lock.release()
    finally:
        launcher.stop(wait=10)
        disconnect(client)
