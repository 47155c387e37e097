"""One gate per provider that every cloud call goes through.

The gate gives four guarantees the incidents and the throughput issue showed
we need:

* **Priority**: calls run by ``Priority`` (nodepool/driver/budget.py):
  creates and deletes first, then the status lists, then limits and catalog
  reads, then leak sweeps; a lower class never takes the last free slot
  while a higher one waits.
* **Budget**: how many calls run at once adapts (AIMD: up while calls go
  well, halved on HTTP 429 or 503, a timeout or rising latency; a 429's
  ``Retry-After`` holds every call back that long).  With ``rate`` set,
  mutating calls (create, delete) also take a token from a bucket that
  refills once per ``rate`` seconds, and reads from their own bucket
  (``read-rate``).  openstacksdk's own limiter cannot be set from
  clouds.yaml, so this is the only one.
* **Deadline**: a call that has run longer than ``deadline`` is reported as
  timed out to whoever waits for it, even if the library never returns.  Its
  worker thread is written off and replaced, so hung calls cannot starve the
  pool: the next call still runs.
* **Counters**: count, errors, timeouts, time and queue wait per call kind,
  and the calls in flight with their age, for metrics and for the on-call
  engineer.

Callers never block: ``submit`` returns an ``ApiCall`` to poll from a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from nodepool.driver.budget import (AdaptiveLimit, LatencyWatch, Priority, TokenBucket,
                                    default_priority, is_mutating)

log = logging.getLogger("nodepool.gate")

# With ``rate`` set and no ``read-rate``: reads get this many times the budget.
READ_RATE_MULTIPLE = 5
# Bucket sizes: the burst a quiet provider may send at once.
MUTATING_BURST = 2.0
READ_BURST = 5.0
# A 429's Retry-After is honoured up to this many seconds.
MAX_HOLD = 60.0


class ApiTimeout(Exception):
    """The call passed its deadline without an answer."""


class GateClosed(Exception):
    """The gate was shut down before the call could run."""


@dataclass
class CallStats:
    count: int = 0
    errors: int = 0
    timeouts: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    started: int = 0
    wait_seconds: float = 0.0       # queued before starting, summed
    max_wait_seconds: float = 0.0
    in_flight: int = 0

    def as_dict(self) -> dict:
        return {"count": self.count, "errors": self.errors, "timeouts": self.timeouts,
                "total_seconds": round(self.total_seconds, 3),
                "max_seconds": round(self.max_seconds, 3),
                "started": self.started,
                "wait_seconds": round(self.wait_seconds, 3),
                "max_wait_seconds": round(self.max_wait_seconds, 3),
                "in_flight": self.in_flight}


@dataclass(eq=False)
class ApiCall:
    """A submitted call; poll ``done()`` and read ``result()``."""

    kind: str
    fn: Callable[[], Any]
    deadline: float
    clock: Callable[[], float]
    submitted_at: float
    priority: Priority = Priority.BACKGROUND
    mutating: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    _value: Any = None
    _error: BaseException | None = None
    _event: threading.Event = field(default_factory=threading.Event)
    _abandoned: bool = False

    def expired(self, now: float | None = None) -> bool:
        if self._event.is_set() or self.started_at is None:
            return False
        now = self.clock() if now is None else now
        return now - self.started_at > self.deadline

    def done(self) -> bool:
        return self._event.is_set() or self.expired()

    def wait(self, timeout: float | None = None) -> bool:
        """For tools and tests; loops poll ``done()`` instead."""
        end = None if timeout is None else self.clock() + timeout
        while not self.done():
            left = None if end is None else end - self.clock()
            if left is not None and left <= 0:
                return False
            self._event.wait(0.05 if left is None else min(0.05, left))
        return True

    def result(self) -> Any:
        if self._event.is_set():
            if self._error is not None:
                raise self._error
            return self._value
        if self.expired():
            raise ApiTimeout(f"{self.kind} gave no answer within {self.deadline:g}s")
        raise RuntimeError(f"{self.kind} is still running; poll done() first")

    def age(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        return now - self.submitted_at



def _overload_signal(exc: BaseException) -> tuple[bool, float | None]:
    """(is it an overload signal, Retry-After seconds if the cloud gave one)."""
    status = getattr(exc, "status_code", None)
    if status in (429, 503):
        retry_after = None
        response = getattr(exc, "response", None)
        header = getattr(response, "headers", {}).get("Retry-After") if response is not None \
            else None
        try:
            retry_after = float(header) if header is not None else None
        except ValueError:
            retry_after = None  # an HTTP date: treated as no hint
        return True, retry_after
    return isinstance(exc, ApiTimeout) or "timeout" in type(exc).__name__.lower(), None


# At most this many worker threads hung past their deadline at once; see
# ApiGate._ensure_workers_locked.
MAX_WRITTEN_OFF = 16

class ApiGate:
    def __init__(self, name: str, deadline: float, *, rate: float | None = None,
                 read_rate: float | None = None, limit: AdaptiveLimit | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``rate``/``read_rate``: seconds between mutating/read calls on
        average (None: no fixed ceiling, only the adaptive limit)."""
        self.name = name
        self.deadline = deadline
        self.clock = clock
        self.limit = limit or AdaptiveLimit()
        self._cond = threading.Condition()
        self._pending: dict[Priority, deque[ApiCall]] = {p: deque() for p in Priority}
        self._stats: dict[str, CallStats] = {}
        self._latency: dict[str, LatencyWatch] = {}
        self._running: dict[int, ApiCall] = {}  # thread ident -> call
        self._threads: list[threading.Thread] = []
        self._healthy = 0   # worker threads not written off
        self._closed = False
        self._seq = 0
        self._hold_until = float("-inf")
        self.overloads = 0
        # Told (on the worker's thread) each time a call ends: the provider
        # loop wakes instead of finding the answer on its next pass.
        self.on_done: Callable[[], None] | None = None
        # Launchers that split this budget (several launchers on one cloud
        # project, see set_share); the configured rates are for all of them.
        self.share = 1
        self._configured_rates: tuple[float | None, float | None] = (rate, read_rate)
        self._ceiling = self.limit.ceiling
        self.set_rates(rate, read_rate)

    def set_share(self, launchers: int) -> None:
        """Split the budget between ``launchers`` launchers serving the same
        cloud project: each waits ``launchers`` times the configured seconds
        between calls and keeps at most 1/``launchers`` of the concurrency
        ceiling (not below the floor), so together they spend the budget
        once."""
        n = max(1, int(launchers))
        with self._cond:
            if n == self.share:
                return
            self.share = n
            self.limit.ceiling = max(self.limit.floor, self._ceiling // n)
            self.limit.value = min(self.limit.value, float(self.limit.ceiling))
        self.set_rates(*self._configured_rates)

    def set_rates(self, rate: float | None, read_rate: float | None = None) -> None:
        """``rate`` as in nodepool.yaml (seconds between calls); a config
        reload applies it to calls not yet started."""
        with self._cond:
            self._configured_rates = (rate, read_rate)
            n = self.share
            rate = rate * n if rate else rate
            read_rate = read_rate * n if read_rate else read_rate
            self.rate = rate
            if rate is None or rate <= 0:
                self.read_rate = read_rate if read_rate and read_rate > 0 else None
                self._mutating_bucket = None
            else:
                self.read_rate = read_rate if read_rate and read_rate > 0 \
                    else rate / READ_RATE_MULTIPLE
                self._mutating_bucket = TokenBucket(1.0 / rate, MUTATING_BURST)
            self._read_bucket = TokenBucket(1.0 / self.read_rate, READ_BURST) \
                if self.read_rate else None
            self._cond.notify_all()

    # -- submitting -------------------------------------------------------

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any,
               priority: Priority | None = None, **kwargs: Any) -> ApiCall:
        call = ApiCall(kind, lambda: fn(*args, **kwargs), self.deadline, self.clock,
                       self.clock(), default_priority(kind) if priority is None else priority,
                       is_mutating(kind))
        if self._closed:
            call._error = GateClosed(f"{self.name}: gate closed")
            call._event.set()
            return call
        self._replace_hung_workers()
        with self._cond:
            self._pending[call.priority].append(call)
            self._ensure_workers_locked()
            self._cond.notify_all()
        return call

    # -- observing --------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        """Per call kind: count, errors, timeouts, time, queue wait, in flight."""
        with self._cond:
            return {k: s.as_dict() for k, s in sorted(self._stats.items())}

    def in_flight(self) -> list[dict]:
        now = self.clock()
        with self._cond:
            running = list(self._running.values())
        return [{"kind": c.kind, "age": round(now - (c.started_at or now), 3),
                 "expired": c.expired(now)} for c in running]

    def queued(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._pending.values())

    def budget(self) -> dict:
        """The budget as it stands, for status, ``nodepool info`` and statsd."""
        now = self.clock()
        with self._cond:
            return {
                "mode": "adaptive" if self.rate is None else "rate",
                "share": self.share,
                "rate": self.rate, "read_rate": self.read_rate,
                "concurrency_limit": self.limit.limit,
                "concurrency_floor": self.limit.floor,
                "concurrency_ceiling": self.limit.ceiling,
                "in_flight": self._busy_locked(),
                "queued": {p.name.lower(): len(q) for p, q in self._pending.items()},
                "held_for": round(max(0.0, self._hold_until - now), 3),
                "overloads": self.overloads,
                "decreases": self.limit.decreases,
                "written_off": self._written_off_locked(),
                "written_off_max": MAX_WRITTEN_OFF,
            }

    # -- lifecycle --------------------------------------------------------

    def shutdown(self, wait: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for q in self._pending.values():
                while q:
                    call = q.popleft()
                    call._error = GateClosed(f"{self.name}: gate closed")
                    call._event.set()
            threads = list(self._threads)
            self._cond.notify_all()
        end = self.clock() + wait
        for t in threads:
            t.join(max(0.0, end - self.clock()))

    # -- internals --------------------------------------------------------

    def _spawn_locked(self) -> None:
        self._seq += 1
        self._healthy += 1
        t = threading.Thread(target=self._worker, name=f"api-{self.name}-{self._seq}",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _ensure_workers_locked(self) -> None:
        """Enough threads for the calls that may run now (never more than
        the limit): threads are started as demand needs them.  Threads
        written off (their call hung past its deadline) are not replaced
        beyond MAX_WRITTEN_OFF: an API that never answers must not make the
        launcher start a thread per call; calls then wait for a hung one to
        return, and /health says so."""
        if self._written_off_locked() >= MAX_WRITTEN_OFF:
            return
        wanted = min(self.limit.limit, self._busy_locked() + self._pending_count_locked())
        while self._healthy < wanted:
            self._spawn_locked()

    def _written_off_locked(self) -> int:
        return sum(1 for c in self._running.values() if c._abandoned)

    def _busy_locked(self) -> int:
        return sum(1 for c in self._running.values() if not c._abandoned)

    def _overload_locked(self, now: float, why: str) -> None:
        self.overloads += 1
        if self.limit.on_overload(now):
            log.info("%s: %s; at most %d API calls at once now", self.name, why,
                     self.limit.limit)

    def _replace_hung_workers(self) -> None:
        now = self.clock()
        with self._cond:
            for call in self._running.values():
                if not call._abandoned and call.expired(now):
                    call._abandoned = True
                    st = self._stats.setdefault(call.kind, CallStats())
                    st.timeouts += 1
                    st.in_flight -= 1
                    self._healthy -= 1
                    self._overload_locked(now, f"{call.kind} passed its {call.deadline:g}s "
                                               "deadline")
                    log.warning("%s: %s passed its %gs deadline; its worker is written off",
                                self.name, call.kind, call.deadline)
            self._ensure_workers_locked()
            self._cond.notify_all()

    def _pending_count_locked(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def _pick_locked(self, now: float) -> tuple[ApiCall | None, float | None]:
        """The next call allowed to start, or how long to wait for one."""
        if now < self._hold_until:
            return None, self._hold_until - now
        free = self.limit.limit - self._busy_locked()
        wait: float | None = None
        waiting_above = False
        for prio in Priority:
            queue = self._pending[prio]
            if not queue:
                continue
            # A lower class leaves the last free slot to a higher one that waits.
            if free <= 0 or (waiting_above and free <= 1):
                return None, wait
            tried: set[int] = set()
            for call in queue:
                bucket = self._mutating_bucket if call.mutating else self._read_bucket
                if id(bucket) in tried:
                    continue
                if bucket is None or bucket.try_take(now):
                    queue.remove(call)
                    return call, None
                tried.add(id(bucket))
                left = bucket.wait_time(now)
                wait = left if wait is None else min(wait, left)
            waiting_above = True
        return None, wait

    def _worker(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        self._healthy -= 1
                        return
                    call, wait = self._pick_locked(self.clock())
                    if call is not None:
                        break
                    self._cond.wait(min(wait, 1.0) if wait is not None else 1.0)
                call.started_at = self.clock()
                self._running[me] = call
                st = self._stats.setdefault(call.kind, CallStats())
                waited = call.started_at - call.submitted_at
                st.started += 1
                st.wait_seconds += waited
                st.max_wait_seconds = max(st.max_wait_seconds, waited)
                st.in_flight += 1
                busy = self._busy_locked()
            try:
                call._value = call.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the poller
                call._error = e
            call.finished_at = self.clock()
            if self._finish(me, call, busy):
                return

    def _finish(self, me: int, call: ApiCall, busy: int) -> bool:
        """Book the call; True if this (written-off) thread must retire."""
        took = call.finished_at - call.started_at
        with self._cond:
            self._running.pop(me, None)
            st = self._stats.setdefault(call.kind, CallStats())
            st.count += 1
            st.total_seconds += took
            st.max_seconds = max(st.max_seconds, took)
            if call._error is not None:
                st.errors += 1
            if call._abandoned:
                # Counted as a timeout already, and a replacement worker
                # runs; this thread retires.  If replacements stopped at
                # MAX_WRITTEN_OFF, its return makes room for one now.
                call._event.set()
                self._ensure_workers_locked()
                self._cond.notify_all()
                return True
            st.in_flight -= 1
            now = call.finished_at
            overloaded, retry_after = (False, None) if call._error is None \
                else _overload_signal(call._error)
            if call.expired(now):
                st.timeouts += 1
                overloaded = True
            # Latency is judged on answers: a failure or a timeout is its own
            # signal, and its duration (a client timeout) says nothing of
            # how fast the cloud answers.
            rising = not overloaded and call._error is None and \
                self._latency.setdefault(call.kind, LatencyWatch()).add(took)
            if overloaded:
                if retry_after:
                    self._hold_until = max(self._hold_until, now + min(retry_after, MAX_HOLD))
                self._overload_locked(now, f"{call.kind} answered {type(call._error).__name__}"
                                      if call._error is not None else f"{call.kind} timed out")
            elif rising:
                self._overload_locked(now, f"{call.kind} answers slower than usual")
            else:
                self.limit.on_success(busy)
            self._ensure_workers_locked()
            self._cond.notify_all()
        call._event.set()
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # a listener must not kill a worker
                log.exception("%s: call-done listener failed", self.name)
        return False
