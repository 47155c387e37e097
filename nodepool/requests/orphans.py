"""Builds no accepted request waits for any more.

An *orphan* is a build whose request went away (deleted, or declined while
building): the pool keeps the node's lock and lets the build finish, so a
ready node becomes an unallocated ready node (reusable) instead of a
deleted one.

An *abandoned* build is one whose node lock went with a lost ZooKeeper
session: the node, left ``building`` and unlocked, is reaped, and the build
is settled on the next pass that can read ZooKeeper.  A build nobody may
finish any more is cancelled (its servers deleted, its quota released);
one whose ready node is recorded is forgotten (the record owns the server).
Without that the builder would keep them for ever: a finished build's
quota counted after another launcher deleted its server, a booting one
retrying with a new server for a node that is gone.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from typing import Hashable, Iterable

from nodepool.requests.builder import BuildState, BuildStatus, NodeBuilder
from nodepool.requests.node_builds import NodeBuilds
from nodepool.requests.slots import Slot, SlotState
from nodepool.zk.locks import ZooKeeperLock
from nodepool.zk.records import BUILDING, DELETING, INIT, MalformedRecord, Node
from nodepool.zk.store import RecordGone, ZooKeeperStore

# The handler's logger: operators follow one logger for what a pool decides.
log = logging.getLogger("nodepool.requests.handler")


@dataclass
class Orphan:
    """A build that goes on after its request went away, its node still
    locked by us."""

    node: Node
    lock: ZooKeeperLock
    handle: Hashable


@dataclass
class Abandoned:
    """A build whose node lock went with a lost session."""

    node: Node
    handle: Hashable


class OrphanBuilds:
    """The pool's orphan and abandoned builds: polled, settled and let go of
    by the pool's thread, their ids read by other threads too."""

    def __init__(self, store: ZooKeeperStore, builder: NodeBuilder, builds: NodeBuilds):
        self.store = store
        self.builder = builder
        self.builds = builds
        self._orphans: dict[str, Orphan] = {}
        self._abandoned: dict[str, Abandoned] = {}
        # Held for every change and by every reader from another thread (a
        # dict changed while iterated raises).
        self._lock = threading.Lock()

    def orphan_ids(self) -> list[str]:
        """The nodes of orphan builds, oldest orphan first."""
        with self._lock:
            return list(self._orphans)

    def abandoned_ids(self) -> list[str]:
        """The nodes of abandoned builds not settled yet, oldest first."""
        with self._lock:
            return list(self._abandoned)

    # -- new orphans and abandoned builds -------------------------------------------------

    def adopt(self, node: Node, lock: ZooKeeperLock, handle: Hashable) -> None:
        """The request of a build in flight went away; the node's lock is
        ours now."""
        with self._lock:
            self._orphans[node.id] = Orphan(node, lock, handle)

    def abandon_builds(self, slots: Iterable[Slot]) -> None:
        """The locks of a request's slots went with a lost session."""
        for slot in slots:
            # A ready slot's build was forgotten once recorded; a failed
            # one's too (or it never started).
            if slot.state is SlotState.BUILDING and slot.node is not None:
                self._abandon(slot.node, slot.handle)

    def abandon_orphans(self) -> None:
        """The orphans' locks went with a lost session (``let_go`` drops
        them)."""
        for orphan in self._orphans.values():
            self._abandon(orphan.node, orphan.handle)

    def let_go(self) -> None:
        """Release the orphans' locks and forget them; their nodes become
        unlocked ``building`` nodes that get reaped.  Abandoned builds are
        kept: they are settled on a later pass."""
        for orphan in self._orphans.values():
            orphan.lock.release()
        with self._lock:
            self._orphans.clear()

    def _abandon(self, node: Node, handle: Hashable) -> None:
        with self._lock:
            self._abandoned[node.id] = Abandoned(node, handle)

    # -- one step each, on the pool's passes -----------------------------------------------

    def poll(self, node_id: str) -> None:
        """Bring the orphan build of ``node_id`` a step further."""
        orphan = self._orphans[node_id]
        if not orphan.lock.held:
            # Lost with the session: the reaper owns the node now, and the
            # build is settled once ZooKeeper can tell how it ended.
            log.warning("node %s: lock of the orphan build no longer held; "
                        "leaving the node to the reaper", node_id)
            self._abandon(orphan.node, orphan.handle)
            self._drop_orphan(node_id)
            return
        if not self.store.node_exists(node_id, cached=True) \
                and not self.store.node_exists(node_id):
            log.warning("node %s: its znode was removed while building; cancelling "
                        "the build", node_id)
            self.builds.cancel(orphan.node, orphan.handle)
            orphan.lock.release()
            self._drop_orphan(node_id)
            return
        status = self._poll_build(orphan.handle)
        draft = orphan.node
        if status.state is BuildState.READY:
            draft = copy.deepcopy(orphan.node)
            draft.allocated_to = None
        try:
            orphan.node = self.builds.record(draft, orphan.lock, status)
        except RecordGone:
            return  # the next pass cancels the build
        if status.state is not BuildState.BUILDING:
            self.builds.forget(orphan.handle)
            orphan.lock.release()
            self._drop_orphan(node_id)

    def settle(self, node_id: str) -> None:
        """Nobody holds the node's lock any more, so nobody may finish its
        build: another launcher (or our reaper) deletes the node and its
        servers.  A build still going would go on (and, once its server is
        deleted, boot another for a node that is gone); a finished one would
        keep its server's quota counted after that server is deleted
        elsewhere.  So the build is cancelled (its servers deleted, its
        quota released when they are gone), unless it finished and the
        node's record shows the ready server (its write landed, the reply
        was lost): then the record owns the server, as for any ready node,
        and the build is only forgotten."""
        item = self._abandoned[node_id]
        status = self._poll_build(item.handle)
        if status.state is BuildState.READY:
            try:
                record = self.store.get_node(node_id)
            except MalformedRecord:
                record = item.node   # never delete a server an unreadable record may own
            owned = (record is not None and record.state not in (INIT, BUILDING, DELETING)
                     and record.external_id is not None
                     and record.external_id == status.info.external_id)
        else:
            # Failed or aborted: the builder already handed its servers to
            # deletions; only a build still going must be stopped.
            owned = status.state is not BuildState.BUILDING
        if owned:
            self.builds.forget(item.handle)
        else:
            node = copy.deepcopy(item.node)
            node.external_id = status.info.external_id or node.external_id
            log.warning("node %s: its lock went with the lost ZooKeeper session; "
                        "cancelling its build", node_id)
            self.builds.cancel(node, item.handle)
        with self._lock:
            del self._abandoned[node_id]

    def _poll_build(self, handle: Hashable) -> BuildStatus:
        try:
            return self.builder.poll_build(handle)
        except Exception as e:  # noqa: BLE001 - the NodeBuilder contract: a failed build
            return BuildStatus(BuildState.FAILED, reason=f"poll failed: {e}")

    def _drop_orphan(self, node_id: str) -> None:
        with self._lock:
            del self._orphans[node_id]
