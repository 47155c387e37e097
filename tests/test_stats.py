"""statsd metrics from a running launcher, received on a real UDP socket.

The launcher uses the real statsd client (configured from ``STATSD_HOST``
as upstream does); the test plays the statsd server.
"""

from __future__ import annotations

import socket
import threading

import pytest

from nodepool.launcher import maintenance
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
    monkeypatch.setattr(maintenance, "STATS_INTERVAL", 0.5)
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


def _latest(statsd, name: str, kind: str = "g") -> float | None:
    values = statsd.values(name, kind)
    return values[-1] if values else None


def test_upstream_metrics_for_a_launch_a_failure_and_a_delete(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, statsd,  # noqa: F811
        fakecloud_connect):
    """What an upstream Grafana dashboard reads, with upstream's types: the
    launch timers (and counters) per provider, AZ and requestor, the error
    reason, zeroed node gauges, limits, addressable requests, leaks, the
    ZooKeeper queues, and openstacksdk's own API metrics."""
    cloud = make_fakecloud({"servers": {"boot_seconds": 0.2, "delete_seconds": 0.2}})
    config = write_config(tmp_path, cloud, zk_settings, extra={
        "tenant-resource-limits": [{"tenant-name": "tenant-one", "max-servers": 5,
                                    "max-cores": 40}]})
    run_launcher(config)
    host = socket.gethostname()

    # -- a launch -------------------------------------------------------------
    ok = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, ok.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    az = store.get_node(done.nodes[0]).az
    assert az == "nova"
    ready_names = ["nodepool.launch.ready", "nodepool.launch.provider.fake.ready",
                   "nodepool.launch.provider.fake.nova.ready",
                   "nodepool.launch.requestor.zuul-test.ready"]
    for name in ready_names:
        wait_for(lambda name=name: statsd.values(name, "ms"), 15, what=f"timer {name}")
        assert statsd.values(name, "c") == [1.0], name
    wait_for(lambda: _latest(statsd, "nodepool.label.small.nodes.ready") == 1.0, 15,
             what="ready label gauge")
    # Every state is sent, the empty ones as 0.
    for state in ("building", "in-use", "used", "hold", "deleting", "failed", "aborted",
                  "init", "testing"):
        assert _latest(statsd, f"nodepool.label.small.nodes.{state}") == 0.0, state
        assert _latest(statsd, f"nodepool.provider.fake.nodes.{state}") == 0.0, state
    assert _latest(statsd, "nodepool.provider.fake.max_servers") == 10.0
    assert _latest(statsd, "nodepool.tenant_limits.tenant-one.instances") == 5.0
    assert _latest(statsd, "nodepool.tenant_limits.tenant-one.cores") == 40.0
    assert _latest(statsd, "nodepool.provider.fake.pool.main.addressable_requests") is not None
    for queue in ("zk.client.connection_queue", "zk.node_cache.event_queue",
                  "zk.node_cache.playback_queue", "zk.request_cache.event_queue",
                  "zk.request_cache.playback_queue"):
        assert _latest(statsd, f"nodepool.launcher.{host}.{queue}") is not None, queue
    # openstacksdk reports every API call itself, as under upstream.
    api = [n for n, _, kind in statsd.metrics()
           if n.startswith("openstack.api.compute.") and kind == "ms"]
    assert api, "no openstack.api.compute.* timers"

    # -- a failure: every boot goes ERROR; two attempts (launch-retries: 2) ---
    cloud.set_server_behaviour(error_boot_share=1.0)
    bad = zuul_request(store, ["small"])
    failed = wait_for(lambda: finished(store, bad.id), 30, what="failed request")
    assert failed.state == "failed"
    wait_for(lambda: sum(statsd.values("nodepool.launch.error.status", "c")) == 2, 15,
             what="two error.status attempts")
    assert len(statsd.values("nodepool.launch.error.status", "ms")) == 2
    assert statsd.values("nodepool.launch.provider.fake.error.status", "ms")
    assert statsd.values("nodepool.launch.requestor.zuul-test.error.status", "ms")
    cloud.set_server_behaviour(error_boot_share=0.0)

    # -- a delete: the gauges go back to 0 rather than keeping the last value --
    use_and_return(store, done)
    wait_for(lambda: not store.list_nodes(), 30, what="nodes deleted")
    n = len(statsd.metrics())
    wait_for(lambda: any(name == "nodepool.label.small.nodes.ready" and v == 0.0
                         for name, v, _ in statsd.metrics()[n:]), 15,
             what="ready gauge back to 0")
    assert any(name == "nodepool.nodes.used" and v == 0.0
               for name, v, _ in statsd.metrics()[n:])

    # -- a leak: a server of ours whose node ZooKeeper does not know ------------
    other = fakecloud_connect(cloud)
    other.create_server("leaked", image="cirros", flavor="m1.small", wait=False,
                        meta={"nodepool_provider_name": "fake",
                              "nodepool_node_id": "0000099999",
                              "nodepool_pool_name": "main", "nodepool_attempt": "1"})
    wait_for(lambda: sum(statsd.values("nodepool.provider.fake.leaked.instances", "c")) == 1,
             30, what="leaked instance counted")


def test_openstacksdk_gets_the_statsd_settings_from_the_environment():
    from nodepool.driver.openstack.cloud import statsd_settings

    assert statsd_settings({}) is None
    assert statsd_settings({"STATSD_HOST": "graphite", "STATSD_PORT": "8126",
                            "STATSD_PREFIX": "np"}) == {
        "host": "graphite", "port": 8126, "prefix": "np"}
    assert statsd_settings({"STATSD_HOST": "graphite"}) == {
        "host": "graphite", "port": None, "prefix": None}


def test_leaked_ports_and_floating_ips_are_counted_as_upstream(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, statsd,  # noqa: F811
        fakecloud_connect):
    # Every deleted server leaves its port behind DOWN, as after a lost unbind.
    cloud = make_fakecloud({"servers": {"boot_seconds": 0.1, "delete_seconds": 0.1,
                                        "leak_port_share": 1.0}})
    run_launcher(write_config(tmp_path, cloud, zk_settings, provider={
        "clean-floating-ips": True, "port-cleanup-interval": 1}))
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    use_and_return(store, done)
    other = fakecloud_connect(cloud)
    ext = next(n for n in other.network.networks() if n.is_router_external)
    other.network.create_ip(floating_network_id=ext.id)  # bound to no port: leaked
    wait_for(lambda: sum(statsd.values("nodepool.provider.fake.leaked.ports", "c")) == 1, 30,
             what="leaked port counted")
    wait_for(lambda: sum(statsd.values("nodepool.provider.fake.leaked.floatingips", "c")) == 1,
             30, what="leaked floating IP counted")


# -- the pure parts -------------------------------------------------------------------


class _Node:
    def __init__(self, state, provider, labels):
        self.state, self.provider, self.type = state, provider, labels


class _Pool:
    def __init__(self, provider_name, name, labels):
        self.provider_name, self.name, self.supported_labels = provider_name, name, labels


class _Request:
    def __init__(self, labels):
        self.node_types = labels


def test_node_gauges_zero_every_state_and_count_unknown_providers_and_labels():
    from nodepool.launcher.stats import ALL_NODE_STATES, node_state_gauges

    gauges = node_state_gauges([_Node("ready", "p1", ["small"]),
                                _Node("in-use", "elsewhere", ["big", "small"])],
                               providers=["p1"], labels=["small", "idle"])
    assert gauges["nodepool.nodes.ready"] == 1 and gauges["nodepool.nodes.deleting"] == 0
    for state in ALL_NODE_STATES:
        assert f"nodepool.label.idle.nodes.{state}" in gauges
        assert f"nodepool.provider.p1.nodes.{state}" in gauges
    assert gauges["nodepool.label.small.nodes.in-use"] == 1
    assert gauges["nodepool.provider.elsewhere.nodes.in-use"] == 1
    assert gauges["nodepool.label.big.nodes.in-use"] == 1


def test_addressable_requests_count_requests_whose_labels_a_pool_all_serves():
    from nodepool.launcher.stats import addressable_request_gauges

    gauges = addressable_request_gauges(
        [_Pool("p1", "main", ["small", "big"]), _Pool("p.2", "x:y", ["small"])],
        [_Request(["small"]), _Request(["small", "big"]), _Request(["gpu"])])
    assert gauges == {"nodepool.provider.p1.pool.main.addressable_requests": 2,
                      "nodepool.provider.p_2.pool.x_y.addressable_requests": 1}


def test_launch_names_are_upstreams_four():
    from nodepool.driver.outcomes import LaunchOutcome
    from nodepool.launcher.stats import launch_metric_names

    assert launch_metric_names(LaunchOutcome("p1", "error.status", 5, "az.1", "zuul:ci")) == [
        "nodepool.launch.provider.p1.error.status", "nodepool.launch.error.status",
        "nodepool.launch.provider.p1.az_1.error.status",
        "nodepool.launch.requestor.zuul_ci.error.status"]
    assert launch_metric_names(LaunchOutcome("p1", "ready", 5)) == [
        "nodepool.launch.provider.p1.ready", "nodepool.launch.ready"]
