"""OpenStackProvider against the simulated cloud, through the real openstacksdk.

No ZooKeeper here: each test drives the provider the way the request handler
does (``capacity``, ``start_build``/``poll_build``, ``start_delete``/
``poll_delete``) while the provider's own thread runs its loop.  Outcomes are
checked at the cloud (its request counters, servers and usage); the
provider's status and the quota ledger are checked where their visible state
is the point.  Every wait has a deadline; no test asserts elapsed time.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.driver.openstack import create_machine
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack import provider as provider_mod
from nodepool.driver.openstack.provider import OpenStackProvider
from nodepool.quota import QuotaLedger, Resources
from nodepool.quota.backoff import BackoffPolicy
from nodepool.quota.refresh import RefreshPolicy
from nodepool.requests.builder import (BuildSpec, BuildState, Capacity, DeleteSpec,
                                       DeleteState)
from tests.fixtures.fakecloud import wait_for

pytestmark = pytest.mark.timeout(60)

LIST_ROUTE = "GET /compute/v2.1/servers/detail"
PORTS_ROUTE = "GET /network/v2.0/ports"
FIPS_ROUTE = "GET /network/v2.0/floatingips"
CREATE_ROUTE = "POST /compute/v2.1/servers"
DELETE_ROUTE = "DELETE /compute/v2.1/servers/{server_id}"
# Routes that look at one server, or its ports or floating IPs: the N+1 of incident 1.
PER_SERVER_ROUTES = ("GET /compute/v2.1/servers/{server_id}",
                     "GET /network/v2.0/ports/{port_id}",
                     "GET /network/v2.0/floatingips/{floatingip_id}")


def provider_config(*, pool: dict | None = None, label: dict | None = None,
                    image: dict | None = None, **provider: Any) -> dict:
    """nodepool.yaml as a dict: one provider ``p1``, pool ``main``, label ``small``."""
    lab = {"name": "small", "cloud-image": "img", "flavor-name": "m1.small"}
    lab.update(label or {})
    pl = {"name": "main", "max-servers": 50, "host-key-checking": False,
          "auto-floating-ip": False, "labels": [lab]}
    pl.update(pool or {})
    img = {"name": "img", "image-name": "cirros"}
    img.update(image or {})
    prov = {"name": "p1", "cloud": "fakecloud", "rate": 0.01, "launch-retries": 3,
            "cloud-images": [img], "pools": [pl]}
    prov.update(provider)
    return {"zookeeper-servers": [{"host": "127.0.0.1"}],
            "labels": [{"name": "small"}], "providers": [prov]}


class Harness:
    """A fakecloud, a provider on it, and the bookkeeping a request handler keeps."""

    def __init__(self, cloud, tmp_path, config: dict, *, api_timeout: float = 5,
                 server_list_interval: float = 0.1, leak_interval: float = 3600.0,
                 ledger: QuotaLedger | None = None, clouds_extra: dict | None = None,
                 build_progress=None):
        self.cloud = cloud
        clouds = cloud.write_clouds_yaml(os.path.join(tmp_path, "clouds.yaml"),
                                         api_timeout=api_timeout, extra=clouds_extra)
        path = os.path.join(tmp_path, "nodepool.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.config, _ = load_config(path, clouds, drivers=registry.drivers())
        self.ledger = ledger or QuotaLedger(
            refresh_policy=RefreshPolicy(min_interval=0.2, max_age=2.0),
            backoff_policy=BackoffPolicy(initial=1.0, maximum=2.0))
        # node id -> external id, as ZooKeeper would tell the leak cleaner.
        self.known: dict[str, str | None] = {}
        self._known_lock = threading.Lock()
        self.provider = OpenStackProvider(
            self.config.providers["p1"], self.ledger, known_nodes=self.known_nodes,
            server_list_interval=server_list_interval, leak_interval=leak_interval,
            build_progress=build_progress)
        self._seq = 0
        self.provider.start()

    def known_nodes(self) -> dict[str, str | None]:
        with self._known_lock:
            return dict(self.known)

    def wait_available(self, label: str = "small", timeout: float = 15) -> None:
        wait_for(lambda: self.provider.capacity([label]) is Capacity.AVAILABLE,
                 timeout=timeout, what="capacity AVAILABLE")

    def spec(self, label: str = "small", node_id: str | None = None) -> BuildSpec:
        if node_id is None:
            self._seq += 1
            node_id = f"{self._seq:010d}"
        with self._known_lock:
            self.known[node_id] = None
        return BuildSpec(node_id=node_id, label=label, provider_name="p1", pool_name="main")

    def start(self, n: int, label: str = "small") -> list[str]:
        return [self.provider.start_build(self.spec(label)) for _ in range(n)]

    def finish_builds(self, handles, *, timeout: float = 30, on_ready=None) -> dict:
        """Poll until every build is READY or FAILED; returns handle -> status."""
        done: dict = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(handles):
            for h in handles:
                if h in done:
                    continue
                st = self.provider.poll_build(h)
                if st.state in (BuildState.READY, BuildState.FAILED):
                    done[h] = st
                    if st.info.external_id:
                        with self._known_lock:
                            self.known[h] = st.info.external_id
                    if on_ready is not None and st.state is BuildState.READY:
                        on_ready(h, st)
            if time.monotonic() > deadline:
                pending = [h for h in handles if h not in done]
                raise AssertionError(f"builds {pending} not finished after {timeout}s: "
                                     f"{self.provider.status()['builds']}")
            time.sleep(0.05)
        return done

    def delete(self, node_id: str, external_id: str | None, state: str = "used",
               awaited: bool = False):
        return self.provider.start_delete(DeleteSpec(
            node_id=node_id, provider_name="p1", pool_name="main", labels=("small",),
            external_id=external_id, state=state, awaited=awaited))

    def finish_deletes(self, handles, *, timeout: float = 30) -> None:
        pending = set(handles)
        deadline = time.monotonic() + timeout
        while pending:
            for h in list(pending):
                st = self.provider.poll_delete(h)
                if st.state is DeleteState.DONE:
                    pending.discard(h)
                    with self._known_lock:
                        self.known.pop(h, None)
            if time.monotonic() > deadline:
                raise AssertionError(f"deletes {sorted(pending)} not done after {timeout}s: "
                                     f"{self.provider.status()['deletes']}")
            time.sleep(0.05)

    def quota(self) -> dict:
        return self.ledger.describe("p1")["providers"]["p1"]

    def ledger_idle(self) -> bool:
        q = self.quota()
        return not any(q["servers"].values()) and \
            all(r["ledger_used"] == 0 for r in q["resources"].values())

    def servers_of_ours(self) -> list[dict]:
        return [s for s in self.cloud.servers()
                if s["metadata"].get(srv.META_PROVIDER) == "p1"]

    def stop(self) -> None:
        self.provider.stop(wait=5)


@pytest.fixture
def harness(make_fakecloud, tmp_path, monkeypatch):
    # A quicker provider loop and retry pause than production's, so each test
    # runs in seconds; the logic under test is the same.
    monkeypatch.setattr(provider_mod, "LOOP_INTERVAL", 0.1)
    monkeypatch.setattr(create_machine, "RETRY_DELAY", 0.2)
    made: list[Harness] = []

    def make(cloud_config: dict | None = None, config: dict | None = None,
             **kwargs: Any) -> Harness:
        cloud = make_fakecloud(cloud_config)
        h = Harness(cloud, str(tmp_path), config or provider_config(), **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def limited(instances: int = 10, cores: int = 40, ram: int = 102400, *,
            volumes: int = 10, gigabytes: int = 1000, **servers: Any) -> dict:
    """A fakecloud config with one project (the fixture's default user) and these limits."""
    return {"projects": [{"name": "ci", "users": [{"name": "nodepool",
                                                   "password": "nodepool-secret"}],
                          "limits": {"instances": instances, "cores": cores, "ram": ram,
                                     "volumes": volumes, "gigabytes": gigabytes}}],
            "servers": servers}


# ---------------------------------------------------------------------------
# 1. The plain life of a node


def test_build_ready_then_delete_returns_everything(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3))
    h.wait_available()
    handles = h.start(3)
    done = h.finish_builds(handles)
    flavor = next(f for f in h.provider.catalog.items("flavors") if f["name"] == "m1.small")
    ids = set()
    for st in done.values():
        assert st.state is BuildState.READY, st.reason
        info = st.info
        assert info.external_id and info.interface_ip
        assert info.resources == {"cores": flavor["vcpus"], "ram": flavor["ram"],
                                  "instances": 1}
        assert info.cloud == "fakecloud" and info.hostname
        ids.add(info.external_id)
    listed = {s["id"]: s for s in h.cloud.servers()}
    assert ids <= set(listed)
    for handle, st in done.items():
        server = listed[st.info.external_id]
        assert server["state"] == "ACTIVE"
        assert server["metadata"][srv.META_NODE] == handle
        assert server["metadata"][srv.META_PROVIDER] == "p1"
    # The ledger counts exactly these three servers.
    wait_for(lambda: h.quota()["resources"]["instances"]["ledger_used"] == 3, timeout=5)

    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    assert h.cloud.servers() == []
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    assert h.cloud.counters()["quota_403"] == 0
    assert h.cloud.request_count(DELETE_ROUTE) == 3
    # Every server list the provider asked for reached nova: none was answered
    # from openstacksdk's response cache (clouds.yaml caches servers for 5 s).
    h.stop()
    asked = h.provider.gate.stats()["compute.list_servers"]["count"]
    assert asked >= 3   # several lists within the 5 s the cache would keep one
    assert h.cloud.request_count(LIST_ROUTE) == asked


def test_server_deleted_behind_our_back_is_released_with_its_node(harness, fakecloud_connect):
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.2))
    h.wait_available()
    [node] = h.start(1)
    st = h.finish_builds([node])[node]
    assert st.state is BuildState.READY, st.reason
    # Someone else deletes the server; the node still exists (in ZooKeeper).
    fakecloud_connect(h.cloud).delete_server(st.info.external_id)
    wait_for(lambda: h.cloud.servers() == [], timeout=5)
    wait_for(lambda: h.provider.servers.snapshot.get(st.info.external_id) is None, timeout=5)
    assert h.quota()["resources"]["instances"]["ledger_used"] == 1
    # Deleting the node finds nothing to delete and frees what the node held.
    h.finish_deletes([h.delete(node, st.info.external_id)])
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_a_handed_over_server_deleted_elsewhere_frees_its_quota(harness, fakecloud_connect):
    """Another launcher serving the same provider (or an operator) deleted
    the server of a node we built and handed over: nova no longer lists it,
    so the ledger lets it go without waiting for a node deletion of ours."""
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.2))
    h.wait_available()
    [node] = h.start(1)
    st = h.finish_builds([node])[node]
    assert st.state is BuildState.READY, st.reason
    h.provider.forget_build(node)      # handed over: no machine follows it now
    wait_for(lambda: h.quota()["resources"]["instances"]["ledger_used"] == 1, timeout=5)
    fakecloud_connect(h.cloud).delete_server(st.info.external_id)
    wait_for(h.ledger_idle, timeout=10, what="ledger back to zero")
    assert h.cloud.servers() == []


# ---------------------------------------------------------------------------
# 2. Quota contention: far more demand than instance quota


def test_contention_never_draws_a_quota_403(harness):
    h = harness(limited(instances=3, boot_seconds=[0.2, 0.4], delete_seconds=[0.5, 0.8]))
    h.wait_available()
    handles = h.start(12)
    deletes = []
    done = h.finish_builds(handles, timeout=60,
                           on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    assert all(st.state is BuildState.READY for st in done.values()), \
        {k: st.reason for k, st in done.items()}
    h.finish_deletes(deletes)
    counters = h.cloud.counters()
    assert counters["quota_403"] == 0, counters
    assert h.cloud.request_count(CREATE_ROUTE, 202) == 12
    assert h.cloud.servers() == []
    assert h.cloud.peak_usage()["instances"] <= 3
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    assert h.provider.counters["launch_failures"] == 0


def test_a_freed_server_nova_surely_counted_needs_no_limits_read(harness):
    # One instance of quota.  The server exists when a limits reading is
    # taken; once it is deleted and gone, the ledger knows nova's figure
    # counted it (listed, and its DELETE accepted, after the reading), so
    # the instance is free again without reading the limits once more.
    h = harness(limited(instances=1, boot_seconds=0.1, delete_seconds=0.3))
    h.wait_available()
    [node] = h.start(1)
    done = h.finish_builds([node])
    assert done[node].state is BuildState.READY
    created_at = time.monotonic()
    wait_for(lambda: (h.quota()["limits"]["read_at"] or 0) > created_at, timeout=10,
             what="a limits reading taken while the server exists")
    wait_for(lambda: h.quota()["resources"]["instances"]["nova_used"] == 1, timeout=10)
    # From now on limits are read only when something makes the reading stale.
    h.ledger.refresh_policy = RefreshPolicy(min_interval=0, max_age=3600)
    reads = h.cloud.request_count("GET /compute/v2.1/limits")
    assert h.provider.capacity(["small"]) is Capacity.WAIT   # a request waits
    deletion = h.delete(node, done[node].info.external_id)
    wait_for(lambda: h.provider.capacity(["small"]) is Capacity.AVAILABLE, timeout=10,
             what="the instance free again")
    h.finish_deletes([deletion])
    # A forced read would start on the loop's next pass: let a few go by.
    lists = h.cloud.request_count(LIST_ROUTE)
    wait_for(lambda: h.cloud.request_count(LIST_ROUTE) >= lists + 3, timeout=10)
    assert h.quota()["resources"]["instances"]["freed_since_reading"] == 1
    assert h.cloud.request_count("GET /compute/v2.1/limits") == reads
    assert h.cloud.counters()["quota_403"] == 0


def test_a_limits_reading_taken_while_a_deleted_server_waits_is_anchored_by_a_list(
        harness, tmp_path):
    # The ledger frees a gone server only if a list requested after the
    # reading still showed it (else: did nova count it?).  While a request
    # waits, a reading applied during a delete is followed by a list at
    # once, not at the pace (30 s here), nor only when the server has
    # likely gone (5 s learned), by which time it may be gone unseen.
    log_path = str(tmp_path / "requests.log")
    h = harness(dict(limited(instances=1, boot_seconds=0.1, delete_seconds=5.0),
                     request_log=log_path))
    for _ in range(3):
        h.provider.pacer.delete_durations.record(5.0, 5.0)
    h.wait_available()
    [first] = h.start(1)
    done = h.finish_builds([first])
    h.provider.servers.interval = 30.0
    assert h.provider.capacity(["small"]) is Capacity.WAIT   # a request waits
    h.ledger.refresh_policy = RefreshPolicy(min_interval=0, max_age=3600)
    h.delete(first, done[first].info.external_id)
    wait_for(lambda: h.provider.status()["deletes"] and h.cloud.request_count(
        "DELETE /compute/v2.1/servers/{server_id}", 204) == 1, timeout=10,
        what="the DELETE accepted")
    deleted_at = time.time()
    h.ledger.refresh_policy = RefreshPolicy(min_interval=0, max_age=0.5)
    wait_for(lambda: any(json.loads(line)["route"] == "GET /compute/v2.1/limits"
                         and json.loads(line)["started"] > deleted_at
                         for line in open(log_path)), timeout=10,
             what="a limits reading after the DELETE")
    h.ledger.refresh_policy = RefreshPolicy(min_interval=0, max_age=3600)
    with open(log_path) as f:
        entries = [json.loads(line) for line in f]
    read = min(e["finished"] for e in entries if e["route"] == "GET /compute/v2.1/limits"
               and e["started"] > deleted_at)

    def listed_after() -> list[float]:
        with open(log_path) as f:
            return [e["started"] - read for e in map(json.loads, f)
                    if e["route"] == LIST_ROUTE and e["started"] > read]
    wait_for(listed_after, timeout=10, what="a server list after the reading")
    assert listed_after()[0] < 2.0, listed_after()
    # The server was still there for that list (5 s deletes): once gone,
    # its instance is free without reading the limits again.
    reads = h.cloud.request_count("GET /compute/v2.1/limits")
    wait_for(lambda: h.provider.capacity(["small"]) is Capacity.AVAILABLE, timeout=15,
             what="the instance free again")
    assert h.cloud.request_count("GET /compute/v2.1/limits") == reads
    assert h.cloud.counters()["quota_403"] == 0


def test_a_server_likely_up_is_looked_for_before_the_lists_pace(harness, tmp_path):
    # Boots take 1 s and the provider has learned that; its list pace is
    # 30 s.  A build is seen ACTIVE soon after it is, from a list asked for
    # when its boot has likely ended (within the list's budget), not 30 s on.
    log_path = str(tmp_path / "servers.log")
    h = harness(dict(limited(boot_seconds=1.0, delete_seconds=0.1), transition_log=log_path))
    h.wait_available()
    h.provider.servers.interval = 30.0
    late, lists = _build_one_after_learned_boots(h, 1.0, log_path)
    assert late < 5.0
    # One list for the look (perhaps one more from the budget's burst).
    assert lists <= 2
    assert h.provider.status()["boot_durations"]["samples"] == 4


def _build_one_after_learned_boots(h, seconds: float, log_path: str) -> tuple[float, int]:
    """Teach the provider boots of ``seconds``, build one node: (how long
    after its server went ACTIVE the build was seen ready, server lists made
    meanwhile), from the fakecloud's transition log at ``log_path``."""
    for _ in range(3):
        h.provider.pacer.boot_durations.record(seconds, seconds)
    lists = h.cloud.request_count(LIST_ROUTE)
    [node] = h.start(1)
    done = h.finish_builds([node], timeout=seconds + 12)
    assert done[node].state is BuildState.READY
    with open(log_path) as f:
        [active] = [json.loads(line) for line in f if '"active"' in line]
    return time.time() - active["at"], h.cloud.request_count(LIST_ROUTE) - lists


def test_a_learned_boot_is_listed_once_when_it_is_likely_up(harness, tmp_path):
    # Boots take 3 s and the provider has learned that; its list pace is
    # 2.5 s.  Nothing waits for quota, so no list is asked for at the pace
    # while the server boots (it would show it building and spend the
    # budget): the one list is the look at 3 s, and it finds it ACTIVE.
    log_path = str(tmp_path / "servers.log")
    h = harness(dict(limited(boot_seconds=3.0, delete_seconds=0.1), transition_log=log_path),
                server_list_interval=2.5)
    h.wait_available()
    late, lists = _build_one_after_learned_boots(h, 3.0, log_path)
    assert late < 2.0
    assert lists == 1


@pytest.mark.parametrize("awaited", [False, True], ids=["nobody-waits", "operator-waits"])
def test_a_delete_nobody_waits_for_rides_on_lists_made_anyway(harness, tmp_path, awaited):
    # Nothing waits for quota, so the deleted server's absence is news for
    # nobody: no list is asked for at the pace (1 s here) to look for the
    # node's other servers or to see this one go; the slow idle refresh
    # (every 4 s here) does both.  Unless an operator waits for this very
    # deletion (``nodepool delete --now``): then it goes at the pace.
    log_path = str(tmp_path / "requests.log")
    h = harness(dict(limited(boot_seconds=0.1, delete_seconds=0.3), request_log=log_path),
                server_list_interval=1.0)
    h.wait_available()
    [node] = h.start(1)
    done = h.finish_builds([node])
    wait_for(lambda: not h.provider.pacer.quota_waiting(), timeout=5, what="no wait remembered")
    before = time.time()
    h.finish_deletes([h.delete(node, done[node].info.external_id, awaited=awaited)],
                     timeout=15)
    assert h.cloud.servers() == []
    with open(log_path) as f:
        lists = [e["started"] for e in map(json.loads, f) if e["route"] == LIST_ROUTE]
    during = [b - a for a, b in zip(lists, lists[1:], strict=False) if b > before]
    assert during, "the delete was seen done without a list"
    if awaited:
        assert min(during) < 2.0, during     # at the pace
    else:
        assert min(during) > 3.5, during     # only the idle refresh


def test_a_request_waiting_for_its_tenant_counts_as_waiting(harness):
    # The tenant's server counts until nova stops listing it, so a request
    # held back by the tenant's limits waits for deletes: the provider knows
    # (its deletions then hurry, see the test above).
    ledger = QuotaLedger(refresh_policy=RefreshPolicy(min_interval=0.2, max_age=2.0),
                         tenant_limits={"t": Resources(instances=1, cores=math.inf,
                                                       ram=math.inf, volumes=math.inf,
                                                       volume_gb=math.inf)})
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.3), ledger=ledger)
    h.wait_available()
    spec = h.spec()
    handle = h.provider.start_build(BuildSpec(node_id=spec.node_id, label="small",
                                              provider_name="p1", pool_name="main",
                                              tenant_name="t"))
    h.finish_builds([handle])
    wait_for(lambda: not h.provider.pacer.quota_waiting(), timeout=5, what="no wait remembered")
    assert h.provider.tenant_capacity("t", ["small"]) is Capacity.WAIT
    assert h.provider.pacer.quota_waiting()


def reuse_lag(log_path: str, delete_seconds: float) -> tuple[float, list]:
    """From the fakecloud's request log of one DELETE and two creates: how
    long after the deleted server was gone the second create started, and
    the reads made after the DELETE (seconds from the server gone)."""
    with open(log_path) as f:
        entries = [json.loads(line) for line in f]
    [deleted] = [e for e in entries if e["route"] == DELETE_ROUTE and e["status"] == 204]
    creates = [e for e in entries if e["route"] == CREATE_ROUTE and e["status"] == 202]
    assert len(creates) == 2
    gone_at = deleted["finished"] + delete_seconds
    reads = [(round(e["started"] - gone_at, 2), e["route"]) for e in entries
             if e["started"] > deleted["started"] and "GET" in e["route"]]
    return creates[1]["started"] - gone_at, reads


LEARNED_DELETE_SECONDS = 2.5


def _one_instance_deletes_learned(harness, tmp_path):
    """One instance of quota, deletes of 2.5 s that the provider has learned,
    a list pace of 2 s, and a first build started: (harness, request log
    path, the build's handle)."""
    log_path = str(tmp_path / "requests.log")
    h = harness(dict(limited(instances=1, boot_seconds=0.1,
                             delete_seconds=LEARNED_DELETE_SECONDS),
                     request_log=log_path), server_list_interval=2.0)
    for _ in range(3):
        h.provider.pacer.delete_durations.record(LEARNED_DELETE_SECONDS, LEARNED_DELETE_SECONDS)
    h.wait_available()
    [first] = h.start(1)
    return h, log_path, first


def test_a_freed_instance_is_found_when_learned_delete_times_say_it_is_gone(harness, tmp_path):
    # A list every 2 s at most otherwise.  The provider has learned that its
    # deletes take 2.5 s; while a build waits for the only instance, it
    # lists when the deleted server has likely gone instead of at its pace
    # (the lists 2 s and 4 s after the DELETE).
    h, log_path, first = _one_instance_deletes_learned(harness, tmp_path)
    done = h.finish_builds([first])
    assert h.provider.capacity(["small"]) is Capacity.WAIT   # a request waits
    deletion = h.delete(first, done[first].info.external_id)
    # The request handler asks on each of its passes, as a paused pool does.
    wait_for(lambda: h.provider.capacity(["small"]) is Capacity.AVAILABLE, timeout=15,
             what="the instance free again")
    [second] = h.start(1)
    assert h.finish_builds([second])[second].state is BuildState.READY
    h.finish_deletes([deletion])
    lag, lists = reuse_lag(log_path, LEARNED_DELETE_SECONDS)
    # At the 2 s pace alone this takes about 1.5 s.
    assert lag <= 1.0, (lag, lists)
    assert h.cloud.counters()["quota_403"] == 0


def test_a_server_someone_else_deletes_is_looked_for_while_requests_wait(
        harness, tmp_path, fakecloud_connect):
    # As above, but the DELETE comes from elsewhere (another launcher, an
    # operator): once a list showed the server deleting, the looks count it.
    h, log_path, first = _one_instance_deletes_learned(harness, tmp_path)
    server_id = h.finish_builds([first])[first].info.external_id
    h.provider.forget_build(first)      # handed over: no machine follows it now
    assert h.provider.capacity(["small"]) is Capacity.WAIT   # a request waits
    fakecloud_connect(h.cloud).delete_server(server_id)
    h.provider.servers.want_fresh()
    wait_for(lambda: server_id in h.provider.pacer._deleting_elsewhere, timeout=5,
             what="a list showing the server being deleted")
    wait_for(lambda: h.provider.capacity(["small"]) is Capacity.AVAILABLE, timeout=15,
             what="the instance free again")
    [second] = h.start(1)
    assert h.finish_builds([second])[second].state is BuildState.READY
    lag, lists = reuse_lag(log_path, LEARNED_DELETE_SECONDS)
    # At the 2 s pace alone this takes about 1.5 s.
    assert lag <= 1.0, (lag, lists)
    assert h.cloud.counters()["quota_403"] == 0


def test_boot_from_volume_respects_cinder_quota(harness):
    # Nova does not check cinder quota: an over-quota volume boot is accepted
    # and then goes ERROR.  The provider must not let that happen.
    h = harness(limited(volumes=2, gigabytes=100, boot_seconds=[0.2, 0.4],
                        delete_seconds=[0.3, 0.5]),
                provider_config(label={"boot-from-volume": True, "volume-size": 10}))
    h.wait_available()
    assert h.quota()["resources"]["volumes"]["limit"] == 2
    handles = h.start(5)
    deletes = []
    done = h.finish_builds(handles, timeout=40,
                           on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    assert all(st.state is BuildState.READY for st in done.values()), \
        {k: st.reason for k, st in done.items()}
    assert all(st.info.resources["volumes"] == 1 and st.info.resources["volume-gb"] == 10
               for st in done.values())
    h.finish_deletes(deletes)
    assert h.cloud.totals()["boot_errors"] == 0
    peak = h.cloud.peak_usage()
    assert peak["volumes"] <= 2 and peak["gigabytes"] <= 20
    assert h.cloud.request_count("GET /volume/v3/{project_id}/limits", 200) >= 1
    wait_for(lambda: h.cloud.usage()["ci"]["in_use"]["volumes"] == 0, timeout=5)
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


# ---------------------------------------------------------------------------
# 3. Usage nova counts that is not ours


def test_capacity_of_a_request_with_several_labels_in_the_pool_served(harness):
    h = harness(limited(instances=3, boot_seconds=0.2, delete_seconds=0.3))
    h.wait_available()
    assert h.provider.capacity(["small", "small"], pool="main") is Capacity.AVAILABLE
    assert h.provider.capacity(["small"] * 3, pool="main") is Capacity.AVAILABLE
    assert h.provider.capacity(["small"] * 4, pool="main") is Capacity.NEVER


def test_servers_we_do_not_own_reduce_headroom(harness, fakecloud_connect):
    h = harness(limited(instances=3, boot_seconds=[0.2, 0.4], delete_seconds=0.3))
    other = fakecloud_connect(h.cloud)
    other.create_server("someone-else", image="cirros", flavor="m1.small", wait=False)
    # The provider learns it from nova's own counter in GET /limits.
    wait_for(lambda: h.quota()["resources"]["instances"]["nova_used"] == 1, timeout=10,
             what="nova_used counting the foreign server")
    h.wait_available()
    first = h.start(2)
    wait_for(lambda: h.quota()["resources"]["instances"]["ledger_used"] == 2, timeout=5)
    # Two of ours plus the foreign one fill the quota of 3.
    assert h.provider.capacity(["small"]) is Capacity.WAIT
    more = h.start(2)
    deletes = []
    done = h.finish_builds(first + more, timeout=30,
                           on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    assert all(st.state is BuildState.READY for st in done.values()), \
        {k: st.reason for k, st in done.items()}
    h.finish_deletes(deletes)
    assert h.cloud.counters()["quota_403"] == 0
    assert h.cloud.peak_usage()["instances"] <= 3
    assert [s["name"] for s in h.cloud.servers()] == ["someone-else"]
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


# ---------------------------------------------------------------------------
# 4. Boots that end in ERROR


def test_error_boot_is_deleted_and_retried(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3, error_boot_share=1.0))
    h.wait_available()
    [node] = h.start(1)
    # The first attempt's server goes ERROR; let the retry boot normally.
    wait_for(lambda: h.cloud.totals()["boot_errors"] == 1, timeout=10)
    h.cloud.set_server_behaviour(error_boot_share=0.0)
    st = h.finish_builds([node])[node]
    assert st.state is BuildState.READY, st.reason
    # The ERROR server was deleted by the provider, not left for nova to count.
    wait_for(lambda: [s["id"] for s in h.cloud.servers()] == [st.info.external_id],
             timeout=10, what="the ERROR server deleted")
    assert h.cloud.request_count(CREATE_ROUTE, 202) == 2
    meta = h.cloud.servers()[0]["metadata"]
    assert meta[srv.META_ATTEMPT] == "2"
    h.finish_deletes([h.delete(node, st.info.external_id)])
    assert h.cloud.servers() == []
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_an_error_raised_inside_a_machine_fails_that_attempt_only(harness, monkeypatch):
    # A bug in one machine's step must not stop the provider's loop nor the
    # other builds: that attempt fails, is retried, and nothing leaks.
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3))
    h.wait_available()
    first, second = h.start(2)
    real_booting = create_machine.CreateMachine._step_booting
    raised: list[str] = []

    def booting_once_broken(machine, now):
        if machine.spec.node_id == first and not raised:
            raised.append(machine.spec.node_id)
            raise RuntimeError("a bug")
        return real_booting(machine, now)

    monkeypatch.setattr(create_machine.CreateMachine, "_step_booting", booting_once_broken)
    done = h.finish_builds([first, second])
    assert raised == [first]
    assert all(st.state is BuildState.READY for st in done.values()), done
    assert h.cloud.request_count(CREATE_ROUTE, 202) == 3   # the broken attempt's retry
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    wait_for(lambda: h.cloud.servers() == [], timeout=10, what="every server deleted")
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_error_boots_fail_after_launch_retries_without_leaking(harness):
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.3, error_boot_share=1.0),
                provider_config(**{"launch-retries": 2}))
    h.wait_available()
    nodes = h.start(2)
    done = h.finish_builds(nodes, timeout=30)
    for st in done.values():
        assert st.state is BuildState.FAILED
        assert "ERROR" in st.reason and "attempt 2 of 2" in st.reason, st.reason
    assert h.cloud.request_count(CREATE_ROUTE, 202) == 4
    assert h.cloud.totals()["boot_errors"] == 4
    # Every failed server is deleted, and counted until nova drops it.
    wait_for(lambda: h.cloud.servers() == [], timeout=10, what="ERROR servers deleted")
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    assert h.cloud.request_count(DELETE_ROUTE) == 4
    assert h.cloud.counters()["quota_403"] == 0


def test_a_retry_delay_is_not_a_wait_for_quota(harness, monkeypatch):
    # After a failed attempt the build waits out its retry delay (step
    # wait-retry): it waits for no headroom, so the provider must not hurry
    # server lists for deletes on its behalf, and /quota does not list it.
    # A build refused headroom is the one that waits for quota.
    # Deletes are slow: the ERROR server keeps the one instance taken.
    h = harness(limited(instances=1, boot_seconds=0.1, delete_seconds=60,
                        error_boot_share=1.0))
    monkeypatch.setattr(create_machine, "RETRY_DELAY", 60.0)
    h.wait_available()
    [node] = h.start(1)

    def steps() -> dict[str, str]:
        return {b["node"]: b["step"] for b in h.provider.status()["builds"]}

    wait_for(lambda: steps() == {node: "wait-retry"}, timeout=10, what="the retry's delay")
    # (A capacity check that waited is remembered for a moment.)
    wait_for(lambda: not h.provider.pacer.quota_waiting(), timeout=5, what="no quota wait")
    assert steps() == {node: "wait-retry"}
    [other] = h.start(1)
    wait_for(lambda: steps().get(other) == "wait-quota", timeout=10, what="refused headroom")
    assert h.provider.pacer.quota_waiting()


def test_launch_timeout_counts_from_the_create_and_fails_slow_boots(harness):
    h = harness(limited(boot_seconds=30, delete_seconds=0.2),
                provider_config(**{"launch-timeout": 1, "launch-retries": 1}))
    h.wait_available()
    [node] = h.start(1)
    st = h.finish_builds([node], timeout=20)[node]
    assert st.state is BuildState.FAILED
    assert "launch-timeout" in st.reason and "BUILD" in st.reason, st.reason
    # The slow server is deleted, not left building.
    wait_for(lambda: h.cloud.servers() == [], timeout=10, what="the server deleted")
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


# ---------------------------------------------------------------------------
# 5. A quota 403 that happens anyway


def test_quota_403_backs_off_without_failing_the_build(harness, fakecloud_connect):
    # Limits are read once and then believed for an hour, so usage that appears
    # right after the reading is invisible to the provider: the cloud refuses.
    ledger = QuotaLedger(refresh_policy=RefreshPolicy(min_interval=0.2, max_age=3600),
                         backoff_policy=BackoffPolicy(initial=3.0, maximum=6.0))
    h = harness(limited(instances=3, boot_seconds=0.2, delete_seconds=0.3), ledger=ledger,
                config=provider_config(**{"launch-retries": 1}))
    h.wait_available()
    other = fakecloud_connect(h.cloud)
    foreign = [other.create_server(f"other-{i}", image="cirros", flavor="m1.small",
                                   wait=False) for i in range(3)]
    assert h.quota()["resources"]["instances"]["nova_used"] == 0  # the provider's stale view
    nodes = h.start(2)
    wait_for(lambda: h.cloud.counters()["quota_403"] == 2, timeout=10, what="two 403s")
    wait_for(lambda: h.quota()["backoff"]["total_quota_errors"] == 2, timeout=5)
    status = h.provider.status()
    assert status["quota"]["backoff"]["in_backoff"]
    assert status["counters"]["quota_errors"] == 2
    assert status["counters"]["launch_failures"] == 0
    for node in nodes:
        st = h.provider.poll_build(node)
        assert st.state is BuildState.BUILDING, st.reason
    # After the refusal the provider reads limits again and believes nova.
    wait_for(lambda: h.quota()["resources"]["instances"]["nova_used"] == 3, timeout=10,
             what="limits re-read after the 403")
    assert all(b["failures"] == 0 for b in h.provider.status()["builds"])
    # The other client frees its quota; a later limits reading shows room.
    for server in foreign:
        other.delete_server(server.id)
    ledger.refresh_policy = RefreshPolicy(min_interval=0.2, max_age=0.5)
    deletes = []
    done = h.finish_builds(nodes, timeout=30,
                           on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    # launch-retries is 1: a quota refusal did not count as a failed attempt.
    assert all(st.state is BuildState.READY for st in done.values()), \
        {k: st.reason for k, st in done.items()}
    assert h.cloud.counters()["quota_403"] == 2   # no flood while waiting
    h.finish_deletes(deletes)
    wait_for(lambda: h.cloud.servers() == [], timeout=10)
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


# ---------------------------------------------------------------------------
# 6. Creates that time out on our side but succeed in nova


def test_create_timing_out_is_found_by_metadata_and_used(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3), api_timeout=1)
    h.wait_available()
    h.cloud.set_faults(slow_create_seconds=2.5, match="POST /compute/v2.1/servers$")
    [node] = h.start(1)
    st = h.finish_builds([node], timeout=20)[node]
    assert st.state is BuildState.READY, st.reason
    assert h.cloud.counters()["faults"].get("slow_create") == 1
    [server] = h.cloud.servers()
    assert server["id"] == st.info.external_id
    assert server["metadata"][srv.META_NODE] == node
    assert h.cloud.totals()["created"] == 1   # one POST, one server
    stats = h.provider.status()["api_calls"]["compute.create_server"]
    assert stats["errors"] == 1
    wait_for(lambda: h.quota()["resources"]["instances"]["ledger_used"] == 1, timeout=5)
    assert h.provider.counters["launch_failures"] == 0
    h.cloud.set_faults(slow_create_seconds=0)
    h.finish_deletes([h.delete(node, st.info.external_id)])
    assert h.cloud.servers() == []
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_node_deleted_while_its_create_hangs_leaves_no_server(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3), api_timeout=1)
    h.wait_available()
    h.cloud.set_faults(slow_create_seconds=2.5, match="POST /compute/v2.1/servers$")
    [node] = h.start(1)
    # nova has recorded the server; our POST has no answer yet.
    wait_for(lambda: len(h.cloud.servers()) == 1, timeout=5)
    h.finish_deletes([h.delete(node, None, state="building")])
    # The server the create made is found and deleted, and stays counted until gone.
    wait_for(lambda: h.cloud.servers() == [], timeout=15, what="the server deleted")
    assert h.cloud.request_count(DELETE_ROUTE) >= 1
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_node_deleted_while_its_create_is_refused_for_quota(harness, fakecloud_connect):
    ledger = QuotaLedger(refresh_policy=RefreshPolicy(min_interval=0.2, max_age=3600),
                         backoff_policy=BackoffPolicy(initial=1.0, maximum=2.0))
    h = harness(limited(instances=1, boot_seconds=0.1, delete_seconds=0.2), ledger=ledger)
    h.wait_available()
    # Quota taken behind the provider's back, and a slow API: the POST is
    # still on its way when the node is deleted, and nova refuses it.
    fakecloud_connect(h.cloud).create_server("other", image="cirros", flavor="m1.small",
                                             wait=False)
    h.cloud.set_faults(latency_seconds=0.8, match="POST /compute/v2.1/servers$")
    [node] = h.start(1)
    h.finish_deletes([h.delete(node, None, state="building")])
    wait_for(lambda: h.cloud.counters()["quota_403"] == 1, timeout=5)
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    assert h.quota()["backoff"]["total_quota_errors"] == 1
    assert h.cloud.request_count(DELETE_ROUTE) == 0
    assert [s["name"] for s in h.cloud.servers()] == ["other"]


def test_host_key_scan_gives_up_at_boot_timeout(harness, caplog):
    # Nothing answers SSH on the fakecloud's addresses.
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.2),
                provider_config(pool={"host-key-checking": True},
                                label={"console-log": True},
                                **{"boot-timeout": 1, "launch-retries": 1}))
    h.wait_available()
    [node] = h.start(1)
    caplog.set_level("INFO", logger="nodepool.openstack.provider")
    st = h.finish_builds([node], timeout=20)[node]
    assert st.state is BuildState.FAILED
    assert "no SSH host keys" in st.reason and "boot-timeout" in st.reason, st.reason
    # console-log: the console is read once, through the gate, and logged.
    wait_for(lambda: any("console log of server" in r.getMessage() for r in caplog.records),
             timeout=10, what="the console logged")
    [record] = [r for r in caplog.records if "console log of server" in r.getMessage()]
    assert "fakecloud console of" in record.getMessage()
    assert h.provider.status()["api_calls"]["compute.get_console_output"]["count"] == 1
    wait_for(lambda: h.cloud.servers() == [], timeout=10, what="the server deleted")
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


# ---------------------------------------------------------------------------
# 7. A cloud that hangs


def test_hung_cloud_does_not_stick_the_provider(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3), api_timeout=1,
                leak_interval=0.5)
    h.wait_available()
    before = h.provider.servers.status()["failures"]
    h.cloud.set_faults(hang=True)
    nodes = h.start(2)
    # The loop keeps running: list refreshes keep being tried and fail.
    wait_for(lambda: h.provider.servers.status()["failures"] >= before + 2, timeout=15,
             what="failed list refreshes")
    wait_for(lambda: h.provider.status()["api_in_flight"], timeout=5,
             what="calls in flight during the hang")
    answered = []
    t = threading.Thread(target=lambda: answered.append(h.provider.status()), daemon=True)
    t.start()
    t.join(2)
    assert answered, "status() did not answer while the cloud hangs"
    st = answered[0]
    assert st["server_list"]["last_error"]
    assert st["api_calls"]["compute.list_servers"]["errors"] >= 2
    for node in nodes:
        assert h.provider.poll_build(node).state is BuildState.BUILDING
    assert h.cloud.hung_requests() >= 1
    h.cloud.set_faults(hang=False)
    deletes = []
    done = h.finish_builds(nodes, timeout=10,
                           on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    assert all(st.state is BuildState.READY for st in done.values()), \
        {k: st.reason for k, st in done.items()}
    h.finish_deletes(deletes)
    # Creates released after the client gave up made servers nobody waits
    # for; they carry our metadata and are cleaned up as leaks.
    wait_for(lambda: h.servers_of_ours() == [], timeout=20, what="no server of ours left")
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    assert h.cloud.counters()["quota_403"] == 0


# ---------------------------------------------------------------------------
# 8. Listing costs one call, whatever the number of servers


def _routes(cloud, method: str = "GET") -> dict[str, int]:
    return {route: sum(by_status.values())
            for route, by_status in cloud.counters()["requests"].items()
            if route.startswith(method + " ")}


def test_listing_makes_no_per_server_calls(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3, ports_per_server=2))
    h.wait_available()
    nodes = h.start(4)
    done = h.finish_builds(nodes)
    assert all(st.state is BuildState.READY for st in done.values())
    assert h.cloud.request_count(PORTS_ROUTE) == h.cloud.request_count(FIPS_ROUTE) == 0
    h.cloud.reset_counters()
    # Several list refreshes with four ACTIVE servers.
    wait_for(lambda: h.cloud.request_count(LIST_ROUTE, 200) >= 5, timeout=10)
    gets = _routes(h.cloud)
    assert set(gets) <= {LIST_ROUTE, "GET /compute/v2.1/limits"}, gets
    assert h.cloud.counters()["total"] == sum(gets.values())
    # Over the whole life of the nodes: no port or floating IP lookups at all.
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    assert h.cloud.request_count(PORTS_ROUTE) == h.cloud.request_count(FIPS_ROUTE) == 0
    calls = h.provider.status()["api_calls"]
    assert "network.list_ports" not in calls and "network.list_floating_ips" not in calls


def _request_paths(log_path: str, route: str) -> list[str]:
    with open(log_path) as f:
        return [e["path"] for e in map(json.loads, f) if e["route"] == route]


def test_floating_ips_for_private_network_servers_from_a_shared_port_list(harness, tmp_path):
    log_path = str(tmp_path / "requests.log")
    h = harness(dict(limited(boot_seconds=0.2, delete_seconds=0.3), request_log=log_path),
                provider_config(pool={"auto-floating-ip": True}))
    h.wait_available()
    nodes = h.start(3)
    done = h.finish_builds(nodes)
    assert all(st.state is BuildState.READY for st in done.values())
    # One floating IP per node, its port found in project-wide port lists
    # (at most one per node, never a per-server ``ports?device_id=`` lookup).
    assert h.cloud.request_count("POST /network/v2.0/floatingips", 201) == 3
    assert h.cloud.request_count("POST /network/v2.0/floatingips") == 3
    port_gets = _request_paths(log_path, PORTS_ROUTE)
    assert 1 <= len(port_gets) <= 3
    assert not any("device_id" in path for path in port_gets), port_gets
    for route in PER_SERVER_ROUTES:
        assert h.cloud.request_count(route) == 0, route
    fips = {st.info.interface_ip for st in done.values()}
    assert len(fips) == 3 and all(ip.startswith("172.24.4.") for ip in fips)
    assert all(st.info.public_ipv4 == st.info.interface_ip
               and st.info.private_ipv4.startswith("10.0.") for st in done.values())
    h.cloud.reset_counters()
    wait_for(lambda: h.cloud.request_count(LIST_ROUTE, 200) >= 5, timeout=10)
    assert h.cloud.request_count(PORTS_ROUTE) == 0
    assert h.cloud.request_count(FIPS_ROUTE) == 0
    assert _routes(h.cloud, "POST") == {}
    # Deleting the nodes releases their floating IPs too.
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    assert h.cloud.servers() == []
    wait_for(lambda: h.cloud.usage()["ci"]["in_use"]["floating_ips"] == 0, timeout=15,
             what="floating IPs deleted")
    assert h.cloud.request_count("DELETE /network/v2.0/floatingips/{floatingip_id}") == 3
    # Deleted by the ids we got when we made them: no floating-IP listing.
    assert h.cloud.request_count(FIPS_ROUTE) == 0
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_server_on_a_provider_network_gets_no_floating_ip(harness):
    # The first port is on the external network, in 172.24.4.0/24: private
    # by its range, public by the network's role (router:external).
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3, ports_per_server=2,
                        network_layout="provider"),
                provider_config(pool={"auto-floating-ip": True}))
    h.wait_available()
    done = h.finish_builds(h.start(3))
    assert all(st.state is BuildState.READY for st in done.values())
    for st in done.values():
        assert st.info.interface_ip.startswith("172.24.4.")
        assert st.info.public_ipv4 == st.info.interface_ip
        assert st.info.private_ipv4.startswith("10.0.")
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")
    routes = h.cloud.counters()["requests"]
    assert not [r for r in routes if "/network/v2.0/floatingips" in r
                or r.startswith(PORTS_ROUTE)], routes
    assert "network.list_ports" not in h.provider.status()["api_calls"]


def test_floating_ip_source_none_is_honoured(harness):
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.3),
                provider_config(pool={"auto-floating-ip": True}),
                clouds_extra={"floating_ip_source": "None"})
    h.wait_available()
    done = h.finish_builds(h.start(2))
    assert all(st.state is BuildState.READY for st in done.values())
    # No public address and no floating IP: the node is reached privately.
    assert all(st.info.interface_ip.startswith("10.0.") for st in done.values())
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    routes = h.cloud.counters()["requests"]
    assert not [r for r in routes if "/network/v2.0/floatingips" in r
                or r.startswith(PORTS_ROUTE)], routes


def test_floating_ip_released_even_if_no_list_showed_it(harness):
    # A slow list: the nodes are deleted before any list shows their floating IPs.
    h = harness(limited(boot_seconds=0.2, delete_seconds=0.2),
                provider_config(pool={"auto-floating-ip": True}), server_list_interval=1.0)
    h.wait_available()
    nodes = h.start(2)
    deletes = []
    h.finish_builds(nodes, on_ready=lambda k, st: deletes.append(h.delete(k, st.info.external_id)))
    h.finish_deletes(deletes)
    assert h.cloud.servers() == []
    wait_for(lambda: h.cloud.usage()["ci"]["in_use"]["floating_ips"] == 0, timeout=20,
             what="floating IPs deleted")


# ---------------------------------------------------------------------------
# 9. Leaked servers


def test_leaked_servers_are_deleted_after_two_passes(harness, fakecloud_connect):
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.2), leak_interval=1.0)
    other = fakecloud_connect(h.cloud)

    def ours(name: str, node: str, provider: str = "p1", attempt: str = "1"):
        return other.create_server(name, image="cirros", flavor="m1.small", wait=False,
                                   meta={srv.META_PROVIDER: provider, srv.META_NODE: node,
                                         srv.META_POOL: "main", srv.META_ATTEMPT: attempt})

    leaked = ours("leaked", "0000009001")
    kept = ours("kept", "0000009002")
    kept_no_id = ours("kept-no-id", "0000009003")
    stale_attempt = ours("stale-attempt", "0000009002", attempt="0")
    not_ours = ours("other-provider", "0000009004", provider="p2")
    with h._known_lock:
        h.known.update({"0000009002": kept.id, "0000009003": None})
    gone = {leaked.id, stale_attempt.id}
    # First pass: suspects only, nothing deleted.
    wait_for(lambda: gone <= h.provider.reconciler.leak_suspects, timeout=10,
             what="first leak pass")
    assert h.cloud.request_count(DELETE_ROUTE) == 0
    # Second pass: deleted.
    wait_for(lambda: not gone & {s["id"] for s in h.cloud.servers()}, timeout=15,
             what="leaked servers deleted")
    assert h.provider.counters["leaks_deleted"] == 2
    # Two more passes leave the others alone.
    passes = h.provider.reconciler.last_leak_pass
    wait_for(lambda: h.provider.reconciler.last_leak_pass != passes, timeout=10)
    passes = h.provider.reconciler.last_leak_pass
    wait_for(lambda: h.provider.reconciler.last_leak_pass != passes, timeout=10)
    assert {s["id"] for s in h.cloud.servers()} == {kept.id, kept_no_id.id, not_ours.id}
    assert h.cloud.request_count(DELETE_ROUTE) == 2
    # The leaked servers were counted (adopted) while they existed, and released.
    wait_for(lambda: h.quota()["resources"]["instances"]["ledger_used"] == 2, timeout=5)


def test_leaked_ports_and_floating_ips_are_deleted_after_two_samples(harness,
                                                                     fakecloud_connect):
    # Every deletion leaks its ports (left DOWN, bound to the gone server).
    h = harness(limited(boot_seconds=0.1, delete_seconds=0.2, leak_port_share=1.0),
                provider_config(**{"clean-floating-ips": True, "port-cleanup-interval": 1}),
                leak_interval=1.0)
    other = fakecloud_connect(h.cloud)
    h.wait_available()
    done = h.finish_builds(h.start(2))
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    leaked_ports = {p.id for p in other.network.ports(status="DOWN")}
    assert len(leaked_ports) == 2
    # What must survive: a DOWN port of a server still building, the floating
    # IP attached to it, and a router's DOWN port.
    h.cloud.set_server_behaviour(boot_seconds=3600)
    building = other.create_server("building", image="cirros", flavor="m1.small", wait=False)
    wait_for(lambda: any(p.device_id == building.id for p in other.network.ports()),
             timeout=10, what="port of the building server")
    building_port = next(p for p in other.network.ports() if p.device_id == building.id)
    assert building_port.status == "DOWN"
    ext = next(n for n in other.network.networks() if n.is_router_external)
    attached = other.network.create_ip(floating_network_id=ext.id, port_id=building_port.id)
    leaked_fip = other.network.create_ip(floating_network_id=ext.id)
    router_port = h.cloud.state.ports[building_port.id]
    router_port_copy = type(router_port)(**{**router_port.__dict__, "id": "router-port",
                                            "device_id": "router-1",
                                            "device_owner": "network:router_interface"})
    # An operator's port, made on purpose: no owner, no device.
    operator_port = type(router_port)(**{**router_port.__dict__, "id": "operator-port",
                                         "device_id": "", "device_owner": ""})
    with h.cloud.state.lock:
        h.cloud.state.ports["router-port"] = router_port_copy
        h.cloud.state.ports["operator-port"] = operator_port
    wait_for(lambda: not leaked_ports & {p.id for p in other.network.ports()}, timeout=20,
             what="leaked ports deleted")
    wait_for(lambda: leaked_fip.id not in {f.id for f in other.network.ips()}, timeout=20,
             what="leaked floating IP deleted")
    # Two more samples each leave the rest alone.
    for sweep in (h.provider.port_sweep, h.provider.fip_sweep):
        for _ in range(2):
            mark = sweep.next_at
            wait_for(lambda sweep=sweep, mark=mark: sweep.next_at != mark, timeout=10,
                     what="another sample")
    assert {p.id for p in other.network.ports()} == {building_port.id, "router-port",
                                                     "operator-port"}
    assert {f.id for f in other.network.ips()} == {attached.id}
    assert h.provider.port_sweep.deleted == 2 and h.provider.fip_sweep.deleted == 1
    cleanup = h.provider.status()["cleanup"]
    assert cleanup["ports"]["deleted"] == 2 and cleanup["floating_ips"]["deleted"] == 1
    calls = h.provider.status()["api_calls"]
    assert "network.delete_port" in calls and "network.delete_floating_ip" in calls


def test_network_cleanup_is_off_unless_configured(harness):
    h = harness(limited(boot_seconds=0.1), provider_config(**{"port-cleanup-interval": 0}),
                leak_interval=0.2)
    h.wait_available()
    assert h.provider.fip_sweep is None and h.provider.port_sweep is None
    h.finish_builds(h.start(1))
    passes = h.provider.reconciler.last_leak_pass
    wait_for(lambda: h.provider.reconciler.last_leak_pass != passes, timeout=10,
             what="a leak pass")
    assert h.cloud.request_count(PORTS_ROUTE) == h.cloud.request_count(FIPS_ROUTE) == 0


# ---------------------------------------------------------------------------
# 10. Flavors and images


def test_flavor_by_min_ram_image_by_id_and_unknown_image(harness, fakecloud_connect):
    cloud_cfg = limited(boot_seconds=0.1, delete_seconds=0.2)
    cloud_cfg["images"] = [{"id": "11111111-cirros", "name": "cirros"},
                           {"id": "22222222-debian", "name": "debian-bookworm"}]
    config = provider_config()
    config["labels"] += [{"name": n} for n in ("bigram", "byid", "noimage", "noflavor")]
    prov = config["providers"][0]
    prov["cloud-images"] += [{"name": "debian", "image-id": "22222222-debian"},
                             {"name": "missing", "image-name": "no-such-image"}]
    prov["pools"][0]["labels"] += [
        {"name": "bigram", "cloud-image": "img", "min-ram": 3000},
        {"name": "byid", "cloud-image": "debian", "flavor-name": "m1.tiny"},
        {"name": "noimage", "cloud-image": "missing", "flavor-name": "m1.small"},
        {"name": "noflavor", "cloud-image": "img", "flavor-name": "m9.huge"}]
    h = harness(cloud_cfg, config)
    h.wait_available()
    good = {"small": h.provider.start_build(h.spec("small")),
            "bigram": h.provider.start_build(h.spec("bigram")),
            "byid": h.provider.start_build(h.spec("byid"))}
    bad = {"noimage": h.provider.start_build(h.spec("noimage")),
           "noflavor": h.provider.start_build(h.spec("noflavor"))}
    done = h.finish_builds(list(good.values()) + list(bad.values()), timeout=20)
    conn = fakecloud_connect(h.cloud)
    want = {"small": ("m1.small", "11111111-cirros"), "bigram": ("m1.medium", "11111111-cirros"),
            "byid": ("m1.tiny", "22222222-debian")}
    listed = {s["id"]: s for s in h.cloud.servers()}
    for label, node in good.items():
        st = done[node]
        assert st.state is BuildState.READY, (label, st.reason)
        assert listed[st.info.external_id]["flavor"] == want[label][0]
        assert conn.compute.get_server(st.info.external_id).image.id == want[label][1]
    assert "no-such-image" in done[bad["noimage"]].reason
    assert "m9.huge" in done[bad["noflavor"]].reason
    for label in bad:
        assert done[bad[label]].state is BuildState.FAILED
        assert h.provider.capacity([label]) is Capacity.NEVER
    # Nothing was sent for the labels the cloud cannot serve, and each miss
    # cost one re-read of its list (to find an image uploaded since), no more.
    assert h.cloud.request_count(CREATE_ROUTE) == 3
    assert h.cloud.request_count("GET /image/v2/images") == 2
    assert h.cloud.request_count("GET /compute/v2.1/flavors/detail") == 2
    h.finish_deletes([h.delete(n, done[n].info.external_id) for n in good.values()])
    wait_for(h.ledger_idle, timeout=5, what="ledger back to zero")


def test_server_list_follows_nova_pages(make_fakecloud, fakecloud_connect, tmp_path):
    from nodepool.driver.openstack.cloud import OpenStackCloud, connect
    cloud = make_fakecloud({"max_page_size": 2})
    clouds = cloud.write_clouds_yaml(os.path.join(tmp_path, "clouds.yaml"), api_timeout=5)
    other = fakecloud_connect(cloud)
    for i in range(5):
        other.create_server(f"s{i}", image="cirros", flavor="m1.small", wait=False)
    api = OpenStackCloud(connect("fakecloud", clouds))
    try:
        servers = api.list_servers()
    finally:
        api.close()
    assert sorted(s["name"] for s in servers) == [f"s{i}" for i in range(5)]
    assert cloud.request_count(LIST_ROUTE, 200) == 3   # pages of 2, 2 and 1


# ---------------------------------------------------------------------------
# 11. The API budget


MUTATING = ("POST /compute/v2.1/servers", "DELETE /compute/v2.1/servers/{server_id}",
            "POST /network/v2.0/floatingips",
            "DELETE /network/v2.0/floatingips/{floatingip_id}")


def test_with_rate_set_mutating_calls_never_exceed_it(harness, tmp_path):
    log_path = str(tmp_path / "requests.log")
    rate = 0.2  # a create, delete or floating-IP call every 0.2 s on average
    h = harness(dict(limited(boot_seconds=0.1, delete_seconds=0.1), request_log=log_path),
                provider_config(rate=rate, pool={"auto-floating-ip": True}))
    h.wait_available()
    done = h.finish_builds(h.start(8))
    assert all(st.state is BuildState.READY for st in done.values())
    h.finish_deletes([h.delete(k, st.info.external_id) for k, st in done.items()])
    wait_for(lambda: h.cloud.usage()["ci"]["in_use"]["floating_ips"] == 0, timeout=20,
             what="floating IPs deleted")
    with open(log_path) as f:
        entries = [json.loads(line) for line in f]
    starts = sorted(e["started"] for e in entries if e["route"] in MUTATING)
    assert len(starts) == 8 * 4
    # Over any window: at most the burst (2) plus one per ``rate`` seconds
    # (plus 50 ms for the time a request takes to reach the cloud).
    for i, t0 in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 2 + (starts[j] - t0 + 0.05) / rate, (i, j, starts)
    budget = h.provider.status()["api_budget"]
    assert budget["mode"] == "rate" and budget["read_rate"] == rate / 5


def test_build_progress_is_told_when_builds_end(harness):
    """The launcher wakes the provider's pools on it, so a ready server is
    handed over without waiting for the pool's next pass."""
    told: list[int] = []
    h = harness(limited(boot_seconds=1.0), build_progress=lambda: told.append(1))
    h.wait_available()
    handles = h.start(2)
    assert not told  # nothing ended yet: booting takes a second
    h.finish_builds(handles)
    assert 1 <= len(told) <= 2  # once per provider pass in which builds ended
