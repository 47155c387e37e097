"""Flavors, images and networks: read rarely, looked up for every create.

Each list is fetched through the gate once, kept for ``ttl`` seconds, and
re-read early (at most every ``retry`` seconds) when a lookup misses, so a new
image or flavor is found without a call per create.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from nodepool.driver.gate import ApiCall, ApiGate

log = logging.getLogger("nodepool.catalog")

KINDS = ("flavors", "images", "networks")


@dataclass
class _Entry:
    fetch: Callable[[], list]
    items: list | None = None
    fetched_at: float | None = None
    attempted_at: float | None = None
    call: ApiCall | None = None
    error: str | None = None
    reload_wanted: bool = False


class CloudCatalog:
    def __init__(self, gate: ApiGate, fetchers: dict[str, Callable[[], list]],
                 ttl: float = 3600, retry: float = 60,
                 clock: Callable[[], float] = time.monotonic):
        self.gate = gate
        self.ttl = ttl
        self.retry = retry
        self.clock = clock
        self._entries = {kind: _Entry(fn) for kind, fn in fetchers.items()}

    def tick(self) -> None:
        now = self.clock()
        for kind, e in self._entries.items():
            if e.call is not None and e.call.done():
                call, e.call = e.call, None
                try:
                    e.items = list(call.result())
                    e.fetched_at = now
                    e.error = None
                except Exception as ex:  # noqa: BLE001 - kept, retried later
                    e.error = f"{type(ex).__name__}: {ex}"
                    log.warning("%s: listing %s failed: %s", self.gate.name, kind, e.error)
            if e.call is None and self._due(e, now):
                e.attempted_at = now
                e.reload_wanted = False
                e.call = self.gate.submit(f"catalog.list_{kind}", e.fetch)

    def _due(self, e: _Entry, now: float) -> bool:
        since_attempt = now - e.attempted_at if e.attempted_at is not None else None
        if e.items is None:
            # Never loaded: retry failures quickly at first, bounded by the rate.
            return since_attempt is None or since_attempt >= min(self.retry, 5.0)
        if e.reload_wanted and since_attempt >= self.retry:
            return True
        return now - e.fetched_at >= self.ttl

    def items(self, kind: str) -> list | None:
        """The list, or None if it was never read."""
        return self._entries[kind].items

    def loaded(self, *kinds: str) -> bool:
        return all(self._entries[k].items is not None for k in (kinds or self._entries))

    def missed(self, kind: str) -> None:
        """A lookup found nothing: read the list again soon."""
        self._entries[kind].reload_wanted = True

    def reload_pending(self, kind: str) -> bool:
        e = self._entries[kind]
        return e.reload_wanted or e.call is not None

    def status(self) -> dict:
        now = self.clock()
        return {k: {"items": None if e.items is None else len(e.items),
                    "age": None if e.fetched_at is None else round(now - e.fetched_at, 1),
                    "error": e.error} for k, e in self._entries.items()}
