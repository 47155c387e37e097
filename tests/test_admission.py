"""The handler's admission: which questions about room reach the builder,
and how often.  Pure logic: a recording builder and a fake clock."""

from __future__ import annotations

from nodepool.requests.admission import (MAX_SERVERS_TELL_INTERVAL, NEVER_FITS_QUOTA,
                                         Admission)
from nodepool.requests.builder import Capacity, LaunchConcurrency
from nodepool.requests.protocol import PoolSettings
from nodepool.zk.records import NodeRequest


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Builder:
    """Answers what it is told to, and records every question."""

    def __init__(self, capacity=Capacity.AVAILABLE, tenant=Capacity.AVAILABLE,
                 missing_images=(), concurrency=None) -> None:
        self.answer = capacity
        self.tenant = tenant
        self.missing_images = list(missing_images)
        self.concurrency = concurrency
        self.asked: list[tuple] = []

    def capacity(self, labels, pool=None):
        self.asked.append(("capacity", tuple(labels), pool))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def tenant_capacity(self, tenant, labels, pool=None):
        self.asked.append(("tenant", tenant, tuple(labels), pool))
        return self.tenant

    def unavailable_images(self, labels, pool=None):
        self.asked.append(("images", tuple(labels), pool))
        return self.missing_images

    def launch_concurrency(self):
        self.asked.append(("concurrency",))
        return self.concurrency

    def capacity_asks(self) -> list[tuple]:
        return [a for a in self.asked if a[0] == "capacity"]


def _admission(builder, max_servers=10, clock=None) -> Admission:
    pool = PoolSettings(pool_id="host-PoolWorker.cloud-main-1", provider_name="cloud",
                        pool_name="main", labels=frozenset({"small", "large"}),
                        max_servers=max_servers)
    return Admission(builder, pool, clock or _Clock())


def _request(*labels, tenant="tenant-one") -> NodeRequest:
    return NodeRequest(id="100-0000000001", node_types=list(labels), tenant_name=tenant)


def test_a_request_accepted_and_filled_in_one_pass_asks_once_for_its_node():
    builder = _Builder()
    admission = _admission(builder)
    admission.begin_pass()
    assert admission.of_request(_request("small")).declines == ()
    assert admission.of_node("small", [], 0) is Capacity.AVAILABLE
    assert builder.capacity_asks() == [("capacity", ("small",), "main")]


def test_answers_last_until_room_changes_or_the_pass_ends():
    builder = _Builder(capacity=Capacity.WAIT)
    admission = _admission(builder)
    admission.begin_pass()
    for _ in range(3):      # requests waiting behind the same label
        assert admission.of_node("small", [], 0) is Capacity.WAIT
    assert len(builder.capacity_asks()) == 1
    admission.room_changed()
    builder.answer = Capacity.AVAILABLE
    assert admission.of_node("small", [], 0) is Capacity.AVAILABLE
    assert admission.of_node("large", [], 0) is Capacity.AVAILABLE
    assert len(builder.capacity_asks()) == 3
    admission.begin_pass()
    admission.of_node("small", [], 0)
    assert len(builder.capacity_asks()) == 4


def test_a_whole_request_is_asked_for_its_labels_together():
    builder = _Builder()
    admission = _admission(builder)
    admission.begin_pass()
    admission.of_request(_request("small", "large"))
    admission.of_node("small", [], 0)
    assert builder.capacity_asks() == [("capacity", ("small", "large"), "main"),
                                       ("capacity", ("small",), "main")]


def test_images_are_checked_before_quota():
    builder = _Builder(missing_images=["ubuntu"])
    verdict = _admission(builder).of_request(_request("small"))
    assert verdict.declines == ("images are not available: no READY upload of ubuntu "
                                "for this provider",)
    assert builder.capacity_asks() == []


def test_a_request_that_never_fits_is_declined_without_asking_the_tenant():
    builder = _Builder(capacity=Capacity.NEVER)
    verdict = _admission(builder).of_request(_request("small"))
    assert verdict.declines == (NEVER_FITS_QUOTA,)
    assert not [a for a in builder.asked if a[0] == "tenant"]


def test_tenant_limits_decline_or_leave_the_request_for_later():
    never = _admission(_Builder(tenant=Capacity.NEVER)).of_request(_request("small"))
    assert never.declines == ("it would never fit tenant tenant-one's resource limits",)
    later = _admission(_Builder(tenant=Capacity.WAIT)).of_request(_request("small"))
    assert later.tenant_waits and later.declines == ()


def test_a_failing_capacity_check_counts_as_no_headroom():
    admission = _admission(_Builder(capacity=RuntimeError("boom")))
    assert admission.of_node("small", [], 0) is Capacity.WAIT


def test_at_max_servers_the_builder_is_told_about_once_a_second():
    clock = _Clock()
    builder = _Builder()
    admission = _admission(builder, max_servers=1, clock=clock)
    for _ in range(5):
        admission.begin_pass()
        assert admission.of_node("small", [], 1) is Capacity.WAIT   # whatever it says
        clock.now += MAX_SERVERS_TELL_INTERVAL / 2
    assert len(builder.capacity_asks()) == 3      # at 0, 1 and 2 intervals


def test_at_max_servers_an_answer_given_in_the_pass_already_told_the_builder():
    clock = _Clock()
    builder = _Builder()
    admission = _admission(builder, max_servers=1, clock=clock)
    admission.begin_pass()
    admission.of_request(_request("small"))
    assert admission.of_node("small", [], 1) is Capacity.WAIT
    assert len(builder.capacity_asks()) == 1
    # ... and counts as the tell of this second.
    admission.begin_pass()
    clock.now += MAX_SERVERS_TELL_INTERVAL / 2
    admission.of_node("small", [], 1)
    assert len(builder.capacity_asks()) == 1


def test_max_concurrency_zero_looks_at_no_request():
    builder = _Builder(concurrency=LaunchConcurrency(0, 0))
    assert _admission(builder).begin_assignment() is False


def test_max_concurrency_once_reached_stays_reached_for_the_assignment():
    builder = _Builder(concurrency=LaunchConcurrency(2, 1))
    admission = _admission(builder)
    assert admission.begin_assignment()
    assert not admission.concurrency_reached()
    builder.concurrency = LaunchConcurrency(2, 2)
    assert admission.concurrency_reached()
    builder.concurrency = LaunchConcurrency(2, 0)
    assert admission.concurrency_reached()
    asks = len(builder.asked)
    assert admission.concurrency_reached() and len(builder.asked) == asks
    assert admission.begin_assignment()             # a new assignment asks again
    assert not admission.concurrency_reached()


def test_without_a_concurrency_limit_nothing_is_reached():
    builder = _Builder(concurrency=LaunchConcurrency(None, 50))
    admission = _admission(builder)
    assert admission.begin_assignment()
    assert not admission.concurrency_reached()
    assert builder.asked == [("concurrency",)]
