"""The API budget's pure parts: priorities, token buckets, adaptive concurrency.

No threads, no I/O, no clock of their own: the gate (nodepool/driver/gate.py)
passes the time in.  What they mean for operators is in
doc/configuration.rst ("API budget").
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower runs first.  Creates and deletes never wait behind reads."""

    NODE = 0        # connect, create/delete servers, floating IPs of nodes
    STATUS = 1      # the shared server list, the port list for floating IPs
    BACKGROUND = 2  # limits, catalog, console logs
    SWEEP = 3       # leak sweeps (ports, floating IPs nobody owns)


_NODE_KINDS = {"connect", "compute.create_server", "compute.delete_server",
               "network.create_floating_ip", "network.delete_floating_ip"}
_STATUS_KINDS = {"compute.list_servers", "network.list_ports", "network.list_floating_ips"}


def default_priority(kind: str) -> Priority:
    if kind in _NODE_KINDS:
        return Priority.NODE
    if kind in _STATUS_KINDS:
        return Priority.STATUS
    return Priority.BACKGROUND


def is_mutating(kind: str) -> bool:
    """Calls that change the cloud: the ones ``rate`` limits."""
    verb = kind.rpartition(".")[2]
    return verb.startswith(("create_", "delete_"))


@dataclass
class TokenBucket:
    """``rate`` tokens a second on average, at most ``burst`` saved up."""

    rate: float
    burst: float = 2.0
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.burst = max(1.0, self.burst)
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def try_take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


# Documented in doc/configuration.rst; change both together.
CONCURRENCY_FLOOR = 2
CONCURRENCY_CEILING = 32
CONCURRENCY_START = 8
DECREASE_FACTOR = 0.5


@dataclass
class AdaptiveLimit:
    """Additive increase, multiplicative decrease of the calls in flight.

    Each call that ends well while the limit was nearly used raises the
    limit by ``1/limit`` (one per full window); an overload signal (HTTP
    429 or 503, a timeout, or latency well above its usual level) halves
    it, at most once per ``cooldown`` seconds so one burst of failures
    counts once.  The limit stays within [floor, ceiling].
    """

    floor: int = CONCURRENCY_FLOOR
    ceiling: int = CONCURRENCY_CEILING
    value: float = CONCURRENCY_START
    decrease: float = DECREASE_FACTOR
    cooldown: float = 1.0
    decreases: int = 0
    last_decrease: float = -math.inf

    def __post_init__(self) -> None:
        self.value = float(min(self.ceiling, max(self.floor, self.value)))

    @property
    def limit(self) -> int:
        return int(self.value)

    def on_success(self, in_flight: int) -> None:
        """A call ended well; ``in_flight`` calls ran when it started
        (itself included)."""
        # Only a limit that was (nearly) reached has shown it is not too low.
        if in_flight + 1 >= self.limit:
            self.value = min(float(self.ceiling), self.value + 1.0 / self.value)

    def on_overload(self, now: float) -> bool:
        """True if the limit was lowered."""
        if now - self.last_decrease < self.cooldown:
            return False
        self.last_decrease = now
        self.value = max(float(self.floor), self.value * self.decrease)
        self.decreases += 1
        return True


@dataclass
class LatencyWatch:
    """Is a call kind answering well above its usual time?

    The usual time is the lowest of the last ``window`` answers; the current
    one an exponentially weighted average.  Rising means the average exceeds
    ``factor`` times the usual time plus ``slack`` seconds (so that jitter on
    millisecond answers does not count).  One answer counts at most twice
    that bound: a single very slow answer (the first one after a hang) must
    not keep the average up for the next dozens of calls.
    """

    window: int = 50
    factor: float = 3.0
    slack: float = 0.25
    alpha: float = 0.3
    samples: deque = field(default_factory=deque)
    average: float | None = None

    def add(self, seconds: float) -> bool:
        """Record one answer's time; True if latency is now rising."""
        self.samples.append(seconds)
        if len(self.samples) > self.window:
            self.samples.popleft()
        bound = self.factor * min(self.samples) + self.slack
        counted = min(seconds, 2 * bound)
        self.average = counted if self.average is None else \
            self.alpha * counted + (1 - self.alpha) * self.average
        if len(self.samples) < 5:
            return False
        return self.average > bound
