"""The interface between the request handler and the cloud.

The handler never waits on the cloud: it asks for headroom, starts a build
or a delete, and polls the handle on later passes.  Implementations keep no
thread per node (they may batch polls behind the scenes) and must not block
on any call.  Plain data only, so a cloud driver implements this without
importing the ZooKeeper layer; a test double implements it in the tests.

Exceptions from ``start_*``/``poll_*`` count as a failed build or delete;
from ``capacity`` as "no headroom now".  The handler keeps an answer of
``capacity`` for the rest of its pass, until it starts a build or one
ends (``nodepool/requests/admission.py``): a builder is asked about once
per node, not once per request that waits.

A builder may also offer ``availability_zones() -> list[str]``, the zones
the cloud lists: the handler picks one of them for a request whose pool
names none (as upstream does), and passes it in ``BuildSpec.az``.

A builder may also offer ``launch_concurrency() -> LaunchConcurrency``, the
provider's ``max-concurrency`` and its launches in progress (across all its
pools): the handler then takes no new request while the limit is reached,
and none at all with a limit of 0, so that another provider takes them.

A request that finds no room makes the pool delete its oldest unused ready
node (as upstream does), unless the builder sets ``deleting_frees_capacity``
to False (its nodes are not built, so a deletion frees nothing).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import (TYPE_CHECKING, Any, Hashable, Mapping, Protocol, Sequence,
                    runtime_checkable)

if TYPE_CHECKING:
    from nodepool.zk.records import Node


class Capacity(enum.Enum):
    AVAILABLE = "available"  # start it now
    WAIT = "wait"            # not now (at quota); the request waits, the pool pauses
    NEVER = "never"          # can never fit this provider: decline


class BuildState(enum.Enum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"        # the node failed: the request is declined
    ABORTED = "aborted"      # transient (e.g. the cloud said over quota): build again


class DeleteState(enum.Enum):
    DELETING = "deleting"
    DONE = "done"            # the server is gone (or never existed)
    FAILED = "failed"        # try again on a later pass


@dataclass(frozen=True)
class LaunchConcurrency:
    """``limit``: max-concurrency (None: no limit; 0: take no requests);
    ``in_progress``: the provider's builds not finished yet."""

    limit: int | None
    in_progress: int

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.in_progress >= self.limit


@dataclass(frozen=True)
class BuildSpec:
    node_id: str
    label: str
    provider_name: str
    pool_name: str
    request_id: str | None = None
    tenant_name: str | None = None
    attributes: Mapping[str, Any] | None = None
    # The node request's fields a label's dynamic-instance-properties may use.
    request: Mapping[str, Any] | None = None
    # The availability zone every node of the request is built in (None: the
    # cloud chooses).
    az: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    """What the cloud tells about a server; None means "unknown, leave as is".

    Return ``external_id`` as soon as the server exists (even while it is
    still building) so it is recorded before anything can go wrong.
    """

    external_id: str | None = None
    hostname: str | None = None
    interface_ip: str | None = None
    public_ipv4: str | None = None
    private_ipv4: str | None = None
    public_ipv6: str | None = None
    host_id: str | None = None
    cloud: str | None = None
    region: str | None = None
    az: str | None = None
    image_id: str | None = None
    username: str | None = None
    connection_type: str | None = None
    connection_port: Any = None
    python_path: str | None = None
    shell_type: str | None = None
    host_keys: Sequence[str] | None = None
    resources: Mapping[str, Any] | None = None
    node_properties: Mapping[str, Any] | None = None
    driver_data: Any = None

    def known(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "host_keys":
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class BuildStatus:
    state: BuildState
    info: NodeInfo = field(default_factory=NodeInfo)
    reason: str | None = None


@dataclass(frozen=True)
class DeleteSpec:
    node_id: str
    provider_name: str | None
    pool_name: str | None
    labels: tuple[str, ...]
    external_id: str | None
    state: str               # the node's state before deleting began
    # Somebody waits for this deletion to end (``nodepool delete --now``):
    # the builder should not let it ride on its slow pace.
    awaited: bool = False

    @classmethod
    def for_node(cls, node: Node, state: str | None = None) -> DeleteSpec:
        """The delete of ``node``'s server; ``state``: the node's state
        before its delete began (``ZooKeeperStore.begin_delete`` returns
        it), its current state by default."""
        return cls(node_id=node.id, provider_name=node.provider, pool_name=node.pool,
                   labels=tuple(node.type), external_id=node.external_id,
                   state=node.state if state is None else state)


@dataclass(frozen=True)
class DeleteStatus:
    state: DeleteState
    reason: str | None = None


@dataclass(frozen=True)
class StandingNode:
    """One slot of a host that is always there: a node with ``labels`` in
    ``pool``, described by ``info`` (``external_id`` names the host)."""

    pool: str
    labels: tuple[str, ...]
    slot: int
    info: NodeInfo

    @property
    def key(self) -> tuple:
        """What a registered node must carry to be this slot."""
        return standing_key(self.pool, self.info.external_id, self.info.username,
                            self.info.connection_port, self.slot)


def standing_key(pool: str | None, external_id: str | None, username: str | None,
                 port: Any, slot: int | None) -> tuple:
    return (pool, external_id, username, port, slot)


@runtime_checkable
class NodeBuilder(Protocol):
    def capacity(self, labels: Sequence[str], pool: str | None = None) -> Capacity:
        """Could one new server for each label start now in ``pool`` (the
        pool being served; None: the first pool that has the label)?"""

    def tenant_capacity(self, tenant: str | None, labels: Sequence[str],
                        pool: str | None = None) -> Capacity:
        """Would the tenant's resource limits take one server per label now
        (WAIT: not now, the request is left for later without pausing the
        pool; NEVER: not even with none of the tenant's servers running)?"""

    def start_build(self, spec: BuildSpec) -> Hashable:
        """Begin creating a server; return a handle for ``poll_build``."""

    def poll_build(self, handle: Hashable) -> BuildStatus:
        """Where the build is now; never blocks.  A finished build keeps
        answering the same until ``forget_build``, so a result whose write
        to ZooKeeper failed can be written again on a later pass."""

    def forget_build(self, handle: Hashable) -> None:
        """The caller has recorded the final status; drop the build."""

    def cancel_build(self, handle: Hashable, spec: DeleteSpec) -> None:
        """Nobody may finish this build (its znode was removed, or its lock
        went with a lost session): stop it and delete whatever it created
        (the finished server too), without anyone polling for it.  When a
        delete of the node was started already, that delete covers it."""

    def start_delete(self, spec: DeleteSpec) -> Hashable:
        """Begin deleting the node's server; return a handle for ``poll_delete``."""

    def poll_delete(self, handle: Hashable) -> DeleteStatus:
        """Where the delete is now; never blocks.  A delete is kept until
        polled to its end (also after the caller lost the node's lock)."""
