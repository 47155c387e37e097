"""The shared quota books of this launcher process: one
:class:`~nodepool.zk.project_book.ProjectBook` per cloud project its
providers work in (the layout in ZooKeeper and the reserving protocol are
described there), and the thread that keeps our claims in step with the
quota ledger.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from nodepool.zk.project_book import ProjectBook

log = logging.getLogger("nodepool.zk.shared_quota")

# The claims thread's passes, at most this often (a claim turns owned or
# goes at most this late; the ledger counts it meanwhile either way).
SYNC_MIN_GAP = 0.1


def new_launcher_id(hostname: str) -> str:
    """Unique per launcher process (a restart is a new launcher)."""
    return f"{hostname}-{uuid.uuid4().hex[:12]}"


class SharedQuotaBooks:
    """Every project book of this launcher process, and the thread that
    keeps our claims in step with the ledger."""

    def __init__(self, client: KazooClient, launcher_id: str,
                 entry_state: Callable[[str], str | None],
                 wait_for_change: Callable[[int, float], int] | None = None,
                 interval: float = 0.25):
        self.client = client
        self.launcher_id = launcher_id
        self.entry_state = entry_state
        self.wait_for_change = wait_for_change
        self.interval = interval
        self.books: dict[str, ProjectBook] = {}
        # Providers using each book (acquire/release); a book nobody uses
        # leaves its project once none of our claims is left in it.
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_pass: float | None = None

    def book(self, key: str, description: dict) -> ProjectBook:
        with self._lock:
            book = self.books.get(key)
            if book is None:
                book = ProjectBook(self.client, key, description, self.launcher_id,
                                   self.entry_state)
                self.books[key] = book
                try:
                    # Never wait for a reconnect here (a provider's loop may
                    # be asking): sync starts the book once connected.
                    if book.session.connected:
                        book.start()
                except KazooException as e:
                    log.warning("shared quota book %s not ready yet: %s", key, e)
            return book

    def acquire(self, key: str, description: dict) -> ProjectBook:
        """The project's book, for one more provider."""
        book = self.book(key, description)
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1
        return book

    def release(self, key: str) -> None:
        """A provider no longer works in this project (a reload moved it)."""
        with self._lock:
            self._users[key] = max(0, self._users.get(key, 0) - 1)

    def _retire_unused(self) -> None:
        with self._lock:
            unused = [b for k, b in self.books.items()
                      if k in self._users and not self._users[k] and not b.mine()]
            for book in unused:
                del self.books[book.key]
                del self._users[book.key]
        for book in unused:
            # Our claims in it are all gone: leave the launchers (the
            # budget and the election are the remaining launchers').
            log.info("left the launchers of project %s (no provider of ours uses it)",
                     book.key)
            book.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shared-quota", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)
        for book in list(self.books.values()):
            book.stop()

    def sync_once(self) -> None:
        self._retire_unused()
        for book in list(self.books.values()):
            try:
                book.sync()
            except KazooException as e:
                self.errors += 1
                log.debug("shared quota book %s: %s", book.key, e)
            except Exception:  # the thread must outlive any one pass
                self.errors += 1
                log.exception("shared quota book %s: sync failed", book.key)

    def _run(self) -> None:
        seen = 0
        while not self._stop.is_set():
            self.sync_once()
            if self.wait_for_change is not None:
                # Wake at once when the ledger changes (a create answered,
                # a server gone), at least every interval.
                seen = self.wait_for_change(seen, self.interval)
                # A pass walks every claim of ours: under churn the ledger
                # changes all the time, so passes are spaced.
                self._stop.wait(SYNC_MIN_GAP)
            else:
                self._stop.wait(self.interval)

    def status(self) -> dict:
        return {key: {"description": b.description, "launchers": b.members(),
                      "cleaner": b.is_cleaner(), "claims": len(b.claims()),
                      "mine": b.mine(), "conflicts": b.conflicts}
                for key, b in list(self.books.items())}

