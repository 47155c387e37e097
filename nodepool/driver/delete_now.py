"""Delete one node's servers in the foreground (``nodepool delete --now``).

A provider of its own (its driver's class, from the registry), with its own
gate and ledger, runs until the deletion is done or the deadline passes: the
same deletion the launcher's reaper runs (the node's server, and any other
server carrying its node id), without a launcher.  Nothing here touches
ZooKeeper; the caller holds the node's lock and removes the record when this
reports done.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from nodepool.driver import registry
from nodepool.quota import QuotaLedger
from nodepool.requests.builder import DeleteSpec, DeleteState, DeleteStatus

POLL_INTERVAL = 0.2


def delete_node_servers(provider_config: Any, spec: DeleteSpec, timeout: float,
                        server_list_interval: float = 1.0) -> DeleteStatus:
    """Run the deletion of ``spec``'s servers; DONE, or DELETING with the
    reason when ``timeout`` seconds passed first."""
    provider = registry.provider_class(provider_config)(
        provider_config, QuotaLedger(), server_list_interval=server_list_interval)
    provider.start()
    try:
        handle = provider.start_delete(dataclasses.replace(spec, awaited=True))
        deadline = time.monotonic() + timeout
        status = provider.poll_delete(handle)
        while status.state is DeleteState.DELETING and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            status = provider.poll_delete(handle)
        return status
    finally:
        provider.stop(wait=5.0)
