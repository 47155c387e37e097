#!/usr/bin/env python3
"""Measure the launcher against the simulated cloud, scenario by scenario.

    .venv/bin/python tools/benchmark.py [--scenario NAME ...] [--requests N] [--json]

Each scenario starts a fresh nodepool-fakecloud and a real launcher
(openstacksdk over HTTP, a real ZooKeeper started by tools/zookeeper.py),
submits Zuul-like node requests, uses and returns every node it gets as
Zuul's executor would, drains, and prints:

* requests fulfilled / failed, quota 403s at the cloud;
* API calls per fulfilled node, by call type (what the cloud counted);
* request latency (submitted -> fulfilled) p50 / p95;
* servers left in the cloud after draining (leaks).

Scenarios:
  contention   instance quota 4, 24 requests, slow boots, slower deletes
  hang         the API hangs for 8 s in the middle of the run
  many-ports   4 ports per server and floating IPs on (auto-floating-ip)
  error-boots  30% of boots end in ERROR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nodepool.config import load_config  # noqa: E402
from nodepool.fakecloud import FakeCloud  # noqa: E402
from nodepool.launcher.launcher import Launcher  # noqa: E402
from nodepool.zk.client import (ZooKeeperSettings, connect, disconnect,  # noqa: E402
                                parse_hosts)
from nodepool.zk.records import NodeRequest  # noqa: E402
from nodepool.zk.store import ZooKeeperStore  # noqa: E402

SCENARIOS = {
    "contention": {
        "cloud": {"limits": {"instances": 4, "cores": 200, "ram": 1000000},
                  "servers": {"boot_seconds": [1.0, 3.0], "delete_seconds": [2.0, 4.0]}},
        "requests": 24, "pool": {"auto-floating-ip": False},
    },
    "hang": {
        "cloud": {"limits": {"instances": 6, "cores": 200, "ram": 1000000},
                  "servers": {"boot_seconds": [0.5, 1.5], "delete_seconds": [0.5, 1.5]}},
        "requests": 16, "pool": {"auto-floating-ip": False},
        "hang_at": 3.0, "hang_for": 8.0,
    },
    "many-ports": {
        "cloud": {"limits": {"instances": 8, "cores": 200, "ram": 1000000},
                  "servers": {"boot_seconds": [0.5, 1.5], "delete_seconds": [0.5, 1.5],
                              "ports_per_server": 4}},
        "requests": 16, "pool": {"auto-floating-ip": True},
    },
    "error-boots": {
        "cloud": {"limits": {"instances": 6, "cores": 200, "ram": 1000000},
                  "servers": {"boot_seconds": [0.5, 1.5], "delete_seconds": [0.5, 1.5],
                              "error_boot_share": 0.3}},
        "requests": 16, "pool": {"auto-floating-ip": False},
    },
}


def start_zookeeper(state: str) -> ZooKeeperSettings:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                          "start", "--dir", state], capture_output=True, text=True,
                         check=True)
    env = dict(pair.split("=", 1) for pair in out.stdout.split())
    return ZooKeeperSettings(parse_hosts(env["NODEPOOL_ZK_HOSTS"]))


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def run_scenario(name: str, spec: dict, zk: ZooKeeperSettings, workdir: str,
                 n_requests: int | None) -> dict:
    n = n_requests or spec["requests"]
    cloud_cfg = {"seed": 7, "servers": spec["cloud"]["servers"],
                 "projects": [{"name": "ci",
                               "users": [{"name": "nodepool", "password": "pw"}],
                               "limits": spec["cloud"]["limits"]}]}
    cloud = FakeCloud(cloud_cfg).start()
    clouds = cloud.write_clouds_yaml(os.path.join(workdir, f"{name}-clouds.yaml"),
                                     api_timeout=2)
    chroot = f"/benchmark-{name}-{uuid.uuid4().hex[:6]}"
    server = zk.servers[0]
    pool = {"name": "main", "max-servers": 50, "host-key-checking": False,
            "labels": [{"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}]}
    pool.update(spec["pool"])
    config_data = {
        "zookeeper-servers": [{"host": server.host, "port": server.port, "chroot": chroot}],
        "webapp": {"port": 0},
        "labels": [{"name": "small"}],
        "providers": [{"name": "fake", "cloud": "fakecloud", "rate": 0.05,
                       "launch-retries": 3,
                       "cloud-images": [{"name": "img", "image-name": "cirros"}],
                       "pools": [pool]}]}
    path = os.path.join(workdir, f"{name}-nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config_data, f)
    config, _ = load_config(path, clouds)
    launcher = Launcher(config)
    launcher.start()
    client = connect(config.zookeeper)
    store = ZooKeeperStore(client)
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    fulfilled = failed = 0
    hang_timer = None
    if "hang_at" in spec:
        def hang():
            cloud.set_faults(hang=True)
            time.sleep(spec["hang_for"])
            cloud.set_faults(hang=False)
        hang_timer = threading.Timer(spec["hang_at"], hang)
        hang_timer.start()
    t0 = time.monotonic()
    for i in range(n):
        req = NodeRequest(state="requested", node_types=["small"], requestor="benchmark",
                          requestor_data={"i": i}, event_id=f"bench-{i}",
                          tenant_name="bench")
        created = store.create_request(req, 200)
        submitted[created.id] = time.monotonic()
    deadline = t0 + 600
    while submitted and time.monotonic() < deadline:
        for rid in list(submitted):
            req = store.get_request(rid)
            if req is None or req.state not in ("fulfilled", "failed"):
                continue
            if req.state == "fulfilled":
                fulfilled += 1
                latencies.append(time.monotonic() - submitted.pop(rid))
                for node_id in req.nodes:
                    got = store.lock_and_read_node(node_id, timeout=30)
                    if got is None:
                        continue
                    node, lock = got
                    node.state = "used"
                    store.store_node(node, lock)
                    lock.release()
            else:
                failed += 1
                submitted.pop(rid)
            client.delete(f"/nodepool/requests/{rid}")
        time.sleep(0.05)
    unanswered = len(submitted)
    drain_deadline = time.monotonic() + 120

    def network_in_use() -> dict[str, int]:
        in_use = next(iter(cloud.usage().values()))["in_use"]
        return {"floating_ips": in_use["floating_ips"], "ports": in_use["ports"]}

    # Floating IPs go after their server: wait for them too.
    while time.monotonic() < drain_deadline and (cloud.servers() or store.list_nodes()
                                                 or any(network_in_use().values())):
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    if hang_timer:
        hang_timer.join()
    counters = cloud.counters()
    leaked = len(cloud.servers())
    leaked_network = network_in_use()
    launcher.stop(wait=10)
    disconnect(client)
    cloud.stop()
    calls = {}
    for route, by_status in counters.get("requests", {}).items():
        total = sum(by_status.values()) if isinstance(by_status, dict) else by_status
        calls[route] = total
    total_calls = sum(calls.values())
    per_node = {k: round(v / fulfilled, 2) for k, v in sorted(calls.items())} if fulfilled \
        else {}
    return {
        "scenario": name, "requests": n, "fulfilled": fulfilled, "failed": failed,
        "unanswered": unanswered, "quota_403": counters.get("quota_403", 0),
        "api_calls_total": total_calls,
        "api_calls_per_fulfilled_node": round(total_calls / fulfilled, 2) if fulfilled else None,
        "api_calls_per_node_by_route": per_node,
        "latency_p50_s": round(percentile(latencies, 50), 2) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 2) if latencies else None,
        "leaked_servers": leaked, "leaked_floating_ips": leaked_network["floating_ips"],
        "leaked_ports": leaked_network["ports"], "elapsed_s": round(elapsed, 1),
        "peak_instances": cloud.peak_usage().get("instances"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                   help="run only these (repeatable); default: all")
    p.add_argument("--requests", type=int, help="requests per scenario (default: per scenario)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="launcher logs to stderr")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(message)s")
    names = args.scenario or list(SCENARIOS)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        zk_state = os.path.join(workdir, "zk")
        zk = start_zookeeper(zk_state)
        try:
            for name in names:
                results.append(run_scenario(name, SCENARIOS[name], zk, workdir, args.requests))
        finally:
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                            "stop", "--dir", zk_state], capture_output=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return 0
    print(f"machine: {machine['cpus']} CPUs, Python {machine['python']}, "
          f"{machine['platform']}")
    for r in results:
        print(f"\n== {r['scenario']} ==")
        for key in ("requests", "fulfilled", "failed", "unanswered", "quota_403",
                    "api_calls_total", "api_calls_per_fulfilled_node", "latency_p50_s",
                    "latency_p95_s", "leaked_servers", "leaked_floating_ips", "leaked_ports",
                    "peak_instances", "elapsed_s"):
            print(f"  {key:30} {r[key]}")
        print("  API calls per fulfilled node, by route:")
        for route, v in r["api_calls_per_node_by_route"].items():
            print(f"    {route:55} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
