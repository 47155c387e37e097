"""Backing off a provider after the cloud refused a create for quota.

A quota refusal means our estimate was wrong (something nova counts that we
did not see).  Retrying at loop speed is what flooded nova in incident 2, so
after a refusal the provider takes no creates for an exponentially growing,
jittered period.  It ends early only when there is a reason to believe the
cloud has room again: one of our deletes completed after the refusal AND a
limits reading started after that delete shows room.

Events are ordered by "marks": increasing integers the owner (the ledger)
hands out, so ordering never depends on clock resolution.  Time is passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays in seconds.  The n-th consecutive refusal waits
    ``min(maximum, initial * factor**(n-1))`` scaled by a random factor in
    ``[1 - jitter, 1]``, so the delay never exceeds ``maximum``."""

    initial: float = 10.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def base_delay(self, consecutive: int) -> float:
        """The un-jittered delay after the ``consecutive``-th refusal (>= 1)."""
        if consecutive < 1:
            raise ValueError("consecutive refusals start at 1")
        delay = self.initial
        for _ in range(consecutive - 1):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def delay(self, consecutive: int, rng: Callable[[], float]) -> float:
        """``rng`` returns a float in [0, 1)."""
        return self.base_delay(consecutive) * (1 - self.jitter * rng())


@dataclass(frozen=True)
class BackoffState:
    """What operators and metrics see."""

    in_backoff: bool
    until: float | None          # the owner's clock; None when not backing off
    remaining: float             # seconds; 0 when not backing off
    consecutive: int             # refusals since the last accepted create
    total: int                   # refusals ever seen by this process
    last_delay: float | None
    ended_by: str | None         # why the last backoff ended: "elapsed" or "room"


class QuotaBackoff:
    """Backoff state of one provider.  Not thread-safe: the ledger's lock guards it."""

    def __init__(self, policy: BackoffPolicy | None = None,
                 rng: Callable[[], float] | None = None) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng or random.Random().random
        self.consecutive = 0
        self.total = 0
        self.until: float | None = None
        self.last_delay: float | None = None
        self.ended_by: str | None = None
        self._started_mark: int | None = None
        self._delete_mark: int | None = None

    def active(self, now: float) -> bool:
        if self.until is None:
            return False
        if now >= self.until:
            self.until = None
            self.ended_by = "elapsed"
            return False
        return True

    def record_quota_error(self, now: float, mark: int, attempt_mark: int | None = None) -> bool:
        """Note a refusal.  ``mark`` orders this event; ``attempt_mark`` is
        when the refused create was reserved.  A refusal of a create reserved
        before the current (or last) backoff started belongs to the same
        episode (several creates were in flight when nova filled up): it does
        not escalate the delay, and does not extend a running backoff; if
        that backoff is over, a new one starts at the same delay.  Returns
        True when a new backoff period started."""
        self.total += 1
        same_episode = (attempt_mark is not None and self._started_mark is not None
                        and attempt_mark < self._started_mark)
        if same_episode and self.active(now):
            return False
        if not same_episode or self.consecutive == 0:
            self.consecutive += 1
        self.last_delay = self.policy.delay(self.consecutive, self._rng)
        self.until = now + self.last_delay
        self.ended_by = None
        self._started_mark = mark
        self._delete_mark = None
        return True

    def record_success(self) -> None:
        """A create was accepted: the next refusal starts from the initial delay."""
        self.consecutive = 0

    def note_delete_completed(self, mark: int) -> None:
        if self._started_mark is not None and mark > self._started_mark:
            self._delete_mark = mark

    def note_limits(self, now: float, read_mark: int, has_room: bool) -> bool:
        """A limits reading started at ``read_mark`` arrived.  Ends the
        backoff early (returns True) when it started after one of our deletes
        completed, which itself came after the refusal, and shows room."""
        if not self.active(now) or self._delete_mark is None:
            return False
        if read_mark > self._delete_mark and has_room:
            self.until = None
            self.ended_by = "room"
            return True
        return False

    def state(self, now: float) -> BackoffState:
        active = self.active(now)
        return BackoffState(in_backoff=active, until=self.until if active else None,
                            remaining=max(0.0, self.until - now) if active else 0.0,
                            consecutive=self.consecutive, total=self.total,
                            last_delay=self.last_delay, ended_by=self.ended_by)
