"""The validated configuration, as plain records: the top level of
nodepool.yaml and the clouds.yaml settings.  Each provider entry is its
driver's model (``nodepool/driver/<name>/``); here only what every one offers.

Defaults follow upstream Nodepool 11's documentation; where we differ, the
field says why.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodepool.config.zookeeper import ZooKeeperSettings

DEFAULT_CONNECTION_PORTS = {"ssh": 22, "winrm": 5986}


def pool_priority(pool: int | None, provider: int | None) -> int:
    """Upstream: the pool's priority, else the provider's, else 100."""
    for p in (pool, provider):
        if p is not None:
            return p
    return 100


class PoolConfig(Protocol):
    """What every driver's pool model offers (the launcher's pool workers
    and the request handler read these)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Collection[str]: ...
    @property
    def max_servers(self) -> float: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def node_attributes(self) -> dict | None: ...
    @property
    def availability_zones(self) -> tuple[str, ...]: ...


class ProviderConfig(Protocol):
    """What every driver's provider model offers (``Driver.model``)."""

    @property
    def name(self) -> str: ...
    @property
    def driver(self) -> str: ...
    @property
    def pools(self) -> Mapping[str, PoolConfig]: ...

    def pool_priority(self, pool: Any) -> int: ...


@dataclass(frozen=True)
class Label:
    name: str
    min_ready: int = 0
    max_ready_age: int = 0  # seconds; 0: never expire


@dataclass(frozen=True)
class DiskImage:
    """A top-level ``diskimages`` entry with its parents' values merged in
    (upstream's inheritance): what the launcher reads of an image that
    upstream's nodepool-builder builds.  The builder's keys are not kept."""

    name: str
    username: str = "zuul"
    python_path: str = "auto"
    shell_type: str | None = None
    pause: bool = False


@dataclass(frozen=True)
class CloudNetwork:
    """One entry of a cloud's ``networks`` list in clouds.yaml: how
    openstacksdk is told what a network is for."""

    name: str
    routes_ipv4_externally: bool = False
    routes_ipv6_externally: bool = False
    nat_source: bool = False
    nat_destination: bool = False
    default_interface: bool = False


@dataclass(frozen=True)
class AddressPolicy:
    """clouds.yaml's settings that decide which of a server's addresses are
    public and whether it gets a floating IP (openstacksdk's meaning)."""

    networks: tuple[CloudNetwork, ...] = ()
    # ``floating_ip_source: None`` in clouds.yaml: never make floating IPs.
    floating_ips: bool = True
    # ``private: true``: the launcher reaches servers on their private address.
    private: bool = False


@dataclass(frozen=True)
class CloudSettings:
    """What the launcher needs from this provider's clouds.yaml entry."""

    name: str
    api_timeout: float
    region_name: str | None
    clouds_file: str
    # A digest of the cloud's whole entry (auth included), so a reload can
    # tell that a password was rotated or an endpoint moved.
    fingerprint: str = ""
    addresses: AddressPolicy = AddressPolicy()


@dataclass(frozen=True)
class TenantLimits:
    tenant_name: str
    limits: dict[str, float]  # 'instances', 'cores', 'ram', ... -> max


@dataclass(frozen=True)
class WebApp:
    port: int = 8005
    listen_address: str = "127.0.0.1"  # upstream binds 0.0.0.0; we keep it local


@dataclass(frozen=True)
class NodepoolConfig:
    config_file: str
    zookeeper: ZooKeeperSettings | None
    webapp: WebApp
    labels: dict[str, Label]
    providers: dict[str, ProviderConfig]  # each its driver's model
    tenant_limits: dict[str, TenantLimits]
    max_hold_age: int | None = None  # seconds; None: forever
    clouds_file: str | None = None
    # Top-level diskimages (abstract ones left out), for upstream's builder
    # and for labels that boot its uploads.
    diskimages: dict[str, DiskImage] = field(default_factory=dict)

    def pools(self) -> Iterator[tuple[ProviderConfig, PoolConfig]]:
        for provider in self.providers.values():
            for pool in provider.pools.values():
                yield provider, pool
