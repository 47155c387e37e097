"""Whether a pool may take a request, and start a node, now: the one place
the request handler asks the builder about room.

Two moments ask it.  A new request is looked at as a whole before it is
accepted (``of_request``): images it needs that this provider lacks, a
cost the provider's quota or the tenant's limits can never take (declined),
a tenant at its limit (left for later, the pool does not pause).  Then each
node of an accepted request asks before it is created (``of_node``): the
pool's max-servers, then the builder's quota.  Launch concurrency
(``max-concurrency``) decides whether new requests are looked at at all.

The builder's answers are kept for the rest of the pass, until the handler
says room changed (``room_changed``: it created a node, or a build ended):
so a request accepted in this pass does not ask again for its first node,
and requests that wait behind the same label ask once per pass, not once
each.  At max-servers the builder is not needed for the answer but is
still told, about once a second, that a request waits (it then hurries to
see its deleted servers gone, which frees max-servers too); an answer
already given in this pass told it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from nodepool.requests import protocol
from nodepool.requests.builder import Capacity, LaunchConcurrency, NodeBuilder
from nodepool.requests.protocol import PoolSettings
from nodepool.zk.records import Node, NodeRequest

# The handler's logger: operators follow one logger for what a pool decides.
log = logging.getLogger("nodepool.requests.handler")

# At max-servers the builder is still asked for capacity this often, so that
# it knows a request waits (builders remember that for a couple of seconds).
MAX_SERVERS_TELL_INTERVAL = 1.0

NEVER_FITS_QUOTA = "it would never fit the provider's quota"


@dataclass(frozen=True)
class RequestVerdict:
    """``declines``: why the request is declined (empty: it may be taken);
    ``tenant_waits``: its tenant is at its limit, so it is left for later."""

    declines: tuple[str, ...] = ()
    tenant_waits: bool = False


class Admission:
    def __init__(self, builder: NodeBuilder, pool: PoolSettings,
                 clock: Callable[[], float] = time.time):
        self.builder = builder
        self.pool = pool
        self.clock = clock
        self._answers: dict[tuple[str, ...], Capacity] = {}
        self._max_servers_told_at = float("-inf")
        self._concurrency: LaunchConcurrency | None = None
        self._concurrency_reached = False

    # -- the pass ---------------------------------------------------------------------

    def begin_pass(self) -> None:
        """Answers are good for one pass: other pools and finished deletes
        change the room between passes."""
        self._answers.clear()

    def room_changed(self) -> None:
        """The handler created a node or a build ended: ask again."""
        self._answers.clear()

    # -- new requests -----------------------------------------------------------------

    def begin_assignment(self) -> bool:
        """Before new requests are looked at; False: look at none (a
        ``max-concurrency`` of 0, as upstream: the provider neither takes
        nor declines any; another provider serves them)."""
        self._concurrency = self._launch_concurrency()
        self._concurrency_reached = False
        return self._concurrency is None or self._concurrency.limit != 0

    def concurrency_reached(self) -> bool:
        """Is the provider at ``max-concurrency``?  Once reached it stays so
        for the rest of the assignment; until then each request asks."""
        if self._concurrency is None or self._concurrency.limit is None:
            return False
        if not self._concurrency_reached:
            now = self._launch_concurrency()
            if now is not None and now.reached:
                log.debug("pool %s: max-concurrency reached (%d launches in progress); "
                          "leaving new requests to other providers", self.pool.pool_id,
                          now.in_progress)
                self._concurrency_reached = True
        return self._concurrency_reached

    def of_request(self, request: NodeRequest) -> RequestVerdict:
        """The request as a whole, before it is accepted (images first, as
        upstream checks them before quota)."""
        labels = list(request.node_types)
        images = self._images_reasons(labels)
        if images:
            return RequestVerdict(tuple(images))
        if self._capacity(labels) is Capacity.NEVER:
            return RequestVerdict((NEVER_FITS_QUOTA,))
        # A tenant at its limit waits without pausing the pool, so other
        # tenants' requests go on.
        tenant = self._tenant_capacity(request)
        if tenant is Capacity.NEVER:
            return RequestVerdict((f"it would never fit tenant {request.tenant_name}'s "
                                   "resource limits",))
        if tenant is Capacity.WAIT:
            return RequestVerdict(tenant_waits=True)
        return RequestVerdict()

    # -- nodes of accepted requests -------------------------------------------------

    def of_node(self, label: str, pool_nodes: Iterable[Node], launching: int) -> Capacity:
        """May one more node of ``label`` be created now?  ``pool_nodes``:
        the pool's recorded nodes; ``launching``: the handler's nodes not
        recorded there yet."""
        if protocol.at_max_servers(pool_nodes, self.pool, launching):
            now = self.clock()
            if (label,) in self._answers:
                self._max_servers_told_at = now
            elif now - self._max_servers_told_at >= MAX_SERVERS_TELL_INTERVAL:
                self._max_servers_told_at = now
                self._capacity([label])
            return Capacity.WAIT
        return self._capacity([label])

    # -- the builder's answers -------------------------------------------------------

    def _capacity(self, labels: Sequence[str]) -> Capacity:
        key = tuple(labels)
        answer = self._answers.get(key)
        if answer is None:
            try:
                answer = self.builder.capacity(list(labels), pool=self.pool.pool_name)
            except Exception:
                log.exception("pool %s: capacity check failed; treating as no headroom",
                              self.pool.pool_id)
                answer = Capacity.WAIT
            self._answers[key] = answer
        return answer

    def _tenant_capacity(self, request: NodeRequest) -> Capacity:
        try:
            return self.builder.tenant_capacity(request.tenant_name, list(request.node_types),
                                                pool=self.pool.pool_name)
        except Exception:
            log.exception("pool %s: tenant capacity check failed; treating as no headroom",
                          self.pool.pool_id)
            return Capacity.WAIT

    def _images_reasons(self, labels: Sequence[str]) -> list[str]:
        """Upstream's "images are not available": a label's diskimage has
        no READY upload for this provider, so another provider may serve
        the request."""
        unavailable = getattr(self.builder, "unavailable_images", None)
        if unavailable is None:
            return []
        try:
            missing = unavailable(list(labels), pool=self.pool.pool_name)
        except Exception:
            log.exception("pool %s: image availability check failed; declining nothing",
                          self.pool.pool_id)
            return []
        if not missing:
            return []
        return [f"images are not available: no READY upload of "
                f"{', '.join(sorted(set(missing)))} for this provider"]

    def _launch_concurrency(self) -> LaunchConcurrency | None:
        """The builder's max-concurrency and launches in progress (None: it
        has no such limit)."""
        ask = getattr(self.builder, "launch_concurrency", None)
        if not callable(ask):
            return None
        try:
            return ask()
        except Exception:  # without the figures, no limit is applied
            log.exception("pool %s: reading the launch concurrency failed", self.pool.pool_id)
            return None
