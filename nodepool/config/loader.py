"""Loading nodepool.yaml (and the clouds.yaml its providers use).

``validate`` runs every check and returns every problem, so
``nodepool config-validate`` can print them all at once; ``load_config``
raises ``ConfigError`` when any of them is an error.  Neither ever lets a
traceback reach the operator for bad input.

Each entry of ``providers:`` belongs to a driver, which checks and builds
it.  The configuration sits below the drivers (they read its types), so the
caller passes the drivers in: ``drivers=nodepool.driver.registry.drivers()``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable, Mapping as MappingT, Protocol

import yaml

from nodepool.config import clouds as clouds_policy
from nodepool.config import schema
from nodepool.config.diskimages import build_diskimages
from nodepool.config.errors import ConfigError, ConfigProblem, Problems, check_unique
from nodepool.config.model import (AddressPolicy, CloudSettings, Label, NodepoolConfig,
                                   TenantLimits, WebApp)
from nodepool.config.zookeeper import (DEFAULT_SESSION_TIMEOUT, ZooKeeperAuth,
                                       ZooKeeperServer, ZooKeeperSettings, ZooKeeperTLS,
                                       parse_identity)

DEFAULT_CONFIG = "/etc/nodepool/nodepool.yaml"
# Upstream's documented default ZooKeeper port is the TLS one.
DEFAULT_ZK_PORT = 2281


class ProviderParser(Protocol):
    """What the loader uses of a driver: how it checks and builds its
    entries of ``providers:``.  ``nodepool.driver.registry.Driver`` is one
    and documents each member."""

    @property
    def schema(self) -> Callable[[Any], Any]: ...

    @property
    def build(self) -> Callable[..., Any]:
        """``(index, entry, labels, problems, cloud_settings)``, and
        ``diskimages=`` when the parser's ``uses_diskimages`` is true."""

    @property
    def warn(self) -> Callable[[int, dict, Problems], None] | None: ...

    @property
    def uses_clouds_yaml(self) -> bool: ...


def substitute_env(text: str, env: MappingT[str, str]) -> str:
    """Upstream's ``%(NODEPOOL_NAME)`` substitution, for drop-in compatibility."""
    for key, value in env.items():
        if key.startswith("NODEPOOL_"):
            text = text.replace(f"%({key})", value)
    return text


def read_yaml(path: str, problems: Problems, env: MappingT[str, str]) -> Any:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        problems.error("", f"cannot read the file: {e.strerror}")
        return None
    try:
        return yaml.safe_load(substitute_env(text, env))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.error(where, f"not valid YAML: {getattr(e, 'problem', None) or e}")
        return None
    except (ValueError, RecursionError) as e:  # e.g. absurd nesting
        problems.error("", f"not valid YAML: {e}")
        return None


def _warn_upstream_off_values(data: dict, problems: Problems) -> None:
    """Values upstream accepts and treats as "off" or as the least it does;
    they work the same here, and the warning says what to write instead."""
    for j, lab in enumerate(schema.as_list(data.get("labels"))):
        if not isinstance(lab, dict):
            continue
        for key in ("min-ready", "max-ready-age"):
            if schema.is_int(lab.get(key)) and lab[key] < 0:
                problems.warning(["labels", j, key],
                                 f"{lab[key]} is treated as 0 (off), as upstream Nodepool "
                                 "does; write 0 or leave the key out")


def _valid_items(items: Any, item_schema) -> list[dict]:
    """The list items that pass their schema (the others are reported already)."""
    if not isinstance(items, list):
        return []
    return [it for it in items if not schema.voluptuous_problems(item_schema, it)]


def _build_zookeeper(data: dict, problems: Problems) -> ZooKeeperSettings | None:
    servers_cfg = data.get("zookeeper-servers")
    if not servers_cfg:
        problems.error("zookeeper-servers", "is required: list at least one server, e.g. "
                                            "[{host: zk.example.org, port: 2281}]")
        return None
    servers = tuple(ZooKeeperServer(s["host"], s.get("port", DEFAULT_ZK_PORT), s.get("chroot"))
                    for s in servers_cfg)
    roots = {s.chroot for s in servers if s.chroot}
    if len(roots) > 1:
        problems.error("zookeeper-servers", f"servers name different chroots "
                                            f"({', '.join(sorted(roots))}); use one")
        return None
    tls = None
    tls_cfg = data.get("zookeeper-tls")
    if tls_cfg:
        tls = ZooKeeperTLS(ca=tls_cfg["ca"], cert=tls_cfg["cert"], key=tls_cfg["key"])
        for key in ("ca", "cert", "key"):
            if not os.path.isfile(tls_cfg[key]):
                problems.error(["zookeeper-tls", key], f"file {tls_cfg[key]!r} does not exist "
                                                       "or is not a file")
    timeout = float(data.get("zookeeper-timeout", DEFAULT_SESSION_TIMEOUT))
    auth = _build_zookeeper_auth(data.get("zookeeper-auth"), tls, problems)
    return ZooKeeperSettings(servers, tls, timeout, auth)


def _build_zookeeper_auth(cfg: dict | None, tls: ZooKeeperTLS | None,
                          problems: Problems) -> ZooKeeperAuth | None:
    """``zookeeper-auth`` (schema-checked already): what goes together."""
    if cfg is None:
        return None
    key = "zookeeper-auth"
    username, password = cfg.get("username"), cfg.get("password")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        problems.error([key, missing], "is required with "
                       f"{'username' if missing == 'password' else 'password'}: the "
                       "launcher authenticates with both (digest), or with neither and "
                       "its TLS client certificate")
    elif username is None and tls is None:
        problems.error(key, "gives this launcher no identity: add username and password "
                            "(digest), or zookeeper-tls with a client certificate")
    if not cfg.get("zuul"):
        problems.error([key, "zuul"], "is required: list the identities Zuul connects "
                       "with, e.g. ['x509:CN=zuul.example.org'] (the subject of Zuul's "
                       "TLS client certificate), or Zuul cannot submit requests")
    return ZooKeeperAuth(
        username=username, password=password,
        zuul=tuple(parse_identity(i) for i in cfg.get("zuul") or ()),
        launchers=tuple(parse_identity(i) for i in cfg.get("launchers") or ()),
        world_readable=cfg.get("world-readable", True))


def _names(drivers: MappingT[str, Any]) -> str:
    return ", ".join(repr(n) for n in sorted(drivers))


def _check_clouds(providers: list[tuple[int, dict]], clouds_path: str | None,
                  problems: Problems) -> tuple[list[ConfigProblem], dict[str, CloudSettings]]:
    """Apply the clouds.yaml policy to every cloud a provider uses."""
    if not providers:
        return [], {}
    path = clouds_policy.find_clouds_file(clouds_path)
    if path is None:
        searched = ", ".join(clouds_policy.search_path())
        problems.error(["providers", providers[0][0], "cloud"],
                       f"no clouds.yaml found (searched: {searched}); pass --clouds PATH or "
                       "set OS_CLIENT_CONFIG_FILE")
        return [], {}
    cf = clouds_policy.load_clouds_file(path)
    settings: dict[str, CloudSettings] = {}
    if cf.problems.has_errors and not cf.clouds:
        return cf.problems.items, settings
    clouds_policy.check_cache(cf)
    checked: set[str] = set()
    policies: dict[str, AddressPolicy] = {}
    for i, prov in providers:
        name = prov["cloud"]
        if name not in cf.clouds:
            known = ", ".join(sorted(map(str, cf.clouds))) or "none"
            problems.error(["providers", i, "cloud"],
                           f"cloud {name!r} is not in {path} (clouds defined there: {known})")
            continue
        if name not in checked:
            checked.add(name)
            clouds_policy.check_cloud(cf, name)
            policies[name] = clouds_policy.address_policy_of(cf, name)
        cloud = cf.clouds[name]
        if not isinstance(cloud, dict):
            cf.problems.error(["clouds", name], "expected a mapping of settings")
            continue
        timeout = clouds_policy.api_timeout_of(cloud)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
            region = cloud.get("region_name") or cloud.get("region-name")
            settings[name] = CloudSettings(name, float(timeout),
                                           region if isinstance(region, str) else None, path,
                                           addresses=policies[name],
                                           fingerprint=_fingerprint(cloud))
    return cf.problems.items, settings


def _fingerprint(cloud: dict) -> str:
    text = json.dumps(cloud, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validate(path: str, clouds_path: str | None = None, secure_path: str | None = None,
             env: MappingT[str, str] | None = None,
             check_clouds: bool = True, *, drivers: MappingT[str, ProviderParser]
             ) -> tuple[NodepoolConfig | None, list[ConfigProblem]]:
    """Every problem in nodepool.yaml (and clouds.yaml); the config if usable.

    ``drivers``: driver name (a provider's ``driver:``) -> its parser; the
    drivers served, ``nodepool.driver.registry.drivers()``."""
    env = os.environ if env is None else env
    problems = Problems(path)
    data = read_yaml(path, problems, env)
    if problems.has_errors:
        return None, problems.items
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.error("", f"expected a mapping of settings at the top, got "
                           f"{schema.type_name(data)}")
        return None, problems.items
    if secure_path:
        secure_problems = Problems(secure_path)
        secure = read_yaml(secure_path, secure_problems, env)
        problems.items.extend(secure_problems.items)
        if isinstance(secure, dict):
            # Upstream's secure file carries the ZooKeeper connection details.
            for key in ("zookeeper-servers", "zookeeper-tls", "zookeeper-auth"):
                if key in secure:
                    data[key] = secure[key]
        elif secure is not None:
            secure_problems.error("", "expected a mapping")

    for p, msg in schema.voluptuous_problems(schema.top_level_schema, data):
        problems.error(p, msg)
    _warn_upstream_off_values(data, problems)
    diskimages = build_diskimages(_valid_items(data.get("diskimages"), schema.diskimage_schema),
                                  problems)

    providers_cfg = data.get("providers") if isinstance(data.get("providers"), list) else []
    entries: list[tuple[int, dict, ProviderParser]] = []
    broken: set[int] = set()  # providers with schema errors: checked best-effort
    for i, prov in enumerate(providers_cfg):
        if not isinstance(prov, dict):
            continue
        name = prov.get("driver", "openstack")
        driver = drivers.get(name) if isinstance(name, str) else None
        if driver is not None:
            found = schema.voluptuous_problems(driver.schema, prov, ["providers", i])
            for p, msg in found:
                problems.error(p, msg)
            if driver.warn is not None:
                driver.warn(i, prov, problems)
            entries.append((i, prov, driver))
            if found:
                broken.add(i)
        elif name in schema.OTHER_DRIVERS:
            problems.warning(["providers", i, "driver"],
                             f"driver {name!r} is upstream Nodepool's; this launcher serves "
                             f"only {_names(drivers)} providers, so provider "
                             f"{prov.get('name', '?')!r} is ignored")
        else:
            problems.error(["providers", i, "driver"],
                           f"unknown driver {name!r}; this launcher serves {_names(drivers)}")

    structure_ok = not problems.has_errors
    labels_cfg = _valid_items(data.get("labels"), schema.label_schema)
    check_unique(labels_cfg, "name", ["labels"], problems, "label")
    labels = {lab["name"]: Label(lab["name"], lab.get("min-ready", 0),
                                 lab.get("max-ready-age", 0)) for lab in labels_cfg}
    check_unique(providers_cfg, "name", ["providers"], problems, "provider")
    tenants_cfg = _valid_items(data.get("tenant-resource-limits"), schema.tenant_limit_schema)
    check_unique(tenants_cfg, "tenant-name", ["tenant-resource-limits"], problems, "tenant")
    tenant_limits = {}
    tracked = {"max-servers": "instances", "max-cores": "cores", "max-ram": "ram",
               "max-volumes": "volumes", "max-volume-gb": "volume-gb"}
    tenants_raw = data.get("tenant-resource-limits")
    # Not a list: the schema has reported it; nothing to read here.
    for i, t in enumerate(tenants_raw if isinstance(tenants_raw, list) else []):
        if t not in tenants_cfg:
            continue
        limits = {res: t.get(key, math.inf) for key, res in tracked.items()}
        for key in t:
            if key != "tenant-name" and key not in tracked:
                # Upstream accepts limits on any resource a driver reports;
                # OpenStack servers here only use the tracked ones.
                problems.warning(["tenant-resource-limits", i, key],
                                 "this launcher does not track that resource; the limit "
                                 f"is ignored (tracked: {', '.join(tracked)})")
        tenant_limits[t["tenant-name"]] = TenantLimits(t["tenant-name"], limits)

    zk = None
    if structure_ok:
        zk = _build_zookeeper(data, problems)
    cloud_problems: list[ConfigProblem] = []
    cloud_settings: dict[str, CloudSettings] = {}
    if check_clouds:
        usable = [(i, p) for i, p, d in entries
                  if d.uses_clouds_yaml and isinstance(p.get("cloud"), str)]
        cloud_problems, cloud_settings = _check_clouds(usable, clouds_path, problems)
    providers = {}
    for i, prov, driver in entries:
        try:
            cloud = prov.get("cloud") if driver.uses_clouds_yaml else None
            extra = {"diskimages": diskimages} if getattr(driver, "uses_diskimages",
                                                          False) else {}
            built = driver.build(i, prov, labels, problems,
                                 cloud_settings.get(cloud) if isinstance(cloud, str) else None,
                                 **extra)
        except (KeyError, TypeError, AttributeError, ValueError):
            # Only a provider whose schema errors are already reported may
            # trip the builder; anything else is our bug and must surface.
            if i not in broken:
                raise
            continue
        if i not in broken:
            providers[built.name] = built
    offered = {name for p in providers.values() for pool in p.pools.values()
               for name in pool.labels}
    for j, lab in enumerate(labels_cfg if structure_ok else []):
        if lab.get("min-ready", 0) > 0 and lab["name"] not in offered:
            problems.warning(["labels", j, "min-ready"],
                             f"label {lab['name']!r} wants {lab['min-ready']} ready nodes "
                             "but no pool of this launcher offers it")
    all_problems = problems.items + cloud_problems
    if any(p.severity == "error" for p in all_problems):
        return None, all_problems
    webapp_cfg = data.get("webapp") or {}
    config = NodepoolConfig(
        config_file=path, zookeeper=zk,
        webapp=WebApp(webapp_cfg.get("port", 8005),
                      webapp_cfg.get("listen_address", "127.0.0.1")),
        labels=labels, providers=providers, tenant_limits=tenant_limits,
        max_hold_age=data.get("max-hold-age") or None,
        clouds_file=next((c.clouds_file for c in cloud_settings.values()), None),
        diskimages=diskimages)
    return config, all_problems


def load_config(path: str, clouds_path: str | None = None, secure_path: str | None = None,
                env: MappingT[str, str] | None = None, *,
                drivers: MappingT[str, ProviderParser]
                ) -> tuple[NodepoolConfig, list[ConfigProblem]]:
    """The config and its warnings; ``ConfigError`` listing everything if invalid.

    ``drivers`` as for ``validate``."""
    config, problems = validate(path, clouds_path, secure_path, env, drivers=drivers)
    if config is None:
        raise ConfigError(problems)
    return config, problems
