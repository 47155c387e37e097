"""Watch-driven caches of requests, nodes (with their lock contenders) and
registered components.

Built on kazoo's ``TreeCache``: one data watch and one child watch per znode,
so the launcher sees every change without re-reading all znodes on each loop.
kazoo 2.11 has no persistent recursive watches, and TreeCache already
re-reads the whole subtree after a reconnect, which is how the cache
recovers after a session loss: ``synced`` goes false on LOST and true again
once the re-read completes (``wait_synced``).

Entries are parsed once per change.  A znode whose content is malformed is
logged once (with its path) and left out; it never stops the cache and never
affects other entries.  Records handed out are shared snapshots: treat them
as read-only and re-read through the store before changing anything.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Generic, Iterable, TypeVar

from kazoo.client import KazooClient
from kazoo.recipe.cache import TreeCache, TreeEvent

from nodepool.quota.resources import Resources
from nodepool.zk import paths
from nodepool.zk.locks import is_contender
from nodepool.zk.node_index import NodeIndex
from nodepool.zk.records import (MalformedRecord, Node, NodeRequest,
                                 component_from_json)

log = logging.getLogger("nodepool.zk.cache")

T = TypeVar("T")
# (child name, full path, data, stat) -> record; raises MalformedRecord.
Parser = Callable[[str, str, bytes, object], T]



def tree_queue_sizes(tree: TreeCache | None) -> dict[str, int]:
    """A kazoo TreeCache's ``event_queue`` and ``playback_queue`` sizes (see
    ``RecordCache.queue_sizes``); zeros when there is no tree."""
    if tree is None:
        return {"event_queue": 0, "playback_queue": 0}
    # kazoo keeps no public counters for these; read its attributes
    # defensively so a kazoo upgrade cannot break the stats loop.
    queue = getattr(tree, "_task_queue", None)
    return {"event_queue": queue.qsize() if hasattr(queue, "qsize") else 0,
            "playback_queue": int(getattr(tree, "_outstanding_ops", 0) or 0)}

class TreeBackedCache:
    """What every cache kept by one kazoo ``TreeCache`` over ``root`` shares:
    start and stop, whether it reflects the server yet (``synced``) and its
    queue gauges.  Subclasses set ``client`` and ``root``, call
    ``_init_tree()`` and handle ``_on_event`` and ``_on_fault``."""

    client: KazooClient
    root: str

    def _init_tree(self) -> None:
        self._synced = threading.Event()
        self._tree: TreeCache | None = None

    def start(self) -> None:
        if self._tree is not None:
            return
        self._tree = TreeCache(self.client, self.root)
        self._tree.listen(self._on_event)
        self._tree.listen_fault(self._on_fault)
        self._tree.start()

    def stop(self) -> None:
        tree, self._tree = self._tree, None
        if tree is not None:
            tree.close()
        self._synced.clear()

    @property
    def synced(self) -> bool:
        """True once the cache reflects the server (after start or a session loss)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def queue_sizes(self) -> dict[str, int]:
        """Work the cache has not applied yet, for the statsd queue gauges:
        ``event_queue``, the ZooKeeper events waiting for the cache's thread;
        ``playback_queue``, the reads it sent and awaits (kazoo's TreeCache
        fetches a znode's data after each event before applying it)."""
        return tree_queue_sizes(self._tree)

    def _on_event(self, event: TreeEvent) -> None:
        raise NotImplementedError

    def _on_fault(self, exc: Exception) -> None:
        raise NotImplementedError


class RecordCache(TreeBackedCache, Generic[T]):
    """Parsed records for the children of ``root``; for nodes also the lock
    contenders under ``<root>/<id>/lock``."""

    def __init__(self, client: KazooClient, root: str, parse: Parser,
                 track_locks: bool = False,
                 on_change: Callable[[], None] | None = None):
        self.client = client
        # Told of each record the cache had not held before (a new request).
        self.on_added: Callable[[T], None] | None = None
        self.root = root.rstrip("/")
        self._parse = parse
        self._track_locks = track_locks
        self._on_change = on_change
        self._lock = threading.Lock()
        self._records: dict[str, T] = {}
        self._contenders: dict[str, set[str]] = {}
        self._malformed: dict[str, str] = {}
        # (name, mzxid) pairs already reported, so a bad znode logs once.
        self._reported: set[tuple[str, int]] = set()
        self._init_tree()
        # Kept in step with _records under _lock (see NodeCache).
        self._index: NodeIndex | None = None

    # -- queries ---------------------------------------------------------------

    def get(self, name: str) -> T | None:
        with self._lock:
            return self._records.get(name)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._records

    def names(self) -> set[str]:
        with self._lock:
            return set(self._records)

    def values(self) -> list[T]:
        with self._lock:
            return list(self._records.values())

    def lock_contenders(self, name: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._contenders.get(name, ()))

    def is_locked(self, name: str) -> bool:
        """Probably locked (someone contends for the lock), as last seen."""
        with self._lock:
            return bool(self._contenders.get(name))

    def has_znode(self, name: str) -> bool:
        """A child with content, readable or malformed, as last seen."""
        with self._lock:
            return name in self._records or name in self._malformed

    def malformed(self) -> dict[str, str]:
        """Children whose content could not be parsed: name -> reason."""
        with self._lock:
            return dict(self._malformed)

    # -- corrections from fresh reads (housekeeping's backstop) ---------------

    def forget_gone(self, seen: Iterable[str], listed: Iterable[str]) -> list[str]:
        """Drop the children that were held (``seen``, taken before the
        listing was asked for) and that a fresh listing of the root
        (``listed``) no longer has: deleted in ZooKeeper without this cache
        hearing of it.  Names are never reused, so nothing current is lost."""
        gone = sorted(set(seen) - set(listed))
        for name in gone:
            self._remove(name)
        if gone:
            # Usually a delete never heard of; possibly one still queued.
            log.info("cache of %s: dropped %d record(s) gone in ZooKeeper: %s",
                     self.root, len(gone), ", ".join(gone))
        return gone

    def forget_contenders(self, name: str, gone: Iterable[str]) -> bool:
        """Drop lock contenders of ``name`` that a fresh read showed gone
        (the caller read them after taking its view of the cache)."""
        with self._lock:
            holders = self._contenders.get(name)
            stale = holders & set(gone) if holders else set()
            if not stale:
                return False
            holders -= stale
            if not holders:
                del self._contenders[name]
        log.info("cache of %s: %s looked locked by %s, gone in ZooKeeper; forgotten",
                 self.root, name, ", ".join(sorted(stale)))
        self._changed()
        return True

    # -- TreeCache events (run on the TreeCache's own thread) -----------------

    def _on_fault(self, exc: Exception) -> None:
        log.error("cache of %s: %s", self.root, exc, exc_info=exc)

    def _on_event(self, event) -> None:
        triaged = znode_event(event, self._synced, self._changed)
        if triaged is None:
            return
        kind, data = triaged
        rel = self._relative(data.path)
        if not rel:
            return
        parts = rel.split("/")
        if len(parts) == 1:
            if kind == TreeEvent.NODE_REMOVED:
                self._remove(parts[0])
            else:
                self._update(parts[0], data.path, data.data, data.stat)
        elif (self._track_locks and len(parts) == 3
              and parts[1] == paths.NODE_LOCK_NAME and is_contender(parts[2])):
            if kind == TreeEvent.NODE_REMOVED:
                self._drop_contender(parts[0], parts[2])
            else:
                with self._lock:
                    self._contenders.setdefault(parts[0], set()).add(parts[2])
                self._changed()
        else:
            return
        if kind == TreeEvent.NODE_ADDED:
            self._confirm_added(parts, data.path)

    # A lock contender that came and went at once could leave its node
    # "locked" for good (never reaped: a leaked server); see confirm_added.
    # Names here are never reused (sequential znodes), so an added znode
    # that is already gone on the server is gone for good.
    def _confirm_added(self, parts: list[str], path: str) -> None:
        def gone() -> None:
            if len(parts) == 1:
                with self._lock:
                    held = parts[0] in self._records or parts[0] in self._malformed
                if held:
                    self._remove(parts[0])
            else:
                held = self._drop_contender(parts[0], parts[2])
            if held:
                # Usually the race above; possibly a delete still on its way.
                log.debug("cache of %s: %s gone in ZooKeeper; dropped", self.root, path)

        confirm_added(self.client, path, gone)

    def _drop_contender(self, name: str, contender: str) -> bool:
        with self._lock:
            holders = self._contenders.get(name)
            if holders is None or contender not in holders:
                return False
            holders.discard(contender)
            if not holders:
                del self._contenders[name]
        self._changed()
        return True

    def _relative(self, path: str) -> str:
        if not path.startswith(self.root + "/"):
            return ""
        return path[len(self.root) + 1:]

    def _update(self, name: str, path: str, data: bytes | None, stat) -> None:
        if not data:
            # A node znode recreated empty by a late lock attempt, or a
            # request being written: nothing usable, not an error.
            with self._lock:
                self._forget(name)
                self._malformed.pop(name, None)
            self._changed()
            return
        try:
            record = self._parse(name, path, data, stat)
        except MalformedRecord as e:
            key = (name, getattr(stat, "mzxid", 0))
            with self._lock:
                self._forget(name)
                self._malformed[name] = e.reason
                first = key not in self._reported
                self._reported.add(key)
            if first:
                log.error("skipping malformed znode %s: %s", path, e.reason)
            self._changed()
            return
        with self._lock:
            added = name not in self._records
            self._records[name] = record
            if self._index is not None:
                self._index.put(name, record)
            self._malformed.pop(name, None)
        self._changed()
        if added and self.on_added is not None:
            try:
                self.on_added(record)
            except Exception:  # a listener bug must not stop the cache
                log.exception("cache added-record listener failed")

    def _forget(self, name: str) -> None:
        """Drop a record (caller holds _lock)."""
        self._records.pop(name, None)
        if self._index is not None:
            self._index.discard(name)

    def _remove(self, name: str) -> None:
        with self._lock:
            self._forget(name)
            self._malformed.pop(name, None)
            self._contenders.pop(name, None)
            self._reported = {k for k in self._reported if k[0] != name}
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # a listener bug must not stop the cache
                log.exception("cache change listener failed")


class NodeCache(RecordCache[Node]):
    """The node cache, with indexes kept as nodes change (``NodeIndex``) so
    that per-request questions cost O(answer), not O(every node)."""

    def __init__(self, client: KazooClient, on_change=None):
        super().__init__(client, paths.NODE_ROOT, _parse_node, track_locks=True,
                         on_change=on_change)
        self._nodes = self._index = NodeIndex()

    def sorted_values(self) -> list[Node]:
        """Every node by id (sorted once per change, copied per call)."""
        with self._lock:
            return list(self._nodes.sorted_nodes())

    def pool_nodes(self, provider: str | None, pool: str | None) -> list[Node]:
        """The pool's nodes not DELETED (what max-servers counts)."""
        with self._lock:
            return self._nodes.pool_nodes(provider, pool)

    def ready_unallocated(self, provider: str | None, pool: str | None) -> list[Node]:
        """The pool's READY nodes allocated to nobody (reuse candidates)."""
        with self._lock:
            return self._nodes.ready_unallocated(provider, pool)

    def tenant_usage(self, tenant: str, exclude_providers=()) -> Resources:
        """What the tenant's nodes use (their ``resources``), on every provider
        but ``exclude_providers``."""
        with self._lock:
            return self._nodes.tenant_usage(tenant, exclude_providers)


def _parse_request(name: str, path: str, data: bytes, stat) -> NodeRequest:
    return NodeRequest.from_json(data, name, path, version=stat.version,
                                 ephemeral_owner=stat.ephemeralOwner)


def _parse_node(name: str, path: str, data: bytes, stat) -> Node:
    return Node.from_json(data, name, path, version=stat.version)


def _component_parser(kind: str) -> Parser:
    def parse(name: str, path: str, data: bytes, stat):
        return component_from_json(kind, data, path, stat.version)
    return parse


def request_cache(client: KazooClient, on_change=None) -> RecordCache[NodeRequest]:
    return RecordCache(client, paths.REQUEST_ROOT, _parse_request, on_change=on_change)


def node_cache(client: KazooClient, on_change=None) -> NodeCache:
    return NodeCache(client, on_change=on_change)


def component_cache(client: KazooClient, kind: str, on_change=None) -> RecordCache:
    return RecordCache(client, paths.component_root(kind), _component_parser(kind),
                       on_change=on_change)


def sorted_requests(requests: Iterable[NodeRequest]) -> list[NodeRequest]:
    return sorted(requests, key=lambda r: r.priority)


def znode_event(event, synced: threading.Event,
                changed: Callable[[], None]) -> tuple[int, Any] | None:
    """Triage a TreeCache event: ``synced`` follows the cache's state (set
    once the tree is read, cleared on a lost connection until the re-read
    after reconnecting completes); a znode added, updated or removed is
    returned as ``(kind, event_data)``, anything else as None."""
    kind = event.event_type
    if kind == TreeEvent.INITIALIZED:
        synced.set()
        changed()
        return None
    if kind == TreeEvent.CONNECTION_LOST:
        synced.clear()
        return None
    if kind not in (TreeEvent.NODE_ADDED, TreeEvent.NODE_UPDATED, TreeEvent.NODE_REMOVED):
        return None
    data = event.event_data
    return None if data is None else (kind, data)


# kazoo's TreeCache applies a znode's data read on its own thread and the
# znode's DELETED watch on the client's: when the znode goes while the read
# is in flight, the read can land after the deletion and re-add it, with no
# event ever to remove it (python-zk/kazoo#645).  So after each addition,
# look once: ``gone`` is called (on kazoo's thread) when the znode is
# already gone on the server.
def confirm_added(client: KazooClient, path: str, gone: Callable[[], None]) -> None:
    try:
        result = client.exists_async(path)
    except Exception:  # noqa: BLE001 - closing; a restart re-reads everything
        return

    def check(result) -> None:
        try:
            if result.get() is not None:
                return
        except Exception:  # noqa: BLE001 - disconnected: the re-read repairs it
            return
        gone()

    result.rawlink(check)
