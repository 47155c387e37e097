"""The floating IPs this provider attached: remember them per server, and
delete them once their server is gone.

A floating IP we made is deleted by the id we got when we made it; one we
only know by address (made before a restart) costs one list call to find
its id.  A delete that fails is tried again after a new list; a failed list
is retried after ``FIP_RETRY`` seconds, never every pass.  Everything runs
on the provider's loop through its gate; nothing here blocks.
"""

from __future__ import annotations

import logging
from typing import Callable

from nodepool.driver.openstack import errors
from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.openstack.network_cleanup import unattached_floating_ips

log = logging.getLogger("nodepool.openstack.floating_ips")

FIP_LIST_INTERVAL = 10.0
FIP_RETRY = 5.0


class FloatingIpTracker:
    def __init__(self, name: str, gate: ApiGate, cloud: Callable[[], object],
                 clock: Callable[[], float]):
        self.name = name
        self.gate = gate
        self._cloud = cloud        # the provider's current connection
        self.clock = clock
        self._fip_call: ApiCall | None = None
        self._fips: list[dict] | None = None
        self._fips_at: float | None = None
        self._fip_deletes: set[str] = set()
        self._fip_delete_calls: dict[str, ApiCall] = {}
        self._fips_retry_at = float("-inf")
        self._fips_created: dict[str, set[str]] = {}   # server id -> addresses we attached
        self._fip_ids: dict[str, str] = {}   # address -> id, of those we made

    @property
    def cloud(self):
        return self._cloud()

    def note(self, server_id: str | None, address: str | None,
             fip_id: str | None = None) -> None:
        """We attached ``address`` to the server (with its id when known)."""
        if server_id and address:
            self._fips_created.setdefault(server_id, set()).add(address)
            if fip_id:
                self._fip_ids[address] = fip_id

    def created_for(self, server_id: str | None) -> list[str]:
        """Addresses we attached to the server (forgotten once asked: the
        server is gone and its deletion takes them over)."""
        return sorted(self._fips_created.pop(server_id, ())) if server_id else []

    def delete_by_address(self, address: str) -> None:
        self._fip_deletes.add(address)
        self._fips_at = None  # the list must be read after the server went

    def leaked(self, items: list[dict], listed_at: float) -> set[str]:
        """For the leak sweep: unattached floating IPs, less ours that are
        being deleted after their server went."""
        ours = self._fip_deletes | set(self._fip_delete_calls)
        mine = {f.get("id") for f in items if f.get("floating_ip_address") in ours}
        return unattached_floating_ips(items, listed_at) - mine

    def tick(self) -> None:
        """Start and finish the deletes of floating IPs whose server went."""
        now = self.clock()
        for addr in sorted(self._fip_deletes):
            fip_id = self._fip_ids.pop(addr, None)
            if fip_id is not None and addr not in self._fip_delete_calls:
                self._fip_deletes.discard(addr)
                self._fip_delete_calls[addr] = self.gate.submit(
                    "network.delete_floating_ip", self.cloud.delete_floating_ip, fip_id)
        for addr, call in list(self._fip_delete_calls.items()):
            if not call.done():
                continue
            del self._fip_delete_calls[addr]
            try:
                call.result()
            except Exception as e:  # noqa: BLE001 - retried below
                err = errors.classify(e)
                if err.kind != errors.NOT_FOUND:
                    log.warning("%s: deleting floating IP %s failed: %s", self.name, addr, err)
                    self._fip_deletes.add(addr)
                    self._fips_at = None
        if self._fip_call is not None:
            if not self._fip_call.done():
                return
            call, self._fip_call = self._fip_call, None
            try:
                self._fips = call.result()
                self._fips_at = now
            except Exception as e:  # noqa: BLE001
                log.warning("%s: listing floating IPs failed: %s", self.name,
                            errors.classify(e))
                self._fips_retry_at = now + FIP_RETRY
        if not self._fip_deletes:
            return
        if self._fips_at is None or now - self._fips_at >= FIP_LIST_INTERVAL:
            if now >= self._fips_retry_at:
                self._fip_call = self.gate.submit("network.list_floating_ips",
                                                  self.cloud.list_floating_ips)
            return
        for fip in self._fips or []:
            addr = fip.get("floating_ip_address")
            if addr in self._fip_deletes and addr not in self._fip_delete_calls:
                self._fip_delete_calls[addr] = self.gate.submit(
                    "network.delete_floating_ip", self.cloud.delete_floating_ip, fip["id"])
        # Addresses the fresh list does not show are gone already.
        self._fip_deletes.clear()
