"""The quota ledger's figures as plain JSON-safe dicts (``describe``):
what the status API and ``nodepool quota`` show.  Unlimited is None, ages
are in seconds."""

from __future__ import annotations

import math
from typing import Any, Iterable

from nodepool.quota.headroom import cloud_headroom, total
from nodepool.quota.ledger_records import EntryState, LedgerEntry, ProviderAccount
from nodepool.quota.resources import RESOURCE_NAMES, CloudLimits, Resources


def describe_provider(prov: ProviderAccount, entries: Iterable[LedgerEntry], *, now: float,
                      limits: CloudLimits | None, covered: Resources, in_flight: Resources,
                      refresh_due: str | None) -> dict[str, Any]:
    """One provider's figures: ``entries`` are its ledger entries, ``limits``
    its reading less what was freed since, ``covered`` and ``in_flight``
    the ledger's split of the entries against that reading."""
    entries = list(entries)
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
    for entry in entries:
        states[entry.state.value] += 1
    pools = {}
    for pool_name, pq in sorted(prov.pools.items()):
        used = total(e.cost for e in entries if e.pool == pool_name)
        pools[pool_name] = {"ignore_provider_quota": pq.ignore_provider_quota,
                            "resources": figures_by_resource(pq.max, used)}
    return {
        "limits": {
            "age": None if prov.last_success_at is None else now - prov.last_success_at,
            "read_at": None if limits is None else limits.read_at,
            "last_attempt_age": (None if prov.last_attempt_at is None
                                 else now - prov.last_attempt_at),
            "error": prov.limits_error,
            "refresh_due": refresh_due,
        },
        "backoff": {"in_backoff": backoff.in_backoff, "remaining": backoff.remaining,
                    "consecutive_quota_errors": backoff.consecutive,
                    "total_quota_errors": backoff.total, "last_delay": backoff.last_delay,
                    "ended_by": backoff.ended_by},
        "resources": resources,
        "servers": states,
        "pools": pools,
    }


def figures_by_resource(limit: Resources, used: Resources) -> dict[str, dict[str, Any]]:
    """Limit, use and headroom of each resource."""
    head = limit - used
    return {res: {"limit": _safe(getattr(limit, res)), "used": getattr(used, res),
                  "headroom": _safe(getattr(head, res))} for res in RESOURCE_NAMES}


def _safe(value: float | None) -> float | None:
    return None if value is None or value == math.inf else value
