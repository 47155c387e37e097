"""A provider's side of the shared quota book (several launchers, one project).

The launcher hands a provider a ``SharedQuota`` (nodepool.quota.shared)
when other launchers may serve the same cloud project; these helpers put it
after the provider's own ledger, which is asked first and stays the whole
story with one launcher.
"""

from __future__ import annotations

from nodepool.quota import QuotaDecision, QuotaLedger, Resources
from nodepool.quota.ledger import CLOUD
from nodepool.quota.shared import SharedQuota


def shared_reasons(shared: SharedQuota, ledger: QuotaLedger, provider: str, key: str | None,
                   cost: Resources, *, write: bool) -> list[str]:
    """Why ``cost`` (already reserved in ``ledger``) does not fit the book;
    with ``write`` (and a ``key``), take the claim when it does."""
    est = ledger.estimate(provider)
    if est.headroom is None or est.limits is None:
        return []   # the ledger decided without the cloud's limits (pool ignores them)
    keys = ledger.keys(provider)
    if write and key is not None:
        return shared.reserve(key, cost, est.headroom, est.limits.max, est.ledger_covered,
                              est.in_flight, keys)
    return shared.check(cost, est.headroom, est.limits.max, est.ledger_covered,
                        est.in_flight, keys)


def reserve_shared(shared: SharedQuota | None, ledger: QuotaLedger, provider: str, key: str,
                   cost: Resources, decision: QuotaDecision,
                   ignore_provider_quota: bool = False) -> QuotaDecision:
    """After the ledger granted ``key``: claim it in the shared book, or give
    the ledger's reservation back and say why not."""
    if shared is None or not decision or ignore_provider_quota:
        return decision
    reasons = shared_reasons(shared, ledger, provider, key, cost, write=True)
    if not reasons:
        return decision
    ledger.release(key)
    return QuotaDecision(False, tuple(reasons), frozenset({CLOUD}))
