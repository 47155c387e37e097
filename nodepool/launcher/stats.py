"""statsd metrics, named as upstream Nodepool names them where it has them.

Configured like upstream, from the environment: ``STATSD_HOST``,
``STATSD_PORT`` (8125) and ``STATSD_PREFIX``.  Without ``STATSD_HOST``
nothing is sent.

Upstream-compatible: ``nodepool.nodes.<state>``,
``nodepool.provider.<provider>.nodes.<state>``, ``nodepool.label.<label>.nodes.<state>``,
``nodepool.launch.provider.<provider>.{ready,error}`` (nodes),
``nodepool.task.<provider>.<call>`` (API calls: a counter, and a timer with
the mean time of the calls since the last report).
New: ``nodepool.provider.<provider>.quota.headroom.<resource>``,
``nodepool.provider.<provider>.quota.403``, ``nodepool.provider.<provider>.backoff``,
``nodepool.provider.<provider>.pool.<pool>.paused``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any, Iterable

log = logging.getLogger("nodepool.stats")

NODE_STATES = ("building", "ready", "in-use", "used", "hold", "deleting", "failed",
               "aborted", "init")


def _clean(name: str) -> str:
    return str(name).replace(".", "_").replace(":", "_")


class Stats:
    def __init__(self, client: Any | None):
        self.client = client
        self._api_seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._api_wait_seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._quota_seen: dict[str, int] = {}

    @classmethod
    def from_environment(cls) -> "Stats":
        host = os.environ.get("STATSD_HOST")
        if not host:
            return cls(None)
        import statsd
        port = int(os.environ.get("STATSD_PORT", "8125"))
        return cls(statsd.StatsClient(host, port, prefix=os.environ.get("STATSD_PREFIX")))

    def pool_pass(self, provider: str, report: Any) -> None:
        if self.client is None or report is None:
            return
        ready = len(getattr(report, "nodes_ready", []))
        failed = len(getattr(report, "nodes_failed", []))
        if ready:
            self.client.incr(f"nodepool.launch.provider.{_clean(provider)}.ready", ready)
        if failed:
            self.client.incr(f"nodepool.launch.provider.{_clean(provider)}.error", failed)

    def gauges(self, nodes: Iterable[Any], providers: dict, ledger: Any,
               paused_pools: dict[tuple[str, str], bool] | None = None) -> None:
        """Node counts by state, quota headroom, backoff and paused pools
        as gauges; API calls and quota 403s since the last call as counters,
        with the mean call time of those calls as a timer."""
        if self.client is None:
            return
        total: Counter = Counter()
        by_provider: Counter = Counter()
        by_label: Counter = Counter()
        for node in nodes:
            total[node.state] += 1
            by_provider[(node.provider, node.state)] += 1
            for label in node.type or []:
                by_label[(label, node.state)] += 1
        pipe = self.client.pipeline()
        for state in NODE_STATES:
            pipe.gauge(f"nodepool.nodes.{state}", total.get(state, 0))
        for name in providers:
            for state in NODE_STATES:
                pipe.gauge(f"nodepool.provider.{_clean(name)}.nodes.{state}",
                           by_provider.get((name, state), 0))
        for (label, state), count in by_label.items():
            pipe.gauge(f"nodepool.label.{_clean(label)}.nodes.{state}", count)
        for name, provider in providers.items():
            p = _clean(name)
            est = ledger.estimate(name)
            if est.effective_headroom is not None:
                for res in ("instances", "cores", "ram"):
                    value = getattr(est.effective_headroom, res)
                    if not math.isinf(value):
                        pipe.gauge(f"nodepool.provider.{p}.quota.headroom.{res}", value)
            pipe.gauge(f"nodepool.provider.{p}.backoff", 1 if est.backoff.in_backoff else 0)
            quota_errors = provider.counters.get("quota_errors", 0)
            delta = quota_errors - self._quota_seen.get(name, 0)
            if delta > 0:
                pipe.incr(f"nodepool.provider.{p}.quota.403", delta)
            self._quota_seen[name] = quota_errors
            budget = provider.gate.budget()
            pipe.gauge(f"nodepool.provider.{p}.api.concurrency_limit",
                       budget["concurrency_limit"])
            pipe.gauge(f"nodepool.provider.{p}.api.in_flight", budget["in_flight"])
            for call, st in provider.gate.stats().items():
                key = (name, call)
                seen_count, seen_seconds = self._api_seen.get(key, (0, 0.0))
                seen_started, seen_wait = self._api_wait_seen.get(key, (0, 0.0))
                delta = st["count"] - seen_count
                metric = f"nodepool.task.{p}.{_clean(call)}"
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
        for (provider_name, pool), paused in (paused_pools or {}).items():
            pipe.gauge(f"nodepool.provider.{_clean(provider_name)}.pool.{_clean(pool)}.paused",
                       1 if paused else 0)
        pipe.send()
