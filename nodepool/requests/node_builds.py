"""What becomes of a node's build once started, whether a request still
waits for it or not: the builder's status is recorded on the node, a build
that ended is forgotten once recorded, one nobody may finish is cancelled.

Forgetting or cancelling a build frees the room it held, so the admission's
answers about room are asked again.  The builder keeps a finished build's
result until it is forgotten: a record that could not be written is written
again on a later pass.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Callable, Hashable

from nodepool.requests.admission import Admission
from nodepool.requests.builder import BuildState, BuildStatus, DeleteSpec, NodeBuilder
from nodepool.zk.locks import ZooKeeperLock
from nodepool.zk.records import ABORTED, NODE_FAILED, READY, Node
from nodepool.zk.store import ZooKeeperStore

# The handler's logger: operators follow one logger for what a pool decides.
log = logging.getLogger("nodepool.requests.handler")

_NODE_STATE = {BuildState.READY: READY, BuildState.FAILED: NODE_FAILED,
               BuildState.ABORTED: ABORTED}


class NodeBuilds:
    def __init__(self, store: ZooKeeperStore, builder: NodeBuilder, admission: Admission,
                 pool_id: str, clock: Callable[[], float] = time.time):
        """``pool_id`` only names the pool in the log (a reload keeps it)."""
        self.store = store
        self.builder = builder
        self.admission = admission
        self.pool_id = pool_id
        self.clock = clock

    def record(self, node: Node, lock: ZooKeeperLock, status: BuildStatus) -> Node:
        """Record what the builder said; only writes when something changed.

        The change is made on a copy, returned once stored: when the write
        fails the caller keeps the old record and the next pass writes it."""
        draft = copy.deepcopy(node)
        for key, value in status.info.known().items():
            setattr(draft, key, value)
        new_state = _NODE_STATE.get(status.state, draft.state)
        if new_state != draft.state:
            draft.set_state(new_state, self.clock())
            if status.reason:
                log.info("node %s: %s (%s)", draft.id, new_state, status.reason)
        if draft.to_dict() != node.to_dict():
            self.store.store_locked_node(draft, lock)
        return draft

    def forget(self, handle: Hashable) -> None:
        """The build ended and its end is recorded."""
        self.admission.room_changed()
        try:
            self.builder.forget_build(handle)
        except Exception:  # bookkeeping only
            log.exception("pool %s: forgetting build %s failed", self.pool_id, handle)

    def cancel(self, node: Node, handle: Hashable) -> None:
        """Stop the build and delete what it made."""
        spec = DeleteSpec.for_node(node)
        self.admission.room_changed()
        try:
            self.builder.cancel_build(handle, spec)
        except Exception:  # the leak cleaner is the backstop
            log.exception("node %s: cancelling the build failed", node.id)
