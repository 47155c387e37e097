"""The OpenStack driver's part of nodepool.yaml: its provider entries, checked
by ``schema.openstack_provider_schema`` and built into ``model.Provider``.

The loader reaches it through the driver registry its caller passes in.
"""

from __future__ import annotations

import math
import string
from typing import Any, Mapping

import voluptuous

from nodepool.config.errors import Problems, check_unique
from nodepool.config.model import DEFAULT_CONNECTION_PORTS, CloudSettings, DiskImage, Label
from nodepool.config.schema import as_list, is_int
from nodepool.driver.openstack import schema
from nodepool.driver.openstack.model import (WINDOWS_NAME_MAX, CloudImage, Pool, PoolLabel,
                                             Provider, ProviderDiskImage)
from nodepool.requests.protocol import TEMPLATE_FIELDS as REQUEST_FIELDS


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


def _build_cloud_image(img: dict) -> CloudImage:
    ctype = img.get("connection-type", "ssh")
    return CloudImage(
        name=img["name"], image_id=img.get("image-id"), image_name=img.get("image-name"),
        username=img.get("username"), python_path=img.get("python-path", "auto"),
        shell_type=img.get("shell-type"), connection_type=ctype,
        connection_port=img.get("connection-port", DEFAULT_CONNECTION_PORTS.get(ctype, 22)),
        config_drive=img.get("config-drive"))


def _build_diskimages(i: int, prov: dict, diskimages: Mapping[str, DiskImage],
                      problems: Problems) -> dict[str, ProviderDiskImage]:
    """The provider's ``diskimages`` entries: each names a top-level one."""
    path = ["providers", i, "diskimages"]
    entries = prov.get("diskimages", [])
    check_unique(entries, "name", path, problems, "diskimage")
    out = {}
    for j, entry in enumerate(entries):
        top = diskimages.get(entry["name"])
        if top is None:
            problems.error(path + [j, "name"],
                           f"diskimage {entry['name']!r} is not defined in the top-level "
                           "'diskimages' list (abstract ones cannot be uploaded); add "
                           f"'- name: {entry['name']}' there (defined: "
                           f"{', '.join(sorted(diskimages)) or 'none'})")
            continue
        ctype = entry.get("connection-type", "ssh")
        out[top.name] = ProviderDiskImage(
            name=top.name, image=top, pause=entry.get("pause", False),
            config_drive=entry.get("config-drive"), connection_type=ctype,
            connection_port=entry.get("connection-port",
                                      DEFAULT_CONNECTION_PORTS.get(ctype, 22)),
            meta=dict(entry.get("meta") or {}))
    return out


def _diskimage_settings(image: ProviderDiskImage) -> CloudImage:
    """How a node booted from the diskimage is reached and used (the
    label's ``cloud_image``): the user and Python from the top-level entry,
    the connection and config drive from the provider's."""
    return CloudImage(name=image.name, username=image.image.username,
                      python_path=image.image.python_path,
                      shell_type=image.image.shell_type,
                      connection_type=image.connection_type,
                      connection_port=image.connection_port,
                      config_drive=image.config_drive)


# Upstream keys this launcher reads but does not act on (documented in
# doc/migration.rst); a warning keeps an operator from relying on them.  The
# builder's own keys (image-upload-timeout, image-name-format,
# post-upload-hook) are its business and load quietly.
INERT_PROVIDER_KEYS = ("nodepool-id",)



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
        if root == "request" and attr == "node_types":
            return ("{request.node_types} is not available; upstream Nodepool names the "
                    "request's labels {request.labels}: write that instead")
        if root != "request" or attr not in REQUEST_FIELDS:
            return (f"{{{field_name}}} is not available; use {{request.<field>}} with one of "
                    f"{', '.join(REQUEST_FIELDS)}, e.g. {{request.requestor_data[job_name]}}")
    return None


def build_provider(i: int, prov: dict, labels: dict[str, Label], problems: Problems,
                   cloud_settings: CloudSettings | None,
                   diskimages: Mapping[str, DiskImage] | None = None) -> Provider:
    base = ["providers", i]
    images_cfg = prov.get("cloud-images", [])
    check_unique(images_cfg, "name", base + ["cloud-images"], problems, "cloud-image")
    images = {img["name"]: _build_cloud_image(img) for img in images_cfg}
    disks = _build_diskimages(i, prov, diskimages or {}, problems)
    for key in INERT_PROVIDER_KEYS:
        if key in prov:
            problems.warning(base + [key], "accepted for compatibility with upstream "
                             "Nodepool; it has no effect in this launcher")
    if "hostname-format" in prov:
        _check_hostname_format(prov["hostname-format"], base + ["hostname-format"], problems)
    pools_cfg = prov.get("pools", [])
    check_unique(pools_cfg, "name", base + ["pools"], problems, "pool")
    pools: dict[str, Pool] = {}
    for j, pool in enumerate(pools_cfg):
        ppath = base + ["pools", j]
        pool_networks = tuple(pool.get("networks", []))
        pool_hkc = pool.get("host-key-checking", True)
        check_unique(pool.get("labels", []), "name", ppath + ["labels"], problems, "pool label")
        plabels: dict[str, PoolLabel] = {}
        for k, lab in enumerate(pool.get("labels", [])):
            lpath = ppath + ["labels", k]
            name = lab["name"]
            if name not in labels:
                problems.error(lpath + ["name"], f"label {name!r} is not defined in the "
                               f"top-level 'labels' list; add '- name: {name}' there")
            disk = None
            if "diskimage" in lab:
                disk = disks.get(lab["diskimage"])
                if disk is None:
                    problems.error(lpath + ["diskimage"],
                                   f"diskimage {lab['diskimage']!r} is not defined in "
                                   f"providers[{i}].diskimages (defined: "
                                   f"{', '.join(disks) or 'none'}); add "
                                   f"'- name: {lab['diskimage']}' there, as upstream's "
                                   "builder uploads only the diskimages a provider lists")
                    continue
                image = _diskimage_settings(disk)
            elif "cloud-image" not in lab:
                problems.error(lpath, f"label {name!r} needs 'cloud-image' naming one of "
                               f"this provider's cloud-images ({', '.join(images) or 'none'})"
                               " or 'diskimage' naming one of its diskimages "
                               f"({', '.join(disks) or 'none'})")
                continue
            else:
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
                host_key_checking=lab.get("host-key-checking", pool_hkc), diskimage=disk)
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
        cloud_images=images, diskimages=disks, pools=pools)


def warn_off_values(i: int, prov: dict, problems: Problems) -> None:
    """Values upstream accepts and treats as "off" or as the least it does;
    they work the same here, and the warning says what to write instead."""
    retries = prov.get("launch-retries")
    if is_int(retries) and retries < 1:
        problems.warning(["providers", i, "launch-retries"],
                         f"{retries} means one attempt per node, as upstream Nodepool "
                         "treats it; write 1")
    for j, pool in enumerate(as_list(prov.get("pools"))):
        if not isinstance(pool, dict):
            continue
        value = pool.get("max-servers")
        if is_int(value) and value < 0:
            problems.warning(["providers", i, "pools", j, "max-servers"],
                             f"{value} disables the pool (it declines every request), "
                             "as upstream Nodepool treats any value of 0 or less; write "
                             "0 to disable it, or leave max-servers out for no limit")
