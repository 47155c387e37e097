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
from typing import TYPE_CHECKING

from nodepool.driver.openstack import servers as srv
from nodepool.quota import EntryState, Resources

if TYPE_CHECKING:
    from nodepool.driver.openstack.provider import OpenStackProvider

log = logging.getLogger("nodepool.openstack.provider")


class ServerReconciler:
    def __init__(self, provider: "OpenStackProvider"):
        self.provider = provider
        self.leak_suspects: set[str] = set()
        self.last_leak_pass: float | None = None
        self._adopted: dict[str, str] = {}     # ledger key -> server id
        # server id -> ledger key, for every server of ours seen or created
        # while its ledger entry lives: a delete by external id must release
        # the entry even when nova has already dropped the server.
        self._keys_by_server: dict[str, str] = {}
        # server id -> when we first knew it existed (provider clock): a
        # list requested later that lacks it shows it gone.
        self._known_since: dict[str, float] = {}

    # -- server id <-> ledger key ------------------------------------------------

    def remember_server(self, server_id: str | None, key: str | None) -> None:
        if server_id and key:
            self._keys_by_server[server_id] = key
            self._known_since.setdefault(server_id, self.provider.clock())

    def key_for_server(self, server_id: str | None) -> str | None:
        return self._keys_by_server.get(server_id) if server_id else None

    def forget_server(self, server_id: str | None) -> None:
        if server_id:
            self._keys_by_server.pop(server_id, None)
            self._known_since.pop(server_id, None)

    # -- the ledger from the list -------------------------------------------------

    def reconcile(self) -> None:
        """Keep the ledger level-triggered from the list."""
        p = self.provider
        snap = p.servers.snapshot
        known_keys = p.ledger.keys(p.name)
        flavors = {f.get("id"): f for f in p.catalog.items("flavors") or []}
        listed: set[str] = set()
        shared = p.shared_quota
        if shared is not None:
            # Every nodepool server of the project, whichever launcher's:
            # evidence for the shared book that nova still counted it.
            shared.listed((srv.ledger_key(m) for s in snap.items.values()
                           if (m := s.get("metadata") or {}).get(srv.META_NODE)),
                          snap.requested_at)
        for server in snap.items.values():
            meta = server.get("metadata") or {}
            if meta.get(srv.META_PROVIDER) != p.name:
                continue
            key = srv.ledger_key(meta)
            listed.add(key)
            self._keys_by_server[server["id"]] = key
            self._known_since.setdefault(server["id"], snap.requested_at)
            if key in known_keys:
                # Still listed after a limits read started: once gone, its
                # quota is free before the next reading (ledger.server_gone).
                p.ledger.note_listed(key, snap.requested_at)
                continue
            if meta.get(srv.META_POOL) not in p.config.pools:
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
            p.ledger.adopt(key, provider=p.name, pool=meta[srv.META_POOL], cost=cost,
                           tenant=meta.get(srv.META_TENANT),
                           server_id=server["id"], deleting=srv.is_deleting(server))
            self._adopted[key] = server["id"]
        for key in list(self._adopted):
            if key not in listed:
                p.ledger.server_gone(key)
                del self._adopted[key]
        self._release_servers_deleted_elsewhere(snap, listed)
        live = p.ledger.keys(p.name)
        for server_id, key in list(self._keys_by_server.items()):
            if key not in live:
                del self._keys_by_server[server_id]
                self._known_since.pop(server_id, None)

    def _release_servers_deleted_elsewhere(self, snap, listed: set[str]) -> None:
        """A server of ours that no machine or deletion of ours follows any
        more (its node was handed over) and that a list requested after we
        knew it no longer shows was deleted by someone else: another
        launcher serving the same provider deleted its node, or an operator.
        Its ledger entry would otherwise count for ever (and, with several
        launchers, hold a claim in the shared book)."""
        p = self.provider
        followed = {m.server_id for m in p._builds.values() if m.server_id}
        followed |= {d.server_id for d in p._server_deletions if d.server_id}
        for server_id, key in list(self._keys_by_server.items()):
            if key in listed or server_id in followed or key in self._adopted:
                continue
            if snap.requested_at <= self._known_since.get(server_id, float("inf")):
                continue
            if p.ledger.entry_state(key) in (EntryState.CREATED, EntryState.DELETING):
                log.info("%s: server %s is gone (deleted elsewhere); its quota is free",
                         p.name, server_id)
                p.ledger.server_gone(key)

    # -- leaked servers ------------------------------------------------------------

    def clean_leaks(self) -> None:
        p = self.provider
        if p.known_nodes is None or not p.leak_cleaner():
            return  # another launcher cleans this cloud project
        now = p.clock()
        if self.last_leak_pass is not None and now - self.last_leak_pass < p.leak_interval:
            return
        snap = p.servers.snapshot
        if snap.received_at <= (self.last_leak_pass or float("-inf")):
            return
        nodes = p.known_nodes()
        if nodes is None:
            return  # ZooKeeper's view is not ready: never guess
        self.last_leak_pass = now
        tracked = {m.server_id for m in p._builds.values() if m.server_id}
        tracked |= {d.server_id for d in p._server_deletions if d.server_id}
        building_nodes = set(p._builds) | set(p._deletes)
        suspects = set()
        for server in snap.items.values():
            meta = server.get("metadata") or {}
            node_id = meta.get(srv.META_NODE)
            if server["id"] in tracked or not p.cleans_leaks_of(meta.get(srv.META_PROVIDER)):
                continue
            if meta.get(srv.META_PROVIDER) != p.name and not node_id:
                continue   # another provider's, not a node's: not ours to judge
            if node_id in building_nodes:
                continue
            if p.shared_quota is not None and \
                    p.shared_quota.claimed_elsewhere(srv.ledger_key(meta)):
                continue   # a live launcher's create: its server, not a leak
            if node_id in nodes and nodes[node_id] in (None, server["id"]):
                continue
            suspects.add(server["id"])
        for server_id in suspects & self.leak_suspects:
            server = snap.get(server_id) or {}
            meta = server.get("metadata") or {}
            if p.node_claims_server is not None:
                # The listing may be stale or may have left out a record it
                # could not read; the server may be in use by a job.
                claimed = p.node_claims_server(meta.get(srv.META_NODE), server_id)
                if claimed is not False:
                    if claimed:
                        log.info("%s: server %s is not leaked: node %s still claims it",
                                 p.name, server_id, meta.get(srv.META_NODE))
                    suspects.discard(server_id)
                    continue
            log.warning("%s: deleting leaked server %s (node %s)", p.name, server_id,
                        meta.get(srv.META_NODE))
            p.counters["leaks_deleted"] += 1
            p.delete_server(server_id, key=srv.ledger_key(meta),
                            node_id=meta.get(srv.META_NODE), attempt=None, since=now)
        self.leak_suspects = suspects
