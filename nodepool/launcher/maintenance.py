"""The launcher's maintenance loop: one thread that runs, pass after pass,
the tasks that keep ZooKeeper and the clouds tidy (session upkeep, lost
requests, the reaper, standing nodes, drained pools, min-ready,
max-ready-age, housekeeping and statistics), each at its own interval.

It reads the launcher through ``MaintainedLauncher`` (what the tasks need of
it), so this module knows nothing of the launcher module.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Protocol

from nodepool.config.model import NodepoolConfig
from nodepool.driver.base import LaunchProvider
from nodepool.launcher.loop_health import LoopHealth
from nodepool.launcher.pool_worker import PoolWorker
from nodepool.launcher.stats import Stats
from nodepool.quota import QuotaLedger
from nodepool.requests import housekeeping, minready, protocol
from nodepool.requests.reaper import NodeReaper
from nodepool.requests.standing import StandingNodes
from nodepool.zk.images import ImageCache
from nodepool.zk.records import READY
from nodepool.zk.session import DISCONNECT_ERRORS
from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.launcher")

MAINTENANCE_INTERVAL = 1.0
MIN_READY_INTERVAL = 5.0
HOUSEKEEPING_INTERVAL = 60.0
LOST_REQUEST_INTERVAL = 10.0
MAX_READY_AGE_INTERVAL = 30.0
STATS_INTERVAL = 10.0


class MaintainedLauncher(Protocol):
    """What the maintenance tasks read of the launcher.  Read afresh on
    every pass: a reload replaces the configuration and the image cache."""

    @property
    def config(self) -> NodepoolConfig: ...
    @property
    def store(self) -> ZooKeeperStore: ...
    @property
    def providers(self) -> dict[str, LaunchProvider]: ...
    # Drained pools are retired from it.
    @property
    def pool_workers(self) -> dict[str, PoolWorker]: ...
    @property
    def reaper(self) -> NodeReaper: ...
    @property
    def ledger(self) -> QuotaLedger: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def images(self) -> ImageCache | None: ...
    @property
    def health(self) -> LoopHealth: ...


class Maintenance:
    """The maintenance thread and the state its tasks keep between passes."""

    def __init__(self, launcher: MaintainedLauncher, stop: threading.Event,
                 session_upkeep: Callable[[], None]):
        """``stop``: set when the launcher stops; ``session_upkeep``: the
        launcher's own first task (its registration, a reload that waited)."""
        self.launcher = launcher
        self._stop = stop
        self._session_upkeep = session_upkeep
        # When each task with an interval last ran (monotonic clock).
        self._last: dict[str, float] = {}
        # The pool registrations of the last pass: one gone frees its requests.
        self._seen_pools: set[str | None] = set()
        # Per provider with standing nodes (static hosts): their bookkeeping.
        self._standing: dict[str, StandingNodes] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="maintenance", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """The loop (the maintenance thread's target)."""
        self.launcher.health.start("maintenance")
        while not self._stop.is_set():
            if not self.launcher.store.connected:
                # Every task talks to ZooKeeper; while the connection is
                # down, calls would queue until it is back.  The session, and
                # every lock of ours, may survive: wait and carry on.
                self.launcher.health.beat("maintenance")
                self._stop.wait(MAINTENANCE_INTERVAL)
                continue
            for name, interval, task in (
                    ("session", 0, self._session_upkeep),
                    ("lost requests", 0, self._reset_lost_requests),
                    ("reaper", 0, self._reap),
                    ("standing nodes", 0, self._standing_nodes),
                    ("drained pools", 0, self._retire_drained_pools),
                    ("min-ready", MIN_READY_INTERVAL, self._min_ready),
                    ("max-ready-age", MAX_READY_AGE_INTERVAL, self._max_ready_age),
                    ("housekeeping", HOUSEKEEPING_INTERVAL, self.housekeeping),
                    ("stats", STATS_INTERVAL, self._emit_stats)):
                if self._stop.is_set():
                    break
                if interval and not self._due(name, interval):
                    continue
                try:
                    task()
                    self.launcher.health.errors.pop(name, None)
                except DISCONNECT_ERRORS as e:
                    # ZooKeeper went away mid-task: expected, and the next pass
                    # after the reconnect does the work; no traceback.
                    self.launcher.health.errors[name] = f"ZooKeeper disconnected: {e!r}"
                    log.warning("maintenance task %s interrupted: ZooKeeper "
                                "disconnected (%r)", name, e)
                except Exception as e:  # a task must never kill the loop
                    self.launcher.health.errors[name] = str(e)
                    log.exception("maintenance task %s failed", name)
            self.launcher.health.beat("maintenance")
            self._stop.wait(MAINTENANCE_INTERVAL)

    def _due(self, name: str, interval: float) -> bool:
        now = time.monotonic()
        if now - self._last.get(name, float("-inf")) >= interval:
            self._last[name] = now
            return True
        return False

    def _reset_lost_requests(self) -> None:
        """Requests held by a launcher that is gone go back to ``requested``
        as soon as that launcher's registration disappears (its session
        ended), with a periodic pass as a backstop; housekeeping also does
        it, but only every HOUSEKEEPING_INTERVAL."""
        pools = {p.path for p in self.launcher.store.registered_pools(cached=True)}
        vanished = self._seen_pools - pools
        self._seen_pools = pools
        if not vanished and not self._due("lost requests", LOST_REQUEST_INTERVAL):
            return
        ours = {rid for w in list(self.launcher.pool_workers.values())
                for rid in w.handler.active_request_ids}
        reset = housekeeping.reset_lost_requests(self.launcher.store, skip=ours)
        if reset:
            log.info("reset %d request(s) of launchers that are gone: %s", len(reset),
                     ", ".join(reset))

    def _reap(self) -> None:
        report = self.launcher.reaper.run_once()
        for node_id in report.deleted:
            log.info("node %s deleted", node_id)

    def _standing_nodes(self) -> None:
        """Providers whose nodes are always there (static hosts): one ready
        node per slot, registered for the pool worker serving it."""
        for name, provider in list(self.launcher.providers.items()):
            offered = getattr(provider, "standing_nodes", None)
            slots = offered() if callable(offered) else None
            if slots is None:
                continue
            workers = [w for w in list(self.launcher.pool_workers.values())
                       if w.provider_name == name and not w.handler.draining]
            sync = self._standing.setdefault(name, StandingNodes(name))
            plan = sync.sync(self.launcher.store, slots,
                             launcher_ids={w.pool_name: w.settings.pool_id for w in workers},
                             attributes={w.pool_name: w.settings.node_attributes
                                         for w in workers})
            in_use = getattr(provider, "slots_in_use", None)
            if callable(in_use):
                in_use(plan.in_use)

    def _retire_drained_pools(self) -> None:
        for name, worker in list(self.launcher.pool_workers.items()):
            if worker.handler.draining and worker.idle:
                worker.stop(5.0)
                del self.launcher.pool_workers[name]
                self.launcher.health.forget(f"pool {name}")
                log.info("pool %s drained and stopped", name)

    def _min_ready(self) -> None:
        minready.finish_min_ready(self.launcher.store)
        labels = self.launcher.config.labels
        wanted = {name: label.min_ready for name, label in labels.items()
                  if label.min_ready > 0 and self._served(name)}
        if wanted:
            minready.submit_min_ready(self.launcher.store, wanted)

    def _served(self, label: str) -> bool:
        """Some pool offers the label and, for a diskimage label, has a
        READY upload to boot (upstream's min-ready waits for one)."""
        for worker in list(self.launcher.pool_workers.values()):
            if label not in worker.settings.labels:
                continue
            provider = self.launcher.providers.get(worker.provider_name)
            unavailable = getattr(provider, "unavailable_images", None)
            if unavailable is None or not unavailable([label], pool=worker.pool_name):
                return True
        return False

    def _max_ready_age(self) -> None:
        now = time.time()
        cache = self.launcher.store.nodes_cache
        for node in self.launcher.store.list_nodes(cached=True):
            if node.provider not in self.launcher.providers or node.state != READY \
                    or node.allocated_to:
                continue
            ages = [self.launcher.config.labels[t].max_ready_age for t in node.type
                    if t in self.launcher.config.labels]
            max_age = min([a for a in ages if a > 0], default=0)
            if not max_age or now - (node.state_time or now) <= max_age:
                continue
            if cache is not None and cache.is_locked(node.id):
                continue
            if self.launcher.store.update_unlocked_node(
                    node.id, lambda fresh: protocol.retire_ready(fresh, now), "retire"):
                log.info("node %s was ready for longer than max-ready-age", node.id)

    def housekeeping(self) -> None:
        """Also run once at start, before anything is served, to clean up
        after a previous run."""
        report = housekeeping.run_housekeeping(
            self.launcher.store, self.launcher.providers,
            max_hold_age=self.launcher.config.max_hold_age or float("inf"))
        for key in ("corrected_caches", "reset_requests", "removed_locks", "deallocated",
                    "removed_empty", "expired_holds"):
            items = getattr(report, key)
            if items:
                log.info("housekeeping %s: %s", key, ", ".join(items))

    def _emit_stats(self) -> None:
        paused = {(w.provider_name, w.pool_name): w.handler.paused
                  for w in list(self.launcher.pool_workers.values())}
        if self.launcher.stats.client is None:
            return
        store = self.launcher.store
        # Upstream names these after socket.gethostname(), unchanged.
        root = f"nodepool.launcher.{socket.gethostname()}"
        self.launcher.stats.gauges(
            store.list_nodes(cached=True), self.launcher.providers, self.launcher.ledger,
            paused,
            registered_pools=store.registered_pools(cached=True),
            requests=store.list_requests(cached=True),
            provider_configs=self.launcher.config.providers,
            tenant_limits=self.launcher.config.tenant_limits,
            zk_queues={f"{root}.{k}": v for k, v in self._zk_queue_sizes().items()})

    def _zk_queue_sizes(self) -> dict[str, int]:
        queues = self.launcher.store.queue_sizes()
        images = self.launcher.images
        if images is not None:  # kept while a provider boots diskimages
            queues.update({f"zk.image_cache.{k}": v for k, v in images.queue_sizes().items()})
        return queues
