"""Quota: create only when there is headroom.

Plain Python, no I/O: the driver and the pool workers feed it what the cloud
said and ask it before every create.  Time and randomness are passed in.

- :mod:`.resources`: :class:`Resources` (unlimited is ``math.inf``),
  :func:`label_cost`, :class:`CloudLimits` (one GET /limits reading).
- :mod:`.ledger`: :class:`QuotaLedger`, the process-wide book with the
  atomic :meth:`~QuotaLedger.try_reserve` and the lifecycle calls; its module
  docstring states the counting rule.
- :mod:`.ledger_records`: what the ledger hands out and keeps
  (:class:`QuotaDecision`, :class:`PoolQuota`, :class:`EntryState` ...).
- :mod:`.headroom`: the ledger's arithmetic (:func:`cloud_headroom`, the
  shortfalls that block a create); :mod:`.ledger_report`: its figures for
  the status API.
- :mod:`.backoff`: :class:`QuotaBackoff` after a quota refusal.
- :mod:`.refresh`: :func:`limits_refresh_due`.
- :mod:`.errors`: :func:`is_quota_error` and friends.

One create and one delete, as the callers see it::

    # provider loop, every pass
    if ledger.limits_refresh_due(name):
        token = ledger.begin_limits_read(name)
        try:
            limits = CloudLimits.from_api(nova_absolute, cinder_absolute, read_at=now)
        except ApiUnavailable as e:
            ledger.limits_read_failed(token, str(e))
        else:
            ledger.apply_limits(token, limits)

    # pool worker
    key = (node.id, attempt)
    decision = ledger.try_reserve(key, provider=name, pool=pool, cost=cost, tenant=tenant)
    if not decision:
        ...   # leave the request pending, pause the pool; wait_for_change()
    ledger.create_issued(key)
    # POST accepted -> create_accepted(key, server_id); timed out -> create_unknown(key);
    # refused -> create_rejected(key, quota_error=is_quota_exception(exc))
    # server list shows it -> server_seen(key); ERROR with quota fault ->
    # report_quota_error(name, key) and delete it like any failed server
    ledger.delete_issued(key)
    # a server list requested after the POST returned no longer shows it:
    ledger.server_gone(key)
"""

from nodepool.quota.backoff import BackoffPolicy, BackoffState, QuotaBackoff
from nodepool.quota.errors import is_quota_error, is_quota_exception, is_quota_fault
from nodepool.quota.headroom import cloud_headroom
from nodepool.quota.ledger import QuotaLedger
from nodepool.quota.ledger_records import (BACKOFF, CLOUD, LIMITS_UNKNOWN, POOL, TENANT,
                                           EntryState, LimitsToken, PoolQuota, ProviderEstimate,
                                           QuotaDecision, tenant_limits_from_config)
from nodepool.quota.refresh import RefreshPolicy, limits_refresh_due
from nodepool.quota.resources import (RESOURCE_NAMES, UNLIMITED, ZERO, CloudLimits, Resources,
                                      label_cost)

__all__ = [
    "BACKOFF", "CLOUD", "LIMITS_UNKNOWN", "POOL", "TENANT", "RESOURCE_NAMES", "UNLIMITED", "ZERO",
    "BackoffPolicy", "BackoffState", "CloudLimits", "EntryState", "LimitsToken", "PoolQuota",
    "ProviderEstimate", "QuotaBackoff", "QuotaDecision", "QuotaLedger", "RefreshPolicy",
    "Resources", "cloud_headroom", "is_quota_error", "is_quota_exception", "is_quota_fault",
    "label_cost", "limits_refresh_due", "tenant_limits_from_config",
]
