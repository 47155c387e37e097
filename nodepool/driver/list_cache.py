"""One cloud list (nova's servers, neutron's ports), refreshed at most
once per interval.

Every reader of a provider's servers (state machines, the quota ledger, the
leak cleaner) reads one list instead of asking the cloud about single
servers; the same holds for ports.  The cache never pretends: it says how
old its list is and what the last refresh failed with, and a refresh that
passed the gate's deadline is given up so a new one can start.  *When* a
list is wanted is not decided here but by whoever owns the pace (for
OpenStack, ``driver/openstack/list_pacing.py``).

One list is not proof that an item is gone (``confirm_gone``): nova leaves
out the servers of a cell that does not answer, and one such list would
free their quota, fail their builds and drop their claims.  An item missing
from a list stays in the snapshot, as last seen, until the next list misses
it too (unless ``confirm_gone`` says its last record needs no second look:
a server last seen being deleted is expected to go); and a partial record
(``is_partial``: all a down cell lets nova say of a server) keeps the
fields last seen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from nodepool.driver.gate import ApiCall, ApiGate

log = logging.getLogger("nodepool.listcache")

# want_now: lists in a burst after a quiet spell, and never closer than this.
URGENT_BURST = 2.0
URGENT_MIN_GAP = 0.25


@dataclass(frozen=True)
class ListSnapshot:
    """A list as the cloud gave it (items by id), and when the request for
    it was started.

    ``requested_at`` matters more than ``received_at``: a server missing from
    a list requested *after* our delete call returned is really gone.
    """

    items: dict[str, dict] = field(default_factory=dict)
    requested_at: float = float("-inf")
    received_at: float = float("-inf")
    # Servers kept although this list missed them (a second list decides).
    unconfirmed: frozenset[str] = frozenset()

    def get(self, item_id: str) -> dict | None:
        return self.items.get(item_id)

    def by_metadata(self, **wanted: str) -> list[dict]:
        out = []
        for item in self.items.values():
            meta = item.get("metadata") or {}
            if all(meta.get(k) == v for k, v in wanted.items()):
                out.append(item)
        return out


class ListCache:
    """One shared list: ``kind`` names the gate's call (nova's servers by
    default); ``idle_refresh=False`` lists only when someone asked."""

    def __init__(self, gate: ApiGate, fetch: Callable[[], list[dict]], interval: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 kind: str = "compute.list_servers", idle_refresh: bool = True,
                 confirm_gone: Callable[[dict], bool] | None = None,
                 is_partial: Callable[[dict], bool] | None = None):
        self.gate = gate
        self.kind = kind
        self.idle_refresh = idle_refresh
        self.confirm_gone = confirm_gone
        self.is_partial = is_partial
        self.fetch = fetch
        self.interval = interval
        self.clock = clock
        self.snapshot = ListSnapshot()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.refreshes = 0
        self.failures = 0
        self._call: ApiCall | None = None
        self._wanted_after: float | None = None
        self._soon: float | None = None   # a shorter spacing for the pending want
        # Lists asked for "now" (see want_now) spend from a budget that
        # refills at one list per interval and every list draws from, so
        # under steady demand they cost nothing more than the pace does.
        self._urgent = False
        self._tokens = URGENT_BURST
        self._tokens_at = clock()
        self._unconfirmed: frozenset[str] = frozenset()

    def _judge(self, listed: dict[str, dict]) -> tuple[dict[str, dict], frozenset[str]]:
        """The new list with what one list cannot prove (see the module doc)."""
        previous = self.snapshot.items
        if self.is_partial is not None:
            for item_id, record in listed.items():
                known = previous.get(item_id)
                if known is not None and self.is_partial(record):
                    listed[item_id] = {**known, **record}
        if self.confirm_gone is None:
            return listed, frozenset()
        # Missed by the list before too: gone.
        kept = {item_id for item_id, record in previous.items()
                if item_id not in listed and item_id not in self._unconfirmed
                and self.confirm_gone(record)}
        for item_id in kept:
            listed[item_id] = previous[item_id]
        return listed, frozenset(kept)

    def want_fresh(self, after: float | None = None, *, within: float | None = None) -> None:
        """Ask for a list requested after ``after`` (default: now), e.g.
        once a delete call has returned; still at most one per interval, or
        per ``within`` seconds when given (a request waits for quota)."""
        t = self.clock() if after is None else after
        if self._wanted_after is None or t > self._wanted_after:
            self._wanted_after = t
        if within is not None:
            self._soon = within if self._soon is None else min(self._soon, within)

    def want_now(self) -> None:
        """Ask for a list as soon as the budget allows, even before the
        interval has passed (a server has likely become ACTIVE): at most
        one per interval on average, URGENT_BURST after a quiet spell."""
        self.want_fresh()
        self._urgent = True

    def _refill(self, now: float) -> None:
        if self.interval > 0:
            self._tokens = min(URGENT_BURST,
                               self._tokens + (now - self._tokens_at) / self.interval)
        self._tokens_at = now

    def tick(self) -> bool:
        """Collect a finished refresh and start one if due; True if a new
        snapshot arrived.  Never blocks."""
        now = self.clock()
        arrived = False
        if self._call is not None and self._call.done():
            call, self._call = self._call, None
            try:
                items = call.result()
            except Exception as e:  # noqa: BLE001 - recorded, retried next interval
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.last_error_at = now
                log.warning("%s: %s failed: %s", self.gate.name, self.kind, self.last_error)
            else:
                listed, unconfirmed = self._judge({s["id"]: s for s in items if "id" in s})
                self.snapshot = ListSnapshot(listed, call.started_at or call.submitted_at,
                                               now, unconfirmed)
                if unconfirmed:
                    # No list is asked for here: whoever waits for an item
                    # to go still sees it and asks at its own pace.
                    log.debug("%s: %d item(s) missing from one list; kept until the "
                              "next list", self.gate.name, len(unconfirmed))
                self._unconfirmed = unconfirmed
                self.refreshes += 1
                self.last_error = None
                arrived = True
        if self._call is None and self._due(now):
            self._soon = None
            self._urgent = False
            self._refill(now)
            self._tokens = max(0.0, self._tokens - 1)
            self._call = self.gate.submit(self.kind, self.fetch)
        return arrived

    def _due(self, now: float) -> bool:
        last = max(self.snapshot.requested_at, self.last_error_at or float("-inf"))
        wanted = self._wanted_after is not None and \
            self.snapshot.requested_at <= self._wanted_after
        spacing = min(self.interval, self._soon) if wanted and self._soon is not None \
            else self.interval
        if wanted and self._urgent and now - last >= URGENT_MIN_GAP:
            self._refill(now)
            if self._tokens >= 1:
                return True
        if now - last < spacing:
            return False
        if wanted:
            return True
        if not self.idle_refresh:
            return False
        if self.snapshot.received_at == float("-inf"):
            return True
        # Even with nothing pending, keep the view (and quota) current.
        return now - self.snapshot.requested_at >= self.interval * 4

    def age(self) -> float | None:
        if self.snapshot.received_at == float("-inf"):
            return None
        return self.clock() - self.snapshot.received_at

    def status(self) -> dict:
        return {
            "servers": len(self.snapshot.items),
            "unconfirmed_gone": len(self.snapshot.unconfirmed),
            "age": None if self.age() is None else round(self.age(), 1),
            "refreshing_for": None if self._call is None else round(self._call.age(), 1),
            "last_error": self.last_error,
            "refreshes": self.refreshes,
            "failures": self.failures,
        }
