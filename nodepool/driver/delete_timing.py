"""How long this provider's servers take to disappear after a DELETE.

A deleted server counts against nova's quota until nova stops listing it,
so a request waiting for quota waits for that moment.  Listing servers often
all the time would waste the API budget; listing at the usual pace finds the
server gone seconds late.  So each provider learns, from what it observes,
the window in which its deleted servers usually go, and looks more often
only inside that window, and only while requests wait for quota.

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

    def describe(self) -> dict:
        start, end = self.window()
        ordered = sorted(self.samples)
        return {"samples": len(ordered),
                "median": round(_quantile(ordered, 0.5), 2) if ordered else None,
                "look_often_from": round(start, 2), "look_often_until": round(end, 2)}
