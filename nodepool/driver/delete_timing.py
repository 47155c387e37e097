"""How long this provider's servers take to disappear after a DELETE.

A deleted server counts against nova's quota until nova stops listing it,
so a request waiting for quota waits for that moment.  Listing servers often
all the time would waste the API budget; listing at the usual pace finds the
server gone seconds late.  So each provider learns, from what it observes,
how long its deleted servers take to go, and while requests wait for quota
it looks when the servers it waits for have likely gone: ``chance_gone``
says how likely one still listed at one moment is gone by a later one, and
the provider sums that over every pending delete (one list serves them
all) and lists once the sum is high enough.  Past every duration seen so
far, looks back off (the wait grows with how far past it the delete is).

Pure logic: the provider passes in times it observed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Before enough deletes were observed: look early, and for a long time.
DEFAULT_WINDOW = (1.0, 30.0)
MIN_SAMPLES = 3
# Past the latest observed duration, keep looking often for this long.
LATE_MARGIN = 2.0


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, int(q * (len(ordered) - 1) + 0.5)))
    return ordered[index]


def _tail(listed_at: float, now: float, longest: float) -> float:
    # Past the longest duration seen, the wait between looks grows with how
    # far past it the delete is (a doubling back-off).
    return min(1.0, (now - listed_at) / max(listed_at - longest, 1.0))


@dataclass
class DeleteDurations:
    """The last ``keep`` observed delete durations (seconds from the DELETE
    call returning to the server's absence from the list)."""

    keep: int = 50
    samples: deque = field(default_factory=deque)

    def record(self, still_listed_after: float, gone_after: float) -> None:
        """The server was still listed in a list requested ``still_listed_after``
        seconds after the DELETE, and absent from one requested
        ``gone_after`` seconds after it: it went in between."""
        lower = max(0.0, min(still_listed_after, gone_after))
        self.samples.append((lower + max(lower, gone_after)) / 2)
        while len(self.samples) > self.keep:
            self.samples.popleft()

    def window(self) -> tuple[float, float]:
        """(start, end) seconds after the DELETE in which a server usually goes."""
        if len(self.samples) < MIN_SAMPLES:
            return DEFAULT_WINDOW
        ordered = sorted(self.samples)
        return _quantile(ordered, 0.1), ordered[-1] + LATE_MARGIN

    def likely_gone(self, since_delete: float) -> bool:
        start, end = self.window()
        return start <= since_delete <= end

    def chance_gone(self, listed_at: float, now: float) -> float:
        """How likely a server still listed ``listed_at`` seconds after its
        DELETE is gone ``now`` seconds after it (0..1).

        From the observed durations; before MIN_SAMPLES, 1 inside
        DEFAULT_WINDOW (nothing learned yet: look as often as allowed).  A
        server older than every observed duration gets
        ``(now - listed_at) / (listed_at - longest)`` (at least 1 s below):
        the wait between looks grows as the delete outlives what was seen.
        """
        listed_at = max(0.0, listed_at)
        if now <= listed_at:
            return 0.0
        if len(self.samples) < MIN_SAMPLES:
            start, end = DEFAULT_WINDOW
            if now < start:
                return 0.0
            return 1.0 if listed_at < end else _tail(listed_at, now, end)
        later = [x for x in self.samples if x > listed_at]
        if not later:
            return _tail(listed_at, now, max(self.samples))
        return sum(1 for x in later if x <= now) / len(later)

    def describe(self) -> dict:
        start, end = self.window()
        ordered = sorted(self.samples)
        return {"samples": len(ordered),
                "median": round(_quantile(ordered, 0.5), 2) if ordered else None,
                "look_often_from": round(start, 2), "look_often_until": round(end, 2)}


# The same estimate serves boots: the time from the create's answer to the
# first list that shows the server ACTIVE (or ERROR).
BootDurations = DeleteDurations
