"""Locks against the real server: exact paths, the kazoo recipe Zuul uses,
contention between two clients, deadlines, session loss."""

from __future__ import annotations

import re
import time

import pytest
from kazoo.recipe.lock import Lock

from nodepool.zk import locks, paths
from nodepool.zk.locks import LockNotAcquired
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.zk import expire_session, wait_for

CONTENDER = re.compile(r"^[0-9a-f]{32}__lock__\d{10}$")


def test_request_lock_path_and_contender_name(zk):
    store = ZooKeeperStore(zk)
    lock = store.try_lock_request("200-0000000001")
    assert lock is not None and lock.held
    assert lock.path == "/nodepool/requests-lock/200-0000000001"
    children = zk.get_children("/nodepool/requests-lock/200-0000000001")
    assert len(children) == 1 and CONTENDER.match(children[0])
    lock.release()
    assert not lock.held
    # kazoo leaves the lock znode behind (stale-lock housekeeping removes it).
    assert zk.exists("/nodepool/requests-lock/200-0000000001")
    assert zk.get_children("/nodepool/requests-lock/200-0000000001") == []


def test_node_lock_path(zk):
    store = ZooKeeperStore(zk)
    lock = store.try_lock_node("0000000005")
    assert lock.path == "/nodepool/nodes/0000000005/lock" == paths.node_lock_path("0000000005")
    assert store.node_locked("0000000005")
    assert len(store.node_lock_holders("0000000005")) == 1
    lock.release()
    assert not store.node_locked("0000000005")


def test_two_clients_contend(zk, zk_connect):
    a, b = ZooKeeperStore(zk), ZooKeeperStore(zk_connect())
    held = a.try_lock_request("100-0000000000")
    assert held is not None
    start = time.monotonic()
    assert b.try_lock_request("100-0000000000") is None
    assert time.monotonic() - start < 5  # non-blocking
    # The failed attempt left no contender behind.
    assert len(a.request_lock_holders("100-0000000000")) == 1
    with pytest.raises(LockNotAcquired):
        locks.lock(b.client, paths.request_lock_path("100-0000000000"), timeout=0.3)
    held.release()
    got = b.try_lock_request("100-0000000000")
    assert got is not None and got.held
    assert a.try_lock_request("100-0000000000") is None
    got.release()


def test_a_lock_used_in_a_with_block_is_released_however_the_block_ends(zk):
    store = ZooKeeperStore(zk)
    with store.try_lock_node("0000000011") as held:
        assert held.held and store.node_locked("0000000011")
    assert not held.held and not store.node_locked("0000000011")
    lock = store.try_lock_node("0000000011")
    with pytest.raises(RuntimeError):
        with lock:
            raise RuntimeError("a step failed")
    assert not lock.held and not store.node_locked("0000000011")
    lock.release()          # a second release is harmless


def test_same_client_second_attempt_fails(zk):
    # Two pool workers sharing one connection must exclude each other too.
    store = ZooKeeperStore(zk)
    first = store.try_lock_node("0000000001")
    assert first is not None
    assert store.try_lock_node("0000000001") is None
    first.release()


def test_interoperates_with_the_plain_kazoo_recipe_zuul_uses(zk, zk_connect):
    zuul_side = zk_connect()
    store = ZooKeeperStore(zk)
    ours = store.try_lock_node("0000000007")
    theirs = Lock(zuul_side, "/nodepool/nodes/0000000007/lock")
    assert theirs.acquire(blocking=False) is False
    ours.release()
    assert theirs.acquire(blocking=False) is True
    assert store.try_lock_node("0000000007") is None
    assert store.node_locked("0000000007")
    theirs.release()


def test_blocking_lock_waits_for_release(zk, zk_connect):
    a, b = ZooKeeperStore(zk), ZooKeeperStore(zk_connect())
    held = a.try_lock_node("0000000003")
    import threading
    threading.Timer(0.3, held.release).start()
    got = b.lock_node("0000000003", timeout=10)
    assert got.held
    got.release()


def test_lock_is_not_held_after_session_loss(zk, zk_settings, zk_connect):
    store = ZooKeeperStore(zk)
    lock = store.try_lock_request("200-0000000002")
    expire_session(zk, zk_settings)
    assert not lock.held
    lock.release()  # a no-op, no error
    other = ZooKeeperStore(zk_connect())
    got = wait_for(lambda: other.try_lock_request("200-0000000002"), 10,
                   "the lock to be free after the session expired")
    got.release()


def test_try_lock_on_closed_client_returns_none_quickly(zk_connect):
    client = zk_connect()
    client.stop()
    start = time.monotonic()
    assert locks.try_lock(client, "/nodepool/nodes/0000000001/lock", deadline=1.0) is None
    assert time.monotonic() - start < 5


def test_contenders_order_by_sequence():
    names = ["b" * 32 + "__lock__0000000010", "a" * 32 + "__lock__0000000002", "junk"]
    assert locks.contenders(names) == [names[1], names[0]]
