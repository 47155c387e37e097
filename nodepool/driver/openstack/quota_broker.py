"""One provider's quota questions: its ledger, the shared claims, and the
ledger keys of servers in flight.

``QuotaBroker`` is what the machines and the ``NodeBuilder`` checks ask:
``reserve`` for a create attempt (the ledger first, then the shared quota
book when other launchers serve the same cloud project), ``capacity`` and
``tenant_capacity`` for a request (trial reservations, given back), and
``server_keys`` for the ledger entry a server's delete must release.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from nodepool.driver.openstack.label_plan import LabelPlan
from nodepool.driver.shared_claims import reserve_shared, shared_reasons
from nodepool.quota import ZERO, QuotaDecision, QuotaLedger, Resources
from nodepool.quota.shared import SharedQuota
from nodepool.requests.builder import BuildSpec, Capacity

log = logging.getLogger("nodepool.openstack.provider")


class ServerKeys:
    """Server id -> ledger key, for every server of ours seen or created
    while its ledger entry lives: a delete by external id must release the
    entry even when nova has already dropped the server.  Also when each
    was first known to exist (provider clock): a list requested later that
    lacks it shows it gone."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._keys: dict[str, str] = {}
        self._known_since: dict[str, float] = {}

    def remember(self, server_id: str | None, key: str | None,
                 since: float | None = None) -> None:
        if server_id and key:
            self._keys[server_id] = key
            self._known_since.setdefault(server_id, self.clock() if since is None else since)

    def key_for(self, server_id: str | None) -> str | None:
        return self._keys.get(server_id) if server_id else None

    def known_since(self, server_id: str) -> float:
        return self._known_since.get(server_id, float("inf"))

    def forget(self, server_id: str | None) -> None:
        if server_id:
            self._keys.pop(server_id, None)
            self._known_since.pop(server_id, None)

    def items(self) -> list[tuple[str, str]]:
        """(server id, ledger key) pairs, a copy (safe to forget while looping)."""
        return list(self._keys.items())

    def keep_only(self, live_keys: Any) -> None:
        """Forget the servers whose ledger entry is gone."""
        for server_id, key in self.items():
            if key not in live_keys:
                self.forget(server_id)


class QuotaBroker:
    def __init__(self, name: str, ledger: QuotaLedger, *,
                 pools: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float],
                 shared_quota: SharedQuota | None = None,
                 tenant_usage: Callable[[str], Resources] | None = None,
                 note_wait: Callable[[], None] = lambda: None):
        self.name = name
        self.ledger = ledger
        # The provider's pools now (a config reload replaces them).
        self.pools = pools
        self.shared_quota = shared_quota
        # The tenant's usage this ledger does not see (other launchers').
        self.tenant_usage = tenant_usage
        # Told whenever a request has to wait for headroom (the list pacing).
        self.note_wait = note_wait
        self.server_keys = ServerKeys(clock)
        self._wait_reasons: tuple[str, ...] = ()
        self._ledger_keys: frozenset = frozenset()

    # -- a create attempt ------------------------------------------------------

    def reserve(self, key: str, spec: BuildSpec, cost: Resources) -> QuotaDecision:
        elsewhere = ZERO
        if spec.tenant_name and self.tenant_usage is not None \
                and self.ledger.limits_tenant(spec.tenant_name):
            elsewhere = self.tenant_usage(spec.tenant_name)
        decision = self.ledger.try_reserve(key, provider=self.name, pool=spec.pool_name,
                                           cost=cost, tenant=spec.tenant_name,
                                           tenant_usage_elsewhere=elsewhere)
        pool = self.pools().get(spec.pool_name)
        return reserve_shared(self.shared_quota, self.ledger, self.name, key, cost, decision,
                              bool(getattr(pool, "ignore_provider_quota", False)))

    def remember_server(self, server_id: str | None, key: str | None) -> None:
        self.server_keys.remember(server_id, key)

    def key_for_server(self, server_id: str | None) -> str | None:
        return self.server_keys.key_for(server_id)

    def forget_server(self, server_id: str | None) -> None:
        self.server_keys.forget(server_id)

    # -- a request's checks ----------------------------------------------------

    def capacity(self, plans: Sequence[tuple[Any, LabelPlan]]) -> Capacity:
        """Would one server per (pool, plan) be granted now?  The pool of the
        first plan is the one serving the request."""
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
                    return self.waiting(decision.reasons)
                probes.append(key)
            if self.shared_quota is not None and not pool_cfg.ignore_provider_quota:
                reasons = shared_reasons(self.shared_quota, self.ledger, self.name, None,
                                         total, write=False)
                if reasons:
                    return self.waiting(reasons)
            self._wait_reasons = ()
            return Capacity.AVAILABLE
        finally:
            for key in probes:
                self.ledger.release(key)

    def tenant_capacity(self, tenant: str, total: Resources) -> Capacity:
        """The tenant's limits, for a whole request costing ``total``."""
        if not self.ledger.tenant_fits(tenant, total, alone=True):
            return Capacity.NEVER
        elsewhere = self.tenant_usage(tenant) if self.tenant_usage is not None else ZERO
        if self.ledger.tenant_fits(tenant, total, elsewhere):
            return Capacity.AVAILABLE
        # The tenant's servers count until nova stops listing them: a request
        # waiting here waits for deletes too.
        return self.waiting([f"tenant {tenant} is at its resource limits"])

    def waiting(self, reasons: Sequence[str]) -> Capacity:
        self.note_wait()
        if tuple(reasons) != self._wait_reasons and log.isEnabledFor(logging.DEBUG):
            # Once per change: why requests wait (and, with the ledger's
            # figures, what it counts) is what a slow fill comes down to.
            self._wait_reasons = tuple(reasons)
            log.debug("%s: no headroom: %s; ledger: %s", self.name, "; ".join(reasons),
                      self.ledger.estimate(self.name))
        return Capacity.WAIT

    # -- the shared quota book -------------------------------------------------

    def tell_shared_quota(self, deleted: list[str]) -> None:
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
