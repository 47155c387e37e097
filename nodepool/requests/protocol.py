"""The decisions of the classic node request protocol, as pure functions.

Given plain data (requests, nodes, the registered pools and this pool's
settings) these say which requests a pool looks at and in what order, when
it defers to another pool, when it declines, what a decline writes, which
ready nodes it may reuse, and which nodes housekeeping may touch.  No I/O:
the handler and housekeeping apply them to what they read from ZooKeeper.

Rules follow doc/protocol.rst, "Node requests: States and rules" and
"Nodes: States".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Sequence

from nodepool.zk.records import (ABORTED, BUILDING, DELETED, DELETING, FAILED,
                                 FULFILLED, HOLD, IN_USE, INIT, NODE_FAILED,
                                 PENDING, READY, REQUESTED, USED, Node,
                                 NodeRequest)


@dataclass(frozen=True)
class PoolSettings:
    """What one pool worker serves; filled in from the configuration."""

    pool_id: str             # the registered component id; goes into declined_by
    provider_name: str
    pool_name: str
    labels: frozenset[str]
    priority: int = 100      # lower is preferred
    max_servers: float = math.inf
    reuse_ready_nodes: bool = True
    node_attributes: Mapping | None = None
    # A request's nodes all go to one of these zones (none: one the cloud lists).
    availability_zones: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "labels", frozenset(self.labels))


@dataclass(frozen=True)
class PoolInfo:
    """A registered pool as other launchers see it (its component)."""

    id: str
    provider_name: str | None
    labels: frozenset[str] = field(default_factory=frozenset)
    priority: float = 100
    paused: bool = False

    @classmethod
    def from_component(cls, comp) -> "PoolInfo":
        return cls(comp.id, comp.provider_name, frozenset(comp.supported_labels),
                   comp.priority, comp.paused)


# -- which requests, in which order -------------------------------------------------

def missing_labels(request: NodeRequest, labels: Collection[str]) -> set[str]:
    return set(request.node_types) - set(labels)


def candidate_requests(requests: Iterable[NodeRequest], pool: PoolSettings,
                       skip_ids: Collection[str] = ()) -> list[NodeRequest]:
    """``requested`` requests this pool has not declined, those it can serve
    fully first, then by (priority prefix, relative_priority, sequence)."""
    chosen = [r for r in requests
              if r.state == REQUESTED and pool.pool_id not in r.declined_by
              and r.id not in skip_ids and r.id]
    return sorted(chosen, key=lambda r: (len(missing_labels(r, pool.labels)), r.priority))


def deferral_reason(request: NodeRequest, pool: PoolSettings,
                    registered: Iterable[PoolInfo]) -> str | None:
    """Why this pool should leave the request alone for now (without touching
    it), or None to go ahead (accept or decline)."""
    wanted = set(request.node_types)
    able = [p for p in registered
            if p.id != pool.pool_id and wanted <= p.labels
            and p.id not in request.declined_by]
    if request.provider and request.provider != pool.provider_name:
        preferred = sorted(p.id for p in able if p.provider_name == request.provider)
        if preferred:
            return f"provider {request.provider} is preferred and online ({preferred[0]})"
    better = sorted(p.id for p in able if p.priority < pool.priority and not p.paused)
    if better:
        return f"a pool with a lower priority number can serve it ({better[0]})"
    if missing_labels(request, pool.labels) and able:
        return f"another pool has all the labels ({sorted(p.id for p in able)[0]})"
    return None


def decline_reasons(request: NodeRequest, pool: PoolSettings) -> list[str]:
    """Reasons this pool can never serve the request (quota checks come from
    the builder and are added by the handler)."""
    if pool.max_servers <= 0:
        return ["pool is disabled (max-servers <= 0)"]
    missing = missing_labels(request, pool.labels)
    if missing:
        return [f"label(s) not served here: {', '.join(sorted(missing))}"]
    if not request.node_types:
        return ["request names no labels"]
    return []


def apply_decline(request: NodeRequest, pool_id: str,
                  registered_ids: Collection[str], now: float) -> None:
    """Add ``pool_id`` to ``declined_by``; ``failed`` once every registered pool
    has declined, else back to ``requested``.  Our own id counts as
    registered even if our registration is momentarily missing."""
    if pool_id not in request.declined_by:
        request.declined_by.append(pool_id)
    everyone = set(registered_ids) | {pool_id}
    request.set_state(FAILED if everyone <= set(request.declined_by) else REQUESTED, now)


def apply_accept(request: NodeRequest, now: float) -> None:
    request.set_state(PENDING, now)


def apply_fulfil(request: NodeRequest, node_ids: Sequence[str], now: float) -> None:
    """``nodes`` in the order of ``node_types``, then ``fulfilled``."""
    if len(node_ids) != len(request.node_types):
        raise ValueError(f"request {request.id} wants {len(request.node_types)} nodes, "
                         f"got {len(node_ids)}")
    request.nodes = list(node_ids)
    request.set_state(FULFILLED, now)


def apply_reset_lost(request: NodeRequest, now: float) -> None:
    request.nodes = []
    request.set_state(REQUESTED, now)


# -- nodes ---------------------------------------------------------------------------

def reusable_nodes(nodes: Iterable[Node], label: str, pool: PoolSettings,
                   locked: Collection[str], taken: Collection[str] = (),
                   az: str | None = None) -> list[Node]:
    """Unallocated, apparently unlocked ``ready`` nodes of this pool with
    ``label`` (in zone ``az`` when the request has one already), oldest
    first; the caller still locks and re-checks."""
    found = [n for n in nodes
             if n.state == READY and n.allocated_to is None and n.has_label(label)
             and n.provider == pool.provider_name and n.pool == pool.pool_name
             and n.id not in locked and n.id not in taken
             and (az is None or n.az == az)]
    return sorted(found, key=lambda n: (n.state_time or 0, n.id or ""))


def retire_ready(node: Node, now: float) -> bool:
    """Still ready and unallocated after locking: mark it for deletion."""
    if node.state != READY or node.allocated_to:
        return False
    node.set_state(DELETING, now)
    return True


# At capacity, a pool deletes no unused node while one of its nodes has been
# deleting for less than this (upstream's five minutes): that deletion is
# what the waiting request waits for.
UNUSED_DELETE_WAIT = 300.0


def oldest_unused_nodes(nodes: Iterable[Node], pool: PoolSettings, locked: Collection[str],
                        now: float, wait: float = UNUSED_DELETE_WAIT) -> list[Node]:
    """What a pool with a request it has no room for deletes, as upstream:
    its ``ready`` nodes allocated to nobody and unlocked, oldest first (the
    caller deletes the first it can lock), so that min-ready nodes of other
    labels cannot starve the request.  None while a deletion is under way."""
    mine = [n for n in nodes if n.provider == pool.provider_name and n.pool == pool.pool_name]
    if any(n.state == DELETING and now - (n.state_time or now) < wait for n in mine):
        return []
    found = [n for n in mine
             if n.state == READY and n.allocated_to is None and n.id not in locked]
    return sorted(found, key=lambda n: (n.state_time or 0, n.id or ""))


def can_reuse(node: Node, label: str, pool: PoolSettings, az: str | None = None) -> bool:
    """The re-check after locking a node for reuse."""
    return (node.state == READY and node.allocated_to is None and node.has_label(label)
            and node.provider == pool.provider_name and node.pool == pool.pool_name
            and (az is None or node.az == az))


def pool_node_count(nodes: Iterable[Node], pool: PoolSettings) -> int:
    """Nodes of this pool that occupy a server (for max-servers)."""
    return sum(1 for n in nodes
               if n.provider == pool.provider_name and n.pool == pool.pool_name
               and n.state != DELETED)


def at_max_servers(nodes: Iterable[Node], pool: PoolSettings, launching: int = 0) -> bool:
    return pool_node_count(nodes, pool) + launching >= pool.max_servers


# States whose unlocked nodes nobody is working on and the launcher deletes
# (an unlocked in-use node lost its executor, an unlocked building one its
# launcher).
REAPABLE_STATES = frozenset({USED, IN_USE, BUILDING, NODE_FAILED, DELETING, DELETED, ABORTED})


def is_reapable(node: Node, locked: bool, providers: Collection[str]) -> bool:
    return (not locked and node.state in REAPABLE_STATES
            and node.provider in providers)


# A node in ``init`` belongs to the pool worker that created it, which locks
# it at once; one still unlocked after this long was abandoned (its launcher
# died or lost its session between creating and locking it).
INIT_GRACE = 60.0


def is_abandoned_init(node: Node, locked: bool, request_exists: bool, now: float,
                      providers: Collection[str], grace: float = INIT_GRACE) -> bool:
    """An unlocked ``init`` node of ours whose request is gone (a min-ready
    request vanishes with its launcher's session), old enough that nobody
    is about to lock it: the reaper deletes it."""
    return (not locked and node.state == INIT and node.provider in providers
            and not request_exists
            and now - (node.state_time or node.created_time or now) >= grace)


def needs_deallocation(node: Node, locked: bool, request_exists: bool) -> bool:
    """An unlocked ``ready`` node reserved for a request that is gone."""
    return (not locked and node.state == READY and node.allocated_to is not None
            and not request_exists)


def hold_expired(node: Node, now: float, max_hold_age: float = math.inf) -> bool:
    """A ``hold`` node past its ``hold_expiration`` or the max hold age,
    counted from ``state_time``; 0 or null means no expiration."""
    if node.state != HOLD:
        return False
    limits = [max_hold_age]
    if node.hold_expiration:
        limits.append(node.hold_expiration)
    limit = min(limits)
    return math.isfinite(limit) and now - (node.state_time or now) >= limit


def state_after_lost_request(node: Node) -> str:
    """A node of a lost request that never left ``init`` was leaked by the
    launcher that died between creating and locking it: delete it."""
    return DELETING if node.state == INIT else node.state


# -- min-ready ---------------------------------------------------------------------

def min_ready_wanted(min_ready: Mapping[str, int], nodes: Iterable[Node],
                     requests: Iterable[NodeRequest]) -> list[str]:
    """Labels (one entry per node wanted) to request so that every label has
    ``min_ready`` unallocated ready-or-coming nodes, counting the min-ready
    requests still open."""
    have: Counter[str] = Counter()
    for n in nodes:
        if n.allocated_to is None and n.state in (READY, BUILDING, INIT):
            for label in n.type:
                have[label] += 1
    for r in requests:
        # A fulfilled one still holds its nodes until the launcher releases them.
        if r.is_min_ready and r.state in (REQUESTED, PENDING, FULFILLED):
            have.update(r.node_types)
    wanted = []
    for label, count in sorted(min_ready.items()):
        wanted.extend([label] * max(0, count - have[label]))
    return wanted


# The request's fields a label's dynamic-instance-properties may format,
# e.g. ``{request.requestor_data[job_name]}``: upstream's "safe attributes",
# with its names (``labels`` is the request's ``node_types``); nothing else of
# the request is exposed.
TEMPLATE_FIELDS = ("id", "labels", "requestor", "requestor_data", "relative_priority",
                   "event_id", "created_time", "tenant_name")
_TEMPLATE_SOURCES = {"labels": "node_types"}


def template_fields(request: NodeRequest) -> dict:
    return {name: getattr(request, _TEMPLATE_SOURCES.get(name, name))
            for name in TEMPLATE_FIELDS}
