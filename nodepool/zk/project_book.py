"""One project's shared quota book in ZooKeeper: several launchers, one cloud project.

Layout (see doc/multiple-launchers.rst)::

    /nodepool/shared-quota/<project key>            JSON: what the key stands for
    /nodepool/shared-quota/<project key>/claims     its data version orders reservations
    /nodepool/shared-quota/<project key>/claims/<claim name>     ephemeral, no data
    /nodepool/shared-quota/<project key>/launchers/<launcher id>-<sequence>   ephemeral
    /nodepool/shared-quota/<project key>/providers/<provider name>     persistent

A claim's name encodes its state, cost, ledger key and launcher
(nodepool.quota.shared.Claim), so one ``get_children`` reads the whole book.
Claims are ephemeral: when a launcher's session ends, its claims go with it.

Reserving is optimistic: read the children and the data version ``v`` of
``claims``, check the create against the book (the policy is pure:
``judge_create`` in nodepool.quota.shared, asked by each provider's
``ProviderShare`` in provider_share.py), then commit ``[set_data(claims, version=v),
create(claim, ephemeral)]`` as one transaction.  Two launchers that read the
same ``v`` cannot both commit: the loser reads again.  No lock is held
across a cloud call, and nobody waits for anybody for longer than a
round trip.  Turning a claim from reserved to owned is a delete and a create
in one transaction (the totals do not change, so no version bump); a claim
is deleted once the ledger forgot the attempt (nova no longer lists the
server, or the POST never went out).  Those follow the ledger level-
triggered, from ``ProjectBook.sync`` (called by the thread of
``SharedQuotaBooks``, shared_quota.py): a claim may lag the ledger by a
pass, which only ever counts a server longer, never shorter.

``launchers`` lists the launchers serving the project (ephemeral sequential
znodes, membership.py).  Their number splits the API budget; the one with
the lowest sequence is the project's leak cleaner (the classic election
recipe read from a cached listing, so asking is free).  ``providers`` keeps every
provider name a launcher of ours used in the project (persistent: a dead
launcher's leaks are still ours to clean), so the cleaner knows which
servers of the project are this ZooKeeper's launchers'.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, KazooException, NodeExistsError, NoNodeError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch

from nodepool.quota.shared import Claim, ClaimState, parse_book
from nodepool.quota import Resources
from nodepool.zk import paths
from nodepool.zk.membership import Membership
from nodepool.zk.session import SessionTracker

# One logger for the books and each book: logging configurations name it.
log = logging.getLogger("nodepool.zk.shared_quota")

# A reservation reads the book and commits at most this many times before
# it gives up for this pass (the machine tries again on its next pass).
RESERVE_ATTEMPTS = 5
# How long a key stays known as gone (its claims are ignored meanwhile).
GONE_MEMORY = 120.0
# Each ZooKeeper call of a reservation waits at most this long.
CALL_TIMEOUT = 2.0
LAYER = "shared quota"
# Ledger entry states (nodepool.quota.EntryState values) that mean nova has
# the server.
OWNED_STATES = frozenset({"created", "deleting"})


@dataclass
class _Mine:
    claim: Claim
    generation: int | None   # the session it was written in; None: its commit's answer was lost


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
        # The project's launchers (``launchers``) and its leak cleaner.
        self.launchers = Membership(client, self.members_path, launcher_id,
                                    f"the launchers of project {key}", self._check_strays)
        self.providers_path = f"{self.root}/providers"
        # Our provider names in the project, and everyone's (``providers``).
        self._our_providers: set[str] = set()
        self._registered: set[str] = set()
        self._provider_names: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        # Held by start and sync (two threads may call them), never across
        # more than this book's own ZooKeeper calls.
        self._writer = threading.RLock()
        self._names: frozenset[str] = frozenset()
        # Claims of launchers that are not members, when first seen, and
        # those found persistent (ignored: no launcher's session holds them).
        self._strays: dict[str, float] = {}
        self._persistent: set[str] = set()
        self._looking: set[str] = set()     # stray claims being looked at
        self._mine: dict[str, _Mine] = {}
        self._watching = False
        self.conflicts = 0      # reservations that lost a race and read again
        # Ledger keys whose servers nova no longer lists (told by a provider
        # of ours): claims for them are stale, whoever holds them.
        self._gone: dict[str, float] = {}
        # Bumped when another launcher removed a claim of ours: it saw the
        # server gone first; our providers should look at the list soon.
        self.removed_by_others = 0
        # Other launchers' claims that left the book lately, and when: if
        # their launcher died, their servers may still exist.
        self._vanished: dict[str, tuple[Claim, float]] = {}
        self.started = False
        self.closed = False     # left the project: the watches end

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
        self.launchers.ensure_path()
        self.client.ensure_path(self.providers_path)
        try:
            data, _ = self.client.get(self.root)
            if not data:
                self.client.set(self.root, json.dumps(self.description).encode())
        except NoNodeError:
            pass
        if not self._watching:
            ChildrenWatch(self.client, self.claims_path, self._on_claims)
            self.launchers.watch()
            ChildrenWatch(self.client, self.providers_path, self._on_providers)
            self._watching = True
        self.launchers.join()
        self._register_providers()
        self.started = True

    def add_provider(self, name: str) -> None:
        """A provider of ours works in this project (registered by sync)."""
        with self._lock:
            self._our_providers.add(name)

    def _register_providers(self) -> None:
        with self._lock:
            todo = self._our_providers - self._registered
        for name in todo:
            self.client.ensure_path(f"{self.providers_path}/{quote(name, safe='')}")
            with self._lock:
                self._registered.add(name)

    def _on_providers(self, children: list[str]) -> bool | None:
        if self.closed:
            return False
        with self._lock:
            self._provider_names = frozenset(unquote(c) for c in children)
        return None

    def provider_names(self) -> frozenset[str]:
        """Every provider name our launchers used in the project."""
        with self._lock:
            return self._provider_names | self._our_providers

    def stop(self) -> None:
        """Leave the project (claims go with the session)."""
        self.closed = True
        self.launchers.leave()

    def _on_claims(self, children: list[str]) -> bool | None:
        if self.closed:
            return False
        now = time.monotonic()
        with self._lock:
            before, self._names = self._names, frozenset(children)
            for name in before - self._names:
                claim = Claim.parse(name)
                if claim is not None and claim.launcher != self.launcher_id:
                    self._vanished[name] = (claim, now)
            for name, (_, at) in list(self._vanished.items()):
                if now - at > GONE_MEMORY:
                    del self._vanished[name]
            for name in list(self._strays):
                if name not in self._names:
                    del self._strays[name]
                    self._persistent.discard(name)
            gen = self.session.generation
            vanished = [key for key, held in self._mine.items()
                        if held.generation == gen and held.claim.name in before
                        and held.claim.name not in self._names]
        if not vanished:
            return None
        keys_now = {c.key for c in parse_book(children)}
        for key in vanished:
            # Not our own sync (it turns a claim owned in one transaction,
            # and deletes one only after the ledger forgot the key): another
            # launcher saw the server gone before we did.
            if key not in keys_now and self.entry_state(key) in OWNED_STATES:
                self.removed_by_others += 1
        return None

    def _check_strays(self) -> None:
        """Look once at each claim of a launcher that is not a member: only
        an ephemeral claim, held by a session, counts.  Asynchronous
        (called from watches and checks); a look that failed is made again
        by sync."""
        with self._lock:
            strays = [n for n in self._strays
                      if n not in self._persistent and n not in self._looking]
            self._looking.update(strays)
        for name in strays:
            self._look(f"{self.claims_path}/{name}", name)

    def _look(self, path: str, name: str) -> None:
        def done(result) -> None:
            with self._lock:
                self._looking.discard(name)
            try:
                stat = result.get()
            except Exception:  # noqa: BLE001 - looked at again by sync
                return
            self._judge_claim(name, stat)
        try:
            self.client.exists_async(path).rawlink(done)
        except KazooException:
            with self._lock:
                self._looking.discard(name)

    def _judge_claim(self, name: str, stat) -> None:
        if stat is not None and stat.ephemeralOwner == 0:
            log.warning("shared quota: claim %s/%s is persistent (no launcher's session "
                        "holds it); ignored. Remove it with zkCli.sh delete",
                        self.claims_path, name)
            with self._lock:
                self._persistent.add(name)

    def trusted_launchers(self, members: Iterable[str]) -> set[str]:
        """Launcher ids of the members (names under ``launchers``) known to
        be registrations; ours always."""
        return self.launchers.trusted_ids(members)

    def sort_claims(self, claims: list[Claim], live: set[str]
                    ) -> tuple[list[Claim], list[tuple[Claim, float]]]:
        """(claims of live members, other claims with when first seen).
        Persistent claims are in neither."""
        now = time.monotonic()
        good: list[Claim] = []
        strays: list[tuple[Claim, float]] = []
        new = False
        with self._lock:
            for claim in claims:
                if claim.launcher in live:
                    good.append(claim)
                elif claim.name not in self._persistent:
                    new = new or claim.name not in self._strays
                    strays.append((claim, self._strays.setdefault(claim.name, now)))
        if new:
            self._check_strays()
        return good, strays

    # -- cached views ----------------------------------------------------------------

    def claims(self) -> list[Claim]:
        """The claims in the book, but persistent ones and those of servers
        seen gone.  A claim of a launcher that is not (or no longer) a
        member is in: held by a live session, its server may be being made
        (see ``sort_claims`` for how the arithmetic counts it)."""
        with self._lock:
            gone = self._gone
            names = self._names
        members = self.launchers.listing()
        good, strays = self.sort_claims(parse_book(names), self.trusted_launchers(members))
        return [c for c in [*good, *(c for c, _ in strays)] if c.key not in gone]

    def forget(self, keys: Iterable[str], now: float) -> None:
        """Nova no longer lists these attempts' servers (a provider of ours
        saw them go): drop every launcher's claim for them at once, rather
        than wait for the owner's next server list.  The owner's sync does
        not write them again (they are owned, nothing changes)."""
        keys = set(keys)
        if not keys:
            return
        with self._lock:
            for key in keys:
                self._gone[key] = now
            for key, at in list(self._gone.items()):
                if now - at > GONE_MEMORY:
                    del self._gone[key]
            stale = [n for n in self._names
                     if (c := Claim.parse(n)) is not None and c.key in keys]
        for name in stale:
            # Asynchronous: a provider's loop never waits for it.  If it
            # fails, the owner deletes its claim after its own server list.
            try:
                self.client.delete_async(f"{self.claims_path}/{name}")
            except KazooException:
                pass

    def owned_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.claims() if c.state is ClaimState.OWNED)

    def members(self) -> list[str]:
        """The project's launchers' registrations, by sequence."""
        return self.launchers.members()

    def launcher_count(self) -> int:
        return self.launchers.member_count()

    def is_cleaner(self) -> bool:
        """Am I the project's leak cleaner (its launchers' leader)?"""
        return self.launchers.is_leader()

    def claimed_elsewhere(self, key: str) -> bool:
        return any(c.key == key and c.launcher != self.launcher_id for c in self.claims())

    # -- reserving -----------------------------------------------------------------

    def snapshot(self) -> tuple[frozenset[str], list[str]]:
        """(claim names, launchers) from the cached listings (claims read
        first, as ``reserve`` does)."""
        with self._lock:
            names = self._names
        return names, self.launchers.listing()

    def gone_keys(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._gone)

    def vanished(self, names: frozenset[str]) -> list[tuple[Claim, float]]:
        """Other launchers' claims no longer in ``names`` (a fresh read) that
        the cached book had, or that left it lately, with when they went."""
        now = time.monotonic()
        with self._lock:
            found = dict(self._vanished)
            for name in self._names - names:
                claim = Claim.parse(name)
                if claim is not None and claim.launcher != self.launcher_id:
                    found.setdefault(name, (claim, now))
        return [v for n, v in found.items() if n not in names]

    def reserve(self, key: str, cost: Resources,
                judge: Callable[[frozenset[str], list[str]], list[str]]) -> list[str]:
        """Take a claim for ``key`` if ``judge`` finds no reason against it
        in a fresh read of the book (claim names, launchers)."""
        if not self.started or not self.session.connected:
            return [f"{LAYER}: ZooKeeper is not connected; creates wait for it"]
        with self._writer:
            with self._lock:
                held = self._mine.get(key)
            if held is not None and held.generation is not None:
                return []   # a loop repeating a step
            if held is not None:
                # An earlier commit's answer was lost: granted only if it
                # was committed (its claim exists: the transaction checked
                # the version); otherwise a versioned commit as any other.
                try:
                    found = self._settle_lost(key, held)
                except (KazooException, KazooTimeoutError) as e:
                    return [f"{LAYER}: cannot read the book ({type(e).__name__})"]
                if found:
                    return []
        claim = Claim(ClaimState.RESERVED, key, self.launcher_id, cost)
        generation = self.session.generation
        for _ in range(RESERVE_ATTEMPTS):
            try:
                # Claims first: a launcher whose session ends between the
                # two reads is then missing from both or only from members
                # (its claims not freed as gone: the safe side).
                children, stat = self.client.get_children_async(
                    self.claims_path, include_data=True).get(timeout=CALL_TIMEOUT)
                members = self.client.get_children_async(
                    self.members_path).get(timeout=CALL_TIMEOUT)
            except (KazooException, KazooTimeoutError) as e:
                return [f"{LAYER}: cannot read the book ({type(e).__name__})"]
            reasons = judge(frozenset(children), members)
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
            if not any(isinstance(r, Exception) for r in results) or \
                    any(isinstance(r, NodeExistsError) for r in results):
                # (NodeExists: our own earlier commit whose answer was lost.)
                with self._lock:
                    self._mine[key] = _Mine(claim, generation)
                    # A key released after a refusal is reserved again.
                    self._gone.pop(key, None)
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
            self.launchers.join()
            self._register_providers()
            self.launchers.check()
            self._check_strays()
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
            if held.generation is None:
                # A commit whose answer was lost: it went through or it did
                # not; never written here without the version check.
                if not self._settle_lost(key, held):
                    continue
                with self._lock:
                    held = self._mine.get(key, held)
                claim = held.claim
                path = f"{self.claims_path}/{claim.name}"
            owned = state in OWNED_STATES
            if held.generation == gen and (claim.state is ClaimState.OWNED or not owned):
                continue   # nothing to write: the common case, kept cheap
            want = claim.with_state(ClaimState.OWNED) if owned else claim
            if key in self._gone:
                continue   # nova no longer lists it: nothing to write
            new_path = f"{self.claims_path}/{want.name}"
            if held.generation != gen:
                # Written in a session that ended: the server still counts,
                # so the claim comes back.
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

    def _settle_lost(self, key: str, held: _Mine) -> bool:
        """A claim whose commit's answer was lost: True (and known to exist
        in this session) if the commit went through; else forgotten.  Only
        with ``_writer`` held (sync settles it too)."""
        generation = self.session.generation
        stat = self.client.exists_async(
            f"{self.claims_path}/{held.claim.name}").get(timeout=CALL_TIMEOUT)
        with self._lock:
            if self._mine.get(key) is not held:
                return key in self._mine
            session = self.client.client_id
            if stat is not None and session is not None \
                    and stat.ephemeralOwner == session[0]:
                self._mine[key] = _Mine(held.claim, generation)
                return True
            del self._mine[key]
        return False

    def _delete_quietly(self, path: str) -> None:
        try:
            self.client.delete(path)
        except NoNodeError:
            pass

    def mine(self) -> dict[str, str]:
        """Our claims: ledger key -> state, for the status API."""
        with self._lock:
            return {k: m.claim.state.name.lower() for k, m in self._mine.items()}
