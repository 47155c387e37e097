"""statsd metrics from a running launcher, received on a real UDP socket.

The launcher uses the real statsd client (configured from ``STATSD_HOST``
as upstream does); the test plays the statsd server.
"""

from __future__ import annotations

import socket
import threading

import pytest

from nodepool.launcher import launcher as launcher_mod
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import (finished, run_launcher, store,  # noqa: F401 - fixtures
                                 use_and_return, write_config, zuul_request)

pytestmark = pytest.mark.timeout(120)


class StatsdReceiver:
    """Collects statsd lines (``name:value|type``) sent over UDP."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            with self._lock:
                self.lines.extend(data.decode().splitlines())

    def metrics(self) -> list[tuple[str, float, str]]:
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            name, rest = line.split(":", 1)
            value, kind = rest.split("|")[:2]
            out.append((name, float(value), kind))
        return out

    def values(self, name: str, kind: str) -> list[float]:
        return [v for n, v, k in self.metrics() if n == name and k == kind]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def statsd(monkeypatch):
    receiver = StatsdReceiver()
    monkeypatch.setenv("STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("STATSD_PORT", str(receiver.port))
    monkeypatch.delenv("STATSD_PREFIX", raising=False)
    monkeypatch.setattr(launcher_mod, "STATS_INTERVAL", 0.5)
    yield receiver
    receiver.close()


def test_launcher_reports_nodes_launches_api_calls_and_pauses(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, statsd):  # noqa: F811
    # Room for two servers only, so the second request pauses the pool.
    cloud = make_fakecloud({"servers": {"boot_seconds": 0.2, "delete_seconds": 0.2}})
    cloud.set_limits(instances=2)
    launcher = run_launcher(write_config(tmp_path, cloud, zk_settings))
    first = zuul_request(store, ["small", "small"])
    done = wait_for(lambda: finished(store, first.id), 30, what="first fulfilment")
    assert done.state == "fulfilled"
    wait_for(lambda: 2.0 in statsd.values("nodepool.nodes.ready", "g"), 15,
             what="ready gauge")
    assert 2.0 in statsd.values("nodepool.provider.fake.nodes.ready", "g")
    assert 2.0 in statsd.values("nodepool.label.small.nodes.ready", "g")
    # Two nodes launched ready for one request: the counter counts nodes.
    wait_for(lambda: sum(statsd.values("nodepool.launch.provider.fake.ready", "c")) == 2, 15,
             what="two launches counted")
    # API calls: counted, and timed.
    wait_for(lambda: sum(statsd.values("nodepool.task.fake.compute_create_server", "c")) == 2,
             15, what="two creates counted")
    assert statsd.values("nodepool.task.fake.compute_create_server", "ms")
    assert statsd.values("nodepool.task.fake.compute_list_servers", "c")
    # The API budget: queue wait per call kind, concurrency now.
    assert statsd.values("nodepool.task.fake.compute_create_server.queue_wait", "ms")
    assert statsd.values("nodepool.task.fake.compute_list_servers.in_flight", "g")
    assert statsd.values("nodepool.provider.fake.api.concurrency_limit", "g")
    assert statsd.values("nodepool.provider.fake.quota.headroom.instances", "g")
    # No headroom for a second node: the pool is reported paused...
    second = zuul_request(store, ["small"])
    wait_for(lambda: 1.0 in statsd.values("nodepool.provider.fake.pool.main.paused", "g"), 15,
             what="paused gauge")
    # ...and unpaused once the first node is used and deleted.
    use_and_return(store, done)
    assert wait_for(lambda: finished(store, second.id), 30, what="second fulfilment")
    n = len(statsd.metrics())
    wait_for(lambda: any(name == "nodepool.provider.fake.pool.main.paused" and v == 0.0
                         for name, v, _ in statsd.metrics()[n:]), 15, what="pause cleared")
    assert cloud.counters()["quota_403"] == 0
    assert launcher.stats.client is not None
