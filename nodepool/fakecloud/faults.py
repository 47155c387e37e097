"""Injected API faults: latency, 500/503 answers, hangs and slow creates.

Every wait here ends early when the cloud stops, so ``FakeCloud.stop()``
never waits for a hung request.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from dataclasses import dataclass
from typing import Callable

from nodepool.fakecloud.config import Faults


@dataclass(frozen=True)
class FaultDecision:
    """What happened to one request before it reached its handler."""

    latency: float = 0.0
    hung: bool = False
    error_status: int | None = None
    retry_after: float | None = None   # for a 429


class FaultInjector:
    def __init__(self, faults: Faults, seed: int | None, stop: threading.Event,
                 note: Callable[[str], None] = lambda kind: None):
        # note(kind) counts a fault when it is decided, not when the request ends,
        # so a request that is still sleeping or hanging is already visible.
        self._note = note
        self._lock = threading.Lock()
        self._faults = faults
        self._match = re.compile(faults.match) if faults.match else None
        self._rng = random.Random(seed)
        self._stop = stop
        self._release = threading.Event()
        self._hung_now = 0
        self._concurrent = 0
        self._down_cell_lists_left = faults.down_cell_lists

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        with self._lock:
            was_hanging = self._faults.hang
            self._faults = faults
            self._match = re.compile(faults.match) if faults.match else None
            self._down_cell_lists_left = faults.down_cell_lists
        if was_hanging and not faults.hang:
            self.release()

    def hung_now(self) -> int:
        with self._lock:
            return self._hung_now

    def release(self) -> int:
        """Let every request blocked by hang mode go on; returns how many."""
        with self._lock:
            n = self._hung_now
            self._release.set()
            self._release = threading.Event()
        return n

    def enter(self) -> None:
        """A request arrived (for the capacity model)."""
        with self._lock:
            self._concurrent += 1

    def leave(self) -> None:
        with self._lock:
            self._concurrent -= 1

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    def before(self, route_key: str) -> FaultDecision:
        """Apply latency and hang to a request; say whether it must fail."""
        with self._lock:
            f = self._faults
            if self._match is not None and not self._match.search(route_key):
                return FaultDecision()
            latency = f.latency_seconds.low if f.latency_seconds.low == f.latency_seconds.high \
                else self._rng.uniform(f.latency_seconds.low, f.latency_seconds.high)
            hang = f.hang and not self._stop.is_set()
            release = self._release
            if hang:
                self._hung_now += 1
            roll = self._rng.random() \
                if (f.error_500_rate or f.error_503_rate or f.error_429_rate) else 1.0
            over = self._concurrent - f.capacity if f.capacity > 0 else 0
            refused = f.capacity > 0 and self._concurrent > f.capacity * f.overload_503_factor
        status = None
        retry_after = None
        if roll < f.error_500_rate:
            status = 500
        elif roll < f.error_500_rate + f.error_503_rate:
            status = 503
        elif roll < f.error_500_rate + f.error_503_rate + f.error_429_rate:
            status, retry_after = 429, f.retry_after_seconds
        if refused and status is None:
            status = 503
            self._note("overload_503")
        elif over > 0:
            # Past its capacity the API answers slower the busier it is.
            latency += f.overload_seconds * over
            self._note("overload_latency")
        if latency:
            self._note("latency")
        if hang:
            self._note("hang")
        if status is not None:
            self._note(f"error_{status}")
        self.sleep(latency)
        if hang:
            try:
                # stop() releases too, so None (no deadline) still ends with the cloud.
                release.wait(f.hang_seconds)
            finally:
                with self._lock:
                    self._hung_now -= 1
        return FaultDecision(latency, hang, status, retry_after)

    def down_cell(self) -> Callable[[str], bool]:
        """For one server list: whether a server (by id) is in a down cell."""
        with self._lock:
            share = self._faults.down_cell_share
            if share <= 0:
                return lambda server_id: False
            if self._faults.down_cell_lists > 0:
                if self._down_cell_lists_left <= 0:
                    return lambda server_id: False
                self._down_cell_lists_left -= 1
        self._note("down_cell")

        def down(server_id: str) -> bool:
            # Stable per server: a cell holds the same servers every list.
            digest = hashlib.sha256(server_id.encode()).digest()
            return int.from_bytes(digest[:4], "big") / 2 ** 32 < share
        return down

    def slow_create_delay(self) -> float:
        with self._lock:
            f = self._faults
            if f.slow_create_seconds <= 0:
                return 0.0
            if f.slow_create_share < 1.0 and self._rng.random() >= f.slow_create_share:
                return 0.0
        self._note("slow_create")
        return f.slow_create_seconds

