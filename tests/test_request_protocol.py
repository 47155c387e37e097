"""The protocol's decisions as pure functions (no ZooKeeper)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from nodepool.requests import protocol
from nodepool.requests.protocol import PoolInfo
from nodepool.zk.records import (MIN_READY_REQUESTOR, Node, NodeRequest)
from tests.fixtures.zk import make_pool_settings

ME = make_pool_settings(pool_id="me", labels=("small", "large"), provider="cloud-a",
                        priority=100)


def req(rid="200-0000000001", labels=("small",), state="requested", declined=(), provider=None,
        rel=0, requestor="zuul", reuse=True):
    return NodeRequest(id=rid, state=state, node_types=list(labels), declined_by=list(declined),
                       provider=provider, relative_priority=rel, requestor=requestor, reuse=reuse)


def node(nid="0000000001", state="ready", labels=("small",), provider="cloud-a", pool="main",
         allocated_to=None, state_time=100.0, hold_expiration=None):
    return Node(id=nid, state=state, type=list(labels), provider=provider, pool=pool,
                allocated_to=allocated_to, state_time=state_time,
                hold_expiration=hold_expiration)


# -- which requests -------------------------------------------------------------------------

def test_candidates_only_requested_and_not_declined_by_us():
    reqs = [req("200-0000000001"), req("200-0000000002", state="pending"),
            req("200-0000000003", declined=["me"]), req("200-0000000004", state="fulfilled"),
            req("200-0000000005", declined=["other"])]
    assert [r.id for r in protocol.candidate_requests(reqs, ME)] == \
        ["200-0000000001", "200-0000000005"]
    assert protocol.candidate_requests(reqs, ME, skip_ids={"200-0000000001"})[0].id == \
        "200-0000000005"


def test_candidates_servable_first_then_priority():
    reqs = [req("100-0000000001", labels=("gpu",)), req("300-0000000002"),
            req("200-0000000003", rel=5), req("200-0000000004", rel=1)]
    order = [r.id for r in protocol.candidate_requests(reqs, ME)]
    assert order == ["200-0000000004", "200-0000000003", "300-0000000002", "100-0000000001"]


# -- deferral -----------------------------------------------------------------------------------

def pool(pid, labels=("small", "large"), provider="cloud-b", priority=100, paused=False):
    return PoolInfo(pid, provider, frozenset(labels), priority, paused)


def test_no_deferral_alone():
    assert protocol.deferral_reason(req(), ME, [pool("me", provider="cloud-a")]) is None


def test_defer_to_preferred_provider_when_it_can_serve():
    r = req(provider="cloud-b")
    assert "cloud-b" in protocol.deferral_reason(r, ME, [pool("b1")])
    # ... unless it declined, or lacks a label, or is not online.
    assert protocol.deferral_reason(req(provider="cloud-b", declined=["b1"]), ME,
                                    [pool("b1")]) is None
    assert protocol.deferral_reason(r, ME, [pool("b1", labels=("large",))]) is None
    assert protocol.deferral_reason(r, ME, []) is None
    # Our own provider preferred: go ahead.
    assert protocol.deferral_reason(req(provider="cloud-a"), ME, [pool("b1")]) is None


def test_defer_to_lower_priority_number_unless_paused_or_declined():
    better = pool("b1", priority=50)
    assert protocol.deferral_reason(req(), ME, [better]) is not None
    assert protocol.deferral_reason(req(), ME, [pool("b1", priority=50, paused=True)]) is None
    assert protocol.deferral_reason(req(declined=["b1"]), ME, [better]) is None
    assert protocol.deferral_reason(req(), ME, [pool("b1", priority=100)]) is None
    assert protocol.deferral_reason(req(), ME, [pool("b1", priority=150)]) is None


def test_defer_when_missing_a_label_that_another_pool_has():
    r = req(labels=("small", "gpu"))
    assert protocol.deferral_reason(r, ME, [pool("g", labels=("small", "gpu"))]) is not None
    # Nobody else can: go ahead (and decline).
    assert protocol.deferral_reason(r, ME, [pool("g", labels=("gpu",))]) is None


def test_our_own_registration_never_causes_deferral():
    me_registered = PoolInfo("me", "cloud-a", frozenset({"small", "large"}), 1, False)
    assert protocol.deferral_reason(req(), ME, [me_registered]) is None


# -- decline -----------------------------------------------------------------------------------

def test_decline_reasons():
    assert protocol.decline_reasons(req(), ME) == []
    assert "gpu" in protocol.decline_reasons(req(labels=("small", "gpu")), ME)[0]
    assert protocol.decline_reasons(req(), make_pool_settings(labels=("small",),
                                                              max_servers=0))
    assert protocol.decline_reasons(req(labels=()), ME)


def test_decline_fails_only_when_every_registered_pool_declined():
    r = req(declined=["other"])
    protocol.apply_decline(r, "me", ["me", "other", "third"], now=5.0)
    assert (r.state, r.declined_by, r.state_time) == ("requested", ["other", "me"], 5.0)
    protocol.apply_decline(r, "third", ["me", "other", "third"], now=6.0)
    assert r.state == "failed"
    # Declining twice does not grow the list.
    r2 = req(declined=["me"])
    protocol.apply_decline(r2, "me", ["me"], now=1.0)
    assert r2.declined_by == ["me"] and r2.state == "failed"


@given(st.sets(st.sampled_from("abcdef")), st.sets(st.sampled_from("abcdef")),
       st.sampled_from("abcdef"))
def test_decline_rule_property(registered, declined, me):
    r = req(declined=sorted(declined))
    protocol.apply_decline(r, me, registered, now=1.0)
    assert r.declined_by.count(me) == 1
    assert (r.state == "failed") == ((set(registered) | {me}) <= set(r.declined_by))


def test_fulfil_keeps_node_types_order():
    r = req(labels=("small", "large", "small"), state="pending")
    protocol.apply_fulfil(r, ["3", "1", "2"], now=9.0)
    assert (r.nodes, r.state, r.state_time) == (["3", "1", "2"], "fulfilled", 9.0)


def test_reset_lost():
    r = req(state="pending")
    r.nodes = ["1"]
    protocol.apply_reset_lost(r, now=3.0)
    assert (r.state, r.nodes) == ("requested", [])


# -- nodes --------------------------------------------------------------------------------------

def test_reusable_nodes():
    nodes = [node("1"), node("2", allocated_to="200-0000000009"), node("3", state="building"),
             node("4", labels=("large",)), node("5", provider="cloud-b"), node("6", pool="other"),
             node("7", state_time=50.0), node("8"), node("9")]
    found = protocol.reusable_nodes(nodes, "small", ME, locked={"8"}, taken={"9"})
    assert [n.id for n in found] == ["7", "1"]   # oldest first
    assert protocol.can_reuse(node("1"), "small", ME)
    assert not protocol.can_reuse(node("1", allocated_to="x"), "small", ME)


def test_max_servers_counts_pool_nodes_except_deleted():
    settings = make_pool_settings(labels=("small",), provider="cloud-a", max_servers=3)
    nodes = [node("1"), node("2", state="used"), node("3", state="deleted"),
             node("4", pool="other")]
    assert protocol.pool_node_count(nodes, settings) == 2
    assert not protocol.at_max_servers(nodes, settings)
    assert protocol.at_max_servers(nodes, settings, launching=1)
    assert not protocol.at_max_servers(nodes, make_pool_settings(labels=("small",)))


def test_reapable():
    for state in ("used", "in-use", "building", "failed", "deleting", "deleted", "aborted"):
        assert protocol.is_reapable(node(state=state), False, {"cloud-a"})
        assert not protocol.is_reapable(node(state=state), True, {"cloud-a"})
        assert not protocol.is_reapable(node(state=state), False, {"cloud-b"})
    for state in ("ready", "hold", "init", "testing"):
        assert not protocol.is_reapable(node(state=state), False, {"cloud-a"})


def test_needs_deallocation():
    assert protocol.needs_deallocation(node(allocated_to="x"), False, request_exists=False)
    assert not protocol.needs_deallocation(node(allocated_to="x"), False, request_exists=True)
    assert not protocol.needs_deallocation(node(allocated_to="x"), True, request_exists=False)
    assert not protocol.needs_deallocation(node(), False, request_exists=False)
    assert not protocol.needs_deallocation(node(state="in-use", allocated_to="x"), False, False)


def test_hold_expiry():
    held = node(state="hold", state_time=1000.0, hold_expiration=60)
    assert not protocol.hold_expired(held, 1059.0)
    assert protocol.hold_expired(held, 1060.0)
    forever = node(state="hold", state_time=1000.0, hold_expiration=0)
    assert not protocol.hold_expired(forever, 10**9)
    assert protocol.hold_expired(forever, 1100.0, max_hold_age=100)
    assert not protocol.hold_expired(node(state="ready"), 10**9, max_hold_age=1)


def test_lost_request_init_nodes_are_deleted():
    assert protocol.state_after_lost_request(node(state="init")) == "deleting"
    assert protocol.state_after_lost_request(node(state="ready")) == "ready"


def test_min_ready_wanted():
    nodes = [node("1"), node("2", allocated_to="200-0000000001"), node("3", state="building"),
             node("4", labels=("large",), state="used")]
    open_req = req("900-0000000001", labels=("large",), requestor=MIN_READY_REQUESTOR)
    zuul_req = req("200-0000000002", labels=("large",))
    wanted = protocol.min_ready_wanted({"small": 3, "large": 2, "none": 0}, nodes,
                                       [open_req, zuul_req])
    assert wanted == ["large", "small"]
    assert protocol.min_ready_wanted({"small": 1}, nodes, []) == []
    assert math.isinf(ME.max_servers)
