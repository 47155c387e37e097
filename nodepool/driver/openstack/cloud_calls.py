"""The cloud calls the machines make, each submitted through the gate.

A machine never holds the SDK connection: it asks ``CloudCalls`` for a
call and polls the ``ApiCall`` it gets back on later passes.  The
connection is looked up when the call is submitted, so a machine started
before a reconnect uses the new connection.
"""

from __future__ import annotations

import logging
from typing import Callable

from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.openstack import errors
from nodepool.driver.openstack.cloud import OpenStackCloud

# The console log is a diagnostic of the provider's, logged as before.
log = logging.getLogger("nodepool.openstack.provider")


class CloudCalls:
    def __init__(self, name: str, gate: ApiGate, cloud: Callable[[], OpenStackCloud]):
        self.name = name
        self.gate = gate
        # Raises CloudError(UNAVAILABLE) while the provider is not connected.
        self.cloud = cloud

    def create_server(self, body: dict) -> ApiCall:
        return self.gate.submit("compute.create_server", self.cloud().create_server, body)

    def delete_server(self, server_id: str) -> ApiCall:
        return self.gate.submit("compute.delete_server", self.cloud().delete_server, server_id)

    def create_floating_ip(self, network_id: str, port_id: str) -> ApiCall:
        return self.gate.submit("network.create_floating_ip", self.cloud().create_floating_ip,
                                network_id, port_id)

    def log_console(self, server_id: str, node_id: str) -> None:
        """``console-log``: after a failed SSH check, log the server's
        console; the call goes through the gate and nobody waits for it."""
        def fetch_and_log() -> None:
            try:
                output = self.cloud().get_console_output(server_id)
            except Exception as e:  # noqa: BLE001 - only a diagnostic
                log.warning("%s: node %s: console log of server %s unavailable: %s",
                            self.name, node_id, server_id, errors.classify(e))
                return
            log.info("%s: node %s: console log of server %s:\n%s", self.name, node_id,
                     server_id, output.rstrip() or "(empty)")
        self.gate.submit("compute.get_console_output", fetch_and_log)
