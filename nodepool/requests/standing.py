"""Standing nodes: one ready node registered per slot a provider offers
(static hosts), nothing built.

``plan`` is the pure part: given the slots a provider offers now and its
nodes in ZooKeeper, which slots need a new ready node and which ready,
unallocated nodes no longer match a slot (the host stopped answering, left
the config, or its labels, user, port or keys changed).  A node that is
allocated, in use, used or being deleted holds its slot whatever the config
says, so nodes in use are never disturbed; once Zuul returns it ``used``,
the reaper deletes the record and the next pass registers the slot again.

``StandingNodes.sync`` applies a plan: it creates the missing nodes as
``ready`` and moves retired ones to ``deleting`` (when nobody holds their
lock), for the reaper to remove.  Level-triggered: it reads the current
state each time and is safe to repeat.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from nodepool.requests.builder import StandingNode, standing_key
from nodepool.requests.protocol import retire_ready
from nodepool.zk.records import DELETED, READY, Node
from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.requests.standing")

# A node we created counts as registered for this long even if the cache
# has not shown it yet, so a slow cache never makes a second one.
PENDING_GRACE = 30.0


def node_key(node: Node) -> tuple:
    return standing_key(node.pool, node.external_id, node.username, node.connection_port,
                        node.slot)


def _matches(node: Node, slot: StandingNode) -> bool:
    return (sorted(node.type) == sorted(slot.labels)
            and sorted(node.host_keys or []) == sorted(slot.info.host_keys or [])
            and node.connection_type == slot.info.connection_type
            and node.python_path == slot.info.python_path
            and node.shell_type == slot.info.shell_type)


@dataclass
class Plan:
    create: list[StandingNode] = field(default_factory=list)
    retire: list[Node] = field(default_factory=list)
    # Slots held by a node that is allocated, in use, used or being deleted.
    in_use: set[tuple] = field(default_factory=set)


def plan(offered: Sequence[StandingNode], nodes: Iterable[Node], provider: str,
         pending: Iterable[tuple] = ()) -> Plan:
    """What to register and what to retire for ``provider``; ``pending``:
    keys of nodes just created that the node list may not show yet."""
    wanted = {s.key: s for s in offered}
    held: set[tuple] = set(pending)
    out = Plan()
    ours = sorted((n for n in nodes if n.provider == provider and n.state != DELETED),
                  key=lambda n: n.id or "")
    for node in ours:
        key = node_key(node)
        idle = node.state == READY and node.allocated_to is None
        if not idle:
            held.add(key)
            out.in_use.add(key)
            continue
        slot = wanted.get(key)
        if slot is None or key in held or not _matches(node, slot):
            out.retire.append(node)
        else:
            held.add(key)
    out.create = [s for k, s in wanted.items() if k not in held]
    return out


def new_node(slot: StandingNode, provider: str, launcher_id: str | None,
             attributes: Mapping | None) -> Node:
    info = slot.info
    return Node(state=READY, type=list(slot.labels), provider=provider, pool=slot.pool,
                launcher=launcher_id, external_id=info.external_id, hostname=info.hostname,
                interface_ip=info.interface_ip, username=info.username,
                connection_type=info.connection_type,
                connection_port=info.connection_port, python_path=info.python_path,
                shell_type=info.shell_type, host_keys=list(info.host_keys or []),
                slot=slot.slot, attributes=dict(attributes) if attributes else None)


class StandingNodes:
    """Keeps one provider's standing nodes registered."""

    def __init__(self, provider: str):
        self.provider = provider
        self._pending: dict[tuple, tuple[str, float]] = {}   # key -> (node id, created)

    def sync(self, store: ZooKeeperStore, offered: Sequence[StandingNode],
             launcher_ids: Mapping[str, str],
             attributes: Mapping[str, Mapping | None]) -> Plan:
        """``launcher_ids``/``attributes``: pool name -> the pool's registered
        id / node-attributes.  Slots of pools not running here wait."""
        now = time.monotonic()
        nodes = store.list_nodes(cached=True)
        seen = {n.id for n in nodes}
        self._pending = {k: (nid, t) for k, (nid, t) in self._pending.items()
                         if nid not in seen and now - t < PENDING_GRACE}
        todo = plan(offered, nodes, self.provider, self._pending)
        cache = store.nodes_cache
        for node in todo.retire:
            if cache is not None and cache.is_locked(node.id):
                continue
            if store.update_unlocked_node(node.id, lambda fresh: retire_ready(fresh, time.time()),
                                          "retire"):
                log.info("node %s (%s slot %s) is out of service", node.id,
                         node.external_id, node.slot)
        for slot in todo.create:
            if slot.pool not in launcher_ids:
                continue
            node = store.create_node(new_node(slot, self.provider, launcher_ids[slot.pool],
                                              attributes.get(slot.pool)))
            self._pending[slot.key] = (node.id or "", now)
            log.info("node %s registered for %s slot %d", node.id, slot.info.external_id,
                     slot.slot)
        return todo
