"""Loading nodepool.yaml (and the clouds.yaml its providers use).

``validate`` runs every check and returns every problem, so
``nodepool config-validate`` can print them all at once; ``load_config``
raises ``ConfigError`` when any of them is an error.  Neither ever lets a
traceback reach the operator for bad input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
from typing import Any, Mapping as MappingT

import voluptuous
import yaml

from nodepool.config import clouds as clouds_policy
from nodepool.config import schema
from nodepool.config.errors import ConfigError, ConfigProblem, Problems
from nodepool.config.model import (DEFAULT_CONNECTION_PORTS, WINDOWS_NAME_MAX,
                                   AddressPolicy, CloudImage, CloudSettings, Label,
                                   NodepoolConfig, Pool, PoolLabel, Provider,
                                   TenantLimits, WebApp)
from nodepool.requests.protocol import TEMPLATE_FIELDS as REQUEST_FIELDS
from nodepool.zk.client import (DEFAULT_SESSION_TIMEOUT, ZooKeeperServer,
                                ZooKeeperSettings, ZooKeeperTLS)

DEFAULT_CONFIG = "/etc/nodepool/nodepool.yaml"
# Upstream's documented default ZooKeeper port is the TLS one.
DEFAULT_ZK_PORT = 2281


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


def _dup_check(items: list, key: str, path: list, problems: Problems, what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue
        name = item[key]
        if name in seen:
            problems.error(path + [i, key], f"duplicate {what} {name!r} (first defined at "
                                            f"index {seen[name]}); names must be unique")
        else:
            seen[name] = i


class _Fmt:
    """Stand-in for hostname-format fields: any attribute is a string."""

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return "x"


def _check_hostname_format(fmt: str, path: list, problems: Problems) -> None:
    allowed = {"label", "provider", "node", "pool"}
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as e:
        problems.error(path, f"not a valid format string: {e}")
        return
    for f in fields:
        root = f.split(".")[0].split("[")[0]
        if root not in allowed:
            problems.error(path, f"unknown field {{{f}}}; use {{label.name}}, "
                                 "{provider.name}, {pool.name} or {node.id}")
            return
    try:
        fmt.format(label=_Fmt(), provider=_Fmt(), node=_Fmt(), pool=_Fmt())
    except (AttributeError, IndexError, KeyError, ValueError) as e:
        problems.error(path, f"cannot be formatted: {e}")


def _check_windows_names(fmt: str, provider: str, pools: dict, path: list,
                         problems: Problems) -> None:
    """Windows computer names are at most 15 characters: warn when a winrm
    label's server names would be longer (node ids have 10 digits)."""
    from nodepool.driver.openstack.servers import hostname  # pure helper

    for pool in pools.values():
        for label in pool.labels.values():
            if label.cloud_image.connection_type != "winrm":
                continue
            try:
                name = hostname(fmt, label=label.name, provider=provider, pool=pool.name,
                                node_id="0" * 10)
            except (AttributeError, IndexError, KeyError, ValueError):
                return  # reported by _check_hostname_format
            if len(name) > WINDOWS_NAME_MAX:
                problems.warning(path, f"label {label.name!r} is a Windows (winrm) label and "
                                 f"its server names are {len(name)} characters long, e.g. "
                                 f"{name!r}; Windows cuts computer names to "
                                 f"{WINDOWS_NAME_MAX}, so nodes may share one. Leave "
                                 "hostname-format out (upstream's 'np' + node id) or make it "
                                 "shorter")
                return


def _rate_of(prov: dict, key: str) -> float | None:
    """``rate`` or ``read-rate`` as seconds (a string is converted, as
    upstream does).  None when absent or 0 (upstream's "no spacing"): no
    fixed ceiling, the gate's adaptive concurrency applies.  An unusable
    value is already reported by the schema."""
    if key not in prov:
        return None
    try:
        return schema.Rate(prov[key]) or None
    except voluptuous.Invalid:
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value: Any) -> list:
    """A list from the file, or nothing (the schema reports other types)."""
    return value if isinstance(value, list) else []


def _warn_upstream_off_values(data: dict, problems: Problems) -> None:
    """Values upstream accepts and treats as "off" or as the least it does;
    they work the same here, and the warning says what to write instead."""
    for j, lab in enumerate(_as_list(data.get("labels"))):
        if not isinstance(lab, dict):
            continue
        for key in ("min-ready", "max-ready-age"):
            if _is_int(lab.get(key)) and lab[key] < 0:
                problems.warning(["labels", j, key],
                                 f"{lab[key]} is treated as 0 (off), as upstream Nodepool "
                                 "does; write 0 or leave the key out")
    for i, prov in enumerate(_as_list(data.get("providers"))):
        if not isinstance(prov, dict) or prov.get("driver", "openstack") != "openstack":
            continue
        retries = prov.get("launch-retries")
        if _is_int(retries) and retries < 1:
            problems.warning(["providers", i, "launch-retries"],
                             f"{retries} means one attempt per node, as upstream Nodepool "
                             "treats it; write 1")
        for j, pool in enumerate(_as_list(prov.get("pools"))):
            if not isinstance(pool, dict):
                continue
            value = pool.get("max-servers")
            if _is_int(value) and value < 0:
                problems.warning(["providers", i, "pools", j, "max-servers"],
                                 f"{value} disables the pool (it declines every request), "
                                 "as upstream Nodepool treats any value of 0 or less; write "
                                 "0 to disable it, or leave max-servers out for no limit")


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
    return ZooKeeperSettings(servers, tls, timeout)


def _build_cloud_image(img: dict) -> CloudImage:
    ctype = img.get("connection-type", "ssh")
    return CloudImage(
        name=img["name"], image_id=img.get("image-id"), image_name=img.get("image-name"),
        username=img.get("username"), python_path=img.get("python-path", "auto"),
        shell_type=img.get("shell-type"), connection_type=ctype,
        connection_port=img.get("connection-port", DEFAULT_CONNECTION_PORTS.get(ctype, 22)),
        config_drive=img.get("config-drive"))


# Upstream keys this launcher reads but does not act on (documented in
# doc/migration.rst); a warning keeps an operator from relying on them.
INERT_PROVIDER_KEYS = ("image-upload-timeout", "image-name-format", "post-upload-hook",
                       "nodepool-id")



def _check_request_template(template: Any) -> str | None:
    """Why a dynamic-instance-properties value cannot be formatted, or None."""
    if not isinstance(template, str):
        return f"expected a format string such as '{{request.id}}', got {template!r}"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"not a valid format string ({e}); write literal braces as {{{{ and }}}}"
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        root, _, rest = field_name.partition(".")
        attr = rest.split(".")[0].split("[")[0]
        if root != "request" or attr not in REQUEST_FIELDS:
            return (f"{{{field_name}}} is not available; use {{request.<field>}} with one of "
                    f"{', '.join(REQUEST_FIELDS)}, e.g. {{request.requestor_data[job_name]}}")
    return None


def _build_provider(i: int, prov: dict, labels: dict[str, Label], problems: Problems,
                    cloud_settings: CloudSettings | None) -> Provider:
    base = ["providers", i]
    images_cfg = prov.get("cloud-images", [])
    _dup_check(images_cfg, "name", base + ["cloud-images"], problems, "cloud-image")
    images = {img["name"]: _build_cloud_image(img) for img in images_cfg}
    if prov.get("diskimages"):
        problems.warning(base + ["diskimages"],
                         "diskimages are built and uploaded by upstream's nodepool-builder, "
                         "which this launcher does not serve; they are ignored. Use "
                         "cloud-images for images that already exist in the cloud")
    for key in INERT_PROVIDER_KEYS:
        if key in prov:
            problems.warning(base + [key], "accepted for compatibility with upstream "
                             "Nodepool; it has no effect in this launcher")
    if "hostname-format" in prov:
        _check_hostname_format(prov["hostname-format"], base + ["hostname-format"], problems)
    pools_cfg = prov.get("pools", [])
    _dup_check(pools_cfg, "name", base + ["pools"], problems, "pool")
    pools: dict[str, Pool] = {}
    for j, pool in enumerate(pools_cfg):
        ppath = base + ["pools", j]
        pool_networks = tuple(pool.get("networks", []))
        pool_hkc = pool.get("host-key-checking", True)
        _dup_check(pool.get("labels", []), "name", ppath + ["labels"], problems, "pool label")
        plabels: dict[str, PoolLabel] = {}
        for k, lab in enumerate(pool.get("labels", [])):
            lpath = ppath + ["labels", k]
            name = lab["name"]
            if name not in labels:
                problems.error(lpath + ["name"], f"label {name!r} is not defined in the "
                               f"top-level 'labels' list; add '- name: {name}' there")
            if "diskimage" in lab:
                problems.warning(lpath + ["diskimage"],
                                 f"label {name!r} boots a nodepool-builder diskimage, which "
                                 "this launcher does not serve; the label is not offered by "
                                 "this pool. Use cloud-image instead")
                continue
            if "cloud-image" not in lab:
                problems.error(lpath, f"label {name!r} needs 'cloud-image' naming one of "
                               f"this provider's cloud-images ({', '.join(images) or 'none'})")
                continue
            image = images.get(lab["cloud-image"])
            if image is None:
                problems.error(lpath + ["cloud-image"],
                               f"cloud-image {lab['cloud-image']!r} is not defined in "
                               f"providers[{i}].cloud-images (defined: "
                               f"{', '.join(images) or 'none'})")
                continue
            if "flavor-name" not in lab and "min-ram" not in lab:
                problems.error(lpath, f"label {name!r} needs 'flavor-name' or 'min-ram' to "
                                      "choose a flavor")
                continue
            dynamic = lab.get("dynamic-instance-properties") or {}
            for key, template in dynamic.items():
                problem = _check_request_template(template)
                if problem:
                    problems.error(lpath + ["dynamic-instance-properties", str(key)], problem)
            plabels[name] = PoolLabel(
                name=name, cloud_image=image, flavor_name=lab.get("flavor-name"),
                min_ram=lab.get("min-ram", 0), key_name=lab.get("key-name"),
                console_log=lab.get("console-log", False),
                boot_from_volume=lab.get("boot-from-volume", False),
                volume_size=lab.get("volume-size", 50), userdata=lab.get("userdata"),
                instance_properties=dict(lab.get("instance-properties", {})),
                dynamic_instance_properties={str(k): str(v) for k, v in dynamic.items()},
                networks=tuple(lab.get("networks", pool_networks)),
                host_key_checking=lab.get("host-key-checking", pool_hkc))
        pools[pool["name"]] = Pool(
            name=pool["name"], provider_name=prov["name"], priority=pool.get("priority"),
            max_servers=pool.get("max-servers", math.inf),
            max_cores=pool.get("max-cores", math.inf), max_ram=pool.get("max-ram", math.inf),
            max_volumes=pool.get("max-volumes", math.inf),
            max_volume_gb=pool.get("max-volume-gb", math.inf),
            networks=pool_networks, security_groups=tuple(pool.get("security-groups", [])),
            availability_zones=tuple(pool.get("availability-zones", [])),
            auto_floating_ip=pool.get("auto-floating-ip", True), host_key_checking=pool_hkc,
            ignore_provider_quota=pool.get("ignore-provider-quota", False),
            node_attributes=pool.get("node-attributes"), labels=plabels)
    hostname_format = prov.get("hostname-format", Provider.hostname_format)
    _check_windows_names(hostname_format, prov["name"], pools, base + ["hostname-format"],
                         problems)
    return Provider(
        name=prov["name"], cloud=prov["cloud"], cloud_settings=cloud_settings,
        region_name=prov.get("region-name"), driver="openstack",
        priority=prov.get("priority"), max_concurrency=prov.get("max-concurrency", -1),
        rate=_rate_of(prov, "rate"), read_rate=_rate_of(prov, "read-rate"),
        boot_timeout=prov.get("boot-timeout", 60),
        launch_timeout=prov.get("launch-timeout", 3600),
        launch_retries=prov.get("launch-retries", 3),
        hostname_format=hostname_format,
        clean_floating_ips=prov.get("clean-floating-ips", False),
        port_cleanup_interval=prov.get("port-cleanup-interval", 600),
        cloud_images=images, pools=pools)


def _check_clouds(providers: list[tuple[int, dict]], clouds_path: str | None,
                  problems: Problems) -> tuple[list[ConfigProblem], dict[str, CloudSettings]]:
    """Apply the clouds.yaml policy to every cloud an openstack provider uses."""
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
             check_clouds: bool = True) -> tuple[NodepoolConfig | None, list[ConfigProblem]]:
    """Every problem in nodepool.yaml (and clouds.yaml); the config if usable."""
    env = os.environ if env is None else env
    problems = Problems(path)
    data = read_yaml(path, problems, env)
    if problems.has_errors:
        return None, problems.items
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.error("", f"expected a mapping of settings at the top, got "
                           f"{schema._type_name(data)}")
        return None, problems.items
    if secure_path:
        secure_problems = Problems(secure_path)
        secure = read_yaml(secure_path, secure_problems, env)
        problems.items.extend(secure_problems.items)
        if isinstance(secure, dict):
            # Upstream's secure file carries the ZooKeeper connection details.
            for key in ("zookeeper-servers", "zookeeper-tls"):
                if key in secure:
                    data[key] = secure[key]
        elif secure is not None:
            secure_problems.error("", "expected a mapping")

    for p, msg in schema.voluptuous_problems(schema.top_level_schema, data):
        problems.error(p, msg)
    _warn_upstream_off_values(data, problems)
    for key in schema.BUILDER_TOP_LEVEL_KEYS:
        if key in data:
            problems.warning(key, "belongs to upstream's nodepool-builder, which this "
                                  "launcher does not serve; it is ignored")

    providers_cfg = data.get("providers") if isinstance(data.get("providers"), list) else []
    openstack: list[tuple[int, dict]] = []
    broken: set[int] = set()  # providers with schema errors: checked best-effort
    for i, prov in enumerate(providers_cfg):
        if not isinstance(prov, dict):
            continue
        driver = prov.get("driver", "openstack")
        if driver == "openstack":
            found = schema.voluptuous_problems(schema.openstack_provider_schema, prov,
                                               ["providers", i])
            for p, msg in found:
                problems.error(p, msg)
            openstack.append((i, prov))
            if found:
                broken.add(i)
        elif driver in schema.OTHER_DRIVERS:
            problems.warning(["providers", i, "driver"],
                             f"driver {driver!r} is upstream Nodepool's; this launcher serves "
                             f"only 'openstack' providers, so provider "
                             f"{prov.get('name', '?')!r} is ignored")
        else:
            problems.error(["providers", i, "driver"],
                           f"unknown driver {driver!r}; this launcher serves 'openstack'")

    structure_ok = not problems.has_errors
    labels_cfg = _valid_items(data.get("labels"), schema.label_schema)
    _dup_check(labels_cfg, "name", ["labels"], problems, "label")
    labels = {lab["name"]: Label(lab["name"], lab.get("min-ready", 0),
                                 lab.get("max-ready-age", 0)) for lab in labels_cfg}
    _dup_check(providers_cfg, "name", ["providers"], problems, "provider")
    tenants_cfg = _valid_items(data.get("tenant-resource-limits"), schema.tenant_limit_schema)
    _dup_check(tenants_cfg, "tenant-name", ["tenant-resource-limits"], problems, "tenant")
    tenant_limits = {}
    tracked = {"max-servers": "instances", "max-cores": "cores", "max-ram": "ram",
               "max-volumes": "volumes", "max-volume-gb": "volume-gb"}
    for i, t in enumerate(data.get("tenant-resource-limits") or []):
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
        usable = [(i, p) for i, p in openstack if isinstance(p.get("cloud"), str)]
        cloud_problems, cloud_settings = _check_clouds(usable, clouds_path, problems)
    providers = {}
    for i, prov in openstack:
        try:
            built = _build_provider(i, prov, labels, problems,
                                    cloud_settings.get(prov.get("cloud")))
        except (KeyError, TypeError, AttributeError, ValueError):
            # Only a provider whose schema errors are already reported may
            # trip the builder; anything else is our bug and must surface.
            if i not in broken:
                raise
            continue
        if i not in broken:
            providers[built.name] = built
    served = {name for p in providers.values() for pool in p.pools.values()
              for name in pool.labels}
    for j, lab in enumerate(labels_cfg if structure_ok else []):
        if lab.get("min-ready", 0) > 0 and lab["name"] not in served:
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
        clouds_file=next((c.clouds_file for c in cloud_settings.values()), None))
    return config, all_problems


def load_config(path: str, clouds_path: str | None = None, secure_path: str | None = None,
                env: MappingT[str, str] | None = None) -> tuple[NodepoolConfig, list[ConfigProblem]]:
    """The config and its warnings; ``ConfigError`` listing everything if invalid."""
    config, problems = validate(path, clouds_path, secure_path, env)
    if config is None:
        raise ConfigError(problems)
    return config, problems
