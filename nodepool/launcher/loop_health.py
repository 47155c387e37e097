"""Each launcher loop's heartbeat: when it started, last finished a pass and
since when its passes fail, so /health can tell a stuck or failing loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# A loop that has not finished a pass (or whose passes all failed) for this
# long is stuck; /health says so.
LOOP_DEADLINE = 120.0


@dataclass
class LoopHealth:
    """When each loop started, last finished a pass, and since when its
    passes fail, for the health check and dumps."""

    last_pass: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    failing_since: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def start(self, name: str) -> None:
        self.started.setdefault(name, time.monotonic())

    def beat(self, name: str, ok: bool = True) -> None:
        now = time.monotonic()
        self.last_pass[name] = now
        if ok:
            self.failing_since.pop(name, None)
        else:
            self.failing_since.setdefault(name, now)

    def forget(self, name: str) -> None:
        for d in (self.last_pass, self.started, self.failing_since, self.errors):
            d.pop(name, None)

    def ages(self) -> dict[str, float]:
        now = time.monotonic()
        return {k: round(now - v, 1) for k, v in sorted(self.last_pass.items())}

    def problems(self, deadline: float = LOOP_DEADLINE) -> list[str]:
        now = time.monotonic()
        found = []
        for name, since in sorted(self.started.items()):
            last = self.last_pass.get(name)
            if last is None and now - since > deadline:
                found.append(f"{name} loop has not finished a pass since it started "
                             f"{now - since:.0f}s ago")
            elif last is not None and now - last > deadline:
                found.append(f"{name} loop has not finished a pass for {now - last:.0f}s")
        for name, since in sorted(self.failing_since.items()):
            if now - since > deadline:
                found.append(f"every pass of the {name} loop has failed for "
                             f"{now - since:.0f}s")
        return found
