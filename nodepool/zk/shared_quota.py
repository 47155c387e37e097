"""The shared quota book in ZooKeeper: several launchers, one cloud project.

Layout (see doc/multiple-launchers.rst)::

    /nodepool/shared-quota/<project key>            JSON: what the key stands for
    /nodepool/shared-quota/<project key>/claims     its data version orders reservations
    /nodepool/shared-quota/<project key>/claims/<claim name>     ephemeral, no data
    /nodepool/shared-quota/<project key>/launchers/<launcher id>-<sequence>   ephemeral

A claim's name encodes its state, cost, ledger key and launcher
(nodepool.quota.shared.Claim), so one ``get_children`` reads the whole book.
Claims are ephemeral: when a launcher's session ends, its claims go with it.

Reserving is optimistic: read the children and the data version ``v`` of
``claims``, check the create against the book (pure arithmetic in
nodepool.quota.shared), then commit ``[set_data(claims, version=v),
create(claim, ephemeral)]`` as one transaction.  Two launchers that read the
same ``v`` cannot both commit: the loser reads again.  No lock is held
across a cloud call, and nobody waits for anybody for longer than a
round trip.  Turning a claim from reserved to owned is a delete and a create
in one transaction (the totals do not change, so no version bump); a claim
is deleted once the ledger forgot the attempt (nova no longer lists the
server, or the POST never went out).  Those follow the ledger level-
triggered, from ``SharedQuotaBooks.sync``: a claim may lag the ledger by a
pass, which only ever counts a server longer, never shorter.

``launchers`` lists the launchers serving the project (ephemeral sequential
znodes).  Their number splits the API budget; the one with the lowest
sequence is the project's leak cleaner (the classic election recipe read
from a cached listing, so asking is free).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, KazooException, NodeExistsError, NoNodeError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch

from nodepool.quota.shared import (Claim, ClaimState, others_usage, parse_book,
                                   shared_headroom, shortfalls)
from nodepool.quota import Resources
from nodepool.zk import paths
from nodepool.zk.session import SessionTracker

log = logging.getLogger("nodepool.zk.shared_quota")

# A reservation reads the book and commits at most this many times before
# it gives up for this pass (the machine tries again on its next pass).
RESERVE_ATTEMPTS = 5
# Each ZooKeeper call of a reservation waits at most this long.
CALL_TIMEOUT = 2.0
LAYER = "shared quota"
# Ledger entry states (nodepool.quota.EntryState values) that mean nova has
# the server.
OWNED_STATES = frozenset({"created", "deleting"})


def new_launcher_id(hostname: str) -> str:
    """Unique per launcher process (a restart is a new launcher)."""
    return f"{hostname}-{uuid.uuid4().hex[:12]}"


@dataclass
class _Mine:
    claim: Claim
    generation: int | None   # the session it was written in; None: not known to exist


class ProjectBook:
    """One project's book as this launcher process sees and writes it."""

    def __init__(self, client: KazooClient, key: str, description: dict, launcher_id: str,
                 entry_state: Callable[[str], str | None]):
        self.client = client
        self.key = key
        self.description = description
        self.launcher_id = launcher_id
        # The ledger's state of an attempt (EntryState value) or None.
        self.entry_state = entry_state
        self.session = SessionTracker.of(client)
        self.root = paths.shared_project_path(key)
        self.claims_path = f"{self.root}/claims"
        self.members_path = f"{self.root}/launchers"
        self._lock = threading.Lock()
        # Held by start and sync (two threads may call them), never across
        # more than this book's own ZooKeeper calls.
        self._writer = threading.RLock()
        self._names: frozenset[str] = frozenset()
        self._members: list[str] = []
        self._mine: dict[str, _Mine] = {}
        self._member: str | None = None
        self._member_generation: int | None = None
        self._watching = False
        self.conflicts = 0      # reservations that lost a race and read again
        self.started = False

    # -- set-up ------------------------------------------------------------------

    def start(self) -> None:
        """Create the paths, watch the book, join the project's launchers.
        Raises KazooException when ZooKeeper cannot be asked (``sync``
        tries again)."""
        with self._writer:
            if not self.started:
                self._start()

    def _start(self) -> None:
        self.client.ensure_path(self.claims_path)
        self.client.ensure_path(self.members_path)
        try:
            data, _ = self.client.get(self.root)
            if not data:
                self.client.set(self.root, json.dumps(self.description).encode())
        except NoNodeError:
            pass
        if not self._watching:
            ChildrenWatch(self.client, self.claims_path, self._on_claims)
            ChildrenWatch(self.client, self.members_path, self._on_members)
            self._watching = True
        self._ensure_member()
        self.started = True

    def stop(self) -> None:
        """Leave the project (claims go with the session)."""
        member, self._member = self._member, None
        if member and self.session.connected:
            try:
                self.client.delete(f"{self.members_path}/{member}")
            except KazooException:
                pass

    def _on_claims(self, children: list[str]) -> None:
        with self._lock:
            self._names = frozenset(children)

    def _on_members(self, children: list[str]) -> None:
        with self._lock:
            self._members = sorted(children, key=_sequence)

    def _ensure_member(self) -> None:
        gen = self.session.generation
        if self._member is not None and self._member_generation == gen and \
                self.client.exists(f"{self.members_path}/{self._member}"):
            return
        path = self.client.create(f"{self.members_path}/{self.launcher_id}-", b"",
                                  ephemeral=True, sequence=True)
        self._member = paths.name_of(path)
        self._member_generation = gen
        log.info("joined the launchers of project %s as %s", self.key, self._member)

    # -- cached views ----------------------------------------------------------------

    def claims(self) -> list[Claim]:
        with self._lock:
            return parse_book(self._names)

    def owned_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.claims() if c.state is ClaimState.OWNED)

    def members(self) -> list[str]:
        with self._lock:
            return list(self._members)

    def launcher_count(self) -> int:
        return len(self.members())

    def is_cleaner(self) -> bool:
        """Am I the project's leak cleaner?  Never while disconnected: the
        others may have elected someone else meanwhile."""
        if not self.session.connected or self._member is None \
                or self._member_generation != self.session.generation:
            return False
        members = self.members()
        return bool(members) and members[0] == self._member

    def claimed_elsewhere(self, key: str) -> bool:
        return any(c.key == key and c.launcher != self.launcher_id for c in self.claims())

    # -- reserving -----------------------------------------------------------------

    def check(self, cost: Resources, headroom: Resources, limit: Resources,
              local_covered: Resources, local_in_flight: Resources, local_keys: frozenset,
              covered: frozenset) -> list[str]:
        co, io = others_usage(self.claims(), local_keys, covered)
        return shortfalls(shared_headroom(limit, headroom, local_covered, local_in_flight,
                                          co, io), cost, LAYER)

    def reserve(self, key: str, cost: Resources, headroom: Resources, limit: Resources,
                local_covered: Resources, local_in_flight: Resources, local_keys: frozenset,
                covered: frozenset) -> list[str]:
        with self._lock:
            if key in self._mine:
                return []   # a loop repeating a step
        if not self.started or not self.session.connected:
            return [f"{LAYER}: ZooKeeper is not connected; creates wait for it"]
        claim = Claim(ClaimState.RESERVED, key, self.launcher_id, cost)
        generation = self.session.generation
        for _ in range(RESERVE_ATTEMPTS):
            try:
                children, stat = self.client.get_children_async(
                    self.claims_path, include_data=True).get(timeout=CALL_TIMEOUT)
            except (KazooException, KazooTimeoutError) as e:
                return [f"{LAYER}: cannot read the book ({type(e).__name__})"]
            co, io = others_usage(parse_book(children), local_keys, covered)
            reasons = shortfalls(shared_headroom(limit, headroom, local_covered,
                                                 local_in_flight, co, io), cost, LAYER)
            if reasons:
                return reasons
            tx = self.client.transaction()
            tx.set_data(self.claims_path, b"", version=stat.version)
            tx.create(f"{self.claims_path}/{claim.name}", b"", ephemeral=True)
            try:
                results = tx.commit_async().get(timeout=CALL_TIMEOUT)
            except (KazooException, KazooTimeoutError) as e:
                # It may have been committed: keep it on the books until
                # the ledger forgets the key (sync deletes it then).
                with self._lock:
                    self._mine[key] = _Mine(claim, None)
                return [f"{LAYER}: the reservation's answer was lost ({type(e).__name__})"]
            if not any(isinstance(r, Exception) for r in results):
                with self._lock:
                    self._mine[key] = _Mine(claim, generation)
                return []
            if any(isinstance(r, NodeExistsError) for r in results):
                # Our own earlier commit whose answer was lost: it counted.
                with self._lock:
                    self._mine[key] = _Mine(claim, generation)
                return []
            if not any(isinstance(r, BadVersionError) for r in results):
                return [f"{LAYER}: the reservation failed ({results})"]
            self.conflicts += 1
        return [f"{LAYER}: other launchers kept reserving; trying again"]

    # -- following the ledger --------------------------------------------------------

    def sync(self) -> None:
        """Level-triggered: make our claims say what the ledger says.
        Raises KazooException on a ZooKeeper error (the next pass retries)."""
        if not self.session.connected:
            return
        with self._writer:
            if not self.started:
                self._start()
                return
            self._ensure_member()
            self._sync_claims()

    def _sync_claims(self) -> None:
        gen = self.session.generation
        with self._lock:
            mine = dict(self._mine)
        for key, held in mine.items():
            state = self.entry_state(key)
            claim = held.claim
            path = f"{self.claims_path}/{claim.name}"
            if state is None:
                try:
                    self.client.delete(path)
                except NoNodeError:
                    pass
                with self._lock:
                    if self._mine.get(key) is held:
                        del self._mine[key]
                continue
            want = claim.with_state(ClaimState.OWNED) if state in OWNED_STATES else claim
            if want == claim and held.generation == gen:
                continue
            new_path = f"{self.claims_path}/{want.name}"
            if held.generation != gen:
                # Written in a session that ended (or not known to exist):
                # the server still counts, so the claim comes back.
                if held.generation is not None or want != claim:
                    self._delete_quietly(path)
                try:
                    self.client.create(new_path, b"", ephemeral=True)
                except NodeExistsError:
                    pass
            else:
                tx = self.client.transaction()
                tx.delete(path)
                tx.create(new_path, b"", ephemeral=True)
                results = tx.commit()
                if any(isinstance(r, NoNodeError) for r in results):
                    try:
                        self.client.create(new_path, b"", ephemeral=True)
                    except NodeExistsError:
                        pass
            with self._lock:
                if self._mine.get(key) is held:
                    self._mine[key] = _Mine(want, gen)

    def _delete_quietly(self, path: str) -> None:
        try:
            self.client.delete(path)
        except NoNodeError:
            pass

    def mine(self) -> dict[str, str]:
        """Our claims: ledger key -> state, for the status API."""
        with self._lock:
            return {k: m.claim.state.name.lower() for k, m in self._mine.items()}


class ProviderShare:
    """What one provider sees of its project's book (``SharedQuota``): the
    book plus the claims covered by this provider's current limits reading."""

    def __init__(self, book: ProjectBook):
        self.book = book
        self._covered: frozenset[str] = frozenset()

    def reserve(self, key: str, cost: Resources, headroom: Resources, limit: Resources,
                local_covered: Resources, local_in_flight: Resources,
                local_keys: frozenset) -> list[str]:
        # The cached book first: a create that waits for quota costs no
        # round trip on every pass.
        reasons = self.book.check(cost, headroom, limit, local_covered, local_in_flight,
                                  local_keys, self._covered)
        if reasons:
            return reasons
        return self.book.reserve(key, cost, headroom, limit, local_covered, local_in_flight,
                                 local_keys, self._covered)

    def check(self, cost: Resources, headroom: Resources, limit: Resources,
              local_covered: Resources, local_in_flight: Resources,
              local_keys: frozenset) -> list[str]:
        return self.book.check(cost, headroom, limit, local_covered, local_in_flight,
                               local_keys, self._covered)

    def reading_started(self) -> object:
        return self.book.owned_names()

    def reading_applied(self, token: object) -> None:
        if isinstance(token, frozenset):
            self._covered = token

    def claimed_elsewhere(self, key: str) -> bool:
        return self.book.claimed_elsewhere(key)


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
                    book.start()
                except KazooException as e:
                    log.warning("shared quota book %s not ready yet: %s", key, e)
            return book

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
                self._stop.wait(0.02)
            else:
                self._stop.wait(self.interval)

    def status(self) -> dict:
        return {key: {"description": b.description, "launchers": b.members(),
                      "cleaner": b.is_cleaner(), "claims": len(b.claims()),
                      "mine": b.mine(), "conflicts": b.conflicts}
                for key, b in list(self.books.items())}


def _sequence(member: str) -> tuple[int, str]:
    tail = member.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 62, member)
