"""etc/logging.yaml and etc/nodepool-launcher.service: they load and fit the launcher."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from nodepool.cmd import launcher as launcher_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGGING = os.path.join(ROOT, "etc", "logging.yaml")
UNIT = os.path.join(ROOT, "etc", "nodepool-launcher.service")
BIN = os.path.dirname(sys.executable)

EMIT = """
import logging, sys
from nodepool.cmd.launcher import log, setup_logging
setup_logging(sys.argv[1])
log.info("cmd-info")            # a logger created before the file was read
logging.getLogger("nodepool.launcher").info("launcher-info")
logging.getLogger("nodepool.launcher").debug("launcher-debug")
logging.getLogger("kazoo.client").info("kazoo-info")
logging.getLogger("kazoo.client").warning("kazoo-warning")
logging.getLogger("keystoneauth.session").info("keystoneauth-info")
logging.getLogger("keystoneauth.session").error("keystoneauth-error")
print("stdout-stays-clean")
"""


def test_logging_yaml_is_info_to_stderr_with_kazoo_and_keystoneauth_at_warning():
    out = subprocess.run([sys.executable, "-c", EMIT, LOGGING], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "stdout-stays-clean\n"
    lines = out.stderr.splitlines()
    assert "INFO nodepool.launcher.cmd: cmd-info" in lines
    assert "INFO nodepool.launcher: launcher-info" in lines
    assert "WARNING kazoo.client: kazoo-warning" in lines
    assert "ERROR keystoneauth.session: keystoneauth-error" in lines
    for hidden in ("launcher-debug", "kazoo-info", "keystoneauth-info"):
        assert hidden not in out.stderr


def test_nodepool_launcher_logs_through_etc_logging_yaml(tmp_path):
    # A ZooKeeper port nobody listens on: the launcher logs why it cannot
    # start, through the logging configuration, and exits 1.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "nodepool.yaml"
    config.write_text(yaml.safe_dump({
        "zookeeper-servers": [{"host": "127.0.0.1", "port": port}],
        # The status API binds before ZooKeeper is tried: stopping it after
        # the failed start must not hang.
        "webapp": {"port": 0},
        "zookeeper-timeout": 1.0, "labels": [], "providers": []}))
    out = subprocess.run([os.path.join(BIN, "nodepool-launcher"), "-f", "-c", str(config),
                          "-l", LOGGING], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert any(line.startswith("ERROR nodepool.launcher.cmd: cannot start: could not "
                               "connect to ZooKeeper") for line in out.stderr.splitlines()), \
        out.stderr
    assert "Traceback" not in out.stderr


def read_unit() -> configparser.ConfigParser:
    with open(UNIT) as f:
        text = f.read().replace("\\\n", " ")
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text, source=UNIT)
    return unit


def test_unit_runs_the_launcher_in_the_foreground_with_a_restart_policy():
    service = read_unit()["Service"]
    assert service["Type"] == "simple"
    argv = service["ExecStart"].split()
    assert argv[0].endswith("/nodepool-launcher")
    # The options are the launcher's own.
    args = launcher_cmd.build_parser().parse_args(argv[1:])
    assert args.foreground and not args.debug
    assert args.config == "/etc/nodepool/nodepool.yaml"
    assert args.clouds == "/etc/openstack/clouds.yaml"
    assert args.logconfig == "/etc/nodepool/logging.yaml"
    assert service["Restart"] == "on-failure"
    assert float(service["RestartSec"]) >= 1
    assert service["User"] == "nodepool"
    # Stopping: SIGTERM to the launcher, and more time than its graceful stop.
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > launcher_cmd.STOP_TIMEOUT
    assert service["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]


def test_unit_hardening_leaves_only_network_and_own_directories():
    service = read_unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
                       "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == value, key
    assert set(service["ReadWritePaths"].split()) == {"/var/lib/nodepool", "/var/log/nodepool"}
    assert service["StateDirectory"] == "nodepool" and service["LogsDirectory"] == "nodepool"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6",
                                                              "AF_UNIX"}


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze is not installed; the unit's keys are checked "
                           "by the tests above")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify insists that ExecStart exists: point it at this venv's launcher.
    with open(UNIT) as f:
        text = f.read().replace("/opt/nodepool/bin/nodepool-launcher",
                                os.path.join(BIN, "nodepool-launcher"))
    unit = tmp_path / "nodepool-launcher.service"
    unit.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines()
            if "nodepool-launcher" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr
