"""The group recipe (nodepool/zk/membership.py) on its own, against the real
ZooKeeper of the test session: members, their count, the leader, and
children that are not members."""

from __future__ import annotations

import threading

from nodepool.zk.membership import Membership, member_of, sequence_of
from tests.fixtures.zk import wait_for

PATH = "/group"


def _member(client, member_id, on_listing=None):
    group = Membership(client, PATH, member_id, f"the group as {member_id}", on_listing)
    group.ensure_path()
    group.watch()
    group.join()
    return group


def test_names_give_the_member_and_the_order():
    assert member_of("host-a-0123abcd-0000000007") == "host-a-0123abcd"
    assert sorted(["b-0000000010", "a-0000000002", "notes"], key=sequence_of) == \
        ["a-0000000002", "b-0000000010", "notes"]


def test_the_first_to_join_leads_and_the_next_takes_over(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a = _member(a_client, "a")
    b = _member(b_client, "b")
    wait_for(lambda: a.member_count() == 2 and b.member_count() == 2,
             message="both see both")
    assert (a.is_leader(), b.is_leader()) == (True, False)
    assert [member_of(m) for m in b.members()] == ["a", "b"]
    assert b.trusted_ids(b.listing()) == {"a", "b"}
    a.leave()
    wait_for(b.is_leader, message="b leads once a left")
    assert b.member_count() == 1 and not a.is_leader()


def test_a_session_that_ends_takes_its_membership_with_it(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    _member(a_client, "a")
    b = _member(b_client, "b")
    wait_for(lambda: b.member_count() == 2, message="b sees a")
    a_client.stop()
    a_client.close()
    wait_for(lambda: b.is_leader() and b.member_count() == 1, message="b alone, leading")


def test_children_that_are_not_registrations_neither_count_nor_lead(zk_connect):
    client = zk_connect()
    client.ensure_path(PATH)
    # Sorts first (sequence 0) but persistent; and one not named as a member.
    client.create(f"{PATH}/tool-0000000000", b"")
    client.create(f"{PATH}/notes", b"", ephemeral=True)
    listings = threading.Event()
    a = _member(client, "a", on_listing=listings.set)
    wait_for(lambda: len(a.listing()) == 3, message="a sees every child")
    wait_for(a.is_leader, message="a leads once the others were looked at")
    assert a.members() == [m for m in a.listing() if member_of(m) == "a"]
    assert a.member_count() == 1
    assert a.trusted_ids(a.listing()) == {"a"}
    assert listings.is_set()


def test_joining_again_in_the_same_session_keeps_one_registration(zk_connect):
    client = zk_connect()
    a = _member(client, "a")
    a.join()
    wait_for(lambda: len(a.listing()) == 1 and a.is_leader(), message="a leads alone")
    assert len(client.get_children(PATH)) == 1
