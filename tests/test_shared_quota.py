"""The shared quota book's arithmetic (nodepool/quota/shared.py): pure, no I/O."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from nodepool.quota import CloudLimits, PoolQuota, QuotaLedger, Resources, ZERO
from nodepool.quota.shared import (Claim, ClaimState, ReadingCover, freed_usage,
                                   judge_create, launcher_share, others_usage, parse_book,
                                   project_key, shared_headroom, shortfalls)

finite = st.integers(min_value=0, max_value=10_000)
costs = st.builds(Resources, finite, finite, finite, finite, finite)
text = st.text(min_size=1, max_size=30)


@given(st.sampled_from(list(ClaimState)), text, text, costs)
def test_a_claim_name_round_trips_whatever_the_key_and_launcher(state, key, launcher, cost):
    claim = Claim(state, key, launcher, cost)
    assert "/" not in claim.name
    assert Claim.parse(claim.name) == claim


def test_names_that_are_not_claims_are_ignored():
    good = Claim(ClaimState.OWNED, "1/1", "host-a", Resources(1, 2, 1024)).name
    assert parse_book(["lock", "x,1,2", good, "q" + good[1:], good.replace("1024", "-1"),
                       good.replace("1024", "inf")]) == [Claim.parse(good)]


def test_float_resources_survive_the_name():
    claim = Claim(ClaimState.RESERVED, "n/1", "l", Resources(1, 0.5, 1536.25))
    assert Claim.parse(claim.name).cost == Resources(1, 0.5, 1536.25)


def _claim(state, key, launcher="other", n=1):
    return Claim(state, key, launcher, Resources(n, 2 * n, 1024 * n))


def test_others_usage_splits_covered_and_in_flight_and_skips_the_ledgers_own():
    owned_old = _claim(ClaimState.OWNED, "a/1")
    owned_new = _claim(ClaimState.OWNED, "b/1")
    reserved = _claim(ClaimState.RESERVED, "c/1")
    mine = _claim(ClaimState.OWNED, "d/1", "me")
    covered, in_flight = others_usage([owned_old, owned_new, reserved, mine],
                                      local_keys={"d/1"}, covered_names={owned_old.name,
                                                                         mine.name})
    assert covered == Resources(1, 2, 1024)
    assert in_flight == Resources(2, 4, 2048)


def test_a_reserved_claim_is_never_covered_even_if_its_name_was_seen():
    reserved = _claim(ClaimState.RESERVED, "c/1")
    assert others_usage([reserved], set(), {reserved.name}) == (ZERO, Resources(1, 2, 1024))


def _ledger_with(limits_used: int, limit: int, own_covered: int, own_in_flight: int):
    """A real ledger: ``own_covered`` servers created before the reading,
    ``own_in_flight`` after it; nova said ``limits_used``."""
    ledger = QuotaLedger()
    ledger.configure_provider("p", {"main": PoolQuota()})
    for i in range(own_covered):
        ledger.adopt(f"old/{i}", provider="p", pool="main", cost=Resources(1, 1, 1))
    token = ledger.begin_limits_read("p")
    ledger.apply_limits(token, CloudLimits(Resources(limit, math.inf, math.inf, math.inf,
                                                     math.inf),
                                           Resources(limits_used, 0, 0, 0, 0), read_at=0.0))
    for i in range(own_in_flight):
        # Known only since the reading started: in flight.
        ledger.adopt(f"new/{i}", provider="p", pool="main", cost=Resources(1, 1, 1))
    return ledger


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12), st.integers(1, 12), st.integers(0, 6), st.integers(0, 6),
       st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))
def test_the_headroom_from_the_estimate_is_the_rule_with_everyones_claims(
        n, limit, own_covered, own_in_flight, co, io, fo):
    ledger = _ledger_with(n, limit, own_covered, own_in_flight)
    est = ledger.estimate("p")
    assert (est.ledger_covered.instances, est.in_flight.instances) == (own_covered,
                                                                       own_in_flight)
    others_c, others_i = Resources(co, 0, 0), Resources(io, 0, 0)
    fo = min(fo, n)   # freed: servers nova counted, so never more than nova's count
    got = shared_headroom(est.limits.max, est.headroom, est.ledger_covered, est.in_flight,
                          others_c, others_i, Resources(fo, 0, 0))
    expected = limit - max(n - fo, own_covered + co) - own_in_flight - io
    assert got.instances == expected
    assert got.cores == math.inf and got.ram == math.inf


def test_with_no_other_claims_the_book_agrees_with_the_ledger():
    ledger = _ledger_with(3, 5, 3, 2)   # exactly full: 3 covered + 2 in flight
    est = ledger.estimate("p")
    head = shared_headroom(est.limits.max, est.headroom, est.ledger_covered, est.in_flight,
                           ZERO, ZERO)
    assert head == est.headroom
    assert shortfalls(head, Resources(1, 1, 1), "shared quota") == []


def test_shortfalls_name_only_resources_the_create_uses():
    head = Resources(-1, 4, -10, -1, 0)
    assert shortfalls(head, Resources(1, 2, 0), "x") == [
        "x: instances short by 1 (claims of other launchers on the project)"]
    assert shortfalls(head, Resources(0, 2, 0), "x") == []
    assert len(shortfalls(head, Resources(1, 1, 5, 1), "x")) == 3


def test_the_project_key_ignores_names_and_trailing_slashes_but_not_the_project():
    a = project_key("https://keystone.example/v3/", "p1", None, None, "RegionOne")
    assert a == project_key("https://KEYSTONE.example/v3", "p1", "whatever", "d", "RegionOne")
    assert a != project_key("https://keystone.example/v3", "p2", None, None, "RegionOne")
    assert a != project_key("https://keystone.example/v3", "p1", None, None, "RegionTwo")
    by_name = project_key("https://k/v3", None, "ci", "Default", None)
    assert by_name != project_key("https://k/v3", None, "ci", "other", None)
    assert "/" not in a and len(a) == 24


def test_the_budget_share_is_never_below_one():
    assert [launcher_share(n) for n in (0, 1, 3)] == [1, 1, 3]


def test_freed_needs_a_list_after_the_reading_a_live_launcher_and_a_claim_gone():
    gone = _claim(ClaimState.OWNED, "a/1", "alive")
    still = _claim(ClaimState.OWNED, "b/1", "alive")
    dead = _claim(ClaimState.OWNED, "c/1", "dead")
    unseen = _claim(ClaimState.OWNED, "d/1", "alive")
    listed = {"a/1": 10.0, "b/1": 10.0, "c/1": 10.0, "d/1": 4.0}
    freed = freed_usage([gone, still, dead, unseen], present={still.name}, listed_at=listed,
                        reading_started=5.0, live_launchers={"alive"})
    assert freed == gone.cost
    assert freed_usage([gone], set(), listed, None, {"alive"}) == ZERO


# -- the book's policy, judge_create: facts in, verdict out ------------------------------

ONE = Resources(1, 2, 1024)
LIMIT = Resources(2, 100, 100_000)


def _judge(claims=(), strays=(), vanished=(), gone=frozenset(), live=frozenset({"me", "other"}),
           reading=None, local_seen=frozenset(), local_keys=frozenset({"me/1"}),
           local_covered=ZERO, local_in_flight=ONE, nova_used=None):
    # The ledger's estimate, with our create (``ONE``) reserved already:
    # max - max(N, cl) - il, where nova's reading N is at least cl here.
    headroom = LIMIT - (local_covered if nova_used is None else nova_used) - local_in_flight
    return judge_create(ONE, claims=list(claims), strays=list(strays), vanished=list(vanished),
                        gone=gone, live=live, me="me", reading=reading or ReadingCover(),
                        local_seen=local_seen,
                        local_keys=local_keys, headroom=headroom, limit=LIMIT,
                        local_covered=local_covered, local_in_flight=local_in_flight,
                        layer="shared quota")


def test_the_policy_counts_a_live_launchers_claim_and_lets_the_create_fit_beside_one():
    other = _claim(ClaimState.OWNED, "o/1")
    assert _judge().reasons == []
    assert _judge(claims=[other]).reasons == []
    verdict = _judge(claims=[other, _claim(ClaimState.RESERVED, "o/2")])
    assert verdict.reasons and verdict.reasons[0].startswith("shared quota: ")
    assert not verdict.doubtful


def test_the_policy_ignores_claims_of_servers_seen_gone_and_the_ledgers_own():
    others = [_claim(ClaimState.OWNED, "o/1"), _claim(ClaimState.OWNED, "o/2")]
    assert _judge(claims=others).reasons
    assert _judge(claims=others, gone=frozenset({"o/2"})).reasons == []
    assert _judge(claims=others, local_keys=frozenset({"me/1", "o/2"})).reasons == []


def test_a_dead_launchers_claim_counts_until_a_reading_started_after_it_went():
    dead = _claim(ClaimState.OWNED, "d/1", launcher="dead")
    mine_too = [_claim(ClaimState.OWNED, "o/1")]
    for facts in ({"strays": [(dead, 10.0)]}, {"vanished": [(dead, 10.0)]}):
        assert _judge(claims=mine_too, **facts).reasons, facts
        assert _judge(claims=mine_too, reading=ReadingCover(started=5.0), **facts).reasons
        assert _judge(claims=mine_too, reading=ReadingCover(started=20.0),
                      **facts).reasons == []
        # Adopted by our ledger from the server list, or seen gone: not twice.
        assert _judge(claims=mine_too, local_keys=frozenset({"me/1", "d/1"}),
                      **facts).reasons == []
        assert _judge(claims=mine_too, gone=frozenset({"d/1"}), **facts).reasons == []


def test_a_covered_claim_gone_frees_its_server_only_with_a_list_after_the_reading():
    """Nova's reading counted another launcher's server that has gone since:
    freed when a list requested after nova answered showed it (proof that
    the reading counted it), doubtful otherwise (read the limits again)."""
    gone_since = _claim(ClaimState.OWNED, "o/1")
    # Nova's reading counts two servers: ours and the other's; one more
    # fits only once the other's is freed.
    covered = dict(local_covered=ONE, local_in_flight=ONE, nova_used=ONE + ONE)
    unproven = ReadingCover(frozenset({gone_since.name}), started=1.0, applied_at=2.0,
                            listed_at={"o/1": 1.5})
    proven = ReadingCover(frozenset({gone_since.name}), started=1.0, applied_at=2.0,
                          listed_at={"o/1": 2.5})
    verdict = _judge(reading=unproven, **covered)
    assert verdict.doubtful and verdict.reasons
    verdict = _judge(reading=proven, **covered)
    assert not verdict.doubtful and verdict.reasons == []
    # Its launcher gone too: it may still be there (no proof it left with its server).
    assert not _judge(reading=proven, live=frozenset({"me"}), **covered).doubtful
    # A key our ledger counted at some point is the ledger's to free.
    assert not _judge(reading=unproven, local_seen=frozenset({"o/1"}), **covered).doubtful
