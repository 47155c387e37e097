"""The voluptuous schema of nodepool.yaml's top level, and the checkers
every driver's schema is built from (``nodepool/driver/<name>/``).

It accepts upstream Nodepool 11's documented top-level keys and those of its
image builder, so an operator's existing file loads unchanged.  Keys that
only upstream's builder uses are accepted quietly (the builder runs beside
this launcher); each provider entry is checked by its driver's schema, and
other drivers' providers are reported by the loader as "not served by this
launcher" rather than rejected as typos.

Type checks are as strict as upstream's (``true`` is not an integer, ``"10"``
is not an integer) and lenient where upstream is: ``rate`` may be a number in a
string (upstream converts it), and the values upstream accepts and treats as
"off" (``max-servers: -1``, a negative ``min-ready``) load, with a warning
from the loader.  Where upstream accepts a value that cannot work (a timeout
of 0), the message says so and what to write instead.  The messages are
written for people; ``voluptuous_problems`` turns voluptuous' errors into
``path: message`` pairs.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import voluptuous as v

from nodepool.config.zookeeper import parse_identity


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def as_list(value: Any) -> list:
    """A list from the file, or nothing (the schema reports other types)."""
    return value if isinstance(value, list) else []


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def Int(minimum: int | None = None, why: str = "") -> Callable[[Any], int]:
    """An integer; ``why`` is added to the "at least" message (what upstream
    did with such a value and what to write instead)."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise v.Invalid(f"expected an integer, got {type_name(value)} {shown(value)}")
        if minimum is not None and value < minimum:
            raise v.Invalid(f"must be at least {minimum}, got {value}" + (f"; {why}" if why
                                                                           else ""))
        return value
    return check


def Number(positive: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise v.Invalid(f"expected a number, got {type_name(value)} {shown(value)}")
        if positive and not value > 0:
            raise v.Invalid(f"must be greater than 0, got {value}")
        return float(value)
    return check


def Str(value: Any) -> str:
    if not isinstance(value, str):
        raise v.Invalid(f"expected a string, got {type_name(value)} {shown(value)}")
    return value


def NonEmptyStr(value: Any) -> str:
    Str(value)
    if not value.strip():
        raise v.Invalid("must not be empty")
    return value


def Bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise v.Invalid(f"expected true or false, got {type_name(value)} {shown(value)}")
    return value


def Mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise v.Invalid(f"expected a mapping, got {type_name(value)} {shown(value)}")
    return value


def ListOf(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    """A list whose items are each checked; errors carry the item's index."""
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise v.Invalid(f"expected a list, got {type_name(value)} {shown(value)}")
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

# A negative pool limit: upstream accepts it, and no server ever fits.
NEGATIVE_LIMIT = ("upstream Nodepool accepts a negative limit, and then no server ever "
                  "fits; leave the key out for no limit")

label_schema = Dict({
    v.Required("name"): NonEmptyStr,
    # Upstream takes 0 or less as "off"; so do we (the loader warns).
    "min-ready": Int(),
    "max-ready-age": Int(),
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

def ZooKeeperUser(value: Any) -> str:
    NonEmptyStr(value)
    if ":" in value:
        raise v.Invalid(f"a digest user name cannot contain ':', got {shown(value)}")
    return value


def ZooKeeperIdentity(value: Any) -> str:
    """``<scheme>:<id>``, e.g. ``x509:CN=zuul.example.org``."""
    NonEmptyStr(value)
    try:
        parse_identity(value)
    except ValueError as e:
        raise v.Invalid(str(e)) from None
    return value


# Which fields go together, and that Zuul is named, the loader checks.
zookeeper_auth_schema = Dict({
    "username": ZooKeeperUser,
    "password": NonEmptyStr,
    "zuul": ListOf(ZooKeeperIdentity),
    "launchers": ListOf(ZooKeeperIdentity),
    "world-readable": Bool,
})

tenant_limit_schema = Dict({
    v.Required("tenant-name"): NonEmptyStr,
    "max-servers": Int(0, NEGATIVE_LIMIT),
    "max-cores": Int(0, NEGATIVE_LIMIT),
    "max-ram": Int(0, NEGATIVE_LIMIT),
    "max-volumes": Int(0, NEGATIVE_LIMIT),
    "max-volume-gb": Int(0, NEGATIVE_LIMIT),
    # Upstream accepts arbitrary extra resource limits as integers.
    Str: Int(0, NEGATIVE_LIMIT),
})

# Upstream's top-level diskimages entry (nodepool-builder's schema).  The
# launcher reads name, parent, abstract, username, python-path and
# shell-type; the rest is the builder's, accepted quietly.
diskimage_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "abstract": Bool,
    "parent": NonEmptyStr,
    "dib-cmd": Str,
    "pause": Bool,
    "elements": ListOf(Str),
    "formats": ListOf(Str),
    "keep-formats": ListOf(Str),
    "delete-after-upload": Bool,
    "release": v.Any(Str, Int(), msg="expected a string or an integer"),
    "rebuild-age": Int(),
    "build-timeout": Int(),
    "env-vars": v.Schema({Str: Str}),
    "username": NonEmptyStr,
    "python-path": NonEmptyStr,
    "shell-type": NonEmptyStr,
    "metadata": Mapping,
})

top_level_schema = Dict({
    "zookeeper-servers": ListOf(zookeeper_server_schema),
    "zookeeper-tls": zookeeper_tls_schema,
    "zookeeper-timeout": Number(positive=True),
    "zookeeper-auth": zookeeper_auth_schema,
    "webapp": webapp_schema,
    "labels": ListOf(label_schema),
    "max-hold-age": Int(0),
    "tenant-resource-limits": ListOf(tenant_limit_schema),
    # Each provider is checked by its driver's schema in the loader.
    "providers": ListOf(Mapping),
    "diskimages": ListOf(diskimage_schema),
    # Only upstream's builder uses these; accepted quietly.
    "elements-dir": Str,
    "images-dir": Str,
    "build-log-dir": Str,
    "build-log-retention": Int(),
})

# Upstream's other drivers, recognised so their providers are reported as
# "not served" rather than as unknown drivers.
OTHER_DRIVERS = ("aws", "azure", "gce", "ibmvpc", "kubernetes", "openshift",
                 "openshiftpods", "metastatic", "fake", "test")


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
