"""When to read the cloud's limits again.

Limits cost an API call, so they are read at a bounded rate: never more than
once per ``min_interval`` (counted from the last attempt, failed or not, so a
broken /limits is not hammered either), at least every ``max_age`` while
reads succeed, and as soon as ``min_interval`` allows after something made
the last reading stale: a quota refusal, one of our deletes completing, or a
failed read.  A read still in progress blocks another one until it is
``max_age`` old; then it is taken as hung (the adapter's own deadline should
have ended it long before) and a new one may start.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefreshPolicy:
    min_interval: float = 10.0
    max_age: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval <= self.max_age:
            raise ValueError("limits refresh needs 0 <= min_interval <= max_age")


def limits_refresh_due(policy: RefreshPolicy, now: float, *,
                       last_attempt_at: float | None,
                       last_success_at: float | None,
                       forced: str | None = None,
                       in_progress_since: float | None = None) -> str | None:
    """The reason a limits read is due now, or None when it is not.

    ``last_attempt_at``: when the last read started (None: never);
    ``last_success_at``: when the last read that succeeded started;
    ``forced``: why the current reading is known to be stale, if it is
    (e.g. "quota error", "delete completed");
    ``in_progress_since``: when the read still awaiting its answer started.
    """
    if in_progress_since is not None and now - in_progress_since < policy.max_age:
        return None
    if last_attempt_at is None:
        return "never read"
    if now - last_attempt_at < policy.min_interval:
        return None
    if forced:
        return forced
    if last_success_at is None or last_success_at < last_attempt_at:
        return "last read failed or hung"
    if now - last_success_at >= policy.max_age:
        return "max age"
    return None
