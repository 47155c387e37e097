"""Static hosts as a provider: nothing is built or deleted, hosts are checked.

Each host of the config offers ``max-parallel-jobs`` slots.  The provider's
loop checks every host in turn, without a thread per host: an SSH host
with ``host-key-checking`` is scanned (``ssh-keyscan``, as new OpenStack
servers are), any other host must accept a TCP connection on its
``connection-port``; a check may take the host's ``timeout``.  A host that
answers offers its slots as ``standing_nodes()``; the launcher keeps one
ready node registered per slot.  A host that stops answering offers none, so
its ready nodes are retired until it answers again; nodes in use stay.

With ``host-key-checking`` on, an SSH host's keys are always scanned and a
configured ``host-key`` must be among them (as upstream).  Upstream Nodepool
does not check a host whose ``host-key-checking`` is off; here such a host
must still accept a TCP connection to be in service.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Hashable, Sequence

from nodepool.driver.base import ProviderMetrics
from nodepool.driver.keyscan import (SSH_CONNECTION_TYPES, HostKeyScan, PortCheck,
                                     ReadinessCheck)
from nodepool.driver.loop import LoopedProvider, ProviderLoop
from nodepool.driver.static.config import StaticNode, StaticProviderConfig
from nodepool.quota import PoolQuota, QuotaLedger, Resources
from nodepool.requests.builder import (BuildSpec, BuildState, BuildStatus, Capacity,
                                       DeleteSpec, DeleteState, DeleteStatus,
                                       LaunchConcurrency, NodeInfo, StandingNode)

log = logging.getLogger("nodepool.static.provider")

LOOP_INTERVAL = 0.25
# Seconds between two checks of a host (in service or not).
CHECK_INTERVAL = 10.0
# What a node holds of its pool's capacity: one slot (counted as an instance).
SLOT = Resources(instances=1)


@dataclass
class _Host:
    pool: str
    node: StaticNode
    check: ReadinessCheck | None = None
    up: bool | None = None          # None: not checked yet
    keys: tuple[str, ...] = ()
    error: str | None = None
    next_check: float = float("-inf")

    def cancel(self) -> None:
        if self.check is not None:
            self.check.cancel()
            self.check = None

    def describe(self) -> dict:
        return {"pool": self.pool, "name": self.node.name, "port": self.node.connection_port,
                "up": self.up, "slots": self.node.max_parallel_jobs,
                "checking": self.check is not None, "error": self.error}


def _scanned(node: StaticNode) -> bool:
    """Are the host's keys collected (``ssh-keyscan``) to check it?"""
    return node.host_key_checking and node.connection_type in SSH_CONNECTION_TYPES


def _keys_for_zuul(node: StaticNode, found: Sequence[str]) -> tuple[str, ...]:
    """As upstream: the keys the host showed when they were checked, the
    configured ones for an SSH host with checking off, none otherwise."""
    if _scanned(node):
        return tuple(found)
    return node.host_keys if node.connection_type in SSH_CONNECTION_TYPES else ()


def _key_mismatch(node: StaticNode, found: Sequence[str]) -> str | None:
    """Why the host is refused: a configured ``host-key`` it did not show."""
    if not _scanned(node) or set(node.host_keys) <= set(found):
        return None
    missing = sorted(set(node.host_keys) - set(found))
    return (f"host key mismatch: the configured host-key {', '.join(missing)} is not among "
            f"the keys the host shows ({', '.join(found) or 'none'})")


class StaticProvider(LoopedProvider):
    """A ``LaunchProvider`` whose nodes are the hosts of its config.

    The launcher's views of ZooKeeper (``known_nodes``, ...) are not needed:
    nothing is ever built, so nothing can leak."""

    # A deleted node's slot is registered again at once: deleting an unused
    # node frees nothing for a request that waits (see requests.builder).
    deleting_frees_capacity = False

    def __init__(self, config: StaticProviderConfig, ledger: QuotaLedger, *,
                 clock: Callable[[], float] = time.monotonic,
                 check_interval: float | None = None, **_views: Any):
        self.name = config.name
        self.ledger = ledger
        self.clock = clock
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._hosts: dict[tuple, _Host] = {}
        self.config = config
        self._apply(config)
        self._deletes_done = 0
        self._in_use: set[tuple] = set()
        self._loop = ProviderLoop(self.name, self._tick, lambda: LOOP_INTERVAL, clock)

    # -- configuration -----------------------------------------------------------

    def update_config(self, config: StaticProviderConfig) -> None:
        """Hosts added are checked, hosts removed leave; a host whose entry
        is unchanged keeps its state (its nodes in use are not touched)."""
        self._apply(config)

    def _apply(self, config: StaticProviderConfig) -> None:
        with self._lock:
            hosts = {}
            for pool in config.pools.values():
                for node in pool.nodes:
                    key = (pool.name, node.key)
                    old = self._hosts.get(key)
                    if old is not None and old.node == node:
                        hosts[key] = old
                    else:
                        hosts[key] = _Host(pool.name, node)
            for key, old in self._hosts.items():
                if hosts.get(key) is not old:
                    old.cancel()
            self._hosts = hosts
            self.config = config
        self.ledger.configure_provider(self.name, {
            name: PoolQuota.from_pool(pool) for name, pool in config.pools.items()})

    # -- the loop ----------------------------------------------------------------------

    def stop(self, wait: float = 10.0) -> None:
        self._loop.stop(wait)
        with self._lock:
            for host in self._hosts.values():
                host.cancel()

    def _tick(self) -> None:
        """One pass: start the checks that are due, look at those running."""
        # Polls never block, so the lock is held briefly.
        with self._lock:
            for host in self._hosts.values():
                self._check(host)

    def _check(self, host: _Host) -> None:
        now = self.clock()
        node = host.node
        if host.check is None:
            if now < host.next_check:
                return
            deadline = now + node.timeout
            host.check = (HostKeyScan if _scanned(node) else PortCheck)(
                node.name, node.connection_port, deadline, clock=self.clock)
        found = host.check.poll()
        if found is None:
            return
        check, host.check = host.check, None
        interval = CHECK_INTERVAL if self._check_interval is None else self._check_interval
        host.next_check = now + interval
        up = bool(check.ok)
        mismatch = _key_mismatch(node, found) if up else None
        if mismatch:
            up = False
            host.error = mismatch
        elif up:
            host.keys = _keys_for_zuul(node, found)
            host.error = None
        else:
            host.error = check.error or getattr(check, "last_error", None) or "no answer"
        if up != host.up:
            if up:
                log.info("%s: host %s answers; its %d slot(s) are in service", self.name,
                         node.name, node.max_parallel_jobs)
            else:
                log.warning("%s: host %s does not answer (%s); out of service", self.name,
                            node.name, host.error)
        host.up = up

    # -- what the launcher registers -------------------------------------------------

    def standing_nodes(self) -> list[StandingNode] | None:
        with self._lock:
            hosts = list(self._hosts.values())
        if any(h.up is None for h in hosts):
            return None
        out = []
        for host in hosts:
            if not host.up:
                continue
            node = host.node
            info = NodeInfo(external_id=node.name, hostname=node.name,
                            interface_ip=node.name, username=node.username,
                            connection_type=node.connection_type,
                            connection_port=node.connection_port,
                            python_path=node.python_path, shell_type=node.shell_type,
                            host_keys=list(host.keys))
            out += [StandingNode(host.pool, node.labels, slot, info)
                    for slot in range(node.max_parallel_jobs)]
        return out

    def slots_in_use(self, keys: Collection[tuple]) -> None:
        """The quota ledger counts one instance per slot held by a node, so
        ``nodepool quota`` shows slots: the pool limit is the pool's slots."""
        keys = set(keys)
        for key in keys - self._in_use:
            self.ledger.adopt(key, provider=self.name, pool=key[0], cost=SLOT)
        for key in self._in_use - keys:
            self.ledger.delete_issued(key)
            self.ledger.server_gone(key)
        self._in_use = keys

    # -- NodeBuilder -------------------------------------------------------------------

    def capacity(self, labels: Sequence[str], pool: str | None = None) -> Capacity:
        """Nodes are never built here: WAIT for a slot to come back, or NEVER
        when no host of the pool has the label."""
        pools = [self.config.pools[pool]] if pool in self.config.pools else \
            list(self.config.pools.values())
        served = {label for p in pools for label in p.labels}
        return Capacity.WAIT if set(labels) <= served else Capacity.NEVER

    def tenant_capacity(self, tenant: str | None, labels: Sequence[str],
                        pool: str | None = None) -> Capacity:
        return Capacity.AVAILABLE

    def launch_concurrency(self) -> LaunchConcurrency:
        """Only ``max-concurrency: 0`` matters (the pools take no request):
        nothing is ever launched here."""
        return LaunchConcurrency(0 if self.config.max_concurrency == 0 else None, 0)

    def start_build(self, spec: BuildSpec) -> Hashable:
        return spec.node_id

    def poll_build(self, handle: Hashable) -> BuildStatus:
        return BuildStatus(BuildState.FAILED,
                           reason="static nodes are registered, not built")

    def forget_build(self, handle: Hashable) -> None:
        pass

    def cancel_build(self, handle: Hashable, spec: DeleteSpec) -> None:
        pass

    def start_delete(self, spec: DeleteSpec) -> Hashable:
        """The host stays: only the node's record goes (the launcher
        registers the slot again while the host answers)."""
        self._deletes_done += 1
        return spec.node_id

    def poll_delete(self, handle: Hashable) -> DeleteStatus:
        return DeleteStatus(DeleteState.DONE)

    # -- for operators -----------------------------------------------------------------

    def metrics(self) -> ProviderMetrics:
        return ProviderMetrics()

    def status(self) -> dict:
        with self._lock:
            hosts = [h.describe() for h in self._hosts.values()]
        return {"name": self.name, "driver": "static", "builds": [], "hosts": hosts,
                "slots_in_service": sum(h["slots"] for h in hosts if h["up"]),
                "records_deleted": self._deletes_done}
