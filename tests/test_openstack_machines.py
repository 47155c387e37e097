"""The OpenStack machines' state logic, on a fake clock.

``CreateMachine``, ``ServerDeletion`` and ``NodeDeletion`` are driven
pass by pass with fake collaborators: a clock the test moves, cloud calls
the test answers, server lists the test publishes.  The quota ledger,
the quota broker, the launch reporter and the deletions registry are the
real ones (pure, in memory).  No ZooKeeper, no HTTP, no threads.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from nodepool.config.model import AddressPolicy
from nodepool.driver import outcomes
from nodepool.driver.list_cache import ListSnapshot
from nodepool.driver.openstack import addressing
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.context import LaunchSettings, MachineContext
from nodepool.driver.openstack.create_machine import RETRY_DELAY, CreateMachine, Step
from nodepool.driver.openstack.deletion import (DeleteStep, NodeDeletion, ServerDeletions)
from nodepool.driver.openstack.errors import BAD_REQUEST, QUOTA, UNAVAILABLE, CloudError
from nodepool.driver.openstack.label_plan import LabelPlan
from nodepool.driver.openstack.launch_reporter import LaunchReporter
from nodepool.driver.openstack.quota_broker import QuotaBroker
from nodepool.quota import EntryState, PoolQuota, QuotaLedger, Resources, label_cost
from nodepool.requests.builder import BuildSpec, DeleteSpec, DeleteState

PROVIDER = "p1"
POOL = "main"
COST = label_cost(2, 2048)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Call:
    """An ``ApiCall`` the test answers."""

    def __init__(self, kind: str, args: tuple, started_at: float):
        self.kind = kind
        self.args = args
        self.started_at = started_at
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def answer(self, value: Any) -> None:
        self._done, self._value = True, value

    def fail(self, error: BaseException) -> None:
        self._done, self._error = True, error

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class Calls:
    """``CloudCalls``: every call is recorded and waits for the test."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.made: list[Call] = []
        self.consoles: list[tuple[str, str]] = []

    def _call(self, kind: str, *args: Any) -> Call:
        call = Call(kind, args, self.clock())
        self.made.append(call)
        return call

    def create_server(self, body: dict) -> Call:
        return self._call("create_server", body)

    def delete_server(self, server_id: str) -> Call:
        return self._call("delete_server", server_id)

    def create_floating_ip(self, network_id: str, port_id: str) -> Call:
        return self._call("create_floating_ip", network_id, port_id)

    def log_console(self, server_id: str, node_id: str) -> None:
        self.consoles.append((server_id, node_id))

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.made if c.kind == kind]


class Lists:
    """A ``ListCache`` whose snapshot the test publishes."""

    def __init__(self) -> None:
        self.snapshot = ListSnapshot()

    def publish(self, *items: dict, at: float) -> None:
        self.snapshot = ListSnapshot({i["id"]: i for i in items}, requested_at=at,
                                     received_at=at)


class Pacer:
    """A ``ListPacer`` that only remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def note(*args: Any, **kwargs: Any) -> None:
            self.told.append(name)
        return note


class FloatingIps:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def note(self, server_id: str | None, address: str | None,
             fip_id: str | None = None) -> None:
        pass

    def created_for(self, server_id: str | None) -> list[str]:
        return []

    def delete_by_address(self, address: str) -> None:
        self.deleted.append(address)


class Planner:
    def __init__(self) -> None:
        self.refused = 0

    def plan(self, label: Any, pool: Any) -> tuple[LabelPlan | None, str | None, bool]:
        return LabelPlan({"id": "f1", "vcpus": 2, "ram": 2048}, {"id": "i1", "name": "img"},
                         ["net1"], COST), None, False

    def create_refused(self) -> None:
        self.refused += 1


class World:
    """One provider's machine context, of fakes and real pure parts."""

    def __init__(self, *, max_servers: float = 10, launch_retries: int = 3,
                 launch_timeout: float = 600.0):
        self.clock = Clock()
        self.ledger = QuotaLedger(clock=self.clock)
        self.ledger.configure_provider(PROVIDER, {POOL: PoolQuota(
            Resources(max_servers, 100, 100000, 10, 1000), ignore_provider_quota=True)})
        self.calls = Calls(self.clock)
        self.servers = Lists()
        self.pacer = Pacer()
        self.outcomes: list[outcomes.LaunchOutcome] = []
        self.reporter = LaunchReporter(PROVIDER, self.outcomes.append)
        self.floating_ips = FloatingIps()
        self.pool = SimpleNamespace(name=POOL, security_groups=[], auto_floating_ip=False,
                                    ignore_provider_quota=True)
        self.quota = QuotaBroker(PROVIDER, self.ledger, pools=lambda: {POOL: self.pool},
                                 clock=self.clock)
        self.settings = LaunchSettings(name=PROVIDER, cloud_name="cloud", region_name=None,
                                       hostname_format="np{node.id}",
                                       launch_timeout=launch_timeout, boot_timeout=60.0,
                                       launch_retries=launch_retries)
        layout = addressing.layout([{"id": "net1", "name": "net1"}], AddressPolicy())
        self.ctx = MachineContext(
            name=PROVIDER, clock=self.clock, settings=lambda: self.settings,
            network_layout=lambda: layout, calls=self.calls, servers=self.servers,
            ports=Lists(), pacer=self.pacer, quota=self.quota, reporter=self.reporter,
            floating_ips=self.floating_ips)
        self.deletions = ServerDeletions(self.ctx, threading.RLock())
        self.planner = Planner()
        image = SimpleNamespace(name="img", username="zuul", connection_type="ssh",
                                connection_port=22, python_path="auto", shell_type=None,
                                config_drive=True)
        self.label = SimpleNamespace(name="small", cloud_image=image, key_name=None,
                                     userdata=None, boot_from_volume=False, volume_size=None,
                                     instance_properties={}, host_key_checking=False,
                                     console_log=False, networks=["net1"])

    def build(self, node_id: str = "0000000001") -> CreateMachine:
        spec = BuildSpec(node_id=node_id, label="small", provider_name=PROVIDER,
                         pool_name=POOL)
        return CreateMachine(self.ctx, self.planner, self.deletions, spec, self.pool,
                             self.label)

    def server(self, machine: CreateMachine, status: str, server_id: str = "s1") -> dict:
        meta = srv.server_metadata(provider=PROVIDER, pool=POOL, node_id=machine.spec.node_id,
                                   label="small", image="img", attempt=machine.attempt,
                                   tenant=None)
        return {"id": server_id, "name": "np1", "status": status, "metadata": meta,
                "addresses": {"net1": [{"addr": "10.0.0.5", "version": 4,
                                        "OS-EXT-IPS:type": "fixed"}]}}

    def list_after(self, seconds: float, *items: dict) -> None:
        """A server list requested ``seconds`` from now, then received."""
        self.clock.advance(seconds)
        self.servers.publish(*items, at=self.clock())

    def advance_deletions(self) -> None:
        for d in list(self.deletions.active):
            d.advance()
        self.deletions.drop_done()


def created(world: World, machine: CreateMachine, server_id: str = "s1") -> None:
    """Run ``machine`` until its create is accepted as ``server_id``."""
    while machine.step is not Step.CREATING:
        machine.advance()
    world.calls.of("create_server")[-1].answer({"id": server_id})
    world.clock.advance(1.0)
    machine.advance()
    assert machine.step is Step.BOOTING


# -- creating -----------------------------------------------------------------------


def test_a_build_reserves_creates_and_is_ready_once_the_list_shows_it_active():
    w = World()
    m = w.build()
    m.advance()                       # resolve
    assert m.step is Step.RESERVE
    m.advance()                       # reserve and send the create
    assert m.step is Step.CREATING and m.attempt == 1
    (create,) = w.calls.of("create_server")
    body = create.args[0]
    assert body["flavorRef"] == "f1" and body["networks"] == [{"uuid": "net1"}]
    assert w.ledger.entry_state(m.key) is not None
    w.clock.advance(2.0)
    create.answer({"id": "s1"})
    m.advance()
    assert m.step is Step.BOOTING and m.info()["external_id"] == "s1"
    w.list_after(5.0, w.server(m, "BUILD"))
    m.advance()
    assert m.step is Step.BOOTING
    w.list_after(20.0, w.server(m, "ACTIVE"))
    m.advance()
    assert m.step is Step.READY
    info = m.info()
    assert info["interface_ip"] == "10.0.0.5" and info["cloud"] == "cloud"
    assert [o.outcome for o in w.outcomes] == [outcomes.READY]
    # Timed from the create call: 2 + 5 + 20 seconds.
    assert w.outcomes[0].milliseconds == 27000
    assert w.ledger.entry_state(m.key) is EntryState.CREATED
    assert w.quota.key_for_server("s1") == m.key


def test_a_refused_create_is_retried_after_the_delay_under_a_new_key():
    w = World()
    m = w.build()
    m.advance()
    m.advance()
    first_key = m.key
    w.calls.of("create_server")[0].fail(CloudError(BAD_REQUEST, "no such flavor", 400))
    m.advance()
    assert m.step is Step.WAIT_RETRY and m.failures == 1
    assert w.planner.refused == 1                     # the catalog is read again
    assert w.reporter.counters["create_errors"] == 1
    assert w.reporter.counters["launch_failures"] == 1
    assert w.ledger.entry_state(first_key) is None    # nothing was made: released
    w.clock.advance(RETRY_DELAY - 0.5)
    m.advance()
    assert len(w.calls.of("create_server")) == 1      # not before the delay
    w.clock.advance(1.0)
    m.advance()
    assert m.step is Step.CREATING and m.attempt == 2
    assert m.key != first_key
    assert len(w.calls.of("create_server")) == 2


def test_a_build_gives_up_after_launch_retries_failures():
    w = World(launch_retries=2)
    m = w.build()
    for _ in range(2):
        while m.step is not Step.CREATING:
            w.clock.advance(10.0)
            m.advance()
        w.calls.of("create_server")[-1].fail(CloudError(BAD_REQUEST, "bad", 400))
        m.advance()
    assert m.step is Step.FAILED and m.done
    assert "attempt 2 of 2" in m.reason


def test_a_server_still_building_after_launch_timeout_fails_and_is_deleted():
    w = World(launch_retries=1, launch_timeout=100.0)
    m = w.build()
    created(w, m)
    w.list_after(50.0, w.server(m, "BUILD"))
    m.advance()
    assert m.step is Step.BOOTING                     # slow, not late yet
    w.list_after(60.0, w.server(m, "BUILD"))
    m.advance()
    assert m.step is Step.FAILED
    assert [o.outcome for o in w.outcomes] == [outcomes.ERROR_CREATE_TIMEOUT]
    # The server is handed to a deletion, which keeps its quota counted.
    (deletion,) = w.deletions.active
    assert deletion.server_id == "s1" and deletion.key is not None
    assert w.ledger.entry_state(deletion.key) is EntryState.CREATED


def test_no_create_is_sent_while_the_quota_is_refused():
    w = World(max_servers=1)
    assert w.ledger.try_reserve("other", provider=PROVIDER, pool=POOL, cost=COST)
    m = w.build()
    m.advance()
    m.advance()
    assert m.step is Step.WAIT_QUOTA and "pool" in m.reason
    w.clock.advance(30.0)
    m.advance()
    assert m.step is Step.WAIT_QUOTA and not w.calls.made
    assert m.failures == 0
    w.ledger.release("other")
    m.advance()
    assert m.step is Step.CREATING and m.attempt == 1


def test_a_create_refused_for_quota_waits_without_counting_a_failure():
    w = World()
    m = w.build()
    m.advance()
    m.advance()
    key = m.key
    w.calls.of("create_server")[0].fail(CloudError(QUOTA, "Quota exceeded for cores", 403))
    m.advance()
    assert m.step is Step.WAIT_QUOTA and m.failures == 0
    assert w.reporter.counters["quota_errors"] == 1
    assert [o.outcome for o in w.outcomes] == [outcomes.ERROR_QUOTA]
    assert w.ledger.entry_state(key) is None


def test_a_create_without_an_answer_looks_for_the_server_in_a_later_list():
    w = World()
    m = w.build()
    m.advance()
    m.advance()
    w.clock.advance(5.0)
    w.calls.of("create_server")[0].fail(CloudError(UNAVAILABLE, "read timeout"))
    m.advance()
    assert m.step is Step.LOOKUP
    w.servers.publish(w.server(m, "BUILD"), at=w.clock() - 1.0)   # asked before: no answer
    m.advance()
    assert m.step is Step.LOOKUP
    w.list_after(3.0, w.server(m, "BUILD"))
    m.advance()
    assert m.step is Step.BOOTING and m.server_id == "s1"


# -- deleting -------------------------------------------------------------------------


def _deletion(w: World, server: dict, key: str) -> Any:
    assert w.ledger.try_reserve(key, provider=PROVIDER, pool=POOL, cost=COST)
    w.ledger.create_issued(key)
    w.ledger.create_accepted(key, server["id"])
    w.servers.publish(server, at=w.clock())
    return w.deletions.delete(server["id"], key=key, node_id="0000000001", attempt=1,
                              since=w.clock())


def test_a_failed_delete_is_resent_after_a_backoff():
    w = World()
    m = w.build()
    d = _deletion(w, w.server(m, "ACTIVE"), "k1")
    d.advance()
    assert d.step is DeleteStep.SENT
    w.calls.of("delete_server")[0].fail(CloudError(UNAVAILABLE, "503", 503))
    d.advance()
    assert d.step is DeleteStep.SEND and d.errors == 1 and "delete failed" in d.reason
    w.clock.advance(1.0)
    d.advance()
    assert len(w.calls.of("delete_server")) == 1      # backing off (2 s after one error)
    w.clock.advance(1.5)
    d.advance()
    assert d.step is DeleteStep.SENT and len(w.calls.of("delete_server")) == 2


def test_a_deleted_server_is_gone_once_a_later_list_lacks_it():
    w = World()
    m = w.build()
    server = w.server(m, "ACTIVE")
    server["addresses"]["public"] = [{"addr": "203.0.113.9", "version": 4,
                                      "OS-EXT-IPS:type": "floating"}]
    d = _deletion(w, server, "k1")
    d.advance()
    w.clock.advance(1.0)
    w.calls.of("delete_server")[0].answer(None)
    d.advance()
    assert d.step is DeleteStep.WAIT_GONE
    assert w.ledger.entry_state("k1") is EntryState.DELETING
    # A list asked for before the DELETE was answered proves nothing.
    w.servers.publish(at=w.clock() - 0.5)
    d.advance()
    assert d.step is DeleteStep.WAIT_GONE
    w.list_after(4.0, server)
    d.advance()
    assert d.step is DeleteStep.WAIT_GONE and d.still_listed_at == w.clock()
    w.list_after(4.0)
    d.advance()
    assert d.done
    assert w.ledger.entry_state("k1") is None
    assert w.floating_ips.deleted == ["203.0.113.9"]
    assert w.reporter.counters["deletes_completed"] == 1
    assert "delete_observed" in w.pacer.told


def test_one_deletion_per_server():
    w = World()
    m = w.build()
    d = _deletion(w, w.server(m, "ACTIVE"), "k1")
    again = w.deletions.delete("s1", key=None, node_id="0000000001", attempt=None,
                               since=w.clock())
    assert again is d and len(w.deletions.active) == 1


def test_a_node_deletion_deletes_its_server_and_every_other_of_the_node():
    w = World()
    m = w.build()
    ours, stray = w.server(m, "ACTIVE", "s1"), w.server(m, "ERROR", "s0")
    spec = DeleteSpec(node_id="0000000001", provider_name=PROVIDER, pool_name=POOL,
                      labels=("small",), external_id="s1", state="ready")
    node = NodeDeletion(w.ctx, w.deletions, spec)
    node.advance()
    assert not node.searched                          # waits for a list asked after it
    w.list_after(1.0, ours, stray)
    node.advance()
    assert node.searched and set(node.deletions) == {"s1", "s0"}
    assert node.status().state is DeleteState.DELETING
    w.advance_deletions()
    for call in w.calls.of("delete_server"):
        call.answer(None)
    w.clock.advance(1.0)
    w.advance_deletions()
    w.list_after(2.0)
    w.advance_deletions()
    assert node.done and node.status().state is DeleteState.DONE
    assert not w.deletions.active


@pytest.mark.parametrize("cancel_while", [Step.CREATING, Step.BOOTING])
def test_a_cancelled_build_leaves_its_server_to_a_deletion(cancel_while):
    w = World()
    m = w.build()
    if cancel_while is Step.CREATING:
        m.advance()
        m.advance()
    else:
        created(w, m)
    m.cancel()
    assert m.step is Step.FAILED and m.cancelled
    (deletion,) = w.deletions.active
    assert deletion.node_id == "0000000001"
    assert (deletion.step is DeleteStep.FIND) == (cancel_while is Step.CREATING)
