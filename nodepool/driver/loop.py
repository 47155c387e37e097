"""A provider's own loop: one thread that runs a pass, waits, and repeats.

Shared by the drivers so each keeps only what its pass does.  A pass that
raises is logged and the loop goes on; ``age()`` is what /health reads
(``LaunchProvider.tick_age``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("nodepool.driver.loop")

MIN_GAP = 0.02


class ProviderLoop:
    def __init__(self, name: str, one_pass: Callable[[], None],
                 interval: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic):
        """``interval`` is read before each wait, so it may change (tests
        shorten it)."""
        self.name = name
        self._one_pass = one_pass
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_pass: float | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"provider-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, wait: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)

    def wake(self) -> None:
        """Pass again soon rather than after the interval: something the
        pass waits for happened (a cloud call answered, a build began)."""
        self._wake.set()

    def run_pass(self) -> None:
        """One pass, now, on the caller's thread."""
        try:
            self._one_pass()
        finally:
            self._last_pass = self._clock()

    def age(self) -> float | None:
        """Seconds since a pass last finished (None before the first)."""
        return None if self._last_pass is None else self._clock() - self._last_pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:  # the loop must survive anything
                log.exception("%s: provider loop pass failed", self.name)
            # A burst of wake-ups costs at most one pass per MIN_GAP.
            self._stop.wait(MIN_GAP)
            self._wake.wait(max(0.0, self._interval() - MIN_GAP))
            self._wake.clear()


class LoopedProvider:
    """``start``, ``tick`` and ``tick_age`` of a ``LaunchProvider`` whose
    loop is ``self._loop``."""

    _loop: ProviderLoop

    def start(self) -> None:
        self._loop.start()

    def tick(self) -> None:
        """One pass now, on the caller's thread (tests drive it this way)."""
        self._loop.run_pass()

    def tick_age(self) -> float | None:
        return self._loop.age()
