"""statsd metrics: upstream Nodepool 11's names, types and meaning, plus ours.

Configured like upstream, from the environment: ``STATSD_HOST``,
``STATSD_PORT`` (8125) and ``STATSD_PREFIX``.  Without ``STATSD_HOST``
nothing is sent.  doc/operations.rst lists every metric and says which are
upstream's and which are this launcher's.

Names built from configuration or requests (providers, pools, labels, AZs,
requestors, tenants) have ``.`` and ``:`` replaced by ``_``, as upstream does
for requestors and tenants.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any, Iterable, Mapping

from nodepool.driver.base import LaunchProvider
from nodepool.driver.outcomes import LaunchOutcome
from nodepool.zk.records import NODE_STATES

log = logging.getLogger("nodepool.stats")

# Every node state, zeroed before counting so a gauge drops to 0 instead of
# keeping its last value (upstream does the same).
ALL_NODE_STATES = tuple(sorted(NODE_STATES))

# The resource names of tenant-resource-limits, as upstream reports them.
TENANT_RESOURCES = ("instances", "cores", "ram", "volumes", "volume-gb")


def clean(name: Any) -> str:
    return str(name).replace(".", "_").replace(":", "_")


def launch_metric_names(outcome: LaunchOutcome) -> list[str]:
    """Upstream's four ``nodepool.launch`` keys for one outcome."""
    provider = clean(outcome.provider)
    names = [f"nodepool.launch.provider.{provider}.{outcome.outcome}",
             f"nodepool.launch.{outcome.outcome}"]
    if outcome.az:
        names.append(f"nodepool.launch.provider.{provider}.{clean(outcome.az)}."
                     f"{outcome.outcome}")
    if outcome.requestor:
        names.append(f"nodepool.launch.requestor.{clean(outcome.requestor)}."
                     f"{outcome.outcome}")
    return names


def node_state_gauges(nodes: Iterable[Any], providers: Iterable[str],
                      labels: Iterable[str]) -> dict[str, int]:
    """``nodepool.nodes.<state>``, per provider and per label: every state of
    every known provider and label starts at 0; nodes of providers or labels
    not known (another launcher's, a removed one) are added as found."""
    gauges: dict[str, int] = {}
    providers = {clean(p) for p in providers}
    labels = {clean(label) for label in labels}
    for state in ALL_NODE_STATES:
        gauges[f"nodepool.nodes.{state}"] = 0
        for p in providers:
            gauges[f"nodepool.provider.{p}.nodes.{state}"] = 0
        for label in labels:
            gauges[f"nodepool.label.{label}.nodes.{state}"] = 0
    counts: Counter = Counter()
    for node in nodes:
        counts[f"nodepool.nodes.{node.state}"] += 1
        counts[f"nodepool.provider.{clean(node.provider)}.nodes.{node.state}"] += 1
        for label in node.type or []:
            counts[f"nodepool.label.{clean(label)}.nodes.{node.state}"] += 1
    gauges.update(counts)
    return gauges


def addressable_request_gauges(pools: Iterable[Any], requests: Iterable[Any]) -> dict[str, int]:
    """Per registered pool, how many requests ask only for labels it
    supports (upstream: every request in ZooKeeper, whatever its state)."""
    supported = {(p.provider_name, p.name): set(p.supported_labels or ())
                 for p in pools if getattr(p, "name", None) and p.provider_name}
    counts = dict.fromkeys(supported, 0)
    for request in requests:
        wanted = request.node_types or []
        for key, labels in supported.items():
            if all(label in labels for label in wanted):
                counts[key] += 1
    return {f"nodepool.provider.{clean(prov)}.pool.{clean(pool)}.addressable_requests": n
            for (prov, pool), n in counts.items()}


def max_servers_gauge(provider_cfg: Any) -> float:
    """Upstream's ``max_servers``: the sum of the pools' ``max-servers``.
    Unlimited pools add nothing (statsd has no infinity)."""
    return sum(p.max_servers for p in provider_cfg.pools.values()
               if p.max_servers and not math.isinf(p.max_servers))


def tenant_limit_gauges(tenant_limits: Mapping[str, Any]) -> dict[str, float]:
    """``nodepool.tenant_limits.<tenant>.<resource>`` for every limit set."""
    out = {}
    for name, t in tenant_limits.items():
        limits = getattr(t, "limits", t)
        for res in TENANT_RESOURCES:
            value = limits.get(res, math.inf)
            if not math.isinf(value):
                out[f"nodepool.tenant_limits.{clean(name)}.{clean(res)}"] = value
    return out


class Stats:
    def __init__(self, client: Any | None):
        self.client = client
        self._api_seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._api_wait_seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._quota_seen: dict[str, int] = {}
        # (provider, kind) -> count already sent; per process, as counters are.
        self._leaks_seen: dict[tuple[str, str], int] = {}

    @classmethod
    def from_environment(cls) -> "Stats":
        host = os.environ.get("STATSD_HOST")
        if not host:
            return cls(None)
        import statsd
        port = int(os.environ.get("STATSD_PORT", "8125"))
        return cls(statsd.StatsClient(host, port, prefix=os.environ.get("STATSD_PREFIX")))

    # -- events ------------------------------------------------------------------

    def launch(self, outcome: LaunchOutcome) -> None:
        """A launch attempt ended: upstream sends a timer and a counter under
        each name (``ready`` once per node, ``error.<reason>`` per attempt)."""
        if self.client is None:
            return
        pipe = self.client.pipeline()
        for name in launch_metric_names(outcome):
            pipe.timing(name, outcome.milliseconds)
            pipe.incr(name)
        pipe.send()

    # -- periodic ------------------------------------------------------------------

    def gauges(self, nodes: Iterable[Any], providers: dict, ledger: Any,
               paused_pools: dict[tuple[str, str], bool] | None = None, *,
               registered_pools: Iterable[Any] = (), requests: Iterable[Any] = (),
               provider_configs: Mapping[str, Any] | None = None,
               tenant_limits: Mapping[str, Any] | None = None,
               zk_queues: Mapping[str, int] | None = None) -> None:
        """Everything reported on a schedule: node counts by state, limits,
        addressable requests, quota headroom, backoff, paused pools and the
        ZooKeeper queues as gauges; API calls, quota refusals and leaked
        resources deleted since the last call as counters, with the mean API
        call time as a timer."""
        if self.client is None:
            return
        pools = list(registered_pools)
        pipe = self.client.pipeline()
        known_providers = set(providers) | {p.provider_name for p in pools if p.provider_name}
        known_labels = {label for p in pools for label in p.supported_labels or ()}
        gauges: dict[str, float] = dict(node_state_gauges(nodes, known_providers,
                                                          known_labels))
        gauges.update(addressable_request_gauges(pools, requests))
        for name, cfg in (provider_configs or {}).items():
            gauges[f"nodepool.provider.{clean(name)}.max_servers"] = max_servers_gauge(cfg)
        gauges.update(tenant_limit_gauges(tenant_limits or {}))
        gauges.update(zk_queues or {})
        for name, gauge in gauges.items():
            pipe.gauge(name, gauge)
        for name, provider in providers.items():
            self._provider(pipe, name, provider, ledger)
        for (provider_name, pool), paused in (paused_pools or {}).items():
            pipe.gauge(f"nodepool.provider.{clean(provider_name)}.pool.{clean(pool)}.paused",
                       1 if paused else 0)
        pipe.send()

    def _provider(self, pipe: Any, name: str, provider: LaunchProvider, ledger: Any) -> None:
        p = clean(name)
        est = ledger.estimate(name)
        if est.effective_headroom is not None:
            for res in ("instances", "cores", "ram"):
                value = getattr(est.effective_headroom, res)
                if not math.isinf(value):
                    pipe.gauge(f"nodepool.provider.{p}.quota.headroom.{res}", value)
        pipe.gauge(f"nodepool.provider.{p}.backoff", 1 if est.backoff.in_backoff else 0)
        metrics = provider.metrics()
        quota_errors = metrics.quota_errors
        delta = quota_errors - self._quota_seen.get(name, 0)
        if delta > 0:
            pipe.incr(f"nodepool.provider.{p}.quota.403", delta)
        self._quota_seen[name] = quota_errors
        for kind, count in metrics.leaks_deleted.items():
            delta = count - self._leaks_seen.get((name, kind), 0)
            if delta > 0:
                pipe.incr(f"nodepool.provider.{p}.leaked.{kind}", delta)
            self._leaks_seen[(name, kind)] = count
        budget = metrics.api_budget
        if budget is not None:
            pipe.gauge(f"nodepool.provider.{p}.api.concurrency_limit",
                       budget["concurrency_limit"])
            pipe.gauge(f"nodepool.provider.{p}.api.in_flight", budget["in_flight"])
        for call, st in metrics.api_calls.items():
            key = (name, call)
            seen_count, seen_seconds = self._api_seen.get(key, (0, 0.0))
            seen_started, seen_wait = self._api_wait_seen.get(key, (0, 0.0))
            delta = st["count"] - seen_count
            metric = f"nodepool.task.{p}.{clean(call)}"
            if delta > 0:
                pipe.incr(metric, delta)
                pipe.timing(metric, (st["total_seconds"] - seen_seconds) / delta * 1000)
            started = st.get("started", 0) - seen_started
            if started > 0:
                pipe.timing(f"{metric}.queue_wait",
                            (st["wait_seconds"] - seen_wait) / started * 1000)
            pipe.gauge(f"{metric}.in_flight", st["in_flight"])
            self._api_seen[key] = (st["count"], st["total_seconds"])
            self._api_wait_seen[key] = (st.get("started", 0), st["wait_seconds"])
