"""When one OpenStack provider asks for its server list (and its port list).

A server list is the provider's only way to see a server go ACTIVE or go
away, and it costs API budget; so one owner decides when it is asked for,
and everyone else reports what they wait for:

* **Machines report events** and never ask for a list themselves:
  ``expect_active`` (a server boots), ``expect_gone`` (a deleted server
  should go), ``awaited`` (a list requested after some moment is needed
  whatever the pace: a create whose answer was lost, a deletion that looks
  for a node's servers) and ``ports_awaited``; and what a list showed of a
  wait that ended (``boot_observed``, ``delete_observed``).
* **Who waits**: a request waiting for capacity (``note_quota_wait``, or a
  build refused headroom) or an operator waiting for a deletion.  Nobody
  waiting, a deletion rides on the lists made anyway.
* **The looks**: while requests wait for quota, a list once the deleted
  servers still listed (ours, and those ``deleting elsewhere``) have likely
  gone (``look_for_gone``); a list once the servers booting have likely
  become ACTIVE (``look_for_ready``).  Both go by durations learned from
  what earlier lists showed (``LearnedDurations``, one for boots and one
  for deletes).
* **The pace**: ``ListCache`` holds the interval and the budget of lists
  asked for "now"; the pacer only says what is wanted.

Pure logic on the provider's clock: the provider passes in what it knows of
its machines through four callables and calls the pacer from its loop.
See doc/quota.rst for the reasoning behind the thresholds.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from nodepool.driver.learned_durations import LearnedDurations
from nodepool.driver.list_cache import ListCache
from nodepool.driver.openstack import servers as srv

# The shared server list's pace while something waits for a fresher one
# (a boot the learned boot times no longer cover, a delete while requests
# wait for quota or an operator for it, ...): each list serves them all;
# idle, every 4 intervals.
SERVER_LIST_INTERVAL = 2.5
# Ports are listed only while a server waits for its floating IP: one list
# for all of them, at most this often.
PORT_LIST_INTERVAL = 1.0
# While requests wait for quota, the server list is read as soon as the
# deleted servers still listed have, together, at least this chance of
# having gone since the last list (learned delete durations), and never
# more often than GONE_CHECK_INTERVAL.  Lower finds freed quota sooner at
# the cost of more lists; see doc/quota.rst.
GONE_LOOK_CHANCE = 0.3
GONE_CHECK_INTERVAL = 0.5
# A list is asked for "now" (within the list's budget) once the servers
# booting have, together, at least this chance of being ACTIVE since the
# last list (learned boot durations, see look_for_ready).
READY_LOOK_CHANCE = 0.5
# A capacity check that found no headroom counts as "requests wait" this long.
QUOTA_WAIT_MEMORY = 2.0

# (when the create call was answered, the latest list that showed it building)
Boot = tuple[float, float | None]
# (server id, when its DELETE was answered if it now waits to go, else None)
Deletion = tuple[str | None, float | None]


class ListPacer:
    """The one place that asks ``servers`` and ``ports`` for lists."""

    def __init__(self, servers: ListCache, ports: ListCache,
                 clock: Callable[[], float] = time.monotonic, *,
                 builds_wait_quota: Callable[[], bool],
                 operator_awaits: Callable[[], bool],
                 booting: Callable[[], Iterable[Boot]],
                 deletions: Callable[[], Iterable[Deletion]]):
        self.servers = servers
        self.ports = ports
        self.clock = clock
        # What the pacer reads of the provider's machines: a build refused
        # headroom; an operator awaiting a deletion (DeleteSpec.awaited);
        # the servers booting; the provider's own server deletions.
        self._builds_wait_quota = builds_wait_quota
        self._operator_awaits = operator_awaits
        self._booting = booting
        self._deletions = deletions
        self.boot_durations = LearnedDurations()
        self.delete_durations = LearnedDurations()
        self._quota_wait_seen_at = float("-inf")
        # (a request waits for capacity, an operator awaits a deletion), fixed
        # for one pass over the machines, which all ask (see waits).
        self._pass_waits: tuple[bool, bool] | None = None
        # Servers of the project someone else is deleting (another launcher,
        # an operator): server id -> when the list before the one that first
        # showed it deleting was requested (its DELETE came after that; the
        # earliest time it can have been sent errs towards looking early).
        # Their quota comes free too, so the looks for gone servers count them.
        self._deleting_elsewhere: dict[str, float] = {}
        self._previous_list_at: float | None = None

    # -- who waits ------------------------------------------------------------

    def note_quota_wait(self) -> None:
        """A capacity check found no headroom: a request waits."""
        self._quota_wait_seen_at = self.clock()

    def quota_waiting(self) -> bool:
        """Does a request (or a build) wait for headroom right now?"""
        if self.clock() - self._quota_wait_seen_at < QUOTA_WAIT_MEMORY:
            return True
        return self._builds_wait_quota()

    def waits(self) -> tuple[bool, bool]:
        """(a request waits for capacity, an operator awaits a deletion).
        Every build and deletion asks on every pass; during a pass (which
        holds the provider's lock, so no capacity check or new delete comes
        between) the answer is worked out once instead of for each."""
        if self._pass_waits is not None:
            return self._pass_waits
        return self.quota_waiting(), self._operator_awaits()

    def deletes_awaited(self) -> bool:
        """Does anybody wait for a deletion to end: a request for capacity,
        or an operator for one node?"""
        return any(self.waits())

    def begin_pass(self) -> None:
        self._pass_waits = None
        self._pass_waits = self.waits()

    def end_pass(self) -> None:
        self._pass_waits = None

    # -- events from the machines -------------------------------------------------

    def awaited(self, after: float | None = None) -> None:
        """Somebody needs a server list requested after ``after`` (default:
        now), at the pace whoever else waits."""
        self.servers.want_fresh(after)

    def ports_awaited(self, after: float) -> None:
        """A server waits for a port list requested after ``after``."""
        self.ports.want_fresh(after)

    def expect_active(self, since_create: float, after: float | None = None) -> None:
        """A server booting for ``since_create`` seconds is still to be seen
        ACTIVE: a list at the pace unless the ready looks cover it."""
        if not self.ready_looks_cover(since_create):
            self.servers.want_fresh(after)

    def expect_gone(self, after: float) -> None:
        """A deleted server (or a node's servers being searched for) should
        leave the list.  While requests wait for capacity (or an operator for
        this deletion), a server gone is news: ask for lists at the usual
        pace, and ``look_for_gone`` looks sooner when it has likely gone.
        Otherwise nobody waits for it: the lists made anyway (ready looks,
        the slow idle refresh) bring it, and the list budget goes to what
        someone waits for."""
        if self.deletes_awaited():
            self.servers.want_fresh(after)

    def boot_observed(self, building_at: float, active_at: float) -> None:
        """A list ``active_at`` seconds after the create's answer showed the
        server ACTIVE (or ERROR); the last one that showed it building was
        ``building_at`` seconds after it."""
        self.boot_durations.record(building_at, active_at)

    def delete_observed(self, listed_at: float, gone_at: float) -> None:
        """A list ``gone_at`` seconds after the DELETE's answer no longer
        showed the server; the last one that did was ``listed_at`` seconds
        after it."""
        self.delete_durations.record(listed_at, gone_at)

    # -- the provider's loop --------------------------------------------------

    def ready_looks_cover(self, since_create: float) -> bool:
        """Will the ready looks list for a boot this far along, so that it
        need not ask for lists at the pace?  Yes once boot times are learned
        and until the boot outlives them, unless requests wait for quota (the
        ledger then wants each new server listed soon).  A list at the pace
        while a server boots would show it building and spend the budget
        that the look at its likely end needs."""
        if not self.boot_durations.learned() or self.waits()[0]:
            return False
        return since_create <= self.boot_durations.window()[1]

    def list_arrived(self) -> None:
        """Note the servers someone else is deleting, from the new list."""
        snap = self.servers.snapshot
        ours = {server_id for server_id, _ in self._deletions() if server_id}
        seen = self._deleting_elsewhere
        deleting = {sid for sid, server in snap.items.items()
                    if sid not in ours and srv.is_deleting(server)}
        for sid in list(seen):
            if sid not in deleting:
                del seen[sid]
        since = self._previous_list_at if self._previous_list_at is not None \
            else snap.requested_at
        for sid in deleting:
            seen.setdefault(sid, since)
        self._previous_list_at = snap.requested_at

    def look_for_gone(self) -> None:
        """While requests wait for quota: ask for a list once the deleted
        servers we wait for have likely gone (one list serves them all)."""
        if self.servers.snapshot.unconfirmed and any(self.waits()):
            # The last list missed servers; only the next one can say they
            # are gone, and somebody waits for that.
            self.servers.want_now()
        sent = [at for _, at in self._deletions() if at is not None]
        sent += self._deleting_elsewhere.values()
        if not sent or not self.quota_waiting():
            return
        now = self.clock()
        last = self.servers.snapshot.requested_at
        chance = sum(self.delete_durations.chance_done(max(last, at) - at, now - at)
                     for at in sent)
        if chance >= GONE_LOOK_CHANCE:
            self.servers.want_fresh(within=GONE_CHECK_INTERVAL)

    def look_for_ready(self) -> None:
        """Ask for a list once the servers booting have likely become
        ACTIVE (learned boot times), rather than at the list's pace; the
        list's budget keeps this at one list per interval on average, so a
        busy provider lists as before and a quiet one notices each server
        soon after it is up.  Called after the builds took in the latest
        list: asked before, a list just arrived would be asked for again."""
        now = self.clock()
        last = self.servers.snapshot.requested_at
        chance = 0.0
        for start, building_seen_at in self._booting():
            seen = max(last, building_seen_at or start)
            chance += self.boot_durations.chance_done(seen - start, now - start)
        if chance >= READY_LOOK_CHANCE:
            self.servers.want_now()

    def reading_applied(self, others_pending: Callable[[], bool]) -> None:
        """A limits reading was applied.  A deleted server that goes before
        any list requested after it showed it cannot be freed by the ledger
        (did nova count it?): the reading must be read again, at the limits
        pace.  While requests wait and deletes are pending (ours, someone
        else's, or, ``others_pending``, other launchers' in the shared book),
        one list right away settles that for all of them."""
        if not self.quota_waiting():
            return
        if self._deleting_elsewhere or any(at is not None for _, at in self._deletions()) \
                or others_pending():
            self.servers.want_fresh(within=GONE_CHECK_INTERVAL)
