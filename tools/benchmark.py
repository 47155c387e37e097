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

Scenarios (a batch of requests at once):
  contention   instance quota 4, 24 requests, slow boots, slower deletes
  hang         the API hangs for 8 s in the middle of the run
  many-ports   4 ports per server and floating IPs on (auto-floating-ip)
  error-boots  30% of boots end in ERROR

Job scenarios (shaped as the throughput targets in doc/benchmark.rst: N
concurrent jobs, each asks for a node, holds it for the job's duration,
returns it and asks again, for --minutes; upstream defaults: no ``rate``
key, auto-floating-ip on):
  jobs-provider-net   quota 40, 30 jobs of 10-30 s, boots 5-15 s, 6 ports
                      per server, servers on an external provider network
  jobs-rate-fip       the same with ``rate: 0.05`` and servers on a private
                      network that need floating IPs
  jobs-quota-bound    quota 10, 25 jobs, deletes 5-20 s
  jobs-hang           8 jobs, the API hangs for 60 s after 30 s

For job scenarios it prints requests fulfilled per minute, latency p50/p95,
API calls per fulfilled node, and (quota-bound) the share of the time the
instance quota was fully used while requests waited.

The scale scenario (10 providers, 200 to 2,000 nodes, the launcher and the
fakecloud in their own processes) is tools/benchmark_scale.py.
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


JOB_CLOUD_SERVERS = {"boot_seconds": [5.0, 15.0], "delete_seconds": [1.0, 3.0],
                     "ports_per_server": 6}
JOB_SCENARIOS = {
    "jobs-provider-net": {
        "cloud": {"limits": {"instances": 40, "cores": 400, "ram": 10000000},
                  "servers": dict(JOB_CLOUD_SERVERS, network_layout="provider")},
        "jobs": 30, "job_seconds": (10.0, 30.0), "provider": {}, "pool": {},
    },
    "jobs-rate-fip": {
        "cloud": {"limits": {"instances": 40, "cores": 400, "ram": 10000000},
                  "servers": dict(JOB_CLOUD_SERVERS, network_layout="private")},
        "jobs": 30, "job_seconds": (10.0, 30.0), "provider": {"rate": 0.05}, "pool": {},
    },
    "jobs-quota-bound": {
        "cloud": {"limits": {"instances": 10, "cores": 400, "ram": 10000000},
                  "servers": {"boot_seconds": [5.0, 15.0], "delete_seconds": [5.0, 20.0],
                              "network_layout": "provider"}},
        "jobs": 25, "job_seconds": (10.0, 30.0), "provider": {}, "pool": {},
    },
    "jobs-hang": {
        "cloud": {"limits": {"instances": 40, "cores": 400, "ram": 10000000},
                  "servers": {"boot_seconds": [5.0, 15.0], "delete_seconds": [1.0, 3.0],
                              "network_layout": "provider"}},
        "jobs": 8, "job_seconds": (10.0, 30.0), "provider": {}, "pool": {},
        "hang_at": 30.0, "hang_for": 60.0,
    },
}


def start_zookeeper(state: str) -> ZooKeeperSettings:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                          "start", "--dir", state], capture_output=True, text=True,
                         check=True)
    env = dict(pair.split("=", 1) for pair in out.stdout.split())
    return ZooKeeperSettings(parse_hosts(env["NODEPOOL_ZK_HOSTS"]))


def _schedule_hang(cloud, spec: dict) -> threading.Timer | None:
    """Hang the API ``hang_for`` seconds, ``hang_at`` seconds from now."""
    if "hang_at" not in spec:
        return None

    def hang():
        cloud.set_faults(hang=True)
        time.sleep(spec["hang_for"])
        cloud.set_faults(hang=False)
    timer = threading.Timer(spec["hang_at"], hang)
    timer.start()
    return timer


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def run_scenario(name: str, spec: dict, zk: ZooKeeperSettings, workdir: str,
                 n_requests: int | None) -> dict:
    n = n_requests or spec["requests"]
    cloud, launcher, config = _start(name, spec["cloud"],
                                     {"rate": 0.05, "launch-retries": 3},
                                     dict(spec["pool"], **{"max-servers": 50}), zk, workdir,
                                     api_timeout=2)
    client = connect(config.zookeeper)
    store = ZooKeeperStore(client)
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    fulfilled = failed = 0
    hang_timer = _schedule_hang(cloud, spec)
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


def _start(name: str, cloud_spec: dict, provider_extra: dict, pool_extra: dict,
           zk: ZooKeeperSettings, workdir: str, api_timeout: float = 10):
    """A fakecloud and a launcher on it, as an operator would configure them."""
    cloud_cfg = {"seed": 7, "servers": cloud_spec["servers"],
                 "projects": [{"name": "ci",
                               "users": [{"name": "nodepool", "password": "pw"}],
                               "limits": cloud_spec["limits"]}]}
    cloud = FakeCloud(cloud_cfg).start()
    clouds = cloud.write_clouds_yaml(os.path.join(workdir, f"{name}-clouds.yaml"),
                                     api_timeout=api_timeout)
    server = zk.servers[0]
    # host-key-checking needs SSH on the fake addresses: off in every scenario.
    pool = {"name": "main", "max-servers": 100, "host-key-checking": False,
            "labels": [{"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}]}
    pool.update(pool_extra)
    provider = {"name": "fake", "cloud": "fakecloud",
                "cloud-images": [{"name": "img", "image-name": "cirros"}], "pools": [pool]}
    provider.update(provider_extra)
    config_data = {
        "zookeeper-servers": [{"host": server.host, "port": server.port,
                               "chroot": f"/benchmark-{name}-{uuid.uuid4().hex[:6]}"}],
        "webapp": {"port": 0}, "labels": [{"name": "small"}], "providers": [provider]}
    path = os.path.join(workdir, f"{name}-nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config_data, f)
    config, _ = load_config(path, clouds)
    launcher = Launcher(config)
    launcher.start()
    return cloud, launcher, config


class _Job:
    """One CI job slot: asks for a node, holds it, returns it, asks again."""

    def __init__(self):
        self.request_id: str | None = None
        self.submitted = 0.0
        self.held: list = []       # (node, lock) while the job runs
        self.until = 0.0


def run_jobs(name: str, spec: dict, zk: ZooKeeperSettings, workdir: str,
             minutes: float) -> dict:
    import random
    rng = random.Random(11)
    cloud, launcher, config = _start(name, spec["cloud"], spec["provider"], spec["pool"],
                                     zk, workdir)
    client = connect(config.zookeeper)
    store = ZooKeeperStore(client)
    limit = spec["cloud"]["limits"]["instances"]
    jobs = [_Job() for _ in range(spec["jobs"])]
    latencies: list[float] = []
    fulfilled = failed = 0
    waiting_time = full_while_waiting = 0.0
    hang_timer = _schedule_hang(cloud, spec)
    t0 = time.monotonic()
    end = t0 + minutes * 60
    seq = 0
    last = t0
    while time.monotonic() < end:
        now = time.monotonic()
        for job in jobs:
            if job.held and now >= job.until:
                for node, lock in job.held:
                    node.state = "used"
                    store.store_node(node, lock)
                    lock.release()
                job.held = []
            if not job.held and job.request_id is None:
                seq += 1
                req = NodeRequest(state="requested", node_types=["small"],
                                  requestor="benchmark", requestor_data={"i": seq},
                                  event_id=f"bench-{seq}", tenant_name="bench")
                job.request_id = store.create_request(req, 200).id
                job.submitted = now
            elif job.request_id is not None:
                req = store.get_request(job.request_id)
                if req is None or req.state not in ("fulfilled", "failed"):
                    continue
                if req.state == "fulfilled":
                    fulfilled += 1
                    latencies.append(now - job.submitted)
                    for node_id in req.nodes:
                        got = store.lock_and_read_node(node_id, timeout=30)
                        if got is not None:
                            node, lock = got
                            node.state = "in-use"
                            store.store_node(node, lock)
                            job.held.append((node, lock))
                    job.until = now + rng.uniform(*spec["job_seconds"])
                else:
                    failed += 1
                client.delete(f"/nodepool/requests/{job.request_id}")
                job.request_id = None
        # Quota use while requests wait (sampled each pass, weighted by time).
        now = time.monotonic()
        if any(j.request_id is not None for j in jobs):
            waiting_time += now - last
            in_use = next(iter(cloud.usage().values()))["in_use"]["instances"]
            if in_use >= limit:
                full_while_waiting += now - last
        last = now
        time.sleep(0.1)
    counters = cloud.counters()   # the window's API calls
    # Wind down: return held nodes, withdraw waiting requests, drain.
    for job in jobs:
        for node, lock in job.held:
            node.state = "used"
            store.store_node(node, lock)
            lock.release()
        if job.request_id is not None:
            client.delete(f"/nodepool/requests/{job.request_id}")
    if hang_timer:
        hang_timer.join()
    drain_deadline = time.monotonic() + 180
    while time.monotonic() < drain_deadline and (cloud.servers() or store.list_nodes()):
        # Nodes built for withdrawn requests stay READY for reuse, as in
        # upstream: hand them back so that the launcher deletes them.
        for node in store.list_nodes():
            if node.state == "ready" and not node.allocated_to:
                got = store.lock_and_read_node(node.id, timeout=1)
                if got is not None:
                    node, lock = got
                    node.state = "used"
                    store.store_node(node, lock)
                    lock.release()
        time.sleep(0.5)
    leaked = len(cloud.servers())
    launcher.stop(wait=10)
    disconnect(client)
    cloud.stop()
    calls = {route: sum(by_status.values())
             for route, by_status in counters.get("requests", {}).items()}
    total_calls = sum(calls.values())
    return {
        "scenario": name, "minutes": minutes, "jobs": spec["jobs"],
        "fulfilled": fulfilled, "failed": failed,
        "fulfilled_per_minute": round(fulfilled / minutes, 1),
        "failed_per_minute": round(failed / minutes, 1),
        "latency_p50_s": round(percentile(latencies, 50), 1) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 1) if latencies else None,
        "api_calls_per_fulfilled_node": round(total_calls / fulfilled, 2) if fulfilled
        else None,
        "api_calls_per_node_by_route": {k: round(v / fulfilled, 2)
                                        for k, v in sorted(calls.items())} if fulfilled
        else {},
        "quota_full_while_waiting": round(full_while_waiting / waiting_time, 2)
        if waiting_time else None,
        "quota_403": counters.get("quota_403", 0),
        "peak_instances": cloud.peak_usage().get("instances"),
        "leaked_servers": leaked,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append",
                   choices=sorted(SCENARIOS) + sorted(JOB_SCENARIOS),
                   help="run only these (repeatable); default: all")
    p.add_argument("--requests", type=int, help="requests per scenario (default: per scenario)")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="how long each job scenario runs (default 3)")
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
                if name in JOB_SCENARIOS:
                    results.append(run_jobs(name, JOB_SCENARIOS[name], zk, workdir,
                                            args.minutes))
                else:
                    results.append(run_scenario(name, SCENARIOS[name], zk, workdir,
                                                args.requests))
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
    batch_keys = ("requests", "fulfilled", "failed", "unanswered", "quota_403",
                  "api_calls_total", "api_calls_per_fulfilled_node", "latency_p50_s",
                  "latency_p95_s", "leaked_servers", "leaked_floating_ips", "leaked_ports",
                  "peak_instances", "elapsed_s")
    job_keys = ("minutes", "jobs", "fulfilled", "failed", "fulfilled_per_minute",
                "failed_per_minute", "latency_p50_s", "latency_p95_s",
                "api_calls_per_fulfilled_node", "quota_full_while_waiting", "quota_403",
                "peak_instances", "leaked_servers")
    for r in results:
        print(f"\n== {r['scenario']} ==")
        for key in (job_keys if r["scenario"] in JOB_SCENARIOS else batch_keys):
            print(f"  {key:30} {r[key]}")
        print("  API calls per fulfilled node, by route:")
        for route, v in r["api_calls_per_node_by_route"].items():
            print(f"    {route:55} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
