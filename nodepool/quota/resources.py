"""Quota arithmetic: what a server costs, what the cloud allows, what it has used.

Unlimited is ``math.inf`` everywhere inside this package (nova's and cinder's
``-1`` become ``math.inf`` when limits are parsed; the config loader already
uses ``math.inf`` for pool and tenant maxima that are not set).  ``None`` is
never an amount; it only appears in the operator dicts of
:meth:`Resources.as_dict` with ``json_safe=True``, because JSON has no
infinity.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

RESOURCE_NAMES: tuple[str, ...] = ("instances", "cores", "ram", "volumes", "volume_gb")

# Spellings accepted by Resources.from_mapping besides the field names: the
# config loader keys tenant limits by the nodepool.yaml suffix (``volume-gb``).
_ALIASES = {"volume-gb": "volume_gb"}


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of every quota resource nodepool tracks.

    ``ram`` is in MiB (nova's unit), ``volume_gb`` in GiB (cinder's).  Values
    may be negative (a headroom that is overdrawn) or ``math.inf``
    (unlimited), never NaN or ``-inf``.
    """

    instances: float = 0
    cores: float = 0
    ram: float = 0
    volumes: float = 0
    volume_gb: float = 0

    def __post_init__(self) -> None:
        for name in RESOURCE_NAMES:
            value = getattr(self, name)
            kind = type(value)
            if kind is not int and kind is not float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"quota resource {name!r} must be a number, "
                                    f"not {value!r}")
            # NaN is the only value not equal to itself.
            if value != value or value == -math.inf:
                raise ValueError(f"quota resource {name!r} cannot be {value!r}")

    # -- construction -----------------------------------------------------

    @classmethod
    def unlimited(cls) -> Resources:
        return cls(*([math.inf] * len(RESOURCE_NAMES)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, float], default: float = 0) -> Resources:
        """Build from a dict such as a tenant's limits; absent keys take ``default``."""
        picked = {name: default for name in RESOURCE_NAMES}
        for key, value in values.items():
            name = _ALIASES.get(key, key)
            if name not in picked:
                raise ValueError(f"unknown quota resource {key!r}; "
                                 f"known: {', '.join(RESOURCE_NAMES)}")
            picked[name] = value
        return cls(**picked)

    # -- arithmetic -------------------------------------------------------

    def _combine(self, other: Resources, op: Callable[[float, float], float]) -> Resources:
        if not isinstance(other, Resources):
            return NotImplemented
        return Resources(op(self.instances, other.instances), op(self.cores, other.cores),
                         op(self.ram, other.ram), op(self.volumes, other.volumes),
                         op(self.volume_gb, other.volume_gb))

    def __add__(self, other: Resources) -> Resources:
        return self._combine(other, operator.add)

    def __sub__(self, other: Resources) -> Resources:
        def sub(a: float, b: float) -> float:
            if b == math.inf:
                # inf - inf has no meaning; a finite value minus unlimited
                # usage is a caller bug (usage is never unlimited).
                raise ValueError("cannot subtract an unlimited amount")
            return a - b
        return self._combine(other, sub)

    def __mul__(self, factor: float) -> Resources:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
            return NotImplemented
        # 0 servers of an unlimited cost is nothing, not NaN.
        return Resources(*(0 if factor == 0 else getattr(self, n) * factor
                           for n in RESOURCE_NAMES))

    __rmul__ = __mul__

    def maximum(self, other: Resources) -> Resources:
        """Per-resource maximum."""
        return self._combine(other, max)

    def minimum(self, other: Resources) -> Resources:
        """Per-resource minimum."""
        return self._combine(other, min)

    # -- comparisons ------------------------------------------------------

    @property
    def non_negative(self) -> bool:
        """True when no resource is overdrawn (zero counts as fitting)."""
        return all(getattr(self, n) >= 0 for n in RESOURCE_NAMES)

    def negative(self) -> tuple[str, ...]:
        """Names of the overdrawn resources."""
        return tuple(n for n in RESOURCE_NAMES if getattr(self, n) < 0)

    def fits(self, limit: Resources) -> bool:
        """True when every resource of ``self`` is <= the same one in ``limit``."""
        return not self.exceeding(limit)

    def exceeding(self, limit: Resources) -> tuple[str, ...]:
        """Names of the resources where ``self`` is above ``limit``."""
        return tuple(n for n in RESOURCE_NAMES if getattr(self, n) > getattr(limit, n))

    # -- presentation -----------------------------------------------------

    def as_dict(self, json_safe: bool = False) -> dict[str, Any]:
        """Plain dict; with ``json_safe`` unlimited becomes ``None``."""
        out: dict[str, Any] = {}
        for n in RESOURCE_NAMES:
            value = getattr(self, n)
            out[n] = None if json_safe and value == math.inf else value
        return out

    def __str__(self) -> str:
        parts = []
        for n in RESOURCE_NAMES:
            value = getattr(self, n)
            if value:
                parts.append(f"{n}={'unlimited' if value == math.inf else _fmt(value)}")
        return "Resources(" + ", ".join(parts) + ")"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


ZERO = Resources()
UNLIMITED = Resources.unlimited()

assert tuple(f.name for f in fields(Resources)) == RESOURCE_NAMES


def label_cost(vcpus: int, ram_mib: int, *, boot_from_volume: bool = False,
               volume_size_gb: int = 0) -> Resources:
    """What one server of a label costs: one instance, the flavor's vCPUs and
    RAM, and for boot-from-volume one volume of ``volume_size_gb``."""
    for name, value in (("vcpus", vcpus), ("ram", ram_mib), ("volume size", volume_size_gb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value < math.inf:
            raise ValueError(f"flavor {name} must be a non-negative number, not {value!r}")
    if boot_from_volume:
        return Resources(1, vcpus, ram_mib, 1, volume_size_gb)
    return Resources(1, vcpus, ram_mib)


def limit_value(raw: Any, what: str) -> float:
    """A maximum from nova/cinder: ``-1`` (or absent) means unlimited."""
    if raw is None:
        return math.inf
    value = _number(raw, what)
    if value == -1:
        return math.inf
    if value < 0:
        raise ValueError(f"{what} must be -1 (unlimited) or >= 0, not {raw!r}")
    return value


def _used_value(raw: Any, what: str) -> float:
    if raw is None:
        return 0
    value = _number(raw, what)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {raw!r}")
    return value


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{what} must be a number, not {raw!r}")
    if isinstance(raw, str):
        try:
            raw = int(raw)
        except ValueError:
            raise ValueError(f"{what} must be a number, not {raw!r}") from None
    if not isinstance(raw, (int, float)) or math.isnan(raw):
        raise ValueError(f"{what} must be a number, not {raw!r}")
    return raw


# Keys of nova's GET /limits "absolute" object and cinder's, then the
# attribute names openstacksdk gives the same values, so the adapter can pass
# either the raw JSON or an SDK resource's to_dict().
_COMPUTE_MAX = {"instances": ("maxTotalInstances", "instances", "max_total_instances"),
                "cores": ("maxTotalCores", "total_cores", "max_total_cores"),
                "ram": ("maxTotalRAMSize", "total_ram", "max_total_ram_size")}
_COMPUTE_USED = {"instances": ("totalInstancesUsed", "instances_used", "total_instances_used"),
                 "cores": ("totalCoresUsed", "total_cores_used"),
                 "ram": ("totalRAMUsed", "total_ram_used")}
_VOLUME_MAX = {"volumes": ("maxTotalVolumes", "max_total_volumes"),
               "volume_gb": ("maxTotalVolumeGigabytes", "max_total_volume_gigabytes")}
_VOLUME_USED = {"volumes": ("totalVolumesUsed", "total_volumes_used"),
                "volume_gb": ("totalGigabytesUsed", "total_gigabytes_used")}


def _lookup(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


@dataclass(frozen=True)
class CloudLimits:
    """One reading of the cloud's limits: maxima and the cloud's own usage.

    ``used`` is what nova (and cinder) count: every instance record not yet
    destroyed, in any state, ours or not.  ``read_at`` is the caller's clock
    when the reading was taken (same clock as the ledger's).
    """

    max: Resources
    used: Resources
    read_at: float

    @classmethod
    def from_api(cls, compute: Mapping[str, Any], volume: Mapping[str, Any] | None = None,
                 *, read_at: float) -> CloudLimits:
        """Parse nova's ``absolute`` limits and, if the cloud has cinder, its
        ``absolute`` limits.  Without cinder, volumes are unlimited and unused.
        A missing maximum counts as unlimited, a missing counter as zero."""
        maxima: dict[str, float] = {}
        used: dict[str, float] = {}
        keys: tuple[str, ...]
        for source, max_keys, used_keys in ((compute, _COMPUTE_MAX, _COMPUTE_USED),
                                            (volume or {}, _VOLUME_MAX, _VOLUME_USED)):
            for name, keys in max_keys.items():
                maxima[name] = limit_value(_lookup(source, keys), keys[0])
            for name, keys in used_keys.items():
                used[name] = _used_value(_lookup(source, keys), keys[0])
        return cls(Resources(**maxima), Resources(**used), read_at)
