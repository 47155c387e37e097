"""The shared quota book's arithmetic: several launchers, one cloud project.

Each launcher keeps its own ``QuotaLedger`` (ledger.py).  Launchers that
serve the same cloud project also write every create they make into a book
in ZooKeeper (nodepool/zk/project_book.py): one *claim* per create attempt,
named so that one listing of the book gives everything needed here.  This
module is the pure part: claim names, which claims count how, and whether
a create fits.  No I/O; the transport makes the check and the write one
atomic step (see the transport's docstring).

A claim is *reserved* from before the POST until nova answered it, then
*owned* until nova no longer lists the server.  Claims of this provider's
own ledger (same ledger key) are left out: the ledger counts them already.
Every other claim (another launcher's, or another provider of ours on the
same project) is added to the ledger's figures with the double-counting
rule of ledger.py:

* an owned claim that was already in the book when the current limits
  reading *started* was a server nova had accepted by then: nova's ``N``
  covers it (``covered``);
* every other claim (reserved, or owned only since the reading started) is
  *in flight* and is added on top of ``N``.

With the ledger's own figures (``cl`` covered, ``il`` in flight) that gives,
per resource::

    headroom = max - max(N, cl + co) - il - io

The ledger hands out ``h = max - max(N, cl) - il`` (``ProviderEstimate``),
not ``N`` itself; ``u = max - h - il`` equals ``max(N, cl)``, and
``max(N, cl + co) == max(u, cl + co)`` because ``co >= 0``, so the
headroom above is computed from the estimate without looking inside the
ledger.  A book listing that lags (a cached copy) only ever sees fewer
covered claims, never more, so a lag errs towards counting twice.

Servers of other launchers deleted since the reading are still in ``N``.
The ledger frees its own with the rule of ``QuotaLedger.server_gone``; for
a covered claim that left the book the same evidence is needed: a server
list requested after the reading started still showed the server (so
``N`` counted it), and its launcher is alive (so the claim left because
nova no longer lists the server, not because its launcher died).  Their
sum ``fo`` (``freed_usage``) is taken off ``N``::

    headroom = max - max(N - fo, cl + co) - il - io
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence
from urllib.parse import quote, unquote

from nodepool.quota.resources import RESOURCE_NAMES, ZERO, Resources

SEPARATOR = ","   # quote(safe="") always escapes it, so fields never contain it


class ClaimState(str, enum.Enum):
    RESERVED = "r"   # headroom taken; POST not answered yet
    OWNED = "o"      # nova accepted the server; counts until nova drops it


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Claim:
    """One create attempt in the shared book."""

    state: ClaimState
    key: str          # the provider's ledger key of the attempt
    launcher: str     # the launcher process that made it
    cost: Resources

    @property
    def name(self) -> str:
        """The znode name: everything a reader needs, no data to fetch."""
        c = self.cost
        fields = [self.state.value, *(_num(getattr(c, r)) for r in RESOURCE_NAMES),
                  quote(self.key, safe=""), quote(self.launcher, safe="")]
        return SEPARATOR.join(fields)

    @classmethod
    def parse(cls, name: str) -> Claim | None:
        """The claim a znode name encodes; None for anything else (a name
        written by a newer version, or not a claim): ignored, not fatal."""
        parts = name.split(SEPARATOR)
        if len(parts) != 3 + len(RESOURCE_NAMES):
            return None
        try:
            state = ClaimState(parts[0])
            values = [float(p) for p in parts[1:1 + len(RESOURCE_NAMES)]]
        except ValueError:
            return None
        if any(not math.isfinite(v) or v < 0 for v in values):
            return None
        key, launcher = unquote(parts[-2]), unquote(parts[-1])
        if not key or not launcher:
            return None
        return cls(state, key, launcher, Resources(*values))

    def with_state(self, state: ClaimState) -> Claim:
        return Claim(state, self.key, self.launcher, self.cost)


@functools.lru_cache(maxsize=32768)
def _parse_name(name: str) -> Claim | None:
    # Every check reads the whole book again; a name never changes meaning.
    return Claim.parse(name)


def parse_book(names: Iterable[str]) -> list[Claim]:
    return [c for c in (_parse_name(n) for n in names) if c is not None]


def _total(costs: Iterable[Resources]) -> Resources:
    total = ZERO
    for c in costs:
        total = total + c
    return total


def others_usage(claims: Iterable[Claim], local_keys: frozenset | set,
                 covered_names: frozenset | set) -> tuple[Resources, Resources]:
    """(covered, in flight) of the claims the local ledger does not count.

    ``covered_names``: the names of the owned claims in the book when the
    current limits reading started (see the module docstring)."""
    covered: list[Resources] = []
    in_flight: list[Resources] = []
    for claim in claims:
        if claim.key in local_keys:
            continue
        if claim.state is ClaimState.OWNED and claim.name in covered_names:
            covered.append(claim.cost)
        else:
            in_flight.append(claim.cost)
    return _total(covered), _total(in_flight)


def freed_usage(covered: Iterable[Claim], present: frozenset | set,
                listed_at: Mapping[str, float], reading_started: float | None,
                live_launchers: frozenset | set) -> Resources:
    """What nova's reading still counts of other launchers' servers that are
    gone since: covered claims (owned before the reading started) that left
    the book, whose server a server list requested at or after
    ``reading_started`` still showed, and whose launcher is alive (a dead
    launcher's claims leave the book with its servers still there).  The
    caller passes the time nova *answered* the reading: a list requested
    between the read's start and nova's answer does not prove the server was
    still there when nova counted."""
    if reading_started is None:
        return ZERO
    return _total(c.cost for c in covered
                  if c.name not in present and c.launcher in live_launchers
                  and listed_at.get(c.key, float("-inf")) >= reading_started)


def shared_headroom(limit: Resources, local_headroom: Resources, local_covered: Resources,
                    local_in_flight: Resources, others_covered: Resources,
                    others_in_flight: Resources, others_freed: Resources = ZERO) -> Resources:
    """``max - max(N - fo, cl + co) - il - io`` from the ledger's estimate
    (see the module docstring; ``fo``: ``freed_usage``).  Unlimited
    resources stay unlimited."""
    out = []
    for res in RESOURCE_NAMES:
        lim = getattr(limit, res)
        if lim == math.inf:
            out.append(math.inf)
            continue
        il = getattr(local_in_flight, res)
        u = lim - getattr(local_headroom, res) - il          # = max(N, cl)
        # max(N - fo, cl + co) == max(u - fo, cl + co): if N < cl then
        # u - fo = cl - fo <= cl + co.
        used = max(u - getattr(others_freed, res),
                   getattr(local_covered, res) + getattr(others_covered, res))
        out.append(lim - used - il - getattr(others_in_flight, res))
    return Resources(*out)


def shortfalls(headroom: Resources, cost: Resources, layer: str) -> list[str]:
    """One reason per resource ``cost`` needs and the headroom lacks.

    ``headroom`` already includes ``cost`` (the ledger reserved it first),
    so a create fits when every resource it uses stays >= 0; resources it
    does not use are not checked (as in the ledger)."""
    reasons = []
    for res in RESOURCE_NAMES:
        need, room = getattr(cost, res), getattr(headroom, res)
        if need and room < 0:
            reasons.append(f"{layer}: {res} short by {_num(-room)} "
                           "(claims of other launchers on the project)")
    return reasons


@dataclass(frozen=True)
class ReadingCover:
    """What one provider's current limits reading covers of the book."""

    # Names of the owned claims in the book when the reading started.
    covered: frozenset[str] = frozenset()
    started: float | None = None        # when the reading started
    applied_at: float | None = None     # when nova's answer became the ledger's
    # Ledger key -> when the latest server list that showed it was requested.
    listed_at: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    reasons: list[str]      # empty: the create fits the book
    # A server of another live launcher that the reading covers went
    # without a list after the reading proving nova counted it: read the
    # limits again.
    doubtful: bool


def judge_create(cost: Resources, *, claims: Sequence[Claim],
                 strays: Iterable[tuple[Claim, float]],
                 vanished: Iterable[tuple[Claim, float]], gone: frozenset | set,
                 live: frozenset | set, me: str, reading: ReadingCover,
                 local_seen: frozenset | set, local_keys: frozenset,
                 headroom: Resources, limit: Resources, local_covered: Resources,
                 local_in_flight: Resources, layer: str) -> Verdict:
    """Does a create of ``cost`` fit the shared book?  The book's policy,
    from plain facts:

    ``claims``: the claims of live launchers (``live``: their ids, ours
    included); ``strays``: claims of launchers that are not members, with
    when each was first seen (persistent ones left out); ``vanished``:
    other launchers' claims that left the book lately, with when; ``gone``:
    ledger keys whose servers nova no longer lists; ``me``: our launcher
    id; ``local_seen``: keys this provider's ledger counted at some point
    (it frees those itself); ``local_keys``: the keys the ledger counts
    now; the rest are the ledger's figures (see the module docstring)."""
    present = frozenset(c.name for c in claims if c.key not in gone)
    candidates = [c for c in parse_book(reading.covered)
                  if c.launcher != me and c.key not in local_seen]
    # Only a list requested after nova answered the reading proves the
    # server was still there when nova counted (as the ledger's own rule
    # for our servers).
    freed = freed_usage(candidates, present, reading.listed_at, reading.applied_at, live)
    applied = reading.applied_at
    # Gone (or going) unseen since the reading: it may still count there
    # until the limits are read again.
    doubtful = applied is not None and any(
        c.name not in present and c.launcher in live
        and reading.listed_at.get(c.key, float("-inf")) < applied
        for c in candidates)
    # Claims of launchers that died: their servers may exist, and only a
    # limits reading started after they went is sure to count them; until
    # then they stay in flight (unless our ledger adopted them from the
    # server list).
    started = reading.started
    orphans = [c for c, at in [*vanished, *strays]
               if c.launcher not in live and c.key not in local_keys
               and c.key not in gone and (started is None or at >= started)]
    co, io = others_usage(claims, local_keys | gone, reading.covered)
    for orphan in orphans:
        io = io + orphan.cost
    reasons = shortfalls(shared_headroom(limit, headroom, local_covered, local_in_flight,
                                         co, io, freed), cost, layer)
    return Verdict(reasons, doubtful)


def project_key(auth_url: str | None, project_id: str | None, project_name: str | None,
                project_domain: str | None, region: str | None) -> str:
    """A stable znode name for one cloud project: the same for every
    launcher that reaches it, whatever they call the provider or the cloud.
    A project id wins over name and domain (the same project either way)."""
    url = (auth_url or "").strip().rstrip("/").lower()
    if project_id:
        who = f"id:{project_id}"
    else:
        who = f"name:{project_name or ''}@{project_domain or 'default'}"
    text = "\n".join([url, who, region or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def launcher_share(members: int) -> int:
    """How many launchers split a project's API budget: those registered,
    and never fewer than one (ourselves, even before we registered)."""
    return max(1, members)


class SharedQuota(Protocol):
    """The shared book as a provider sees it (the launcher builds one per
    provider; the provider never learns it is ZooKeeper).

    All methods answer quickly: ``reserve`` does at most a few ZooKeeper
    round trips with a deadline; the others use a cached copy of the book."""

    def reserve(self, key: str, cost: Resources, headroom: Resources, limit: Resources,
                local_covered: Resources, local_in_flight: Resources,
                local_keys: frozenset) -> list[str]:
        """Take a claim for ``key`` if the create fits the book (the ledger
        has already reserved it); the reasons it does not otherwise (also
        when ZooKeeper cannot be asked: a create never goes without a
        claim).  Empty list: claimed."""

    def check(self, cost: Resources, headroom: Resources, limit: Resources,
              local_covered: Resources, local_in_flight: Resources,
              local_keys: frozenset) -> list[str]:
        """Like ``reserve`` against the cached book, writing nothing."""

    def reading_started(self) -> object:
        """A limits read is about to start: a token for ``reading_applied``."""

    def reading_applied(self, token: object) -> None:
        """The reading started with ``token`` is now the ledger's."""

    def claimed_elsewhere(self, key: str) -> bool:
        """Does another launcher hold a claim for this ledger key?"""

    def servers_gone(self, keys: frozenset) -> None:
        """These ledger keys left the provider's ledger (nova no longer
        lists their servers, or the POST never went out): any launcher's
        claim for them is stale."""

    def listed(self, keys: Iterable[str], requested_at: float) -> None:
        """A server list requested at ``requested_at`` (the provider's
        clock) showed servers of these ledger keys (any provider's)."""

    def look_again(self) -> bool:
        """True once after another launcher saw one of our servers gone
        before we did: read the server list soon."""

    def reading_doubtful(self) -> bool:
        """True once after a server of another live launcher that the
        current limits reading covers went without proof that nova counted
        it (no list after the reading showed it): read the limits again."""

    def others_covered(self) -> bool:
        """Does the current reading cover servers of other launchers (whose
        going only a list after the reading can prove)?"""
