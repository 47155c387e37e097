"""Housekeeping primitives: each one pass, level-triggered, safe to repeat
and safe to run from several launchers at once (every change is made under
the record's lock, after re-reading it).

  reset_lost_requests         pending requests whose launcher died -> requested
  remove_stale_request_locks  requests-lock/<id> left behind by gone requests
  deallocate_orphaned_nodes   ready nodes reserved for a request that is gone
  delete_empty_nodes          node znodes without data (made by late lockers)
  expire_holds                hold nodes past hold_expiration/max-hold-age
  reap_candidates             unlocked nodes in states the reaper deletes
  correct_caches              records and lock contenders the caches missed
                              the deletion of (read afresh)

Each returns the ids it changed.  Malformed znodes are logged and skipped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Collection

from kazoo.exceptions import NoNodeError, NotEmptyError

from nodepool.requests import protocol
from nodepool.zk import paths
from nodepool.zk.records import (BUILDING, DELETING, IN_USE, INIT, PENDING, READY,
                                 MalformedRecord, Node)
from nodepool.zk.store import RecordChanged, RecordGone, ZooKeeperStore

log = logging.getLogger("nodepool.requests.housekeeping")

# Upstream removes a request's lock znode 8 hours after the request is gone,
# so that a lock taken just before the request vanished is never pulled
# from under its holder.
STALE_LOCK_AGE = 8 * 3600.0


def reset_lost_requests(store: ZooKeeperStore, now: float | None = None,
                        skip: Collection[str] = ()) -> list[str]:
    """``pending`` requests nobody holds the lock of: unallocate their nodes
    (leaked ``init`` nodes become ``deleting``), then back to ``requested``.

    ``skip``: requests this process holds.  A request whose lock has a
    contender is left alone without trying the lock (a read, not a write),
    so the pass is cheap enough to run often."""
    reset = []
    for request in store.list_requests(cached=True):
        if request.state != PENDING or request.id in skip:
            continue
        if store.request_lock_holders(request.id):
            continue
        lock = store.try_lock_request(request.id)
        if lock is None:
            continue
        try:
            fresh = store.get_request(request.id)
            if fresh is None or fresh.state != PENDING:
                continue
            if not _unallocate_nodes_of(store, fresh.id, now):
                continue
            protocol.apply_reset_lost(fresh, time.time() if now is None else now)
            store.store_request(fresh, lock)
            log.info("reset lost request %s", fresh.id)
            reset.append(fresh.id)
        except (MalformedRecord, RecordGone, RecordChanged) as e:
            log.warning("could not reset request %s: %s", request.id, e)
        finally:
            lock.release()
    return reset


def _unallocate_nodes_of(store: ZooKeeperStore, request_id: str, now: float | None) -> bool:
    """False when one of them is locked elsewhere (try again later)."""
    for node in store.list_nodes(cached=True):
        if node.allocated_to != request_id:
            continue
        got = store.lock_and_read_node(node.id)
        if got is None:
            if store.get_node(node.id) is None:
                continue
            log.info("lost request %s: node %s is locked; retrying later",
                     request_id, node.id)
            return False
        fresh, lock = got
        try:
            if fresh.allocated_to != request_id:
                continue
            new_state = protocol.state_after_lost_request(fresh)
            if new_state != fresh.state:
                fresh.set_state(new_state, now)
            fresh.allocated_to = None
            store.store_node(fresh, lock)
        finally:
            lock.release()
    return True


# Nodes whose lock is held for long by design (the builder's, the executor's):
# not worth a read each pass.  A node in any other state is locked only for
# moments, so reading its lock afresh costs little.
LONG_LOCKED_STATES = frozenset({INIT, BUILDING, IN_USE})


def correct_caches(store: ZooKeeperStore) -> list[str]:
    """Records, and lock contenders of nodes, that the caches still hold
    although ZooKeeper deleted them.  kazoo's TreeCache can miss a delete
    (see ``RecordCache._confirm_added``); the reaper, deallocation and reuse
    skip a node that looks locked, and deallocation a node whose request
    looks alive, so one missed delete would leak a server for good.  One
    listing of each root, plus one read per locked node in a state where
    locks are short."""
    cache = store.nodes_cache
    if cache is None:
        return []
    suspects = [n.id for n in store.list_nodes(cached=True)
                if n.state not in LONG_LOCKED_STATES and cache.is_locked(n.id)]
    dropped = store.correct_caches(suspects)
    return ([f"request {r}" for r in dropped["requests"]]
            + [f"node {n}" for n in dropped["nodes"]]
            + [f"lock of node {n}" for n in dropped["locks"]])


def remove_stale_request_locks(store: ZooKeeperStore, max_age: float = STALE_LOCK_AGE,
                               now: float | None = None) -> list[str]:
    """Lock znodes of requests that no longer exist, untouched for ``max_age``
    seconds and without contenders."""
    now = time.time() if now is None else now
    existing = set(store.request_ids())
    removed = []
    # Lock znodes stay up to max_age after their request: with a busy Zuul
    # that is tens of thousands; their stats are read pipelined (every
    # request sent before the first answer is awaited), not one round trip
    # each.
    pending = [(rid, paths.request_lock_path(rid)) for rid in store.request_lock_ids()
               if rid not in existing]
    futures = [(rid, path, store.client.exists_async(path)) for rid, path in pending]
    for request_id, path, future in futures:
        try:
            stat = future.get(timeout=store.read_timeout)
            if stat is None or now - stat.mtime / 1000.0 <= max_age:
                continue
            # Not recursive: a contender child means someone holds it.
            store.client.delete(path, version=stat.version)
            removed.append(request_id)
        except (NoNodeError, NotEmptyError):
            continue
        except Exception as e:  # noqa: BLE001 - e.g. BadVersion: it was touched; next pass
            log.debug("not removing %s: %s", path, e)
    if removed:
        log.info("removed %d stale request lock(s)", len(removed))
    return removed


def deallocate_orphaned_nodes(store: ZooKeeperStore) -> list[str]:
    """Unlocked ``ready`` nodes whose ``allocated_to`` request is gone (Zuul
    cancelled it, or never used the nodes): make them reusable."""
    done = []
    cache = store.nodes_cache
    for node in store.list_nodes(cached=True):
        if node.state != READY or node.allocated_to is None:
            continue
        locked = cache.is_locked(node.id) if cache is not None else False
        exists = store.request_exists(node.allocated_to, cached=True)
        if not protocol.needs_deallocation(node, locked, exists):
            continue
        gone_request: list[str] = []

        # Called at once, within this iteration; the default binds it anyway.
        def deallocate(fresh: Node, gone_request: list = gone_request) -> bool:
            if (fresh.state != READY or fresh.allocated_to is None
                    or store.request_exists(fresh.allocated_to)):
                return False
            gone_request.append(fresh.allocated_to)
            fresh.allocated_to = None
            return True

        if store.update_unlocked_node(node.id, deallocate, "deallocate"):
            log.info("deallocated node %s from missing request %s", node.id, gone_request[0])
            done.append(node.id)
    return done


def delete_empty_nodes(store: ZooKeeperStore) -> list[str]:
    """Node znodes with no data: a lock attempt on a deleted node recreated
    the path.  Nothing refers to them."""
    removed = []
    cache = store.nodes_cache
    for node_id in store.node_ids():
        # One read per node every pass cost thousands of reads a minute;
        # a znode the cache holds with content (readable or not) is not
        # empty.  The cache only lags: a missed one is caught next pass.
        if cache is not None and cache.has_znode(node_id):
            continue
        data = store.raw_node(node_id)
        if data is None or data:
            continue
        store.delete_node_znode(node_id)
        removed.append(node_id)
        log.info("removed empty node znode %s", node_id)
    return removed


def expire_holds(store: ZooKeeperStore, providers: Collection[str],
                 max_hold_age: float = math.inf, now: float | None = None) -> list[str]:
    """``hold`` nodes past their expiration -> ``deleting`` (unlocked ones only)."""
    now = time.time() if now is None else now
    cache = store.nodes_cache
    expired = []
    for node in store.list_nodes(cached=True):
        if node.provider not in providers or not protocol.hold_expired(node, now, max_hold_age):
            continue
        if cache is not None and cache.is_locked(node.id):
            continue

        def expire(fresh: Node) -> bool:
            if not protocol.hold_expired(fresh, now, max_hold_age):
                return False
            fresh.set_state(DELETING, now)
            return True

        if store.update_unlocked_node(node.id, expire, "expire the hold of"):
            expired.append(node.id)
            log.info("hold of node %s expired", node.id)
    return expired


def reap_candidates(store: ZooKeeperStore, providers: Collection[str],
                    now: float | None = None) -> list[Node]:
    """Nodes of ``providers`` the reaper should delete, as last seen: unlocked
    and in a state nobody works on (see protocol.REAPABLE_STATES), or left
    in ``init`` by a pool worker that is gone (protocol.is_abandoned_init)."""
    now = time.time() if now is None else now
    cache = store.nodes_cache
    found = []
    for node in store.list_nodes(cached=True):
        locked = (cache.is_locked(node.id) if cache is not None
                  else store.node_locked(node.id))
        if protocol.is_reapable(node, locked, providers) or \
                (node.state == INIT and protocol.is_abandoned_init(
                    node, locked, _request_exists(store, node.allocated_to, cached=True),
                    now, providers)):
            found.append(node)
    return found


def _request_exists(store: ZooKeeperStore, request_id: str | None, cached: bool) -> bool:
    return request_id is not None and store.request_exists(request_id, cached=cached)


def abandoned_init(store: ZooKeeperStore, node: Node, providers: Collection[str],
                   now: float | None = None) -> bool:
    """``protocol.is_abandoned_init`` for a node we just locked and re-read,
    checking its request afresh."""
    now = time.time() if now is None else now
    return node.state == INIT and protocol.is_abandoned_init(
        node, False, _request_exists(store, node.allocated_to, cached=False), now, providers)


@dataclass
class HousekeepingReport:
    corrected_caches: list[str] = field(default_factory=list)
    reset_requests: list[str] = field(default_factory=list)
    removed_locks: list[str] = field(default_factory=list)
    deallocated: list[str] = field(default_factory=list)
    removed_empty: list[str] = field(default_factory=list)
    expired_holds: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_housekeeping(store: ZooKeeperStore, providers: Collection[str],
                     max_hold_age: float = math.inf,
                     stale_lock_age: float = STALE_LOCK_AGE) -> HousekeepingReport:
    """All the primitives once; a failure in one does not stop the others."""
    report = HousekeepingReport()
    tasks: list[tuple[str, Callable[[], list[str]]]] = [
        # First: the tasks below decide from the caches.
        ("corrected_caches", lambda: correct_caches(store)),
        ("reset_requests", lambda: reset_lost_requests(store)),
        ("removed_locks", lambda: remove_stale_request_locks(store, stale_lock_age)),
        ("deallocated", lambda: deallocate_orphaned_nodes(store)),
        ("removed_empty", lambda: delete_empty_nodes(store)),
        ("expired_holds", lambda: expire_holds(store, providers, max_hold_age)),
    ]
    for name, task in tasks:
        try:
            setattr(report, name, task())
        except Exception as e:
            log.exception("housekeeping %s failed", name)
            report.errors.append(f"{name}: {e}")
    return report
