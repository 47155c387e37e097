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

import enum
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Iterable, Mapping

from nodepool.quota.backoff import BackoffPolicy, BackoffState, QuotaBackoff
from nodepool.quota.refresh import RefreshPolicy, limits_refresh_due
from nodepool.quota.resources import (RESOURCE_NAMES, UNLIMITED, ZERO, CloudLimits,
                                      Resources)

# Layers a decision can be blocked by.
POOL = "pool"
CLOUD = "cloud"
TENANT = "tenant"
BACKOFF = "backoff"
LIMITS_UNKNOWN = "limits-unknown"

# Why a limits reading is stale (``limits_refresh_due``): one of our servers
# went and the reading may still count it.  Over-counting is the safe side,
# so a provider may wait with this read until requests need the headroom.
STALE_AFTER_DELETE = "delete completed"


class EntryState(str, enum.Enum):
    RESERVED = "reserved"    # headroom taken, POST not sent yet
    CREATING = "creating"    # POST sent, no answer yet
    CREATED = "created"      # nova accepted it or listed it
    UNKNOWN = "unknown"      # POST failed in a way that may have created it (timeout)
    DELETING = "deleting"    # delete issued, nova still lists it


@dataclass(frozen=True)
class PoolQuota:
    """A pool's own limits (``max-servers`` and friends)."""

    max: Resources = UNLIMITED
    ignore_provider_quota: bool = False

    @classmethod
    def from_pool(cls, pool: Any) -> PoolQuota:
        """From a config pool record (attributes ``max_servers``, ``max_cores``,
        ``max_ram``, ``max_volumes``, ``max_volume_gb``, ``ignore_provider_quota``;
        missing ones are unlimited)."""
        inf = math.inf
        return cls(Resources(getattr(pool, "max_servers", inf), getattr(pool, "max_cores", inf),
                             getattr(pool, "max_ram", inf), getattr(pool, "max_volumes", inf),
                             getattr(pool, "max_volume_gb", inf)),
                   bool(getattr(pool, "ignore_provider_quota", False)))


def tenant_limits_from_config(tenant_limits: Mapping[str, Any]) -> dict[str, Resources]:
    """From the config's ``{name: TenantLimits(limits={'instances': ..})}``."""
    return {name: Resources.from_mapping(getattr(t, "limits", t), default=math.inf)
            for name, t in tenant_limits.items()}


def cloud_headroom(limits: CloudLimits, covered: Resources, in_flight: Resources) -> Resources:
    """The rule in the module docstring, before subtracting what a create needs."""
    return limits.max - limits.used.maximum(covered) - in_flight


def _has_room(headroom: Resources) -> bool:
    # "Room" for ending a backoff early: at least one more instance and some
    # cores and RAM.  Volumes are left out because most labels use none; the
    # exact check still happens in try_reserve.
    return headroom.instances >= 1 and headroom.cores > 0 and headroom.ram > 0


@dataclass(frozen=True)
class LimitsToken:
    """Handed out when a limits read starts; give it back with the result."""

    provider: str
    mark: int
    started_at: float


@dataclass(frozen=True)
class QuotaDecision:
    granted: bool
    reasons: tuple[str, ...] = ()
    blocked_by: frozenset[str] = frozenset()
    retry_at: float | None = None   # when a backoff ends, if that blocks it

    def __bool__(self) -> bool:
        return self.granted


@dataclass(frozen=True)
class ProviderEstimate:
    provider: str
    limits: CloudLimits | None
    ledger_covered: Resources
    in_flight: Resources
    headroom: Resources | None      # None until limits were read
    limits_age: float | None
    limits_error: str | None
    backoff: BackoffState

    @property
    def ledger_used(self) -> Resources:
        return self.ledger_covered + self.in_flight

    @property
    def effective_headroom(self) -> Resources | None:
        """What creates may use now: nothing while backing off."""
        if self.headroom is None:
            return None
        return self.headroom.minimum(ZERO) if self.backoff.in_backoff else self.headroom


@dataclass
class _Entry:
    key: Hashable
    provider: str
    pool: str
    tenant: str | None
    cost: Resources
    state: EntryState
    reserved_mark: int
    exists_mark: int | None = None   # when we first knew nova has the server
    server_id: str | None = None
    # When the latest server list that still showed the server was requested.
    listed_at: float | None = None


@dataclass
class _Provider:
    name: str
    pools: dict[str, PoolQuota]
    backoff: QuotaBackoff
    limits: CloudLimits | None = None
    limits_mark: int | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    read_in_progress: LimitsToken | None = None
    limits_error: str | None = None
    stale_because: str | None = None
    # When the current reading was applied: nova answered the read before.
    limits_applied_at: float = float("-inf")
    keys: set = field(default_factory=set)
    # Our servers that nova counted in the current reading and that are gone
    # since: subtracted from its usage until the next reading.
    freed: Resources = ZERO


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
        self._providers: dict[str, _Provider] = {}
        self._entries: dict[Hashable, _Entry] = {}
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
                self._providers[name] = _Provider(
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
            prov = self._provider(provider)
            started = prov.read_in_progress.started_at if prov.read_in_progress else None
            return limits_refresh_due(self.refresh_policy, self._clock(),
                                      last_attempt_at=prov.last_attempt_at,
                                      last_success_at=prov.last_success_at,
                                      forced=prov.stale_because, in_progress_since=started)

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
                                     _has_room(cloud_headroom(limits, covered, in_flight)))
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
        _check_cost(cost)
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
            if _shortfalls(f"pool {provider}/{pool}", pool_quota.max, pool_used, cost, reasons):
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
                    if _shortfalls(f"cloud {provider}", prov.limits.max, used, cost, reasons):
                        blocked.add(CLOUD)

            tenant_max = self._tenant_limits.get(tenant) if tenant is not None else None
            if tenant_max is not None:
                tenant_used = self._sum(e for e in self._entries.values()
                                        if e.tenant == tenant) + tenant_usage_elsewhere
                if _shortfalls(f"tenant {tenant}", tenant_max, tenant_used, cost, reasons):
                    blocked.add(TENANT)

            if blocked:
                return QuotaDecision(False, tuple(reasons), frozenset(blocked), retry_at)
            self._entries[key] = _Entry(key, provider, pool, tenant, cost,
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
        _check_cost(cost)
        with self._cond:
            prov = self._provider(provider)
            pool_quota = self._pool(prov, pool)
            reasons: list[str] = []
            _shortfalls(f"pool {provider}/{pool}", pool_quota.max, ZERO, cost, reasons)
            if not pool_quota.ignore_provider_quota and prov.limits is not None:
                _shortfalls(f"cloud {provider}", prov.limits.max, ZERO, cost, reasons)
            tenant_max = self._tenant_limits.get(tenant) if tenant is not None else None
            if tenant_max is not None:
                _shortfalls(f"tenant {tenant}", tenant_max, ZERO, cost, reasons)
            return tuple(reasons)

    def tenant_fits(self, tenant: str, cost: Resources,
                    usage_elsewhere: Resources = ZERO, *, alone: bool = False) -> bool:
        """Would ``cost`` more stay within the tenant's limits now (its entries
        here plus ``usage_elsewhere``; with ``alone``, with no usage at all)?
        True for a tenant without limits.  Only a check: ``try_reserve``
        still decides each create."""
        _check_cost(cost)
        with self._cond:
            tenant_max = self._tenant_limits.get(tenant)
            if tenant_max is None:
                return True
            if alone:
                return not _shortfalls(f"tenant {tenant}", tenant_max, ZERO, cost, [])
            used = self._sum(e for e in self._entries.values() if e.tenant == tenant)
            return not _shortfalls(f"tenant {tenant}", tenant_max, used + usage_elsewhere,
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
        _check_cost(cost)
        with self._cond:
            prov = self._provider(provider)
            self._pool(prov, pool)
            if key in self._entries:
                return
            entry = _Entry(key, provider, pool, tenant, cost, EntryState.CREATED,
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
                    name: _figures_by_resource(
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
        limits = self._limits(prov)
        headroom = None if limits is None else cloud_headroom(limits, covered, in_flight)
        backoff = prov.backoff.state(now)
        resources = {}
        for res in RESOURCE_NAMES:
            h = None if headroom is None else getattr(headroom, res)
            resources[res] = {
                "limit": None if limits is None else _safe(getattr(limits.max, res)),
                "nova_used": None if limits is None else getattr(limits.used, res),
                "freed_since_reading": getattr(prov.freed, res),
                "ledger_used": getattr(covered, res) + getattr(in_flight, res),
                "ledger_covered": getattr(covered, res),
                "in_flight": getattr(in_flight, res),
                "headroom": _safe(h),
                "effective_headroom": _safe(min(h, 0) if backoff.in_backoff and h is not None
                                            else h),
            }
        states: dict[str, int] = {s.value: 0 for s in EntryState}
        for entry in self._iter(prov):
            states[entry.state.value] += 1
        pools = {}
        for pool_name, pq in sorted(prov.pools.items()):
            used = self._sum(e for e in self._iter(prov) if e.pool == pool_name)
            pools[pool_name] = {"ignore_provider_quota": pq.ignore_provider_quota,
                                "resources": _figures_by_resource(pq.max, used)}
        started = prov.read_in_progress.started_at if prov.read_in_progress else None
        return {
            "limits": {
                "age": None if prov.last_success_at is None else now - prov.last_success_at,
                "read_at": None if limits is None else limits.read_at,
                "last_attempt_age": (None if prov.last_attempt_at is None
                                     else now - prov.last_attempt_at),
                "error": prov.limits_error,
                "refresh_due": limits_refresh_due(
                    self.refresh_policy, now, last_attempt_at=prov.last_attempt_at,
                    last_success_at=prov.last_success_at, forced=prov.stale_because,
                    in_progress_since=started),
            },
            "backoff": {"in_backoff": backoff.in_backoff, "remaining": backoff.remaining,
                        "consecutive_quota_errors": backoff.consecutive,
                        "total_quota_errors": backoff.total, "last_delay": backoff.last_delay,
                        "ended_by": backoff.ended_by},
            "resources": resources,
            "servers": states,
            "pools": pools,
        }

    def _provider(self, name: str) -> _Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(f"quota ledger has no provider {name!r}; "
                           "call configure_provider first") from None

    @staticmethod
    def _pool(prov: _Provider, pool: str) -> PoolQuota:
        try:
            return prov.pools[pool]
        except KeyError:
            raise KeyError(f"quota ledger has no pool {pool!r} in provider "
                           f"{prov.name!r}") from None

    def _iter(self, prov: _Provider) -> Iterable[_Entry]:
        return (self._entries[k] for k in prov.keys)

    @staticmethod
    def _sum(entries: Iterable[_Entry]) -> Resources:
        return _total(e.cost for e in entries)

    @staticmethod
    def _limits(prov: _Provider) -> CloudLimits | None:
        """The reading, with nova's usage less what we saw go since."""
        if prov.limits is None or prov.freed == ZERO:
            return prov.limits
        return replace(prov.limits, used=(prov.limits.used - prov.freed).maximum(ZERO))

    def _split(self, prov: _Provider) -> tuple[Resources, Resources]:
        """(covered by the current limits reading, in flight relative to it)."""
        covered: list[Resources] = []
        in_flight: list[Resources] = []
        for entry in self._iter(prov):
            if (prov.limits_mark is not None and entry.exists_mark is not None
                    and entry.exists_mark < prov.limits_mark):
                covered.append(entry.cost)
            else:
                in_flight.append(entry.cost)
        return _total(covered), _total(in_flight)

    def _mark_exists(self, entry: _Entry, server_id: str | None) -> None:
        if entry.exists_mark is None:
            entry.exists_mark = self._next_mark()
        if entry.state is not EntryState.DELETING:
            entry.state = EntryState.CREATED
        if server_id is not None:
            entry.server_id = server_id

    def _quota_error(self, prov: _Provider, attempt_mark: int | None) -> None:
        prov.backoff.record_quota_error(self._clock(), self._next_mark(), attempt_mark)
        prov.stale_because = "quota error"
        self._changed()

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        self._providers[entry.provider].keys.discard(entry.key)
        self._changed()

    def _next_mark(self) -> int:
        self._mark += 1
        return self._mark

    def _changed(self) -> None:
        self._generation += 1
        self._cond.notify_all()


def _total(costs: Iterable[Resources]) -> Resources:
    # Plain float sums: this runs under the lock for every decision, and
    # building an intermediate Resources per entry would dominate it.
    instances = cores = ram = volumes = volume_gb = 0.0
    for c in costs:
        instances += c.instances
        cores += c.cores
        ram += c.ram
        volumes += c.volumes
        volume_gb += c.volume_gb
    return Resources(instances, cores, ram, volumes, volume_gb)


def _check_cost(cost: Resources) -> None:
    if not isinstance(cost, Resources):
        raise TypeError(f"cost must be Resources, not {cost!r}")
    if not cost.non_negative or any(getattr(cost, n) == math.inf for n in RESOURCE_NAMES):
        raise ValueError(f"cost must be finite and non-negative, not {cost}")


def _shortfalls(layer: str, limit: Resources, used: Resources, cost: Resources,
                reasons: list[str]) -> bool:
    """Append a reason per resource that would go below zero; True if any.

    A resource the create does not consume (``need == 0``) cannot be pushed
    below zero by it and is not checked: a project whose volumes are full
    (someone else's) can still boot servers without volumes, as nova allows.
    """
    found = False
    for res in RESOURCE_NAMES:
        lim, use, need = getattr(limit, res), getattr(used, res), getattr(cost, res)
        if need and lim - use - need < 0:
            found = True
            reasons.append(f"{layer}: {res} needs {_num(need)}, "
                           f"{_num(use)} of {_num(lim)} in use")
    return found


def _figures_by_resource(limit: Resources, used: Resources) -> dict[str, dict[str, Any]]:
    head = limit - used
    return {res: {"limit": _safe(getattr(limit, res)), "used": getattr(used, res),
                  "headroom": _safe(getattr(head, res))} for res in RESOURCE_NAMES}


def _safe(value: float | None) -> float | None:
    return None if value is None or value == math.inf else value


def _num(value: float) -> str:
    if value == math.inf:
        return "unlimited"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
