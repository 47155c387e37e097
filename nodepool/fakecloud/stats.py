"""Request counters and the optional JSON-lines request log."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from typing import IO

from nodepool.fakecloud.model import iso, utcnow


class Counters:
    """Counts by ``"METHOD /route/template"`` and status, plus quota refusals.

    ``quota_403`` counts creates nova refused for quota (instances, cores,
    ram, ports, metadata items); ``quota_refusals`` counts every quota refusal
    by resource, including neutron's 409 for floating IPs.
    """

    def __init__(self, log_path: str | None = None):
        self._lock = threading.Lock()
        self._log_path = log_path
        self._log: IO[str] | None = None
        self.reset()

    def open(self) -> None:
        with self._lock:
            if self._log_path and self._log is None:
                self._log = open(self._log_path, "a")

    def reset(self) -> None:
        with self._lock:
            self._requests: dict[str, Counter[str]] = defaultdict(Counter)
            self._by_status: Counter[str] = Counter()
            self._quota_403 = 0
            self._quota_refusals: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            # Per project (the scale benchmark's API calls per provider) and
            # time spent answering per route (is the cloud the bottleneck?).
            self._by_project: Counter[str] = Counter()
            self._seconds: dict[str, float] = defaultdict(float)
            self._since = iso(utcnow())

    def record(self, route_key: str, path: str, status: int, duration: float,
               project: str | None, quota: tuple[str, ...] = (),
               fault: str | None = None) -> None:
        with self._lock:
            self._requests[route_key][str(status)] += 1
            self._by_status[str(status)] += 1
            self._seconds[route_key] += duration
            if project is not None:
                self._by_project[project] += 1
            if quota:
                if status == 403:
                    self._quota_403 += 1
                for resource in quota:
                    self._quota_refusals[resource] += 1
            if self._log is not None:
                finished = time.time()
                entry = {"time": iso(utcnow()), "route": route_key, "path": path,
                         "status": status, "ms": round(duration * 1000, 1),
                         "project": project,
                         # Epoch seconds, for measuring rates and delays.
                         "started": round(finished - duration, 4),
                         "finished": round(finished, 4)}
                if quota:
                    entry["quota"] = list(quota)
                if fault:
                    entry["fault"] = fault
                self._log.write(json.dumps(entry) + "\n")
                self._log.flush()

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def count(self, route_key: str, status: int | None = None) -> int:
        with self._lock:
            counts = self._requests.get(route_key)
            if not counts:
                return 0
            return counts[str(status)] if status is not None else sum(counts.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "since": self._since,
                "total": sum(self._by_status.values()),
                "requests": {k: dict(sorted(v.items()))
                             for k, v in sorted(self._requests.items())},
                "by_status": dict(sorted(self._by_status.items())),
                "quota_403": self._quota_403,
                "quota_refusals": dict(sorted(self._quota_refusals.items())),
                "faults": dict(sorted(self._faults.items())),
                "by_project": dict(sorted(self._by_project.items())),
                "seconds_by_route": {k: round(v, 4) for k, v in sorted(self._seconds.items())},
            }

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None


class TransitionLog:
    """The optional JSON-lines log of server transitions: ``{"event":
    "active" | "error" | "gone", "server": id, "at": epoch seconds}``, the
    moment nova's answers changed.  With the request log it gives what the
    API alone cannot: how long after a server was gone its quota was used
    again, or after it booted it was noticed."""

    def __init__(self, path: str | None = None):
        self._lock = threading.Lock()
        self._path = path
        self._file: IO[str] | None = None

    def open(self) -> None:
        with self._lock:
            if self._path and self._file is None:
                self._file = open(self._path, "a")

    def write(self, event: str, server_id: str, at: float) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(json.dumps({"event": event, "server": server_id,
                                             "at": round(at, 4)}) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
