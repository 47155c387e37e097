"""config-validate and nodepool-launcher's refusal to start, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "nodepool.yaml")
EXAMPLE_CLOUDS = os.path.join(ROOT, "etc", "clouds.yaml")
BIN = os.path.dirname(sys.executable)


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def clouds_without_api_timeout(tmp_path):
    with open(EXAMPLE_CLOUDS) as f:
        data = yaml.safe_load(f)
    del data["clouds"]["fakecloud"]["api_timeout"]
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_config_validate_example_exits_0():
    out = run(f"{BIN}/nodepool", "config-validate", "-c", EXAMPLE, "--clouds", EXAMPLE_CLOUDS)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
    # Options may also come before the subcommand, as upstream's CLI takes them.
    out = run(f"{BIN}/nodepool", "-c", EXAMPLE, "--clouds", EXAMPLE_CLOUDS, "config-validate")
    assert out.returncode == 0, out.stderr


def test_config_validate_without_api_timeout_exits_1(tmp_path):
    clouds = clouds_without_api_timeout(tmp_path)
    out = run(f"{BIN}/nodepool", "config-validate", "-c", EXAMPLE, "--clouds", clouds)
    assert out.returncode == 1
    assert f"{clouds}: clouds.fakecloud.api_timeout: is missing for cloud 'fakecloud'" \
        in out.stderr
    assert "Traceback" not in out.stderr


def test_config_validate_legacy_cache_keys(tmp_path):
    with open(EXAMPLE_CLOUDS) as f:
        data = yaml.safe_load(f)
    data["cache"] = {"class": "dogpile.cache.memory",
                     "expiration": {"server": 5, "port": 5, "floating-ip": 5}}
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run(f"{BIN}/nodepool", "config-validate", "-c", EXAMPLE, "--clouds", str(path))
    assert out.returncode == 1
    assert "cache nothing" in out.stderr and "compute.servers.detail" in out.stderr


def test_config_validate_prints_every_problem(tmp_path):
    with open(EXAMPLE) as f:
        data = yaml.safe_load(f)
    data["providers"][0]["pools"][0]["labels"][0]["flavor-nme"] = "x"
    data["labels"].append({"name": "ubuntu-jammy"})
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    clouds = clouds_without_api_timeout(tmp_path)
    out = run(f"{BIN}/nodepool", "config-validate", "-c", str(path), "--clouds", clouds)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln and "error(s) found" not in ln]
    assert len(lines) == 3, out.stderr
    assert "3 error(s) found" in out.stderr


def test_launcher_refuses_invalid_config(tmp_path):
    clouds = clouds_without_api_timeout(tmp_path)
    out = run(f"{BIN}/nodepool-launcher", "-c", EXAMPLE, "--clouds", clouds, "--validate-only")
    assert out.returncode == 1
    assert "clouds.fakecloud.api_timeout" in out.stderr
    assert "refusing to start" in out.stderr


def test_launcher_validate_only_accepts_example():
    out = run(f"{BIN}/nodepool-launcher", "-c", EXAMPLE, "--clouds", EXAMPLE_CLOUDS,
              "--validate-only")
    assert out.returncode == 0, out.stderr


def test_help_explains_options():
    for prog in ("nodepool", "nodepool-launcher"):
        out = run(f"{BIN}/{prog}", "--help")
        assert out.returncode == 0
        assert "--clouds" in out.stdout and "-c" in out.stdout
    out = run(f"{BIN}/nodepool", "config-validate", "--help")
    assert "api_timeout" in out.stdout


def test_no_command_prints_help_and_exits_1():
    # Upstream's CLI does the same; scripts test the status.
    from nodepool.cmd import nodepoolcmd
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert nodepoolcmd.main([]) == 1
    assert "COMMAND" in out.getvalue() and "config-validate" in out.getvalue()


def test_version_flags():
    from nodepool.version import __version__
    for program in ("nodepool-launcher", "nodepool"):
        out = subprocess.run([f"{BIN}/{program}", "--version"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout == f"Nodepool version: {__version__}\n"
