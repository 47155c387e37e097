"""One OpenStack provider: its gate, shared server list, machines and loop.

The provider implements the request handler's ``NodeBuilder`` interface.
Pool workers call it from their threads (``capacity``, ``start_*``,
``poll_*``: quick, in-memory); one provider thread runs ``tick()``, which
moves every machine a step and keeps the server list, the catalog and the
cloud's limits current.  Nothing here imports the ZooKeeper layer: what the
leak cleaner needs to know about nodes comes through ``known_nodes``.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Hashable, Sequence

from nodepool.driver.openstack import errors
from nodepool.config.model import AddressPolicy
from nodepool.driver.base import ProviderMetrics
from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.loop import LoopedProvider, ProviderLoop
from nodepool.driver.openstack import addressing
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.catalog import (CloudCatalog, describe_flavor_choice,
                                               pick_flavor)
from nodepool.driver.openstack.cloud import OpenStackCloud, connect_to_project
from nodepool.driver.openstack.floating_ips import FloatingIpTracker
from nodepool.driver.openstack.list_pacing import (PORT_LIST_INTERVAL, SERVER_LIST_INTERVAL,
                                                   ListPacer)
from nodepool.driver.openstack.reconcile import ServerReconciler
from nodepool.driver.openstack.machines import (CreateMachine, DeleteStep, LabelPlan,
                                                ServerDeletion, Step)
from nodepool.driver.openstack.network_cleanup import LeakSweep, orphan_port_judge
from nodepool.driver.outcomes import LaunchOutcome
from nodepool.driver.list_cache import ListCache
from nodepool.driver.shared_claims import reserve_shared, shared_reasons
from nodepool.quota import (ZERO, CloudLimits, PoolQuota, QuotaDecision, QuotaLedger,
                            Resources, label_cost)
from nodepool.quota.ledger import STALE_AFTER_DELETE
from nodepool.quota.shared import SharedQuota
from nodepool.zk.image_records import ImageUpload
from nodepool.requests.builder import (BuildSpec, BuildState, BuildStatus,
                                       Capacity, DeleteSpec, DeleteState,
                                       DeleteStatus, LaunchConcurrency, NodeInfo)

log = logging.getLogger("nodepool.openstack.provider")

LOOP_INTERVAL = 0.25
LEAK_INTERVAL = 60.0


class NodeDeletion:
    """Delete every server of one node: its external id, and anything else
    carrying its node id (failed attempts, creates that timed out)."""

    def __init__(self, provider: "OpenStackProvider", spec: DeleteSpec):
        self.provider = provider
        self.spec = spec
        self.started_at = provider.clock()
        self.deletions: dict[str, ServerDeletion] = {}
        self.searched = False
        if spec.external_id:
            self.deletions[spec.external_id] = provider.delete_server(
                spec.external_id, key=None, node_id=spec.node_id, attempt=None,
                since=self.started_at)

    def advance(self) -> None:
        snap = self.provider.servers.snapshot
        if not self.searched:
            if snap.requested_at <= self.started_at:
                # As for the servers' own deletions: hurried only while
                # somebody waits.
                self.provider.pacer.expect_gone(self.started_at)
                return
            for server in snap.by_metadata(**{srv.META_PROVIDER: self.provider.name,
                                              srv.META_NODE: self.spec.node_id}):
                if server["id"] not in self.deletions:
                    meta = server.get("metadata") or {}
                    key = srv.ledger_key(meta, node_id=self.spec.node_id)
                    self.deletions[server["id"]] = self.provider.delete_server(
                        server["id"], key=key, node_id=self.spec.node_id, attempt=None,
                        since=self.started_at)
            self.searched = True

    @property
    def done(self) -> bool:
        return self.searched and all(d.done for d in self.deletions.values())

    def status(self) -> DeleteStatus:
        if self.done:
            return DeleteStatus(DeleteState.DONE)
        reasons = [d.reason for d in self.deletions.values() if d.reason]
        return DeleteStatus(DeleteState.DELETING, "; ".join(reasons) or None)


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
        # (diskimage, provider) -> the newest READY upload by upstream's
        # builder (the launcher's image cache); None: no diskimage is served.
        self.image_upload = image_upload
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
        self._shared_reading: object = None
        self._ledger_keys: frozenset = frozenset()
        # Told how each launch attempt ended (the statsd launch timers).
        self.launch_observer = launch_observer
        self._unservable_logged: set[tuple[str, str, str]] = set()
        self.name = config.name
        self.ledger = ledger
        self.clock = clock
        self.known_nodes = known_nodes
        # A fresh look at one node before its server is deleted as leaked:
        # True (keep it), False (leaked) or None (cannot tell now).
        self.node_claims_server = node_claims_server
        # The tenant's usage this ledger does not see (other launchers').
        self.tenant_usage = tenant_usage
        settings = config.cloud_settings
        self.cloud_name = config.cloud
        self.region_name = config.region_name or (settings.region_name if settings else None)
        api_timeout = settings.api_timeout if settings else 60.0
        # keystoneauth's timeout applies per connect and per read; a slow
        # drip could exceed it, so the gate's deadline has a margin.
        self.gate = ApiGate(self.name, deadline=api_timeout * 2 + 1, rate=config.rate,
                            read_rate=config.read_rate, clock=clock)
        self._cloud = cloud
        self._connect_call: ApiCall | None = None
        self._reconnect = False
        # Replaced connections (when retired), closed once every call that
        # could still use one has ended or been written off by the gate.
        self._retired_clouds: list[tuple[float, OpenStackCloud]] = []
        self.retired_close_after = self.gate.deadline
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
            deletions=lambda: [(d.server_id,
                                d.sent_at if d.step is DeleteStep.WAIT_GONE else None)
                               for d in self._server_deletions])
        self._layout: tuple[Any, AddressPolicy, addressing.NetworkLayout] | None = None
        self.catalog = CloudCatalog(self.gate, {
            "flavors": lambda: self.cloud.list_flavors(),
            "images": lambda: self.cloud.list_images(),
            "networks": lambda: self.cloud.list_networks(),
            "availability_zones": lambda: self.cloud.list_availability_zones(),
        }, clock=clock)
        self.leak_interval = leak_interval
        self._wait_reasons: tuple[str, ...] = ()
        self._lock = threading.RLock()
        self._builds: dict[Hashable, CreateMachine] = {}   # handle: the node id
        self._deletes: dict[Hashable, NodeDeletion] = {}
        self._unattended_deletes: set[str] = set()   # node ids nobody polls
        self._server_deletions: list[ServerDeletion] = []
        self._limits_call: tuple[Any, ApiCall] | None = None
        self.floating_ips = FloatingIpTracker(self.name, self.gate, lambda: self.cloud, clock)
        self.reconciler = ServerReconciler(self)
        self._last_snapshot_seen = float("-inf")
        self.counters = {"launch_failures": 0, "quota_errors": 0, "create_errors": 0,
                         "deletes_completed": 0, "leaks_deleted": 0}
        self.fip_sweep: LeakSweep | None = None
        self.port_sweep: LeakSweep | None = None
        self._configure_sweeps(config)
        self._loop = ProviderLoop(self.name, self._tick, lambda: LOOP_INTERVAL, clock)
        # An answer is acted on at once (a server list that shows a freed
        # instance or an ACTIVE server), not on the next pass.
        self.gate.on_done = self._loop.wake
        ledger.configure_provider(self.name, {
            name: PoolQuota.from_pool(pool) for name, pool in config.pools.items()})

    # -- configuration the machines read -------------------------------------

    @property
    def hostname_format(self) -> str:
        return self.config.hostname_format

    @property
    def launch_timeout(self) -> float:
        return self.config.launch_timeout

    @property
    def boot_timeout(self) -> float:
        return self.config.boot_timeout

    @property
    def launch_retries(self) -> int:
        return max(1, self.config.launch_retries)

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
        if self._cloud is None:
            raise errors.CloudError(errors.UNAVAILABLE, "not connected yet")
        return self._cloud

    def update_config(self, config: Any) -> None:
        """Config reload: new limits and label settings apply to new builds;
        machines in flight keep the settings they started with."""
        with self._lock:
            if config.cloud_settings != self.config.cloud_settings \
                    or config.cloud != self.config.cloud \
                    or config.region_name != self.config.region_name:
                # A rotated password or a moved endpoint: new calls use a
                # new connection; calls in flight finish on the old one.
                log.info("%s: cloud settings changed; reconnecting", self.name)
                self._reconnect = True
            self.config = config
            self.cloud_name = config.cloud
            settings = config.cloud_settings
            self.region_name = config.region_name or (settings.region_name if settings else None)
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
        for cloud in [self._cloud, *(c for _, c in self._retired_clouds)]:
            if cloud is not None:
                cloud.close()
        self._retired_clouds = []

    def _tick(self) -> None:
        """One pass: never blocks, safe to repeat."""
        with self._lock:
            if self._cloud is None or self._reconnect:
                self._connect()
                if self._cloud is None:
                    return
            if self._retired_clouds:
                self._close_retired()
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
            self._refresh_limits()
            self.floating_ips.tick()
            self.pacer.begin_pass()
            ended = 0
            for machine in list(self._builds.values()):
                was_done = machine.done
                try:
                    machine.advance()
                except Exception as e:  # one node must not stop the others
                    log.exception("%s: node %s: machine error", self.name, machine.spec.node_id)
                    machine._failed(f"internal error: {e}")
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
            for d in list(self._server_deletions):
                try:
                    d.advance()
                except Exception:
                    log.exception("%s: deleting server %s failed", self.name, d.server_id)
            self.pacer.end_pass()
            finished = [d.key for d in self._server_deletions if d.done and d.key]
            self._server_deletions = [d for d in self._server_deletions if not d.done]
            self._tell_shared_quota(finished)
            self.reconciler.clean_leaks()
            for sweep in (self.fip_sweep, self.port_sweep):
                if sweep is not None and self.leak_cleaner():
                    sweep.tick()

    def _connect(self) -> None:
        settings = self.config.cloud_settings
        if self._connect_call is None:
            self._connect_call = self.gate.submit(
                "connect", connect_to_project, self.cloud_name, settings.clouds_file,
                self.region_name)
            return
        if not self._connect_call.done():
            return
        call, self._connect_call = self._connect_call, None
        try:
            cloud = OpenStackCloud(*call.result())
        except Exception as e:  # noqa: BLE001 - retried next pass
            log.error("%s: cannot set up the connection to cloud %s: %s", self.name,
                      self.cloud_name, errors.classify(e))
            return
        if self._cloud is not None and self._cloud is not cloud:
            # Calls in flight may still use it; closed after the gate's deadline.
            self._retired_clouds.append((self.clock(), self._cloud))
        self._cloud = cloud
        self._reconnect = False

    def _needs_second_look(self, last_seen: dict) -> bool:
        """Whether a server missing from one list may still exist (a down
        cell hides it).  One last seen being deleted, or whose delete nova
        accepted from us, has gone as expected: waiting for a second list
        would keep its quota (and the retry of an ERROR boot) for a list
        interval more."""
        if srv.is_deleting(last_seen):
            return False
        server_id = last_seen.get("id")
        return not any(d.server_id == server_id and d.sent_at is not None
                       for d in self._server_deletions)

    def _close_retired(self) -> None:
        now = self.clock()
        keep = []
        for retired_at, cloud in self._retired_clouds:
            if now - retired_at > self.retired_close_after:
                cloud.close()
            else:
                keep.append((retired_at, cloud))
        self._retired_clouds = keep

    def _tell_shared_quota(self, deleted: list[str]) -> None:
        """Attempts that left the ledger this pass, and servers we saw gone
        after deleting them (perhaps another launcher's): their claims are
        stale."""
        if self.shared_quota is None:
            return
        keys = self.ledger.keys(self.name)
        gone = set(self._ledger_keys - keys) | set(deleted)
        self._ledger_keys = keys
        if gone:
            self.shared_quota.servers_gone(frozenset(k for k in gone if isinstance(k, str)))

    def cloud_project(self) -> dict | None:
        """The cloud project this provider's calls go to (auth URL, project
        id, region; ``{}`` if its token names none); None until connected.
        Changes only when a new connection replaces the old one."""
        cloud = self._cloud
        if cloud is None:
            return None
        return cloud.project if cloud.project is not None else {}

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

    def _list_servers(self) -> list[dict]:
        return self.cloud.list_servers()

    # -- quota ------------------------------------------------------------------------

    def _refresh_limits(self) -> None:
        if self._limits_call is not None:
            token, call = self._limits_call
            if not call.done():
                return
            self._limits_call = None
            try:
                compute, volume = call.result()
                applied = self.ledger.apply_limits(token, CloudLimits.from_api(
                    compute, volume, read_at=token.started_at))
            except Exception as e:  # noqa: BLE001 - the previous reading stays
                self.ledger.limits_read_failed(token, str(errors.classify(e)))
                return
            if applied:
                if self.shared_quota is not None:
                    self.shared_quota.reading_applied(self._shared_reading)
                self.pacer.reading_applied(
                    lambda: self.shared_quota is not None and self.shared_quota.others_covered())
            return
        due = self.ledger.limits_refresh_due(self.name)
        if due == STALE_AFTER_DELETE and not self.pacer.quota_waiting():
            # The reading over-counts a gone server: harmless until a
            # request needs the headroom (then it is read right away).
            return
        if due:
            token = self.ledger.begin_limits_read(self.name)
            if self.shared_quota is not None:
                # The claims owned now are servers nova will count.
                self._shared_reading = self.shared_quota.reading_started()
            self._limits_call = (token, self.gate.submit("compute.get_limits",
                                                         self._read_limits))

    def _read_limits(self) -> tuple[dict, dict | None]:
        compute = self.cloud.get_compute_limits()
        volume = self.cloud.get_volume_limits() if self._uses_volumes() else None
        return compute, volume

    def _uses_volumes(self) -> bool:
        return any(label.boot_from_volume for pool in self.config.pools.values()
                   for label in pool.labels.values())

    def plan_label(self, label: Any, pool: Any) -> tuple[LabelPlan | None, str | None, bool]:
        """(plan, problem, final): final when the catalog is fresh and still
        lacks what the label needs (a config problem, not a wait)."""
        if not self.catalog.loaded("flavors", "images", "networks"):
            return None, "reading flavors, images and networks", False
        image_cfg = label.cloud_image
        upload = None
        diskimage = getattr(label, "diskimage", None)
        if diskimage is not None:
            # Chosen now, once per build: should the builder delete this
            # upload while the server boots, the build goes on with it.
            upload = self._newest_upload(diskimage.name)
            if upload is None:
                return None, (f"diskimage {diskimage.name} has no READY upload for provider "
                              f"{self.name}"), True
        flavor = pick_flavor(self.catalog.items("flavors"), name=label.flavor_name,
                             min_ram=label.min_ram)
        if upload is not None:
            # Booted by its id, as upstream does: no search of the catalog.
            image: Any = {"id": upload.external_id,
                          "name": upload.external_name or upload.external_id}
        else:
            image = srv.pick_image(self.catalog.items("images"), image_id=image_cfg.image_id,
                                   image_name=image_cfg.image_name,
                                   fallback_name=image_cfg.name)
        nets = []
        missing = []
        # Each miss is noted (so its list is re-read) before deciding whether
        # it is final: only a list read after the miss can say it is.
        settled = True
        for ref in label.networks:
            net = srv.pick_network(self.catalog.items("networks"), ref)
            if net is None:
                missing.append(f"network {ref!r}")
            else:
                nets.append(net["id"])
        if len(nets) < len(label.networks):
            settled = self.catalog.missed("networks") and settled
        if flavor is None:
            missing.append(describe_flavor_choice(label.flavor_name, label.min_ram))
            settled = self.catalog.missed("flavors") and settled
        if image is None:
            missing.append(f"image {image_cfg.reference!r}")
            settled = self.catalog.missed("images") and settled
        if missing:
            if not settled:
                return None, f"cloud has no {', '.join(missing)} (re-reading)", False
            problem = f"cloud {self.cloud_name} has no {', '.join(missing)}"
            self._log_unservable(label, pool, problem)
            return None, problem, True
        cost = label_cost(int(flavor.get("vcpus") or 0), int(flavor.get("ram") or 0),
                          boot_from_volume=label.boot_from_volume,
                          volume_size_gb=label.volume_size if label.boot_from_volume else 0)
        return LabelPlan(dict(flavor), dict(image), nets, cost,
                         image_path=upload.path if upload is not None else None), None, False

    def _newest_upload(self, diskimage: str) -> ImageUpload | None:
        if self.image_upload is None:
            return None
        try:
            return self.image_upload(diskimage, self.name)
        except Exception:  # the cache's bug must not stop planning
            log.exception("%s: looking up the uploads of diskimage %s failed", self.name,
                          diskimage)
            return None

    def unavailable_images(self, labels: Sequence[str], pool: str | None = None) -> list[str]:
        """The diskimages of these labels (in ``pool``) that have no READY
        upload for this provider now: upstream's launcher declines a
        request for them, so that a provider that has one may serve it."""
        missing = []
        for name in labels:
            found = self._find_label(name, pool)
            disk = getattr(found[1], "diskimage", None) if found else None
            if disk is not None and self._newest_upload(disk.name) is None:
                missing.append(disk.name)
        return missing

    def _log_unservable(self, label: Any, pool: Any, problem: str) -> None:
        """config-validate cannot see the cloud's catalog, so this is where a
        label that names no existing flavor, image or network is reported:
        once per label and problem, not on every capacity check."""
        key = (pool.name, label.name, problem)
        if key in self._unservable_logged:
            return
        self._unservable_logged.add(key)
        log.error("%s: pool %s: label %s cannot be served: %s; fix the label in "
                  "nodepool.yaml (flavor-name, min-ram, cloud-image, networks)", self.name,
                  pool.name, label.name, problem)

    def reserve(self, key: str, spec: BuildSpec, cost: Resources) -> QuotaDecision:
        elsewhere = ZERO
        if spec.tenant_name and self.tenant_usage is not None \
                and self.ledger.limits_tenant(spec.tenant_name):
            elsewhere = self.tenant_usage(spec.tenant_name)
        decision = self.ledger.try_reserve(key, provider=self.name, pool=spec.pool_name,
                                           cost=cost, tenant=spec.tenant_name,
                                           tenant_usage_elsewhere=elsewhere)
        pool = self.config.pools.get(spec.pool_name)
        return reserve_shared(self.shared_quota, self.ledger, self.name, key, cost, decision,
                              bool(getattr(pool, "ignore_provider_quota", False)))

    def launch_concurrency(self) -> LaunchConcurrency:
        """``max-concurrency`` and the builds in progress in every pool: the
        pools take no new request at the limit (a negative limit: none)."""
        limit = self.config.max_concurrency
        with self._lock:
            busy = sum(1 for m in self._builds.values() if not m.done)
        return LaunchConcurrency(limit if limit is not None and limit >= 0 else None, busy)

    def create_body(self, machine: CreateMachine, name: str) -> dict:
        label, pool, plan = machine.label, machine.pool, machine.plan
        image_cfg = label.cloud_image
        meta = srv.server_metadata(provider=self.name, pool=pool.name,
                                   node_id=machine.spec.node_id, label=machine.spec.label,
                                   image=image_cfg.name, attempt=machine.attempt,
                                   tenant=machine.spec.tenant_name)
        # The request handler chose the zone for all of the request's nodes.
        az = machine.spec.az
        return srv.create_request(
            name=name, flavor_id=plan.flavor["id"], image_id=plan.image["id"], metadata=meta,
            network_ids=plan.network_ids, key_name=label.key_name, userdata=label.userdata,
            availability_zone=az, security_groups=pool.security_groups,
            config_drive=image_cfg.config_drive, boot_from_volume=label.boot_from_volume,
            volume_size=label.volume_size,
            instance_properties=self._instance_properties(label, machine.spec),
            inventory_groups=srv.server_groups(provider=self.name, image=image_cfg.name,
                                               label=machine.spec.label))

    def _instance_properties(self, label: Any, spec: BuildSpec) -> dict:
        """The label's instance-properties plus its dynamic ones, formatted
        with the node request; one that cannot be formatted is left out (the
        node still boots) and logged."""
        props = dict(label.instance_properties)
        dynamic = getattr(label, "dynamic_instance_properties", None) or {}
        if dynamic:
            request = SimpleNamespace(**(spec.request or {}))
            for key, template in dynamic.items():
                try:
                    props[key] = template.format(request=request)
                except Exception as e:  # noqa: BLE001 - data from the request
                    log.warning("%s: node %s: dynamic instance property %s not set: %s: %s",
                                self.name, spec.node_id, key, type(e).__name__, e)
        return props

    def log_console(self, server_id: str, node_id: str) -> None:
        """``console-log``: after a failed SSH check, log the server's
        console; the call goes through the gate and nobody waits for it."""
        def fetch_and_log() -> None:
            try:
                output = self.cloud.get_console_output(server_id)
            except Exception as e:  # noqa: BLE001 - only a diagnostic
                log.warning("%s: node %s: console log of server %s unavailable: %s",
                            self.name, node_id, server_id, errors.classify(e))
                return
            log.info("%s: node %s: console log of server %s:\n%s", self.name, node_id,
                     server_id, output.rstrip() or "(empty)")
        self.gate.submit("compute.get_console_output", fetch_and_log)

    def count_create_error(self, err: errors.CloudError) -> None:
        key = "quota_errors" if err.kind == errors.QUOTA else "create_errors"
        self.counters[key] += 1

    def count_launch_failure(self) -> None:
        self.counters["launch_failures"] += 1

    def report_launch(self, outcome: LaunchOutcome) -> None:
        if self.launch_observer is None:
            return
        try:
            self.launch_observer(outcome)
        except Exception:  # metrics must never fail a launch
            log.debug("%s: reporting a launch outcome failed", self.name, exc_info=True)

    def note_delete_completed(self) -> None:
        self.counters["deletes_completed"] += 1

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
                plan, _, final = self.plan_label(label, label_pool)
                if plan is None:
                    return Capacity.NEVER if final else Capacity.WAIT
                plans.append((label_pool, plan))
            if not plans:
                return Capacity.AVAILABLE
            pool_cfg = plans[0][0]
            total = Resources()
            for _, plan in plans:
                total = total + plan.cost
            if self.ledger.why_never_fits(provider=self.name, pool=pool_cfg.name, cost=total):
                return Capacity.NEVER
            # A trial reservation is the exact, atomic check; give it back.
            probes = []
            try:
                for i, (p, plan) in enumerate(plans):
                    key = ("capacity-probe", id(self), i)
                    decision = self.ledger.try_reserve(key, provider=self.name, pool=p.name,
                                                       cost=plan.cost)
                    if not decision:
                        return self._waiting(decision.reasons)
                    probes.append(key)
                if self.shared_quota is not None and not pool_cfg.ignore_provider_quota:
                    reasons = shared_reasons(self.shared_quota, self.ledger, self.name, None,
                                             total, write=False)
                    if reasons:
                        return self._waiting(reasons)
                self._wait_reasons = ()
                return Capacity.AVAILABLE
            finally:
                for key in probes:
                    self.ledger.release(key)

    def _waiting(self, reasons: Sequence[str]) -> Capacity:
        self.pacer.note_quota_wait()
        if tuple(reasons) != self._wait_reasons and log.isEnabledFor(logging.DEBUG):
            # Once per change: why requests wait (and, with the ledger's
            # figures, what it counts) is what a slow fill comes down to.
            self._wait_reasons = tuple(reasons)
            log.debug("%s: no headroom: %s; ledger: %s", self.name, "; ".join(reasons),
                      self.ledger.estimate(self.name))
        return Capacity.WAIT

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
                plan, _, final = self.plan_label(found[1], found[0])
                if plan is None:
                    if not final:
                        return Capacity.WAIT
                    continue
                total = total + plan.cost
        if not self.ledger.tenant_fits(tenant, total, alone=True):
            return Capacity.NEVER
        elsewhere = self.tenant_usage(tenant) if self.tenant_usage is not None else ZERO
        if self.ledger.tenant_fits(tenant, total, elsewhere):
            return Capacity.AVAILABLE
        # The tenant's servers count until nova stops listing them: a request
        # waiting here waits for deletes too.
        return self._waiting([f"tenant {tenant} is at its resource limits"])

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
            machine = CreateMachine(self, spec, pool, label)
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
            self._deletes[spec.node_id] = NodeDeletion(self, spec)
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

    # -- deleting servers -------------------------------------------------------------

    def delete_server(self, server_id: str | None, *, key: str | None, node_id: str | None,
                      attempt: int | None, since: float,
                      after_call: ApiCall | None = None) -> ServerDeletion:
        with self._lock:
            if server_id is not None:
                for d in self._server_deletions:
                    if d.server_id == server_id:
                        d.key = d.key or key
                        return d
            d = ServerDeletion(self, server_id, key, node_id, attempt, since,
                               after_call=after_call)
            self._server_deletions.append(d)
            return d

    def availability_zones(self) -> list[str]:
        """The zones nova lists as available (empty until read, or when the
        cloud does not let us list them)."""
        return [z for z in self.catalog.items("availability_zones") or [] if z]

    # -- floating IPs we attached (floating_ips.py) -----------------------------

    def note_floating_ip(self, server_id: str | None, address: str | None,
                         fip_id: str | None = None) -> None:
        self.floating_ips.note(server_id, address, fip_id)

    def floating_ips_created_for(self, server_id: str | None) -> list[str]:
        return self.floating_ips.created_for(server_id)

    def delete_floating_ip_by_address(self, address: str) -> None:
        self.floating_ips.delete_by_address(address)

    # -- reconciling with the server list -------------------------------------------

    # -- our servers against nova's list (reconcile.py) --------------------------

    def remember_server(self, server_id: str | None, key: str | None) -> None:
        self.reconciler.remember_server(server_id, key)

    def key_for_server(self, server_id: str | None) -> str | None:
        return self.reconciler.key_for_server(server_id)

    def forget_server(self, server_id: str | None) -> None:
        self.reconciler.forget_server(server_id)

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
                "connected": self._cloud is not None,
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
                "deletes": [d.describe() for d in self._server_deletions],
                "counters": dict(self.counters),
                "cleanup": {"floating_ips": self.fip_sweep and self.fip_sweep.status(),
                            "ports": self.port_sweep and self.port_sweep.status()},
                "quota": self.ledger.describe(self.name)["providers"].get(self.name),
            }
