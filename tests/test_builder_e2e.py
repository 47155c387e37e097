"""End to end with upstream's real ``nodepool-builder`` 11 beside this launcher.

The builder (from upstream's PyPI package, in its own venv: see
tests/fixtures/upstream.py) builds with ``fake-image-create``, the script
upstream ships for its own tests, and uploads to the fakecloud through
openstacksdk (Glance v2 over real HTTP).  Zuul's own client asks for a node
of a ``diskimage:`` label; the launcher boots the builder's upload.  Then
``nodepool image-build`` asks the builder for a new build, and the next node
boots the newer upload.

It takes about 40 s (the builder looks for work every 10 seconds, so a
build and its upload take 10-20 s each); the suite's other workers go on
meanwhile.  ``tools/run-tests.sh`` installs upstream first; it skips, saying
how to get upstream, where upstream is missing (and fails under
``NODEPOOL_REQUIRE_UPSTREAM=1``, as in CI).
"""

from __future__ import annotations

import configparser
import os
import signal
import subprocess

import pytest
import yaml

from nodepool.cmd import nodepoolcmd
from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.launcher.launcher import Launcher
from nodepool.zk.client import connect, disconnect
from nodepool.zk.image_reader import read_images
from tests.fixtures.fakecloud import wait_for
from tests.fixtures.upstream import upstream_bin
from tests.test_request_zuul_e2e import HAVE_ZUUL

pytestmark = [
    pytest.mark.skipif(not HAVE_ZUUL, reason="zuul is not importable; run "
                       "tools/install-zuul-client.sh .venv/bin/python"),
]

PROVIDER = "cloud-a"  # upstream turns a provider named fake* into its fake driver
IMAGE = "fake-image"
LABEL = "dib-label"
# fake-image-create checks these, as set by upstream's own test fixture
# (nodepool/tests/fixtures/node.yaml); the two directories must exist.
DIB_ENV = {
    "TMPDIR": "/opt/dib_tmp",
    "DIB_IMAGE_CACHE": "/opt/dib_cache",
    "DIB_CLOUD_IMAGES": "http://download.fedoraproject.org/pub/fedora/linux/releases/test/"
                        "21-Beta/Cloud/Images/x86_64/",
    "BASE_IMAGE_FILE": "Fedora-Cloud-Base-20141029-21_Beta.x86_64.qcow2",
}
# Two builds with uploads every 10 s, plus start-up: generous, not timed.
BUILD_DEADLINE = 120


def write_site(tmp_path, cloud, settings) -> tuple[str, str]:
    """One nodepool.yaml for both programs, as a site runs them, and its clouds.yaml."""
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=30)
    server = settings.servers[0]
    data = {
        "zookeeper-servers": [{"host": server.host, "port": server.port,
                               "chroot": settings.chroot}],
        "zookeeper-tls": {"ca": settings.tls.ca, "cert": settings.tls.cert,
                          "key": settings.tls.key},
        "webapp": {"port": 0},
        "elements-dir": str(tmp_path),
        "images-dir": str(tmp_path / "images"),
        "build-log-dir": str(tmp_path / "build-logs"),
        "labels": [{"name": LABEL}],
        "providers": [{
            "name": PROVIDER, "driver": "openstack", "cloud": "fakecloud",
            "region-name": cloud.region, "rate": 0.01,
            "diskimages": [{"name": IMAGE}],
            "pools": [{"name": "main", "max-servers": 4, "host-key-checking": False,
                       "auto-floating-ip": False,
                       "labels": [{"name": LABEL, "diskimage": IMAGE,
                                   "flavor-name": "m1.small"}]}]}],
        "diskimages": [{"name": IMAGE, "elements": ["fedora", "vm"], "release": 21,
                        # %p: the directory of upstream's builder module.
                        "dib-cmd": "%p/tests/fake-image-create", "env-vars": DIB_ENV}],
    }
    for d in ("images", "build-logs"):
        (tmp_path / d).mkdir()
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path), str(clouds)


@pytest.fixture
def dib_dirs():
    try:
        for d in (DIB_ENV["TMPDIR"], DIB_ENV["DIB_IMAGE_CACHE"]):
            os.makedirs(d, exist_ok=True)
    except PermissionError as e:
        pytest.skip(f"fake-image-create needs {e.filename} (run as root, as CI does)")


@pytest.fixture
def builder(tmp_path, dib_dirs):
    """Start upstream's nodepool-builder; stopped (by its pid) at the end."""
    program = upstream_bin("nodepool-builder")
    started = []

    def start(config: str, clouds: str) -> subprocess.Popen:
        log = open(tmp_path / "builder.log", "wb")
        proc = subprocess.Popen(
            [program, "-d", "-c", config, "-p", str(tmp_path / "builder.pid")],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
            env=dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds))
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def builder_log(tmp_path) -> str:
    path = tmp_path / "builder.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def ready_uploads(client) -> list:
    return [u for u in read_images(client).uploads
            if u.provider_name == PROVIDER and u.state == "ready"]


class ZuulClient:
    """Zuul 14's own ZooKeeperNodepool (as tests/test_request_zuul_e2e.py drives it)."""

    def __init__(self, hosts: str):
        from tests.test_request_zuul_e2e import ZuulSide
        import tests.test_request_zuul_e2e as zuul_e2e
        if not zuul_e2e._tracing_installed:
            from zuul.lib import tracing
            tracing.Tracing(configparser.ConfigParser())
            zuul_e2e._tracing_installed = True
        self.side = ZuulSide(hosts)

    def node_request(self, label: str):
        """Submit, wait for Zuul's completion callback, read it back as Zuul does."""
        req = self.side.submit([label])
        wait_for(lambda: self.side.completed(req.id), 60, what=f"request {req.id} completed")
        return self.side.nodepool.getNodeRequest(req.id)

    def node(self, node_id: str) -> dict:
        import json
        data, _ = self.side.client.client.get(f"/nodepool/nodes/{node_id}")
        return json.loads(data)


def test_launcher_boots_the_real_builders_upload_and_after_a_rebuild_the_newer_one(
        tmp_path, make_fakecloud, zk_server, zk_tls_settings, builder, capsys):
    cloud = make_fakecloud()
    config_path, clouds = write_site(tmp_path, cloud, zk_tls_settings)
    client = connect(zk_tls_settings)  # also makes the chroot the builder expects
    try:
        builder(config_path, clouds)
        # The builder builds at once and uploads through Glance v2.
        first = wait_for(lambda: ready_uploads(client), BUILD_DEADLINE,
                         what=f"a READY upload by the builder; its log:\n"
                              f"{builder_log(tmp_path)}")[0]
        assert cloud.request_count("POST /image/v2/images", 201) >= 1
        assert cloud.request_count("PUT /image/v2/images/{image_id}/file", 204) >= 1

        config, problems = load_config(config_path, clouds, drivers=registry.drivers())
        assert config is not None, [str(p) for p in problems]
        launcher = Launcher(config)
        launcher.start()
        zuul = ZuulClient(f"{zk_server['NODEPOOL_ZK_HOSTS']}{zk_tls_settings.chroot}")
        try:
            done = zuul.node_request(LABEL)
            assert done.state == "fulfilled", done
            node = zuul.node(done.nodes[0])
            assert node["image_id"] == first.path
            servers = {s["id"]: s for s in cloud.servers()}
            assert servers[node["external_id"]]["state"] == "ACTIVE"
            with cloud.state.lock:
                booted = {s.id: s.image_id for s in cloud.state.iter_servers(None)}
            assert booted[node["external_id"]] == first.external_id

            # A rebuild asked for as an operator does; the builder builds and
            # uploads it, and the next node boots from the newer upload.
            assert nodepoolcmd.main(["-c", config_path, "--clouds", clouds,
                                     "image-build", IMAGE]) == 0
            newer = wait_for(lambda: [u for u in ready_uploads(client)
                                      if u.build_id != first.build_id], BUILD_DEADLINE,
                             what=f"the rebuilt upload; builder log:\n"
                                  f"{builder_log(tmp_path)}")[0]
            assert newer.external_id != first.external_id
            done = zuul.node_request(LABEL)
            assert done.state == "fulfilled", done
            node = zuul.node(done.nodes[0])
            assert node["image_id"] == newer.path
            with cloud.state.lock:
                booted = {s.id: s.image_id for s in cloud.state.iter_servers(None)}
            assert booted[node["external_id"]] == newer.external_id

            # The operator's view of it, as upstream's CLI prints it.
            assert nodepoolcmd.main(["-c", config_path, "--clouds", clouds,
                                     "dib-image-list"]) == 0
            assert capsys.readouterr().out.count(f"| {IMAGE} ") == 2
        finally:
            zuul.side.close()
            launcher.stop(wait=10)
    finally:
        disconnect(client)
