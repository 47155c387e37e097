"""One gate per provider that every cloud call goes through.

The gate gives three guarantees the incidents showed we need:

* **Rate**: calls start at least ``interval`` seconds apart (nodepool.yaml's
  ``rate``), enforced here because openstacksdk's own limiter cannot be set
  from clouds.yaml.
* **Deadline**: a call that has run longer than ``deadline`` is reported as
  timed out to whoever waits for it, even if the library never returns.  Its
  worker thread is written off and replaced, so hung calls cannot starve the
  pool: the next call still runs.
* **Counters**: count, errors, timeouts and time per call kind, and the calls
  in flight with their age, for metrics and for the on-call engineer.

Callers never block: ``submit`` returns an ``ApiCall`` to poll from a loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("nodepool.gate")


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

    def as_dict(self) -> dict:
        return {"count": self.count, "errors": self.errors, "timeouts": self.timeouts,
                "total_seconds": round(self.total_seconds, 3),
                "max_seconds": round(self.max_seconds, 3)}


@dataclass(eq=False)
class ApiCall:
    """A submitted call; poll ``done()`` and read ``result()``."""

    kind: str
    fn: Callable[[], Any]
    deadline: float
    clock: Callable[[], float]
    submitted_at: float
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


class ApiGate:
    def __init__(self, name: str, interval: float, deadline: float, workers: int = 4,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.name = name
        self.interval = max(0.0, interval)
        self.deadline = deadline
        self.workers = workers
        self.clock = clock
        self._sleep = sleep
        self._queue: queue.Queue[ApiCall | None] = queue.Queue()
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._stats: dict[str, CallStats] = {}
        self._running: dict[int, ApiCall] = {}  # thread ident -> call
        self._threads: list[threading.Thread] = []
        self._healthy = 0  # worker threads not written off
        self._closed = False
        self._seq = 0
        for _ in range(workers):
            self._spawn()

    # -- submitting -------------------------------------------------------

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ApiCall:
        call = ApiCall(kind, lambda: fn(*args, **kwargs), self.deadline, self.clock,
                       self.clock())
        if self._closed:
            call._error = GateClosed(f"{self.name}: gate closed")
            call._event.set()
            return call
        self._replace_hung_workers()
        self._queue.put(call)
        return call

    def call(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Submit and wait; for start-up and tools, never from a loop."""
        c = self.submit(kind, fn, *args, **kwargs)
        # Waiting for a queue slot is bounded by the rate and the number of
        # queued calls; the call itself by the deadline.
        while not c.done():
            c._event.wait(0.05)
        return c.result()

    # -- observing --------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        with self._lock:
            return {k: s.as_dict() for k, s in sorted(self._stats.items())}

    def in_flight(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            running = list(self._running.values())
        return [{"kind": c.kind, "age": round(now - (c.started_at or now), 3),
                 "expired": c.expired(now)} for c in running]

    def queued(self) -> int:
        return self._queue.qsize()

    # -- lifecycle --------------------------------------------------------

    def shutdown(self, wait: float = 5.0) -> None:
        self._closed = True
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call._error = GateClosed(f"{self.name}: gate closed")
                call._event.set()
        for _ in self._threads:
            self._queue.put(None)
        end = self.clock() + wait
        for t in self._threads:
            t.join(max(0.0, end - self.clock()))

    # -- internals --------------------------------------------------------

    def _spawn(self) -> None:
        with self._lock:
            self._seq += 1
            self._healthy += 1
            t = threading.Thread(target=self._worker, name=f"api-{self.name}-{self._seq}",
                                 daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _replace_hung_workers(self) -> None:
        now = self.clock()
        replace = 0
        with self._lock:
            for call in self._running.values():
                if not call._abandoned and call.expired(now):
                    call._abandoned = True
                    self._stats.setdefault(call.kind, CallStats()).timeouts += 1
                    self._healthy -= 1
                    replace += 1
                    log.warning("%s: %s passed its %gs deadline; its worker is written off",
                                self.name, call.kind, call.deadline)
        for _ in range(replace):
            self._spawn()

    def _wait_for_slot(self) -> None:
        with self._lock:
            now = self.clock()
            start = max(now, self._next_start)
            self._next_start = start + self.interval
        if start > now:
            self._sleep(start - now)

    def _worker(self) -> None:
        me = threading.get_ident()
        while True:
            call = self._queue.get()
            if call is None:
                return
            self._wait_for_slot()
            call.started_at = self.clock()
            with self._lock:
                self._running[me] = call
            try:
                call._value = call.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the poller
                call._error = e
            call.finished_at = self.clock()
            took = call.finished_at - call.started_at
            with self._lock:
                self._running.pop(me, None)
                st = self._stats.setdefault(call.kind, CallStats())
                st.count += 1
                st.total_seconds += took
                st.max_seconds = max(st.max_seconds, took)
                if call._error is not None:
                    st.errors += 1
                if call._abandoned:
                    # Counted as a timeout already, and a replacement worker
                    # runs; this thread retires.
                    call._event.set()
                    return
                if call.expired(call.finished_at):
                    st.timeouts += 1
            call._event.set()
