"""The JSON records stored in ZooKeeper, as dataclasses.

Each record reads every key that Zuul 14.3.0 or upstream Nodepool 11 writes,
applies upstream's defaults for missing keys, and writes back every key it
read: the ones it knows, plus any others (``extra``), so data a newer peer
added survives our rewrite.  ``requestor_data`` is never looked into.

Parsing is strict about what the launcher acts on (``state`` must be a known
state, lists must be lists of strings, numbers finite, the fields the
launcher and the CLI read of the types upstream writes) and raises
``MalformedRecord`` naming the znode path for anything else; no other
exception escapes a parser, whatever the bytes.  Callers log and skip such
records.  Pure: no I/O here.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from nodepool.zk import ids

# Request states (doc/protocol.rst, "Node requests").
REQUESTED = "requested"
PENDING = "pending"
FULFILLED = "fulfilled"
FAILED = "failed"
REQUEST_STATES = frozenset({REQUESTED, PENDING, FULFILLED, FAILED})

# Node states (doc/protocol.rst, "Nodes: States").
INIT = "init"
BUILDING = "building"
TESTING = "testing"
READY = "ready"
IN_USE = "in-use"
USED = "used"
HOLD = "hold"
DELETING = "deleting"
NODE_FAILED = "failed"
ABORTED = "aborted"
DELETED = "deleted"
NODE_STATES = frozenset({INIT, BUILDING, TESTING, READY, IN_USE, USED, HOLD,
                         DELETING, NODE_FAILED, ABORTED, DELETED})

MIN_READY_REQUESTOR = "NodePool:min-ready"

# Zuul's Node.updateFromDict does setattr() for every top-level key, so a key
# named like one of its internal attributes would corrupt Zuul's object.
# We never write these, even when we found them in the data.
ZUUL_NODE_RESERVED_KEYS = frozenset({
    "lock", "label", "name", "aliases", "stat", "source_context", "start_mark",
    "kubernetes_connection", "reuse",
})


class MalformedRecord(ValueError):
    """A znode's content cannot be used; ``path`` says which znode."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def decode_json(path: str, data: bytes | None) -> dict:
    """The znode's JSON object; MalformedRecord for anything else."""
    if not data:
        raise MalformedRecord(path, "empty znode")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant,
                           parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MalformedRecord(path, f"invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise MalformedRecord(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and which
    # no peer writes; a time or limit of NaN would poison every comparison.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


@contextlib.contextmanager
def _reading(path: str):
    """Any failure while reading a record becomes ``MalformedRecord``: data
    written by hand or by another tool may hold anything."""
    try:
        yield
    except MalformedRecord:
        raise
    except Exception as e:  # noqa: BLE001 - junk data, reported with its path
        raise MalformedRecord(path, f"unreadable: {type(e).__name__}: {e}"[:300]) from None


def encode_json(d: Mapping[str, Any], sort_keys: bool = False) -> bytes:
    return json.dumps(d, sort_keys=sort_keys).encode("utf-8")


# -- small validators -------------------------------------------------------

def _state(path: str, d: dict, valid: frozenset[str]) -> str:
    if "state" not in d:
        raise MalformedRecord(path, "missing key 'state'")
    state = d["state"]
    if not isinstance(state, str) or state not in valid:
        raise MalformedRecord(path, f"unknown state {state!r}")
    return state


def _str_list(path: str, d: Mapping[str, Any], key: str) -> list[str]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRecord(path, f"{key!r} must be a list of strings, got {value!r}")
    return list(value)


def _opt_str(path: str, d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedRecord(path, f"{key!r} must be a string or null, got {value!r}")
    return value


def _opt_number(path: str, d: dict, key: str) -> float | None:
    value = d.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise MalformedRecord(path, f"{key!r} must be a number or null, got {value!r:.60}")
    return value


def _opt_mapping(path: str, d: dict, key: str, default: Any = None) -> dict | None:
    value = d.get(key, default)
    if value is not None and not isinstance(value, dict):
        raise MalformedRecord(path, f"{key!r} must be an object or null, got {value!r:.60}")
    return value


def _opt_int(path: str, d: dict, key: str) -> int | None:
    value = d.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise MalformedRecord(path, f"{key!r} must be an integer or null, got {value!r:.60}")
    return value


def _extra(d: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


# -- node requests ------------------------------------------------------------

@dataclass
class NodeRequest:
    """``/nodepool/requests/<id>`` (doc/protocol.rst, "Node requests: Record")."""

    id: str | None = None
    state: str = REQUESTED
    state_time: float | None = None
    node_types: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    declined_by: list[str] = field(default_factory=list)
    reuse: bool = True
    requestor: str | None = None
    requestor_data: Any = None
    provider: str | None = None
    relative_priority: int = 0
    event_id: str | None = None
    created_time: float | None = None
    tenant_name: str | None = None
    # Keys we do not know, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)
    # ZooKeeper metadata (not serialised).
    version: int | None = field(default=None, compare=False)
    ephemeral_owner: int = field(default=0, compare=False)

    KEYS = frozenset({"state", "state_time", "node_types", "nodes", "declined_by",
                      "reuse", "requestor", "requestor_data", "provider",
                      "relative_priority", "event_id", "created_time", "tenant_name"})

    @property
    def priority(self) -> tuple[str, int, str]:
        """Sort key: lower is served first."""
        return ids.request_sort_key(self.id or "", self.relative_priority)

    @property
    def is_min_ready(self) -> bool:
        return self.requestor == MIN_READY_REQUESTOR

    def set_state(self, state: str, now: float | None = None) -> None:
        if state not in REQUEST_STATES:
            raise ValueError(f"unknown request state {state!r}")
        self.state = state
        self.state_time = time.time() if now is None else now

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.extra.items() if k not in self.KEYS}
        d.update({
            "state": self.state,
            "state_time": self.state_time,
            "declined_by": list(self.declined_by),
            "node_types": list(self.node_types),
            "nodes": list(self.nodes),
            "reuse": self.reuse,
            "requestor": self.requestor,
            "requestor_data": self.requestor_data,
            "provider": self.provider,
            "relative_priority": self.relative_priority,
            "event_id": self.event_id,
            "created_time": self.created_time,
            "tenant_name": self.tenant_name,
        })
        return d

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], request_id: str | None = None,
                  path: str | None = None) -> "NodeRequest":
        path = path or f"request {request_id}"
        with _reading(path):
            return cls._from_dict(d, request_id, path)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], request_id: str | None,
                   path: str) -> "NodeRequest":
        if not isinstance(d, Mapping):
            raise MalformedRecord(path, "expected a JSON object")
        d = dict(d)
        if request_id is not None and not ids.is_request_id(request_id):
            raise MalformedRecord(path, "name is not a request id (NNN-NNNNNNNNNN)")
        reuse = d.get("reuse", True)
        if not isinstance(reuse, bool):
            raise MalformedRecord(path, f"'reuse' must be true or false, got {reuse!r}")
        rel = d.get("relative_priority", 0)
        if rel is None:
            rel = 0
        if isinstance(rel, bool) or not isinstance(rel, int):
            raise MalformedRecord(path, f"'relative_priority' must be an integer, got {rel!r}")
        return cls(
            id=request_id,
            state=_state(path, d, REQUEST_STATES),
            state_time=_opt_number(path, d, "state_time"),
            node_types=_str_list(path, d, "node_types"),
            nodes=_str_list(path, d, "nodes"),
            declined_by=_str_list(path, d, "declined_by"),
            reuse=reuse,
            requestor=_opt_str(path, d, "requestor"),
            requestor_data=d.get("requestor_data"),
            provider=_opt_str(path, d, "provider"),
            relative_priority=rel,
            event_id=_opt_str(path, d, "event_id"),
            created_time=_opt_number(path, d, "created_time"),
            tenant_name=_opt_str(path, d, "tenant_name"),
            extra=_extra(d, cls.KEYS),
        )

    @classmethod
    def from_json(cls, data: bytes | None, request_id: str, path: str,
                  version: int | None = None, ephemeral_owner: int = 0) -> "NodeRequest":
        r = cls.from_dict(decode_json(path, data), request_id, path)
        r.version = version
        r.ephemeral_owner = ephemeral_owner
        return r


# -- nodes ----------------------------------------------------------------------

def _as_list(value: Any) -> Any:
    # Older data holds a plain string label.
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


def _hold_expiration(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        # Upstream's rule: an unusable value means "no expiration".
        return 0


@dataclass
class Node:
    """``/nodepool/nodes/<id>`` (doc/protocol.rst, "Nodes: Record")."""

    id: str | None = None
    state: str = INIT
    state_time: float | None = None
    created_time: float | None = None
    type: list[str] = field(default_factory=list)
    provider: str | None = None
    pool: str | None = None
    cloud: str | None = None
    region: str | None = None
    az: str | None = None
    host_id: str | None = None
    launcher: str | None = None
    allocated_to: str | None = None
    interface_ip: str | None = None
    public_ipv4: str | None = None
    private_ipv4: str | None = None
    public_ipv6: str | None = None
    connection_type: str | None = None
    connection_port: Any = 22  # int, or a dict for kubectl/namespace/project
    # A new node has none (upstream's): Zuul's executor then uses its own
    # default.  A record without the key still reads as "zuul" (from_dict).
    username: str | None = None
    python_path: str | None = None
    shell_type: str | None = None
    host_keys: list[str] = field(default_factory=list)
    image_id: str | None = None
    external_id: str | None = None
    hostname: str | None = None
    comment: str | None = None
    user_data: Any = None
    hold_job: str | None = None
    hold_expiration: int | None = None
    resources: dict | None = None
    slot: int | None = None
    attributes: dict | None = None
    tenant_name: str | None = None
    requestor: str | None = None
    driver_data: Any = None
    node_properties: dict | None = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int | None = field(default=None, compare=False)

    # ssh_port is written (a legacy copy of connection_port) but not kept.
    KEYS = frozenset({
        "state", "state_time", "created_time", "type", "provider", "pool", "cloud",
        "region", "az", "host_id", "launcher", "allocated_to", "interface_ip",
        "public_ipv4", "private_ipv4", "public_ipv6", "connection_type",
        "connection_port", "ssh_port", "username", "python_path", "shell_type",
        "host_keys", "image_id", "external_id", "hostname", "comment", "user_data",
        "hold_job", "hold_expiration", "resources", "slot", "attributes",
        "tenant_name", "requestor", "driver_data", "node_properties"})

    def set_state(self, state: str, now: float | None = None) -> None:
        if state not in NODE_STATES:
            raise ValueError(f"unknown node state {state!r}")
        self.state = state
        self.state_time = time.time() if now is None else now

    def has_label(self, label: str) -> bool:
        return label in self.type

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in self.extra.items():
            if k in self.KEYS or k in ZUUL_NODE_RESERVED_KEYS or k.startswith("_"):
                continue
            d[k] = v
        if "id" in d:
            # Zuul writes the id it used; keep it, and keep it right.
            d["id"] = self.id
        d.update({
            "state": self.state,
            "state_time": self.state_time,
            "cloud": self.cloud,
            "provider": self.provider,
            "pool": self.pool,
            "type": list(self.type),
            "allocated_to": self.allocated_to,
            "az": self.az,
            "region": self.region,
            "public_ipv4": self.public_ipv4,
            "private_ipv4": self.private_ipv4,
            "public_ipv6": self.public_ipv6,
            "host_id": self.host_id,
            "interface_ip": self.interface_ip,
            "connection_port": self.connection_port,
            "ssh_port": self.connection_port,
            "image_id": self.image_id,
            "launcher": self.launcher,
            "created_time": self.created_time,
            "external_id": self.external_id,
            "hostname": self.hostname,
            "comment": self.comment,
            "user_data": self.user_data,
            "hold_job": self.hold_job,
            "host_keys": list(self.host_keys),
            "username": self.username,
            "connection_type": self.connection_type,
            "shell_type": self.shell_type,
            "hold_expiration": self.hold_expiration,
            "resources": self.resources,
            "slot": self.slot,
            "attributes": self.attributes,
            "python_path": self.python_path,
            "tenant_name": self.tenant_name,
            "driver_data": self.driver_data,
            "requestor": self.requestor,
            "node_properties": self.node_properties,
        })
        return d

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], node_id: str | None = None,
                  path: str | None = None) -> "Node":
        path = path or f"node {node_id}"
        with _reading(path):
            return cls._from_dict(d, node_id, path)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], node_id: str | None, path: str) -> "Node":
        if not isinstance(d, Mapping):
            raise MalformedRecord(path, "expected a JSON object")
        d = dict(d)
        labels = _as_list(d.get("type"))
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise MalformedRecord(
                path, f"'type' must be a label or a list of labels, got {labels!r}")
        host_keys = d.get("host_keys")
        if host_keys is None:
            host_keys = []
        if not isinstance(host_keys, list) or not all(isinstance(k, str) for k in host_keys):
            raise MalformedRecord(path, f"'host_keys' must be a list of strings, "
                                        f"got {host_keys!r:.60}")
        port = d.get("connection_port", d.get("ssh_port", 22))
        return cls(
            id=node_id,
            state=_state(path, d, NODE_STATES),
            state_time=_opt_number(path, d, "state_time"),
            created_time=_opt_number(path, d, "created_time"),
            type=labels,
            provider=_opt_str(path, d, "provider"),
            pool=_opt_str(path, d, "pool"),
            cloud=_opt_str(path, d, "cloud"),
            region=_opt_str(path, d, "region"),
            az=_opt_str(path, d, "az"),
            host_id=_opt_str(path, d, "host_id"),
            launcher=_opt_str(path, d, "launcher"),
            allocated_to=_opt_str(path, d, "allocated_to"),
            interface_ip=_opt_str(path, d, "interface_ip"),
            public_ipv4=_opt_str(path, d, "public_ipv4"),
            private_ipv4=_opt_str(path, d, "private_ipv4"),
            public_ipv6=_opt_str(path, d, "public_ipv6"),
            connection_type=_opt_str(path, d, "connection_type"),
            connection_port=port,
            username=_opt_str(path, {"username": "zuul", **d}, "username"),
            python_path=_opt_str(path, d, "python_path"),
            shell_type=_opt_str(path, d, "shell_type"),
            host_keys=list(host_keys),
            image_id=_opt_str(path, d, "image_id"),
            external_id=_opt_str(path, d, "external_id"),
            hostname=_opt_str(path, d, "hostname"),
            comment=_opt_str(path, d, "comment"),
            user_data=d.get("user_data"),
            hold_job=_opt_str(path, d, "hold_job"),
            hold_expiration=_hold_expiration(d.get("hold_expiration")),
            resources=_opt_mapping(path, d, "resources"),
            slot=_opt_int(path, d, "slot"),
            attributes=_opt_mapping(path, d, "attributes"),
            tenant_name=_opt_str(path, d, "tenant_name"),
            requestor=_opt_str(path, d, "requestor"),
            driver_data=d.get("driver_data"),
            node_properties=_opt_mapping(path, d, "node_properties"),
            extra=_extra(d, cls.KEYS),
        )

    @classmethod
    def from_json(cls, data: bytes | None, node_id: str, path: str,
                  version: int | None = None) -> "Node":
        n = cls.from_dict(decode_json(path, data), node_id, path)
        n.version = version
        return n


# -- components ----------------------------------------------------------------------

COMPONENT_RUNNING = "running"
COMPONENT_STOPPED = "stopped"
MODEL_API = 0
DEFAULT_POOL_PRIORITY = 100


@dataclass
class LauncherComponent:
    """``/nodepool/components/launcher/<hostname><seq>``: the base keys only."""

    hostname: str
    state: str = COMPONENT_RUNNING
    version: str | None = None
    model_api: int = MODEL_API
    extra: dict[str, Any] = field(default_factory=dict)
    # Where it is registered, and the znode version (not serialised).
    path: str | None = field(default=None, compare=False)
    zversion: int | None = field(default=None, compare=False)

    kind = "launcher"
    KEYS = frozenset({"hostname", "state", "kind", "version", "model_api"})

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.extra.items() if k not in self.KEYS}
        d.update({"hostname": self.hostname, "state": self.state, "kind": self.kind,
                  "version": self.version, "model_api": self.model_api})
        return d

    def to_json(self) -> bytes:
        # Upstream writes components with sorted keys.
        return encode_json(self.to_dict(), sort_keys=True)

    @classmethod
    def _base(cls, path: str, d: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(d, Mapping):
            raise MalformedRecord(path, "expected a JSON object")
        hostname = d.get("hostname")
        if not isinstance(hostname, str):
            raise MalformedRecord(path, f"'hostname' must be a string, got {hostname!r}")
        return dict(hostname=hostname, state=d.get("state", COMPONENT_STOPPED),
                    version=d.get("version"), model_api=d.get("model_api", MODEL_API))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> "LauncherComponent":
        path = path or f"{cls.kind} component"
        with _reading(path):
            return cls._from_dict(d, path)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], path: str) -> "LauncherComponent":
        return cls(**cls._base(path, d), extra=_extra(d, cls.KEYS))


@dataclass
class PoolComponent(LauncherComponent):
    """``/nodepool/components/pool/<hostname><seq>``: one per provider-pool.

    ``id`` is what goes into a request's ``declined_by``.
    """

    id: str = ""
    name: str | None = None
    provider_name: str | None = None
    supported_labels: list[str] = field(default_factory=list)
    priority: float = DEFAULT_POOL_PRIORITY  # upstream writes an int; a float is read
    paused: bool = False

    kind = "pool"
    KEYS = LauncherComponent.KEYS | {"id", "name", "provider_name", "supported_labels",
                                     "priority", "paused"}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update({"id": self.id, "name": self.name, "provider_name": self.provider_name,
                  "supported_labels": list(self.supported_labels),
                  "priority": self.priority, "paused": self.paused})
        return d

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], path: str) -> "PoolComponent":
        base = cls._base(path, d)
        pool_id = d.get("id")
        if not isinstance(pool_id, str) or not pool_id:
            # Without an id the pool can neither decline nor be deferred to.
            raise MalformedRecord(path, f"pool component without a string 'id': {pool_id!r}")
        priority = d.get("priority", DEFAULT_POOL_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise MalformedRecord(path, f"'priority' must be a number, got {priority!r}")
        paused = d.get("paused", False)
        if not isinstance(paused, bool):
            raise MalformedRecord(path, f"'paused' must be true or false, got {paused!r}")
        return cls(**base, id=pool_id, name=_opt_str(path, d, "name"),
                   provider_name=_opt_str(path, d, "provider_name"),
                   supported_labels=_str_list(path, d, "supported_labels"),
                   priority=priority, paused=paused, extra=_extra(d, cls.KEYS))


def component_from_json(kind: str, data: bytes | None, path: str,
                        zversion: int | None = None) -> LauncherComponent:
    cls = PoolComponent if kind == "pool" else LauncherComponent
    d = decode_json(path, data)
    comp = cls.from_dict(d, path)
    comp.path = path
    comp.zversion = zversion
    return comp

