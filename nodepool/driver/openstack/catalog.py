"""Flavors, images and networks: read rarely, looked up for every create.

Each list is fetched through the gate once, kept for ``ttl`` seconds, and
re-read early when a lookup misses, so a new image or flavor is found without
a call per create.  A miss is *settled* (the label really cannot be served)
once a list requested after the miss lacks the item too; such a list counts
for ``retry`` seconds, after which the next miss reads the list again.  So a
missing image costs at most one list call per ``retry`` seconds, and a build
for it fails after one re-read instead of waiting forever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from nodepool.driver.gate import ApiCall, ApiGate

log = logging.getLogger("nodepool.catalog")


def pick_flavor(flavors: Iterable[Mapping[str, Any]], *, name: str | None,
                min_ram: int) -> Mapping[str, Any] | None:
    """A label's flavor, chosen as upstream Nodepool chooses it.

    Flavors are considered smallest first (by RAM, then by name).  With
    ``min-ram``, the first with at least that much RAM whose name contains
    ``flavor-name`` (when given: a substring filter, so ``Performance``
    matches ``Performance 8GB``).  Without ``min-ram``, the first whose name
    or id is ``flavor-name``.  Disabled flavors are never chosen.
    """
    ordered = sorted((f for f in flavors if not f.get("OS-FLV-DISABLED:disabled")),
                     key=lambda f: (f.get("ram") or 0, str(f.get("name"))))
    if min_ram:
        return next((f for f in ordered if (f.get("ram") or 0) >= min_ram
                     and (not name or name in str(f.get("name")))), None)
    if not name:
        # config-validate requires flavor-name or min-ram; min-ram: 0 alone
        # takes the smallest flavor.
        return ordered[0] if ordered else None
    return next((f for f in ordered if name in (f.get("name"), f.get("id"))), None)


def describe_flavor_choice(name: str | None, min_ram: int) -> str:
    """What a label asks for, in words, for a "no such flavor" message."""
    if min_ram and name:
        return f"flavor whose name contains {name!r} with at least {min_ram} MB RAM"
    if min_ram:
        return f"flavor with at least {min_ram} MB RAM"
    return f"flavor {name!r}"


@dataclass
class _Entry:
    fetch: Callable[[], list]
    items: list | None = None
    fetched_at: float | None = None
    requested_at: float | None = None   # when the call that gave ``items`` was sent
    attempted_at: float | None = None
    call: ApiCall | None = None
    error: str | None = None
    miss_at: float | None = None        # a lookup missed; a list requested later settles it


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
                    e.requested_at = call.started_at or call.submitted_at
                    e.error = None
                except Exception as ex:  # noqa: BLE001 - kept, retried later
                    e.error = f"{type(ex).__name__}: {ex}"
                    log.warning("%s: listing %s failed: %s", self.gate.name, kind, e.error)
            if e.call is None and self._due(e, now):
                e.attempted_at = now
                e.call = self.gate.submit(f"catalog.list_{kind}", e.fetch)

    def _due(self, e: _Entry, now: float) -> bool:
        since_attempt = now - e.attempted_at if e.attempted_at is not None else None
        if e.items is None:
            # Never loaded: retry failures quickly at first, bounded by the rate.
            return since_attempt is None or since_attempt >= min(self.retry, 5.0)
        if self._miss_unsettled(e):
            # Re-read at once for a new miss; after a failed re-read, retry
            # at the never-loaded pace rather than every pass.
            if e.attempted_at <= e.miss_at or since_attempt >= min(self.retry, 5.0):
                return True
        # Expired: re-read, but after a failed re-read not on every pass.
        return now - e.fetched_at >= self.ttl and since_attempt >= min(self.retry, 5.0)

    @staticmethod
    def _miss_unsettled(e: _Entry) -> bool:
        return e.miss_at is not None and (e.requested_at is None
                                          or e.requested_at <= e.miss_at)

    def items(self, kind: str) -> list | None:
        """The list, or None if it was never read."""
        return self._entries[kind].items

    def loaded(self, *kinds: str) -> bool:
        return all(self._entries[k].items is not None for k in (kinds or self._entries))

    def missed(self, kind: str) -> bool:
        """A lookup in ``kind`` found nothing.  True when that is settled: the
        list in hand was requested after a miss was noted, less than
        ``retry`` seconds ago.  Otherwise a re-read is asked for (the next
        ``tick`` sends it) and False is returned: look again after it."""
        e = self._entries[kind]
        now = self.clock()
        if e.miss_at is not None and not self._miss_unsettled(e):
            if now - e.requested_at < self.retry:
                return True
            e.miss_at = None  # that re-read is old: the item may exist by now
        if e.miss_at is None:
            e.miss_at = now
        return False

    def status(self) -> dict:
        now = self.clock()
        return {k: {"items": None if e.items is None else len(e.items),
                    "age": None if e.fetched_at is None else round(now - e.fetched_at, 1),
                    "error": e.error} for k, e in self._entries.items()}
