"""The provider contract: what the launcher, stats and the status API use.

A driver is a package under ``nodepool/driver/`` that offers one provider
class implementing ``LaunchProvider`` below, a config schema and a config
model; ``nodepool.driver.registry`` maps the provider's ``driver:`` value to
those three.  Nothing outside the registry names a concrete driver.

Required and optional members, as the launcher calls them:

Required (the launcher, stats or the status API fail without them)
  * the ``NodeBuilder`` methods (``nodepool.requests.builder``): ``capacity``,
    ``tenant_capacity``, ``start_build``/``poll_build``/``forget_build``/
    ``cancel_build`` and ``start_delete``/``poll_delete``.  All of them are
    quick and in memory: a pool worker calls them on every pass.
  * ``name``: the provider's name in nodepool.yaml.
  * ``start()``/``stop(wait)``: start the provider's own loop, if it has one;
    stop it within ``wait`` seconds.
  * ``update_config(config)``: a reload changed this provider's section; go
    on with the builds and deletes in flight.
  * ``tick_age()``: seconds since the provider's loop last finished a pass
    (None before the first pass); /health reports a loop stuck for long.
  * ``status()``: a JSON-able dict for ``/providers.json`` and dumps, with at
    least ``name`` and ``builds`` (a list of dicts with a ``step``:
    ``"wait-quota"`` marks a build waiting for headroom, shown by /quota).
  * ``metrics()``: totals since start for statsd, as ``ProviderMetrics``.

Optional (looked up with ``getattr``; leave them out when they mean nothing)
  * ``availability_zones() -> list[str]``: the zones the provider offers; the
    request handler picks one for a request whose pool names none.
  * ``standing_nodes() -> list[StandingNode] | None``: nodes that exist
    without being built (static hosts).  The launcher keeps one ``ready``
    node registered per entry, re-registers it after a ``used`` node is
    deleted, and retires unallocated ready nodes of the provider that match
    no entry (a host that stopped answering or left the config); None means
    "not known yet": nothing is registered or retired.  Such a provider
    answers ``capacity`` WAIT (a node comes back) or NEVER, and its deletes
    remove nothing but the record.
  * ``slots_in_use(keys)``: with ``standing_nodes``, the ``StandingNode.key``
    of every slot a node holds now (allocated, in use, used, deleting), so
    the quota views count slots.

Constructor: ``cls(config, ledger, *, known_nodes=None,
node_claims_server=None, tenant_usage=None, launch_observer=None,
**options)`` (plus ``shared_quota``, ``api_share`` and ``is_leak_cleaner``
when the launcher shares the provider's cloud project with other launchers;
a driver without a cloud quota may take them in ``**options`` and ignore
them), where ``config`` is the driver's config model, ``ledger`` the
launcher's ``QuotaLedger`` (register the pools' limits with
``ledger.configure_provider``), and the keyword arguments are the
launcher's views of ZooKeeper as plain callables (see ``LauncherViews``);
``options`` are test and tuning knobs a driver may ignore.

A provider never imports the ZooKeeper layer: what it needs to know about
nodes comes through those callables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from nodepool.driver.outcomes import LaunchOutcome
from nodepool.quota import Resources
from nodepool.quota.shared import SharedQuota
from nodepool.zk.image_records import ImageUpload
from nodepool.requests.builder import (NodeBuilder, StandingNode,  # noqa: F401 - part of the contract
                                       standing_key)


@dataclass(frozen=True)
class ProviderMetrics:
    """Totals since the provider started; statsd sends the increase."""

    # Creates the provider refused for quota (upstream's ``quota.403``).
    quota_errors: int = 0
    # Leaked resources deleted, by upstream's kind: instances, floatingips, ports.
    leaks_deleted: Mapping[str, int] = field(default_factory=dict)
    # API call name -> {"count": n, "total_seconds": s, ...} (the gate's stats).
    api_calls: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The API gate's budget now: {"concurrency_limit": n, "in_flight": m};
    # None for a provider without one.
    api_budget: Mapping[str, Any] | None = None


@runtime_checkable
class LaunchProvider(NodeBuilder, Protocol):
    """One provider of nodepool.yaml, as the launcher drives it."""

    name: str

    def start(self) -> None:
        """Start the provider's loop; return at once."""

    def stop(self, wait: float = 10.0) -> None:
        """Stop the loop and release what the provider holds, within ``wait``."""

    def update_config(self, config: Any) -> None:
        """Take the reloaded config section; builds in flight go on."""

    def tick_age(self) -> float | None:
        """Seconds since the loop last finished a pass; None before the first."""

    def status(self) -> dict:
        """JSON-able state for operators, with ``name`` and ``builds``."""

    def metrics(self) -> ProviderMetrics:
        """Totals since start, for statsd."""


@dataclass(frozen=True)
class LauncherViews:
    """What the launcher lets a provider know about ZooKeeper, as plain
    callables (each may answer None: "cannot tell now")."""

    # node id -> external id of every node, or None when not trustworthy.
    known_nodes: Callable[[], dict[str, str | None] | None] | None = None
    # Fresh read of one node before its resource is deleted as leaked:
    # True (keep it), False (leaked), None (cannot tell now).
    node_claims_server: Callable[[str | None, str], bool | None] | None = None
    # A tenant's usage by other launchers' providers.
    tenant_usage: Callable[[str], Resources] | None = None
    # Told how each launch attempt ended (statsd launch timers).
    launch_observer: Callable[[LaunchOutcome], None] | None = None
    # Several launchers on one cloud project (doc/multiple-launchers.rst),
    # all None when the provider has no cloud project to share:
    # the project's shared quota book (nodepool.quota.shared.SharedQuota);
    shared_quota: SharedQuota | None = None
    # how many launchers serve the project (they split the API budget);
    api_share: Callable[[], int] | None = None
    # whether this launcher is the project's elected leak cleaner;
    is_leak_cleaner: Callable[[], bool] | None = None
    # which other provider names' leaked servers this provider cleans (the
    # project's other launchers' providers, when this launcher cleans).
    cleans_servers_of: Callable[[str], bool] | None = None
    # Called (from the provider's thread, cheaply) when a build ends, so the
    # pools of the provider pass at once.
    build_progress: Callable[[], None] | None = None
    # (diskimage, provider name) -> the newest READY upload by upstream's
    # nodepool-builder, for providers that boot diskimages (their config
    # has ``diskimages``); None when there is none now.
    image_upload: Callable[[str, str], ImageUpload | None] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"known_nodes": self.known_nodes,
                                  "node_claims_server": self.node_claims_server,
                                  "tenant_usage": self.tenant_usage,
                                  "launch_observer": self.launch_observer}
        # Only when set: a driver that predates them need not know them.
        for name in ("shared_quota", "api_share", "is_leak_cleaner", "cleans_servers_of",
                     "build_progress", "image_upload"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs
