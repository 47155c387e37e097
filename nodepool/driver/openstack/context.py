"""What the OpenStack machines are handed: settings and collaborators.

``CreateMachine`` (``create_machine.py``) and ``ServerDeletion``
(``deletion.py``) never hold a socket or a thread: every call to the cloud
goes through ``calls``, every server they see comes from ``servers``, what
they wait to see in a list they tell ``pacer``, every quota question goes
to ``quota``, and how things ended to ``reporter``.  The provider builds
one ``MachineContext`` and hands it to each machine; a test builds one of
fakes on a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from nodepool.driver.list_cache import ListCache
from nodepool.driver.openstack.addressing import NetworkLayout
from nodepool.driver.openstack.cloud_calls import CloudCalls
from nodepool.driver.openstack.floating_ips import FloatingIpTracker
from nodepool.driver.openstack.launch_reporter import LaunchReporter
from nodepool.driver.openstack.list_pacing import ListPacer
from nodepool.driver.openstack.quota_broker import QuotaBroker


@dataclass(frozen=True)
class LaunchSettings:
    """The provider's settings a machine reads (its config section)."""

    name: str
    cloud_name: str
    region_name: str | None
    hostname_format: str
    launch_timeout: float
    boot_timeout: float
    launch_retries: int

    @classmethod
    def from_config(cls, config: Any) -> "LaunchSettings":
        """From a ``model.Provider``."""
        settings = config.cloud_settings
        return cls(name=config.name, cloud_name=config.cloud,
                   region_name=config.region_name or (settings.region_name
                                                      if settings else None),
                   hostname_format=config.hostname_format,
                   launch_timeout=config.launch_timeout, boot_timeout=config.boot_timeout,
                   launch_retries=max(1, config.launch_retries))


@dataclass(frozen=True)
class MachineContext:
    name: str                                  # the provider's
    clock: Callable[[], float]
    # The settings now: a config reload applies to machines in flight too.
    settings: Callable[[], LaunchSettings]
    # The cloud's networks by role (addressing.py), from the catalog.
    network_layout: Callable[[], NetworkLayout]
    calls: CloudCalls
    servers: ListCache
    ports: ListCache
    pacer: ListPacer
    quota: QuotaBroker
    reporter: LaunchReporter
    # Floating IPs we attached (their deletion goes with the server's).
    floating_ips: FloatingIpTracker
