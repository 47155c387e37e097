"""The provider's view of its servers held against nova's list.

``ServerReconciler`` does two things on the provider's loop:

* ``reconcile()``, after every new server list: servers of ours the quota
  ledger does not know (a restart, another process) are adopted, adopted
  ones that nova dropped are released; it also keeps the map from server id
  to ledger key that a delete by external id needs.
* ``clean_leaks()``, every leak interval: servers carrying this provider's
  metadata whose node is gone from ZooKeeper (or that a node no longer
  owns) are deleted once seen leaked on two passes in a row and confirmed
  by a fresh look at the node.  With several launchers on one cloud project
  only the elected cleaner looks, at every node's server of the project
  that carries a provider name of the project's launchers (one provider of
  the cleaner per foreign name, see ``cleans_leaks_of``), and a server another live
  launcher holds a claim for in the shared quota book is never a leak.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable, Mapping, Protocol

from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.catalog import CloudCatalog
from nodepool.driver.openstack.context import MachineContext
from nodepool.driver.openstack.deletion import ServerDeletions
from nodepool.quota import EntryState, Resources

log = logging.getLogger("nodepool.openstack.provider")


class LeakScope(Protocol):
    """What the reconciler asks its provider (``OpenStackProvider``)."""

    def leak_cleaner(self) -> bool:
        """Whether this launcher cleans the cloud project's leaks now."""
        ...

    def cleans_leaks_of(self, provider_name: Any) -> bool:
        """Whether servers tagged with this provider name are ours to clean."""
        ...

    def build_server_ids(self) -> set[str]:
        """The servers the create machines follow."""
        ...

    def nodes_in_work(self) -> set[Hashable]:
        """The nodes being built or deleted."""
        ...


class ServerReconciler:
    def __init__(self, ctx: MachineContext, deletions: ServerDeletions,
                 catalog: CloudCatalog, scope: LeakScope, *,
                 pools: Callable[[], Mapping[str, Any]], leak_interval: float,
                 known_nodes: Callable[[], dict[str, str | None] | None] | None = None,
                 node_claims_server: Callable[[str, str], bool | None] | None = None):
        self.ctx = ctx
        self.deletions = deletions
        self.catalog = catalog
        self.scope = scope
        self.pools = pools
        self.leak_interval = leak_interval
        # node id -> its server id (None: not known yet), from ZooKeeper.
        self.known_nodes = known_nodes
        # A fresh look at one node before its server is deleted as leaked:
        # True (keep it), False (leaked) or None (cannot tell now).
        self.node_claims_server = node_claims_server
        self.leak_suspects: set[str] = set()
        self.last_leak_pass: float | None = None
        self._adopted: dict[str, str] = {}     # ledger key -> server id
        # Which ledger key each server of ours holds (shared with the quota
        # broker, which the machines tell of the servers they create).
        self.server_keys = ctx.quota.server_keys

    # -- the ledger from the list -------------------------------------------------

    def reconcile(self) -> None:
        """Keep the ledger level-triggered from the list."""
        name, ledger = self.ctx.name, self.ctx.quota.ledger
        snap = self.ctx.servers.snapshot
        known_keys = ledger.keys(name)
        flavors = {f.get("id"): f for f in self.catalog.items("flavors") or []}
        listed: set[str] = set()
        shared = self.ctx.quota.shared_quota
        if shared is not None:
            # Every nodepool server of the project, whichever launcher's:
            # evidence for the shared book that nova still counted it.
            shared.listed((srv.ledger_key(m) for s in snap.items.values()
                           if (m := s.get("metadata") or {}).get(srv.META_NODE)),
                          snap.requested_at)
        for server in snap.items.values():
            meta = server.get("metadata") or {}
            if meta.get(srv.META_PROVIDER) != name:
                continue
            key = srv.ledger_key(meta)
            listed.add(key)
            self.server_keys.remember(server["id"], key, since=snap.requested_at)
            if key in known_keys:
                # Still listed after a limits read started: once gone, its
                # quota is free before the next reading (ledger.server_gone).
                ledger.note_listed(key, snap.requested_at)
                continue
            if meta.get(srv.META_POOL) not in self.pools():
                continue
            if shared is not None and shared.claimed_elsewhere(key):
                # Another live launcher's server: the shared book counts it
                # (adopting it would count it as in flight until our next
                # limits reading).  Adopted once its launcher is gone.
                continue
            # From microversion 2.47 nova embeds the flavor (no id).
            listed_flavor = server.get("flavor") or {}
            flavor = listed_flavor if "vcpus" in listed_flavor else \
                flavors.get(listed_flavor.get("id")) or {}
            cost = Resources(1, int(flavor.get("vcpus") or 0), int(flavor.get("ram") or 0))
            ledger.adopt(key, provider=name, pool=meta[srv.META_POOL], cost=cost,
                           tenant=meta.get(srv.META_TENANT),
                           server_id=server["id"], deleting=srv.is_deleting(server))
            self._adopted[key] = server["id"]
        for key in list(self._adopted):
            if key not in listed:
                ledger.server_gone(key)
                del self._adopted[key]
        self._release_servers_deleted_elsewhere(snap, listed)
        self.server_keys.keep_only(ledger.keys(name))

    def _release_servers_deleted_elsewhere(self, snap, listed: set[str]) -> None:
        """A server of ours that no machine or deletion of ours follows any
        more (its node was handed over) and that a list requested after we
        knew it no longer shows was deleted by someone else: another
        launcher serving the same provider deleted its node, or an operator.
        Its ledger entry would otherwise count for ever (and, with several
        launchers, hold a claim in the shared book)."""
        ledger = self.ctx.quota.ledger
        followed = self.scope.build_server_ids() | self.deletions.server_ids()
        for server_id, key in self.server_keys.items():
            if key in listed or server_id in followed or key in self._adopted:
                continue
            if snap.requested_at <= self.server_keys.known_since(server_id):
                continue
            if ledger.entry_state(key) in (EntryState.CREATED, EntryState.DELETING):
                log.info("%s: server %s is gone (deleted elsewhere); its quota is free",
                         self.ctx.name, server_id)
                ledger.server_gone(key)

    # -- leaked servers ------------------------------------------------------------

    def clean_leaks(self) -> None:
        if self.known_nodes is None or not self.scope.leak_cleaner():
            return  # another launcher cleans this cloud project
        name, shared = self.ctx.name, self.ctx.quota.shared_quota
        now = self.ctx.clock()
        if self.last_leak_pass is not None and now - self.last_leak_pass < self.leak_interval:
            return
        snap = self.ctx.servers.snapshot
        if snap.received_at <= (self.last_leak_pass or float("-inf")):
            return
        nodes = self.known_nodes()
        if nodes is None:
            return  # ZooKeeper's view is not ready: never guess
        self.last_leak_pass = now
        tracked = self.scope.build_server_ids() | self.deletions.server_ids()
        building_nodes = self.scope.nodes_in_work()
        suspects = set()
        for server in snap.items.values():
            meta = server.get("metadata") or {}
            node_id = meta.get(srv.META_NODE)
            if server["id"] in tracked or not self.scope.cleans_leaks_of(
                    meta.get(srv.META_PROVIDER)):
                continue
            if meta.get(srv.META_PROVIDER) != name and not node_id:
                continue   # another provider's, not a node's: not ours to judge
            if node_id in building_nodes:
                continue
            if shared is not None and shared.claimed_elsewhere(srv.ledger_key(meta)):
                continue   # a live launcher's create: its server, not a leak
            if node_id in nodes and nodes[node_id] in (None, server["id"]):
                continue
            suspects.add(server["id"])
        for server_id in suspects & self.leak_suspects:
            server = snap.get(server_id) or {}
            meta = server.get("metadata") or {}
            if self.node_claims_server is not None:
                # The listing may be stale or may have left out a record it
                # could not read; the server may be in use by a job.
                claimed = self.node_claims_server(meta.get(srv.META_NODE), server_id)
                if claimed is not False:
                    if claimed:
                        log.info("%s: server %s is not leaked: node %s still claims it",
                                 name, server_id, meta.get(srv.META_NODE))
                    suspects.discard(server_id)
                    continue
            log.warning("%s: deleting leaked server %s (node %s)", name, server_id,
                        meta.get(srv.META_NODE))
            self.ctx.reporter.count_leak_deleted()
            self.deletions.delete(server_id, key=srv.ledger_key(meta),
                                  node_id=meta.get(srv.META_NODE), attempt=None, since=now)
        self.leak_suspects = suspects
