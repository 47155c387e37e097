"""One OpenStack provider: the wiring of its parts, its loop, and the
``NodeBuilder`` facade the request handler calls.

Pool workers call it from their threads (``capacity``, ``start_*``,
``poll_*``: quick, in-memory); one provider thread runs ``tick()``, which
moves every machine a step and keeps the server list, the catalog and the
cloud's limits current.  The machines (``create_machine.py``,
``deletion.py``) get their collaborators (``context.py``) from here, never
the provider itself.  Nothing here imports the ZooKeeper layer: what the
leak cleaner needs to know about nodes comes through ``known_nodes``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable, Sequence

from nodepool.config.model import AddressPolicy
from nodepool.driver.base import ProviderMetrics
from nodepool.driver.gate import ApiGate
from nodepool.driver.list_cache import ListCache
from nodepool.driver.loop import LoopedProvider, ProviderLoop
from nodepool.driver.openstack import addressing
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.catalog import CloudCatalog
from nodepool.driver.openstack.cloud import OpenStackCloud
from nodepool.driver.openstack.cloud_calls import CloudCalls
from nodepool.driver.openstack.connection import CloudConnection
from nodepool.driver.openstack.context import LaunchSettings, MachineContext
from nodepool.driver.openstack.create_machine import CreateMachine, Step
from nodepool.driver.openstack.deletion import NodeDeletion, ServerDeletions
from nodepool.driver.openstack.floating_ips import FloatingIpTracker
from nodepool.driver.openstack.label_plan import LabelPlanner
from nodepool.driver.openstack.launch_reporter import LaunchReporter
from nodepool.driver.openstack.limits_reading import LimitsReading
from nodepool.driver.openstack.list_pacing import (PORT_LIST_INTERVAL, SERVER_LIST_INTERVAL,
                                                   ListPacer)
from nodepool.driver.openstack.network_cleanup import LeakSweep, orphan_port_judge
from nodepool.driver.openstack.quota_broker import QuotaBroker
from nodepool.driver.openstack.reconcile import ServerReconciler
from nodepool.driver.outcomes import LaunchOutcome
from nodepool.quota import PoolQuota, QuotaLedger, Resources
from nodepool.quota.shared import SharedQuota
from nodepool.requests.builder import (BuildSpec, BuildState, BuildStatus, Capacity,
                                       DeleteSpec, DeleteState, DeleteStatus,
                                       LaunchConcurrency, NodeInfo)
from nodepool.zk.image_records import ImageUpload

log = logging.getLogger("nodepool.openstack.provider")

LOOP_INTERVAL = 0.25
LEAK_INTERVAL = 60.0


class OpenStackProvider(LoopedProvider):
    """A ``NodeBuilder`` for one provider of nodepool.yaml."""

    def __init__(self, config: Any, ledger: QuotaLedger, *,
                 known_nodes: Callable[[], dict[str, str | None] | None] | None = None,
                 node_claims_server: Callable[[str, str], bool | None] | None = None,
                 tenant_usage: Callable[[str], Resources] | None = None,
                 cloud: OpenStackCloud | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 server_list_interval: float = SERVER_LIST_INTERVAL,
                 leak_interval: float = LEAK_INTERVAL,
                 launch_observer: Callable[[LaunchOutcome], None] | None = None,
                 shared_quota: SharedQuota | None = None,
                 api_share: Callable[[], int] | None = None,
                 is_leak_cleaner: Callable[[], bool] | None = None,
                 cleans_servers_of: Callable[[str], bool] | None = None,
                 build_progress: Callable[[], None] | None = None,
                 image_upload: Callable[[str, str], ImageUpload | None] | None = None):
        self.config = config                   # model.Provider
        # Other launchers on the same cloud project (doc/multiple-launchers.rst):
        # their claims, how many of us split the API budget, and whether
        # this launcher is the project's leak cleaner.
        self.shared_quota = shared_quota
        self.api_share = api_share
        self.is_leak_cleaner = is_leak_cleaner
        # Other provider names of the project whose leaked servers this
        # provider cleans (another launcher's, when ours is the cleaner).
        self.cleans_servers_of = cleans_servers_of
        # Told when a build ends (ready or failed), so the pool waiting on it
        # passes now instead of at its next pass.
        self.build_progress = build_progress
        self.name = config.name
        self.ledger = ledger
        self.clock = clock
        self._settings = LaunchSettings.from_config(config)
        self.cloud_name = self._settings.cloud_name
        self.region_name = self._settings.region_name
        settings = config.cloud_settings
        api_timeout = settings.api_timeout if settings else 60.0
        # keystoneauth's timeout applies per connect and per read; a slow
        # drip could exceed it, so the gate's deadline has a margin.
        self.gate = ApiGate(self.name, deadline=api_timeout * 2 + 1, rate=config.rate,
                            read_rate=config.read_rate, clock=clock)
        self.connection = CloudConnection(
            self.name, self.gate, clock, cloud=cloud,
            target=lambda: (self.cloud_name, self.config.cloud_settings.clouds_file,
                            self.region_name))
        self.servers = ListCache(self.gate, self._list_servers, server_list_interval,
                                 clock, confirm_gone=self._needs_second_look,
                                 is_partial=srv.is_partial)
        # One project-wide port list for the servers that wait for a
        # floating IP, instead of a ``ports?device_id=`` lookup per server.
        self.ports = ListCache(self.gate, lambda: self.cloud.list_ports(),
                               PORT_LIST_INTERVAL, clock, kind="network.list_ports",
                               idle_refresh=False)
        # When either list is asked for (list_pacing.py).
        self.pacer = ListPacer(
            self.servers, self.ports, clock,
            builds_wait_quota=lambda: any(m.step is Step.WAIT_QUOTA
                                          for m in self._builds.values()),
            operator_awaits=lambda: any(d.spec.awaited for d in list(self._deletes.values())),
            booting=lambda: [(m.call_done_at, m.building_seen_at)
                             for m in self._builds.values()
                             if m.step is Step.BOOTING and m.call_done_at is not None],
            deletions=lambda: self.deletions.awaited())
        self._layout: tuple[Any, AddressPolicy, addressing.NetworkLayout] | None = None
        self.catalog = CloudCatalog(self.gate, {
            "flavors": lambda: self.cloud.list_flavors(),
            "images": lambda: self.cloud.list_images(),
            "networks": lambda: self.cloud.list_networks(),
            "availability_zones": lambda: self.cloud.list_availability_zones(),
        }, clock=clock)
        self.planner = LabelPlanner(self.name, self.cloud_name, self.catalog, image_upload)
        # The ledger, the shared claims, and which server holds which entry.
        self.quota = QuotaBroker(self.name, ledger, pools=lambda: self.config.pools,
                                 clock=clock, shared_quota=shared_quota,
                                 tenant_usage=tenant_usage,
                                 note_wait=self.pacer.note_quota_wait)
        self.reporter = LaunchReporter(self.name, launch_observer)
        self.counters = self.reporter.counters
        self.floating_ips = FloatingIpTracker(self.name, self.gate, lambda: self.cloud, clock)
        # What every machine is handed.
        self.machine_context = MachineContext(
            name=self.name, clock=clock, settings=lambda: self._settings,
            network_layout=lambda: self.network_layout,
            calls=CloudCalls(self.name, self.gate, lambda: self.cloud),
            servers=self.servers, ports=self.ports, pacer=self.pacer, quota=self.quota,
            reporter=self.reporter, floating_ips=self.floating_ips)
        self.leak_interval = leak_interval
        self._lock = threading.RLock()
        self._builds: dict[Hashable, CreateMachine] = {}   # handle: the node id
        self._deletes: dict[Hashable, NodeDeletion] = {}
        self._unattended_deletes: set[str] = set()   # node ids nobody polls
        self.deletions = ServerDeletions(self.machine_context, self._lock)
        self.limits = LimitsReading(self.name, ledger, self.gate, lambda: self.cloud, self.pacer,
                                    pools=lambda: self.config.pools,
                                    shared_quota=shared_quota)
        self.reconciler = ServerReconciler(
            self.machine_context, self.deletions, self.catalog, self,
            pools=lambda: self.config.pools, leak_interval=leak_interval,
            known_nodes=known_nodes, node_claims_server=node_claims_server)
        self.fip_sweep: LeakSweep | None = None
        self.port_sweep: LeakSweep | None = None
        self._configure_sweeps(config)
        self._loop = ProviderLoop(self.name, self._tick, lambda: LOOP_INTERVAL, clock)
        # An answer is acted on at once (a server list that shows a freed
        # instance or an ACTIVE server), not on the next pass.
        self.gate.on_done = self._loop.wake
        ledger.configure_provider(self.name, {
            name: PoolQuota.from_pool(pool) for name, pool in config.pools.items()})

    # -- configuration ------------------------------------------------------------

    @property
    def network_layout(self) -> addressing.NetworkLayout:
        """The cloud's networks by role, per clouds.yaml (see addressing)."""
        nets = self.catalog.items("networks") or []
        settings = self.config.cloud_settings
        policy = settings.addresses if settings else AddressPolicy()
        cached = self._layout
        if cached is None or cached[0] is not nets or cached[1] != policy:
            cached = (nets, policy, addressing.layout(nets, policy))
            self._layout = cached
        return cached[2]

    @property
    def cloud(self) -> OpenStackCloud:
        return self.connection.cloud

    def update_config(self, config: Any) -> None:
        """Config reload: new limits and label settings apply to new builds;
        machines in flight read the launch settings afresh too (a longer
        ``launch-timeout`` helps a slow boot already under way), while the
        label and pool sections they were started with stay theirs."""
        with self._lock:
            if config.cloud_settings != self.config.cloud_settings \
                    or config.cloud != self.config.cloud \
                    or config.region_name != self.config.region_name:
                # A rotated password or a moved endpoint: new calls use a
                # new connection; calls in flight finish on the old one.
                log.info("%s: cloud settings changed; reconnecting", self.name)
                self.connection.reconnect_wanted = True
            self.config = config
            self._settings = LaunchSettings.from_config(config)
            self.cloud_name = self._settings.cloud_name
            self.region_name = self._settings.region_name
            self.planner.cloud_name = self.cloud_name
            self.gate.set_rates(config.rate, config.read_rate)
            self._configure_sweeps(config)
            self.ledger.configure_provider(self.name, {
                name: PoolQuota.from_pool(pool) for name, pool in config.pools.items()})

    def _configure_sweeps(self, config: Any) -> None:
        """Leaked floating IPs every leak interval, DOWN ports every
        ``port-cleanup-interval``; a sweep that stays configured keeps its
        samples across a reload."""
        if getattr(config, "clean_floating_ips", False):
            if self.fip_sweep is None:
                self.fip_sweep = LeakSweep(
                    self.name, "floating_ip", self.gate, self.leak_interval,
                    lambda: self.cloud.list_floating_ips(),
                    lambda fip_id: self.cloud.delete_floating_ip(fip_id),
                    self.floating_ips.leaked, self.clock)
        else:
            self.fip_sweep = None
        interval = getattr(config, "port_cleanup_interval", 0) or 0
        if interval > 0:
            if self.port_sweep is None:
                self.port_sweep = LeakSweep(
                    self.name, "port", self.gate, interval,
                    lambda: self.cloud.list_ports(status="DOWN"),
                    lambda port_id: self.cloud.delete_port(port_id),
                    orphan_port_judge(self.servers, self.pacer.awaited), self.clock)
            self.port_sweep.interval = interval
        else:
            self.port_sweep = None

    # -- the loop ----------------------------------------------------------------

    def stop(self, wait: float = 10.0) -> None:
        self._loop.stop(wait)
        self.gate.shutdown(wait=1.0)
        self.connection.close()

    def _tick(self) -> None:
        """One pass: never blocks, safe to repeat."""
        with self._lock:
            if not self.connection.tick():
                return
            if self.api_share is not None:
                self.gate.set_share(self.api_share())
            if self.shared_quota is not None:
                if self.shared_quota.look_again():
                    self.pacer.awaited()
                if self.shared_quota.reading_doubtful():
                    self.ledger.reading_doubtful(self.name)
            self.pacer.look_for_gone()
            if self.servers.tick():
                self.reconciler.reconcile()
                self.pacer.list_arrived()
            self.ports.tick()
            self.catalog.tick()
            self.limits.tick()
            self.floating_ips.tick()
            self.pacer.begin_pass()
            ended = 0
            for machine in list(self._builds.values()):
                was_done = machine.done
                try:
                    machine.advance()
                except Exception as e:  # one node must not stop the others
                    log.exception("%s: node %s: machine error", self.name, machine.spec.node_id)
                    machine.fail(f"internal error: {e}")
                ended += machine.done and not was_done
            if ended and self.build_progress is not None:
                self.build_progress()
            self.pacer.look_for_ready()
            for deletion in list(self._deletes.values()):
                try:
                    deletion.advance()
                except Exception:  # one node must not stop the others
                    log.exception("%s: node %s: deletion error", self.name,
                                  deletion.spec.node_id)
            for node_id in list(self._unattended_deletes):
                deletion = self._deletes.get(node_id)
                if deletion is None or deletion.done:
                    self._deletes.pop(node_id, None)
                    self._unattended_deletes.discard(node_id)
            for d in list(self.deletions.active):
                try:
                    d.advance()
                except Exception:
                    log.exception("%s: deleting server %s failed", self.name, d.server_id)
            self.pacer.end_pass()
            finished = self.deletions.drop_done()
            self.quota.tell_shared_quota(finished)
            self.reconciler.clean_leaks()
            for sweep in (self.fip_sweep, self.port_sweep):
                if sweep is not None and self.leak_cleaner():
                    sweep.tick()

    def _needs_second_look(self, last_seen: dict) -> bool:
        """Whether a server missing from one list may still exist (a down
        cell hides it).  One last seen being deleted, or whose delete nova
        accepted from us, has gone as expected: waiting for a second list
        would keep its quota (and the retry of an ERROR boot) for a list
        interval more."""
        if srv.is_deleting(last_seen):
            return False
        return not self.deletions.delete_sent(last_seen.get("id"))

    def cloud_project(self) -> dict | None:
        """The cloud project this provider's calls go to (auth URL, project
        id, region; ``{}`` if its token names none); None until connected.
        Changes only when a new connection replaces the old one."""
        return self.connection.project()

    def cleans_leaks_of(self, provider_name: Any) -> bool:
        """Does this provider's leak cleaning cover servers tagged with this
        provider name?  Its own always; with several launchers on the
        project, the launcher says which others (see clean_leaks)."""
        if provider_name == self.name:
            return True
        return isinstance(provider_name, str) and self.cleans_servers_of is not None \
            and self.cleans_servers_of(provider_name)

    def leak_cleaner(self) -> bool:
        """Only one launcher per cloud project looks for leaks (elected)."""
        return self.is_leak_cleaner is None or self.is_leak_cleaner()

    def build_server_ids(self) -> set[str]:
        """The servers the create machines follow (for the reconciler)."""
        return {m.server_id for m in self._builds.values() if m.server_id}

    def nodes_in_work(self) -> set[Hashable]:
        """The nodes being built or deleted (for the reconciler)."""
        return set(self._builds) | set(self._deletes)

    def _list_servers(self) -> list[dict]:
        return self.cloud.list_servers()

    def unavailable_images(self, labels: Sequence[str], pool: str | None = None) -> list[str]:
        """The diskimages of these labels (in ``pool``) that have no READY
        upload for this provider now: upstream's launcher declines a
        request for them, so that a provider that has one may serve it."""
        missing = []
        for name in labels:
            found = self._find_label(name, pool)
            disk = getattr(found[1], "diskimage", None) if found else None
            if disk is not None and self.planner.newest_upload(disk.name) is None:
                missing.append(disk.name)
        return missing

    def launch_concurrency(self) -> LaunchConcurrency:
        """``max-concurrency`` and the builds in progress in every pool: the
        pools take no new request at the limit (a negative limit: none)."""
        limit = self.config.max_concurrency
        with self._lock:
            busy = sum(1 for m in self._builds.values() if not m.done)
        return LaunchConcurrency(limit if limit is not None and limit >= 0 else None, busy)

    # -- NodeBuilder --------------------------------------------------------------

    def capacity(self, labels: Sequence[str], pool: str | None = None) -> Capacity:
        """Quick, in-memory: would one server per label be granted now in
        ``pool`` (the pool serving the request)?"""
        with self._lock:
            plans = []
            for name in labels:
                found = self._find_label(name, pool)
                if found is None:
                    return Capacity.NEVER
                label_pool, label = found
                plan, _, final = self.planner.plan(label, label_pool)
                if plan is None:
                    return Capacity.NEVER if final else Capacity.WAIT
                plans.append((label_pool, plan))
            return self.quota.capacity(plans)

    def tenant_capacity(self, tenant: str | None, labels: Sequence[str],
                        pool: str | None = None) -> Capacity:
        """The tenant's limits, for a whole request at once.  A label this
        provider cannot plan yet (flavors not read) makes it WAIT: its cost
        is unknown, and accepting the request now would bypass the limit;
        labels it will never plan are left to ``capacity``."""
        if not tenant or not self.ledger.limits_tenant(tenant):
            return Capacity.AVAILABLE
        with self._lock:
            total = Resources()
            for name in labels:
                found = self._find_label(name, pool)
                if found is None:
                    continue
                plan, _, final = self.planner.plan(found[1], found[0])
                if plan is None:
                    if not final:
                        return Capacity.WAIT
                    continue
                total = total + plan.cost
        return self.quota.tenant_capacity(tenant, total)

    def _find_label(self, name: str, pool_name: str | None = None):
        """(pool, label) of the pool being served, or of the first pool
        offering the label when none is named."""
        pools = self.config.pools
        candidates = [pools[pool_name]] if pool_name in pools else \
            ([] if pool_name is not None else list(pools.values()))
        for pool in candidates:
            if name in pool.labels:
                return pool, pool.labels[name]
        return None

    def start_build(self, spec: BuildSpec) -> Hashable:
        with self._lock:
            existing = self._builds.get(spec.node_id)
            if existing is not None and not existing.done:
                return spec.node_id
            pool = self.config.pools.get(spec.pool_name)
            label = pool.labels.get(spec.label) if pool else None
            if label is None:
                raise ValueError(f"provider {self.name} pool {spec.pool_name} has no label "
                                 f"{spec.label}")
            machine = CreateMachine(self.machine_context, self.planner, self.deletions, spec,
                                    pool, label)
            self._builds[spec.node_id] = machine
            # Reserve right away so the next capacity() check sees it.
            machine.advance()
            if machine.step is Step.RESERVE:
                machine.advance()
            return spec.node_id

    def poll_build(self, handle: Hashable) -> BuildStatus:
        with self._lock:
            machine = self._builds.get(handle)
            if machine is None:
                return BuildStatus(BuildState.FAILED, reason="unknown build (launcher restarted?)")
            info = NodeInfo(**machine.info())
            # A finished machine stays until forget_build: the handler may
            # fail to store the result and ask again.
            if machine.step is Step.READY:
                return BuildStatus(BuildState.READY, info)
            if machine.step is Step.FAILED:
                return BuildStatus(BuildState.FAILED, info, machine.reason)
            return BuildStatus(BuildState.BUILDING, info, machine.reason)

    def forget_build(self, handle: Hashable) -> None:
        with self._lock:
            machine = self._builds.get(handle)
            if machine is not None and machine.done:
                del self._builds[handle]

    def cancel_build(self, handle: Hashable, spec: DeleteSpec) -> None:
        """The node's znode is gone: stop the machine and delete every server
        of the node; nobody polls this deletion, the loop drops it when done."""
        with self._lock:
            if spec.node_id in self._deletes:
                # A deletion of the node (the reaper's) already stopped the
                # build; whoever started it polls it to its end.
                return
            self.start_delete(spec)
            self._unattended_deletes.add(spec.node_id)

    def start_delete(self, spec: DeleteSpec) -> Hashable:
        with self._lock:
            self._unattended_deletes.discard(spec.node_id)
            if spec.node_id in self._deletes:
                return spec.node_id
            machine = self._builds.pop(spec.node_id, None)
            if machine is not None and not machine.done:
                machine.cancel()
            self._deletes[spec.node_id] = NodeDeletion(self.machine_context, self.deletions,
                                                       spec)
            self._loop.wake()
            return spec.node_id

    def poll_delete(self, handle: Hashable) -> DeleteStatus:
        with self._lock:
            deletion = self._deletes.get(handle)
            if deletion is None:
                return DeleteStatus(DeleteState.FAILED, "unknown delete")
            status = deletion.status()
            if status.state is DeleteState.DONE:
                self._deletes.pop(handle, None)
            return status

    def availability_zones(self) -> list[str]:
        """The zones nova lists as available (empty until read, or when the
        cloud does not let us list them)."""
        return [z for z in self.catalog.items("availability_zones") or [] if z]

    # -- for operators -----------------------------------------------------------------

    def metrics(self) -> ProviderMetrics:
        fip, port = self.fip_sweep, self.port_sweep
        return ProviderMetrics(
            quota_errors=self.counters.get("quota_errors", 0),
            leaks_deleted={"instances": self.counters.get("leaks_deleted", 0),
                           "floatingips": fip.deleted if fip is not None else 0,
                           "ports": port.deleted if port is not None else 0},
            api_calls=self.gate.stats(), api_budget=self.gate.budget())

    def status(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "cloud": self.cloud_name,
                "connected": self.connection.connected,
                "server_list": self.servers.status(),
                "catalog": self.catalog.status(),
                "api_calls": self.gate.stats(),
                "api_in_flight": self.gate.in_flight(),
                "api_budget": self.gate.budget(),
                # Several launchers on the project: is this one its cleaner?
                "leak_cleaner": self.leak_cleaner(),
                "delete_durations": self.pacer.delete_durations.describe(),
                "boot_durations": self.pacer.boot_durations.describe(),
                "builds": [m.describe() for m in self._builds.values()],
                "deletes": self.deletions.describe(),
                "counters": dict(self.counters),
                "cleanup": {"floating_ips": self.fip_sweep and self.fip_sweep.status(),
                            "ports": self.port_sweep and self.port_sweep.status()},
                "quota": self.ledger.describe(self.name)["providers"].get(self.name),
            }
