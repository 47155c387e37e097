"""The launcher: wires the configuration, ZooKeeper and the providers together.

Threads, each a level-triggered loop that reads current state and moves it a
step (so a restart or a lost session resumes instead of breaking):

* one per provider (its driver's ``LaunchProvider``, found through
  ``nodepool.driver.registry``): e.g. server list, limits, machines;
* one per pool (``pool_worker.PoolWorker``): the request handler's passes;
* one maintenance loop (``maintenance.Maintenance``): the reaper, min-ready,
  max-ready-age, housekeeping and statistics.

No thread waits on the cloud: pool workers and the reaper only talk to the
provider's in-memory interface, and the provider talks to the cloud through
its gate.  Here: start and stop, configuration reload, and the views of
ZooKeeper the providers are given.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from functools import partial
from typing import Callable

from nodepool.config.model import NodepoolConfig, PoolConfig, ProviderConfig
from nodepool.driver import registry
from nodepool.driver.base import LaunchProvider, LauncherViews
from nodepool.launcher.loop_health import LOOP_DEADLINE, LoopHealth
from nodepool.launcher.maintenance import Maintenance
from nodepool.launcher.pool_worker import PoolWorker
from nodepool.launcher.shared import ProjectShare
from nodepool.launcher.stats import Stats
from nodepool.launcher import zk_views
from nodepool.launcher.webapp import StatusServer
from nodepool.quota import QuotaLedger, tenant_limits_from_config
from nodepool.requests.reaper import NodeReaper
from nodepool.version import __version__
from nodepool.zk.client import connect, disconnect
from nodepool.zk.components import ComponentRegistration, register_launcher
from nodepool.zk.image_records import ImageUpload
from nodepool.zk.images import ImageCache
from nodepool.zk.records import NodeRequest
from nodepool.zk.shared_quota import SharedQuotaBooks, new_launcher_id
from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.launcher")


class LauncherStartError(Exception):
    """The launcher cannot start; the message says why and what to change."""


class Launcher:
    """One launcher process: its ZooKeeper session, providers, pool workers,
    maintenance loop and status API, started, reloaded and stopped together."""

    def __init__(self, config: NodepoolConfig, hostname: str | None = None,
                 provider_factory: Callable[..., LaunchProvider] | None = None,
                 provider_options: dict | None = None, webapp: bool = True):
        self.config = config
        self.serve_webapp = webapp  # False: nodepool-launcher --no-webapp
        self.hostname = hostname or socket.getfqdn()
        # None: each provider's class comes from the driver registry.
        self.provider_factory = provider_factory
        self.provider_options = provider_options or {}
        self.health = LoopHealth()
        self.stats = Stats.from_environment()
        self.client = None
        self.store: ZooKeeperStore | None = None
        self.ledger: QuotaLedger | None = None
        # Books shared with other launchers on the same cloud projects.
        self.launcher_id = new_launcher_id(self.hostname)
        self.shared: SharedQuotaBooks | None = None
        self.providers: dict[str, LaunchProvider] = {}
        self.pool_workers: dict[str, PoolWorker] = {}
        self.reaper: NodeReaper | None = None
        self._launcher_registration: ComponentRegistration | None = None
        self._stop = threading.Event()
        self.started = threading.Event()
        self._reload_lock = threading.RLock()
        self._pending_reload: NodepoolConfig | None = None
        # What upstream's nodepool-builder wrote; kept only while a
        # provider boots diskimages (_sync_image_cache).
        self.images: ImageCache | None = None
        self.webapp: StatusServer | None = None
        # Reads the attributes above afresh on every pass.
        self.maintenance = Maintenance(self, self._stop, self._session_upkeep)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if cfg.webapp is not None and self.serve_webapp:
            # Bind first: a launcher that cannot serve its status API must
            # fail before it takes any request.
            try:
                self.webapp = StatusServer(self, cfg.webapp.listen_address, cfg.webapp.port)
            except OSError as e:
                raise LauncherStartError(
                    f"{cfg.config_file}: webapp: cannot listen on "
                    f"{cfg.webapp.listen_address}:{cfg.webapp.port} ({e.strerror or e}); "
                    "set another webapp.port (0 picks a free one) or stop what uses "
                    "that port") from None
        self.client = connect(cfg.zookeeper)
        self.store = ZooKeeperStore(self.client)
        self.store.ensure_roots()
        self.store.start_caches()
        self.store.requests_cache.on_added = self._new_request
        if not self.store.wait_synced(cfg.zookeeper.session_timeout * 3):
            log.warning("ZooKeeper caches are not in sync yet; continuing")
        self.ledger = QuotaLedger(tenant_limits=tenant_limits_from_config(cfg.tenant_limits))
        ledger = self.ledger
        self.shared = SharedQuotaBooks(
            self.client, self.launcher_id,
            entry_state=lambda key: (lambda s: s.value if s is not None else None)(
                ledger.entry_state(key)),
            wait_for_change=ledger.wait_for_change)
        self.shared.start()
        self._sync_image_cache(cfg)
        for name, provider_cfg in cfg.providers.items():
            provider = self._make_provider(provider_cfg)
            provider.start()
            self.providers[name] = provider
        self.reaper = NodeReaper(self.store, self.providers)
        self._launcher_registration = register_launcher(self.client, self.hostname,
                                                        __version__)
        # Clean up after a previous run before serving anything.
        self.maintenance.housekeeping()
        for provider_cfg in cfg.providers.values():
            for pool in provider_cfg.pools.values():
                worker = self._new_pool_worker(provider_cfg, pool)
                self.pool_workers[worker.name] = worker
                worker.start()
        self.maintenance.start()
        if self.webapp is not None:
            self.webapp.start()
        self.started.set()
        log.info("launcher %s started: %d provider(s), %d pool(s)", self.hostname,
                 len(self.providers), len(self.pool_workers))

    def stop(self, wait: float = 20.0) -> None:
        """Graceful: stop taking requests, release locks, leave ZooKeeper
        consistent.  Builds in flight are dropped; their nodes (unlocked,
        ``building``) are reaped by whichever launcher runs next."""
        log.info("launcher stopping")
        self._stop.set()
        deadline = time.monotonic() + wait
        if self.webapp is not None:
            self.webapp.stop()
        for worker in self.pool_workers.values():
            worker.stop(max(0.5, deadline - time.monotonic()) / 2)
        self.maintenance.join(max(0.5, deadline - time.monotonic()))
        if self.reaper is not None:
            self.reaper.release_all()
        if self._launcher_registration is not None:
            try:
                self._launcher_registration.unregister()
            except Exception:
                log.debug("unregistering the launcher failed", exc_info=True)
        for provider in self.providers.values():
            provider.stop(wait=max(0.5, deadline - time.monotonic()))
        if self.shared is not None:
            self.shared.stop()
        if self.images is not None:
            self.images.stop()
        if self.store is not None:
            self.store.stop_caches()
        if self.client is not None:
            disconnect(self.client)
        log.info("launcher stopped")

    def wait(self) -> None:
        self._stop.wait()

    # -- configuration reload ---------------------------------------------------

    def reload(self, config: NodepoolConfig) -> bool:
        """Apply a new configuration without dropping nodes in flight; all
        or nothing.  True when applied.

        Changed pools keep their id and their accepted requests; removed pools
        stop taking requests, finish the ones they hold and then stop; removed
        providers keep deleting their nodes.  A provider whose cloud entry
        changed (a rotated password) reconnects.  ZooKeeper settings need a
        restart.  Everything that can fail (new providers, new pool
        registrations) is prepared first; if one step fails, what was
        prepared is undone and the running configuration stays.  While
        ZooKeeper is unreachable the new configuration waits and is applied
        once the connection is back.
        """
        with self._reload_lock:
            if not self.store.connected:
                self._pending_reload = config
                log.warning("ZooKeeper is unreachable; the new configuration is applied "
                            "once the connection is back")
                return False
            self._pending_reload = None
            old = self.config
            if config.zookeeper != old.zookeeper:
                log.warning("zookeeper settings changed; they apply after a restart")
                config = dataclasses.replace(config, zookeeper=old.zookeeper)
            if config.webapp != old.webapp:
                log.warning("webapp settings changed; they apply after a restart")
            try:
                new_providers, new_workers = self._prepare_reload(config)
            except Exception as e:  # noqa: BLE001 - the running configuration stays
                log.error("configuration not reloaded, nothing changed: %s: %s",
                          type(e).__name__, e)
                return False
            self._apply_reload(config, new_providers, new_workers)
            for name in sorted(set(old.providers) - set(config.providers)):
                log.info("provider %s removed; it keeps deleting its nodes", name)
            log.info("configuration reloaded")
            return True

    def _prepare_reload(self, config: NodepoolConfig
                        ) -> tuple[dict[str, LaunchProvider], dict[str, PoolWorker]]:
        """New providers (not started) and new pool workers (registered, not
        started); undone if any of them fails."""
        new_providers: dict[str, LaunchProvider] = {}
        new_workers: dict[str, PoolWorker] = {}
        try:
            for name, provider_cfg in config.providers.items():
                if name not in self.providers:
                    new_providers[name] = self._make_provider(provider_cfg)
            for provider_cfg in config.providers.values():
                for pool in provider_cfg.pools.values():
                    name = f"{provider_cfg.name}-{pool.name}"
                    if name not in self.pool_workers:
                        new_workers[name] = self._new_pool_worker(
                            provider_cfg, pool, new_providers.get(provider_cfg.name))
        except Exception:
            for worker in new_workers.values():
                worker.stop(0)
            for name in new_providers:
                self.ledger.configure_provider(name, {})
            raise
        return new_providers, new_workers

    def _apply_reload(self, config: NodepoolConfig, new_providers: dict,
                      new_workers: dict) -> None:
        self._sync_image_cache(config)
        self.config = config
        self.ledger.set_tenant_limits(tenant_limits_from_config(config.tenant_limits))
        for name, provider_cfg in config.providers.items():
            if name in new_providers:
                provider = new_providers[name]
                provider.start()
                self.providers[name] = provider
                self.reaper.builders[name] = provider
                log.info("provider %s added", name)
            else:
                self.providers[name].update_config(provider_cfg)
        wanted = {f"{p.name}-{pool.name}": (p, pool) for p in config.providers.values()
                  for pool in p.pools.values()}
        for name, worker in list(self.pool_workers.items()):
            if name in wanted:
                worker.update(*wanted[name])
            elif not worker.handler.draining:
                log.info("pool %s removed from the configuration; draining", name)
                worker.drain()
        for name, worker in new_workers.items():
            self.pool_workers[name] = worker
            worker.start()
            log.info("pool %s added", name)

    def _new_pool_worker(self, provider_cfg: ProviderConfig, pool: PoolConfig,
                         builder: LaunchProvider | None = None) -> PoolWorker:
        """A pool worker, registered but not started; ``builder``: the
        provider, when it is not (yet) the launcher's."""
        return PoolWorker(provider_cfg, pool, hostname=self.hostname, store=self.store,
                          builder=builder or self.providers[provider_cfg.name],
                          health=self.health, ledger=self.ledger)

    def _make_provider(self, provider_cfg: ProviderConfig) -> LaunchProvider:
        factory = self.provider_factory or registry.provider_class(provider_cfg)
        shared: dict = {}
        made: list[LaunchProvider] = []
        if self.shared is not None and callable(getattr(factory, "cloud_project", None)):
            # Other launchers may serve the same cloud project: one quota
            # book, one API budget and one leak cleaner between us.  The
            # project is the one the provider's connection works in, so it
            # follows a reload that moves the provider elsewhere.
            project = ProjectShare(self.shared, provider_cfg.name,
                                   lambda: _cloud_project(made))
            shared = dict(shared_quota=project, api_share=project.launcher_count,
                          is_leak_cleaner=project.is_cleaner,
                          cleans_servers_of=self._leak_scope(provider_cfg.name))
        # Providers that can boot diskimages (OpenStack's) get the lookup
        # even without any now: a reload may add some.
        images = self._image_upload if hasattr(provider_cfg, "diskimages") else None
        store = self.store  # made once, before any provider
        views = LauncherViews(known_nodes=partial(zk_views.known_nodes, store),
                              node_claims_server=partial(zk_views.node_claims_server, store),
                              tenant_usage=partial(zk_views.tenant_usage_elsewhere, store,
                                                   own_providers=self.providers),
                              launch_observer=self.stats.launch,
                              build_progress=self._waker_of(provider_cfg.name),
                              image_upload=images, **shared)
        provider = factory(provider_cfg, self.ledger, **views.as_kwargs(),
                           **self.provider_options)
        made.append(provider)
        return provider

    def _leak_scope(self, provider_name: str) -> Callable[[str], bool]:
        """Which other provider names' leaked servers ``provider_name``
        cleans: those the project's book lists (names launchers of this
        ZooKeeper used there, dead ones' included) that none of our
        providers on the project has, by the first of ours there (by name),
        so one of ours looks at each server once.  Whether this launcher is
        the project's cleaner at all is asked separately."""
        def covers(other: str) -> bool:
            shares = {name: getattr(p, "shared_quota", None)
                      for name, p in list(self.providers.items())}
            projects = {name: s for name, s in shares.items()
                        if isinstance(s, ProjectShare) and s.key is not None}
            mine = projects.get(provider_name)
            book = mine.book() if mine is not None else None
            if mine is None or book is None or other not in book.provider_names():
                return False
            ours = sorted(name for name, s in projects.items() if s.key == mine.key)
            return other not in ours and ours[0] == provider_name
        return covers

    def _sync_image_cache(self, config: NodepoolConfig) -> None:
        """Keep the image cache while some provider boots diskimages, as
        upstream's launcher does; none is kept (nor /nodepool/images made)
        for a site without them."""
        wanted = any(getattr(p, "diskimages", None) for p in config.providers.values())
        if wanted and self.images is None and self.client is not None:
            images = ImageCache(self.client)
            images.start()
            # A request for a diskimage label is declined while the cache
            # holds no upload for it: read everything before serving.
            if not images.wait_synced(config.zookeeper.session_timeout * 3
                                      if config.zookeeper else 30.0):
                log.warning("the image cache is not in sync yet; continuing")
            self.images = images
        elif not wanted and self.images is not None:
            images, self.images = self.images, None
            images.stop()

    def _image_upload(self, image: str, provider: str) -> ImageUpload | None:
        images = self.images
        return images.newest_ready_upload(image, provider) if images is not None else None

    # -- waking pool workers; the maintenance loop's first task -----------------

    def _waker_of(self, provider_name: str) -> Callable[[], None]:
        """A build of the provider ended: its pools pass now."""
        def wake() -> None:
            for worker in list(self.pool_workers.values()):
                if worker.provider_name == provider_name:
                    worker.wake()
        return wake

    def _new_request(self, request: NodeRequest) -> None:
        """Wake the pool workers that serve one of its labels (ZooKeeper's
        event thread: no work here beyond setting events)."""
        wanted = set(request.node_types)
        for worker in list(self.pool_workers.values()):
            if wanted & worker.settings.labels:
                worker.wake()

    def _session_upkeep(self) -> None:
        """Lock znodes whose delete failed during a disconnect, a launcher
        registration that could not be made again, a reload that waited."""
        self.store.session.retry_deferred()
        if self._launcher_registration is not None:
            self._launcher_registration.ensure_registered()
        if self._pending_reload is not None:
            self.reload(self._pending_reload)

    # -- for operators ----------------------------------------------------------------

    def health_problems(self) -> list[str]:
        """What /health reports; empty when healthy."""
        problems = []
        store = self.store
        if store is None or not store.connected:
            down = store.session.disconnected_for() if store is not None else 0.0
            problems.append(f"ZooKeeper connection down for {down:.0f}s (work is paused; "
                            "the session survives up to zookeeper-timeout)")
        problems += self.health.problems()
        for name, provider in list(self.providers.items()):
            age = provider.tick_age()
            if age is not None and age > LOOP_DEADLINE:
                problems.append(f"provider {name} loop has not finished a pass for {age:.0f}s")
            budget = provider.metrics().api_budget or {}
            if budget.get("written_off", 0) >= budget.get("written_off_max", float("inf")):
                problems.append(f"provider {name}: {budget['written_off']} API calls hung past "
                                "their deadline; no more API workers start until one returns")
        return problems

    def status(self) -> dict:
        return {
            "hostname": self.hostname,
            "zookeeper_connected": bool(self.client and self.client.connected),
            "loops": self.health.ages(),
            "loop_errors": dict(self.health.errors),
            "pools": {name: {"id": w.settings.pool_id, "paused": w.handler.paused,
                             "active_requests": w.handler.active_request_ids}
                      for name, w in self.pool_workers.items()},
            "reaper_in_progress": self.reaper.in_progress if self.reaper else [],
            "providers": {name: p.status() for name, p in self.providers.items()},
            "launcher_id": self.launcher_id,
            "shared_projects": self.shared.status() if self.shared is not None else {},
        }


def _cloud_project(made: list) -> dict | None:
    """The project of the provider made (None before it was)."""
    return made[0].cloud_project() if made else None
