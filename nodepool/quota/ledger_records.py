"""The quota ledger's records: what callers get back, and the book it keeps.

The first half is what callers see: the layers a decision can be blocked
by, an entry's state, a pool's limits, a limits-read token, a decision and
a provider's estimate.  The second half (:class:`LedgerEntry`,
:class:`ProviderAccount`) is the ledger's own book, read and written only
under its lock by :mod:`nodepool.quota.ledger` and its report.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

from nodepool.quota.backoff import BackoffState, QuotaBackoff
from nodepool.quota.resources import UNLIMITED, ZERO, CloudLimits, Resources

# Layers a decision can be blocked by.
POOL = "pool"
CLOUD = "cloud"
TENANT = "tenant"
BACKOFF = "backoff"
LIMITS_UNKNOWN = "limits-unknown"


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


# -- the ledger's own book (only under its lock) ---------------------------------

@dataclass
class LedgerEntry:
    """One create attempt of ours, from its reservation until nova no
    longer lists its server."""

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
class ProviderAccount:
    """One provider's side of the book: its pools, limits readings, backoff
    and the keys of its entries."""

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
