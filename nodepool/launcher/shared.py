"""Which cloud project a provider works in, for the shared quota book.

Launchers share one book per cloud project, whatever they call the
provider or the cloud: the project is its identity service's URL, the
project id and the region, as the provider's connection reports them
(from its token, so ``project_id`` and ``project_name`` spellings of one
project, or a vendor profile, come to the same key).  The project is
worked out again whenever the provider connects anew (a reload that
changes its ``region-name`` or cloud entry): from then on its claims, API
share and leak-cleaner election are the new project's.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from nodepool.quota.resources import Resources
from nodepool.quota.shared import launcher_share, project_key
from nodepool.zk.provider_share import ProviderShare
from nodepool.zk.shared_quota import ProjectBook, SharedQuotaBooks

log = logging.getLogger("nodepool.launcher")

LAYER = "shared quota"


def project_of(identity: dict | None) -> tuple[str, dict] | None:
    """(project key, description) of a provider's connection's project
    (``cloud_project()``); None when it names no project."""
    if not identity or not identity.get("project_id"):
        return None
    description = {"auth_url": identity.get("auth_url"),
                   "project_id": identity["project_id"],
                   "region": identity.get("region")}
    return project_key(description["auth_url"], description["project_id"], None, None,
                       description["region"]), description


class ProjectShare:
    """A provider's ``SharedQuota`` that follows the provider's project: the
    share of the book of the project its connection works in now, none
    while that project is unknown."""

    def __init__(self, books: SharedQuotaBooks, provider_name: str,
                 identity: Callable[[], dict | None]):
        self.books = books
        self.provider_name = provider_name
        self.identity = identity
        self._lock = threading.Lock()
        self._seen: object = ()          # the identity the share is for
        self.key: str | None = None
        self._share: ProviderShare | None = None

    def current(self) -> tuple[bool, ProviderShare | None]:
        """(project known, its share): unknown until the provider connected;
        known without a share when the connection names no project."""
        identity = self.identity()
        with self._lock:
            if identity == self._seen:
                return identity is not None, self._share
            old_key = self.key
            project = project_of(identity)
            key = project[0] if project is not None else None
            if key != old_key:
                share = None
                if project is not None:
                    book = self.books.acquire(*project)
                    book.add_provider(self.provider_name)
                    share = ProviderShare(book)
                if old_key is not None:
                    self.books.release(old_key)
                self.key, self._share = key, share
                log.info("provider %s: shared quota book %s (was %s)", self.provider_name,
                         key, old_key)
            self._seen = identity
            return identity is not None, self._share

    def book(self) -> ProjectBook | None:
        share = self.current()[1]
        return share.book if share is not None else None

    def close(self) -> None:
        with self._lock:
            if self.key is not None:
                self.books.release(self.key)
            self.key, self._share, self._seen = None, None, ()

    # -- for the provider's API budget and leak cleaning ------------------------

    def launcher_count(self) -> int:
        book = self.book()
        return launcher_share(book.launcher_count() if book is not None else 1)

    def is_cleaner(self) -> bool:
        known, share = self.current()
        if not known:
            return False   # nothing to clean before the provider connects
        return share is None or share.book.is_cleaner()

    # -- SharedQuota -----------------------------------------------------------

    def reserve(self, key: str, cost: Resources, headroom: Resources, limit: Resources,
                local_covered: Resources, local_in_flight: Resources,
                local_keys: frozenset) -> list[str]:
        return self._ask(lambda share: share.reserve(
            key, cost, headroom, limit, local_covered, local_in_flight, local_keys))

    def check(self, cost: Resources, headroom: Resources, limit: Resources,
              local_covered: Resources, local_in_flight: Resources,
              local_keys: frozenset) -> list[str]:
        return self._ask(lambda share: share.check(
            cost, headroom, limit, local_covered, local_in_flight, local_keys))

    def _ask(self, question: Callable[[ProviderShare], list[str]]) -> list[str]:
        known, share = self.current()
        if not known:
            return [f"{LAYER}: the cloud project is not known until the provider connects"]
        return question(share) if share is not None else []

    def reading_started(self) -> object:
        share = self.current()[1]
        return (share, share.reading_started() if share is not None else None)

    def reading_applied(self, token: object) -> None:
        if not isinstance(token, tuple) or len(token) != 2:
            return
        share, inner = token
        # A reading started for another project's book tells this one nothing.
        if share is not None and share is self.current()[1]:
            share.reading_applied(inner)

    def claimed_elsewhere(self, key: str) -> bool:
        share = self.current()[1]
        return share is not None and share.claimed_elsewhere(key)

    def servers_gone(self, keys: frozenset) -> None:
        share = self.current()[1]
        if share is not None:
            share.servers_gone(keys)
        # Claims left in a book the provider no longer uses go with the
        # ledger (the book's own sync follows it).

    def listed(self, keys: Iterable[str], requested_at: float) -> None:
        share = self.current()[1]
        if share is not None:
            share.listed(keys, requested_at)

    def look_again(self) -> bool:
        share = self.current()[1]
        return share is not None and share.look_again()

    def reading_doubtful(self) -> bool:
        share = self.current()[1]
        return share is not None and share.reading_doubtful()

    def others_covered(self) -> bool:
        share = self.current()[1]
        return share is not None and share.others_covered()
