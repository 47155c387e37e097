"""The OpenStack driver's configuration model: its providers, pools, pool
labels, cloud images and per-provider diskimages, as ``config.build_provider``
builds them from nodepool.yaml.

Defaults follow upstream Nodepool 11's documentation; where we differ, the
field says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nodepool.config.model import CloudSettings, DiskImage, pool_priority

# Upstream's server name: "np" and the node id (12 characters, within the
# 15 a Windows computer name allows).  hostname-format can change it.
DEFAULT_HOSTNAME_FORMAT = "np{node.id}"
# Windows (NetBIOS) computer names are at most this long.
WINDOWS_NAME_MAX = 15


@dataclass(frozen=True)
class CloudImage:
    name: str
    image_id: str | None = None
    image_name: str | None = None
    username: str | None = None
    python_path: str = "auto"
    shell_type: str | None = None
    connection_type: str = "ssh"
    connection_port: int = 22
    config_drive: bool | None = None

    @property
    def reference(self) -> str:
        """What to look the image up by in the cloud: id, else name, else ours."""
        return self.image_id or self.image_name or self.name


@dataclass(frozen=True)
class ProviderDiskImage:
    """A provider's ``diskimages`` entry: the builder uploads the image to
    this provider, and labels boot its newest READY upload."""

    name: str
    image: DiskImage
    # Paused uploads are the builder's business: the launcher still boots
    # the newest READY upload, as upstream's does.
    pause: bool = False
    config_drive: bool | None = None
    connection_type: str = "ssh"
    connection_port: int = 22
    # Image properties the builder sets at upload; the launcher keeps them only.
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PoolLabel:
    name: str
    # How to reach and use the node; for a diskimage label, built from the
    # provider's and the top-level diskimages entries (its name is the
    # diskimage's) and not looked up in the cloud.
    cloud_image: CloudImage
    flavor_name: str | None = None
    min_ram: int = 0
    key_name: str | None = None
    console_log: bool = False
    boot_from_volume: bool = False
    volume_size: int = 50  # GiB, upstream's default
    userdata: str | None = None
    instance_properties: dict = field(default_factory=dict)
    # Values are format strings over the node request: {request.id} ...
    dynamic_instance_properties: dict = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    host_key_checking: bool = True
    # Set for a ``diskimage:`` label: it boots the newest READY upload.
    diskimage: ProviderDiskImage | None = None


@dataclass(frozen=True)
class Pool:
    name: str
    provider_name: str
    priority: int | None = None
    max_servers: float = math.inf
    max_cores: float = math.inf
    max_ram: float = math.inf
    max_volumes: float = math.inf
    max_volume_gb: float = math.inf
    networks: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    availability_zones: tuple[str, ...] = ()
    auto_floating_ip: bool = True
    host_key_checking: bool = True
    ignore_provider_quota: bool = False
    node_attributes: dict | None = None
    labels: dict[str, PoolLabel] = field(default_factory=dict)


@dataclass(frozen=True)
class Provider:
    name: str
    cloud: str
    cloud_settings: CloudSettings | None
    region_name: str | None = None
    driver: str = "openstack"
    priority: int | None = None
    # Upstream: -1 means unlimited concurrent launches.
    max_concurrency: int = -1
    # Seconds between mutating API calls (creates, deletes) on average; None
    # (the key absent): no fixed ceiling, the gate adapts its concurrency.
    rate: float | None = None
    # Seconds between read calls; None: rate / 5 when rate is set, else none.
    read_rate: float | None = None
    boot_timeout: int = 60
    launch_timeout: int = 3600
    launch_retries: int = 3
    hostname_format: str = DEFAULT_HOSTNAME_FORMAT
    clean_floating_ips: bool = False
    port_cleanup_interval: int = 600
    cloud_images: dict[str, CloudImage] = field(default_factory=dict)
    diskimages: dict[str, ProviderDiskImage] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)

    def pool_priority(self, pool: Pool) -> int:
        return pool_priority(pool.priority, self.priority)
