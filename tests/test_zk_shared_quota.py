"""The shared quota book's ZooKeeper transport (nodepool/zk/project_book.py),
against the real ZooKeeper of the test session."""

from __future__ import annotations

import threading

from nodepool.quota import Resources, ZERO
from nodepool.quota.shared import Claim, ClaimState, parse_book
from nodepool.zk.provider_share import ProviderShare
from nodepool.zk.project_book import ProjectBook
from tests.fixtures.zk import wait_for

ONE = Resources(1, 1, 512)


def _book(client, launcher, states=None, key="proj"):
    states = states if states is not None else {}
    book = ProjectBook(client, key, {"project": key}, launcher, states.get)
    # (ProjectBook.start waits for nothing; the listings arrive by watch.)
    book.start()
    return book


def _reserve(book, key, limit):
    """As a provider whose own ledger holds only this create (its estimate
    after reserving it locally)."""
    lim = Resources(limit, 100, 100000)
    return ProviderShare(book).reserve(key, ONE, lim - ONE, lim, ZERO, ONE, frozenset({key}))


def _a_owns_one(zk_connect, limit, clock=None):
    """Launchers a and b on one project; a owns one server (a/1), b sees it."""
    a_client, b_client = zk_connect(), zk_connect()
    a_states = {"a/1": "created"}
    a = _book(a_client, "a", a_states)
    b = _book(b_client, "b")
    share = ProviderShare(b) if clock is None else ProviderShare(b, clock=clock)
    assert _reserve(a, "a/1", limit) == []
    a.sync()
    wait_for(lambda: b.owned_names() and b.launcher_count() == 2,
             message="b sees a's owned claim")
    return a, a_states, b, share


def _children(client, book):
    return parse_book(client.get_children(book.claims_path))


def test_concurrent_reservers_on_several_clients_never_exceed_the_quota(zk_connect):
    limit = 7
    clients = [zk_connect() for _ in range(4)]
    books = [_book(c, f"launcher-{i}") for i, c in enumerate(clients)]
    granted: list[str] = []
    lock = threading.Lock()

    def worker(book, thread):
        for n in range(5):
            key = f"{book.launcher_id}-{thread}/{n}"
            if not _reserve(book, key, limit):
                with lock:
                    granted.append(key)

    threads = [threading.Thread(target=worker, args=(b, t)) for b in books for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claims = _children(clients[0], books[0])
    assert len(granted) == limit
    assert sorted(c.key for c in claims) == sorted(granted)
    assert all(c.state is ClaimState.RESERVED for c in claims)
    # The races were real: some reservers lost a commit and read again.
    assert sum(b.conflicts for b in books) > 0


def test_a_dead_launchers_claims_vanish_with_its_session(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a, b = _book(a_client, "a"), _book(b_client, "b")
    assert _reserve(a, "a/1", 2) == []
    assert _reserve(a, "a/2", 2) == []
    reasons = _reserve(b, "b/1", 2)
    assert reasons and "instances short by 1" in reasons[0]
    a_client.stop()
    a_client.close()
    wait_for(lambda: not _children(b_client, b), message="a's claims gone")
    # b's watches saw it too (b notes when the claims went).
    wait_for(lambda: not b.claims() and b.launcher_count() == 1, message="b sees a gone")
    share = ProviderShare(b)
    # Once a limits reading started after they went (nova counts a's
    # servers from then on, if they exist), the quota is b's.
    share.reading_applied(share.reading_started())
    lim = Resources(2, 100, 100000)
    assert share.reserve("b/1", ONE, lim - ONE, lim, ZERO, ONE, frozenset({"b/1"})) == []


def test_sync_follows_the_ledger_reserved_owned_gone(zk_connect):
    client = zk_connect()
    states: dict[str, str] = {}
    book = _book(client, "me", states)
    assert _reserve(book, "n/1", 5) == []
    states["n/1"] = "creating"
    book.sync()
    assert [c.state for c in _children(client, book)] == [ClaimState.RESERVED]
    states["n/1"] = "created"
    book.sync()
    assert [(c.key, c.state) for c in _children(client, book)] == [("n/1", ClaimState.OWNED)]
    del states["n/1"]
    book.sync()
    assert _children(client, book) == []
    assert book.mine() == {}


def test_a_claim_comes_back_after_the_session_was_lost(zk_connect, zk_settings):
    from tests.fixtures.zk import expire_session
    client = zk_connect()
    states = {"n/1": "created"}
    book = _book(client, "me", states)
    assert _reserve(book, "n/1", 5) == []
    book.sync()
    expire_session(client, zk_settings)
    wait_for(lambda: book.session.connected, message="reconnected")
    book.sync()
    assert [(c.key, c.state) for c in _children(client, book)] == [("n/1", ClaimState.OWNED)]


def test_owned_claims_seen_before_a_reading_count_as_covered(zk_connect):
    a, a_states, b, share = _a_owns_one(zk_connect, 2)
    token = share.reading_started()
    # Nova's reading (started after the claim was owned) says 1 in use.
    lim = Resources(2, 100, 100000)
    nova_used_1 = lim - Resources(1, 0, 0) - ONE   # headroom after b's own create
    # Before the reading is applied the claim is in flight: 1 (nova) + 1 + 1 > 2.
    assert share.reserve("b/1", ONE, nova_used_1, lim, ZERO, ONE, frozenset({"b/1"}))
    share.reading_applied(token)
    # Now nova's 1 covers it: 1 + 1 <= 2.
    assert share.reserve("b/1", ONE, nova_used_1, lim, ZERO, ONE, frozenset({"b/1"})) == []


def test_a_covered_server_gone_is_freed_only_with_a_list_that_showed_it(zk_connect):
    now = [100.0]
    a, a_states, b, share = _a_owns_one(zk_connect, 1, clock=lambda: now[0])
    token = share.reading_started()            # the read starts at 100
    now[0] = 101.0
    share.listed(["a/1"], 101.0)               # a list while nova is answering
    now[0] = 102.0
    share.reading_applied(token)               # nova answered by 102
    lim = Resources(1, 100, 100000)
    full = lim - Resources(1, 0, 0) - ONE    # nova said 1 of 1 used
    args = (ONE, full, lim, ZERO, ONE, frozenset({"b/1"}))
    assert share.check(*args)                # a's server holds the quota
    # a's server goes; nova's reading still counts it.
    del a_states["a/1"]
    a.sync()
    wait_for(lambda: not b.claims(), message="a's claim gone")
    # The list at 101 does not prove nova still had it when it counted.
    assert share.check(*args), "no list showed the server after nova answered"
    share.listed(["a/1"], 102.5)
    assert share.check(*args) == []
    assert share.reserve("b/1", *args) == []


def test_a_covered_server_gone_unseen_makes_the_reading_doubtful(zk_connect):
    # As above, but no list after the reading showed a's server: b cannot
    # free it, so it says the limits need reading again (once).
    a, a_states, b, share = _a_owns_one(zk_connect, 1)
    share.reading_applied(share.reading_started())
    assert share.others_covered()
    lim = Resources(1, 100, 100000)
    full = lim - Resources(1, 0, 0) - ONE
    args = (ONE, full, lim, ZERO, ONE, frozenset({"b/1"}))
    assert share.check(*args) and not share.reading_doubtful()
    del a_states["a/1"]
    a.sync()
    wait_for(lambda: not b.claims(), message="a's claim gone")
    assert share.check(*args)
    assert share.reading_doubtful() and not share.reading_doubtful()
    share.reading_applied(share.reading_started())   # read again: nova says 0 used
    assert share.check(ONE, lim - ONE, lim, ZERO, ONE, frozenset({"b/1"})) == []
    assert not share.reading_doubtful()
    assert not share.others_covered()


def test_a_dead_launchers_covered_claims_are_not_freed(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a = _book(a_client, "a", {"a/1": "created"})
    b = _book(b_client, "b")
    share = ProviderShare(b)
    assert _reserve(a, "a/1", 1) == []
    a.sync()
    wait_for(lambda: b.owned_names() and b.launcher_count() == 2, message="b sees a")
    share.reading_applied(share.reading_started())
    share.listed(["a/1"], share._reading_applied_at + 0.001)
    a_client.stop()
    a_client.close()
    wait_for(lambda: not b.claims() and b.launcher_count() == 1, message="a gone")
    lim = Resources(1, 100, 100000)
    full = lim - Resources(1, 0, 0) - ONE
    # Its server may well still exist: nova's 1 keeps counting it.
    assert share.reserve("b/1", ONE, full, lim, ZERO, ONE, frozenset({"b/1"}))


def test_one_leak_cleaner_per_project_and_the_next_takes_over(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a = _book(a_client, "a")
    b = _book(b_client, "b")
    other = _book(b_client, "b", key="other-project")
    wait_for(lambda: a.launcher_count() == 2 and b.launcher_count() == 2,
             message="both launchers listed")
    assert (a.is_cleaner(), b.is_cleaner()) == (True, False)
    wait_for(other.is_cleaner, message="alone on the other project: its cleaner")
    assert other.launcher_count() == 1
    a_client.stop()
    a_client.close()
    wait_for(b.is_cleaner, message="b elected")
    assert b.launcher_count() == 1


def test_no_reservation_while_zookeeper_is_unreachable(zk_connect):
    client = zk_connect()
    book = _book(client, "me")
    client.stop()
    reasons = _reserve(book, "n/1", 5)
    assert reasons and "not connected" in reasons[0]
    assert not book.is_cleaner()


def test_claimed_elsewhere_only_for_another_launchers_claims(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a, b = _book(a_client, "a"), _book(b_client, "b")
    assert _reserve(a, "n/1", 5) == []
    wait_for(lambda: b.claims(), message="b sees a's claim")
    assert b.claimed_elsewhere("n/1") and not a.claimed_elsewhere("n/1")
    assert not b.claimed_elsewhere("n/2")
    assert Claim.parse(b.claims()[0].name).launcher == "a"


def test_a_dead_launchers_claims_count_until_a_reading_that_started_after(zk_connect):
    a_client, b_client = zk_connect(), zk_connect()
    a = _book(a_client, "a")
    b = _book(b_client, "b")
    share = ProviderShare(b)
    share.reading_applied(share.reading_started())
    assert _reserve(a, "a/1", 1) == []      # POST in flight when a dies
    wait_for(lambda: b.claims() and b.launcher_count() == 2, message="b sees a")
    a_client.stop()
    a_client.close()
    wait_for(lambda: not b.claims() and b.launcher_count() == 1, message="a gone")
    lim = Resources(1, 100, 100000)
    empty = lim - ONE                        # nova said 0 used (before a's POST)
    args = (ONE, empty, lim, ZERO, ONE, frozenset({"b/1"}))
    assert share.check(*args), "a's server may exist: nova's old reading missed it"
    share.reading_applied(share.reading_started())
    # A reading that started after a's claims went counts a's server if
    # it exists; nova says 0 here, so there is room.
    assert share.reserve("b/1", *args) == []


# -- issue 21 defect 5: a reservation whose reply was lost ----------------------------

def _proxied_client(zk_settings, proxy):
    from nodepool.zk.client import ZooKeeperServer, ZooKeeperSettings, connect
    settings = ZooKeeperSettings((ZooKeeperServer("127.0.0.1", proxy.port,
                                                  zk_settings.chroot),),
                                 session_timeout=10)
    return connect(settings)


def test_a_reservation_whose_reply_was_lost_commits_properly_or_refuses(zk_connect,
                                                                        zk_settings):
    """The commit's reply is lost (the connection drops as it goes); another
    launcher takes the last instance meanwhile.  The retry must not take
    the lost commit as granted: it reads the book again and refuses."""
    from nodepool.zk.client import disconnect
    from tests.fixtures.tcpproxy import TcpProxy
    server = zk_settings.servers[0]
    proxy = TcpProxy(server.host, server.port)
    a_client = _proxied_client(zk_settings, proxy)
    try:
        a = _book(a_client, "a")
        b = _book(zk_connect(), "b")
        wait_for(lambda: a.launcher_count() == 2, message="a sees b")
        lim = Resources(1, 100, 100000)
        share = ProviderShare(a)

        def judge(names, members):
            reasons = share._reasons(names, members, ONE, lim - ONE, lim, ZERO, ONE,
                                     frozenset({"a/1"}))
            proxy.cut()      # the commit goes out on a connection that drops
            return reasons

        def fresh(names, members):
            return share._reasons(names, members, ONE, lim - ONE, lim, ZERO, ONE,
                                  frozenset({"a/1"}))

        reasons = a.reserve("a/1", ONE, judge)
        assert reasons and "lost" in reasons[0]
        # Meanwhile b takes the project's only instance (a's commit, if it
        # is sent at all after the reconnect, meets a newer version).
        assert _reserve(b, "b/1", 1) == []
        proxy.heal()
        wait_for(lambda: a.session.connected, timeout=20, message="a reconnected")
        # The retry judges a fresh read of the book (whatever a's cached
        # copy says by then).
        reasons = a.reserve("a/1", ONE, fresh)
        assert reasons and "instances short by 1" in reasons[0], reasons
        assert [c.key for c in _children(a_client, a)] == ["b/1"]
        # With the room back, a second attempt commits properly.
        b.client.delete(f"{b.claims_path}/{_children(a_client, a)[0].name}")
        assert a.reserve("a/1", ONE, fresh) == []
        assert [c.key for c in _children(a_client, a)] == ["a/1"]
    finally:
        proxy.close()
        disconnect(a_client)


# -- issue 21 defect 4: only ephemeral claims of live members count -----------------

def test_a_persistent_claim_left_by_hand_blocks_no_create(zk_connect):
    """A claim a debugging session wrote (persistent, of a launcher that is
    not a member) takes no quota: the project's one instance is free."""
    client = zk_connect()
    a = _book(client, "a")
    junk = Claim(ClaimState.OWNED, "999/0", "debugging-session", ONE)
    client.create(f"{a.claims_path}/{junk.name}", b"")
    wait_for(lambda: junk.name in a.snapshot()[0], message="a sees the junk claim")
    share = ProviderShare(a)
    lim = Resources(1, 100, 100000)
    args = (ONE, lim - ONE, lim, ZERO, ONE, frozenset({"a/1"}))
    wait_for(lambda: share.check(*args) == [], message="the junk claim ignored")
    assert share.reserve("a/1", *args) == []
    wait_for(lambda: [c.key for c in a.claims()] == ["a/1"], message="a's own claim only")
    assert not a.claimed_elsewhere("999/0")


def test_an_ephemeral_claim_of_a_launcher_going_counts_until_the_next_reading(zk_connect):
    """A claim whose launcher is not (or no longer) a member but whose
    session lives is a dead launcher's: in flight until a limits reading
    that started after it was first seen."""
    client, other = zk_connect(), zk_connect()
    a = _book(client, "a")
    stray = Claim(ClaimState.RESERVED, "7/0", "leaving", ONE)
    other.create(f"{a.claims_path}/{stray.name}", b"", ephemeral=True)
    wait_for(lambda: stray.name in a.snapshot()[0], message="a sees the claim")
    share = ProviderShare(a)
    lim = Resources(1, 100, 100000)
    args = (ONE, lim - ONE, lim, ZERO, ONE, frozenset({"a/1"}))
    assert share.check(*args)
    share.reading_applied(share.reading_started())
    assert share.check(*args) == []


def test_stray_children_under_launchers_neither_win_the_election_nor_split_the_budget(
        zk_connect):
    client = zk_connect()
    a_probe = ProjectBook(client, "proj", {}, "probe", lambda k: None)
    client.ensure_path(a_probe.members_path)
    # Sorts first (sequence 0), and one more child: neither is a launcher.
    client.create(f"{a_probe.members_path}/tool-0000000000", b"")
    client.create(f"{a_probe.members_path}/notes", b"")
    a, b = _book(client, "a"), _book(zk_connect(), "b")
    wait_for(lambda: a.launcher_count() == 2 and b.launcher_count() == 2
             and len(a.snapshot()[1]) == 4, message="both books see every child")
    wait_for(lambda: (a.is_cleaner(), b.is_cleaner()) == (True, False),
             message="a (the first launcher) elected")
    assert [m.rsplit("-", 1)[0] for m in a.members()] == ["a", "b"]
