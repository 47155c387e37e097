"""What one provider sees of its project's shared quota book.

The launcher hands each provider a ``SharedQuota`` (nodepool.quota.shared);
for a provider in a project with a book, that is a ``ProviderShare``: the
project's book (``ProjectBook``, shared by every provider of this launcher
in the project) plus what this provider's current limits reading covers and
what its server lists showed since.  It gathers the facts and asks the
book's policy (``judge_create``, pure) whether a create fits; the book
does the ZooKeeper reads and writes.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from nodepool.quota import Resources
from nodepool.quota.shared import ReadingCover, judge_create, parse_book
from nodepool.zk.project_book import LAYER, ProjectBook


class ProviderShare:
    """What one provider sees of its project's book (``SharedQuota``): the
    book, plus what this provider's current limits reading covers and what
    its server lists showed since."""

    def __init__(self, book: ProjectBook, clock: Callable[[], float] = time.monotonic):
        self.book = book
        self.clock = clock
        self._lock = threading.Lock()
        self._covered: frozenset[str] = frozenset()
        self._reading_started: float | None = None
        # When that reading became the ledger's: nova had answered it.
        self._reading_applied_at: float | None = None
        self._listed_at: dict[str, float] = {}
        # Keys this provider's ledger counted at some point: the ledger
        # frees those itself, so they are never freed here as well.
        self._local_seen: set[str] = set()
        self._removed_seen = 0
        self._doubtful = False

    def _reasons(self, names: frozenset[str], members: list[str], cost: Resources,
                 headroom: Resources, limit: Resources, local_covered: Resources,
                 local_in_flight: Resources, local_keys: frozenset) -> list[str]:
        """The book's facts for ``judge_create`` (nodepool.quota.shared)."""
        gone = self.book.gone_keys()
        # Only live launchers' claims count; any other (a launcher's going
        # between our two reads, or a znode written by hand) is in flight
        # as a dead launcher's until a reading that started after it was
        # first seen, and a persistent one not at all.
        live = self.book.trusted_launchers(members)
        claims, strays = self.book.sort_claims(parse_book(names), live)
        vanished = self.book.vanished(names)
        with self._lock:
            self._local_seen.update(k for k in local_keys if isinstance(k, str))
            reading = ReadingCover(self._covered, self._reading_started,
                                   self._reading_applied_at, self._listed_at)
            verdict = judge_create(
                cost, claims=claims, strays=strays, vanished=vanished, gone=gone, live=live,
                me=self.book.launcher_id, reading=reading, local_seen=self._local_seen,
                local_keys=local_keys, headroom=headroom, limit=limit,
                local_covered=local_covered, local_in_flight=local_in_flight, layer=LAYER)
            if verdict.doubtful:
                self._doubtful = True
        return verdict.reasons

    def reserve(self, key: str, cost: Resources, headroom: Resources, limit: Resources,
                local_covered: Resources, local_in_flight: Resources,
                local_keys: frozenset) -> list[str]:
        # The cached book first: a create that waits for quota costs no
        # round trip on every pass.
        reasons = self.check(cost, headroom, limit, local_covered, local_in_flight,
                             local_keys)
        if reasons:
            return reasons
        return self.book.reserve(key, cost, lambda names, members: self._reasons(
            names, members, cost, headroom, limit, local_covered, local_in_flight,
            local_keys))

    def check(self, cost: Resources, headroom: Resources, limit: Resources,
              local_covered: Resources, local_in_flight: Resources,
              local_keys: frozenset) -> list[str]:
        names, members = self.book.snapshot()
        return self._reasons(names, members, cost, headroom, limit, local_covered,
                             local_in_flight, local_keys)

    def reading_started(self) -> object:
        return (self.book.owned_names(), self.clock())

    def reading_applied(self, token: object) -> None:
        if not isinstance(token, tuple):
            return
        names, started = token
        with self._lock:
            self._covered = names
            self._reading_started = started
            self._reading_applied_at = self.clock()
            # Only lists requested after this reading started count now.
            self._listed_at = {k: t for k, t in self._listed_at.items() if t >= started}
            self._doubtful = False
            keys = {c.key for c in parse_book(names)}
            self._local_seen &= keys

    def listed(self, keys: Iterable[str], requested_at: float) -> None:
        with self._lock:
            for key in keys:
                self._listed_at[key] = requested_at

    def claimed_elsewhere(self, key: str) -> bool:
        return self.book.claimed_elsewhere(key)

    def servers_gone(self, keys: frozenset) -> None:
        self.book.forget(keys, self.clock())

    def reading_doubtful(self) -> bool:
        with self._lock:
            doubtful, self._doubtful = self._doubtful, False
        return doubtful

    def others_covered(self) -> bool:
        with self._lock:
            covered = self._covered
        me = self.book.launcher_id
        return any(c.launcher != me for c in parse_book(covered))

    def look_again(self) -> bool:
        removed = self.book.removed_by_others
        if removed != self._removed_seen:
            self._removed_seen = removed
            return True
        return False
