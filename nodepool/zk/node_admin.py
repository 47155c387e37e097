"""An operator's node actions (the ``nodepool`` CLI), built on the store.

* ``operator_lock``: the node's fresh record and its lock, waiting a few
  seconds for it (as upstream's CLI); an unknown node or one locked by
  someone else is an error with a message for the operator.
* ``mark_node_deleting`` (``nodepool delete``): the node begins its delete
  (``ZooKeeperStore.begin_delete``); a launcher's reaper does the cloud work.
* ``hold_node`` (``nodepool hold``): ``hold``, with the reason as ``comment``.
* ``erase_provider_nodes`` (``nodepool erase``): every record of a provider
  that is gone, removed without touching the cloud, locked or not.
"""

from __future__ import annotations

from kazoo.exceptions import NoNodeError

from nodepool.zk import paths
from nodepool.zk.locks import LockNotAcquired, ZooKeeperLock
from nodepool.zk.records import DELETED, HOLD, Node
from nodepool.zk.store import RecordNotFound, ZooKeeperStore

# The CLI's waits for a node lock (upstream uses 5 s as well).
OPERATOR_LOCK_TIMEOUT = 5.0


def operator_lock(store: ZooKeeperStore, node_id: str,
                  timeout: float = OPERATOR_LOCK_TIMEOUT) -> tuple[Node, ZooKeeperLock]:
    """Lock a node for an operator's command, waiting up to ``timeout``;
    the fresh record and the lock.  RecordNotFound or LockNotAcquired
    carry a message for the operator."""
    if store.get_node(node_id) is None:
        raise RecordNotFound(f"no node with id {node_id!r}")
    try:
        lock = store.lock_node(node_id, timeout)
    except LockNotAcquired:
        raise LockNotAcquired(
            f"node {node_id} is locked by someone else (tried for {timeout:g}s)") from None
    node = store.get_node(node_id)
    if node is None:
        lock.release()
        _remove_if_empty(store, node_id)
        raise RecordNotFound(f"node {node_id!r} was deleted meanwhile")
    return node, lock


def mark_node_deleting(store: ZooKeeperStore, node_id: str,
                       timeout: float = OPERATOR_LOCK_TIMEOUT) -> Node:
    """``nodepool delete``: set ``deleting``; the launcher's reaper does
    the cloud work."""
    node, lock = operator_lock(store, node_id, timeout)
    try:
        store.begin_delete(node, lock)
        return node
    finally:
        lock.release()


def hold_node(store: ZooKeeperStore, node_id: str, reason: str | None = None,
              timeout: float = OPERATOR_LOCK_TIMEOUT) -> Node:
    """``nodepool hold``: set ``hold`` with the reason as ``comment``."""
    node, lock = operator_lock(store, node_id, timeout)
    try:
        node.set_state(HOLD)
        if reason is not None:
            node.comment = reason
        store.store_node(node, lock)
        return node
    finally:
        lock.release()


def erase_provider_nodes(store: ZooKeeperStore, provider: str) -> list[str]:
    """``nodepool erase``: remove every node record of ``provider``
    without touching the cloud, locked or not (for a provider that is
    gone).  Each is marked ``deleted`` first so a racing locker can tell.
    The ids removed."""
    erased = []
    for node in store.list_nodes():
        if node.provider != provider:
            continue
        node.set_state(DELETED)
        try:
            # Unlocked and unversioned: the provider is gone, nobody else
            # should be writing its nodes, and a racing locker sees DELETED.
            store.client.set(paths.node_path(node.id), node.to_json())
        except NoNodeError:
            continue
        store.delete_node_znode(node.id)
        erased.append(node.id)
    return erased


def _remove_if_empty(store: ZooKeeperStore, node_id: str) -> None:
    """A lock attempt on a node deleted meanwhile may have left its znode
    behind, empty: remove it."""
    data = store.raw_node(node_id)
    if data is not None and not data:
        store.delete_node_znode(node_id)
