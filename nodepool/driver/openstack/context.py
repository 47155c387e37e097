"""What the OpenStack state machines (``machines.py``) use of their provider.

``CreateMachine`` and ``ServerDeletion`` never hold a socket or a thread:
every call to the cloud goes through ``gate``, every server they see comes
from ``servers``, what they wait to see in a list they tell ``pacer``,
every quota question goes to ``ledger`` and ``reserve``.
``OpenStackProvider`` is the one implementation; a test may pass its own.
Grouped by what they are for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from nodepool.driver.openstack import errors
    from nodepool.driver.gate import ApiCall, ApiGate
    from nodepool.driver.openstack.addressing import NetworkLayout
    from nodepool.driver.openstack.catalog import CloudCatalog
    from nodepool.driver.openstack.list_pacing import ListPacer
    from nodepool.driver.openstack.cloud import OpenStackCloud
    from nodepool.driver.openstack.machines import (CreateMachine, LabelPlan,
                                                    ServerDeletion)
    from nodepool.driver.outcomes import LaunchOutcome
    from nodepool.driver.list_cache import ListCache
    from nodepool.quota import QuotaDecision, QuotaLedger, Resources
    from nodepool.requests.builder import BuildSpec


class MachineContext(Protocol):
    # Identity and settings of the provider (from its config section).
    name: str
    cloud_name: str
    region_name: str | None
    clock: Callable[[], float]

    @property
    def hostname_format(self) -> str: ...
    @property
    def launch_timeout(self) -> float: ...
    @property
    def boot_timeout(self) -> float: ...
    @property
    def launch_retries(self) -> int: ...

    # The cloud, and what is known of it without a call.
    gate: "ApiGate"
    servers: "ListCache"
    ports: "ListCache"
    pacer: "ListPacer"
    catalog: "CloudCatalog"
    ledger: "QuotaLedger"

    @property
    def cloud(self) -> "OpenStackCloud": ...
    @property
    def network_layout(self) -> "NetworkLayout": ...

    # Creating a server.
    def plan_label(self, label: Any, pool: Any) -> tuple["LabelPlan | None", str | None,
                                                         bool]: ...
    def reserve(self, key: str, spec: "BuildSpec", cost: "Resources") -> "QuotaDecision": ...
    def create_body(self, machine: "CreateMachine", name: str) -> dict: ...
    def log_console(self, server_id: str, node_id: str) -> None: ...
    def note_floating_ip(self, server_id: str | None, address: str | None,
                         fip_id: str | None = None) -> None: ...

    # Deleting a server, and the ledger keys of servers in flight.
    def delete_server(self, server_id: str | None, *, key: str | None, node_id: str | None,
                      attempt: int | None, since: float,
                      after_call: "ApiCall | None" = None) -> "ServerDeletion": ...
    def remember_server(self, server_id: str | None, key: str | None) -> None: ...
    def key_for_server(self, server_id: str | None) -> str | None: ...
    def forget_server(self, server_id: str | None) -> None: ...
    def floating_ips_created_for(self, server_id: str | None) -> list[str]: ...
    def delete_floating_ip_by_address(self, address: str) -> None: ...

    # Counters and outcomes (statsd, status).
    def count_create_error(self, err: "errors.CloudError") -> None: ...
    def count_launch_failure(self) -> None: ...
    def report_launch(self, outcome: "LaunchOutcome") -> None: ...
    def note_delete_completed(self) -> None: ...
