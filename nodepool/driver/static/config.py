"""The static driver's part of nodepool.yaml, with upstream's keys.

::

    providers:
      - name: lab
        driver: static
        pools:
          - name: main
            nodes:
              - name: build1.example.org      # hostname or address
                labels: [fedora-hw]           # or "fedora-hw other" (space separated)
                username: zuul
                connection-type: ssh
                connection-port: 22
                host-key-checking: true
                host-key: "ssh-ed25519 AAAA..."  # or a list; none: collected
                python-path: auto
                shell-type: null
                max-parallel-jobs: 1
                timeout: 5                    # seconds a check of the host may take

Each host offers ``max-parallel-jobs`` slots; a pool's capacity is the sum
of its hosts' slots, so ``max_servers`` of its model is that sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import voluptuous as v

from nodepool.config.errors import Problems, check_unique
from nodepool.config.model import DEFAULT_CONNECTION_PORTS, Label, pool_priority
from nodepool.config.schema import Bool, Dict, Int, ListOf, Mapping, NonEmptyStr, Port


def _labels(value: Any) -> list[str]:
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        names = list(value)
    else:
        raise v.Invalid("expected a label name, a space separated string of names or a "
                        "list of names")
    if not names:
        raise v.Invalid("name at least one label")
    return names


def _host_keys(value: Any) -> list[str]:
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, list) or not all(isinstance(k, str) and k.strip() for k in keys):
        raise v.Invalid("expected a host key such as 'ssh-ed25519 AAAA...', or a list of them")
    return keys


static_node_schema = Dict({
    v.Required("name"): NonEmptyStr,
    v.Required("labels"): _labels,
    "username": NonEmptyStr,
    "timeout": Int(1, "a check of the host needs at least a second"),
    "host-key-checking": Bool,
    "host-key": _host_keys,
    "connection-port": Port,
    "connection-type": NonEmptyStr,
    "shell-type": NonEmptyStr,
    "max-parallel-jobs": Int(1, "a host with no slot serves nothing; remove it instead"),
    "python-path": NonEmptyStr,
})

static_pool_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "priority": Int(),
    # Upstream's common pool key: 0 or less disables the pool; otherwise the
    # hosts' slots are the limit.
    "max-servers": Int(),
    "node-attributes": Mapping,
    "nodes": ListOf(static_node_schema),
})

static_provider_schema = Dict({
    v.Required("name"): NonEmptyStr,
    "driver": NonEmptyStr,
    "priority": Int(),
    # Upstream's common provider key: 0 takes no requests (nothing is
    # launched here, so other values change nothing).
    "max-concurrency": Int(),
    "pools": ListOf(static_pool_schema),
})


@dataclass(frozen=True)
class StaticNode:
    name: str
    labels: tuple[str, ...]
    username: str = "zuul"
    connection_type: str = "ssh"
    connection_port: int = 22
    host_key_checking: bool = True
    host_keys: tuple[str, ...] = ()
    python_path: str = "auto"
    shell_type: str | None = None
    max_parallel_jobs: int = 1
    timeout: int = 5

    @property
    def key(self) -> tuple[str, str, int]:
        """What tells hosts apart (as upstream: name, user and port)."""
        return (self.name, self.username, self.connection_port)


@dataclass(frozen=True)
class StaticPool:
    name: str
    provider_name: str
    nodes: tuple[StaticNode, ...] = ()
    priority: int | None = None
    node_attributes: dict | None = None
    # Every pool model carries these; a static pool has no zones.
    availability_zones: tuple[str, ...] = ()
    # The pool's max-servers key (upstream's); only 0 or less has an effect.
    max_servers_setting: float = math.inf

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(label for node in self.nodes for label in node.labels)

    @property
    def max_servers(self) -> float:
        """Capacity in slots: the sum of the hosts' max-parallel-jobs; a
        max-servers of 0 or less disables the pool, as upstream."""
        if self.max_servers_setting <= 0:
            return self.max_servers_setting
        return sum(node.max_parallel_jobs for node in self.nodes) or math.inf


@dataclass(frozen=True)
class StaticProviderConfig:
    name: str
    driver: str = "static"
    priority: int | None = None
    pools: dict[str, StaticPool] = field(default_factory=dict)
    max_concurrency: int = -1

    def pool_priority(self, pool: StaticPool) -> int:
        return pool_priority(pool.priority, self.priority)


def build_provider(i: int, prov: dict, labels: dict[str, Label], problems: Problems,
                   cloud_settings: Any = None) -> StaticProviderConfig:
    base = ["providers", i]
    pools_cfg = prov.get("pools", [])
    check_unique(pools_cfg, "name", base + ["pools"], problems, "pool")
    pools: dict[str, StaticPool] = {}
    for j, pool in enumerate(pools_cfg):
        ppath = base + ["pools", j]
        nodes = []
        seen: dict[tuple[str, str, int], int] = {}
        for k, node in enumerate(pool.get("nodes", [])):
            npath = ppath + ["nodes", k]
            try:
                names = _labels(node["labels"])
                keys = _host_keys(node.get("host-key", []))
            except v.Invalid as e:
                # Reported by the schema; the loader skips this provider.
                raise ValueError(str(e)) from None
            for name in names:
                if name not in labels:
                    problems.error(npath + ["labels"],
                                   f"label {name!r} is not defined in the top-level "
                                   f"'labels' list; add '- name: {name}' there")
            ctype = node.get("connection-type", "ssh")
            built = StaticNode(
                name=node["name"], labels=tuple(names),
                username=node.get("username", "zuul"), connection_type=ctype,
                connection_port=node.get("connection-port",
                                         DEFAULT_CONNECTION_PORTS.get(ctype, 22)),
                host_key_checking=node.get("host-key-checking", True),
                host_keys=tuple(keys),
                python_path=node.get("python-path", "auto"),
                shell_type=node.get("shell-type"),
                max_parallel_jobs=node.get("max-parallel-jobs", 1),
                timeout=node.get("timeout", 5))
            if built.key in seen:
                problems.error(npath, f"host {built.name} (user {built.username}, port "
                               f"{built.connection_port}) is already node {seen[built.key]} "
                               "of this pool; list each host once and raise "
                               "max-parallel-jobs for more slots")
                continue
            seen[built.key] = k
            nodes.append(built)
        pools[pool["name"]] = StaticPool(
            name=pool["name"], provider_name=prov["name"], nodes=tuple(nodes),
            priority=pool.get("priority"), node_attributes=pool.get("node-attributes"),
            max_servers_setting=pool.get("max-servers", math.inf))
    return StaticProviderConfig(name=prov["name"], priority=prov.get("priority"),
                                pools=pools, max_concurrency=prov.get("max-concurrency", -1))
