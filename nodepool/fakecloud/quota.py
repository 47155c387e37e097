"""Nova's instance quota check and its 403 wording, as plain functions.

Nova counts every instance record that is not yet destroyed, whatever its
state; the caller passes that usage in.  The arithmetic and the message follow
nova's ``_check_num_instances_quota`` so a client sees the same numbers and
text it would see from a real cloud, e.g.
``Quota exceeded for instances: Requested 1, but already used 10 of 10 instances``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    """A create that nova answers with 403; ``overs`` are the resources at fault."""

    message: str
    overs: tuple[str, ...]

    def __str__(self) -> str:
        return self.message


def _headroom(limit: int, used: int) -> float:
    return math.inf if limit < 0 else limit - used


def check_instances(limits: dict[str, int], usage: dict[str, int], vcpus: int, ram: int,
                    min_count: int = 1, max_count: int = 1) -> int:
    """How many of ``max_count`` instances may be created, or raise QuotaExceeded.

    ``limits`` and ``usage`` carry ``instances``, ``cores`` and ``ram``; a
    limit of -1 is unlimited.  Like nova, when the full ``max_count`` does not
    fit but at least ``min_count`` does, the smaller number is granted.
    """
    deltas = {"instances": max_count, "cores": max_count * vcpus, "ram": max_count * ram}
    overs = sorted(k for k, d in deltas.items()
                   if limits[k] >= 0 and usage[k] + d > limits[k])
    if not overs:
        return max_count
    headroom = {k: _headroom(limits[k], usage[k]) for k in deltas}
    allowed = headroom["instances"]
    if vcpus:
        allowed = min(allowed, headroom["cores"] // vcpus)
    if ram:
        allowed = min(allowed, headroom["ram"] // ram)
    if allowed > 0 and min_count <= allowed <= max_count:
        return int(allowed)
    requested_instances = str(min_count) if min_count == max_count \
        else f"{min_count}-{max_count}"
    requested = {"instances": requested_instances, "cores": str(deltas["cores"]),
                 "ram": str(deltas["ram"])}
    names = ", ".join(overs)
    reqs = ", ".join(requested[k] for k in overs)
    used = ", ".join(str(usage[k]) for k in overs)
    allowed_s = ", ".join(str(limits[k]) for k in overs)
    raise QuotaExceeded(f"Quota exceeded for {names}: Requested {reqs}, but already used "
                        f"{used} of {allowed_s} {names}", tuple(overs))


def check_ports(limit: int, used: int, needed: int) -> None:
    """Nova asks neutron before accepting a create; over the port quota is a 403."""
    if limit >= 0 and used + needed > limit:
        raise QuotaExceeded("Maximum number of ports exceeded", ("ports",))


METADATA_ITEMS_LIMIT = 128


def check_metadata(count: int) -> None:
    if count > METADATA_ITEMS_LIMIT:
        raise QuotaExceeded(f"Maximum number of metadata items exceeds {METADATA_ITEMS_LIMIT}",
                            ("metadata_items",))


def volume_fault(limits: dict[str, int], usage: dict[str, int], count: int,
                 gigabytes: int) -> str | None:
    """The fault nova records when cinder refuses the boot volume, or None.

    Nova does not check cinder quota when it accepts the create; the build
    fails afterwards, so the server goes to ERROR with this message.
    """
    if limits["volumes"] >= 0 and usage["volumes"] + count > limits["volumes"]:
        return (f"VolumeLimitExceeded: Maximum number of volumes allowed "
                f"({limits['volumes']}) exceeded for quota 'volumes'.")
    if limits["gigabytes"] >= 0 and usage["gigabytes"] + gigabytes > limits["gigabytes"]:
        return (f"VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds "
                f"allowed gigabytes quota. Requested {gigabytes}G, quota is "
                f"{limits['gigabytes']}G and {usage['gigabytes']}G has been consumed.")
    return None


def floating_ip_over(limit: int, used: int) -> bool:
    return limit >= 0 and used + 1 > limit
