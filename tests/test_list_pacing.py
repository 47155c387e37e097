"""When the OpenStack provider asks for server lists (pure logic, fake clock).

The pacer is driven here as the provider's loop drives it; the list it asks
is a stand-in that records what was asked, since when a list is *made* is
the list cache's business (tests/test_gate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodepool.driver.list_cache import ListSnapshot
from nodepool.driver.openstack import list_pacing
from nodepool.driver.openstack.list_pacing import ListPacer

DELETING = {"status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"}


@dataclass
class AskedList:
    """What a ``ListCache`` was asked for."""

    snapshot: ListSnapshot = field(default_factory=ListSnapshot)
    fresh: list[tuple[float | None, float | None]] = field(default_factory=list)
    now: int = 0

    def want_fresh(self, after: float | None = None, *, within: float | None = None) -> None:
        self.fresh.append((after, within))

    def want_now(self) -> None:
        self.now += 1

    def asked(self) -> bool:
        return bool(self.fresh or self.now)

    def forget(self) -> None:
        self.fresh.clear()
        self.now = 0


@dataclass
class Machines:
    """What the provider tells the pacer of its machines."""

    waiting_builds: bool = False
    operator: bool = False
    boots: list = field(default_factory=list)        # (answered at, seen building at)
    deletions: list = field(default_factory=list)    # (server id, sent at if waiting to go)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make() -> tuple[ListPacer, AskedList, AskedList, Machines, Clock]:
    servers, ports, m, clock = AskedList(), AskedList(), Machines(), Clock()
    pacer = ListPacer(servers, ports, clock,  # type: ignore[arg-type]
                      builds_wait_quota=lambda: m.waiting_builds,
                      operator_awaits=lambda: m.operator,
                      booting=lambda: list(m.boots), deletions=lambda: list(m.deletions))
    return pacer, servers, ports, m, clock


def test_a_capacity_wait_is_remembered_for_a_while_and_a_refused_build_counts():
    pacer, _, _, m, clock = make()
    assert not pacer.quota_waiting()
    pacer.note_quota_wait()
    clock.t += list_pacing.QUOTA_WAIT_MEMORY - 0.1
    assert pacer.quota_waiting()
    clock.t += 0.2
    assert not pacer.quota_waiting()
    m.waiting_builds = True
    assert pacer.quota_waiting()


def test_a_deleted_server_is_listed_for_only_while_somebody_waits():
    pacer, servers, _, m, clock = make()
    pacer.expect_gone(clock.t)
    assert not servers.asked()              # nobody waits: lists made anyway do
    m.operator = True                       # nodepool delete --now
    pacer.expect_gone(clock.t)
    assert servers.fresh == [(clock.t, None)]
    m.operator = False
    servers.forget()
    pacer.note_quota_wait()                 # a request waits for capacity
    pacer.expect_gone(clock.t - 1)
    assert servers.fresh == [(clock.t - 1, None)]


def test_who_waits_is_fixed_for_one_pass():
    pacer, servers, _, m, clock = make()
    pacer.begin_pass()
    m.operator = True                       # changes only between passes
    pacer.expect_gone(clock.t)
    assert not servers.asked()
    pacer.end_pass()
    pacer.expect_gone(clock.t)
    assert servers.asked()


def test_a_boot_asks_for_lists_at_the_pace_until_boot_times_are_learned():
    pacer, servers, _, _, clock = make()
    pacer.expect_active(0.0, after=clock.t)
    assert servers.fresh == [(clock.t, None)]
    for _ in range(3):
        pacer.boot_observed(3.0, 3.0)
    servers.forget()
    # Learned: the ready looks cover the boot, up to the window's end.
    pacer.expect_active(0.0, after=clock.t)
    pacer.expect_active(4.9)
    assert not servers.asked()
    pacer.expect_active(5.1)                # outlived every boot seen
    assert servers.fresh == [(None, None)]
    servers.forget()
    pacer.note_quota_wait()                 # the ledger wants new servers seen soon
    pacer.expect_active(1.0)
    assert servers.asked()


def test_the_ready_look_comes_when_the_boots_have_likely_ended():
    pacer, servers, _, m, clock = make()
    for _ in range(3):
        pacer.boot_observed(3.0, 3.0)
    answered = clock.t
    servers.snapshot = ListSnapshot(requested_at=answered + 1.0)
    m.boots = [(answered, answered + 1.0)]
    clock.t = answered + 2.5
    pacer.look_for_ready()
    assert not servers.asked()
    clock.t = answered + 3.0
    pacer.look_for_ready()
    assert servers.now == 1 and not servers.fresh


def test_deleted_servers_are_looked_for_when_likely_gone_while_requests_wait():
    pacer, servers, _, m, clock = make()
    for _ in range(3):
        pacer.delete_observed(2.5, 2.5)
    sent = clock.t
    m.deletions = [("s1", sent), ("s2", None)]   # s2: its DELETE not yet answered
    servers.snapshot = ListSnapshot(requested_at=sent + 1.0)
    clock.t = sent + 2.5
    pacer.look_for_gone()
    assert not servers.asked()              # nobody waits for quota
    clock.t = sent + 2.0
    pacer.note_quota_wait()
    pacer.look_for_gone()
    assert not servers.asked()              # not likely gone yet
    clock.t = sent + 2.5
    pacer.look_for_gone()
    assert servers.fresh == [(None, list_pacing.GONE_CHECK_INTERVAL)]


def test_servers_someone_else_deletes_count_from_the_list_before():
    pacer, servers, _, m, clock = make()
    for _ in range(3):
        pacer.delete_observed(2.5, 2.5)
    m.deletions = [("ours", None)]
    servers.snapshot = ListSnapshot({"x": {"status": "ACTIVE"}}, requested_at=10.0)
    pacer.list_arrived()
    servers.snapshot = ListSnapshot({"x": DELETING, "ours": DELETING}, requested_at=12.0)
    pacer.list_arrived()
    assert pacer._deleting_elsewhere == {"x": 10.0}
    pacer.note_quota_wait()
    clock.t = 12.4                          # 2.4 s after the list before: not yet
    pacer.look_for_gone()
    assert not servers.asked()
    clock.t = 12.5
    pacer.look_for_gone()
    assert servers.fresh == [(None, list_pacing.GONE_CHECK_INTERVAL)]
    servers.snapshot = ListSnapshot({}, requested_at=13.0)
    pacer.list_arrived()
    assert pacer._deleting_elsewhere == {}


def test_a_list_missing_servers_is_followed_at_once_when_somebody_waits():
    pacer, servers, _, m, _ = make()
    servers.snapshot = ListSnapshot({"a": {}}, requested_at=5.0, unconfirmed=frozenset({"a"}))
    pacer.look_for_gone()
    assert not servers.asked()
    m.operator = True
    pacer.look_for_gone()
    assert servers.now == 1


def test_a_reading_is_anchored_by_a_list_while_requests_wait_for_deletes():
    pacer, servers, _, m, _ = make()
    asked_others = []

    def others() -> bool:
        asked_others.append(True)
        return True

    pacer.reading_applied(others)
    assert not servers.asked() and not asked_others    # nobody waits: not even asked
    pacer.note_quota_wait()
    m.deletions = [("s1", None)]
    pacer.reading_applied(lambda: False)
    assert not servers.asked()              # nothing pending that a list could prove
    pacer.reading_applied(others)
    assert servers.fresh == [(None, list_pacing.GONE_CHECK_INTERVAL)]
    servers.forget()
    m.deletions = [("s1", 3.0)]
    pacer.reading_applied(lambda: False)
    assert servers.asked()


def test_machines_needs_go_to_the_right_list():
    pacer, servers, ports, _, _ = make()
    pacer.awaited(7.0)
    pacer.ports_awaited(8.0)
    assert servers.fresh == [(7.0, None)] and ports.fresh == [(8.0, None)]
