#!/usr/bin/env python3
"""Scale scenario: one launcher process, 10 providers, 200 to 2,000 nodes.

    .venv/bin/python tools/benchmark_scale.py [--nodes 200,1000,2000] [--providers 10]
        [--steady-seconds 120] [--json] [--profile DIR]

For each node count N it starts, as separate processes, a ZooKeeper
(tools/zookeeper.py), one ``nodepool-fakecloud`` with one project per
provider, and ``nodepool-launcher -f`` with one provider (one pool, one
label) per project.  The benchmark itself plays Zuul: N jobs, each submits a
node request through ZooKeeper (the Zuul protocol: a sequential request
znode, the node locked and set ``in-use`` while the job runs, then ``used``
and unlocked, the request deleted), holds the node for a random job time and
asks again.  Requests name one of the providers' labels and one of a few
tenants that have ``tenant-resource-limits`` (large enough never to bind), so
the tenant checks run as they do in production.

Phases: *ramp* (all N jobs ask at once, until N nodes are in use) and
*steady* (``--steady-seconds`` of churn with every job cycling).  It reports
for the steady phase (and the ramp where it says so):

* the launcher's CPU in cores, mean and p95 of 1 s samples of
  /proc/<pid>/stat, and its RSS;
* the fakecloud's CPU and its mean answer time per call (its own counters),
  API calls per minute per provider;
* ZooKeeper reads and writes per second in the benchmark's chroot (the
  server's per-namespace counters from ``mntr``) less the benchmark's own
  (counted at its client): what the launcher does;
* request latency p50/p95 (submitted -> fulfilled, the request's own
  ``state_time``) and the latency the launcher adds: that minus the fixed
  boot time the fakecloud is configured with (``--boot-seconds``);
* ``nodepool list`` and ``/node-list`` answer times with N nodes;
* statsd metrics per second (the launcher sends them to a UDP port here, so
  its gauges run as in production).

Machine load matters: the launcher shares the cores with ZooKeeper, the
fakecloud and this script; give ``uptime`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kazoo.protocol import serialization as ser  # noqa: E402

from nodepool.fakecloud.clouds_yaml import clouds_yaml_data, dump_clouds_yaml  # noqa: E402
from nodepool.zk.cache import request_cache  # noqa: E402
from nodepool.zk.client import (ZooKeeperSettings, connect, disconnect,  # noqa: E402
                                parse_hosts)
from nodepool.zk.records import NodeRequest  # noqa: E402
from nodepool.zk.store import ZooKeeperStore  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import percentile  # noqa: E402  (the job benchmark's, one definition)

BIN = os.path.dirname(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")
TENANTS = ["tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"]
READS = (ser.GetData, ser.GetChildren, ser.GetChildren2, ser.Exists, ser.GetACL)
WRITES = (ser.Create, ser.Delete, ser.SetData, ser.Transaction)


# -- measuring ------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """CPU (cores) and RSS of some processes, once a second, into a window."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.samples: dict[str, list[float]] = {k: [] for k in pids}
        self.rss: dict[str, list[float]] = {k: [] for k in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.recording = False

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def window(self) -> None:
        for k in self.pids:
            self.samples[k], self.rss[k] = [], []
        self.recording = True

    def _run(self) -> None:
        last = {k: (time.monotonic(), cpu_seconds(p)) for k, p in self.pids.items()}
        while not self._stop.wait(1.0):
            for k, pid in self.pids.items():
                try:
                    now, cpu = time.monotonic(), cpu_seconds(pid)
                    rss = rss_mb(pid)
                except OSError:
                    continue
                t0, c0 = last[k]
                last[k] = (now, cpu)
                if self.recording:
                    self.samples[k].append((cpu - c0) / (now - t0))
                    self.rss[k].append(rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, key: str) -> dict:
        s = self.samples[key]
        return {"cpu_mean_cores": round(sum(s) / len(s), 3) if s else None,
                "cpu_p95_cores": round(percentile(s, 95), 3) if s else None,
                "rss_mb_max": round(max(self.rss[key]), 1) if self.rss[key] else None}


def four_letter(port: int, word: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(word.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def zk_namespace_ops(port: int, namespace: str) -> tuple[int, int]:
    """Reads and writes ZooKeeper counted under the top-level znode ``namespace``."""
    reads = writes = 0
    for line in four_letter(port, "mntr").splitlines():
        key, _, value = line.partition("\t")
        if key == f"zk_cnt_{namespace}_read_per_namespace":
            reads = int(value)
        elif key == f"zk_cnt_{namespace}_write_per_namespace":
            writes = int(value)
    return reads, writes


def count_client_ops(client) -> dict[str, int]:
    """Count this client's reads and writes (to subtract them from the server's)."""
    counts = {"reads": 0, "writes": 0}
    original = client._call

    def counted(request, async_object):
        if isinstance(request, READS):
            counts["reads"] += 1
        elif isinstance(request, WRITES):
            counts["writes"] += 1
        return original(request, async_object)
    client._call = counted
    return counts


def http_json(url: str, method: str = "GET", timeout: float = 30) -> dict:
    req = urllib.request.Request(url, method=method, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


# -- the processes ------------------------------------------------------------------------

def start_zookeeper(state: str) -> int:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"),
                          "start", "--dir", state], capture_output=True, text=True,
                         check=True)
    env = dict(pair.split("=", 1) for pair in out.stdout.split())
    return parse_hosts(env["NODEPOOL_ZK_HOSTS"])[0].port


def stop_zookeeper(state: str) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zookeeper.py"), "stop",
                    "--dir", state], capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fakecloud(workdir: str, providers: int, boot: float, delete: float
                    ) -> tuple[subprocess.Popen, str, str]:
    cfg = {"seed": 7, "max_page_size": 1000,
           "transition_log": os.path.join(workdir, "servers.jsonl"),
           "request_log": os.path.join(workdir, "requests.jsonl"),
           "servers": {"boot_seconds": boot, "delete_seconds": delete,
                       "network_layout": "private", "floating_ip": False},
           "projects": [{"name": f"proj-{i:02d}",
                         "users": [{"name": "nodepool", "password": "pw"}],
                         "limits": {"instances": -1, "cores": -1, "ram": -1, "ports": -1,
                                    "floating_ips": -1}}
                        for i in range(providers)]}
    path = os.path.join(workdir, "fakecloud.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    proc = subprocess.Popen([os.path.join(BIN, "nodepool-fakecloud"), "-c", path,
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"fakecloud did not start: {line!r}")
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    return proc, fields["auth_url"], fields["admin_url"].rstrip("/")


def write_configs(workdir: str, auth_url: str, zk_port: int, chroot: str, providers: int,
                  nodes: int, web_port: int) -> tuple[str, str]:
    clouds: dict = {}
    for i in range(providers):
        data = clouds_yaml_data(auth_url, "RegionOne", f"cloud-{i:02d}", "nodepool", "pw",
                                f"proj-{i:02d}", 30)
        clouds.setdefault("clouds", {}).update(data["clouds"])
        clouds["cache"] = data["cache"]
    clouds_path = dump_clouds_yaml(clouds, os.path.join(workdir, "clouds.yaml"))
    per_provider = max(1, nodes // providers)
    config = {
        "zookeeper-servers": [{"host": "127.0.0.1", "port": zk_port, "chroot": chroot}],
        "webapp": {"port": web_port, "listen_address": "127.0.0.1"},
        "labels": [{"name": f"label-{i:02d}"} for i in range(providers)],
        "tenant-resource-limits": [{"tenant-name": t, "max-servers": nodes * 4}
                                   for t in TENANTS],
        "providers": [{
            "name": f"prov-{i:02d}", "cloud": f"cloud-{i:02d}",
            "cloud-images": [{"name": "img", "image-name": "cirros"}],
            "pools": [{"name": "main", "max-servers": per_provider * 3,
                       "host-key-checking": False, "auto-floating-ip": False,
                       "labels": [{"name": f"label-{i:02d}", "cloud-image": "img",
                                   "flavor-name": "m1.small"}]}]}
            for i in range(providers)]}
    path = os.path.join(workdir, "nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path, clouds_path


class StatsdSink:
    """A UDP port the launcher sends its statsd metrics to (so the gauges over
    every node run, as in production); counts what arrives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.packets = 0
        self.metrics = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            self.packets += 1
            self.metrics += data.count(b"\n") + 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def start_launcher(config: str, clouds: str, workdir: str, statsd_port: int
                   ) -> subprocess.Popen:
    cmd = [os.path.join(BIN, "nodepool-launcher"), "-f", "-c", config, "--clouds", clouds,
           "-p", os.path.join(workdir, "launcher.pid")]
    log = open(os.path.join(workdir, "launcher.log"), "w")
    env = dict(os.environ, STATSD_HOST="127.0.0.1", STATSD_PORT=str(statsd_port))
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


# -- Zuul's side -----------------------------------------------------------------------

class Job:
    def __init__(self, index: int):
        self.index = index
        self.request_id: str | None = None
        self.submitted = 0.0
        self.held: list = []
        self.until = 0.0


class Zuul:
    """N jobs that ask, hold and return nodes, as Zuul's scheduler and executors do."""

    def __init__(self, store: ZooKeeperStore, providers: int, hold: tuple[float, float],
                 seed: int = 11):
        self.store = store
        self.providers = providers
        self.hold = hold
        self.rng = random.Random(seed)
        self.cache = request_cache(store.client)
        self.cache.start()
        self.seq = 0
        self.latencies: list[tuple[float, float]] = []   # (submitted at, seconds)
        # (submitted at, submitted -> node znode created, created -> fulfilled)
        self.phases: list[tuple[float, float, float]] = []
        # (submitted at, node created at, fulfilled at, server id, provider)
        self.servers: list[tuple[float, float, float, str, str]] = []
        self.failed = 0

    def submit(self, job: Job) -> None:
        self.seq += 1
        req = NodeRequest(state="requested", node_types=[f"label-{job.index % self.providers:02d}"],
                          requestor="benchmark-scale", requestor_data={"job": job.index},
                          event_id=f"scale-{self.seq}",
                          tenant_name=TENANTS[job.index % len(TENANTS)])
        job.submitted = time.time()
        job.request_id = self.store.create_request(req, 100).id

    def release(self, job: Job) -> None:
        for node, lock in job.held:
            node.state = "used"
            try:
                self.store.store_node(node, lock)
            finally:
                lock.release()
        job.held = []

    def step(self, job: Job, now: float, churn: bool) -> None:
        if job.held:
            if churn and now >= job.until:
                self.release(job)
            else:
                return
        if job.request_id is None:
            self.submit(job)
            return
        req = self.cache.get(job.request_id)
        if req is None or req.state not in ("fulfilled", "failed"):
            return
        if req.state == "fulfilled":
            done = req.state_time or time.time()
            self.latencies.append((job.submitted, done - job.submitted))
            for node_id in req.nodes:
                got = self.store.lock_and_read_node(node_id, timeout=30)
                if got is None:
                    continue
                node, lock = got
                if node.created_time:
                    self.phases.append((job.submitted, node.created_time - job.submitted,
                                        done - node.created_time))
                    if node.external_id:
                        self.servers.append((job.submitted, node.created_time, done,
                                             node.external_id, node.provider))
                node.state = "in-use"
                self.store.store_node(node, lock)
                job.held.append((node, lock))
            job.until = now + self.rng.uniform(*self.hold)
        else:
            self.failed += 1
        self.store.client.delete(f"/nodepool/requests/{job.request_id}", recursive=True)
        job.request_id = None


# -- one size ---------------------------------------------------------------------------

def run_size(args, nodes: int, zk_port: int, workdir: str) -> dict:
    size_dir = os.path.join(workdir, f"n{nodes}")
    os.makedirs(size_dir)
    cloud, auth_url, admin_url = start_fakecloud(size_dir, args.providers, args.boot_seconds,
                                                 args.delete_seconds)
    namespace = f"scale-{nodes}-{uuid.uuid4().hex[:6]}"
    web_port = free_port()
    config, clouds = write_configs(size_dir, auth_url, zk_port, "/" + namespace,
                                   args.providers, nodes, web_port)
    statsd = StatsdSink()
    launcher = start_launcher(config, clouds, size_dir, statsd.port)
    settings = ZooKeeperSettings(parse_hosts(f"127.0.0.1:{zk_port}/{namespace}"))
    client = connect(settings)
    own = count_client_ops(client)
    store = ZooKeeperStore(client)
    sampler = Sampler({"launcher": launcher.pid, "fakecloud": cloud.pid}).start()
    zuul = Zuul(store, args.providers, (args.hold_min, args.hold_max))
    jobs = [Job(i) for i in range(nodes)]
    result: dict = {"nodes": nodes, "providers": args.providers}
    try:
        # Ramp: everyone asks at once; nobody returns a node until all are in use.
        sampler.window()
        t0 = time.monotonic()
        deadline = t0 + args.ramp_timeout
        while time.monotonic() < deadline:
            if launcher.poll() is not None:
                raise RuntimeError("the launcher exited; see " + size_dir)
            now = time.monotonic()
            for job in jobs:
                zuul.step(job, now, churn=False)
            if all(j.held for j in jobs):
                break
            time.sleep(0.2)
        result["ramp_seconds"] = round(time.monotonic() - t0, 1)
        result["ramp_in_use"] = sum(1 for j in jobs if j.held)
        result["ramp_launcher"] = sampler.summary("launcher")
        ramp_lat = [s for _, s in zuul.latencies]
        result["ramp_latency_p50_s"] = _r(percentile(ramp_lat, 50))
        result["ramp_latency_p95_s"] = _r(percentile(ramp_lat, 95))
        # Stagger the first releases so the steady phase is steady.
        for job in jobs:
            job.until = time.monotonic() + zuul.rng.uniform(0, args.hold_max)
        # Steady: churn.
        http_json(f"{admin_url}/counters/reset", "POST")
        zk0, own0 = zk_namespace_ops(zk_port, namespace), dict(own)
        metrics0 = statsd.metrics
        steady_start = time.time()
        sampler.window()
        t1 = time.monotonic()
        end = t1 + args.steady_seconds
        while time.monotonic() < end:
            now = time.monotonic()
            for job in jobs:
                zuul.step(job, now, churn=True)
            time.sleep(0.2)
        elapsed = time.monotonic() - t1
        zk1 = zk_namespace_ops(zk_port, namespace)
        counters = http_json(f"{admin_url}/counters")
        result.update(steady_seconds=round(elapsed, 1),
                      statsd_metrics_per_s=round((statsd.metrics - metrics0) / elapsed, 1))
        result["launcher"] = sampler.summary("launcher")
        result["fakecloud"] = sampler.summary("fakecloud")
        steady = [s for at, s in zuul.latencies if at >= steady_start]
        added = [max(0.0, s - args.boot_seconds) for s in steady]
        phases = [(a, b) for at, a, b in zuul.phases if at >= steady_start]
        with open(os.path.join(size_dir, "fulfilled.json"), "w") as f:
            # (submitted, node created, fulfilled, server id, provider) per node
            json.dump([s for s in zuul.servers if s[0] >= steady_start], f)
        result["added_latency_parts"] = {
            "to_node_created_p50_s": _r(percentile([a for a, _ in phases], 50)),
            "to_node_created_p95_s": _r(percentile([a for a, _ in phases], 95)),
            "created_to_fulfilled_less_boot_p50_s": _r(percentile(
                [b - args.boot_seconds for _, b in phases], 50)),
            "created_to_fulfilled_less_boot_p95_s": _r(percentile(
                [b - args.boot_seconds for _, b in phases], 95)),
            **active_split(size_dir, [s for s in zuul.servers if s[0] >= steady_start],
                           args.boot_seconds)}
        result.update(
            requests_fulfilled=len(steady), failed=zuul.failed,
            latency_p50_s=_r(percentile(steady, 50)), latency_p95_s=_r(percentile(steady, 95)),
            added_latency_p50_s=_r(percentile(added, 50)),
            added_latency_p95_s=_r(percentile(added, 95)))
        launcher_reads = (zk1[0] - zk0[0]) - (own["reads"] - own0["reads"])
        launcher_writes = (zk1[1] - zk0[1]) - (own["writes"] - own0["writes"])
        result["zk"] = {
            "launcher_reads_per_s": round(launcher_reads / elapsed, 1),
            "launcher_writes_per_s": round(launcher_writes / elapsed, 1),
            "benchmark_reads_per_s": round((own["reads"] - own0["reads"]) / elapsed, 1),
            "benchmark_writes_per_s": round((own["writes"] - own0["writes"]) / elapsed, 1)}
        total = counters.get("total", 0)
        seconds = sum(counters.get("seconds_by_route", {}).values())
        by_project = counters.get("by_project", {})
        result["api"] = {
            "calls_per_min_per_provider_mean": round(
                sum(by_project.values()) / max(1, len(by_project)) * 60 / elapsed, 1),
            "calls_per_min_per_provider_max": round(
                max(by_project.values(), default=0) * 60 / elapsed, 1),
            "fakecloud_mean_answer_ms": round(1000 * seconds / total, 2) if total else None,
            "by_route_per_min": {k: round(sum(v.values()) * 60 / elapsed, 1)
                                 for k, v in counters.get("requests", {}).items()}}
        result["list"] = measure_list(config, clouds, web_port, nodes)
        if args.profile:
            result["profile"] = profile_launcher(launcher.pid, args.profile, nodes, jobs,
                                                 zuul)
    finally:
        sampler.stop()
        statsd.stop()
        for job in jobs:
            try:
                zuul.release(job)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        zuul.cache.stop()
        disconnect(client)
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            launcher.kill()
        cloud.send_signal(signal.SIGTERM)
        cloud.wait(30)
    return result


def active_split(logs: str, servers: list, boot: float) -> dict:
    """Split "node created to fulfilled" with the fakecloud's logs: before the
    server went ACTIVE, the launcher's create path (less the boot); from
    ACTIVE to the first server list of its project that was asked for after
    it (*seen*); from that list's answer to ``fulfilled``."""
    active: dict[str, float] = {}
    lists: dict[str, list[tuple[float, float]]] = {}
    try:
        with open(os.path.join(logs, "servers.jsonl")) as f:
            for line in f:
                t = json.loads(line)
                if t["event"] == "active":
                    active.setdefault(t["server"], t["at"])
        with open(os.path.join(logs, "requests.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if r["route"].endswith("/servers/detail") and r["status"] == 200:
                    lists.setdefault(r["project"], []).append((r["started"], r["finished"]))
    except FileNotFoundError:
        return {}
    before, seen, after, whole = [], [], [], []
    for _, created, done, sid, provider in servers:
        if sid not in active:
            continue
        at = active[sid]
        before.append(at - created - boot)
        whole.append(done - at)
        project = "proj-" + provider.rsplit("-", 1)[-1]
        answered = min((fin for start, fin in lists.get(project, ()) if start >= at),
                       default=None)
        if answered is not None and answered <= done:
            seen.append(answered - at)
            after.append(done - answered)
    figures = {"created_to_active_less_boot": before, "active_to_fulfilled": whole,
               "active_to_listed": seen, "listed_to_fulfilled": after}
    out: dict = {}
    for name, values in figures.items():
        out[f"{name}_p50_s"] = _r(percentile(values, 50))
        out[f"{name}_p95_s"] = _r(percentile(values, 95))
    return out


def _r(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None


def measure_list(config: str, clouds: str, web_port: int, nodes: int) -> dict:
    """``nodepool list`` (a new process: includes Python's start-up), by default
    (the launcher's status API) and with ``--zookeeper``, and /node-list."""
    out: dict = {}
    t = time.monotonic()
    proc = subprocess.run([os.path.join(BIN, "nodepool"), "-c", config, "--clouds", clouds,
                           "list", "--json"], capture_output=True, text=True)
    out["nodepool_list_s"] = round(time.monotonic() - t, 2)
    try:
        out["nodepool_list_rows"] = len(json.loads(proc.stdout))
    except ValueError:
        out["nodepool_list_error"] = proc.stderr[-300:]
    t = time.monotonic()
    proc = subprocess.run([os.path.join(BIN, "nodepool"), "-c", config, "--clouds", clouds,
                           "list", "--json", "--zookeeper"], capture_output=True, text=True)
    out["nodepool_list_zookeeper_s"] = round(time.monotonic() - t, 2)
    if proc.returncode != 0:
        out["nodepool_list_zookeeper_error"] = proc.stderr[-300:]
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "import nodepool.cmd.nodepoolcmd"],
                          capture_output=True)
    out["python_import_s"] = round(time.monotonic() - t, 2)
    times = []
    rows = None
    for _ in range(3):
        t = time.monotonic()
        # A fresh query string each time: the webapp caches answers briefly.
        data = http_json(f"http://127.0.0.1:{web_port}/node-list?_={uuid.uuid4().hex}")
        times.append(time.monotonic() - t)
        rows = len(data) if isinstance(data, list) else None
    out["node_list_http_s"] = [round(x, 3) for x in times]
    out["node_list_rows"] = rows
    return out


def profile_launcher(pid: int, outdir: str, nodes: int, jobs, zuul) -> str | None:
    """py-spy over the running launcher for 30 s of churn (py-spy reads its memory)."""
    spy = shutil.which("py-spy") or os.path.join(BIN, "py-spy")
    if not os.path.exists(spy):
        return None
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"launcher-{nodes}.txt")
    proc = subprocess.Popen([spy, "record", "-p", str(pid), "-d", "30", "-r", "50",
                             "-f", "raw", "-o", path, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 35
    while proc.poll() is None and time.monotonic() < end:
        now = time.monotonic()
        for job in jobs:
            zuul.step(job, now, churn=True)
        time.sleep(0.2)
    proc.wait(30)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="200,1000,2000",
                   help="comma-separated node counts, one run each (default 200,1000,2000)")
    p.add_argument("--providers", type=int, default=10)
    p.add_argument("--boot-seconds", type=float, default=3.0,
                   help="the fakecloud's fixed boot time (subtracted for added latency)")
    p.add_argument("--delete-seconds", type=float, default=2.0)
    p.add_argument("--hold-min", type=float, default=60.0, help="job time, low (s)")
    p.add_argument("--hold-max", type=float, default=180.0, help="job time, high (s)")
    p.add_argument("--steady-seconds", type=float, default=120.0)
    p.add_argument("--ramp-timeout", type=float, default=900.0)
    p.add_argument("--profile", metavar="DIR",
                   help="after the steady phase, py-spy the launcher for 30 s into DIR")
    p.add_argument("--keep", metavar="DIR",
                   help="copy each size's run directory (launcher log, the fakecloud's request "
                        "and transition logs, configs) into DIR")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        zk_state = os.path.join(workdir, "zk")
        zk_port = start_zookeeper(zk_state)
        try:
            for n in [int(x) for x in args.nodes.split(",")]:
                load = os.getloadavg()
                r = run_size(args, n, zk_port, workdir)
                if args.keep:
                    shutil.copytree(os.path.join(workdir, f"n{n}"),
                                    os.path.join(args.keep, f"n{n}"), dirs_exist_ok=True)
                r["loadavg_before"] = [round(x, 2) for x in load]
                r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                results.append(r)
                if not args.json:
                    print(json.dumps(r, indent=1), flush=True)
        finally:
            stop_zookeeper(zk_state)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
    else:
        print_table(machine, results)
    return 0


def print_table(machine: dict, results: list[dict]) -> None:
    print(f"\nmachine: {machine['cpus']} CPUs, Python {machine['python']}, {machine['date']}")
    rows = [
        ("nodes", lambda r: r["nodes"]),
        ("ramp s (all in use)", lambda r: r["ramp_seconds"]),
        ("launcher CPU mean (cores)", lambda r: r["launcher"]["cpu_mean_cores"]),
        ("launcher CPU p95 (cores)", lambda r: r["launcher"]["cpu_p95_cores"]),
        ("launcher CPU mean, ramp", lambda r: r["ramp_launcher"]["cpu_mean_cores"]),
        ("launcher RSS MB", lambda r: r["launcher"]["rss_mb_max"]),
        ("fakecloud CPU mean (cores)", lambda r: r["fakecloud"]["cpu_mean_cores"]),
        ("fakecloud answer ms (mean)", lambda r: r["api"]["fakecloud_mean_answer_ms"]),
        ("API calls/min/provider", lambda r: r["api"]["calls_per_min_per_provider_mean"]),
        ("ZK reads/s (launcher)", lambda r: r["zk"]["launcher_reads_per_s"]),
        ("ZK writes/s (launcher)", lambda r: r["zk"]["launcher_writes_per_s"]),
        ("requests fulfilled (steady)", lambda r: r["requests_fulfilled"]),
        ("latency p50 s", lambda r: r["latency_p50_s"]),
        ("latency p95 s", lambda r: r["latency_p95_s"]),
        ("added latency p50 s", lambda r: r["added_latency_p50_s"]),
        ("added latency p95 s", lambda r: r["added_latency_p95_s"]),
        ("  ACTIVE to fulfilled p50 s",
         lambda r: r["added_latency_parts"]["active_to_fulfilled_p50_s"]),
        ("  ACTIVE to fulfilled p95 s",
         lambda r: r["added_latency_parts"]["active_to_fulfilled_p95_s"]),
        ("    ACTIVE to listed p50/p95", lambda r: "{}/{}".format(
            r["added_latency_parts"]["active_to_listed_p50_s"],
            r["added_latency_parts"]["active_to_listed_p95_s"])),
        ("    listed to fulfilled p50/p95", lambda r: "{}/{}".format(
            r["added_latency_parts"]["listed_to_fulfilled_p50_s"],
            r["added_latency_parts"]["listed_to_fulfilled_p95_s"])),
        ("nodepool list s", lambda r: r["list"]["nodepool_list_s"]),
        ("nodepool list --zookeeper s", lambda r: r["list"]["nodepool_list_zookeeper_s"]),
        ("/node-list s (best)", lambda r: min(r["list"]["node_list_http_s"])),
        ("load avg (1 min) before", lambda r: r["loadavg_before"][0]),
    ]
    for label, get in rows:
        cells = []
        for r in results:
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("-")
        print(f"  {label:30} " + "  ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
