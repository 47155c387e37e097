"""What a pool holds for a request it accepted: the request's lock and one
slot per entry of ``node_types``, each with its node, that node's lock and
its build's handle.

These records are what cannot be re-read from ZooKeeper between passes (the
locks and the builder's handles).  Every lock they hold is let go through
them: ``let_go`` releases it, ``Slot.empty`` gives the node up as well.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Hashable

from nodepool.zk.locks import ZooKeeperLock
from nodepool.zk.records import Node, NodeRequest


class SlotState(enum.Enum):
    EMPTY = "empty"          # no node: one is reused or created
    CREATED = "created"      # a node is recorded; its build is not started yet
    BUILDING = "building"    # a build was started and is being polled
    READY = "ready"          # reused, or built to ready
    FAILED = "failed"        # the node failed (unlocked): the request is declined


@dataclass
class Slot:
    """One entry of ``node_types`` and the node that serves it."""

    label: str
    state: SlotState = SlotState.EMPTY
    node: Node | None = None
    lock: ZooKeeperLock | None = None
    handle: Hashable | None = None

    def let_go(self) -> None:
        """Release the node's lock (if any); the node stays the slot's."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def empty(self) -> None:
        """The node is given up (left to the reaper): start over."""
        self.let_go()
        self.state, self.node, self.handle = SlotState.EMPTY, None, None


@dataclass
class ActiveRequest:
    """A request this pool accepted (``pending``), held locked until it is
    fulfilled, declined or gone."""

    request: NodeRequest
    lock: ZooKeeperLock
    slots: list[Slot]
    waiting: bool = False          # no headroom now: the pool is paused
    nodes_released: bool = False   # fulfilling: node locks already let go
    # Every node of the request in one availability zone, as upstream: the
    # zone of the first ready node reused, else one chosen at the first build
    # (None when there is nothing to choose from: the cloud places them).
    az: str | None = None
    az_chosen: bool = False

    def let_go(self) -> None:
        """Release the locks of the request and of its nodes."""
        for slot in self.slots:
            slot.let_go()
        self.lock.release()
