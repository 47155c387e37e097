"""The OpenStack driver's part of the nodepool.yaml schema: upstream Nodepool
11's documented keys of an OpenStack provider (and those serving its image
builder, accepted so an operator's existing file loads unchanged), checked
as strictly and leniently as ``nodepool.config.schema`` says.
"""

from __future__ import annotations

from typing import Any, Callable

import voluptuous as v

from nodepool.config.schema import (NEGATIVE_LIMIT, Bool, Dict, Int, ListOf, Mapping,
                                    NonEmptyStr, Port, Str, shown, type_name)


def Seconds(example: int) -> Callable[[Any], int]:
    """A timeout: upstream takes 0 or less, and then every launch times out."""
    return Int(1, "upstream Nodepool accepts 0 or less, and then every launch times out "
                  f"at once; write a number of seconds, e.g. {example}")


def Rate(value: Any) -> float:
    """``rate`` and ``read-rate``: seconds between API calls.  Upstream
    converts it with float(), so ``"0.5"`` works there and here; 0 means no
    fixed ceiling, as if the key were absent."""
    if isinstance(value, bool):
        raise v.Invalid(f"expected a number of seconds, got a boolean {value}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise v.Invalid(f"expected a number of seconds such as 1.0, got {shown(value)}; "
                            "upstream Nodepool converts numbers given as strings, but this "
                            "is not one") from None
    if not isinstance(value, (int, float)):
        raise v.Invalid(f"expected a number of seconds, got {type_name(value)} "
                        f"{shown(value)}")
    if value < 0 or value != value:  # NaN too
        raise v.Invalid(f"must not be negative, got {value}; write the seconds between two "
                        "API calls, e.g. 1.0 (0 or no key: no fixed ceiling)")
    return float(value)


cloud_image_schema = Dict({
    v.Required("name"): NonEmptyStr,
    v.Exclusive("image-id", "image", msg="give either image-id or image-name, not both"):
        NonEmptyStr,
    v.Exclusive("image-name", "image", msg="give either image-id or image-name, not both"):
        NonEmptyStr,
    "username": NonEmptyStr,
    "python-path": NonEmptyStr,
    "shell-type": NonEmptyStr,
    "connection-type": NonEmptyStr,
    "connection-port": Port,
    "config-drive": Bool,
})

provider_diskimage_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "pause": Bool,
    "meta": Mapping,
    "config-drive": Bool,
    "connection-type": NonEmptyStr,
    "connection-port": Port,
})

pool_label_schema = Dict({
    v.Required("name"): NonEmptyStr,
    v.Exclusive("cloud-image", "image", msg="give either cloud-image or diskimage, not both"):
        NonEmptyStr,
    v.Exclusive("diskimage", "image", msg="give either cloud-image or diskimage, not both"):
        NonEmptyStr,
    "flavor-name": NonEmptyStr,
    "min-ram": Int(0),
    "key-name": NonEmptyStr,
    "console-log": Bool,
    "boot-from-volume": Bool,
    "volume-size": Int(1),
    "userdata": Str,
    "instance-properties": Mapping,
    "dynamic-instance-properties": Mapping,
    "networks": ListOf(NonEmptyStr),
    "host-key-checking": Bool,
})

pool_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "priority": Int(),
    # Upstream: 0 or less disables the pool (it declines every request); a
    # negative value loads with a warning and does the same here.
    "max-servers": Int(),
    "max-cores": Int(0, NEGATIVE_LIMIT),
    "max-ram": Int(0, NEGATIVE_LIMIT),
    "max-volumes": Int(0, NEGATIVE_LIMIT),
    "max-volume-gb": Int(0, NEGATIVE_LIMIT),
    "networks": ListOf(NonEmptyStr),
    "security-groups": ListOf(NonEmptyStr),
    "availability-zones": ListOf(NonEmptyStr),
    "auto-floating-ip": Bool,
    "host-key-checking": Bool,
    "ignore-provider-quota": Bool,
    "node-attributes": Mapping,
    "labels": ListOf(pool_label_schema),
})

openstack_provider_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "driver": NonEmptyStr,
    v.Required("cloud"): NonEmptyStr,
    "region-name": NonEmptyStr,
    "priority": Int(),
    "max-concurrency": Int(),
    "rate": Rate,
    "read-rate": Rate,
    "boot-timeout": Seconds(60),
    "launch-timeout": Seconds(3600),
    # Upstream makes one attempt with 0 or less; so do we (the loader warns).
    "launch-retries": Int(),
    "hostname-format": NonEmptyStr,
    "clean-floating-ips": Bool,
    "port-cleanup-interval": Int(0),
    "cloud-images": ListOf(cloud_image_schema),
    "pools": ListOf(pool_schema),
    # Images built and uploaded by upstream's nodepool-builder.
    "diskimages": ListOf(provider_diskimage_schema),
    # Upstream keys that serve its image builder; accepted, reported by the loader.
    "image-upload-timeout": Int(1),
    "image-name-format": NonEmptyStr,
    "post-upload-hook": Str,
    "nodepool-id": Str,
})
