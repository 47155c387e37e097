"""The benchmark's reference column: the nodepool.yaml it generates for both
launchers, the way it finds them, and the side-by-side table.

The generated file must be valid for upstream Nodepool 11 (which the
benchmark runs from its own venv) and for this launcher.  The shape is
checked here against the keys upstream's schema accepts; our loader reads
the file for real; and when ``.upstream-venv`` exists (made by
tools/install-upstream.sh, never by the tests) upstream's own
``config-validate`` reads it too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.config.zookeeper import ZooKeeperServer, ZooKeeperSettings, ZooKeeperTLS
from nodepool.fakecloud.clouds_yaml import clouds_yaml_data, dump_clouds_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_VENV = os.path.join(ROOT, ".upstream-venv")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "benchmark_under_test", os.path.join(ROOT, "tools", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = _load_benchmark()

# What upstream Nodepool 11's schema accepts at each level, for the keys the
# benchmark writes (facts read from its configuration reference).
UPSTREAM_TOP = {"webapp", "zookeeper-servers", "zookeeper-tls", "zookeeper-timeout",
                "providers", "labels", "diskimages", "max-hold-age",
                "tenant-resource-limits", "elements-dir", "images-dir",
                "build-log-dir", "build-log-retention"}
UPSTREAM_PROVIDER = {"name", "driver", "cloud", "region-name", "rate", "boot-timeout",
                     "launch-timeout", "launch-retries", "pools", "cloud-images",
                     "diskimages", "max-concurrency", "hostname-format",
                     "clean-floating-ips", "port-cleanup-interval", "nodepool-id",
                     "image-name-format", "post-upload-hook", "image-upload-timeout",
                     "priority", "abstract", "parent"}
UPSTREAM_POOL = {"name", "max-servers", "max-cores", "max-ram", "max-volumes",
                 "max-volume-gb", "networks", "auto-floating-ip", "host-key-checking",
                 "ignore-provider-quota", "labels", "availability-zones",
                 "security-groups", "node-attributes", "priority"}
UPSTREAM_POOL_LABEL = {"name", "cloud-image", "diskimage", "min-ram", "flavor-name",
                       "key-name", "console-log", "boot-from-volume", "volume-size",
                       "instance-properties", "dynamic-instance-properties", "userdata",
                       "networks", "host-key-checking"}
UPSTREAM_CLOUD_IMAGE = {"name", "config-drive", "connection-type", "connection-port",
                        "image-id", "image-name", "username", "python-path", "shell-type"}


def _tls_settings(tmp_path) -> ZooKeeperSettings:
    files = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        path = tmp_path / name
        path.write_text("not a real certificate; only its existence is checked\n")
        files[name] = str(path)
    return ZooKeeperSettings((ZooKeeperServer("127.0.0.1", 2281),),
                             ZooKeeperTLS(ca=files["ca.pem"], cert=files["client.pem"],
                                          key=files["client.key"]))


def _write(tmp_path, name: str, data: dict) -> tuple[str, str]:
    path = tmp_path / f"{name}-nodepool.yaml"
    path.write_text(yaml.safe_dump(data))
    clouds = dump_clouds_yaml(
        clouds_yaml_data("http://127.0.0.1:1/identity/v3", "RegionOne", "fakecloud",
                         "nodepool", "pw", "ci", api_timeout=10), tmp_path / "clouds.yaml")
    return str(path), clouds


def _job_configs(tmp_path):
    zk = _tls_settings(tmp_path)
    for name, spec in sorted(benchmark.JOB_SCENARIOS.items()):
        yield name, spec, benchmark.launcher_config(zk, f"/benchmark-{name}",
                                                    spec["provider"], spec["pool"])


def test_generated_config_has_upstreams_shape(tmp_path):
    for name, spec, data in _job_configs(tmp_path):
        assert set(data) <= UPSTREAM_TOP, name
        # Upstream only speaks TLS to ZooKeeper.
        assert set(data["zookeeper-tls"]) == {"ca", "cert", "key"}, name
        assert data["zookeeper-servers"] == [{"host": "127.0.0.1", "port": 2281,
                                              "chroot": f"/benchmark-{name}"}]
        top_labels = {label["name"] for label in data["labels"]}
        [provider] = data["providers"]
        assert set(provider) <= UPSTREAM_PROVIDER, (name, set(provider) - UPSTREAM_PROVIDER)
        # Upstream swaps in its in-memory test driver for a provider named fake*.
        assert not provider["name"].startswith("fake"), name
        assert provider.get("driver", "openstack") == "openstack"
        images = {img["name"] for img in provider["cloud-images"]}
        for img in provider["cloud-images"]:
            assert set(img) <= UPSTREAM_CLOUD_IMAGE, name
            assert "image-name" in img or "image-id" in img
        for pool in provider["pools"]:
            assert set(pool) <= UPSTREAM_POOL, (name, set(pool) - UPSTREAM_POOL)
            for label in pool["labels"]:
                assert set(label) <= UPSTREAM_POOL_LABEL, name
                assert label["name"] in top_labels, name
                assert label["cloud-image"] in images, name
                assert "flavor-name" in label or "min-ram" in label
        # Upstream's defaults unless the scenario says otherwise.
        assert provider.get("rate") == spec["provider"].get("rate"), name


def test_upstream_default_scenarios_have_no_rate_key(tmp_path):
    configs = {name: data for name, _, data in _job_configs(tmp_path)}
    for name in ("jobs-provider-net", "jobs-quota-bound", "jobs-hang",
                 "jobs-three-launchers"):
        assert "rate" not in configs[name]["providers"][0], name
    assert configs["jobs-rate-fip"]["providers"][0]["rate"] == 0.05
    assert benchmark.JOB_SCENARIOS["jobs-three-launchers"]["launchers"] == 3
    assert benchmark.JOB_SCENARIOS["jobs-three-launchers"]["cloud"]["limits"]["instances"] == 10
    assert benchmark.JOB_SCENARIOS["jobs-three-launchers"]["jobs"] == 25


def test_our_loader_reads_the_generated_config(tmp_path):
    for name, _, data in _job_configs(tmp_path):
        path, clouds = _write(tmp_path, name, data)
        config, problems = load_config(path, clouds, drivers=registry.drivers())
        errors = [p for p in problems if p.severity == "error"]
        assert config is not None and not errors, (name, [str(p) for p in problems])
        assert config.zookeeper.tls is not None
        assert config.zookeeper.chroot == f"/benchmark-{name}"
        [provider] = config.providers.values()
        assert provider.name == benchmark.PROVIDER_NAME


@pytest.mark.skipif(not os.path.exists(os.path.join(UPSTREAM_VENV, "bin", "nodepool")),
                    reason="upstream Nodepool is not installed (tools/install-upstream.sh)")
def test_upstreams_validator_accepts_the_generated_config(tmp_path):
    # The scenarios' files differ only in the rate key and the chroot: one
    # with and one without, as each validation starts upstream (seconds).
    for name, _, data in _job_configs(tmp_path):
        if name not in ("jobs-provider-net", "jobs-rate-fip"):
            continue
        path, clouds = _write(tmp_path, name, data)
        out = subprocess.run([os.path.join(UPSTREAM_VENV, "bin", "nodepool"), "-c", path,
                              "config-validate"], capture_output=True, text=True,
                             timeout=120, cwd=str(tmp_path),
                             env=dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds))
        assert out.returncode == 0, (name, out.stdout[-2000:], out.stderr[-2000:])


def test_launcher_commands(tmp_path):
    ours = benchmark.launcher_command("ours", "/x/nodepool.yaml", str(tmp_path))
    assert ours[0] == os.path.join(os.path.dirname(sys.executable), "nodepool-launcher")
    assert ours[1:] == ["-f", "-c", "/x/nodepool.yaml", "--no-webapp"]
    with pytest.raises(SystemExit, match="tools/install-upstream.sh"):
        benchmark.launcher_command("upstream", "/x/nodepool.yaml", str(tmp_path / "none"))
    fake_bin = tmp_path / "venv" / "bin"
    fake_bin.mkdir(parents=True)
    exe = fake_bin / "nodepool-launcher"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert benchmark.launcher_command("upstream", "/x/n.yaml", str(tmp_path / "venv")) == \
        [str(exe), "-f", "-c", "/x/n.yaml", "--no-webapp"]


def test_comparison_puts_both_launchers_side_by_side():
    results = [
        {"scenario": "jobs-quota-bound", "launcher": "upstream", "fulfilled_per_minute": 10.0,
         "quota_403": 2},
        {"scenario": "jobs-quota-bound", "launcher": "ours", "fulfilled_per_minute": 15.0,
         "quota_403": 0},
        {"scenario": "contention", "fulfilled": 24},   # batch scenarios stay out
    ]
    table = benchmark.compare(results)
    assert list(table) == ["jobs-quota-bound"]
    rows = table["jobs-quota-bound"]
    assert rows["fulfilled_per_minute"] == {"upstream": 10.0, "ours": 15.0,
                                            "target": ">= 12.5"}
    assert rows["quota_403"] == {"upstream": 2, "ours": 0, "target": "0"}
    assert rows["latency_p50_s"] == {"upstream": None, "ours": None, "target": ""}


def test_freed_quota_figures_follow_each_freed_slot(tmp_path):
    # Limit 2, full at the start.  Server a goes at 10.0, a list requested at
    # 10.5 is answered at 10.7, the create that fills the slot ends at 11.0:
    # lag 1.0 = seen 0.7 + reused 0.3 (the refused create changes nothing).
    # Then c goes at 19.0 (from the limit) and b at 20.0 (already below it);
    # the create at 22.0 leaves the count one short and the next one is
    # outside the window, so the quota is never full again: no second lag.
    requests = [
        {"route": benchmark.LIST_ROUTE, "status": 200, "started": 10.5, "finished": 10.7},
        {"route": benchmark.CREATE_ROUTE, "status": 202, "started": 10.9, "finished": 11.0},
        {"route": benchmark.CREATE_ROUTE, "status": 403, "started": 12.0, "finished": 12.1},
        {"route": benchmark.LIST_ROUTE, "status": 200, "started": 21.0, "finished": 21.2},
        {"route": benchmark.CREATE_ROUTE, "status": 202, "started": 21.9, "finished": 22.0},
        {"route": benchmark.CREATE_ROUTE, "status": 202, "started": 99.0, "finished": 99.1},
    ]
    transitions = [{"event": "active", "server": "x", "at": 9.0},
                   {"event": "gone", "server": "a", "at": 10.0},
                   {"event": "gone", "server": "c", "at": 19.0},
                   {"event": "gone", "server": "b", "at": 20.0}]
    req_path, tr_path = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    req_path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    tr_path.write_text("".join(json.dumps(t) + "\n" for t in transitions))
    got = benchmark.freed_quota_figures(str(req_path), str(tr_path), 0.0, 50.0,
                                        limit=2, initial=2)
    assert got["freed_slots"] == 1
    assert got["reuse_lag_p50_s"] == 1.0
    assert got["freed_seen_p50_s"] == 0.7
    assert got["seen_to_reused_p50_s"] == 0.3
    assert benchmark.freed_quota_figures(None, str(tr_path), 0.0, 50.0, 2, 2) == {}


def test_the_scale_scenario_is_reached_through_the_job_benchmark():
    # ``tools/benchmark.py --scenario scale ...`` hands the rest of its
    # arguments to tools/benchmark_scale.py (here: its help).
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"),
                          "--scenario", "scale", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "benchmark_scale.py" in out and "--hold-min" in out
