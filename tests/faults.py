"""The fault-injection suite's parts: a ZooKeeper server of its own that a
case can freeze, stop and restart; the launcher as a real process; a
Zuul-like workload; and the invariants checked at the end of every case.

Used by tests/test_fault_suite.py (pytest) and tools/faults.py (the table).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import yaml

from nodepool.zk.client import ZooKeeperServer, ZooKeeperSettings, connect, disconnect
from nodepool.zk.records import NodeRequest
from nodepool.zk.store import ZooKeeperStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZK_TOOL = os.path.join(ROOT, "tools", "zookeeper.py")
BIN = os.path.dirname(sys.executable)
# Where tools/faults.py collects each case's invariants (one JSON line a case).
REPORT_ENV = "NODEPOOL_FAULTS_REPORT"


class ZooKeeperUnderTest:
    """A standalone ZooKeeper on a fixed port with its data in ``directory``,
    so a case can stop it and start it again with its data (sessions
    survive a restart: ZooKeeper persists them)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.port: int | None = None
        self.pid: int | None = None

    def start(self) -> None:
        args = [sys.executable, ZK_TOOL, "start", "--dir", self.directory]
        if self.port:
            args += ["--port", str(self.port)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=90)
        if out.returncode != 0:
            raise RuntimeError(f"ZooKeeper did not start: {out.stderr}")
        with open(os.path.join(self.directory, "state.json")) as f:
            state = json.load(f)
        self.port, self.pid = state["port"], state["pid"]

    def stop(self) -> None:
        subprocess.run([sys.executable, ZK_TOOL, "stop", "--dir", self.directory],
                       capture_output=True, timeout=60)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def settings(self, chroot: str = "/nodepool-faults") -> ZooKeeperSettings:
        return ZooKeeperSettings((ZooKeeperServer("127.0.0.1", self.port, chroot),),
                                 session_timeout=10.0)


def write_launcher_files(directory: str, cloud, zk: ZooKeeperUnderTest,
                         max_servers: int = 10, session_timeout: int = 10) -> tuple[str, str]:
    clouds = cloud.write_clouds_yaml(os.path.join(directory, "clouds.yaml"), api_timeout=5)
    data = {"zookeeper-servers": [{"host": "127.0.0.1", "port": zk.port,
                                   "chroot": "/nodepool-faults"}],
            "zookeeper-timeout": session_timeout,
            "webapp": {"port": 0},
            "labels": [{"name": "small"}],
            "providers": [{"name": "fake", "cloud": "fakecloud", "rate": 0.01,
                           "launch-retries": 3,
                           "cloud-images": [{"name": "img", "image-name": "cirros"}],
                           "pools": [{"name": "main", "max-servers": max_servers,
                                      "host-key-checking": False,
                                      "auto-floating-ip": False,
                                      "labels": [{"name": "small", "cloud-image": "img",
                                                  "flavor-name": "m1.small"}]}]}]}
    path = os.path.join(directory, "nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path, clouds


class LauncherProcess:
    """``nodepool-launcher -f`` as a child process, restartable."""

    def __init__(self, config: str, clouds: str, log_path: str):
        self.args = [f"{BIN}/nodepool-launcher", "-f", "-c", config, "--clouds", clouds]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process does nothing at all (a stalled VM, a long
        GC pause) while its ZooKeeper session runs out."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the launcher logged after ``offset`` (a ``log_size()``)."""
        try:
            with open(self.log_path) as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)   # a frozen one could not stop
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def webapp_port(self) -> int | None:
        """The status API's port, from the log line the launcher writes."""
        try:
            text = open(self.log_path).read()
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            if "status API on http://" in line:
                return int(line.rsplit(":", 1)[1].strip().strip("/"))
        return None


@dataclass
class RequestRecord:
    id: str
    submitted: float
    fulfilled: float | None = None
    nodes: list[str] = field(default_factory=list)
    failed: bool = False
    returned: bool = False
    cancelled: bool = False


class ZuulLikeWorkload:
    """Keeps ``concurrency`` single-node requests open until ``total`` were
    submitted; for each fulfilled one, does what Zuul's executor does (lock
    the node, in-use, a short job, used, unlock, delete the request).  Every
    ZooKeeper step is retried: the workload rides out the faults too."""

    def __init__(self, zk: ZooKeeperUnderTest, total: int, concurrency: int,
                 job_seconds: tuple[float, float] = (0.5, 1.5)):
        self.zk = zk
        self.total = total
        self.concurrency = concurrency
        self.job_seconds = job_seconds
        self.records: dict[str, RequestRecord] = {}
        self.node_owners: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="workload")
        self._jobs: list[threading.Thread] = []
        self.client = connect(zk.settings(), connect_timeout=30)
        self.store = ZooKeeperStore(self.client)
        self.store.ensure_roots()
        self.errors: list[str] = []
        self._rng = random.Random(7)
        # Cleared by hold(): no new requests until release().
        self._submitting = threading.Event()
        self._submitting.set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for job in self._jobs:
            job.join(30)
        disconnect(self.client)

    def hold(self) -> None:
        """Submit no new requests until release(); the open ones go on.
        While held and short of ``total``, the workload cannot be done."""
        self._submitting.clear()

    def release(self) -> None:
        self._submitting.set()

    @property
    def done(self) -> bool:
        return len(self.records) >= self.total and all(
            r.returned or r.failed or r.cancelled for r in self.records.values())

    def open_requests(self) -> list[RequestRecord]:
        return [r for r in self.records.values()
                if r.fulfilled is None and not r.failed and not r.cancelled]

    def cancel(self, n: int) -> list[str]:
        """Cancel up to ``n`` open requests as Zuul does: delete them."""
        done = []
        for rec in self.open_requests()[:n]:
            rec.cancelled = True
            try:
                self.client.delete(f"/nodepool/requests/{rec.id}")
            except Exception:  # noqa: BLE001 - fulfilled and returned meanwhile
                rec.cancelled = False
                continue
            done.append(rec.id)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - ZooKeeper faults: try again
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(0.2)

    def _step(self) -> None:
        while (self._submitting.is_set() and len(self.open_requests()) < self.concurrency
               and len(self.records) < self.total):
            req = self.store.create_request(NodeRequest(
                state="requested", node_types=["small"], requestor="zuul-faults",
                requestor_data={"job_name": "tox"}, tenant_name="tenant-one",
                event_id="ev"), 200)
            self.records[req.id] = RequestRecord(req.id, time.monotonic())
        for rec in self.open_requests():
            req = self.store.get_request(rec.id)
            if req is None:
                rec.failed = True
            elif req.state == "failed":
                rec.failed = True
            elif req.state == "fulfilled":
                rec.fulfilled = time.monotonic()
                rec.nodes = list(req.nodes)
                for node_id in req.nodes:
                    self.node_owners.setdefault(node_id, []).append(rec.id)
                job = threading.Thread(target=self._job, args=(rec,), daemon=True)
                self._jobs.append(job)
                job.start()

    def _job(self, rec: RequestRecord) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                self._use_and_return(rec)
                rec.returned = True
                return
            except Exception as e:  # noqa: BLE001 - retried: the fault may heal
                self.errors.append(f"job {rec.id}: {type(e).__name__}: {e}")
                time.sleep(0.5)

    def _use_and_return(self, rec: RequestRecord) -> None:
        held = []
        try:
            for node_id in rec.nodes:
                got = self.store.lock_and_read_node(node_id, timeout=30)
                if got is None:
                    raise RuntimeError(f"node {node_id} is gone or locked")
                node, lock = got
                if node.state == "ready":
                    node.state = "in-use"
                    self.store.store_node(node, lock)
                held.append((node, lock))
            if self.store.request_exists(rec.id):
                self.client.delete(f"/nodepool/requests/{rec.id}")
            time.sleep(self._rng.uniform(*self.job_seconds))
            for node, lock in held:
                node.state = "used"
                self.store.store_node(node, lock)
        finally:
            for _, lock in held:
                lock.release()


@dataclass
class CaseResult:
    case: str
    invariants: dict[str, tuple[bool, str]]

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.invariants.values())


def check_invariants(case: str, workload: ZuulLikeWorkload, cloud,
                     launcher: LauncherProcess | list[LauncherProcess], store: ZooKeeperStore,
                     settle: float = 90.0,
                     extra: dict[str, tuple[bool, str]] | None = None) -> CaseResult:
    """After the workload drained: wait (bounded) for the launchers to
    settle, then check every invariant (and the case's own, ``extra``); the
    result says which held."""
    launchers = launcher if isinstance(launcher, list) else [launcher]
    deadline = time.monotonic() + settle

    def servers_match_nodes() -> bool:
        nodes = store.list_nodes()
        ours = {n.external_id for n in nodes if n.external_id}
        return {s["id"] for s in cloud.servers()} <= ours and \
            all(n.state in ("ready", "hold") for n in nodes)

    while time.monotonic() < deadline and not servers_match_nodes():
        time.sleep(0.5)
    records = list(workload.records.values())
    inv: dict[str, tuple[bool, str]] = {}
    cancelled = [r.id for r in records if r.cancelled]
    stuck = [r.id for r in records if r.fulfilled is None and not r.failed
             and not r.cancelled]
    failed = [r.id for r in records if r.failed]
    served = len(records) - len(stuck) - len(failed) - len(cancelled)
    inv["every request fulfilled"] = (not stuck and not failed and len(records) ==
                                      workload.total,
                                      f"{served}/{workload.total - len(cancelled)} fulfilled "
                                      f"({len(cancelled)} cancelled), stuck {stuck}, "
                                      f"failed {failed}")
    doubled = {n: r for n, r in workload.node_owners.items() if len(r) > 1}
    inv["no node in two requests"] = (not doubled, f"{doubled}")
    by_node: dict[str, list[str]] = {}
    for s in cloud.servers():
        node_id = (s.get("metadata") or {}).get("nodepool_node_id")
        by_node.setdefault(node_id, []).append(s["id"])
    dup = {n: ids for n, ids in by_node.items() if len(ids) > 1}
    inv["one server per node"] = (not dup, f"{dup}")
    nodes = store.list_nodes()
    leftover = [f"{n.id}:{n.state}" for n in nodes if n.state not in ("ready", "hold")]
    inv["no node stuck"] = (not leftover, f"{leftover}")
    ours = {n.external_id for n in nodes if n.external_id}
    leaked = [s["id"] for s in cloud.servers() if s["id"] not in ours]
    inv["no leaked server"] = (not leaked, f"{leaked}")
    servers = cloud.servers()
    in_use = next(iter(cloud.usage().values()))["in_use"]
    loose = in_use["ports"] - sum(len(s["ports"]) for s in servers)
    inv["no leaked port or floating IP"] = (loose == 0 and in_use["floating_ips"] == 0,
                                            f"{loose} port(s), {in_use['floating_ips']} "
                                            "floating IP(s)")
    quota = cloud.counters().get("quota_403", 0)
    inv["no quota 403"] = (quota == 0, f"{quota}")
    exits = [p.proc.poll() if p.proc else "never started" for p in launchers]
    inv["launcher alive"] = (all(e is None for e in exits), f"exit {exits}")
    health = [_get(f"http://127.0.0.1:{port}/health") if (port := p.webapp_port()) else None
              for p in launchers]
    inv["/health OK at the end"] = (all(h == 200 for h in health), f"HTTP {health}")
    locked = [n.id for n in nodes if store.node_locked(n.id)]
    inv["no lock left"] = (not locked, f"{locked}")
    inv.update(extra or {})
    result = CaseResult(case, inv)
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"case": case, "invariants": inv}) + "\n")
    return result


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@contextlib.contextmanager
def observer(zk: ZooKeeperUnderTest):
    client = connect(zk.settings(), connect_timeout=30)
    try:
        store = ZooKeeperStore(client)
        store.ensure_roots()
        yield store
    finally:
        disconnect(client)
