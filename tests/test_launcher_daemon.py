"""``nodepool-launcher`` as a process (upstream's flags), serving Zuul's own client on the
fakecloud."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.fixtures.fakecloud import wait_for
from tests.test_request_zuul_e2e import HAVE_ZUUL, SYSTEM_ID, zuul_side  # noqa: F401

if HAVE_ZUUL:
    import zuul.model

BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(
    not HAVE_ZUUL, reason="zuul is not importable; run tools/install-zuul-client.sh "
                          ".venv/bin/python to install Zuul's client classes")


def write_files(tmp_path, cloud, zk_settings):
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    server = zk_settings.servers[0]
    data = {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                   "chroot": zk_settings.chroot}],
            "webapp": {"port": 0},
            "labels": [{"name": "small"}],
            "providers": [{"name": "fake", "cloud": "fakecloud", "rate": 0.01,
                           "cloud-images": [{"name": "img", "image-name": "cirros"}],
                           "pools": [{"name": "main", "max-servers": 4,
                                      "host-key-checking": False,
                                      "auto-floating-ip": False,
                                      "labels": [{"name": "small", "cloud-image": "img",
                                                  "flavor-name": "m1.small"}]}]}]}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path), str(clouds)


@contextlib.contextmanager
def foreground_launcher(config, clouds, log_path, *extra):
    """``nodepool-launcher -f`` appending to ``log_path``; killed if still running."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen([f"{BIN}/nodepool-launcher", "-f", "-c", config,
                                 "--clouds", clouds, *extra], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def launcher_process(tmp_path, make_fakecloud, zk_settings):
    cloud = make_fakecloud()
    config, clouds = write_files(tmp_path, cloud, zk_settings)
    with foreground_launcher(config, clouds, tmp_path / "launcher.log") as proc:
        yield proc, cloud, config, tmp_path / "launcher.log"


def nodepool_cli(config, *args):
    out = subprocess.run([f"{BIN}/nodepool", "-c", config, *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_zuul_requests_uses_and_returns_nodes_through_the_daemon(zk, launcher_process,
                                                                  zuul_side):  # noqa: F811
    proc, cloud, config, log_path = launcher_process
    wait_for(lambda: zuul_side.nodepool.getRegisteredLaunchers(), 30,
             what="the launcher's pool registration")
    zreq = zuul_side.submit(["small", "small"])
    wait_for(lambda: zuul_side.completed(zreq.id), 60, what="Zuul's completion event")
    fetched = zuul_side.nodepool.getNodeRequest(zreq.id)
    assert fetched.state == "fulfilled" and len(fetched.nodes) == 2

    # The CLI shows what Zuul's client wrote.
    requests = nodepool_cli(config, "request-list", "--json")
    assert [(r["id"], r["requestor"], r["state"]) for r in requests] == \
        [(zreq.id, SYSTEM_ID, "fulfilled")]
    listed = {r["id"]: r for r in nodepool_cli(config, "list", "--json")}
    assert set(fetched.nodes) <= set(listed)

    nodes = [zuul.model.Node([f"n{i}"], "small") for i in range(2)]
    for node, node_id in zip(nodes, fetched.nodes, strict=True):
        zuul_side.nodepool.updateNode(node, node_id)
        assert node.allocated_to == fetched.id and node.interface_ip
        zuul_side.nodepool.lockNode(node, timeout=30)
    assert zuul_side.nodepool.deleteNodeRequest(fetched.id)
    for node in nodes:
        node.state = "in-use"
        node.user_data = {"zuul_system": SYSTEM_ID, "project_name": "example.org/p"}
        zuul_side.nodepool.storeNode(node)
    listed = {r["id"]: r for r in nodepool_cli(config, "list", "--json")}
    assert {listed[n.id]["state"] for n in nodes} == {"in-use"}
    assert {listed[n.id]["locked"] for n in nodes} == {"locked"}
    for node in nodes:
        node.state = "used"
        zuul_side.nodepool.storeNode(node)
        zuul_side.nodepool.unlockNode(node)
    wait_for(lambda: not nodepool_cli(config, "list", "--json"), 60, what="nodes reaped")
    wait_for(lambda: not cloud.servers(), 30, what="servers deleted")
    assert cloud.counters()["quota_403"] == 0

    # SIGUSR2 dumps the threads and the in-flight state to the log.
    proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "--- launcher state ---" in log_path.read_text(), 20,
             what="the state dump")
    # SIGTERM stops it cleanly, and its pool registration goes away.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    wait_for(lambda: not zuul_side.nodepool.getRegisteredLaunchers(), 30,
             what="the pool to unregister")
    assert "Traceback" not in log_path.read_text()


def test_daemon_refuses_to_start_twice_and_replaces_a_stale_pidfile(tmp_path, make_fakecloud,
                                                                     zk_settings):
    cloud = make_fakecloud()
    config, clouds = write_files(tmp_path, cloud, zk_settings)
    pidfile = tmp_path / "run" / "launcher.pid"
    pidfile.parent.mkdir()
    # A stale pid file from a process that no longer exists.
    pidfile.write_text("999999\n")
    base = [f"{BIN}/nodepool-launcher", "-c", config, "--clouds", clouds,
            "-p", str(pidfile)]
    # A logging configuration that is not there: refused before detaching.
    missing = subprocess.run(base + ["-l", str(tmp_path / "nope.yaml")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and "nope.yaml: logging configuration file not found" \
        in missing.stderr
    assert pidfile.read_text() == "999999\n"
    log_file = tmp_path / "launcher.log"
    logconfig = tmp_path / "logging.yaml"
    logconfig.write_text(yaml.safe_dump({
        "version": 1,
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file)}},
        "root": {"level": "INFO", "handlers": ["file"]}}))
    base += ["-l", str(logconfig)]
    first = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "stale pid file" in first.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()
                       and pidfile.read_text().strip() != "999999"
                       and pidfile.read_text().strip(), 30, what="the daemon's pid file"))
    try:
        wait_for(lambda: log_file.exists() and "started" in log_file.read_text(), 30,
                 what="the daemon's log")
        second = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"already running (pid {pid}" in second.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 60, what="the daemon to exit")
    wait_for(lambda: not pidfile.exists(), 10, what="the pid file to be removed")


def new_text(path, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def test_detached_without_l_logs_to_upstreams_file_and_sigusr1_stops_it(
        tmp_path, make_fakecloud, zk_settings):
    from nodepool.cmd.launcher import DEFAULT_LOG_FILE

    cloud = make_fakecloud()
    config, clouds = write_files(tmp_path, cloud, zk_settings)
    pidfile = tmp_path / "nodepool.pid"
    os.makedirs(os.path.dirname(DEFAULT_LOG_FILE), exist_ok=True)
    offset = os.path.getsize(DEFAULT_LOG_FILE) if os.path.exists(DEFAULT_LOG_FILE) else 0
    out = subprocess.run([f"{BIN}/nodepool-launcher", "-c", config, "--clouds", clouds,
                          "-p", str(pidfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30,
                       what="the daemon's pid file"))
    try:
        wait_for(lambda: "INFO nodepool.launcher: launcher" in
                 new_text(DEFAULT_LOG_FILE, offset), 30, what=f"the log in {DEFAULT_LOG_FILE}")
    finally:
        # Upstream's SIGUSR1: a graceful stop, not death by the default action.
        os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 60, what="the daemon to exit")
    text = new_text(DEFAULT_LOG_FILE, offset)
    assert "signal SIGUSR1: stopping" in text and "launcher stopped" in text
    assert "Traceback" not in text
    # Not readable by every local user.
    assert os.stat(DEFAULT_LOG_FILE).st_mode & 0o007 == 0
    wait_for(lambda: not pidfile.exists(), 10, what="the pid file to be removed")


def test_the_detached_log_is_created_and_kept_private(tmp_path, monkeypatch):
    from nodepool.cmd import launcher as cmd

    log_file = tmp_path / "log" / "nodepool.log"
    monkeypatch.setattr(cmd, "DEFAULT_LOG_FILE", str(log_file))
    old = os.umask(0o022)
    try:
        assert cmd.check_log_destination(None) is None
        assert log_file.stat().st_mode & 0o777 == 0o640
        log_file.chmod(0o644)   # as an older version left it
        assert cmd.check_log_destination(None) is None
        assert log_file.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_d_logs_debug_f_does_not_and_no_webapp_serves_no_status_api(
        tmp_path, make_fakecloud, zk_settings):
    import re
    import urllib.request

    cloud = make_fakecloud()
    config, clouds = write_files(tmp_path, cloud, zk_settings)
    log_path = tmp_path / "launcher.log"
    with foreground_launcher(config, clouds, log_path, "-d") as proc:
        found = wait_for(lambda: re.search(r"status API on http://127.0.0.1:(\d+)/",
                                           log_path.read_text()), 30, what="the status API")
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/ready",
                                    timeout=10) as resp:
            assert resp.status == 200 and resp.read() == b"OK"
        wait_for(lambda: "DEBUG nodepool.webapp" in log_path.read_text(), 10,
                 what="the request logged at DEBUG")
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=60) == 0
    offset = log_path.stat().st_size
    with foreground_launcher(config, clouds, log_path, "--no-webapp") as proc:
        wait_for(lambda: "launcher stopped" not in new_text(log_path, offset) and
                 " started: " in new_text(log_path, offset), 30, what="the launcher start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    text = new_text(log_path, offset)
    assert "launcher stopped" in text and "status API on" not in text
    assert " DEBUG " not in text and "Traceback" not in text


def test_sigterm_with_builds_in_flight_stops_cleanly_and_a_restart_resumes(
        tmp_path, make_fakecloud, zk_settings):
    from nodepool.zk.client import connect, disconnect
    from nodepool.zk.records import NodeRequest
    from nodepool.zk.store import ZooKeeperStore

    # Boots far longer than the test waits: the builds are in flight at SIGTERM.
    cloud = make_fakecloud({"servers": {"boot_seconds": 3600, "delete_seconds": 0.2}})
    config, clouds = write_files(tmp_path, cloud, zk_settings)
    client = connect(zk_settings)
    store = ZooKeeperStore(client)
    store.ensure_roots()
    log_path = tmp_path / "launcher.log"
    try:
        with foreground_launcher(config, clouds, log_path) as proc:
            req = store.create_request(NodeRequest(
                state="requested", node_types=["small", "small"], requestor="zuul-test",
                tenant_name="tenant-one"), 200)
            wait_for(lambda: len(cloud.servers()) == 2, 60, what="two servers building")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        text = log_path.read_text()
        assert "launcher stopped" in text and "Traceback" not in text
        # ZooKeeper is left consistent: no lock held, nothing half-written.
        assert not [n for n in store.list_nodes() if store.node_locked(n.id)]
        assert store.get_request(req.id).state in ("requested", "pending")
        assert not client.exists(f"/nodepool/requests-lock/{req.id}") or \
            not client.get_children(f"/nodepool/requests-lock/{req.id}")
        # A restart resumes: the request is served (the cloud boots fast now)
        # and the servers of the interrupted builds do not leak.
        cloud.set_server_behaviour(boot_seconds=0.2)
        with foreground_launcher(config, clouds, log_path) as proc:
            done = wait_for(lambda: (r := store.get_request(req.id)) and
                            r.state == "fulfilled" and r, 90, what="fulfilled after restart")
            live = {n.external_id for n in store.list_nodes() if n.id in done.nodes}
            wait_for(lambda: {s["id"] for s in cloud.servers()} == live, 60,
                     what="only the fulfilled nodes' servers left")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    finally:
        disconnect(client)
