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
  jobs-three-launchers  three launcher processes with the same provider
                        config, one project with an instance quota of 10,
                        25 jobs, deletes 5-20 s (several launchers, one quota)

For job scenarios it prints requests fulfilled per minute, latency p50/p95,
API calls per fulfilled node, and (quota-bound) the share of the time the
instance quota was fully used while requests waited.

The reference column (``--launcher ours|upstream|both``, job scenarios
only): the launcher runs as a process (``nodepool-launcher -f``), ours from
this venv, upstream Nodepool 11 from its own venv (made by
``tools/install-upstream.sh``, default ``.upstream-venv``), both against the
same TLS ZooKeeper, the same fakecloud configuration and the same job
workload; ``both`` runs each scenario with upstream, then with ours, and
prints the figures side by side with the target.

The scale scenario (10 providers, 200 to 2,000 nodes, the launcher and the
fakecloud in their own processes) lives in tools/benchmark_scale.py;
``tools/benchmark.py --scenario scale [its options]`` runs it, e.g.
``--scenario scale --nodes 2000 --hold-min 600 --hold-max 1800``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
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
from nodepool.driver import registry  # noqa: E402
from nodepool.fakecloud import FakeCloud  # noqa: E402
from nodepool.launcher.launcher import Launcher  # noqa: E402
from nodepool.zk.client import (ZooKeeperSettings, ZooKeeperTLS,  # noqa: E402
                                connect, disconnect, parse_hosts)
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
    # Several launchers, one quota: three launcher processes with the same
    # provider config against one project (quota-bound, as above).
    "jobs-three-launchers": {
        "cloud": {"limits": {"instances": 10, "cores": 400, "ram": 10000000},
                  "servers": {"boot_seconds": [5.0, 15.0], "delete_seconds": [5.0, 20.0],
                              "network_layout": "provider"}},
        "jobs": 25, "job_seconds": (10.0, 30.0), "provider": {}, "pool": {},
        "launchers": 3,
    },
}

# The targets of the job scenarios (doc/benchmark.rst), figure by figure, as
# printed beside the measured columns.  Text, because some are relative
# ("<= boot + 5": boots take 5-15 s in these scenarios).
JOB_TARGETS: dict[str, dict[str, str]] = {
    "jobs-provider-net": {"fulfilled_per_minute": ">= 44", "latency_p50_s": "<= boot + 5",
                          "api_calls_per_fulfilled_node": "<= 2.5", "quota_403": "0",
                          "failed": "0", "leaked_servers": "0"},
    "jobs-rate-fip": {"fulfilled_per_minute": ">= 44", "latency_p50_s": "<= boot + 5",
                      "fip_creates_per_node": "<= 1", "quota_403": "0", "failed": "0",
                      "leaked_servers": "0"},
    "jobs-quota-bound": {"fulfilled_per_minute": ">= 12.5",
                         "quota_full_while_waiting": ">= 0.85",
                         "api_calls_per_fulfilled_node": "<= 3", "quota_403": "0",
                         "failed": "0", "leaked_servers": "0"},
    "jobs-hang": {"fulfilled_per_minute": ">= 10", "failed": "0", "quota_403": "0",
                  "leaked_servers": "0"},
    "jobs-three-launchers": {"quota_403": "0", "quota_full_while_waiting": ">= 0.85",
                             "failed": "0", "leaked_servers": "0"},
}
# The rows of the side-by-side table, in order.
COMPARED_FIGURES = ("fulfilled", "fulfilled_per_minute", "failed", "latency_p50_s",
                    "latency_p95_s", "api_calls_per_fulfilled_node", "fip_creates_per_node",
                    "quota_full_while_waiting", "quota_403", "peak_instances",
                    "leaked_servers", "leaked_floating_ips")


def start_zookeeper(state: str, tls: bool = False) -> ZooKeeperSettings:
    """A ZooKeeper of our own; with ``tls`` the settings name its TLS port
    and client certificate (upstream Nodepool 11 only speaks TLS)."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                          "start", "--dir", state] + (["--tls"] if tls else []),
                         capture_output=True, text=True, check=True)
    env = dict(pair.split("=", 1) for pair in out.stdout.split())
    if not tls:
        return ZooKeeperSettings(parse_hosts(env["NODEPOOL_ZK_HOSTS"]))
    return ZooKeeperSettings(parse_hosts(env["NODEPOOL_ZK_TLS_HOSTS"]),
                             ZooKeeperTLS(ca=env["NODEPOOL_ZK_TLS_CA"],
                                          cert=env["NODEPOOL_ZK_TLS_CERT"],
                                          key=env["NODEPOOL_ZK_TLS_KEY"]))


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


def _start_cloud(name: str, cloud_spec: dict, workdir: str, api_timeout: float = 10,
                 logs: str | None = None):
    """A fakecloud with one project, and the clouds.yaml that reaches it;
    with ``logs``, its request and transition logs go there."""
    extra = {} if logs is None else {
        "request_log": os.path.join(logs, f"{name}-requests.jsonl"),
        "transition_log": os.path.join(logs, f"{name}-servers.jsonl")}
    cloud_cfg = {"seed": 7, "servers": cloud_spec["servers"], **extra,
                 "projects": [{"name": "ci",
                               "users": [{"name": "nodepool", "password": "pw"}],
                               "limits": cloud_spec["limits"]}]}
    cloud = FakeCloud(cloud_cfg).start()
    clouds = cloud.write_clouds_yaml(os.path.join(workdir, f"{name}-clouds.yaml"),
                                     api_timeout=api_timeout)
    return cloud, clouds


PROVIDER_NAME = "sim"


def launcher_config(zk: ZooKeeperSettings, chroot: str, provider_extra: dict,
                    pool_extra: dict) -> dict:
    """The nodepool.yaml of a scenario, in upstream's schema (which this
    launcher reads too): one provider ``sim`` on the cloud ``fakecloud``,
    one pool, one label ``small`` booted from the cloud image ``cirros``.

    The provider's name must not start with "fake": upstream then swaps in
    its own in-memory test driver instead of talking to the cloud."""
    # host-key-checking needs SSH on the fake addresses: off in every scenario.
    pool = {"name": "main", "max-servers": 100, "host-key-checking": False,
            "labels": [{"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}]}
    pool.update(pool_extra)
    provider = {"name": PROVIDER_NAME, "cloud": "fakecloud",
                "cloud-images": [{"name": "img", "image-name": "cirros"}], "pools": [pool]}
    provider.update(provider_extra)
    data: dict = {
        "zookeeper-servers": [{"host": s.host, "port": s.port, "chroot": chroot}
                              for s in zk.servers],
        "labels": [{"name": "small"}], "providers": [provider]}
    if zk.tls is not None:
        data["zookeeper-tls"] = {"ca": zk.tls.ca, "cert": zk.tls.cert, "key": zk.tls.key}
    return data


def _start(name: str, cloud_spec: dict, provider_extra: dict, pool_extra: dict,
           zk: ZooKeeperSettings, workdir: str, api_timeout: float = 10):
    """A fakecloud and a launcher on it, as an operator would configure them."""
    cloud, clouds = _start_cloud(name, cloud_spec, workdir, api_timeout)
    config_data = launcher_config(zk, f"/benchmark-{name}-{uuid.uuid4().hex[:6]}",
                                  provider_extra, pool_extra)
    config_data["webapp"] = {"port": 0}
    path = os.path.join(workdir, f"{name}-nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config_data, f)
    config, _ = load_config(path, clouds, drivers=registry.drivers())
    launcher = Launcher(config)
    launcher.start()
    return cloud, launcher, config


UPSTREAM_VERSION = "11.0.0"
DEFAULT_UPSTREAM_VENV = os.path.join(ROOT, ".upstream-venv")


# --debug-logs: the launchers log at DEBUG (both take -d for that).
DEBUG_LOGS = False


def launcher_command(kind: str, config_path: str, upstream_venv: str) -> list[str]:
    """How to run one launcher of ``kind`` ("ours" or "upstream") in the
    foreground, without its web server (the benchmark does not need it)."""
    if kind == "upstream":
        exe = os.path.join(upstream_venv, "bin", "nodepool-launcher")
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"benchmark: upstream Nodepool is not installed in {upstream_venv}"
                             f" (no {exe}); run tools/install-upstream.sh "
                             f"[{upstream_venv}] first, or pass --upstream-venv")
    elif kind == "ours":
        exe = os.path.join(os.path.dirname(sys.executable), "nodepool-launcher")
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"benchmark: {exe} is missing: run the benchmark with the "
                             f"Python of a venv where this project is installed (.venv)")
    else:
        raise ValueError(f"unknown launcher kind {kind!r}")
    return [exe, "-d" if DEBUG_LOGS else "-f", "-c", config_path, "--no-webapp"]


class LauncherProcesses:
    """``count`` launcher processes of one kind on one nodepool.yaml.

    Each is a session leader, so that stopping it ends whatever it started;
    its output goes to a log file next to the configuration."""

    def __init__(self, kind: str, count: int, config_path: str, clouds_path: str,
                 log_dir: str, upstream_venv: str):
        self.kind = kind
        self.procs: list[subprocess.Popen] = []
        self.logs: list[str] = []
        cmd = launcher_command(kind, config_path, upstream_venv)
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds_path, PYTHONUNBUFFERED="1")
        base = os.path.splitext(os.path.basename(config_path))[0]
        for i in range(count):
            log_path = os.path.join(log_dir, f"{base}-{kind}-{i}.log")
            self.logs.append(log_path)
            with open(log_path, "ab") as logf:
                self.procs.append(subprocess.Popen(
                    cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=log_dir, start_new_session=True))

    def exited(self) -> list[int]:
        """Exit codes of the launchers that ended on their own."""
        return [p.returncode for p in self.procs if p.poll() is not None]

    def stop(self, wait: float = 15.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The whole process group, in case the leader left children behind.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def tail(self, lines: int = 20) -> str:
        out = []
        for path in self.logs:
            with open(path, errors="replace") as f:
                out.append(f"--- {path}\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(out)


def _wait_for_pools(client, count: int, procs: LauncherProcesses, timeout: float = 120):
    """Until ``count`` pool workers registered (both launchers register their
    pools under /nodepool/components/pool), so that start-up is not timed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.exited():
            raise RuntimeError(f"a {procs.kind} launcher exited at start-up:\n"
                               + procs.tail())
        try:
            if len(client.get_children("/nodepool/components/pool")) >= count:
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{count} {procs.kind} pool(s) did not register within "
                       f"{timeout:.0f}s:\n" + procs.tail())


def _start_job_launchers(name: str, spec: dict, zk: ZooKeeperSettings, workdir: str,
                         kind: str, upstream_venv: str, log_dir: str | None):
    """A fakecloud and ``spec['launchers']`` launcher processes of ``kind``
    on one generated nodepool.yaml and clouds.yaml."""
    tag = f"{name}-{kind}"
    logs = log_dir or workdir
    os.makedirs(logs, exist_ok=True)
    cloud, clouds = _start_cloud(tag, spec["cloud"], workdir, logs=logs)
    config_data = launcher_config(zk, f"/benchmark-{tag}-{uuid.uuid4().hex[:6]}",
                                  spec["provider"], spec["pool"])
    path = os.path.join(workdir, f"{tag}-nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config_data, f)
    # The workload reads the same file (our loader checks it on the way).
    config, _ = load_config(path, clouds, drivers=registry.drivers())
    procs = LauncherProcesses(kind, spec.get("launchers", 1), path, clouds, logs,
                              upstream_venv)
    return cloud, procs, config


class _Job:
    """One CI job slot: asks for a node, holds it, returns it, asks again."""

    def __init__(self):
        self.request_id: str | None = None
        self.submitted = 0.0
        self.held: list = []       # (node, lock) while the job runs
        self.until = 0.0


def run_jobs(name: str, spec: dict, zk: ZooKeeperSettings, workdir: str,
             minutes: float, launcher: str = "ours",
             upstream_venv: str = DEFAULT_UPSTREAM_VENV, log_dir: str | None = None) -> dict:
    """One job scenario with ``spec['launchers']`` (default 1) launcher
    processes of kind ``launcher`` ("ours" or "upstream")."""
    rng = random.Random(11)
    cloud, procs, config = _start_job_launchers(name, spec, zk, workdir, launcher,
                                                upstream_venv, log_dir)
    client = None
    try:
        client = connect(config.zookeeper)
        _wait_for_pools(client, spec.get("launchers", 1), procs)
        return _drive_jobs(name, spec, cloud, procs, client, minutes, rng)
    finally:
        # Nothing stays running, whatever happened above.
        procs.stop()
        if client is not None:
            disconnect(client)
        cloud.stop()


LIST_ROUTE = "GET /compute/v2.1/servers/detail"
CREATE_ROUTE = "POST /compute/v2.1/servers"


def freed_quota_figures(requests_path: str | None, transitions_path: str | None,
                        start: float, end: float, limit: int, initial: int) -> dict:
    """Where the time of a freed instance goes, from the fakecloud's logs.

    The instance count is rebuilt from the logs (``initial`` at ``start``,
    +1 per accepted create, -1 per server gone).  Each time a server going
    takes the count from the limit to one below, the slot stays free until
    the count is back at the limit: the *reuse lag*.  It is split at the
    first server list (by anyone) requested after the server went: *seen*
    is when that list was answered, *reused* the rest, to the create that
    filled the slot.  Times in seconds; nothing when the logs were off."""
    if not requests_path or not transitions_path:
        return {}
    with open(requests_path) as f:
        requests = [json.loads(line) for line in f if line.strip()]
    with open(transitions_path) as f:
        transitions = [json.loads(line) for line in f if line.strip()]
    changes = sorted([(r["finished"], +1) for r in requests
                      if r["route"] == CREATE_ROUTE and r["status"] == 202
                      and start <= r["finished"] <= end]
                     + [(t["at"], -1) for t in transitions
                        if t["event"] == "gone" and start <= t["at"] <= end])
    lists = sorted((r["started"], r["finished"]) for r in requests
                   if r["route"] == LIST_ROUTE and r["status"] == 200)
    lags, seen, reused = [], [], []
    count, freed_at = initial, None
    for at, step in changes:
        if step < 0 and count == limit:
            freed_at = at
        count += step
        if step > 0 and count == limit and freed_at is not None:
            lags.append(at - freed_at)
            answered = next((fin for st, fin in lists if st >= freed_at), None)
            if answered is not None and answered <= at:
                seen.append(answered - freed_at)
                reused.append(at - answered)
            freed_at = None

    def pct(values: list[float], p: float) -> float | None:
        v = percentile(values, p)
        return None if v is None else round(v, 2)
    return {"freed_slots": len(lags),
            "reuse_lag_p50_s": pct(lags, 50), "reuse_lag_p95_s": pct(lags, 95),
            "reuse_lag_mean_s": round(sum(lags) / len(lags), 2) if lags else None,
            "freed_seen_p50_s": pct(seen, 50), "freed_seen_p95_s": pct(seen, 95),
            "seen_to_reused_p50_s": pct(reused, 50), "seen_to_reused_p95_s": pct(reused, 95)}


def _drive_jobs(name: str, spec: dict, cloud, procs: LauncherProcesses, client,
                minutes: float, rng: random.Random) -> dict:
    """The job workload, as Zuul drives it, for ``minutes``; then drain."""
    store = ZooKeeperStore(client)
    # The window starts with every launcher up: start-up calls do not count.
    cloud.reset_counters()
    window_start = time.time()
    limit = spec["cloud"]["limits"]["instances"]
    initial = next(iter(cloud.usage().values()))["in_use"]["instances"]
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
    window_end = time.time()
    exits_in_window = procs.exited()
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
    left = cloud.servers()
    leaked = len(left)
    in_use = next(iter(cloud.usage().values()))["in_use"]
    calls = {route: sum(by_status.values())
             for route, by_status in counters.get("requests", {}).items()}
    total_calls = sum(calls.values())
    return {
        "scenario": name, "launcher": procs.kind, "launchers": len(procs.procs),
        "minutes": minutes, "jobs": spec["jobs"],
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
        "fip_creates_per_node": round(calls.get("POST /network/v2.0/floatingips", 0)
                                      / fulfilled, 2) if fulfilled else None,
        "quota_403": counters.get("quota_403", 0),
        "peak_instances": cloud.peak_usage().get("instances"),
        "leaked_servers": leaked, "leaked_floating_ips": in_use.get("floating_ips", 0),
        "launcher_exits": exits_in_window,
        # Answers other than 2xx/3xx: a route the fakecloud does not serve
        # shows here (404/405/501), as do the faults a scenario injects.
        "api_errors": {f"{route} {status}": n
                       for route, by_status in sorted(counters.get("requests", {}).items())
                       for status, n in sorted(by_status.items()) if int(status) >= 400},
        # What a leak was: enough to tell whose and in which state.
        "leaked_server_details": [{"name": x["name"], "status": x["status"],
                                   "metadata": x["metadata"]} for x in left],
        **freed_quota_figures(cloud.config.request_log, cloud.config.transition_log,
                              window_start, window_end, limit, initial),
        # And the node records still in ZooKeeper (a leak's node says why).
        "nodes_left": [{"id": n.id, "state": n.state, "allocated_to": n.allocated_to,
                        "external_id": n.external_id,
                        "locked": store.node_locked(n.id)} for n in store.list_nodes()],
    }


def compare(results: list[dict]) -> dict[str, dict[str, dict]]:
    """Job results side by side: scenario -> figure -> {upstream, ours, target}."""
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        if r["scenario"] not in JOB_SCENARIOS or "launcher" not in r:
            continue
        rows = table.setdefault(r["scenario"], {})
        targets = JOB_TARGETS.get(r["scenario"], {})
        for figure in COMPARED_FIGURES:
            row = rows.setdefault(figure, {"upstream": None, "ours": None,
                                           "target": targets.get(figure, "")})
            row[r["launcher"]] = r.get(figure)
    return table


def print_comparison(table: dict[str, dict[str, dict]]) -> None:
    def cell(v) -> str:
        return "-" if v is None else str(v)
    print("\n== upstream Nodepool 11 | this launcher | target ==")
    print(f"  {'scenario':22} {'figure':30} {'upstream':>10} {'ours':>10}  target")
    for scenario, rows in table.items():
        for figure, row in rows.items():
            print(f"  {scenario:22} {figure:30} {cell(row['upstream']):>10} "
                  f"{cell(row['ours']):>10}  {row['target']}")


def _save(path: str | None, result: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(result, load_average=[round(x, 2)
                                                          for x in os.getloadavg()])) + "\n")


def run_scale_scenario(argv: list[str]) -> int:
    """``--scenario scale``: the rest of the arguments go to benchmark_scale.py
    (its own options, a run of its own: nothing else mixes with it)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_scale.py")
    return subprocess.call([sys.executable, script, *argv])


def main() -> int:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--scenario=scale" or (arg == "--scenario" and argv[i + 1:i + 2] == ["scale"]):
            width = 1 if "=" in arg else 2
            return run_scale_scenario(argv[:i] + argv[i + width:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append",
                   choices=sorted(SCENARIOS) + sorted(JOB_SCENARIOS),
                   help="run only these (repeatable); default: all")
    p.add_argument("--requests", type=int, help="requests per scenario (default: per scenario)")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="how long each job scenario runs (default 3)")
    p.add_argument("--launcher", choices=("ours", "upstream", "both"), default="ours",
                   help="who serves the job scenarios: this launcher, upstream Nodepool "
                        f"{UPSTREAM_VERSION} (tools/install-upstream.sh), or both one after "
                        "the other, printed side by side (default: ours)")
    p.add_argument("--upstream-venv", default=DEFAULT_UPSTREAM_VENV,
                   help=f"the venv with upstream Nodepool (default {DEFAULT_UPSTREAM_VENV})")
    p.add_argument("--log-dir", help="keep the launchers' logs here "
                                     "(default: a temporary directory, removed)")
    p.add_argument("--save", metavar="PATH",
                   help="append each scenario's result to PATH as one JSON line as soon "
                        "as it is measured (long runs keep what they measured)")
    p.add_argument("--debug-logs", action="store_true",
                   help="the job scenarios' launchers log at DEBUG (with --log-dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="launcher logs to stderr")
    args = p.parse_args()
    global DEBUG_LOGS
    DEBUG_LOGS = args.debug_logs
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(message)s")
    names = args.scenario or list(SCENARIOS)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        zk_state = os.path.join(workdir, "zk")
        # Upstream only speaks TLS to ZooKeeper: the job scenarios run both
        # launchers on the TLS port; the batch scenarios keep the plain one.
        zk_tls = start_zookeeper(zk_state, tls=True)
        zk = start_zookeeper(zk_state)
        kinds = ["upstream", "ours"] if args.launcher == "both" else [args.launcher]
        if "upstream" in kinds and any(n in JOB_SCENARIOS for n in names):
            launcher_command("upstream", "-", args.upstream_venv)   # installed?
        try:
            for name in names:
                if name in JOB_SCENARIOS:
                    for kind in kinds:
                        results.append(run_jobs(name, JOB_SCENARIOS[name], zk_tls, workdir,
                                                args.minutes, kind, args.upstream_venv,
                                                args.log_dir))
                        _save(args.save, results[-1])
                else:
                    results.append(run_scenario(name, SCENARIOS[name], zk, workdir,
                                                args.requests))
        finally:
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                            "stop", "--dir", zk_state], capture_output=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}
    machine["load_average"] = [round(x, 2) for x in os.getloadavg()]
    comparison = compare(results)
    if args.json:
        print(json.dumps({"machine": machine, "results": results,
                          "comparison": comparison}, indent=2))
        return 0
    print(f"machine: {machine['cpus']} CPUs, Python {machine['python']}, "
          f"{machine['platform']}, load average at the end {machine['load_average']}")
    batch_keys = ("requests", "fulfilled", "failed", "unanswered", "quota_403",
                  "api_calls_total", "api_calls_per_fulfilled_node", "latency_p50_s",
                  "latency_p95_s", "leaked_servers", "leaked_floating_ips", "leaked_ports",
                  "peak_instances", "elapsed_s")
    job_keys = ("launcher", "launchers", "minutes", "jobs", "fulfilled", "failed",
                "fulfilled_per_minute", "failed_per_minute", "latency_p50_s", "latency_p95_s",
                "api_calls_per_fulfilled_node", "fip_creates_per_node",
                "quota_full_while_waiting", "quota_403", "peak_instances", "leaked_servers",
                "leaked_floating_ips", "launcher_exits", "api_errors")
    for r in results:
        title = r["scenario"] + (f" ({r['launcher']})" if "launcher" in r else "")
        print(f"\n== {title} ==")
        for key in (job_keys if r["scenario"] in JOB_SCENARIOS else batch_keys):
            print(f"  {key:30} {r[key]}")
        print("  API calls per fulfilled node, by route:")
        for route, v in r["api_calls_per_node_by_route"].items():
            print(f"    {route:55} {v}")
    if comparison:
        print_comparison(comparison)
    return 0


if __name__ == "__main__":
    sys.exit(main())
