"""How one launch attempt ended, as the statsd ``nodepool.launch.*`` metrics name it.

The reasons are the ones upstream Nodepool reports for OpenStack providers,
so dashboards built on ``nodepool.launch.error.<reason>`` keep working.  A
driver reports outcomes through a plain callback; it never talks to statsd.
"""

from __future__ import annotations

from dataclasses import dataclass

READY = "ready"
# A failed attempt, by cause (upstream's names):
ERROR_QUOTA = "error.quota"                    # the cloud refused for quota
ERROR_STATUS = "error.status"                  # the server went ERROR
ERROR_NETWORK = "error.network"                # ACTIVE but no usable address
ERROR_KEYSCAN = "error.keyscan"                # host keys / port never answered
ERROR_CREATE_TIMEOUT = "error.servercreatetimeout"  # launch-timeout passed
ERROR_UNKNOWN = "error.unknown"                # anything else

OUTCOMES = (READY, ERROR_QUOTA, ERROR_STATUS, ERROR_NETWORK, ERROR_KEYSCAN,
            ERROR_CREATE_TIMEOUT, ERROR_UNKNOWN)


@dataclass(frozen=True)
class LaunchOutcome:
    """One attempt's end: ``ready`` once per node, an error per failed attempt."""

    provider: str
    outcome: str                 # one of OUTCOMES
    milliseconds: int            # from the attempt's create call (or start) to now
    az: str | None = None
    requestor: str | None = None
