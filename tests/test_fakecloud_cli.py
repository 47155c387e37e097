"""``nodepool-fakecloud`` as a separate process, as the quick start runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from openstack import config as os_config
from openstack import connection

from nodepool.fakecloud.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "nodepool.fakecloud.cli"]


def test_runs_prints_ready_and_stops_on_sigterm(tmp_path):
    clouds = tmp_path / "clouds.yaml"
    proc = subprocess.Popen(
        CMD + ["--config", os.path.join(ROOT, "etc", "fakecloud.yaml"), "--port", "0",
               "--boot-seconds", "0", "--limit", "instances=1",
               "--write-clouds-yaml", str(clouds), "--api-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # blocks until READY (or the process dies)
        m = re.fullmatch(r"READY url=(http://127\.0\.0\.1:\d+) auth_url=(\S+) "
                         r"admin_url=(\S+)\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert m.group(2) == f"{m.group(1)}/identity/v3"
        region = os_config.OpenStackConfig(config_files=[str(clouds)], vendor_files=[],
                                           secure_files=[], load_envvars=False
                                           ).get_one("fakecloud")
        conn = connection.Connection(config=region)
        limits = conn.get_compute_limits()
        assert limits.max_total_instances == 1  # --limit overrides the file's 10
        assert conn.get_image("ubuntu-22.04") is not None  # from etc/fakecloud.yaml
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_bad_configuration_exits_2_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults:\n  error_500_rate: 3\n")
    out = subprocess.run(CMD + ["--config", str(bad), "--check-config"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert f"{bad}: faults.error_500_rate: must be a number between 0 and 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_exits_1(fakecloud):
    out = subprocess.run(CMD + ["--port", str(fakecloud.port)], capture_output=True,
                         text=True, cwd=ROOT, timeout=20)
    assert out.returncode == 1 and "cannot listen" in out.stderr


def test_every_option_has_help():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
