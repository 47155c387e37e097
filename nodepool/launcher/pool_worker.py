"""A pool worker: one pool's registration and its request handler's passes,
on a thread of its own (a level-triggered loop: each pass reads the current
state and moves it a step)."""

from __future__ import annotations

import logging
import threading

from nodepool.config.model import PoolConfig, ProviderConfig
from nodepool.launcher.loop_health import LoopHealth
from nodepool.quota import QuotaLedger
from nodepool.requests.builder import NodeBuilder
from nodepool.requests.handler import NodeRequestHandler, PassReport
from nodepool.requests.protocol import PoolSettings
from nodepool.version import __version__
from nodepool.zk.components import make_pool_id, register_pool
from nodepool.zk.records import PoolComponent
from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.launcher")

POOL_INTERVAL = 0.5          # a pool worker's pass when nothing changes
# A woken pool worker (a new request for one of its labels) passes at once,
# but never more often than this: bursts of requests share a pass.
POOL_MIN_GAP = 0.05
PAUSED_MIN_PASS = 0.05       # a paused pool's shortest pause between passes


class PoolWorker:
    """One pool: its registration and its request handler's passes."""

    def __init__(self, provider: ProviderConfig, pool: PoolConfig, *, hostname: str,
                 store: ZooKeeperStore, builder: NodeBuilder, health: LoopHealth,
                 ledger: QuotaLedger | None):
        """``builder``: the provider whose machines the pool's nodes are;
        ``health``: where each pass is beaten; ``ledger``: waited on while
        the pool is paused for quota."""
        self.health = health
        self.ledger = ledger
        self.provider_name = provider.name
        self.pool_name = pool.name
        self.name = f"{provider.name}-{pool.name}"
        pool_id = make_pool_id(provider.name, pool.name, hostname)
        self.settings = PoolSettings(
            pool_id=pool_id, provider_name=provider.name, pool_name=pool.name,
            labels=frozenset(pool.labels), priority=provider.pool_priority(pool),
            max_servers=pool.max_servers, node_attributes=pool.node_attributes,
            availability_zones=pool.availability_zones)
        component = PoolComponent(
            hostname=hostname, state="running", version=__version__,
            id=pool_id, name=pool.name, provider_name=provider.name,
            supported_labels=sorted(pool.labels), priority=provider.pool_priority(pool))
        self.registration = register_pool(store.client, component)
        self.handler = NodeRequestHandler(store, self.settings, builder,
                                          registration=self.registration)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pool-{self.name}",
                                        daemon=True)
        self.last_report: PassReport | None = None

    def wake(self) -> None:
        """Pass now rather than at the end of the wait (a new request)."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def update(self, provider: ProviderConfig, pool: PoolConfig) -> None:
        """Config reload: same pool id, new labels and limits; requests in
        flight go on."""
        settings = PoolSettings(
            pool_id=self.settings.pool_id, provider_name=provider.name,
            pool_name=pool.name, labels=frozenset(pool.labels),
            priority=provider.pool_priority(pool), max_servers=pool.max_servers,
            node_attributes=pool.node_attributes,
            availability_zones=pool.availability_zones)
        if settings == self.settings:
            return
        self.settings = settings
        self.handler.pool = settings
        try:
            self.registration.update(supported_labels=sorted(pool.labels),
                                     priority=provider.pool_priority(pool))
        except Exception as e:  # noqa: BLE001 - written again by ensure_registered
            log.warning("pool %s: registration not updated yet (%s); retrying", self.name, e)
        log.info("pool %s: configuration updated", self.name)

    def drain(self) -> None:
        """Config reload removed this pool: unregister, finish what was
        accepted, take nothing new."""
        self.handler.draining = True
        try:
            self.registration.unregister()
        except Exception:
            log.debug("pool %s: unregister failed", self.name, exc_info=True)

    @property
    def idle(self) -> bool:
        return not (self.handler.active_request_ids or self.handler.orphan_node_ids
                    or self.handler.abandoned_node_ids)

    def _run(self) -> None:
        self.health.start(f"pool {self.name}")
        while not self._stop.is_set():
            ok = True
            ledger = self.ledger
            # Taken before the pass, so a change during it is not missed.
            seen = ledger.generation if ledger is not None else None
            try:
                self.last_report = self.handler.run_once()
                # A pass whose every step failed made no progress.
                ok = not self.last_report.errors or bool(
                    self.last_report.fulfilled or self.last_report.accepted
                    or self.last_report.nodes_ready)
            except Exception:  # a pass must never kill the worker
                ok = False
                log.exception("pool %s: pass failed", self.name)
            self.health.beat(f"pool {self.name}", ok)
            if seen is not None and self.last_report is not None and self.last_report.paused:
                # Waiting for quota: wake as soon as the ledger changes (a
                # server gone, limits read), instead of polling.
                ledger.wait_for_change(seen, POOL_INTERVAL)
                self._stop.wait(PAUSED_MIN_PASS)  # never a tight loop
            else:
                self._wake.wait(POOL_INTERVAL)
                self._wake.clear()
                self._stop.wait(POOL_MIN_GAP)

    def stop(self, wait: float) -> None:
        """Stop taking requests, then let go of every lock (once the pass in
        progress is over: the handler is not safe to use from two threads)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(wait)
        if self._thread.is_alive():
            log.warning("pool %s: a pass is still running; its locks go with the "
                        "session", self.name)
            return
        try:
            self.handler.shutdown()
        finally:
            try:
                self.registration.unregister()
            except Exception:  # the session may be gone already
                log.debug("pool %s: unregister failed", self.name, exc_info=True)
