"""Reading the cloud's limits into the quota ledger when it asks for them.

The ledger says when a reading is due (``limits_refresh_due``); the read
goes through the gate and is applied on a later pass.  With several
launchers on one cloud project, the shared quota book is told which of its
claims the reading covers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.openstack import errors
from nodepool.driver.openstack.cloud import OpenStackCloud
from nodepool.driver.openstack.list_pacing import ListPacer
from nodepool.quota import CloudLimits, QuotaLedger
from nodepool.quota.ledger import STALE_AFTER_DELETE
from nodepool.quota.shared import SharedQuota


class LimitsReading:
    def __init__(self, name: str, ledger: QuotaLedger, gate: ApiGate,
                 cloud: Callable[[], OpenStackCloud], pacer: ListPacer, *,
                 pools: Callable[[], Mapping[str, Any]],
                 shared_quota: SharedQuota | None = None):
        self.name = name
        self.ledger = ledger
        self.gate = gate
        self.cloud = cloud
        self.pacer = pacer
        self.pools = pools
        self.shared_quota = shared_quota
        self._call: tuple[Any, ApiCall] | None = None
        self._shared_reading: object = None

    def tick(self) -> None:
        if self._call is not None:
            token, call = self._call
            if not call.done():
                return
            self._call = None
            try:
                compute, volume = call.result()
                applied = self.ledger.apply_limits(token, CloudLimits.from_api(
                    compute, volume, read_at=token.started_at))
            except Exception as e:  # noqa: BLE001 - the previous reading stays
                self.ledger.limits_read_failed(token, str(errors.classify(e)))
                return
            if applied:
                if self.shared_quota is not None:
                    self.shared_quota.reading_applied(self._shared_reading)
                self.pacer.reading_applied(
                    lambda: self.shared_quota is not None and self.shared_quota.others_covered())
            return
        due = self.ledger.limits_refresh_due(self.name)
        if due == STALE_AFTER_DELETE and not self.pacer.quota_waiting():
            # The reading over-counts a gone server: harmless until a
            # request needs the headroom (then it is read right away).
            return
        if due:
            token = self.ledger.begin_limits_read(self.name)
            if self.shared_quota is not None:
                # The claims owned now are servers nova will count.
                self._shared_reading = self.shared_quota.reading_started()
            self._call = (token, self.gate.submit("compute.get_limits", self._read))

    def _read(self) -> tuple[dict, dict | None]:
        compute = self.cloud().get_compute_limits()
        volume = self.cloud().get_volume_limits() if self._uses_volumes() else None
        return compute, volume

    def _uses_volumes(self) -> bool:
        return any(label.boot_from_volume for pool in self.pools().values()
                   for label in pool.labels.values())
