"""The launcher's and the CLI's view of ZooKeeper: read, write and lock
requests and nodes, list registered pools.  An operator's node actions
(``nodepool hold``, ``delete``, ``erase``) are built on it in node_admin.py.

Reads are fresh unless ``cached=True`` is given and ``start_caches()`` was
called.  Writes are whole-object ``set``s with a version check (the version
comes from the read that produced the record), and node writes require the
caller to hold the node's lock: Zuul writes nodes unconditionally, so only
the lock holder may write.

Errors callers handle:
  RecordNotFound   the id does not exist (e.g. a CLI typo)
  RecordGone       the znode vanished while we worked on it
  RecordChanged    someone wrote it since we read it; re-read
  NotLocked        a node/request write without holding its lock
  MalformedRecord  the znode's content is unusable (from get_*; listings
                   log and skip such znodes instead)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, NoNodeError, NodeExistsError,
                              NotEmptyError)

from nodepool.zk import acls, ids, locks, paths
from nodepool.zk.cache import (NodeCache, RecordCache, component_cache, node_cache,
                               request_cache, sorted_requests)
from nodepool.quota.resources import Resources
from nodepool.zk.components import read_components
from nodepool.zk.locks import LockNotAcquired, ZooKeeperLock
from nodepool.zk.node_index import NodeIndex
from nodepool.zk.session import SessionTracker
from nodepool.zk.records import (DELETED, DELETING, MIN_READY_REQUESTOR, READY,
                                 REQUESTED,
                                 MalformedRecord, Node, NodeRequest,
                                 PoolComponent)

log = logging.getLogger("nodepool.zk.store")

class StoreError(Exception):
    pass


class RecordNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RecordGone(StoreError):
    """The znode vanished while we were working on it."""


class RecordChanged(StoreError):
    """The znode changed since it was read; re-read and decide again."""


class NotLocked(StoreError):
    """A write without holding the record's lock."""


class ZooKeeperStore:
    # How long a pipelined read waits for its answer (a sync read waits as
    # long, until the connection is lost).
    read_timeout: float = 30.0

    def __init__(self, client: KazooClient,
                 lock_deadline: float = locks.DEFAULT_ATTEMPT_DEADLINE):
        self.client = client
        self.lock_deadline = lock_deadline
        self._changed = threading.Event()
        self.requests_cache: RecordCache[NodeRequest] | None = None
        self.nodes_cache: NodeCache | None = None
        self.pools_cache: RecordCache[PoolComponent] | None = None
        # Requests whose ACL we set (zookeeper-auth): one write per request.
        self._adopted: set[str] = set()

    # -- caches -----------------------------------------------------------------

    def start_caches(self) -> None:
        if self.requests_cache is not None:
            return
        for root in (paths.REQUEST_ROOT, paths.NODE_ROOT, paths.POOL_COMPONENT_ROOT):
            self.client.ensure_path(root)
        notify = self._changed.set
        self.requests_cache = request_cache(self.client, notify)
        self.nodes_cache = node_cache(self.client, notify)
        self.pools_cache = component_cache(self.client, "pool", notify)
        for cache in self._caches():
            cache.start()

    def stop_caches(self) -> None:
        for cache in self._caches():
            cache.stop()
        self.requests_cache = self.nodes_cache = self.pools_cache = None

    def _caches(self) -> list[RecordCache]:
        return [c for c in (self.requests_cache, self.nodes_cache, self.pools_cache)
                if c is not None]

    def wait_synced(self, timeout: float) -> bool:
        """True once every cache reflects the server; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        for cache in self._caches():
            if not cache.wait_synced(max(0.0, deadline - time.monotonic())):
                return False
        return True

    @property
    def synced(self) -> bool:
        return all(c.synced for c in self._caches())

    def correct_caches(self, lock_suspects: Iterable[str] = ()) -> dict[str, list[str]]:
        """Backstop for the caches (see ``RecordCache._confirm_added``): one
        fresh listing of the requests and of the nodes drops records deleted
        without the cache hearing of it, and the locks of ``lock_suspects``
        (node ids), read afresh and pipelined, drop lock contenders that are
        gone.  Returns what was dropped: {"requests": [...], "nodes": [...],
        "locks": [node ids]}."""
        dropped: dict[str, list[str]] = {"requests": [], "nodes": [], "locks": []}
        for kind, cache, root in (("requests", self.requests_cache, paths.REQUEST_ROOT),
                                  ("nodes", self.nodes_cache, paths.NODE_ROOT)):
            if cache is None or not cache.synced:
                continue
            seen = cache.names() | set(cache.malformed())   # before the listing
            dropped[kind] = cache.forget_gone(seen, self._children(root))
        cache = self.nodes_cache
        if cache is None or not cache.synced:
            return dropped
        before = {nid: cache.lock_contenders(nid) for nid in lock_suspects}
        futures = [(nid, self.client.get_children_async(paths.node_lock_path(nid)))
                   for nid, held in before.items() if held]
        for node_id, future in futures:
            try:
                fresh = set(locks.contenders(future.get(timeout=self.read_timeout)))
            except NoNodeError:
                fresh = set()
            if cache.forget_contenders(node_id, before[node_id] - fresh):
                dropped["locks"].append(node_id)
        return dropped

    def queue_sizes(self) -> dict[str, int]:
        """Upstream's ZooKeeper queue gauges, relative to
        ``nodepool.launcher.<hostname>``: the client's outgoing request queue
        and each cache's queues.  The image cache is the launcher's (kept
        while a provider boots diskimages): its queues are 0 here and the
        launcher fills them in."""
        queue = getattr(self.client, "_queue", None)
        out = {"zk.client.connection_queue": len(queue) if queue is not None else 0}
        for name, cache in (("node_cache", self.nodes_cache),
                            ("request_cache", self.requests_cache)):
            sizes = cache.queue_sizes() if cache is not None else {}
            for kind in ("event_queue", "playback_queue"):
                out[f"zk.{name}.{kind}"] = sizes.get(kind, 0)
        out["zk.image_cache.event_queue"] = 0
        out["zk.image_cache.playback_queue"] = 0
        return out

    def wait_for_change(self, timeout: float) -> bool:
        """Sleep until a cache sees a change or ``timeout`` passes."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    @property
    def session(self) -> SessionTracker:
        return SessionTracker.of(self.client)

    @property
    def session_id(self) -> int | None:
        """Also while SUSPENDED (the session may survive)."""
        return self.session.session_id

    @property
    def session_generation(self) -> int:
        """Changes only when the session is LOST."""
        return self.session.generation

    @property
    def connected(self) -> bool:
        return self.session.connected

    # -- shared plumbing ---------------------------------------------------------

    def _read(self, path: str):
        """``(data, stat)`` of a znode with content; None if gone or empty."""
        try:
            data, stat = self.client.get(path)
        except NoNodeError:
            return None
        return (data, stat) if data else None

    def _children(self, root: str) -> list[str]:
        try:
            return sorted(self.client.get_children(root))
        except NoNodeError:
            return []

    def _read_all(self, record_ids: Iterable[str], path_of: Callable[[str], str],
                  parse: Callable[[str, str, bytes, Any], Any], kind: str) -> list:
        """Every readable record; malformed ones are logged and skipped.

        The reads are pipelined (every ``get_async`` sent before the first
        answer is awaited), so N records cost about one round trip plus the
        server's time, not N round trips: ``nodepool list`` with thousands
        of nodes."""
        pending = [(rid, path_of(rid)) for rid in record_ids]
        futures = [(rid, path, self.client.get_async(path)) for rid, path in pending]
        found = []
        for record_id, path, future in futures:
            try:
                data, stat = future.get(timeout=self.read_timeout)
            except NoNodeError:
                continue
            if not data:
                continue
            try:
                record = parse(record_id, path, data, stat)
            except MalformedRecord as e:
                log.error("skipping malformed %s %s: %s", kind, e.path, e.reason)
                continue
            found.append(record)
        return found

    def locked_nodes(self, node_ids: Iterable[str]) -> set[str]:
        """Which of the nodes anyone contends to lock, read afresh with
        pipelined reads (see ``_read_all``)."""
        futures = [(nid, self.client.get_children_async(paths.node_lock_path(nid)))
                   for nid in node_ids]
        locked = set()
        for node_id, future in futures:
            try:
                if locks.contenders(future.get(timeout=self.read_timeout)):
                    locked.add(node_id)
            except NoNodeError:
                continue
        return locked

    def _write(self, path: str, record: Any, kind: str) -> None:
        """Set the whole record with a version check; updates its version."""
        try:
            stat = self.client.set(path, record.to_json(), version=_version(record.version))
        except NoNodeError:
            raise RecordGone(f"{kind} {record.id} was deleted") from None
        except BadVersionError:
            raise RecordChanged(f"{kind} {record.id} changed since it was read") from None
        record.version = stat.version

    # -- requests ----------------------------------------------------------------

    def get_request(self, request_id: str, cached: bool = False) -> NodeRequest | None:
        if cached and self.requests_cache is not None:
            return self.requests_cache.get(request_id)
        path = paths.request_path(request_id)
        got = self._read(path)
        if got is None:
            return None
        data, stat = got
        return NodeRequest.from_json(data, request_id, path, stat.version,
                                     stat.ephemeralOwner)

    def request_exists(self, request_id: str, cached: bool = False) -> bool:
        if cached and self.requests_cache is not None:
            return request_id in self.requests_cache
        return self.client.exists(paths.request_path(request_id)) is not None

    def request_ids(self) -> list[str]:
        return self._children(paths.REQUEST_ROOT)

    def list_requests(self, cached: bool = False) -> list[NodeRequest]:
        """Every readable request, in the order launchers serve them."""
        if cached and self.requests_cache is not None:
            return sorted_requests(self.requests_cache.values())
        return sorted_requests(self._read_all(
            self.request_ids(), paths.request_path,
            lambda rid, path, data, stat: NodeRequest.from_json(
                data, rid, path, stat.version, stat.ephemeralOwner), "request"))

    def create_request(self, request: NodeRequest, priority: int | str,
                       ephemeral: bool = False) -> NodeRequest:
        """Create ``request`` as ``<priority>-<seq>``; sets its id and version."""
        if request.state_time is None:
            request.state_time = time.time()
        if request.created_time is None:
            request.created_time = request.state_time
        prefix = ids.request_id_prefix(priority)
        path, stat = self.client.create(
            paths.REQUEST_ROOT + "/" + prefix, request.to_json(), makepath=True,
            sequence=True, ephemeral=ephemeral, include_data=True)
        request.id = paths.name_of(path)
        request.version = stat.version
        request.ephemeral_owner = stat.ephemeralOwner
        return request

    def create_min_ready_request(self, label: str, now: float | None = None
                                 ) -> NodeRequest:
        """Our own request for one ready node of ``label``: ephemeral, priority
        900, ``reuse`` false, with every key Zuul's request parser indexes."""
        now = time.time() if now is None else now
        request = NodeRequest(state=REQUESTED, state_time=now, node_types=[label],
                              reuse=False, requestor=MIN_READY_REQUESTOR,
                              requestor_data=None, provider=None,
                              event_id=uuid.uuid4().hex, created_time=now)
        return self.create_request(request, ids.MIN_READY_PRIORITY, ephemeral=True)

    def store_request(self, request: NodeRequest, lock: ZooKeeperLock) -> None:
        """Write the whole request with a version check, holding its lock."""
        _require_lock(lock, paths.request_lock_path(request.id or ""))
        self._write(paths.request_path(request.id), request, "request")

    def delete_own_request(self, request: NodeRequest) -> bool:
        """Delete one of our min-ready requests.  Requests from anyone else
        (Zuul's) are never deleted by a launcher."""
        if request.requestor != MIN_READY_REQUESTOR:
            raise ValueError(f"refusing to delete request {request.id} of "
                             f"{request.requestor!r}: only its requestor deletes it")
        try:
            self.client.delete(paths.request_path(request.id))
            return True
        except NoNodeError:
            return False

    def try_lock_request(self, request_id: str) -> ZooKeeperLock | None:
        lock = locks.try_lock(self.client, paths.request_lock_path(request_id),
                              deadline=self.lock_deadline)
        if lock is not None:
            self._adopt_request(request_id)
        return lock

    def _adopt_request(self, request_id: str) -> None:
        """With ``zookeeper-auth``: Zuul creates requests with the open ACL;
        the first time we hold a request's lock, give it the request ACL
        (nodepool/zk/acls.py)."""
        if not isinstance(self.client, acls.AclKazooClient) or request_id in self._adopted:
            return
        if len(self._adopted) > 10_000:
            self._adopted.clear()   # requests come and go; at worst one more write each
        if acls.adopt(self.client, paths.request_path(request_id)):
            self._adopted.add(request_id)

    def request_lock_holders(self, request_id: str) -> list[str]:
        return locks.lock_holders(self.client, paths.request_lock_path(request_id))

    def request_lock_ids(self) -> list[str]:
        return self._children(paths.REQUEST_LOCK_ROOT)

    # -- nodes ---------------------------------------------------------------------

    def get_node(self, node_id: str, cached: bool = False) -> Node | None:
        if cached and self.nodes_cache is not None:
            return self.nodes_cache.get(node_id)
        path = paths.node_path(node_id)
        got = self._read(path)
        if got is None:
            return None
        data, stat = got
        return Node.from_json(data, node_id, path, stat.version)

    def node_ids(self) -> list[str]:
        return self._children(paths.NODE_ROOT)

    def list_nodes(self, cached: bool = False) -> list[Node]:
        """Every node by id (cached: sorted once per change, not per call)."""
        if cached and self.nodes_cache is not None:
            return self.nodes_cache.sorted_values()
        return self._read_all(
            self.node_ids(), paths.node_path,
            lambda nid, path, data, stat: Node.from_json(data, nid, path, stat.version),
            "node")

    def pool_nodes(self, provider: str | None, pool: str | None) -> list[Node]:
        """The pool's nodes that are not DELETED, from the cache's index
        (a scan of the cached nodes without a cache)."""
        if self.nodes_cache is not None:
            return self.nodes_cache.pool_nodes(provider, pool)
        return [n for n in self.list_nodes() if n.provider == provider and n.pool == pool
                and n.state != DELETED]

    def ready_unallocated_nodes(self, provider: str | None, pool: str | None) -> list[Node]:
        """The pool's READY nodes allocated to nobody, as last seen."""
        if self.nodes_cache is not None:
            return self.nodes_cache.ready_unallocated(provider, pool)
        return [n for n in self.list_nodes() if n.provider == provider and n.pool == pool
                and n.state == READY and n.allocated_to is None]

    def tenant_usage(self, tenant: str, exclude_providers=()) -> Resources:
        """What the tenant's nodes use (their ``resources``) on every provider
        but ``exclude_providers``, as last seen."""
        if self.nodes_cache is not None:
            return self.nodes_cache.tenant_usage(tenant, exclude_providers)
        index = NodeIndex()
        for node in self.list_nodes():
            index.put(node.id or "", node)
        return index.tenant_usage(tenant, exclude_providers)

    def create_node(self, node: Node, now: float | None = None) -> Node:
        """Create a new sequential node znode; sets ``id``, ``version`` and the
        times.  A new node is not locked: nodes in ``init`` are never locked
        by anyone else, lock it before moving it on."""
        now = time.time() if now is None else now
        node.created_time = node.created_time or now
        node.state_time = node.state_time or now
        path, stat = self.client.create(paths.NODE_ROOT + "/", node.to_json(),
                                        sequence=True, makepath=True, include_data=True)
        node.id = paths.name_of(path)
        node.version = stat.version
        return node

    def store_node(self, node: Node, lock: ZooKeeperLock) -> None:
        """Write the whole node with a version check, holding its lock."""
        _require_lock(lock, paths.node_lock_path(node.id or ""))
        self._write(paths.node_path(node.id), node, "node")

    def store_locked_node(self, node: Node, lock: ZooKeeperLock) -> None:
        """``store_node`` for the launcher's own nodes: a version conflict
        is taken as our own earlier write whose reply was lost (only the
        lock holder writes a node, and we hold it), so the node is re-read
        and written again unless it already says what we want."""
        try:
            self.store_node(node, lock)
            return
        except RecordChanged:
            pass
        got = self._read(paths.node_path(node.id))
        if got is None:
            raise RecordGone(f"node {node.id} was deleted")
        data, stat = got
        node.version = stat.version
        if data == node.to_json():
            return
        log.info("node %s changed since we wrote it while holding its lock; "
                 "writing it again", node.id)
        self.store_node(node, lock)

    def node_exists(self, node_id: str, cached: bool = False) -> bool:
        """Whether the node's znode exists with content, malformed or not
        (cached: as last seen, which can lag behind a fresh create)."""
        if cached and self.nodes_cache is not None:
            return self.nodes_cache.has_znode(node_id)
        return self._read(paths.node_path(node_id)) is not None

    def begin_delete(self, node: Node, lock: ZooKeeperLock) -> str:
        """The one way a delete begins (the reaper's, ``nodepool delete``
        with or without ``--now``): the node becomes ``deleting``, written
        holding its lock unless it says so already.  The state it had
        before, which the builder's ``DeleteSpec`` carries."""
        previous = node.state
        if node.state != DELETING:
            node.set_state(DELETING)
            self.store_node(node, lock)
        return previous

    def delete_node(self, node: Node, lock: ZooKeeperLock) -> None:
        """Write ``deleted`` (so a racing locker can tell), then remove the
        znode with its lock.  The lock is consumed."""
        _require_lock(lock, paths.node_lock_path(node.id or ""))
        node.set_state(DELETED)
        try:
            # No version check: we hold the lock and are removing it anyway.
            self.client.set(paths.node_path(node.id), node.to_json())
        except NoNodeError:
            lock.forget()
            return
        self.delete_node_znode(node.id)
        lock.forget()

    def delete_node_znode(self, node_id: str) -> None:
        """Recursively remove ``/nodepool/nodes/<id>``; a contender may create
        a lock child meanwhile, so retry a few times."""
        path = paths.node_path(node_id)
        for _ in range(5):
            try:
                self.client.delete(path, recursive=True)
                return
            except NoNodeError:
                return
            except NotEmptyError:
                continue
        log.warning("could not remove %s: children keep appearing", path)

    def try_lock_node(self, node_id: str) -> ZooKeeperLock | None:
        return locks.try_lock(self.client, paths.node_lock_path(node_id),
                              deadline=self.lock_deadline)

    def lock_node(self, node_id: str, timeout: float) -> ZooKeeperLock:
        return locks.lock(self.client, paths.node_lock_path(node_id), timeout)

    def node_lock_holders(self, node_id: str) -> list[str]:
        return locks.lock_holders(self.client, paths.node_lock_path(node_id))

    def node_locked(self, node_id: str, cached: bool = False) -> bool:
        """Whether anyone contends for the node's lock (cached: as last seen)."""
        if cached and self.nodes_cache is not None:
            return self.nodes_cache.is_locked(node_id)
        return bool(self.node_lock_holders(node_id))

    def lock_and_read_node(self, node_id: str, timeout: float | None = None
                           ) -> tuple[Node, ZooKeeperLock] | None:
        """Lock (without waiting, or up to ``timeout``) and re-read the node.

        None when it is locked elsewhere or gone.  A malformed node is
        unlocked again and MalformedRecord raised."""
        if self.get_node(node_id) is None:
            return None  # don't recreate a deleted node's znode by locking it
        if timeout is None:
            lock = self.try_lock_node(node_id)
        else:
            try:
                lock = self.lock_node(node_id, timeout)
            except LockNotAcquired:
                lock = None
        if lock is None:
            return None
        try:
            node = self.get_node(node_id)
        except Exception:
            lock.release()
            raise
        if node is None:
            lock.release()
            return None
        return node, lock

    def update_unlocked_node(self, node_id: str, change: Callable[[Node], bool],
                             what: str) -> Node | None:
        """Lock without waiting, re-read, and store the node if ``change``
        (given the fresh record, which it edits) returns True: the re-check
        after taking the lock.  The stored node, or None when it is locked
        elsewhere, gone, malformed, changed meanwhile, or ``change`` said no.
        The lock is always released.  ``what`` names the change for logs."""
        try:
            got = self.lock_and_read_node(node_id)
        except MalformedRecord:
            return None
        if got is None:
            return None
        fresh, lock = got
        try:
            if not change(fresh):
                return None
            self.store_node(fresh, lock)
            return fresh
        except (RecordGone, RecordChanged) as e:
            log.warning("could not %s node %s: %s", what, node_id, e)
            return None
        finally:
            lock.release()

    # -- components --------------------------------------------------------------------

    def registered_pools(self, cached: bool = False) -> list[PoolComponent]:
        if cached and self.pools_cache is not None:
            return sorted(self.pools_cache.values(), key=lambda p: p.path or "")
        return read_components(self.client, "pool")  # type: ignore[return-value]

    def label_names(self, cached: bool = False) -> list[str]:
        """The union of the registered pools' labels (``label-list``)."""
        return sorted({label for p in self.registered_pools(cached)
                       for label in p.supported_labels})

    # -- raw access for housekeeping -------------------------------------------------------

    def raw_node(self, node_id: str) -> bytes | None:
        try:
            return self.client.get(paths.node_path(node_id))[0]
        except NoNodeError:
            return None

    def ensure_roots(self, roots: Iterable[str] = (paths.REQUEST_ROOT, paths.NODE_ROOT)) -> None:
        """Create the roots; with ``zookeeper-auth`` also every root of the
        tree, with its ACL (nodepool/zk/acls.py)."""
        for root in roots:
            try:
                self.client.ensure_path(root)
            except NodeExistsError:
                pass
        acls.protect_roots(self.client)


def _version(version: int | None) -> int:
    return -1 if version is None else version


def _require_lock(lock: ZooKeeperLock | None, path: str) -> None:
    if lock is None or lock.path != path:
        raise NotLocked(f"writing without the lock {path}")
    if not lock.held:
        raise NotLocked(f"lock {path} is no longer held (session lost?)")
