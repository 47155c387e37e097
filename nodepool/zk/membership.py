"""Who serves a project, and which of them leads: a small group recipe.

Like kazoo's ``Party``, each member is an ephemeral znode under one path,
so a member's registration goes with its session; like the classic
election recipe, the member with the lowest sequence leads.  Both are
read from a watched listing, so asking who is there, how many they are or
whether we lead costs no round trip.

A member's znode is ``<member id>-<sequence>`` (ephemeral, sequential).
Any other child (a znode left by a tool or a debugging session: not
ephemeral, or not named so) is looked at once and then ignored: it
neither counts as a member nor wins the election.  A child not looked at
yet blocks the election until it is, since it may be a member.

The shared quota book (project_book.py) uses one per cloud project: the
members are the project's launchers, their number splits the API budget
and the leader is the project's leak cleaner.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.recipe.watchers import ChildrenWatch

from nodepool.zk import paths
from nodepool.zk.session import SessionTracker

# The book's logger: operators read these lines as the shared quota's.
log = logging.getLogger("nodepool.zk.shared_quota")

# A name whose tail is no sequence sorts after every member.
NO_SEQUENCE = 1 << 62


class Membership:
    """The members under ``path``; we join as ``member_id``."""

    def __init__(self, client: KazooClient, path: str, member_id: str, what: str,
                 on_listing: Callable[[], None] | None = None):
        self.client = client
        self.path = path
        self.member_id = member_id
        self.what = what              # for logs: "the launchers of project <key>"
        # Called after each new listing (outside our lock).
        self.on_listing = on_listing
        self.session = SessionTracker.of(client)
        self._lock = threading.Lock()
        self._listing: list[str] = []   # every child, by sequence
        # Children looked at: name -> trusted (an ephemeral registration).
        self._trust: dict[str, bool] = {}
        self._looking: set[str] = set()
        self._name: str | None = None   # our registration
        self._generation: int | None = None
        self.closed = False             # left: the watch ends

    def ensure_path(self) -> None:
        self.client.ensure_path(self.path)

    def watch(self) -> None:
        ChildrenWatch(self.client, self.path, self._on_children)

    def join(self) -> None:
        """Register, unless our registration of this session is there."""
        gen = self.session.generation
        if self._name is not None and self._generation == gen and \
                self.client.exists(f"{self.path}/{self._name}"):
            return
        path = self.client.create(f"{self.path}/{self.member_id}-",
                                  json.dumps({"launcher": self.member_id}).encode(),
                                  ephemeral=True, sequence=True)
        self._name = paths.name_of(path)
        self._generation = gen
        with self._lock:
            self._trust[self._name] = True
        log.info("joined %s as %s", self.what, self._name)

    def leave(self) -> None:
        self.closed = True
        name, self._name = self._name, None
        if name and self.session.connected:
            try:
                self.client.delete(f"{self.path}/{name}")
            except KazooException:
                pass

    def _on_children(self, children: list[str]) -> bool | None:
        if self.closed:
            return False
        with self._lock:
            self._listing = sorted(children, key=sequence_of)
            listed = set(children)
            for name in list(self._trust):
                if name not in listed:
                    del self._trust[name]
        self.check()
        if self.on_listing is not None:
            self.on_listing()
        return None

    def check(self) -> None:
        """Look once at each new child: only an ephemeral znode named as a
        registration is a member.  Asynchronous (called from the watch and
        by the owner's periodic pass, which makes a failed look again)."""
        with self._lock:
            new = [m for m in self._listing if m not in self._trust and m not in self._looking]
            self._looking.update(new)
        for name in new:
            self._look(name)

    def _look(self, name: str) -> None:
        def done(result) -> None:
            with self._lock:
                self._looking.discard(name)
            try:
                stat = result.get()
            except Exception:  # noqa: BLE001 - looked at again by the next check
                return
            self._judge(name, stat)
        try:
            self.client.exists_async(f"{self.path}/{name}").rawlink(done)
        except KazooException:
            with self._lock:
                self._looking.discard(name)

    def _judge(self, name: str, stat) -> None:
        trusted = stat is not None and stat.ephemeralOwner != 0 and \
            sequence_of(name)[0] < NO_SEQUENCE
        if stat is not None and not trusted:
            log.warning("shared quota: %s/%s is not a launcher's registration (not "
                        "ephemeral, or not named <launcher id>-<sequence>); ignored. "
                        "Remove it with zkCli.sh delete", self.path, name)
        with self._lock:
            if name in self._listing:
                self._trust[name] = trusted

    # -- cached views ------------------------------------------------------------

    def listing(self) -> list[str]:
        """Every child as last seen, by sequence (members or not)."""
        with self._lock:
            return list(self._listing)

    def trusted_ids(self, names: Iterable[str]) -> set[str]:
        """Member ids of ``names`` (children) known to be registrations; ours always."""
        with self._lock:
            trust = self._trust
            return {member_of(m) for m in names if trust.get(m)} | {self.member_id}

    def members(self) -> list[str]:
        """The registrations, by sequence."""
        with self._lock:
            return [m for m in self._listing if self._trust.get(m)]

    def member_count(self) -> int:
        """How many members (a member id registered twice counts once)."""
        return len({member_of(m) for m in self.members()})

    def is_leader(self) -> bool:
        """Do we lead?  Never while disconnected: the others may have
        elected someone else meanwhile."""
        if not self.session.connected or self._name is None \
                or self._generation != self.session.generation:
            return False
        with self._lock:
            # One not looked at yet may be a member: it blocks the election
            # until it is.
            ahead = [m for m in self._listing if self._trust.get(m, True)]
        return bool(ahead) and ahead[0] == self._name


def member_of(name: str) -> str:
    """The member id of a registration's name."""
    return name.rsplit("-", 1)[0]


def sequence_of(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else NO_SEQUENCE, name)
