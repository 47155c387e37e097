"""The per-provider API gate: priorities, budget, deadline, counters (real threads)."""

from __future__ import annotations

import threading
import time

import pytest

from nodepool.driver.budget import AdaptiveLimit, Priority
from nodepool.driver.gate import ApiGate, ApiTimeout, GateClosed


def one_at_a_time() -> AdaptiveLimit:
    return AdaptiveLimit(floor=1, ceiling=1, value=1)


class FakeClock:
    """Monotonic time that moves only when told to (or when the gate sleeps)."""

    def __init__(self):
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)


def wait_until(cond, timeout=10.0):
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    raise AssertionError("condition not met within deadline")


def test_results_and_errors_reach_the_poller():
    gate = ApiGate("p", deadline=30)
    ok = gate.submit("get", lambda x: x * 2, 21)
    bad = gate.submit("get", lambda: 1 / 0)
    assert ok.wait(5) and bad.wait(5)
    assert ok.result() == 42
    with pytest.raises(ZeroDivisionError):
        bad.result()
    st = gate.stats()["get"]
    assert st["count"] == 2 and st["errors"] == 1 and st["timeouts"] == 0
    gate.shutdown()


def test_hung_call_times_out_and_does_not_starve_the_gate():
    clock = FakeClock()
    gate = ApiGate("p", deadline=5, limit=one_at_a_time(), clock=clock)
    release = threading.Event()
    hung = gate.submit("create", release.wait)
    wait_until(lambda: hung.started_at is not None)
    assert not hung.done()
    clock.advance(6)
    assert hung.done()
    with pytest.raises(ApiTimeout):
        hung.result()
    assert gate.in_flight()[0]["expired"] is True
    # The only worker is stuck in a call that never returns; the next call
    # still runs because the gate writes the hung worker off.
    nxt = gate.submit("list", lambda: "fresh")
    assert nxt.wait(5)
    assert nxt.result() == "fresh"
    release.set()
    wait_until(lambda: gate.in_flight() == [])
    assert gate.stats()["create"]["timeouts"] == 1
    gate.shutdown()


def test_shutdown_fails_queued_calls_cleanly():
    clock = FakeClock()
    gate = ApiGate("p", deadline=5, limit=one_at_a_time(), clock=clock)
    block = threading.Event()
    first = gate.submit("a", block.wait)
    wait_until(lambda: first.started_at is not None)
    queued = gate.submit("b", lambda: 1)
    gate.shutdown(wait=0)
    assert queued.done()
    with pytest.raises(GateClosed):
        queued.result()
    after = gate.submit("c", lambda: 1)
    with pytest.raises(GateClosed):
        after.result()
    block.set()


def test_a_create_is_never_queued_behind_status_lists():
    gate = ApiGate("p", deadline=30, limit=one_at_a_time())
    block = threading.Event()
    order = []
    first = gate.submit("compute.get_limits", block.wait)
    wait_until(lambda: first.started_at is not None)
    lists = [gate.submit("compute.list_servers", order.append, "list") for _ in range(5)]
    sweep = gate.submit("network.list_ports", order.append, "sweep", priority=Priority.SWEEP)
    limits = gate.submit("compute.get_limits", order.append, "limits")
    create = gate.submit("compute.create_server", order.append, "create")
    delete = gate.submit("compute.delete_server", order.append, "delete")
    assert gate.budget()["queued"] == {"node": 2, "status": 5, "background": 1, "sweep": 1}
    block.set()
    for c in lists + [sweep, limits, create, delete]:
        assert c.wait(5)
    assert order == ["create", "delete"] + ["list"] * 5 + ["limits", "sweep"]
    st = gate.stats()
    assert st["compute.list_servers"]["max_wait_seconds"] >= \
        st["compute.create_server"]["max_wait_seconds"]
    assert st["compute.list_servers"]["in_flight"] == 0
    gate.shutdown()


def test_lower_classes_leave_the_last_slot_to_a_waiting_create():
    # Creates wait for their token (rate); reads may use every slot but one.
    gate = ApiGate("p", deadline=30, rate=3600, limit=AdaptiveLimit(floor=3, ceiling=3,
                                                                      value=3))
    burst = [gate.submit("compute.create_server", lambda: None) for _ in range(2)]
    for c in burst:
        assert c.wait(5)
    release = threading.Event()
    waiting_create = gate.submit("compute.create_server", lambda: None)
    reads = [gate.submit("compute.list_servers", release.wait) for _ in range(4)]
    wait_until(lambda: gate.budget()["in_flight"] == 2)
    assert gate.budget()["queued"] == {"node": 1, "status": 2, "background": 0, "sweep": 0}
    assert not waiting_create.done()
    release.set()
    for c in reads:
        assert c.wait(5)
    gate.shutdown(wait=0)


def test_mutating_calls_follow_the_rate_reads_their_own_budget():
    gate = ApiGate("p", deadline=30, rate=0.05)
    assert gate.read_rate == 0.05 / 5
    creates = [gate.submit("compute.create_server", lambda: None) for _ in range(12)]
    reads = [gate.submit("compute.list_servers", lambda: None) for _ in range(12)]
    for c in creates + reads:
        assert c.wait(10)
    starts = sorted(c.started_at for c in creates)
    # At most the burst (2) at once, then one per 0.05 s on average.
    for i, t0 in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 2 + (starts[j] - t0) / 0.05 + 1e-6
    # Reads did not wait for creates' tokens.
    assert max(c.started_at for c in reads) < max(starts)
    gate.shutdown()


class _Http429(Exception):
    status_code = 429

    class response:
        headers = {"Retry-After": "0.3"}


def test_429_halves_the_concurrency_and_holds_calls_for_retry_after():
    gate = ApiGate("p", deadline=30, limit=AdaptiveLimit(floor=2, ceiling=16, value=16))

    def refused():
        raise _Http429("Too Many Requests")
    c = gate.submit("compute.list_servers", refused)
    assert c.wait(5)
    b = gate.budget()
    assert b["concurrency_limit"] == 8 and b["overloads"] == 1
    assert 0 < b["held_for"] <= 0.3
    nxt = gate.submit("compute.list_servers", lambda: "ok")
    assert nxt.wait(5) and nxt.result() == "ok"
    assert nxt.started_at - c.finished_at >= 0.3 - 0.01
    gate.shutdown()


# -- against the fakecloud, through openstacksdk -------------------------------


def _run_batch(gate, fn, n=24, timeout=30):
    calls = [gate.submit("compute.list_servers", fn) for _ in range(n)]
    for c in calls:
        assert c.wait(timeout)
    return calls


def test_adaptive_concurrency_backs_off_on_503_and_recovers(fakecloud, fakecloud_connect):
    from nodepool.driver.openstack.cloud import OpenStackCloud
    cloud = OpenStackCloud(fakecloud_connect(fakecloud, api_timeout=10))
    cloud.list_servers()
    gate = ApiGate("p", deadline=30, limit=AdaptiveLimit(floor=2, ceiling=16, value=16))
    # An API with room for 3 concurrent requests, refusing beyond 4.
    fakecloud.set_faults(capacity=3, overload_503_factor=1.5, overload_seconds=0.05,
                         latency_seconds=0.05, match="servers/detail")
    _run_batch(gate, cloud.list_servers)
    b = gate.budget()
    assert fakecloud.counters()["faults"].get("overload_503", 0) >= 1
    assert b["decreases"] >= 1 and b["concurrency_limit"] < 16
    low = b["concurrency_limit"]
    # Healthy again: the limit climbs back while calls keep it busy.
    fakecloud.set_faults(capacity=0, latency_seconds=0.02)
    deadline = time.monotonic() + 30
    while gate.budget()["concurrency_limit"] <= low + 2:
        assert time.monotonic() < deadline, gate.budget()
        calls = _run_batch(gate, cloud.list_servers)
        assert all(c.result() == [] for c in calls)
    gate.shutdown()
    cloud.close()


def test_429_from_the_cloud_holds_the_gate_for_retry_after(fakecloud, fakecloud_connect):
    from nodepool.driver.openstack.cloud import OpenStackCloud
    cloud = OpenStackCloud(fakecloud_connect(fakecloud, api_timeout=10))
    cloud.list_servers()
    gate = ApiGate("p", deadline=30)
    fakecloud.set_faults(error_429_rate=1.0, retry_after_seconds=0.5)
    refused = gate.submit("compute.list_servers", cloud.list_servers)
    assert refused.wait(10)
    with pytest.raises(Exception) as e:
        refused.result()
    assert getattr(e.value, "status_code", None) == 429
    fakecloud.set_faults(error_429_rate=0.0)
    b = gate.budget()
    assert b["overloads"] == 1 and b["concurrency_limit"] == 4 and b["held_for"] > 0
    after = gate.submit("compute.list_servers", cloud.list_servers)
    assert after.wait(10) and after.result() == []
    assert after.started_at - refused.finished_at >= 0.5 - 0.01
    gate.shutdown()
    cloud.close()


def test_written_off_workers_are_bounded():
    """An API that never answers: each hung call's worker is written off and
    replaced, but never more than MAX_WRITTEN_OFF at once; then calls wait
    for a hung one to return instead of starting a thread each."""
    from nodepool.driver import gate as gate_mod
    clock = FakeClock()
    gate = ApiGate("p", deadline=5, limit=one_at_a_time(), clock=clock)
    release = threading.Event()
    calls = []
    for _ in range(gate_mod.MAX_WRITTEN_OFF + 3):
        calls.append(gate.submit("create", release.wait))
        wait_until(lambda: gate.budget()["in_flight"] == 1 or
                   gate.budget()["written_off"] >= gate_mod.MAX_WRITTEN_OFF)
        clock.advance(6)  # the running call passes its deadline
    budget = gate.budget()
    assert budget["written_off"] == gate_mod.MAX_WRITTEN_OFF
    alive = sum(1 for t in threading.enumerate() if t.name.startswith("api-p-"))
    assert alive <= gate_mod.MAX_WRITTEN_OFF + 1
    queued = [c for c in calls if c.started_at is None]
    assert queued, "calls beyond the bound wait instead of getting a thread"
    release.set()  # the API answers again: the hung workers return
    # ... and the calls that waited run, without another submit to wake them.
    wait_until(lambda: all(c.started_at is not None for c in queued))
    wait_until(lambda: gate.budget()["written_off"] == 0)
    late = gate.submit("list", lambda: "fresh")
    wait_until(late.done)
    assert late.result() == "fresh"
    gate.shutdown()


def test_the_budget_is_split_between_the_launchers_of_a_project():
    gate = ApiGate("p", deadline=5, rate=0.5, read_rate=0.1)
    try:
        ceiling = gate.limit.ceiling
        gate.set_share(3)
        budget = gate.budget()
        assert budget["share"] == 3
        assert (budget["rate"], budget["read_rate"]) == (1.5, pytest.approx(0.3))
        assert budget["concurrency_ceiling"] == max(gate.limit.floor, ceiling // 3)
        assert gate.limit.limit <= budget["concurrency_ceiling"]
        # A reload keeps the split; one launcher again restores the whole budget.
        gate.set_rates(1.0, None)
        assert gate.budget()["rate"] == 3.0
        gate.set_share(1)
        budget = gate.budget()
        assert (budget["share"], budget["rate"], budget["concurrency_ceiling"]) == (1, 1.0,
                                                                                    ceiling)
        gate.set_share(0)   # never below one launcher
        assert gate.budget()["share"] == 1
    finally:
        gate.shutdown(wait=1.0)


def test_an_answered_call_wakes_the_provider_loop():
    # The loop would pass again only after a minute; the call's answer
    # brings the next pass forward (a freed instance or an ACTIVE server is
    # acted on at once).
    from nodepool.driver.loop import ProviderLoop
    passes: list[float] = []
    loop = ProviderLoop("p", lambda: passes.append(time.monotonic()), lambda: 60.0)
    gate = ApiGate("p", deadline=5)
    gate.on_done = loop.wake
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not passes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(passes) == 1
        call = gate.submit("compute.list_servers", lambda: "listed")
        while len(passes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert call.done() and len(passes) == 2
    finally:
        loop.stop(wait=5)
        gate.shutdown()


def test_lists_asked_for_now_stay_within_one_per_interval():
    # want_now lists before the interval when the budget allows (after a
    # quiet spell), but under steady demand the lists still come at one per
    # interval on average, plus the burst.
    from nodepool.driver.list_cache import URGENT_BURST, ListCache
    now = [1000.0]
    gate = ApiGate("p", deadline=5, clock=lambda: now[0])
    cache = ListCache(gate, lambda: [], interval=2.0, clock=lambda: now[0])
    started: list = []

    def step() -> None:
        if cache._call is not None:
            cache._call.wait(5)
        cache.tick()
        if cache._call is not None and (not started or cache._call is not started[-1]):
            started.append(cache._call)
        now[0] += 0.05

    try:
        step()                             # the first list
        for _ in range(10):                # 0.5 s later: nobody asked, nothing
            step()
        assert len(started) == 1
        cache.want_now()                   # asked now: listed at once, not 1.5 s on
        step()
        assert len(started) == 2
        for _ in range(2400):              # 120 s of asking all the time
            cache.want_now()
            step()
    finally:
        gate.shutdown()
    assert 2 + 60 <= len(started) <= 2 + 60 + URGENT_BURST
