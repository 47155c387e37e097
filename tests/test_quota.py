"""The pure quota core: arithmetic, the ledger's counting rule, backoff, refresh
policy, quota-error detection.  No cloud, no ZooKeeper: plain objects, a fake
clock and fixed randomness."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)
from openstack import exceptions as sdk_exc

from nodepool.quota import (BACKOFF, CLOUD, LIMITS_UNKNOWN, POOL, TENANT, UNLIMITED, ZERO,
                            BackoffPolicy, CloudLimits, EntryState, PoolQuota, QuotaBackoff,
                            QuotaLedger, RefreshPolicy, Resources, cloud_headroom,
                            is_quota_error, is_quota_exception, is_quota_fault, label_cost,
                            limits_refresh_due, tenant_limits_from_config)

INF = math.inf


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def nova_limits(instances=10, cores=100, ram=100_000, used=(0, 0, 0), volume=None,
                read_at=0.0) -> CloudLimits:
    compute = {"maxTotalInstances": instances, "maxTotalCores": cores,
               "maxTotalRAMSize": ram, "totalInstancesUsed": used[0],
               "totalCoresUsed": used[1], "totalRAMUsed": used[2]}
    return CloudLimits.from_api(compute, volume, read_at=read_at)


def make_ledger(pools=None, providers=("p",), **kw):
    clock = FakeClock()
    kw.setdefault("rng", lambda: 0.0)
    ledger = QuotaLedger(clock=clock, **kw)
    for name in providers:
        ledger.configure_provider(name, pools or {"main": PoolQuota()})
    return ledger, clock


def read_limits(ledger, limits, provider="p") -> bool:
    token = ledger.begin_limits_read(provider)
    return ledger.apply_limits(token, limits)


SMALL = label_cost(1, 1024)


def create(ledger, key, cost=SMALL, provider="p", pool="main", tenant=None):
    """Reserve, send, and have nova accept one server."""
    decision = ledger.try_reserve(key, provider=provider, pool=pool, cost=cost, tenant=tenant)
    assert decision, decision.reasons
    ledger.create_issued(key)
    ledger.create_accepted(key, server_id=f"srv-{key}")


def headroom(ledger, provider="p") -> Resources:
    return ledger.estimate(provider).headroom


def backoff_state(ledger, provider="p"):
    return ledger.estimate(provider).backoff


def test_quota_core_imports_no_adapters():
    """The quota core is pure: no ZooKeeper, cloud library or driver code."""
    code = ("import sys, nodepool.quota; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kazoo', 'openstack', "
            "'keystoneauth1') or m.startswith(('nodepool.zk', 'nodepool.driver', "
            "'nodepool.config'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------
# Resources

class TestResources:
    def test_arithmetic(self):
        a = Resources(1, 2, 1024, 1, 10)
        b = Resources(2, 4, 2048)
        assert a + b == Resources(3, 6, 3072, 1, 10)
        assert b - a == Resources(1, 2, 1024, -1, -10)
        assert a * 3 == Resources(3, 6, 3072, 3, 30) == 3 * a
        assert a.maximum(b) == Resources(2, 4, 2048, 1, 10)
        assert a.minimum(b) == Resources(1, 2, 1024, 0, 0)

    def test_unlimited(self):
        assert UNLIMITED - Resources(5, 5, 5, 5, 5) == UNLIMITED
        assert UNLIMITED + ZERO == UNLIMITED
        assert UNLIMITED * 0 == ZERO  # no servers of any cost is nothing, not NaN
        with pytest.raises(ValueError, match="unlimited"):
            UNLIMITED - UNLIMITED
        assert Resources(instances=10).fits(UNLIMITED)

    def test_rejects_nan_minus_inf_and_non_numbers(self):
        with pytest.raises(ValueError):
            Resources(instances=math.nan)
        with pytest.raises(ValueError):
            Resources(cores=-INF)
        with pytest.raises(TypeError):
            Resources(ram="10")
        with pytest.raises(TypeError):
            Resources(instances=True)

    def test_comparisons(self):
        limit = Resources(2, 4, 4096)
        assert Resources(2, 4, 4096).fits(limit)  # exact fit
        assert not Resources(2, 5, 4096).fits(limit)
        assert Resources(3, 5, 0).exceeding(limit) == ("instances", "cores")
        assert (limit - Resources(3, 4, 0)).negative() == ("instances",)
        assert ZERO.non_negative and ZERO == Resources()
        assert not Resources(cores=-1).non_negative

    def test_from_mapping(self):
        r = Resources.from_mapping({"instances": 3, "volume-gb": 100}, default=INF)
        assert r == Resources(3, INF, INF, INF, 100)
        assert Resources.from_mapping({"ram": 5}) == Resources(ram=5)
        with pytest.raises(ValueError, match="unknown quota resource 'gpus'"):
            Resources.from_mapping({"gpus": 1})

    def test_as_dict_json_safe(self):
        r = Resources(1, INF, 2)
        assert r.as_dict()["cores"] == INF
        assert r.as_dict(json_safe=True) == {"instances": 1, "cores": None, "ram": 2,
                                             "volumes": 0, "volume_gb": 0}
        assert "cores=unlimited" in str(r)

    @given(st.lists(st.tuples(*[st.integers(0, 10**6)] * 5), min_size=2, max_size=5))
    @settings(max_examples=100, deadline=None)
    def test_algebra(self, raw):
        values = [Resources(*t) for t in raw]
        total = ZERO
        for v in values:
            total = total + v
        for v in values:
            assert (total - v) + v == total
            assert v.fits(total)
            assert (total - v).non_negative
        assert values[0].maximum(values[1]) == values[1].maximum(values[0])
        assert values[0].minimum(values[1]).fits(values[0].maximum(values[1]))


def test_label_cost():
    assert label_cost(2, 4096) == Resources(1, 2, 4096, 0, 0)
    assert label_cost(2, 4096, boot_from_volume=True, volume_size_gb=80) == \
        Resources(1, 2, 4096, 1, 80)
    # without boot-from-volume the volume size is irrelevant
    assert label_cost(2, 4096, volume_size_gb=80) == Resources(1, 2, 4096)
    with pytest.raises(ValueError, match="vcpus"):
        label_cost(-1, 10)
    with pytest.raises(ValueError, match="ram"):
        label_cost(1, INF)


class TestCloudLimits:
    def test_nova_json_and_unlimited(self):
        lim = CloudLimits.from_api(
            {"maxTotalInstances": 10, "maxTotalCores": -1, "maxTotalRAMSize": 51200,
             "totalInstancesUsed": 10, "totalCoresUsed": 20, "totalRAMUsed": 40960,
             "maxTotalKeypairs": 100}, read_at=5.0)
        assert lim.max == Resources(10, INF, 51200, INF, INF)
        assert lim.used == Resources(10, 20, 40960, 0, 0)
        assert lim.read_at == 5.0

    def test_with_cinder(self):
        lim = CloudLimits.from_api(
            {"maxTotalInstances": 10, "maxTotalCores": 20, "maxTotalRAMSize": 1000},
            {"maxTotalVolumes": 5, "maxTotalVolumeGigabytes": -1,
             "totalVolumesUsed": 2, "totalGigabytesUsed": 100}, read_at=0)
        assert lim.max == Resources(10, 20, 1000, 5, INF)
        assert lim.used == Resources(0, 0, 0, 2, 100)

    def test_sdk_attribute_names(self):
        # the names openstacksdk's AbsoluteLimits resources use
        lim = CloudLimits.from_api(
            {"instances": 4, "total_cores": 8, "total_ram": 8192, "instances_used": 1,
             "total_cores_used": 2, "total_ram_used": 1024},
            {"max_total_volumes": 3, "total_volumes_used": 1}, read_at=0)
        assert lim.max == Resources(4, 8, 8192, 3, INF)
        assert lim.used == Resources(1, 2, 1024, 1, 0)

    @pytest.mark.parametrize("bad", [{"maxTotalInstances": -2}, {"maxTotalCores": "lots"},
                                     {"totalRAMUsed": -1}, {"maxTotalInstances": True}])
    def test_bad_values(self, bad):
        with pytest.raises(ValueError):
            CloudLimits.from_api(bad, read_at=0)


def test_cloud_headroom_rule():
    lim = nova_limits(10, used=(6, 0, 0))
    # nova's count wins when it is larger; in-flight goes on top
    assert cloud_headroom(lim, Resources(instances=4), Resources(instances=1)).instances == 3
    # our covered count wins when nova is behind
    assert cloud_headroom(lim, Resources(instances=8), ZERO).instances == 2


# --------------------------------------------------------------------------
# Quota errors

NOVA_403 = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"


@pytest.mark.parametrize("message,status,expected", [
    (NOVA_403, 403, True),
    (NOVA_403, None, True),
    ("quota EXCEEDED for cores", None, True),
    ("Quota exceeded for resources: ['port'].", 409, True),
    ("Maximum number of ports exceeded", 409, True),
    ("VolumeLimitExceeded: Maximum number of volumes allowed (10) exceeded for quota "
     "'volumes'.", 413, True),
    ("Requested resources exceeded the limit", 403, True),
    ("Policy doesn't allow os_compute_api:servers:create to be performed.", 403, False),
    ("", 403, False),
    (None, 403, False),
    ("Rate limit exceeded", 413, False),
    ("Flavor's disk is too small for requested image", 400, False),
    ("No valid host was found.", None, False),
])
def test_is_quota_error(message, status, expected):
    assert is_quota_error(message, status) is expected


def test_is_quota_fault():
    assert is_quota_fault({"code": 500, "message": "Build of instance x aborted: Quota "
                                                   "exceeded for cores"})
    assert is_quota_fault({"code": 500, "message": "Exceeded maximum number of retries",
                           "details": "... exceeds cores quota"})
    assert is_quota_fault("Quota exceeded for ram")
    assert not is_quota_fault({"code": 500, "message": "No valid host was found."})
    assert not is_quota_fault(None)
    assert not is_quota_fault({})


def _response(status: int) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    return resp


def test_is_quota_exception_with_sdk_exceptions():
    assert is_quota_exception(sdk_exc.ForbiddenException(NOVA_403, response=_response(403)))
    # the text may be only in details
    assert is_quota_exception(sdk_exc.ForbiddenException(
        "Error", response=_response(403), details="Quota exceeded for cores"))
    assert not is_quota_exception(sdk_exc.ForbiddenException(
        "Policy doesn't allow this", response=_response(403)))
    # openstacksdk 4.x: a create that came back ERROR carries the server
    err = sdk_exc.SDKException("Error in creating the server. Compute service reports "
                               "fault: Build aborted",
                               extra_data={"server": {"id": "x", "fault": {
                                   "code": 500, "message": "Quota exceeded for instances"}}})
    assert is_quota_exception(err)
    assert not is_quota_exception(sdk_exc.SDKException(
        "Error in creating the server", extra_data={"server": {"fault": {"message": "boom"}}}))
    assert not is_quota_exception(TimeoutError("timed out"))


# --------------------------------------------------------------------------
# Backoff

class TestBackoff:
    def test_growth_is_exponential_and_capped(self):
        policy = BackoffPolicy(initial=10, maximum=300, factor=2, jitter=0.2)
        assert [policy.base_delay(n) for n in range(1, 9)] == \
            [10, 20, 40, 80, 160, 300, 300, 300]
        assert policy.base_delay(10_000) == 300
        with pytest.raises(ValueError):
            policy.base_delay(0)

    def test_jitter_bounds(self):
        policy = BackoffPolicy(initial=10, maximum=300, jitter=0.2)
        assert policy.delay(1, lambda: 0.0) == 10
        assert policy.delay(1, lambda: 0.999999) == pytest.approx(8.0, abs=1e-4)
        assert policy.delay(20, lambda: 0.5) == 270

    @given(st.integers(1, 200), st.floats(0, 1, exclude_max=True),
           st.floats(0.1, 100), st.floats(1, 4), st.floats(0, 0.99))
    @settings(max_examples=200, deadline=None)
    def test_jitter_bounds_property(self, n, r, initial, factor, jitter):
        policy = BackoffPolicy(initial=initial, maximum=initial * 30, factor=factor,
                               jitter=jitter)
        base = policy.base_delay(n)
        assert base <= policy.maximum
        assert base == pytest.approx(min(policy.maximum, initial * factor ** (n - 1)))
        delay = policy.delay(n, lambda: r)
        assert base * (1 - jitter) - 1e-9 <= delay <= base

    @pytest.mark.parametrize("kw", [dict(initial=0), dict(initial=10, maximum=5),
                                    dict(factor=0.5), dict(jitter=1.0), dict(jitter=-0.1)])
    def test_policy_validation(self, kw):
        with pytest.raises(ValueError):
            BackoffPolicy(**kw)

    def test_lifecycle(self):
        b = QuotaBackoff(BackoffPolicy(initial=10, maximum=300, jitter=0), rng=lambda: 0.5)
        assert not b.active(0)
        assert b.record_quota_error(now=100, mark=1)
        assert b.active(105) and b.until == 110
        st_ = b.state(105)
        assert (st_.in_backoff, st_.remaining, st_.consecutive, st_.total) == (True, 5, 1, 1)
        assert not b.active(110)  # ends when the period elapses
        assert b.state(110).ended_by == "elapsed"
        assert b.record_quota_error(now=200, mark=5)
        assert b.until == 220  # doubled
        b.record_success()
        assert b.record_quota_error(now=300, mark=9)
        assert b.until == 310  # reset after an accepted create
        assert b.state(300).total == 3

    def test_same_episode_does_not_escalate(self):
        b = QuotaBackoff(BackoffPolicy(jitter=0))
        assert b.record_quota_error(now=0, mark=10, attempt_mark=3)
        # a create reserved before the backoff began, refused a moment later
        assert not b.record_quota_error(now=1, mark=11, attempt_mark=4)
        assert b.consecutive == 1 and b.total == 2 and b.until == 10
        # a create reserved after it escalates
        assert b.record_quota_error(now=12, mark=20, attempt_mark=15)
        assert b.consecutive == 2 and b.until == 32
        # a late refusal of an old create after the backoff ended: the
        # cloud is still full, back off again, without escalating
        assert b.record_quota_error(now=40, mark=21, attempt_mark=18)
        assert b.consecutive == 2 and b.until == 60

    def test_early_end_needs_delete_then_fresh_reading_with_room(self):
        b = QuotaBackoff(BackoffPolicy(jitter=0))
        b.record_quota_error(now=0, mark=10)
        assert not b.note_limits(1, read_mark=11, has_room=True)  # no delete yet
        b.note_delete_completed(mark=12)
        assert not b.note_limits(2, read_mark=11, has_room=True)  # read began before delete
        assert not b.note_limits(2, read_mark=13, has_room=False)  # no room
        assert b.active(2)
        assert b.note_limits(3, read_mark=13, has_room=True)
        assert not b.active(3) and b.state(3).ended_by == "room"

    def test_delete_before_the_error_does_not_count(self):
        b = QuotaBackoff(BackoffPolicy(jitter=0))
        b.note_delete_completed(mark=5)
        b.record_quota_error(now=0, mark=10)
        b.note_delete_completed(mark=7)  # older than the error
        assert not b.note_limits(1, read_mark=11, has_room=True)
        assert b.active(1)


# --------------------------------------------------------------------------
# Refresh policy

class TestRefreshPolicy:
    P = RefreshPolicy(min_interval=10, max_age=30)

    def due(self, now, attempt, success, forced=None, in_progress=None):
        return limits_refresh_due(self.P, now, last_attempt_at=attempt,
                                  last_success_at=success, forced=forced,
                                  in_progress_since=in_progress)

    def test_cases(self):
        assert self.due(0, None, None) == "never read"
        assert self.due(5, 0, 0) is None
        assert self.due(29, 0, 0) is None
        assert self.due(30, 0, 0) == "max age"
        assert self.due(9, 0, 0, forced="quota error") is None  # never faster than min
        assert self.due(10, 0, 0, forced="quota error") == "quota error"
        assert self.due(10, 0, None) == "last read failed or hung"
        assert self.due(15, 5, 0) == "last read failed or hung"
        assert self.due(20, 10, 0, in_progress=10) is None  # wait for the read in flight
        assert self.due(40, 10, 0, in_progress=10) == "last read failed or hung"
        with pytest.raises(ValueError):
            RefreshPolicy(min_interval=60, max_age=30)

    @given(st.lists(st.tuples(st.floats(0.1, 20), st.booleans(), st.booleans()),
                    min_size=1, max_size=60))
    @settings(max_examples=150, deadline=None)
    def test_loop_respects_min_interval_and_max_age(self, steps):
        """A loop that reads whenever due: reads are never closer than
        min_interval, and while reads succeed none is older than max_age plus
        one loop step."""
        now = 0.0
        attempts: list[float] = []
        last_attempt = last_success = None
        forced = None
        for step, force, fail in steps:
            now += step
            if force:
                forced = "delete completed"
            if self.due(now, last_attempt, last_success, forced):
                attempts.append(now)
                last_attempt = now
                forced = None
                if not fail:
                    last_success = now
            if last_success is not None and last_success == last_attempt:
                assert now - last_success < self.P.max_age + step
        assert all(b - a >= self.P.min_interval
                   for a, b in zip(attempts, attempts[1:], strict=False))


# --------------------------------------------------------------------------
# The ledger: counting rule and double counting

class TestCounting:
    def test_no_limits_blocks_unless_pool_ignores_provider_quota(self):
        ledger, _ = make_ledger({"main": PoolQuota(),
                                 "free": PoolQuota(ignore_provider_quota=True)})
        d = ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        assert not d and d.blocked_by == {LIMITS_UNKNOWN}
        assert ledger.try_reserve("b", provider="p", pool="free", cost=SMALL)

    def test_exact_fit_allowed(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(instances=3, cores=6, ram=3072))
        cost = label_cost(2, 1024)
        for key in "abc":
            assert ledger.try_reserve(key, provider="p", pool="main", cost=cost)
        assert headroom(ledger) == Resources(0, 0, 0, INF, INF)
        d = ledger.try_reserve("d", provider="p", pool="main", cost=cost)
        assert not d and d.blocked_by == {CLOUD}
        assert any("instances" in r for r in d.reasons)

    def test_each_resource_can_block(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(instances=10, cores=4, ram=4096, volume={
            "maxTotalVolumes": 1, "maxTotalVolumeGigabytes": 100}))
        bfv = label_cost(1, 1024, boot_from_volume=True, volume_size_gb=60)
        assert ledger.try_reserve("a", provider="p", pool="main", cost=bfv)
        d = ledger.try_reserve("b", provider="p", pool="main", cost=bfv)
        assert not d
        text = " ".join(d.reasons)
        assert "volumes" in text and "volume_gb" in text and "instances" not in text
        d = ledger.try_reserve("c", provider="p", pool="main", cost=label_cost(4, 1024))
        assert not d and "cores" in " ".join(d.reasons)
        d = ledger.try_reserve("d", provider="p", pool="main", cost=label_cost(1, 4000))
        assert not d and "ram" in " ".join(d.reasons)
        # a server without volumes is not blocked by full volume quota
        assert ledger.try_reserve("e", provider="p", pool="main", cost=label_cost(1, 1024))

    def test_unlimited_cloud(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(-1, -1, -1, used=(500, 1000, 10**6)))
        for i in range(300):
            assert ledger.try_reserve(i, provider="p", pool="main", cost=label_cost(8, 16384))
        assert headroom(ledger) == UNLIMITED

    def test_created_before_read_is_covered(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10))
        for key in "abc":
            create(ledger, key)
        read_limits(ledger, nova_limits(10, used=(3, 3, 3072)))
        est = ledger.estimate("p")
        assert est.ledger_covered.instances == 3 and est.in_flight.instances == 0
        assert est.headroom.instances == 7

    def test_created_after_read_goes_on_top_until_next_read(self):
        ledger, _ = make_ledger()
        for key in "abc":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(10, used=(3, 3, 3072)))
        create(ledger, "d")
        est = ledger.estimate("p")
        assert est.in_flight.instances == 1 and est.headroom.instances == 6
        read_limits(ledger, nova_limits(10, used=(4, 4, 4096)))
        # counted once, not twice, once nova's counter includes it
        assert headroom(ledger).instances == 6

    def test_accepted_while_the_read_was_in_progress_counts_twice_until_next_read(self):
        ledger, _ = make_ledger()
        for key in "abc":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(10, used=(3, 3, 3072)))
        token = ledger.begin_limits_read("p")
        create(ledger, "d")
        # nova may or may not have counted d; assume the worse
        ledger.apply_limits(token, nova_limits(10, used=(4, 4, 4096)))
        assert headroom(ledger).instances == 5
        read_limits(ledger, nova_limits(10, used=(4, 4, 4096)))
        assert headroom(ledger).instances == 6

    def test_reserved_and_creating_count_as_in_flight(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10, used=(2, 2, 2048)))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        assert headroom(ledger).instances == 7
        ledger.create_issued("a")
        assert ledger.entry_state("a") is EntryState.CREATING
        assert headroom(ledger).instances == 7
        # a fresh reading does not cover what nova has not accepted yet
        read_limits(ledger, nova_limits(10, used=(2, 2, 2048)))
        assert headroom(ledger).instances == 7

    def test_completed_delete_keeps_counting_until_nova_reading_drops_it(self):
        ledger, _ = make_ledger()
        for key in "abcd":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(10, used=(4, 4, 4096)))
        ledger.delete_issued("a")
        assert headroom(ledger).instances == 6  # deleting still counts
        ledger.server_gone("a")
        assert headroom(ledger).instances == 6  # nova's reading still has it
        read_limits(ledger, nova_limits(10, used=(3, 3, 3072)))
        assert headroom(ledger).instances == 7

    def test_usage_we_do_not_own_counts(self):
        ledger, _ = make_ledger()
        for key in "abc":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        # 7 used: 3 ours, the rest building/ERROR/deleting elsewhere
        read_limits(ledger, nova_limits(10, used=(7, 7, 7168)))
        assert headroom(ledger).instances == 3

    def test_our_count_wins_when_nova_is_behind(self):
        ledger, _ = make_ledger()
        for key in "abc":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(10, used=(2, 2, 2048)))
        assert headroom(ledger).instances == 7

    def test_timed_out_create_counts_until_seen_or_gone(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        ledger.create_issued("a")
        ledger.create_unknown("a")
        assert ledger.entry_state("a") is EntryState.UNKNOWN
        read_limits(ledger, nova_limits(10, used=(1, 1, 1024)))
        # nova may have it, we are not sure: counted on top
        assert headroom(ledger).instances == 8
        ledger.server_seen("a", server_id="s1")
        assert ledger.entry_state("a") is EntryState.CREATED
        read_limits(ledger, nova_limits(10, used=(1, 1, 1024)))
        assert headroom(ledger).instances == 9
        # the other outcome: it never existed
        assert ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)
        ledger.create_issued("b")
        ledger.create_unknown("b")
        assert headroom(ledger).instances == 8
        assert ledger.server_gone("b")
        assert headroom(ledger).instances == 9

    def test_error_server_counts_until_gone(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(2))
        create(ledger, "a")  # came back ERROR: still accepted, still counts
        create(ledger, "b")
        assert not ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        ledger.delete_issued("a")
        assert not ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        ledger.server_gone("a")
        assert ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)

    def test_rejected_create_frees_its_reservation(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(1))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        ledger.create_issued("a")
        assert ledger.create_rejected("a")  # e.g. HTTP 400 bad image
        assert ledger.entry_state("a") is None
        assert ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)

    def test_older_reading_arriving_late_is_ignored(self):
        ledger, _ = make_ledger()
        t1 = ledger.begin_limits_read("p")
        t2 = ledger.begin_limits_read("p")
        assert ledger.apply_limits(t2, nova_limits(10, used=(5, 0, 0)))
        assert not ledger.apply_limits(t1, nova_limits(10, used=(1, 0, 0)))
        assert ledger.estimate("p").limits.used.instances == 5

    def test_failed_read_keeps_previous_reading(self):
        ledger, clock = make_ledger()
        read_limits(ledger, nova_limits(10, used=(4, 0, 0)))
        clock.advance(40)
        token = ledger.begin_limits_read("p")
        ledger.limits_read_failed(token, "ConnectTimeout")
        est = ledger.estimate("p")
        assert est.headroom.instances == 6
        assert est.limits_error == "ConnectTimeout" and est.limits_age == 40


class TestPoolsAndTenants:
    def test_pool_limit_counts_every_state(self):
        ledger, _ = make_ledger({"main": PoolQuota(Resources.from_mapping(
            {"instances": 2}, default=INF))})
        read_limits(ledger, nova_limits(100))
        create(ledger, "a")
        assert ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)
        d = ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        assert not d and d.blocked_by == {POOL}
        ledger.delete_issued("a")
        assert not ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        ledger.server_gone("a")
        assert ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)

    def test_pool_cores_and_ram(self):
        pool = PoolQuota.from_pool(SimpleNamespace(max_servers=INF, max_cores=4, max_ram=8192))
        ledger, _ = make_ledger({"main": pool})
        read_limits(ledger, nova_limits(100))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=label_cost(4, 1024))
        d = ledger.try_reserve("b", provider="p", pool="main", cost=label_cost(1, 1024))
        assert not d and "cores" in d.reasons[0]

    def test_pools_of_one_provider_share_the_cloud(self):
        ledger, _ = make_ledger({"x": PoolQuota(), "y": PoolQuota()})
        read_limits(ledger, nova_limits(3))
        assert ledger.try_reserve("a", provider="p", pool="x", cost=SMALL)
        assert ledger.try_reserve("b", provider="p", pool="x", cost=SMALL)
        assert ledger.try_reserve("c", provider="p", pool="y", cost=SMALL)
        assert not ledger.try_reserve("d", provider="p", pool="y", cost=SMALL)
        assert not ledger.try_reserve("e", provider="p", pool="x", cost=SMALL)

    def test_providers_are_independent(self):
        ledger, _ = make_ledger(providers=("p", "q"))
        read_limits(ledger, nova_limits(1), "p")
        read_limits(ledger, nova_limits(1), "q")
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        assert ledger.try_reserve("b", provider="q", pool="main", cost=SMALL)

    def test_tenant_limits_across_providers(self):
        cfg = {"zuul": SimpleNamespace(limits={"instances": 2, "cores": INF, "ram": INF,
                                               "volume-gb": 100})}
        ledger, _ = make_ledger(providers=("p", "q"),
                                tenant_limits=tenant_limits_from_config(cfg))
        for prov in "pq":
            read_limits(ledger, nova_limits(10), prov)
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL, tenant="zuul")
        assert ledger.try_reserve("b", provider="q", pool="main", cost=SMALL, tenant="zuul")
        d = ledger.try_reserve("c", provider="p", pool="main", cost=SMALL, tenant="zuul")
        assert not d and d.blocked_by == {TENANT}
        # other tenants and requests without a tenant are not limited
        assert ledger.try_reserve("d", provider="p", pool="main", cost=SMALL, tenant="other")
        assert ledger.try_reserve("e", provider="p", pool="main", cost=SMALL)
        ledger.release("a")
        # nodes of the tenant held by other launchers count too
        d = ledger.try_reserve("f", provider="p", pool="main", cost=SMALL, tenant="zuul",
                               tenant_usage_elsewhere=Resources(instances=1))
        assert not d and d.blocked_by == {TENANT}
        assert ledger.try_reserve("f", provider="p", pool="main", cost=SMALL, tenant="zuul")

    def test_tenant_fits_checks_a_whole_request_without_reserving(self):
        ledger, _ = make_ledger(tenant_limits={"t": Resources(3, INF, INF, INF, INF)})
        read_limits(ledger, nova_limits(10))
        assert ledger.limits_tenant("t") and not ledger.limits_tenant("u")
        two, four = SMALL + SMALL, SMALL + SMALL + SMALL + SMALL
        assert ledger.tenant_fits("t", two) and not ledger.tenant_fits("t", four)
        assert ledger.tenant_fits("u", four)                   # no limits: always
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL, tenant="t")
        assert ledger.tenant_fits("t", two)
        assert not ledger.tenant_fits("t", two, Resources(instances=1))
        assert ledger.tenant_fits("t", two, Resources(instances=1), alone=True)
        assert not ledger.tenant_fits("t", four, alone=True)
        assert ledger.try_reserve("b", provider="p", pool="main", cost=SMALL, tenant="t")
        assert not ledger.tenant_fits("t", two)

    def test_all_blocking_layers_reported(self):
        ledger, _ = make_ledger({"main": PoolQuota(Resources(1, INF, INF, INF, INF))},
                                tenant_limits={"t": Resources(1, INF, INF, INF, INF)})
        read_limits(ledger, nova_limits(1))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL, tenant="t")
        d = ledger.try_reserve("b", provider="p", pool="main", cost=SMALL, tenant="t")
        assert d.blocked_by == {POOL, CLOUD, TENANT} and len(d.reasons) == 3

    def test_why_never_fits(self):
        ledger, _ = make_ledger({"main": PoolQuota(Resources(5, 8, INF, INF, INF)),
                                 "free": PoolQuota(ignore_provider_quota=True)},
                                tenant_limits={"t": Resources(10, 6, INF, INF, INF)})
        big = label_cost(16, 1024)
        # limits unknown: only the pool can say no
        assert ledger.why_never_fits(provider="p", pool="main", cost=label_cost(8, 1024)) == ()
        read_limits(ledger, nova_limits(10, cores=12, used=(10, 12, 0)))
        # full right now, but it would fit an empty cloud: wait, do not decline
        assert ledger.why_never_fits(provider="p", pool="main", cost=label_cost(8, 1024)) == ()
        reasons = ledger.why_never_fits(provider="p", pool="main", cost=big)
        assert len(reasons) == 2 and "pool p/main" in reasons[0] and "cloud p" in reasons[1]
        assert ledger.why_never_fits(provider="p", pool="free", cost=big) == ()
        assert len(ledger.why_never_fits(provider="p", pool="main", cost=label_cost(7, 1),
                                         tenant="t")) == 1
        # a whole request: six servers exceed max-servers 5
        assert ledger.why_never_fits(provider="p", pool="main", cost=SMALL * 6)

    def test_config_reload_keeps_entries(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10))
        create(ledger, "a")
        ledger.configure_provider("p", {"main": PoolQuota(Resources(1, INF, INF, INF, INF))})
        assert ledger.keys("p") == {"a"}
        assert not ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)


class TestLifecycleApi:
    def test_idempotent_steps_and_unknown_keys(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(2))
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        assert ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)  # repeat
        assert ledger.estimate("p").in_flight.instances == 1
        with pytest.raises(ValueError, match="already reserved"):
            ledger.try_reserve("a", provider="p", pool="main", cost=label_cost(2, 1))
        for step in (ledger.create_issued, ledger.create_accepted, ledger.create_unknown,
                     ledger.server_seen, ledger.delete_issued, ledger.server_gone,
                     ledger.release, ledger.create_rejected):
            assert step("nope") is False
        ledger.create_issued("a")
        ledger.create_accepted("a")
        ledger.create_accepted("a")
        ledger.server_seen("a")
        ledger.delete_issued("a")
        ledger.server_seen("a")  # still listed while being deleted
        assert ledger.entry_state("a") is EntryState.DELETING
        assert ledger.server_gone("a") and not ledger.server_gone("a")

    def test_release_only_before_the_post(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(2))
        ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        ledger.create_issued("a")
        with pytest.raises(ValueError, match="creating"):
            ledger.release("a")
        ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)
        assert ledger.release("b")

    def test_bad_arguments(self):
        ledger, _ = make_ledger()
        with pytest.raises(KeyError, match="no provider 'x'"):
            ledger.try_reserve("a", provider="x", pool="main", cost=SMALL)
        with pytest.raises(KeyError, match="no pool 'x'"):
            ledger.try_reserve("a", provider="p", pool="x", cost=SMALL)
        with pytest.raises(ValueError):
            ledger.try_reserve("a", provider="p", pool="main", cost=Resources(cores=-1))
        with pytest.raises(ValueError):
            ledger.try_reserve("a", provider="p", pool="main", cost=Resources(cores=INF))
        with pytest.raises(TypeError):
            ledger.try_reserve("a", provider="p", pool="main", cost={"cores": 1})

    def test_adopt_counts_without_checking(self):
        ledger, _ = make_ledger({"main": PoolQuota(Resources(1, INF, INF, INF, INF))})
        ledger.adopt("a", provider="p", pool="main", cost=SMALL)
        ledger.adopt("b", provider="p", pool="main", cost=SMALL, deleting=True)
        ledger.adopt("b", provider="p", pool="main", cost=SMALL)  # repeat: no-op
        assert ledger.entry_state("b") is EntryState.DELETING
        read_limits(ledger, nova_limits(10, used=(2, 2, 2048)))
        est = ledger.estimate("p")
        assert est.ledger_covered.instances == 2 and est.headroom.instances == 8

    def test_wait_for_change(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(1))
        create(ledger, "a")
        seen = ledger.generation
        assert ledger.wait_for_change(seen, timeout=0.01) == seen  # nothing happened
        t = threading.Thread(target=ledger.server_gone, args=("a",))
        t.start()
        assert ledger.wait_for_change(seen, timeout=30) != seen
        t.join()

    def test_deleted_server_listed_after_the_reading_frees_quota_once_gone(self):
        ledger, clock = make_ledger()
        read_limits(ledger, nova_limits(3))
        for key in "abc":
            create(ledger, key)
        clock.advance(1)
        token = ledger.begin_limits_read("p")
        ledger.apply_limits(token, nova_limits(3, used=(3, 3, 3072), read_at=token.started_at))
        assert headroom(ledger).instances == 0
        for key in "abc":
            ledger.delete_issued(key)
        ledger.note_listed("a", token.started_at - 0.5)   # a list from before the reading
        clock.advance(1)
        ledger.note_listed("b", clock())                  # still listed after it began
        clock.advance(1)
        for key in "abc":
            ledger.server_gone(key)
        # Only b is known to be in nova's figure and gone since: one instance
        # is free before the next reading; a and c may have gone before it.
        assert headroom(ledger).instances == 1
        assert ledger.describe("p")["providers"]["p"]["resources"]["instances"][
            "freed_since_reading"] == 1
        clock.advance(20)
        token = ledger.begin_limits_read("p")
        ledger.apply_limits(token, nova_limits(3, used=(0, 0, 0), read_at=token.started_at))
        assert headroom(ledger).instances == 3
        assert ledger.describe("p")["providers"]["p"]["resources"]["instances"][
            "freed_since_reading"] == 0

    def test_a_gone_server_forces_a_limits_read_only_when_the_reading_may_count_it(self):
        ledger, clock = make_ledger(refresh_policy=RefreshPolicy(min_interval=10, max_age=30))
        read_limits(ledger, nova_limits(3))
        create(ledger, "covered")
        create(ledger, "listed")
        clock.advance(1)
        token = ledger.begin_limits_read("p")
        ledger.apply_limits(token, nova_limits(3, used=(2, 2, 2048), read_at=token.started_at))
        create(ledger, "in-flight")   # accepted after the reading began
        clock.advance(1)
        ledger.note_listed("listed", clock())
        clock.advance(10)
        assert ledger.limits_refresh_due("p") is None
        # Not in the reading (or counted on top of it): nothing to read again.
        ledger.server_gone("in-flight")
        assert ledger.limits_refresh_due("p") is None
        # Surely in the reading: subtracted at once, no read needed.
        ledger.server_gone("listed")
        assert ledger.limits_refresh_due("p") is None
        assert headroom(ledger).instances == 2
        # In the reading or gone before it began: only a new reading can say.
        ledger.server_gone("covered")
        assert ledger.limits_refresh_due("p") == "delete completed"
        assert headroom(ledger).instances == 2   # never counted as free meanwhile

    def test_a_list_from_before_nova_answered_the_reading_frees_nothing(self):
        ledger, clock = make_ledger()
        read_limits(ledger, nova_limits(3))
        create(ledger, "a")
        clock.advance(1)
        token = ledger.begin_limits_read("p")
        clock.advance(1)
        # Listed while the read was under way: nova may have answered the
        # read after the server went.
        ledger.note_listed("a", clock())
        clock.advance(1)
        ledger.apply_limits(token, nova_limits(3, used=(1, 1, 1024), read_at=token.started_at))
        ledger.server_gone("a")
        assert headroom(ledger).instances == 2   # not counted as free
        clock.advance(10)
        assert ledger.limits_refresh_due("p") == "delete completed"

    def test_describe(self):
        ledger, clock = make_ledger({"main": PoolQuota(Resources(5, INF, INF, INF, INF))},
                                    tenant_limits={"t": Resources(3, INF, INF, INF, INF)})
        for key in "ab":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL, tenant="t")
        read_limits(ledger, nova_limits(10, cores=-1, used=(4, 4, 4096)))
        create(ledger, "c", tenant="t")
        clock.advance(12)
        out = ledger.describe()
        json.dumps(out, allow_nan=False)  # plain and JSON-safe
        p = out["providers"]["p"]
        assert p["resources"]["instances"] == {
            "limit": 10, "nova_used": 4, "ledger_used": 3, "ledger_covered": 2,
            "in_flight": 1, "headroom": 5, "effective_headroom": 5, "freed_since_reading": 0}
        assert p["resources"]["cores"]["limit"] is None
        assert p["resources"]["cores"]["headroom"] is None
        assert p["limits"]["age"] == 12 and p["limits"]["refresh_due"] is None
        assert p["servers"]["created"] == 3
        assert p["pools"]["main"]["resources"]["instances"] == {
            "limit": 5, "used": 3, "headroom": 2}
        assert out["tenants"]["t"]["instances"] == {"limit": 3, "used": 3, "headroom": 0}
        assert p["backoff"]["in_backoff"] is False
        assert set(ledger.describe("p")["providers"]) == {"p"}


class TestLedgerBackoffAndRefresh:
    def test_quota_error_zeroes_headroom_for_every_pool(self):
        ledger, clock = make_ledger({"main": PoolQuota(),
                                     "free": PoolQuota(ignore_provider_quota=True)})
        read_limits(ledger, nova_limits(10))
        ledger.try_reserve("a", provider="p", pool="main", cost=SMALL)
        ledger.create_issued("a")
        assert ledger.create_rejected("a", quota_error=True)
        assert ledger.entry_state("a") is None
        for pool in ("main", "free"):
            d = ledger.try_reserve("b", provider="p", pool=pool, cost=SMALL)
            assert not d and BACKOFF in d.blocked_by and d.retry_at == clock.now + 10
        est = ledger.estimate("p")
        assert est.headroom.instances == 10 and est.effective_headroom.instances == 0
        state = backoff_state(ledger)
        assert state.in_backoff and state.consecutive == 1 and state.remaining == 10
        clock.advance(10)
        assert ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)

    def test_consecutive_errors_escalate_and_success_resets(self):
        ledger, clock = make_ledger()
        read_limits(ledger, nova_limits(10))
        delays = []
        for i in range(4):
            key = f"k{i}"
            assert ledger.try_reserve(key, provider="p", pool="main", cost=SMALL)
            ledger.create_rejected(key, quota_error=True)
            delays.append(backoff_state(ledger).remaining)
            clock.advance(delays[-1])
        assert delays == [10, 20, 40, 80]
        create(ledger, "ok")
        ledger.try_reserve("x", provider="p", pool="main", cost=SMALL)
        ledger.create_rejected("x", quota_error=True)
        assert backoff_state(ledger).remaining == 10

    def test_creates_in_flight_when_nova_filled_up_do_not_escalate(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10))
        for key in "abc":
            ledger.try_reserve(key, provider="p", pool="main", cost=SMALL)
            ledger.create_issued(key)
        for key in "abc":
            ledger.create_rejected(key, quota_error=True)
        state = backoff_state(ledger)
        assert state.consecutive == 1 and state.total == 3 and state.remaining == 10

    def test_error_fault_keeps_server_counted(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(10))
        create(ledger, "a")
        ledger.report_quota_error("p", key="a")
        assert ledger.entry_state("a") is EntryState.CREATED
        assert ledger.estimate("p").ledger_used.instances == 1
        assert backoff_state(ledger).in_backoff

    def test_backoff_ends_early_after_delete_and_fresh_room(self):
        ledger, clock = make_ledger()
        for key in "ab":
            ledger.adopt(key, provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(3, used=(2, 2, 2048)))
        ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        ledger.create_rejected("c", quota_error=True)  # something we could not see
        clock.advance(1)
        read_limits(ledger, nova_limits(3, used=(3, 3, 3072)))  # nova believed: full
        assert backoff_state(ledger).in_backoff
        ledger.delete_issued("a")
        token_before_gone = ledger.begin_limits_read("p")
        ledger.server_gone("a")
        ledger.apply_limits(token_before_gone, nova_limits(3, used=(2, 2, 2048)))
        assert backoff_state(ledger).in_backoff  # read began before the delete finished
        read_limits(ledger, nova_limits(3, used=(3, 3, 3072)))
        assert backoff_state(ledger).in_backoff  # fresh, but no room
        read_limits(ledger, nova_limits(3, used=(2, 2, 2048)))
        state = backoff_state(ledger)
        assert not state.in_backoff and state.ended_by == "room"
        assert ledger.try_reserve("d", provider="p", pool="main", cost=SMALL)

    def test_room_without_our_delete_does_not_end_backoff(self):
        ledger, _ = make_ledger()
        read_limits(ledger, nova_limits(3))
        ledger.try_reserve("c", provider="p", pool="main", cost=SMALL)
        ledger.create_rejected("c", quota_error=True)
        read_limits(ledger, nova_limits(30))
        assert backoff_state(ledger).in_backoff

    def test_refresh_due(self):
        ledger, clock = make_ledger(refresh_policy=RefreshPolicy(min_interval=10, max_age=30))
        assert ledger.limits_refresh_due("p") == "never read"
        token = ledger.begin_limits_read("p")
        clock.advance(15)
        assert ledger.limits_refresh_due("p") is None  # read in flight
        ledger.apply_limits(token, nova_limits(10))
        assert ledger.limits_refresh_due("p") is None
        clock.advance(15)
        assert ledger.limits_refresh_due("p") == "max age"
        ledger.adopt("a", provider="p", pool="main", cost=SMALL)
        read_limits(ledger, nova_limits(10))
        # Covered by the reading, never listed after it began: the reading
        # may or may not count it.
        ledger.server_gone("a")
        clock.advance(9)
        assert ledger.limits_refresh_due("p") is None  # never faster than min_interval
        clock.advance(1)
        assert ledger.limits_refresh_due("p") == "delete completed"
        token = ledger.begin_limits_read("p")
        ledger.limits_read_failed(token, "boom")
        assert ledger.limits_refresh_due("p") is None
        clock.advance(10)
        assert ledger.limits_refresh_due("p") == "last read failed or hung"
        read_limits(ledger, nova_limits(10))
        ledger.try_reserve("b", provider="p", pool="main", cost=SMALL)
        ledger.create_rejected("b", quota_error=True)
        clock.advance(10)
        assert ledger.limits_refresh_due("p") == "quota error"
        ledger.begin_limits_read("p")  # hangs: never answered
        clock.advance(29)
        assert ledger.limits_refresh_due("p") is None
        clock.advance(1)
        assert ledger.limits_refresh_due("p") == "last read failed or hung"


# --------------------------------------------------------------------------
# Concurrency

def test_concurrent_try_reserve_never_exceeds_the_limit():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _round in range(3):
            ledger = QuotaLedger(tenant_limits={"t": Resources(7, INF, INF, INF, INF)})
            ledger.configure_provider("p", {"a": PoolQuota(Resources(4, INF, INF, INF, INF)),
                                            "b": PoolQuota(), "c": PoolQuota()})
            read_limits(ledger, nova_limits(10, cores=20, used=(1, 0, 0)))
            granted: list[tuple] = []
            barrier = threading.Barrier(12)

            def worker(n, barrier=barrier, ledger=ledger, granted=granted):
                barrier.wait()
                for i in range(60):
                    key = (n, i)
                    pool = "abc"[(n + i) % 3]
                    if ledger.try_reserve(key, provider="p", pool=pool, cost=label_cost(2, 10),
                                          tenant="t" if i % 2 else None):
                        granted.append((key, pool, i % 2))
                    assert ledger.estimate("p").headroom.non_negative

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
                assert not t.is_alive()
            # 9 instances left, but 20 cores at 2 each allow 10: instances bind
            assert len(granted) == 9
            assert sum(1 for _, pool, _ in granted if pool == "a") <= 4
            assert sum(1 for *_, tenant in granted if tenant) <= 7
            assert len(ledger.keys("p")) == 9
    finally:
        sys.setswitchinterval(old)


def test_concurrent_lifecycle_keeps_headroom_non_negative():
    ledger = QuotaLedger()
    ledger.configure_provider("p", {"a": PoolQuota(), "b": PoolQuota()})
    read_limits(ledger, nova_limits(5))
    barrier = threading.Barrier(8)
    errors: list[str] = []

    def worker(n):
        barrier.wait()
        for i in range(150):
            key = (n, i)
            if ledger.try_reserve(key, provider="p", pool="ab"[n % 2], cost=SMALL):
                ledger.create_issued(key)
                ledger.create_accepted(key)
                if not ledger.estimate("p").headroom.non_negative:
                    errors.append(f"overcommitted at {key}")
                ledger.delete_issued(key)
                ledger.server_gone(key)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert ledger.keys() == frozenset()


# --------------------------------------------------------------------------
# Property: a simulated nova never has to refuse, whatever the interleaving

LABELS = {"small": label_cost(1, 512), "big": label_cost(4, 2048),
          "bfv": label_cost(2, 1024, boot_from_volume=True, volume_size_gb=20)}
POOL_A_MAX = Resources(3, INF, INF, INF, INF)
TENANT_MAX = Resources(2, INF, INF, INF, INF)


def _usage(costs) -> Resources:
    sums = [0] * 5
    for c in costs:
        for i, value in enumerate((c.instances, c.cores, c.ram, c.volumes, c.volume_gb)):
            sums[i] += value
    return Resources(*sums)


def _finite_le(a: Resources, b: Resources) -> bool:
    """a <= b for every resource where b is finite."""
    return all(getattr(a, n) <= getattr(b, n) for n in ("instances", "cores", "ram",
                                                         "volumes", "volume_gb")
               if getattr(b, n) != INF)


class NovaSimulation(RuleBasedStateMachine):
    """Our ledger against a model of nova that counts every server it has
    accepted until its delete finishes, plus usage we do not own.  Limits
    reads straddle other operations (started, served by nova, applied), so
    do POSTs (sent, answered).  Usage we do not own may shrink at any time
    and, when ``growth`` is drawn, grow too; then nova may refuse and the
    provider must back off."""

    @initialize(limit=st.tuples(st.integers(1, 6), st.integers(2, 16),
                                st.integers(2, 16).map(lambda n: n * 512),
                                st.sampled_from([2, 4, INF]), st.sampled_from([50, INF])),
                foreign=st.tuples(st.integers(0, 2), st.integers(0, 4)),
                growth=st.booleans())
    def setup(self, limit, foreign, growth):
        self.clock = FakeClock()
        self.ledger = QuotaLedger(clock=self.clock, rng=lambda: 0.5,
                                  tenant_limits={"t1": TENANT_MAX})
        self.ledger.configure_provider("p", {"a": PoolQuota(POOL_A_MAX), "b": PoolQuota()})
        self.limit = Resources(*limit)
        # what we do not own starts within the limit (else nothing ever fits)
        self.foreign = Resources(foreign[0], foreign[1], foreign[0] * 512).minimum(self.limit)
        self.growth_allowed = growth
        self.grew = False
        self.nova: dict = {}         # key -> [cost, deleting]
        self.answers: dict = {}      # key -> what the POST will answer
        self.reads: list = []        # [token, served CloudLimits or None, foreign at serve]
        self.applied_foreign = None  # foreign usage when the applied reading was served
        self.refusals = 0
        self.counter = 0
        self.read_now()  # the provider loop reads limits before serving requests

    # -- helpers --
    def nova_usage(self) -> Resources:
        return _usage(c for c, _ in self.nova.values()) + self.foreign

    def keys_in(self, *states):
        return sorted((k for k in self.ledger.keys()
                       if self.ledger.entry_state(k) in states), key=str)

    # -- rules --
    @rule(label=st.sampled_from(sorted(LABELS)), pool=st.sampled_from(["a", "b"]),
          tenant=st.sampled_from([None, "t1"]))
    def reserve(self, label, pool, tenant):
        self.counter += 1
        in_backoff = backoff_state(self.ledger).in_backoff
        d = self.ledger.try_reserve(self.counter, provider="p", pool=pool,
                                    cost=LABELS[label], tenant=tenant)
        if in_backoff:
            assert not d

    def next_steps(self) -> list:
        """(key, step) pairs the world could take next for our servers."""
        steps = []
        for key in sorted(self.ledger.keys(), key=str):
            state = self.ledger.entry_state(key)
            if state is EntryState.RESERVED:
                steps += [(key, "send"), (key, "release")]
            if key in self.answers:
                steps.append((key, "answer"))
            if key in self.nova:
                if self.nova[key][1]:
                    steps.append((key, "nova-deletes"))
                elif state is EntryState.CREATED:
                    steps.append((key, "delete"))
        return steps

    @precondition(lambda self: self.next_steps())
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "ok", "timeout-made",
                                                   "timeout-lost", "bad-request"]))
    def advance(self, data, outcome):
        key, step = data.draw(st.sampled_from(self.next_steps()))
        if step == "send":
            self.post_send(key, outcome)
        elif step == "release":
            self.ledger.release(key)
        elif step == "answer":
            self.post_answer(key)
        elif step == "delete":
            self.ledger.delete_issued(key)
            self.nova[key][1] = True
        else:
            del self.nova[key]

    def post_send(self, key, outcome):
        cost = self.ledger._entries[key].cost
        self.ledger.create_issued(key)
        after = self.nova_usage() + cost
        over = [n for n in ("instances", "cores", "ram", "volumes", "volume_gb")
                if getattr(cost, n) and getattr(after, n) > getattr(self.limit, n)]
        if over and outcome in ("ok", "timeout-made"):
            self.refusals += 1
            self.answers[key] = "quota"
            return
        if outcome in ("ok", "timeout-made"):
            self.nova[key] = [cost, False]
        self.answers[key] = {"ok": "accepted", "timeout-made": "timeout",
                             "timeout-lost": "timeout", "bad-request": "rejected"}[outcome]

    def post_answer(self, key):
        answer = self.answers.pop(key)
        if answer == "accepted":
            self.ledger.create_accepted(key)
        elif answer == "timeout":
            self.ledger.create_unknown(key)
        elif answer == "quota":
            self.ledger.create_rejected(key, quota_error=True)
            assert backoff_state(self.ledger).in_backoff
        else:
            self.ledger.create_rejected(key)

    @rule()
    def server_list(self):
        for key in sorted(self.ledger.keys(), key=str):
            state = self.ledger.entry_state(key)
            if key in self.nova:
                self.ledger.server_seen(key)
            elif state in (EntryState.CREATED, EntryState.DELETING, EntryState.UNKNOWN) \
                    and key not in self.answers:
                self.ledger.server_gone(key)

    @precondition(lambda self: len(self.reads) < 3)
    @rule()
    def begin_read(self):
        self.reads.append([self.ledger.begin_limits_read("p"), None, None])

    def read_now(self):
        token = self.ledger.begin_limits_read("p")
        if self.ledger.apply_limits(token, CloudLimits(self.limit, self.nova_usage(),
                                                       self.clock.now)):
            self.applied_foreign = self.foreign

    @precondition(lambda self: any(r[1] is None for r in self.reads))
    @rule(data=st.data())
    def nova_serves_read(self, data):
        pending = [r for r in self.reads if r[1] is None]
        read = data.draw(st.sampled_from(pending))
        read[1] = CloudLimits(self.limit, self.nova_usage(), self.clock.now)
        read[2] = self.foreign

    @precondition(lambda self: any(r[1] is not None for r in self.reads))
    @rule(data=st.data(), fail=st.booleans())
    def finish_read(self, data, fail):
        served = [r for r in self.reads if r[1] is not None]
        read = data.draw(st.sampled_from(served))
        self.reads.remove(read)
        if fail:
            self.ledger.limits_read_failed(read[0], "timeout")
        elif self.ledger.apply_limits(read[0], read[1]):
            self.applied_foreign = read[2]

    @rule(instances=st.integers(0, 1), cores=st.integers(0, 2))
    def foreign_shrinks(self, instances, cores):
        self.foreign = (self.foreign - Resources(instances, cores, instances * 512)) \
            .maximum(ZERO)

    @precondition(lambda self: self.growth_allowed)
    @rule(instances=st.integers(0, 2), cores=st.integers(0, 4))
    def foreign_grows(self, instances, cores):
        self.grew = self.grew or bool(instances or cores)
        self.foreign = self.foreign + Resources(instances, cores, instances * 512)

    @rule(seconds=st.sampled_from([1, 5, 30]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    # -- invariants --
    @invariant()
    def estimate_never_above_the_truth(self):
        """headroom we believe <= what nova really has left, minus what we
        reserved but not sent, plus usage we do not own that grew since the
        reading was served (which nobody could know)."""
        est = self.ledger.estimate("p")
        if est.headroom is None:
            return
        unsent = _usage(self.ledger._entries[k].cost
                        for k in self.keys_in(EntryState.RESERVED))
        true_left = self.limit - self.nova_usage() - unsent
        growth = self.foreign - self.applied_foreign
        assert _finite_le(est.headroom, true_left + growth), (est, true_left, growth)

    @invariant()
    def nova_never_refuses_without_growth(self):
        if not self.grew:
            assert self.refusals == 0
            unsent = _usage(self.ledger._entries[k].cost
                            for k in self.keys_in(EntryState.RESERVED))
            assert _finite_le(self.nova_usage() + unsent, self.limit)

    @invariant()
    def pool_and_tenant_limits_hold(self):
        entries = list(self.ledger._entries.values())
        assert _usage(e.cost for e in entries if e.pool == "a").fits(POOL_A_MAX)
        assert _usage(e.cost for e in entries if e.tenant == "t1").fits(TENANT_MAX)

    @invariant()
    def nothing_in_nova_is_forgotten(self):
        # every server nova counts that we made is still in the ledger
        assert set(self.nova) <= set(self.ledger.keys())


NovaSimulation.TestCase.settings = settings(
    max_examples=100, stateful_step_count=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_nova_simulation = NovaSimulation.TestCase
