"""How long something this provider waits for takes to show in a list.

Two waits have the same shape: a deleted server counts against nova's quota
until nova stops listing it, and a new server is of no use until a list
shows it ACTIVE.  Listing servers often all the time would waste the API
budget; listing at the usual pace finds the news seconds late.  So each
provider learns, from what it observes, how long its deletes and its boots
take (one ``LearnedDurations`` each), and looks when what it waits for has
likely happened: ``chance_done`` says how likely something not yet done at
one moment is done by a later one; the list pacer
(``driver/openstack/list_pacing.py``) sums that over everything pending
(one list serves them all) and lists once the sum is high enough.  Past
every duration seen so far, looks back off (the wait grows with how far
past it the wait is).

A duration is never seen exactly, only between two lists (the last that
showed it not done, the first that showed it done), and lists are seconds
apart.  Taking each interval's midpoint would blur a steady 3 s into
anything from 2 to 4 s and half the looks would come early; the estimate
instead finds the distribution that best explains all the intervals
together, which for a steady duration is the tightest bound seen.

Pure logic: the caller passes in times it observed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

# Before enough durations were observed: look early, and for a long time.
DEFAULT_WINDOW = (1.0, 30.0)
MIN_SAMPLES = 3
# Past the latest observed duration, keep looking often for this long.
LATE_MARGIN = 2.0
# An observation whose bounds meet is taken as an interval this short.
EXACT = 1e-6
# Mass below this is the estimate's rounding, not a duration seen.
MASS_FLOOR = 1e-4
SELF_CONSISTENCY_ROUNDS = 200


def _tail(not_done_at: float, now: float, longest: float) -> float:
    # Past the longest duration seen, the wait between looks grows with how
    # far past it the wait is (a doubling back-off).
    return min(1.0, (now - not_done_at) / max(not_done_at - longest, 1.0))


def _self_consistent(intervals: list[tuple[float, float]]
                     ) -> tuple[list[float], list[float]]:
    """The most likely distribution of durations known only to lie in
    ``(lower, upper]`` intervals (Turnbull's self-consistency iteration).

    Mass sits on the intervals' upper ends; each round, every interval shares
    its weight among the points it covers in proportion to their mass, so the
    mass gathers where intervals overlap.  A fixed boot of 3 s seen between
    lists at 2-3.5 s, 1-3.1 s, 2.9-5 s, ... ends up near 3 s, where the
    midpoints of those intervals would spread it over seconds.  Points are
    sorted, so each interval covers a contiguous run of them and a round is
    linear in samples plus points.
    """
    points = sorted({upper for _, upper in intervals})
    runs = [(bisect_right(points, lower), bisect_right(points, upper))
            for lower, upper in intervals]
    mass = [1.0 / len(points)] * len(points)
    share = 1.0 / len(intervals)
    for _ in range(SELF_CONSISTENCY_ROUNDS):
        cumulative = [0.0]
        for m in mass:
            cumulative.append(cumulative[-1] + m)
        weight = [0.0] * (len(points) + 1)
        for a, b in runs:
            covered = cumulative[b] - cumulative[a]
            if covered > 0:
                weight[a] += share / covered
                weight[b] -= share / covered
        running, new = 0.0, []
        for m, w in zip(mass, weight[:-1], strict=True):
            running += w
            new.append(m * running)
        change = max(abs(x - y) for x, y in zip(new, mass, strict=True))
        mass = new
        if change < 1e-6:
            break
    return points, mass


@dataclass
class LearnedDurations:
    """The last ``keep`` observed durations (of deletes, or of boots), each
    known only to lie between two lists: the last that showed it not done
    and the first that showed it done (seconds after its start: the DELETE
    call, or the create call, returned)."""

    keep: int = 50
    samples: deque = field(default_factory=deque)   # (lower, upper] intervals
    _estimate: tuple[list[float], list[float]] | None = field(default=None, repr=False)

    def record(self, not_done_at: float, done_at: float) -> None:
        """A list requested ``not_done_at`` seconds after the start showed it
        not done yet (the server still listed, still building), and one
        requested ``done_at`` seconds after it showed it done: it ended in
        between."""
        lower = max(0.0, min(not_done_at, done_at))
        upper = max(lower, done_at)
        # An exact observation is a very short interval ending at it.
        self.samples.append((min(lower, upper - EXACT), upper))
        while len(self.samples) > self.keep:
            self.samples.popleft()
        self._estimate = None

    def learned(self) -> bool:
        """Enough durations seen to go by them."""
        return len(self.samples) >= MIN_SAMPLES

    def _distribution(self) -> tuple[list[float], list[float]]:
        if self._estimate is None:
            self._estimate = _self_consistent(list(self.samples))
        return self._estimate

    def _done_by(self, t: float) -> float:
        """Estimated share of durations no longer than ``t``."""
        points, mass = self._distribution()
        return sum(mass[:bisect_right(points, t)])

    def _quantile(self, q: float) -> float:
        points, mass = self._distribution()
        total = 0.0
        for point, m in zip(points, mass, strict=True):
            total += m
            if total >= q - 1e-9:
                return point
        return points[-1]

    def longest(self) -> float:
        """The longest duration that the estimate still gives weight to."""
        points, mass = self._distribution()
        return max(p for p, m in zip(points, mass, strict=True) if m > MASS_FLOOR)

    def window(self) -> tuple[float, float]:
        """(start, end) seconds after the start in which it is usually done."""
        if not self.learned():
            return DEFAULT_WINDOW
        return self._quantile(0.1), self.longest() + LATE_MARGIN

    def chance_done(self, not_done_at: float, now: float) -> float:
        """How likely something still not done ``not_done_at`` seconds after
        its start is done ``now`` seconds after it (0..1).

        From the estimated distribution, given that it was not done at
        ``not_done_at``; before MIN_SAMPLES, 1 inside DEFAULT_WINDOW (nothing
        learned yet: look as often as allowed).  A wait longer than every
        duration the estimate gives weight to gets
        ``(now - not_done_at) / (not_done_at - longest)`` (at least 1 s
        below): the wait between looks grows as it outlives what was seen.
        """
        not_done_at = max(0.0, not_done_at)
        if now <= not_done_at:
            return 0.0
        if not self.learned():
            start, end = DEFAULT_WINDOW
            if now < start:
                return 0.0
            return 1.0 if not_done_at < end else _tail(not_done_at, now, end)
        before = self._done_by(not_done_at)
        left = 1.0 - before
        if left <= MASS_FLOOR:
            return _tail(not_done_at, now, self.longest())
        return min(1.0, max(0.0, (self._done_by(now) - before) / left))

    def describe(self) -> dict:
        start, end = self.window()
        return {"samples": len(self.samples),
                "median": round(self._quantile(0.5), 2) if self.samples else None,
                "look_often_from": round(start, 2), "look_often_until": round(end, 2)}

