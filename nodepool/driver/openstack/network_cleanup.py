"""Periodic cleanup of leaked floating IPs and ports.

``clean-floating-ips`` and ``port-cleanup-interval`` (upstream's keys, same
meaning): neutron objects carry no nodepool metadata, so both are heuristics
for a project the launcher has to itself.  A floating IP without a port, or a
DOWN port that no listed server owns, is only deleted when two samples taken
one interval apart both show it leaked: a port of a server that is still
being wired up, or a floating IP between create and attach, is never caught.

Unlike upstream, a DOWN port is kept when its ``device_id`` is a server nova
still lists, or when it belongs to something other than nova (routers, DHCP,
load balancers), and the port sample is only judged against a server list
requested after it.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from nodepool.driver.openstack import errors
from nodepool.driver.budget import Priority
from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.list_cache import ListCache

log = logging.getLogger("nodepool.openstack.cleanup")

# After a failed list, try again this soon rather than a whole interval later.
LIST_RETRY = 30.0

# Judges a sample: the ids that look leaked, or None when it cannot tell yet.
Judge = Callable[[list[dict], float], "set[str] | None"]


class LeakSweep:
    """One kind of neutron object: list it every ``interval`` seconds and
    delete what two consecutive samples both judged leaked.  ``tick()``
    never blocks; every call goes through the provider's gate."""

    def __init__(self, provider_name: str, what: str, gate: ApiGate, interval: float,
                 list_fn: Callable[[], list[dict]], delete_fn: Callable[[str], bool],
                 judge: Judge, clock: Callable[[], float] = time.monotonic):
        self.provider_name = provider_name
        self.what = what                 # "floating_ip" or "port", for logs and call kinds
        self.gate = gate
        self.interval = interval
        self.list_fn = list_fn
        self.delete_fn = delete_fn
        self.judge = judge
        self.clock = clock
        self.next_at = clock() + interval     # nothing to judge at start-up
        self.previous: set[str] | None = None
        self.deleted = 0
        self._list: ApiCall | None = None
        self._sample: tuple[list[dict], float] | None = None   # listed, not judged yet
        self._deletes: dict[str, ApiCall] = {}

    def tick(self) -> None:
        now = self.clock()
        self._collect_deletes()
        if self._list is not None:
            if not self._list.done():
                return
            call, self._list = self._list, None
            try:
                self._sample = (call.result(), call.started_at or call.submitted_at)
            except Exception as e:  # noqa: BLE001 - retried soon
                log.warning("%s: listing %ss for cleanup failed: %s", self.provider_name,
                            self.what, errors.classify(e))
                self.next_at = now + min(self.interval, LIST_RETRY)
                return
        if self._sample is not None:
            items, listed_at = self._sample
            leaked = self.judge(items, listed_at)
            if leaked is None:
                return                 # judged again next pass
            self._sample = None
            self._act(leaked)
            self.next_at = now + self.interval
            return
        if now >= self.next_at:
            self._list = self.gate.submit(f"network.list_{self.what}s", self.list_fn,
                                          priority=Priority.SWEEP)

    def _act(self, leaked: set[str]) -> None:
        if self.previous is not None:
            for item_id in sorted((leaked & self.previous) - set(self._deletes)):
                log.warning("%s: deleting leaked %s %s (leaked on two samples %.0f s apart)",
                            self.provider_name, self.what.replace("_", " "), item_id,
                            self.interval)
                self._deletes[item_id] = self.gate.submit(
                    f"network.delete_{self.what}", self.delete_fn, item_id,
                    priority=Priority.SWEEP)
        self.previous = leaked

    def _collect_deletes(self) -> None:
        for item_id, call in list(self._deletes.items()):
            if not call.done():
                continue
            del self._deletes[item_id]
            try:
                call.result()
            except Exception as e:  # noqa: BLE001 - still leaked: the next samples retry
                err = errors.classify(e)
                if err.kind != errors.NOT_FOUND:
                    log.warning("%s: deleting leaked %s %s failed: %s", self.provider_name,
                                self.what.replace("_", " "), item_id, err)
                    continue
            self.deleted += 1

    def status(self) -> dict:
        return {"interval": self.interval, "suspects": len(self.previous or ()),
                "deleting": len(self._deletes), "deleted": self.deleted,
                "next_in": round(max(0.0, self.next_at - self.clock()), 1)}


def unattached_floating_ips(items: list[dict], listed_at: float) -> set[str]:
    """Floating IPs bound to no port."""
    return {f["id"] for f in items if f.get("id") and not f.get("port_id")}


def orphan_port_judge(servers: ListCache,
                      awaited: Callable[[float], None]) -> Judge:
    """DOWN ports owned by nova (or nobody) whose server nova no longer
    lists; undecided until the server list was requested after the ports
    (``awaited``: ask the list's pacer for one requested after a moment)."""
    def judge(items: list[dict], listed_at: float) -> set[str] | None:
        snap = servers.snapshot
        if snap.requested_at < listed_at:
            awaited(listed_at)
            return None
        out = set()
        for port in items:
            owner = port.get("device_owner") or ""
            if port.get("status") != "DOWN" or not port.get("id"):
                continue
            # Only ports nova made for a server: an operator's port with no
            # owner (made on purpose, attached later) is never ours to delete.
            if not owner.startswith("compute:"):
                continue
            if port.get("device_id") and port["device_id"] in snap.items:
                continue
            out.add(port["id"])
        return out
    return judge
