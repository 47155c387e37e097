"""The voluptuous schema of nodepool.yaml.

It accepts upstream Nodepool 11's documented keys for OpenStack providers, so an
operator's existing file loads unchanged.  Keys that only upstream's builder or
other drivers use are accepted here and reported by the loader as "not served
by this launcher" rather than rejected as typos.

Type checks are strict (``true`` is not an integer, ``"10"`` is not a number)
and the messages are written for people; ``voluptuous_problems`` turns
voluptuous' errors into ``path: message`` pairs.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import voluptuous as v


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def Int(minimum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise v.Invalid(f"expected an integer, got {_type_name(value)} {_shown(value)}")
        if minimum is not None and value < minimum:
            raise v.Invalid(f"must be at least {minimum}, got {value}")
        return value
    return check


def Number(positive: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise v.Invalid(f"expected a number, got {_type_name(value)} {_shown(value)}")
        if positive and not value > 0:
            raise v.Invalid(f"must be greater than 0, got {value}")
        return float(value)
    return check


def Str(value: Any) -> str:
    if not isinstance(value, str):
        raise v.Invalid(f"expected a string, got {_type_name(value)} {_shown(value)}")
    return value


def NonEmptyStr(value: Any) -> str:
    Str(value)
    if not value.strip():
        raise v.Invalid("must not be empty")
    return value


def Bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise v.Invalid(f"expected true or false, got {_type_name(value)} {_shown(value)}")
    return value


def Mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise v.Invalid(f"expected a mapping, got {_type_name(value)} {_shown(value)}")
    return value


def ListOf(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    """A list whose items are each checked; errors carry the item's index."""
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise v.Invalid(f"expected a list, got {_type_name(value)} {_shown(value)}")
        errors = []
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except v.MultipleInvalid as e:
                for err in e.errors:
                    errors.append(v.Invalid(err.msg, path=[i] + list(err.path)))
            except v.Invalid as e:
                errors.append(v.Invalid(e.msg, path=[i] + list(e.path)))
        if errors:
            raise v.MultipleInvalid(errors)
        return out
    return check


def Dict(schema: dict) -> Callable[[Any], dict]:
    """A mapping schema that first says clearly when the value is not a mapping."""
    compiled = v.Schema(schema)

    def check(value: Any) -> dict:
        Mapping(value)
        return compiled(value)
    check.schema = schema  # type: ignore[attr-defined]
    return check


def Port(value: Any) -> int:
    Int(0)(value)
    if value > 65535:
        raise v.Invalid(f"must be a TCP port (0-65535), got {value}")
    return value


# -- nodepool.yaml -----------------------------------------------------------

label_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "min-ready": Int(0),
    "max-ready-age": Int(0),
})

webapp_schema = Dict({
    "port": Port,
    "listen_address": NonEmptyStr,
})

zookeeper_server_schema = Dict({
    v.Required("host"): NonEmptyStr,
    "port": Port,
    "chroot": Str,
})

zookeeper_tls_schema = Dict({
    v.Required("cert"): NonEmptyStr,
    v.Required("key"): NonEmptyStr,
    v.Required("ca"): NonEmptyStr,
})

tenant_limit_schema = Dict({
    v.Required("tenant-name"): NonEmptyStr,
    "max-servers": Int(0),
    "max-cores": Int(0),
    "max-ram": Int(0),
    "max-volumes": Int(0),
    "max-volume-gb": Int(0),
    # Upstream accepts arbitrary extra resource limits as integers.
    Str: Int(0),
})

# Builder-only keys: the loader reports them as not served, they are not typos.
BUILDER_TOP_LEVEL_KEYS = ("diskimages", "elements-dir", "images-dir",
                          "build-log-dir", "build-log-retention")

top_level_schema = Dict({
    "zookeeper-servers": ListOf(zookeeper_server_schema),
    "zookeeper-tls": zookeeper_tls_schema,
    "zookeeper-timeout": Number(positive=True),
    "webapp": webapp_schema,
    "labels": ListOf(label_schema),
    "max-hold-age": Int(0),
    "tenant-resource-limits": ListOf(tenant_limit_schema),
    # Each provider is checked by its driver's schema in the loader.
    "providers": ListOf(Mapping),
    "diskimages": ListOf(Mapping),
    "elements-dir": Str,
    "images-dir": Str,
    "build-log-dir": Str,
    "build-log-retention": Int(),
})

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
    "max-servers": Int(0),
    "max-cores": Int(0),
    "max-ram": Int(0),
    "max-volumes": Int(0),
    "max-volume-gb": Int(0),
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
    "rate": Number(positive=True),
    "read-rate": Number(positive=True),
    "boot-timeout": Int(1),
    "launch-timeout": Int(1),
    "launch-retries": Int(1),
    "hostname-format": NonEmptyStr,
    "clean-floating-ips": Bool,
    "port-cleanup-interval": Int(0),
    "cloud-images": ListOf(cloud_image_schema),
    "pools": ListOf(pool_schema),
    # Upstream keys that serve its image builder; accepted, reported by the loader.
    "diskimages": ListOf(provider_diskimage_schema),
    "image-upload-timeout": Int(1),
    "image-name-format": NonEmptyStr,
    "post-upload-hook": Str,
    "nodepool-id": Str,
})

# Upstream's other drivers, recognised so their providers are reported as
# "not served" rather than as unknown drivers.
OTHER_DRIVERS = ("aws", "azure", "gce", "ibmvpc", "kubernetes", "openshift",
                 "openshiftpods", "metastatic", "static", "fake", "test")


def _known_keys(schema: Callable) -> list[str]:
    keys = []
    for k in getattr(schema, "schema", {}):
        raw = getattr(k, "schema", k)
        if isinstance(raw, str):
            keys.append(raw)
    return keys


def _schema_at(schema: Callable, path: list) -> Callable | None:
    """The dict schema that governs the mapping at ``path`` (for suggestions)."""
    current = schema
    for part in path:
        if isinstance(part, int):
            continue
        inner = getattr(current, "schema", None)
        if inner is None:
            return None
        nxt = None
        for k, val in inner.items():
            if getattr(k, "schema", k) == part:
                nxt = val
        if nxt is None:
            return None
        # ListOf wraps the item schema in a closure.
        cells = getattr(nxt, "__closure__", None) or ()
        for cell in cells:
            if callable(cell.cell_contents) and hasattr(cell.cell_contents, "schema"):
                nxt = cell.cell_contents
        current = nxt
    return current


def voluptuous_problems(schema: Callable, data: Any,
                        prefix: list | None = None) -> list[tuple[list, str]]:
    """Validate; return ``(path, message)`` pairs, every problem found."""
    prefix = prefix or []
    try:
        schema(data)
        return []
    except v.MultipleInvalid as e:
        errors = e.errors
    except v.Invalid as e:
        errors = [e]
    out = []
    for err in errors:
        path = list(err.path)
        msg = err.msg
        if msg == "extra keys not allowed" and path:
            key = path[-1]
            parent = _schema_at(schema, path[:-1])
            known = _known_keys(parent) if parent else []
            hint = difflib.get_close_matches(str(key), known, n=1)
            msg = f"unknown key {str(key)!r}"
            if hint:
                msg += f"; did you mean {hint[0]!r}?"
            elif known:
                msg += f"; allowed keys here: {', '.join(sorted(known))}"
        elif msg == "required key not provided":
            msg = "is required but missing"
        elif msg.startswith("expected str for dictionary value") or msg == "expected a dictionary":
            msg = "expected a mapping"
        out.append((prefix + path, msg))
    return out
