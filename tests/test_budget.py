"""The API budget's pure logic: token bucket, AIMD limit, latency watch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodepool.driver.budget import (AdaptiveLimit, LatencyWatch, Priority, TokenBucket,
                                    default_priority, is_mutating)


@given(rate=st.floats(0.1, 50), burst=st.floats(1, 5),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_token_bucket_never_exceeds_burst_plus_rate(rate, burst, gaps):
    bucket = TokenBucket(rate, burst)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.try_take(now):
            taken.append(now)
    # Over any window, at most the burst plus what the rate refills.
    for i, t0 in enumerate(taken):
        for j in range(i, len(taken)):
            assert j - i + 1 <= burst + (taken[j] - t0) * rate + 1e-6


@given(rate=st.floats(0.1, 50), burst=st.floats(1, 5), start=st.floats(0, 1000))
def test_token_bucket_wait_time_is_when_the_next_token_comes(rate, burst, start):
    bucket = TokenBucket(rate, burst)
    while bucket.try_take(start):
        pass
    wait = bucket.wait_time(start)
    assert 0 < wait <= 1 / rate + 1e-9
    assert bucket.try_take(start + wait + 1e-9)


def test_token_bucket_saves_a_small_burst_after_idle_time():
    bucket = TokenBucket(1.0, 2)
    assert bucket.try_take(0) and bucket.try_take(0) and not bucket.try_take(0)
    assert sum(bucket.try_take(100.0) for _ in range(5)) == 2


events = st.lists(st.one_of(st.tuples(st.just("ok"), st.integers(0, 40)),
                            st.tuples(st.just("overload"), st.floats(0, 3))), max_size=300)


@given(events=events)
def test_adaptive_limit_stays_within_floor_and_ceiling(events):
    limit = AdaptiveLimit(floor=2, ceiling=32, value=8)
    now = 0.0
    for kind, value in events:
        if kind == "ok":
            limit.on_success(value)
        else:
            now += value
            limit.on_overload(now)
        assert 2 <= limit.limit <= 32


def test_adaptive_limit_halves_once_per_cooldown_and_recovers_additively():
    limit = AdaptiveLimit(floor=2, ceiling=32, value=16, cooldown=1.0)
    assert limit.on_overload(10.0) and limit.limit == 8
    assert not limit.on_overload(10.5) and limit.limit == 8   # the same burst
    assert limit.on_overload(11.0) and limit.limit == 4
    # Calls ending well while the limit is used: about +1 per window of
    # 'limit' calls (1/limit each).
    for _ in range(4 + 5 + 6):
        limit.on_success(limit.limit)
    assert 6.5 < limit.value < 7.5
    grown = limit.value
    # Idle calls (far below the limit) prove nothing: no increase.
    for _ in range(100):
        limit.on_success(1)
    assert limit.value == grown
    for _ in range(10):
        limit.on_overload(limit.last_decrease + 1.0)
    assert limit.limit == 2 and limit.decreases == 12


def test_latency_watch_sees_rising_latency_not_jitter():
    watch = LatencyWatch()
    assert not any(watch.add(0.01 + (i % 3) * 0.01) for i in range(30))
    rising = [watch.add(1.5) for _ in range(5)]
    assert rising[-1]


def test_one_very_slow_answer_does_not_keep_latency_rising():
    # The first answer after a hang took 10 s; the ones after it are fast
    # again, and so is the cloud.
    watch = LatencyWatch()
    assert not any(watch.add(0.02) for _ in range(20))
    watch.add(10.0)
    assert [watch.add(0.02) for _ in range(3)][-1] is False
    # Answers that stay slow still count as rising.
    assert [watch.add(2.0) for _ in range(5)][-1] is True


def test_call_classes():
    assert default_priority("compute.create_server") is Priority.NODE
    assert default_priority("compute.delete_server") is Priority.NODE
    assert default_priority("compute.list_servers") is Priority.STATUS
    assert default_priority("compute.get_limits") is Priority.BACKGROUND
    assert default_priority("catalog.list_images") is Priority.BACKGROUND
    assert is_mutating("compute.create_server") and is_mutating("network.delete_floating_ip")
    assert is_mutating("network.delete_port")
    assert not is_mutating("compute.list_servers") and not is_mutating("connect")
    assert not is_mutating("compute.get_console_output")
