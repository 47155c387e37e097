"""One pool worker's side of the node request protocol.

``NodeRequestHandler.run_once()`` is one level-triggered pass: it moves every
request this pool has accepted one step further (reuse or create nodes,
start builds, poll them, fulfil or decline), then looks at new requests
(defer, decline or accept), and reports whether the pool is paused waiting
for headroom.  Every step is safe to repeat; nothing waits on the cloud or
on a lock held elsewhere; no thread per node.

What it keeps between passes is only what cannot be re-read: the locks it
holds and the builder's handles.  While the connection to ZooKeeper is down
(SUSPENDED) the session and its locks may survive, so the handler only skips
its passes and carries on with the same locks when the connection is back.
Only when the session is LOST are those locks gone: then everything in
flight is dropped; the nodes left ``building`` and unlocked are reaped, and
another launcher (or this one) resets the ``pending`` request.  The builds
of those nodes are abandoned, and settled on the next pass that can read
ZooKeeper, by the ``OrphanBuilds`` (``orphans.py``) that also finish the
builds whose request went away.

The handler walks each request along its path (assign, decide, fill its
slots, poll their builds, then fulfil, decline or release) and leaves the
rest to its parts:

* ``Admission`` (``admission.py``): whether a request may be taken and a
  node created now; it owns every question about room put to the builder.
* ``ActiveRequest`` and ``Slot`` (``slots.py``): what the pool holds for an
  accepted request, each slot in one ``SlotState``.  Locks held for one
  step are released by their ``with`` block; the locks of accepted
  requests and their nodes live in those records, which let go of them.
* ``NodeSupply`` (``node_supply.py``): where a slot's node comes from
  (reused, or created) and where it goes back to.
* ``NodeBuilds`` (``node_builds.py``): what becomes of a started build (its
  status recorded on the node, the build forgotten or cancelled).
* ``OrphanBuilds`` (``orphans.py``): the builds no accepted request waits
  for any more.

Other threads read what the pool holds (the status API, statsd, the
lost-request reset) while the pool's thread changes it: the public
properties take a snapshot under a lock, which every change also takes
(the handler's for the accepted requests, ``OrphanBuilds``' for its own).

A write that fails (connection loss, or a lost reply that turns the retry
into a version conflict) is made again on the next pass: node changes are
applied to a copy and kept only once stored, and the builder keeps a
finished build's result until the handler says it is recorded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nodepool.requests import protocol
from nodepool.requests.admission import NEVER_FITS_QUOTA, Admission
from nodepool.requests.builder import BuildSpec, BuildState, BuildStatus, Capacity, NodeBuilder
from nodepool.requests.node_builds import NodeBuilds
from nodepool.requests.node_supply import NodeSupply
from nodepool.requests.orphans import OrphanBuilds
from nodepool.requests.protocol import PoolInfo, PoolSettings
from nodepool.requests.slots import ActiveRequest, Slot, SlotState
from nodepool.zk.locks import ZooKeeperLock
from nodepool.zk.session import DISCONNECT_ERRORS
from nodepool.zk.records import (BUILDING, FAILED, FULFILLED, INIT, PENDING, REQUESTED,
                                 MalformedRecord, NodeRequest)
from nodepool.zk.store import RecordChanged, RecordGone, ZooKeeperStore

log = logging.getLogger("nodepool.requests.handler")


@dataclass
class PassReport:
    accepted: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)      # declined by everyone
    fulfilled: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    nodes_created: list[str] = field(default_factory=list)
    nodes_ready: list[str] = field(default_factory=list)     # builds that finished READY
    nodes_reused: list[str] = field(default_factory=list)
    nodes_failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    paused: bool = False
    disconnected: bool = False   # ZooKeeper was unreachable: the pass was skipped


class NodeRequestHandler:
    def __init__(self, store: ZooKeeperStore, pool: PoolSettings, builder: NodeBuilder,
                 registration=None, clock: Callable[[], float] = time.time):
        """``registration``: the pool's ComponentRegistration, kept registered
        and told when the pool pauses (optional in tests)."""
        self.store = store
        self._pool = pool
        self.builder = builder
        self.registration = registration
        self.clock = clock
        self.admission = Admission(builder, pool, clock)
        self.builds = NodeBuilds(store, builder, self.admission, pool.pool_id, clock)
        self.orphans = OrphanBuilds(store, builder, self.builds)
        self.supply = NodeSupply(store, builder, clock)
        self._active: dict[str, ActiveRequest] = {}
        # Held for every change of _active and by every reader from another
        # thread (a dict changed while iterated raises).
        self._state_lock = threading.Lock()
        self._generation: int = store.session_generation
        # A pool removed by a config reload finishes what it accepted but
        # takes nothing new.
        self.draining = False

    # -- public ------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        with self._state_lock:
            return any(a.waiting for a in self._active.values())

    @property
    def active_request_ids(self) -> list[str]:
        with self._state_lock:
            return sorted(self._active)

    @property
    def orphan_node_ids(self) -> list[str]:
        return sorted(self.orphans.orphan_ids())

    @property
    def abandoned_node_ids(self) -> list[str]:
        """Nodes whose builds a lost session left, not settled yet."""
        return sorted(self.orphans.abandoned_ids())

    @property
    def pool(self) -> PoolSettings:
        return self._pool

    @pool.setter
    def pool(self, settings: PoolSettings) -> None:
        # A reload hands new settings (max-servers, labels): admission
        # decides by them from the next pass on, as the handler does.
        self._pool = settings
        self.admission.pool = settings

    def run_once(self) -> PassReport:
        report = PassReport()
        self._check_session()
        if not self.store.connected:
            # Calls would only queue until the reconnect; the session and
            # our locks may well survive, so wait and carry on.
            report.disconnected = True
            report.paused = self.paused
            return report
        self.store.session.retry_deferred()
        self.admission.begin_pass()
        for node_id in self.orphans.abandoned_ids():
            self._guard(report, f"node {node_id}", self.orphans.settle, node_id)
        if self.registration is not None:
            self._guard(report, "registration", self.registration.ensure_registered)
        for request_id in list(self._active):
            active = self._active.get(request_id)
            if active is not None:
                self._guard(report, request_id, self._advance, active, report)
        for node_id in self.orphans.orphan_ids():
            self._guard(report, f"node {node_id}", self.orphans.poll, node_id)
        if not self.draining:
            self._guard(report, "assignment", self._assign_new, report)
        report.paused = self.paused
        if self.registration is not None:
            self._guard(report, "pause flag", self._publish_paused)
        return report

    def shutdown(self) -> None:
        """Let go of every lock.  Pending requests become lost requests that a
        launcher resets; building nodes become unlocked and get reaped."""
        self._forget_everything()

    def _forget_everything(self) -> None:
        for active in self._active.values():
            active.let_go()
        self.orphans.let_go()
        with self._state_lock:
            self._active.clear()

    # -- plumbing ------------------------------------------------------------------

    def _guard(self, report: PassReport, what: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except DISCONNECT_ERRORS as e:
            log.warning("pool %s: %s interrupted by a ZooKeeper disconnect (%s); "
                        "retried on a later pass", self.pool.pool_id, what, type(e).__name__)
            report.errors.append(f"{what}: {type(e).__name__}")
            return None
        except Exception as e:  # one bad request or node must not stop the pool
            log.exception("pool %s: error in %s", self.pool.pool_id, what)
            report.errors.append(f"{what}: {e}")
            return None

    def _check_session(self) -> None:
        generation = self.store.session_generation
        if generation == self._generation:
            return
        orphans = self.orphans.orphan_ids()
        if self._active or orphans:
            log.warning("pool %s: ZooKeeper session expired; dropping %d request(s) and "
                        "%d orphan build(s) whose locks are gone", self.pool.pool_id,
                        len(self._active), len(orphans))
        for active in self._active.values():
            self.orphans.abandon_builds(active.slots)
        self.orphans.abandon_orphans()
        self._forget_everything()
        self._generation = generation

    def _publish_paused(self) -> None:
        if self.registration.component.paused != self.paused:
            self.registration.update(paused=self.paused)

    def _now(self) -> float:
        return self.clock()

    # -- new requests -----------------------------------------------------------------

    def _assign_new(self, report: PassReport) -> None:
        if self.store.requests_cache is not None and not self.store.synced:
            return  # after a session loss, wait until the caches are current
        if not self.admission.begin_assignment():
            return
        requests = self.store.list_requests(cached=True)
        pools = [PoolInfo.from_component(c) for c in self.store.registered_pools(cached=True)]
        for request in protocol.candidate_requests(requests, self.pool, self._active):
            reason = protocol.deferral_reason(request, self.pool, pools)
            if reason:
                log.debug("request %s: deferring: %s", request.id, reason)
                report.deferred.append(request.id)
                continue
            reasons = protocol.decline_reasons(request, self.pool)
            if not reasons:
                verdict = self.admission.of_request(request)
                if verdict.tenant_waits:
                    log.debug("request %s: tenant %s is at its limit", request.id,
                              request.tenant_name)
                    report.deferred.append(request.id)
                    continue
                reasons = list(verdict.declines)
            if self.paused and not reasons:
                report.deferred.append(request.id)
                continue
            if not reasons and self.admission.concurrency_reached():
                # Left for another provider while max-concurrency launches
                # are in progress; once reached it stays so for this pass.
                report.deferred.append(request.id)
                continue
            self._guard(report, request.id, self._lock_and_decide, request.id, reasons, report)

    def _lock_and_decide(self, request_id: str, reasons: list[str], report: PassReport) -> None:
        lock = self.store.try_lock_request(request_id)
        if lock is None:
            return
        with contextlib.ExitStack() as unless_accepted:
            unless_accepted.enter_context(lock)
            try:
                request = self.store.get_request(request_id)
            except MalformedRecord as e:
                log.error("skipping malformed request %s: %s", e.path, e.reason)
                return
            if (request is None or request.state != REQUESTED
                    or self.pool.pool_id in request.declined_by):
                return
            if reasons:
                log.info("request %s: declining: %s", request_id, "; ".join(reasons))
                self._store_decline(request, lock, report)
                return
            protocol.apply_accept(request, self._now())
            self.store.store_request(request, lock)
            unless_accepted.pop_all()    # accepted: the lock is kept while pending
        log.info("request %s: accepted (%s)", request_id, ", ".join(request.node_types))
        active = ActiveRequest(request, lock, [Slot(label) for label in request.node_types])
        with self._state_lock:
            self._active[request_id] = active
        report.accepted.append(request_id)
        self._advance(active, report)

    # -- accepted requests ----------------------------------------------------------------

    def _advance(self, active: ActiveRequest, report: PassReport) -> None:
        request_id = active.request.id
        if not active.lock.held:
            self._drop(active)
            return
        if not self.store.request_exists(request_id, cached=True) \
                and not self.store.request_exists(request_id):
            self._vanished(active, report)
            return
        if active.nodes_released:
            self._fulfil(active, report)
            return
        for slot in active.slots:
            if not self._fill(active, slot, report):
                break
        if active.request.id not in self._active:
            return  # declined while filling
        for slot in active.slots:
            if slot.state is SlotState.BUILDING:
                self._poll(slot, report)
        if any(s.state is SlotState.FAILED for s in active.slots):
            self._decline_active(active, "a node failed to launch", report)
        elif all(s.state is SlotState.READY for s in active.slots):
            self._fulfil(active, report)

    def _fill(self, active: ActiveRequest, slot: Slot, report: PassReport) -> bool:
        """Bring one slot as far as it goes without waiting.  False stops the
        filling of later slots (no headroom, or the request was declined)."""
        request = active.request
        if slot.state is SlotState.EMPTY:
            reused = (self._reuse(active, slot)
                      if request.reuse and self.pool.reuse_ready_nodes else None)
            if reused is not None:
                report.nodes_reused.append(reused)
                return True
            verdict = self._node_admission(slot.label)
            if verdict is Capacity.NEVER:
                self._decline_active(active, NEVER_FITS_QUOTA, report)
                return False
            if verdict is Capacity.WAIT:
                if request.is_min_ready:
                    # Speculative nodes are not worth waiting for.
                    self._decline_active(active, "no headroom for a min-ready node", report)
                    return False
                if not active.waiting:
                    log.info("request %s: no headroom for %s now; pausing pool %s",
                             request.id, slot.label, self.pool.pool_id)
                active.waiting = True
                self.supply.delete_oldest_unused(self.pool, request.id)
                return False
            active.waiting = False
            slot.node = self.supply.create(self.pool, request, slot.label)
            slot.state = SlotState.CREATED
            report.nodes_created.append(slot.node.id)
        if slot.state is not SlotState.CREATED:
            return True
        if slot.lock is None:
            # Nobody else locks a node in init; a miss is a transient error.
            slot.lock = self.store.try_lock_node(slot.node.id)
            if slot.lock is None:
                return True
        if slot.node.state == INIT:
            # Building only once locked: unlocked building nodes get reaped.
            building = copy.deepcopy(slot.node)
            building.set_state(BUILDING, self._now())
            self.store.store_locked_node(building, slot.lock)
            slot.node = building
        if active.az is None and not active.az_chosen:
            active.az = self.supply.choose_az(self.pool)
        active.az_chosen = True
        spec = BuildSpec(node_id=slot.node.id, label=slot.label,
                         provider_name=self.pool.provider_name,
                         pool_name=self.pool.pool_name, request_id=request.id,
                         tenant_name=request.tenant_name,
                         attributes=self.pool.node_attributes,
                         request=protocol.template_fields(request), az=active.az)
        try:
            slot.handle = self.builder.start_build(spec)
        except Exception as e:
            log.exception("node %s: could not start the build", slot.node.id)
            self._fail_node(slot, f"start failed: {e}", report)
            return False  # the request will be declined; start nothing more
        slot.state = SlotState.BUILDING
        self.admission.room_changed()
        return True

    def _reuse(self, active: ActiveRequest, slot: Slot) -> str | None:
        """The id of a ready node now allocated to the request, or None."""
        return self.supply.reuse(self.pool, active, slot, self._slot_node_ids())

    def _slot_node_ids(self) -> set[str]:
        return {s.node.id for a in self._active.values() for s in a.slots if s.node}

    def _node_admission(self, label: str) -> Capacity:
        ours = self._slot_node_ids() | set(self.orphans.orphan_ids())
        # The cache's per-pool index: O(pool's nodes), not a scan of every node.
        pool_nodes = self.store.pool_nodes(self.pool.provider_name, self.pool.pool_name)
        launching = len(ours - {n.id for n in pool_nodes})
        return self.admission.of_node(label, pool_nodes, launching)

    def _poll(self, slot: Slot, report: PassReport) -> None:
        if not self.store.node_exists(slot.node.id, cached=True) \
                and not self.store.node_exists(slot.node.id):
            # Removed by hand or by another tool: nothing records the server
            # any more, so stop the build and delete what it made; the
            # request gets a new node.
            log.warning("node %s: its znode was removed while building; cancelling "
                        "the build", slot.node.id)
            self.builds.cancel(slot.node, slot.handle)
            report.nodes_failed.append(slot.node.id)
            slot.empty()
            return
        try:
            status = self.builder.poll_build(slot.handle)
        except Exception as e:
            log.exception("node %s: polling the build failed", slot.node.id)
            status = BuildStatus(BuildState.FAILED, reason=f"poll failed: {e}")
        try:
            slot.node = self.builds.record(slot.node, slot.lock, status)
        except RecordGone:
            # Removed under our lock (forcibly, by an operator): the next
            # pass cancels the build.
            log.warning("node %s: vanished while building", slot.node.id)
            return
        if status.state is not BuildState.BUILDING:
            self.builds.forget(slot.handle)
        if status.state is BuildState.READY:
            slot.state = SlotState.READY
            report.nodes_ready.append(slot.node.id)
        elif status.state is BuildState.FAILED:
            slot.state = SlotState.FAILED
            report.nodes_failed.append(slot.node.id)
            slot.let_go()
        elif status.state is BuildState.ABORTED:
            # Transient: the node is left for the reaper and a new one is
            # built on a later pass.
            report.nodes_failed.append(slot.node.id)
            slot.empty()

    def _fail_node(self, slot: Slot, reason: str, report: PassReport) -> None:
        slot.node = self.builds.record(slot.node, slot.lock,
                                       BuildStatus(BuildState.FAILED, reason=reason))
        slot.state = SlotState.FAILED
        report.nodes_failed.append(slot.node.id)
        slot.let_go()

    # -- finishing ----------------------------------------------------------------------

    def _fulfil(self, active: ActiveRequest, report: PassReport) -> None:
        request_id = active.request.id
        request = self.store.get_request(request_id)
        if request is None:
            self._vanished(active, report)
            return
        node_ids = [s.node.id for s in active.slots]
        if request.state == FULFILLED and request.nodes == node_ids:
            # Our own write landed but its reply was lost.
            self._finish_fulfilled(active, report)
            return
        if request.state != PENDING:
            log.error("request %s: expected pending while locked, found %s; giving it up",
                      request_id, request.state)
            self._release_nodes(active, report)
            active.lock.release()
            with self._state_lock:
                del self._active[request_id]
            return
        if not active.nodes_released:
            # Zuul waits at most 30 s for each node lock once it sees
            # fulfilled: let go of them first.
            for slot in active.slots:
                slot.let_go()
            active.nodes_released = True
        protocol.apply_fulfil(request, node_ids, self._now())
        try:
            self.store.store_request(request, active.lock)
        except RecordGone:
            self._vanished(active, report)
            return
        except RecordChanged:
            return  # re-read and try again next pass
        self._finish_fulfilled(active, report)

    def _finish_fulfilled(self, active: ActiveRequest, report: PassReport) -> None:
        request_id = active.request.id
        active.lock.release()
        with self._state_lock:
            del self._active[request_id]
        report.fulfilled.append(request_id)
        log.info("request %s: fulfilled with %s", request_id,
                 ", ".join(s.node.id for s in active.slots))

    def _decline_active(self, active: ActiveRequest, reason: str, report: PassReport) -> None:
        request_id = active.request.id
        request = self.store.get_request(request_id)
        if request is None:
            self._vanished(active, report)
            return
        log.info("request %s: declining: %s", request_id, reason)
        self._release_nodes(active, report)
        with self._state_lock:
            del self._active[request_id]
        self._store_decline(request, active.lock, report)

    def _store_decline(self, request: NodeRequest, lock: ZooKeeperLock,
                       report: PassReport) -> None:
        """Write the decline and let go of the request's lock."""
        with lock, contextlib.suppress(RecordGone):
            for attempt in range(2):
                registered = [p.id for p in self.store.registered_pools()]
                protocol.apply_decline(request, self.pool.pool_id, registered, self._now())
                try:
                    self.store.store_request(request, lock)
                    break
                except RecordChanged:
                    if attempt:
                        raise
                    request = self.store.get_request(request.id)
                    if request is None:
                        return
            report.declined.append(request.id)
            if request.state == FAILED:
                report.failed.append(request.id)
                log.info("request %s: failed: every registered pool declined", request.id)

    def _vanished(self, active: ActiveRequest, report: PassReport) -> None:
        """The request was deleted (Zuul cancelled it): keep nothing for it."""
        request_id = active.request.id
        log.info("request %s: deleted by its requestor; releasing its nodes", request_id)
        self._release_nodes(active, report)
        active.lock.release()
        with self._state_lock:
            self._active.pop(request_id, None)
        report.vanished.append(request_id)

    def _release_nodes(self, active: ActiveRequest, report: PassReport) -> None:
        """Ready nodes: unallocate and unlock (they become reusable).  Builds in
        flight go on as orphans.  Nodes whose build never started are marked
        deleting.  Failed nodes are already unlocked for the reaper."""
        for slot in active.slots:
            node = slot.node
            if node is None or slot.state is SlotState.FAILED:
                continue
            if slot.state is SlotState.BUILDING:
                self.orphans.adopt(node, slot.lock, slot.handle)
                slot.lock = None
            else:
                self.supply.release(active.request.id, slot)

    def _drop(self, active: ActiveRequest) -> None:
        """The request's lock went with a lost session."""
        self.orphans.abandon_builds(active.slots)
        active.let_go()
        with self._state_lock:
            self._active.pop(active.request.id, None)
