"""The README's quick start, run as a user runs it: ``tools/quickstart.sh``.

It brings up ZooKeeper, nodepool-fakecloud and nodepool-launcher on free
ports with a temporary state directory, the min-ready nodes show up in
``nodepool list``, ``tools/request-node.py`` gets a node and returns it (and
cancels a request nobody serves), a second start starts nothing twice, and
``stop`` ends every process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.fixtures.fakecloud import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "quickstart.sh")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
# Generous: a first run in CI also runs pip install -e . into .venv.
START_TIMEOUT = 240
MIN_READY = 2  # etc/nodepool.yaml: ubuntu-jammy min-ready 2

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not (shutil.which("java") and os.path.exists("/usr/share/java/zookeeper.jar"))
        and os.geteuid() != 0,
        reason="Debian's zookeeper package is missing and installing it needs root"),
]


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def quickstart(tmp_path):
    state = tmp_path / "quickstart"
    zk_port, cloud_port, webapp_port = free_ports(3)
    env = dict(os.environ,
               NODEPOOL_QUICKSTART_DIR=str(state),
               NODEPOOL_QUICKSTART_ZK_PORT=str(zk_port),
               NODEPOOL_QUICKSTART_CLOUD_PORT=str(cloud_port),
               NODEPOOL_QUICKSTART_WEBAPP_PORT=str(webapp_port),
               NODEPOOL_QUICKSTART_TIMEOUT="120",
               # Quick boots keep the test short; the script passes them on.
               NODEPOOL_QUICKSTART_FAKECLOUD_ARGS="--boot-seconds 1,2 --delete-seconds 0.5")
    # The tests' own ZooKeeper settings must not leak into the script.
    for key in list(env):
        if key.startswith("NODEPOOL_ZK_"):
            del env[key]

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([SCRIPT, *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    run.state = state
    run.ports = {"zk": zk_port, "cloud": cloud_port, "webapp": webapp_port}
    try:
        yield run
    finally:
        # Whatever happened, leave nothing running.
        run("stop", timeout=90)


def pids(state) -> dict[str, int]:
    out = {name: int((state / f"{name}.pid").read_text()) for name in ("fakecloud", "launcher")}
    out["zookeeper"] = json.loads((state / "zookeeper" / "state.json").read_text())["pid"]
    return out


def nodepool_list(config: str) -> list[dict]:
    out = subprocess.run([os.path.join(VENV_BIN, "nodepool"), "-c", config, "list", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_quickstart_starts_serves_a_request_and_stops(quickstart):
    first = quickstart(timeout=START_TIMEOUT)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{MIN_READY} of {MIN_READY} min-ready nodes ready" in first.stdout
    state = quickstart.state
    config = str(state / "nodepool.yaml")
    started = pids(state)
    assert all(running(pid) for pid in started.values()), started

    # The generated configuration uses this run's ports; etc/ stays untouched.
    text = (state / "nodepool.yaml").read_text()
    assert f"port: {quickstart.ports['zk']}" in text
    assert f"port: {quickstart.ports['webapp']}" in text
    assert f":{quickstart.ports['cloud']}/" in (state / "clouds.yaml").read_text()

    ready = [n for n in nodepool_list(config)
             if n["state"] == "ready" and n["label"] == ["ubuntu-jammy"]]
    assert len(ready) >= MIN_READY
    # The table the script ends with is `nodepool list`'s.
    assert ready[0]["id"] in first.stdout

    # Idempotent: a second start keeps every process and starts no other.
    second = quickstart(timeout=START_TIMEOUT)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already running" in second.stdout + second.stderr
    assert pids(state) == started

    status = quickstart("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" running ") == 3, status.stdout

    # The README's request: one node, handed back at once.
    got = subprocess.run([os.path.join(VENV_BIN, "python"),
                          os.path.join(ROOT, "tools", "request-node.py"), "-c", config,
                          "--timeout", "120", "--return", "--json", "ubuntu-jammy"],
                         capture_output=True, text=True, timeout=180)
    assert got.returncode == 0, got.stdout + got.stderr
    nodes = json.loads(got.stdout)
    assert len(nodes) == 1 and nodes[0]["state"] == "used"
    assert nodes[0]["interface_ip"] and nodes[0]["external_id"]
    # The launcher deletes the used node.
    wait_for(lambda: nodes[0]["id"] not in {n["id"] for n in nodepool_list(config)},
             60, interval=0.2, what="the used node to be deleted")

    # A request nobody serves fails; like Zuul, the helper deletes it.
    got = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "request-node.py"),
                          "-c", config, "--timeout", "60", "no-such-label"],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 1
    assert "failed (declined by:" in got.stderr
    listed = subprocess.run([os.path.join(VENV_BIN, "nodepool"), "-c", config,
                             "request-list", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert not [r for r in json.loads(listed.stdout) if r["requestor"] == "request-node.py"]

    stopped = quickstart("stop", timeout=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name, pid in started.items():
        assert not running(pid), f"{name} (pid {pid}) still runs after stop"
    assert "signal SIGTERM: stopping" in (state / "launcher.log").read_text()
    assert "launcher stopped" in (state / "launcher.log").read_text()
    after = quickstart("status")
    assert after.returncode == 3
    assert after.stdout.count("stopped") == 3, after.stdout

