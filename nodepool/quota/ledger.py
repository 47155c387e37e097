"""The quota ledger: one process-wide book of our servers and the clouds' limits.

Every pool worker asks the ledger before a create and tells it about each
step of the server's life; the provider loop feeds it limits readings and what
the server list shows.  One lock covers the whole book, so the check and the
reservation of ``try_reserve`` are a single step for every pool of a provider
and for tenant limits shared across providers.  The work under the lock is a
few sums over this process's servers: far cheaper than any cloud call.

What counts against the cloud (the double-counting rule)
--------------------------------------------------------
A ledger entry exists from the moment a create is reserved until nova no
longer lists the server (a server being deleted, in ERROR, or whose create
timed out still counts).  Each limits reading ``N`` (nova's ``total*Used``)
is tagged with the mark taken when the read *started*.  An entry is
*covered* by that reading when we knew its server existed in nova (the POST
returned 202, or a server list showed it) before the read started: nova
certainly counted it in ``N``.  Every other entry (reserved, POST in flight,
POST timed out and never seen, or accepted after the read started) is *in
flight* relative to the reading and may be missing from ``N``.  Then

    headroom = max − max(N, covered) − in_flight − needed      (per resource)

- ``max(N, covered)``: nova's count already includes the covered entries and
  everything we cannot see (other tools, ERROR ghosts, servers being
  deleted); the ledger only wins if nova's count is behind ours.
- ``in_flight`` is added on top: a server nova accepted after the read
  started would otherwise be missed until the next reading.
- Ambiguous cases err towards counting twice, never zero times: a create
  accepted while the read was in progress may be in ``N`` and is still
  added as in flight, until the next reading covers it.  A server of ours
  that is gone stays in ``N`` until the next reading, unless nova surely
  counted it in ``N`` (we knew it existed before the read started, and a
  server list requested after the reading arrived still showed it, or a
  DELETE sent after then was accepted, so it existed all the while nova
  answered the read): then its
  cost is subtracted from ``N`` at once (``freed``).  A gone server that
  was covered without that proof forces a refresh instead; one that was in
  flight needs neither (``N`` may lack it, and it no longer counts on top).
- Entries leave the ledger only when nova no longer lists the server, so a
  server can never be in neither term.

This never over-estimates headroom unless usage we do not own grows between
readings; the cloud then refuses with a quota error and the provider backs
off (see :mod:`nodepool.quota.backoff`).

Pool limits count this process's entries of the pool in every state; tenant
limits count this process's entries of the tenant on every provider plus
whatever the caller says other launchers use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable, Hashable, Iterable, Mapping

from nodepool.quota.backoff import BackoffPolicy, QuotaBackoff
from nodepool.quota.headroom import check_cost, cloud_headroom, has_room, shortfalls, total
from nodepool.quota.ledger_records import (BACKOFF, CLOUD, LIMITS_UNKNOWN, POOL, TENANT,
                                           EntryState, LedgerEntry, LimitsToken, PoolQuota,
                                           ProviderAccount, ProviderEstimate, QuotaDecision)
from nodepool.quota.ledger_report import describe_provider, figures_by_resource
from nodepool.quota.refresh import RefreshPolicy, limits_refresh_due
from nodepool.quota.resources import ZERO, CloudLimits, Resources

# Why a limits reading is stale (``limits_refresh_due``): one of our servers
# went and the reading may still count it.  Over-counting is the safe side,
# so a provider may wait with this read until requests need the headroom.
STALE_AFTER_DELETE = "delete completed"


class QuotaLedger:
    """Process-wide quota book.  All methods are thread-safe.

    ``clock`` returns seconds (monotonic); ``rng`` returns floats in [0, 1)
    for backoff jitter.  Keys identify one create attempt, e.g.
    ``(node_id, attempt)``, and must be unique across providers.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] | None = None,
                 backoff_policy: BackoffPolicy | None = None,
                 refresh_policy: RefreshPolicy | None = None,
                 tenant_limits: Mapping[str, Resources] | None = None) -> None:
        self._clock = clock
        self._rng = rng
        self._backoff_policy = backoff_policy or BackoffPolicy()
        self.refresh_policy = refresh_policy or RefreshPolicy()
        self._tenant_limits: dict[str, Resources] = dict(tenant_limits or {})
        self._providers: dict[str, ProviderAccount] = {}
        self._entries: dict[Hashable, LedgerEntry] = {}
        self._mark = 0
        self._generation = 0
        self._cond = threading.Condition(threading.Lock())

    # -- configuration ----------------------------------------------------

    def configure_provider(self, name: str, pools: Mapping[str, PoolQuota]) -> None:
        """Add a provider or replace its pools' limits (config reload).
        Limits readings, backoff and entries are kept."""
        with self._cond:
            prov = self._providers.get(name)
            if prov is None:
                self._providers[name] = ProviderAccount(
                    name, dict(pools), QuotaBackoff(self._backoff_policy, self._rng))
            else:
                prov.pools = dict(pools)
            self._changed()

    def limits_tenant(self, tenant: str) -> bool:
        """Whether ``tenant-resource-limits`` names this tenant."""
        with self._cond:
            return tenant in self._tenant_limits

    def set_tenant_limits(self, limits: Mapping[str, Resources]) -> None:
        with self._cond:
            self._tenant_limits = dict(limits)
            self._changed()

    # -- limits readings --------------------------------------------------

    def limits_refresh_due(self, provider: str) -> str | None:
        """Why the provider loop should read limits now, or None."""
        with self._cond:
            return self._refresh_due(self._provider(provider), self._clock())

    def begin_limits_read(self, provider: str) -> LimitsToken:
        """Call right before sending GET /limits."""
        with self._cond:
            prov = self._provider(provider)
            token = LimitsToken(provider, self._next_mark(), self._clock())
            prov.last_attempt_at = token.started_at
            prov.read_in_progress = token
            prov.stale_because = None
            return token

    def apply_limits(self, token: LimitsToken, limits: CloudLimits) -> bool:
        """Store a reading.  A reading older than the one held is ignored
        (returns False)."""
        with self._cond:
            prov = self._provider(token.provider)
            if prov.read_in_progress == token:
                prov.read_in_progress = None
            if prov.limits_mark is not None and token.mark < prov.limits_mark:
                return False
            prov.limits = limits
            prov.limits_mark = token.mark
            prov.limits_applied_at = self._clock()
            prov.freed = ZERO
            prov.last_success_at = token.started_at
            prov.limits_error = None
            covered, in_flight = self._split(prov)
            prov.backoff.note_limits(self._clock(), token.mark,
                                     has_room(cloud_headroom(limits, covered, in_flight)))
            self._changed()
            return True

    def limits_read_failed(self, token: LimitsToken, error: str) -> None:
        """The read failed or timed out; the previous reading stays in use."""
        with self._cond:
            prov = self._provider(token.provider)
            if prov.read_in_progress == token:
                prov.read_in_progress = None
            prov.limits_error = error

    # -- decisions --------------------------------------------------------

    def try_reserve(self, key: Hashable, *, provider: str, pool: str, cost: Resources,
                    tenant: str | None = None,
                    tenant_usage_elsewhere: Resources = ZERO) -> QuotaDecision:
        """Check every layer and, if all stay >= 0 after ``cost`` (an exact
        fit is allowed), record the reservation, in one atomic step.

        Layers: the pool's limits; the provider's backoff (applies to every
        pool, even one with ``ignore_provider_quota``: the cloud refused, so
        creates stop whatever our estimate says); the cloud's limits (unless
        the pool ignores them; unread limits block); the tenant's limits,
        counting ``tenant_usage_elsewhere`` (the tenant's nodes this ledger
        does not track, e.g. other launchers' from ZooKeeper).  Reserving an
        existing key again is a no-op that grants (loops may repeat a step)."""
        check_cost(cost)
        with self._cond:
            prov = self._provider(provider)
            pool_quota = self._pool(prov, pool)
            existing = self._entries.get(key)
            if existing is not None:
                if (existing.provider, existing.pool, existing.cost) != (provider, pool, cost):
                    raise ValueError(f"quota key {key!r} is already reserved for "
                                     f"{existing.provider}/{existing.pool} {existing.cost}")
                return QuotaDecision(True)
            now = self._clock()
            reasons: list[str] = []
            blocked: set[str] = set()
            retry_at = None

            pool_used = self._sum(e for e in self._iter(prov) if e.pool == pool)
            if shortfalls(f"pool {provider}/{pool}", pool_quota.max, pool_used, cost, reasons):
                blocked.add(POOL)

            if prov.backoff.active(now):
                blocked.add(BACKOFF)
                retry_at = prov.backoff.until
                reasons.append(f"provider {provider}: backing off after a quota error "
                               f"for {retry_at - now:.0f}s more")
            if not pool_quota.ignore_provider_quota:
                if prov.limits is None:
                    blocked.add(LIMITS_UNKNOWN)
                    reasons.append(f"provider {provider}: cloud limits not read yet")
                else:
                    covered, in_flight = self._split(prov)
                    used = self._limits(prov).used.maximum(covered) + in_flight
                    if shortfalls(f"cloud {provider}", prov.limits.max, used, cost, reasons):
                        blocked.add(CLOUD)

            tenant_max = self._tenant_limits.get(tenant) if tenant is not None else None
            if tenant_max is not None:
                tenant_used = self._sum(e for e in self._entries.values()
                                        if e.tenant == tenant) + tenant_usage_elsewhere
                if shortfalls(f"tenant {tenant}", tenant_max, tenant_used, cost, reasons):
                    blocked.add(TENANT)

            if blocked:
                return QuotaDecision(False, tuple(reasons), frozenset(blocked), retry_at)
            self._entries[key] = LedgerEntry(key, provider, pool, tenant, cost,
                                        EntryState.RESERVED, self._next_mark())
            prov.keys.add(key)
            self._changed()
            return QuotaDecision(True)

    def why_never_fits(self, *, provider: str, pool: str, cost: Resources,
                       tenant: str | None = None) -> tuple[str, ...]:
        """Reasons ``cost`` (one node, or a whole request's sum) could not be
        granted even with none of our servers running; empty when it could.
        Against the cloud only the maxima count: usage we do not own may go
        away, so it is a reason to wait, not to decline.  Unread limits are
        not a reason either."""
        check_cost(cost)
        with self._cond:
            prov = self._provider(provider)
            pool_quota = self._pool(prov, pool)
            reasons: list[str] = []
            shortfalls(f"pool {provider}/{pool}", pool_quota.max, ZERO, cost, reasons)
            if not pool_quota.ignore_provider_quota and prov.limits is not None:
                shortfalls(f"cloud {provider}", prov.limits.max, ZERO, cost, reasons)
            tenant_max = self._tenant_limits.get(tenant) if tenant is not None else None
            if tenant_max is not None:
                shortfalls(f"tenant {tenant}", tenant_max, ZERO, cost, reasons)
            return tuple(reasons)

    def tenant_fits(self, tenant: str, cost: Resources,
                    usage_elsewhere: Resources = ZERO, *, alone: bool = False) -> bool:
        """Would ``cost`` more stay within the tenant's limits now (its entries
        here plus ``usage_elsewhere``; with ``alone``, with no usage at all)?
        True for a tenant without limits.  Only a check: ``try_reserve``
        still decides each create."""
        check_cost(cost)
        with self._cond:
            tenant_max = self._tenant_limits.get(tenant)
            if tenant_max is None:
                return True
            if alone:
                return not shortfalls(f"tenant {tenant}", tenant_max, ZERO, cost, [])
            used = self._sum(e for e in self._entries.values() if e.tenant == tenant)
            return not shortfalls(f"tenant {tenant}", tenant_max, used + usage_elsewhere,
                                   cost, [])

    # -- lifecycle of one create attempt ------------------------------------
    # Each returns False when the key is unknown (already gone), so a
    # level-triggered loop may repeat a step.

    def create_issued(self, key: Hashable) -> bool:
        """The POST is about to be sent."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.state is EntryState.RESERVED:
                entry.state = EntryState.CREATING
            return True

    def create_accepted(self, key: Hashable, server_id: str | None = None) -> bool:
        """Nova accepted the POST (it returned the server, even one already in
        ERROR): the server exists and counts until ``server_gone``."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._mark_exists(entry, server_id)
            self._provider(entry.provider).backoff.record_success()
            return True

    def create_unknown(self, key: Hashable) -> bool:
        """The POST timed out or failed without saying whether a server was
        made.  It keeps counting as in flight until a server list shows it
        (``server_seen``) or the driver is sure it is not there
        (``server_gone``)."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.state in (EntryState.RESERVED, EntryState.CREATING):
                entry.state = EntryState.UNKNOWN
            return True

    def create_rejected(self, key: Hashable, *, quota_error: bool = False) -> bool:
        """The cloud refused the POST; no server was made.  With
        ``quota_error`` the provider starts (or stays in) backoff."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            prov = self._provider(entry.provider)
            if quota_error:
                self._quota_error(prov, entry.reserved_mark)
            self._remove(entry)
            return True

    def server_seen(self, key: Hashable, server_id: str | None = None) -> bool:
        """A server list showed the server."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._mark_exists(entry, server_id)
            return True

    def delete_issued(self, key: Hashable) -> bool:
        """A delete was sent; the server still counts until nova drops it."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.state = EntryState.DELETING
            return True

    def server_gone(self, key: Hashable) -> bool:
        """Nova no longer lists the server (call only with a list that was
        requested after the POST returned or timed out).  Frees its quota,
        may let a backoff end early, and forces a limits refresh when the
        reading may still count the server and the ledger cannot tell."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            prov = self._provider(entry.provider)
            prov.backoff.note_delete_completed(self._next_mark())
            covered = (prov.limits is not None and entry.exists_mark is not None
                       and prov.limits_mark is not None
                       and entry.exists_mark < prov.limits_mark)
            if covered and entry.listed_at is not None \
                    and entry.listed_at >= max(prov.limits.read_at, prov.limits_applied_at):
                # Created before the reading began and still listed after
                # nova answered it, so nova counted it; gone now: its quota
                # is free before the next reading.
                prov.freed = prov.freed + entry.cost
            elif covered or prov.limits is None:
                # The reading may or may not count it: read again.
                prov.stale_because = prov.stale_because or STALE_AFTER_DELETE
            if prov.backoff.active(self._clock()):
                # Only a reading started after this delete ends a backoff early.
                prov.stale_because = prov.stale_because or STALE_AFTER_DELETE
            self._remove(entry)
            return True

    def reading_doubtful(self, provider: str) -> None:
        """Something outside this ledger (another launcher's server, see
        nodepool.quota.shared) went without proof that the current reading
        counted it: read the limits again when a request needs headroom."""
        with self._cond:
            prov = self._provider(provider)
            prov.stale_because = prov.stale_because or STALE_AFTER_DELETE

    def note_listed(self, key: Hashable, requested_at: float) -> None:
        """Nova still had the server at ``requested_at`` (the ledger's
        clock): a server list requested then showed it (in any state, e.g.
        being deleted), or a DELETE sent then was accepted."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None and (entry.listed_at is None or requested_at > entry.listed_at):
                entry.listed_at = requested_at

    def release(self, key: Hashable) -> bool:
        """Give back a reservation whose POST was never sent."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.state is not EntryState.RESERVED:
                raise ValueError(f"quota key {key!r} is {entry.state.value}: a server may "
                                 "exist; use create_rejected or server_gone")
            self._remove(entry)
            return True

    def adopt(self, key: Hashable, *, provider: str, pool: str, cost: Resources,
              tenant: str | None = None, server_id: str | None = None,
              deleting: bool = False) -> None:
        """Record a server of ours that exists without checking limits: on
        restart, for nodes found in ZooKeeper with a server."""
        check_cost(cost)
        with self._cond:
            prov = self._provider(provider)
            self._pool(prov, pool)
            if key in self._entries:
                return
            entry = LedgerEntry(key, provider, pool, tenant, cost, EntryState.CREATED,
                           self._next_mark())
            self._mark_exists(entry, server_id)
            if deleting:
                entry.state = EntryState.DELETING
            self._entries[key] = entry
            prov.keys.add(key)
            self._changed()

    def report_quota_error(self, provider: str, key: Hashable | None = None) -> None:
        """A server went ERROR with a quota fault (or another quota refusal
        not tied to a rejected POST).  The server, if any, keeps counting."""
        with self._cond:
            prov = self._provider(provider)
            entry = self._entries.get(key) if key is not None else None
            self._quota_error(prov, entry.reserved_mark if entry else None)

    # -- views --------------------------------------------------------------

    def estimate(self, provider: str) -> ProviderEstimate:
        with self._cond:
            prov = self._provider(provider)
            now = self._clock()
            covered, in_flight = self._split(prov)
            headroom = None if prov.limits is None else \
                cloud_headroom(self._limits(prov), covered, in_flight)
            age = None if prov.last_success_at is None else now - prov.last_success_at
            return ProviderEstimate(provider, prov.limits, covered, in_flight, headroom,
                                    age, prov.limits_error, prov.backoff.state(now))

    def entry_state(self, key: Hashable) -> EntryState | None:
        with self._cond:
            entry = self._entries.get(key)
            return entry.state if entry else None

    def keys(self, provider: str | None = None) -> frozenset:
        with self._cond:
            if provider is None:
                return frozenset(self._entries)
            return frozenset(self._provider(provider).keys)

    def describe(self, provider: str | None = None) -> dict[str, Any]:
        """The figures behind the decisions, as plain JSON-safe dicts
        (unlimited is None, ages in seconds)."""
        with self._cond:
            names = [provider] if provider is not None else sorted(self._providers)
            out: dict[str, Any] = {"providers": {n: self._describe_provider(n) for n in names}}
            if provider is None:
                out["tenants"] = {
                    name: figures_by_resource(
                        limit=lim,
                        used=self._sum(e for e in self._entries.values() if e.tenant == name))
                    for name, lim in sorted(self._tenant_limits.items())}
            return out

    # -- waiting without busy-looping ----------------------------------------

    @property
    def generation(self) -> int:
        """Increases whenever something that can change a decision changes."""
        with self._cond:
            return self._generation

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block up to ``timeout`` seconds until ``generation`` differs from
        ``seen``; returns the current generation.  A paused pool waits here
        (with a timeout that covers a backoff's end) instead of polling."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    # -- internals (lock held) ----------------------------------------------

    def _describe_provider(self, name: str) -> dict[str, Any]:
        prov = self._provider(name)
        now = self._clock()
        covered, in_flight = self._split(prov)
        return describe_provider(prov, self._iter(prov), now=now, limits=self._limits(prov),
                                 covered=covered, in_flight=in_flight,
                                 refresh_due=self._refresh_due(prov, now))

    def _refresh_due(self, prov: ProviderAccount, now: float) -> str | None:
        started = prov.read_in_progress.started_at if prov.read_in_progress else None
        return limits_refresh_due(self.refresh_policy, now,
                                  last_attempt_at=prov.last_attempt_at,
                                  last_success_at=prov.last_success_at,
                                  forced=prov.stale_because, in_progress_since=started)

    def _provider(self, name: str) -> ProviderAccount:
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(f"quota ledger has no provider {name!r}; "
                           "call configure_provider first") from None

    @staticmethod
    def _pool(prov: ProviderAccount, pool: str) -> PoolQuota:
        try:
            return prov.pools[pool]
        except KeyError:
            raise KeyError(f"quota ledger has no pool {pool!r} in provider "
                           f"{prov.name!r}") from None

    def _iter(self, prov: ProviderAccount) -> Iterable[LedgerEntry]:
        return (self._entries[k] for k in prov.keys)

    @staticmethod
    def _sum(entries: Iterable[LedgerEntry]) -> Resources:
        return total(e.cost for e in entries)

    @staticmethod
    def _limits(prov: ProviderAccount) -> CloudLimits | None:
        """The reading, with nova's usage less what we saw go since."""
        if prov.limits is None or prov.freed == ZERO:
            return prov.limits
        return replace(prov.limits, used=(prov.limits.used - prov.freed).maximum(ZERO))

    def _split(self, prov: ProviderAccount) -> tuple[Resources, Resources]:
        """(covered by the current limits reading, in flight relative to it)."""
        covered: list[Resources] = []
        in_flight: list[Resources] = []
        for entry in self._iter(prov):
            if (prov.limits_mark is not None and entry.exists_mark is not None
                    and entry.exists_mark < prov.limits_mark):
                covered.append(entry.cost)
            else:
                in_flight.append(entry.cost)
        return total(covered), total(in_flight)

    def _mark_exists(self, entry: LedgerEntry, server_id: str | None) -> None:
        if entry.exists_mark is None:
            entry.exists_mark = self._next_mark()
        if entry.state is not EntryState.DELETING:
            entry.state = EntryState.CREATED
        if server_id is not None:
            entry.server_id = server_id

    def _quota_error(self, prov: ProviderAccount, attempt_mark: int | None) -> None:
        prov.backoff.record_quota_error(self._clock(), self._next_mark(), attempt_mark)
        prov.stale_because = "quota error"
        self._changed()

    def _remove(self, entry: LedgerEntry) -> None:
        del self._entries[entry.key]
        self._providers[entry.provider].keys.discard(entry.key)
        self._changed()

    def _next_mark(self) -> int:
        self._mark += 1
        return self._mark

    def _changed(self) -> None:
        self._generation += 1
        self._cond.notify_all()

