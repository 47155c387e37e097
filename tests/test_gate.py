"""The per-provider API gate: rate, deadline, counters (real threads, fake clock)."""

from __future__ import annotations

import threading

import pytest

from nodepool.driver.gate import ApiGate, ApiTimeout, GateClosed


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


def test_calls_are_spaced_by_the_rate():
    clock = FakeClock()
    gate = ApiGate("p", interval=2.0, deadline=30, workers=3, clock=clock, sleep=clock.sleep)
    starts = []
    calls = [gate.submit("list", lambda: starts.append(clock())) for _ in range(6)]
    for c in calls:
        assert c.wait(10)
        c.result()
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= 2.0 - 1e-9 for g in gaps), gaps
    assert gate.stats()["list"]["count"] == 6
    gate.shutdown()


def test_results_and_errors_reach_the_poller():
    gate = ApiGate("p", interval=0, deadline=30, workers=2)
    ok = gate.submit("get", lambda x: x * 2, 21)
    bad = gate.submit("get", lambda: 1 / 0)
    assert ok.wait(5) and bad.wait(5)
    assert ok.result() == 42
    with pytest.raises(ZeroDivisionError):
        bad.result()
    st = gate.stats()["get"]
    assert st["count"] == 2 and st["errors"] == 1 and st["timeouts"] == 0
    assert gate.call("get", lambda: "sync") == "sync"
    gate.shutdown()


def test_hung_call_times_out_and_does_not_starve_the_gate():
    clock = FakeClock()
    gate = ApiGate("p", interval=0, deadline=5, workers=1, clock=clock, sleep=clock.sleep)
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
    gate = ApiGate("p", interval=0, deadline=5, workers=1, clock=clock, sleep=clock.sleep)
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
