"""The quota ledger's arithmetic: headroom, sums of costs, and the
shortfalls that block a create.  Pure functions of
:class:`~nodepool.quota.resources.Resources`; the ledger calls them under
its lock."""

from __future__ import annotations

import math
from typing import Iterable

from nodepool.quota.resources import RESOURCE_NAMES, CloudLimits, Resources


def cloud_headroom(limits: CloudLimits, covered: Resources, in_flight: Resources) -> Resources:
    """The counting rule of :mod:`nodepool.quota.ledger`, before subtracting
    what a create needs."""
    return limits.max - limits.used.maximum(covered) - in_flight


def has_room(headroom: Resources) -> bool:
    """Room for ending a backoff early: at least one more instance and some
    cores and RAM."""
    # Volumes are left out because most labels use none; the exact check
    # still happens in try_reserve.
    return headroom.instances >= 1 and headroom.cores > 0 and headroom.ram > 0


def total(costs: Iterable[Resources]) -> Resources:
    """The sum of ``costs``."""
    # Plain float sums: this runs under the lock for every decision, and
    # building an intermediate Resources per entry would dominate it.
    instances = cores = ram = volumes = volume_gb = 0.0
    for c in costs:
        instances += c.instances
        cores += c.cores
        ram += c.ram
        volumes += c.volumes
        volume_gb += c.volume_gb
    return Resources(instances, cores, ram, volumes, volume_gb)


def check_cost(cost: Resources) -> None:
    """Raise unless ``cost`` is a finite, non-negative Resources."""
    if not isinstance(cost, Resources):
        raise TypeError(f"cost must be Resources, not {cost!r}")
    if not cost.non_negative or any(getattr(cost, n) == math.inf for n in RESOURCE_NAMES):
        raise ValueError(f"cost must be finite and non-negative, not {cost}")


def shortfalls(layer: str, limit: Resources, used: Resources, cost: Resources,
               reasons: list[str]) -> bool:
    """Append a reason per resource that would go below zero; True if any.

    A resource the create does not consume (``need == 0``) cannot be pushed
    below zero by it and is not checked: a project whose volumes are full
    (someone else's) can still boot servers without volumes, as nova allows.
    """
    found = False
    for res in RESOURCE_NAMES:
        lim, use, need = getattr(limit, res), getattr(used, res), getattr(cost, res)
        if need and lim - use - need < 0:
            found = True
            reasons.append(f"{layer}: {res} needs {_num(need)}, "
                           f"{_num(use)} of {_num(lim)} in use")
    return found


def _num(value: float) -> str:
    if value == math.inf:
        return "unlimited"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
