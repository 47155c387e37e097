"""Counters and launch outcomes of one provider (statsd, the status API).

The machines report here; the provider's ``status()`` and ``metrics()``
read ``counters``.
"""

from __future__ import annotations

import logging
from typing import Callable

from nodepool.driver.openstack import errors
from nodepool.driver.outcomes import LaunchOutcome

log = logging.getLogger("nodepool.openstack.provider")


class LaunchReporter:
    def __init__(self, name: str,
                 observer: Callable[[LaunchOutcome], None] | None = None):
        self.name = name
        # Told how each launch attempt ended (the statsd launch timers).
        self.observer = observer
        self.counters = {"launch_failures": 0, "quota_errors": 0, "create_errors": 0,
                         "deletes_completed": 0, "leaks_deleted": 0}

    def count_create_error(self, err: errors.CloudError) -> None:
        key = "quota_errors" if err.kind == errors.QUOTA else "create_errors"
        self.counters[key] += 1

    def count_launch_failure(self) -> None:
        self.counters["launch_failures"] += 1

    def note_delete_completed(self) -> None:
        self.counters["deletes_completed"] += 1

    def count_leak_deleted(self) -> None:
        self.counters["leaks_deleted"] += 1

    def report_launch(self, outcome: LaunchOutcome) -> None:
        if self.observer is None:
            return
        try:
            self.observer(outcome)
        except Exception:  # metrics must never fail a launch
            log.debug("%s: reporting a launch outcome failed", self.name, exc_info=True)
