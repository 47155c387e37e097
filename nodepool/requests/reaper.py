"""Deleting nodes: the launcher's reaper, one level-triggered pass at a time.

A candidate (unlocked, in a state nobody works on, of one of our providers)
is locked without waiting, re-read and re-checked, set to ``deleting``, and
its server delete is started through the builder.  Later passes poll the
delete; when the builder says it is done, the node is written ``deleted``
and its znode removed with its lock.  A failed delete releases the lock and
leaves the node ``deleting``, so it is retried (by us or another launcher)
no sooner than ``retry_delay`` seconds later.

A delete whose lock went with a lost session is not dropped: the builder
keeps a delete until it is polled to its end, so it is polled on (never
written to ZooKeeper; whoever holds the node now removes the record) and
the node is not started again here meanwhile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

from nodepool.requests import protocol
from nodepool.requests.builder import (DeleteSpec, DeleteState, DeleteStatus,
                                       NodeBuilder)
from nodepool.requests.housekeeping import abandoned_init, reap_candidates
from nodepool.zk.locks import ZooKeeperLock
from nodepool.zk.session import DISCONNECT_ERRORS
from nodepool.zk.records import DELETED, MalformedRecord, Node
from nodepool.zk.store import RecordChanged, RecordGone, ZooKeeperStore

log = logging.getLogger("nodepool.requests.reaper")


@dataclass
class _Deleting:
    node: Node
    lock: ZooKeeperLock
    handle: Hashable


@dataclass
class ReapReport:
    started: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disconnected: bool = False


class NodeReaper:
    def __init__(self, store: ZooKeeperStore, builders: Mapping[str, NodeBuilder],
                 retry_delay: float = 30.0, clock: Callable[[], float] = time.monotonic):
        """``builders``: provider name -> builder; only these providers' nodes
        are touched."""
        self.store = store
        self.builders = dict(builders)
        self.retry_delay = retry_delay
        self.clock = clock
        self._deleting: dict[str, _Deleting] = {}
        # Deletes whose lock a lost session took: polled until they end.
        self._unlocked: dict[str, _Deleting] = {}
        self._retry_after: dict[str, float] = {}

    @property
    def in_progress(self) -> list[str]:
        return sorted(self._deleting)

    def run_once(self) -> ReapReport:
        report = ReapReport()
        self._poll_unlocked()
        if not self.store.connected:
            # Deletes in flight keep their locks while the session may
            # survive; nothing is started or finished until the reconnect.
            report.disconnected = True
            return report
        self.store.session.retry_deferred()
        for node_id in list(self._deleting):
            try:
                self._poll(node_id, report)
            except Exception as e:
                log.exception("node %s: error while deleting", node_id)
                report.errors.append(f"{node_id}: {e}")
        now = self.clock()
        self._retry_after = {k: t for k, t in self._retry_after.items() if t > now}
        for node in reap_candidates(self.store, self.builders):
            if node.id in self._deleting or node.id in self._unlocked \
                    or self._retry_after.get(node.id, 0) > now:
                continue
            try:
                self._start(node.id, report)
            except DISCONNECT_ERRORS as e:
                log.warning("node %s: deletion not started, ZooKeeper disconnected (%s); "
                            "retried on a later pass", node.id, type(e).__name__)
                report.errors.append(f"{node.id}: {type(e).__name__}")
            except Exception as e:
                log.exception("node %s: error starting its deletion", node.id)
                report.errors.append(f"{node.id}: {e}")
        return report

    def release_all(self) -> None:
        for item in self._deleting.values():
            item.lock.release()
        self._deleting.clear()

    def _start(self, node_id: str, report: ReapReport) -> None:
        try:
            got = self.store.lock_and_read_node(node_id)
        except MalformedRecord as e:
            log.error("not reaping malformed node %s: %s", e.path, e.reason)
            return
        if got is None:
            return
        node, lock = got
        if node.state == DELETED or node.provider is None:
            # A previous delete removed the lock but not the znode.
            self.store.delete_node(node, lock)
            report.deleted.append(node_id)
            return
        if not (protocol.is_reapable(node, False, self.builders)
                or abandoned_init(self.store, node, self.builders)):
            lock.release()
            return
        try:
            previous = self.store.begin_delete(node, lock)
            spec = DeleteSpec.for_node(node, state=previous)
            handle = self.builders[node.provider].start_delete(spec)
        except (RecordGone, RecordChanged):
            lock.release()
            return
        except DISCONNECT_ERRORS:
            lock.release()  # deferred until the reconnect; no retry delay
            raise
        except Exception:
            lock.release()
            self._retry_after[node_id] = self.clock() + self.retry_delay
            raise
        log.info("node %s: deleting (was %s, server %s)", node_id, previous, node.external_id)
        self._deleting[node_id] = _Deleting(node, lock, handle)
        report.started.append(node_id)

    def _poll_unlocked(self) -> None:
        for node_id, item in list(self._unlocked.items()):
            try:
                status = self.builders[item.node.provider].poll_delete(item.handle)
            except Exception as e:  # noqa: BLE001 - the NodeBuilder contract: a failed delete
                status = DeleteStatus(DeleteState.FAILED, f"poll failed: {e}")
            if status.state is not DeleteState.DELETING:
                del self._unlocked[node_id]
                log.info("node %s: delete begun before the session was lost ended (%s)",
                         node_id, status.state.value)

    def _poll(self, node_id: str, report: ReapReport) -> None:
        item = self._deleting[node_id]
        if not item.lock.held:
            # Session expired: another pass (or launcher) picks the node up
            # again once this delete has ended.
            del self._deleting[node_id]
            self._unlocked[node_id] = item
            return
        try:
            status = self.builders[item.node.provider].poll_delete(item.handle)
        except Exception as e:  # noqa: BLE001 - the NodeBuilder contract: a failed delete
            status = DeleteStatus(DeleteState.FAILED, f"poll failed: {e}")
        if status.state is DeleteState.DELETING:
            return
        del self._deleting[node_id]
        if status.state is DeleteState.DONE:
            try:
                self.store.delete_node(item.node, item.lock)
            finally:
                item.lock.release()
            self._retry_after.pop(node_id, None)
            report.deleted.append(node_id)
            log.info("node %s: deleted", node_id)
        else:
            item.lock.release()
            self._retry_after[node_id] = self.clock() + self.retry_delay
            report.failed.append(node_id)
            log.warning("node %s: delete failed (%s); retrying later", node_id, status.reason)
