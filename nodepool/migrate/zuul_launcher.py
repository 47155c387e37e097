"""nodepool.yaml -> Zuul's launcher configuration (Zuul 14.3's objects).

What goes where, in Zuul's terms:

* each OpenStack provider becomes a ``section`` (its cloud connection,
  region, timeouts, cleanups, and the cloud settings of its images and
  flavors), and each of its pools a ``provider`` attached to that section
  (the pool's limits as ``resource-limits``, its networks, security groups,
  zone and checks as ``label-defaults``, its labels);
* the images labels boot become ``image`` objects: ``type: cloud`` for
  cloud-images, ``type: zuul`` for diskimages (Zuul builds those in a job);
* each flavor-name becomes a ``flavor``, each label a ``label``;
* each cloud a ``[connection "<cloud>"]`` of ``zuul.conf``.

Where Zuul 14.3 wants something nodepool.yaml cannot say (an image's id
where the file names the image; a flavor's name where it asks for a RAM
size), the value written starts with ``CHOOSE-`` and the report says what
to put there.  Values are written even when they equal Zuul's defaults
where the defaults differ in meaning from this launcher's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nodepool.config.errors import format_path
from nodepool.config.model import NodepoolConfig
from nodepool.driver.openstack.model import Pool, PoolLabel, Provider
from nodepool.migrate.keys import Outcome, Rule, key_outcomes

PLACEHOLDER = "CHOOSE-"
# What Zuul 14.3's images accept as connection-type.
ZUUL_CONNECTION_TYPES = ("ssh", "winrm")
# Zuul's OpenStack connection default (calls per second) when rate is unset.
ZUUL_DEFAULT_RATE = 2.0
_LIMITS = (("max_servers", "max-servers", "instances"), ("max_cores", "max-cores", "cores"),
           ("max_ram", "max-ram", "ram"), ("max_volumes", "max-volumes", "volumes"),
           ("max_volume_gb", "max-volume-gb", "volume-gb"))


class MigrationError(Exception):
    """The request cannot be translated (e.g. an unknown label)."""


@dataclass
class Migration:
    objects: list[dict]                      # [{"image": {...}}, {"flavor": {...}}, ...]
    connections: dict[str, dict[str, str]]   # connection name -> zuul.conf settings
    scheduler: dict[str, str]                # suggested [scheduler] settings
    outcomes: list[Outcome]
    migrated_labels: list[str]               # Zuul takes these from zuul-launcher
    kept_labels: list[str]                   # these stay on this launcher
    tenant: str | None = None
    notes: list[str] = field(default_factory=list)   # general points for the report

    @property
    def choices(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decide]


def _index(items: list, name: str, key: str = "name") -> int:
    return next(i for i, it in enumerate(items) if isinstance(it, dict) and it.get(key) == name)


class _Paths:
    """Raw nodepool.yaml paths of the model's objects, for the report."""

    def __init__(self, raw: dict):
        self.raw = raw

    def provider(self, p: Provider) -> list:
        return ["providers", _index(self.raw["providers"], p.name)]

    def _provider_raw(self, p: Provider) -> dict:
        return self.raw["providers"][self.provider(p)[1]]

    def pool(self, p: Provider, pool: Pool) -> list:
        return self.provider(p) + ["pools", _index(self._provider_raw(p)["pools"], pool.name)]

    def pool_raw(self, p: Provider, pool: Pool) -> dict:
        return self._provider_raw(p)["pools"][self.pool(p, pool)[3]]

    def label(self, p: Provider, pool: Pool, name: str) -> list:
        return self.pool(p, pool) + ["labels",
                                     _index(self.pool_raw(p, pool)["labels"], name)]

    def cloud_image(self, p: Provider, name: str) -> list:
        return self.provider(p) + ["cloud-images",
                                   _index(self._provider_raw(p)["cloud-images"], name)]


def _limit(value: float) -> int | None:
    return None if value == math.inf else int(value)


def _tag_value(value: object) -> str:
    """Zuul's tags are strings; YAML's true is written as it was read."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class _Translator:
    def __init__(self, config: NodepoolConfig, raw: dict, labels: list[str]):
        self.config = config
        self.paths = _Paths(raw)
        self.wanted = set(labels)
        self.notes: dict[str, Rule] = {}
        self.images: dict[str, dict] = {}       # image name -> image object
        self.flavors: dict[str, dict] = {}
        self.labels: dict[str, dict] = {}
        self.sections: list[dict] = []
        self.providers: list[dict] = []
        self.connections: dict[str, dict[str, str]] = {}
        self.rates: dict[str, list[float]] = {}

    def note(self, path: list, became: str, decide: str = "") -> None:
        self.notes[format_path(path)] = Rule(became, decide)

    # -- images and flavors -------------------------------------------------------

    def image_of(self, prov: Provider, label: PoolLabel, section: dict) -> str:
        """The Zuul image a label boots; adds the image and the section's entry."""
        disk = label.diskimage
        if disk is not None:
            name, kind = disk.name, "zuul"
            desc = (f"built by nodepool-builder as diskimage {disk.name}; under "
                    "zuul-launcher an image-build job builds it")
            entry: dict = {"name": name}
            _copy_connection(entry, disk.image.username, disk.image.python_path,
                             disk.image.shell_type, disk.connection_type,
                             disk.connection_port)
            if disk.config_drive is not None:
                entry["config-drive"] = disk.config_drive
            if disk.meta:
                entry["tags"] = {str(k): _tag_value(v) for k, v in disk.meta.items()}
        else:
            img = label.cloud_image
            name, kind = img.name, "cloud"
            desc = "cloud image (its id is given per section)"
            entry = {"name": name, "image-id": self._image_id(prov, img)}
            _copy_connection(entry, img.username, img.python_path, img.shell_type,
                             img.connection_type, img.connection_port)
            if img.config_drive is not None:
                entry["config-drive"] = img.config_drive
        connection_type = entry["connection-type"]
        if connection_type not in ZUUL_CONNECTION_TYPES:
            raise MigrationError(
                f"label {label.name!r} of provider {prov.name!r} connects with "
                f"connection-type {connection_type!r}; zuul-launcher 14.3 knows only "
                f"{' and '.join(ZUUL_CONNECTION_TYPES)}: leave the label on this launcher "
                "(--labels without it)")
        known = self.images.get(name)
        if known is not None and known["type"] != kind:
            raise MigrationError(
                f"image name {name!r} is a cloud-image in one provider and a diskimage in "
                "another; Zuul's images have one type: rename one of them in nodepool.yaml "
                "first")
        self.images.setdefault(name, {"name": name, "type": kind, "description": desc})
        if all(e["name"] != name for e in section["images"]):
            section["images"].append(entry)
        return name

    def _image_id(self, prov: Provider, img) -> str:
        if img.image_id:
            return img.image_id
        path = self.paths.cloud_image(prov, img.name)
        lookup = img.image_name or img.name
        key = "image-name" if img.image_name else "name"
        self.note(path + [key],
                  f"section {prov.name}: images entry {img.name}, image-id "
                  f"{PLACEHOLDER}id-of-{lookup}",
                  f"zuul-launcher 14.3 boots cloud images by id only: replace the "
                  f"placeholder with the id of image {lookup!r} in cloud {prov.cloud} "
                  f"(openstack image show -f value -c id '{lookup}'); the id changes "
                  "when the image is replaced")
        return f"{PLACEHOLDER}id-of-{lookup}"

    def flavor_of(self, prov: Provider, pool: Pool, label: PoolLabel, section: dict) -> str:
        if label.min_ram:
            name = (f"{label.flavor_name}-" if label.flavor_name else "") + \
                f"ram-{label.min_ram}"
            cloud_name = f"{PLACEHOLDER}flavor-with-{label.min_ram}-MiB" + \
                (f"-named-{label.flavor_name}" if label.flavor_name else "")
            self.note(self.paths.label(prov, pool, label.name) + ["min-ram"],
                      f"flavor {name}; section {prov.name} flavors entry with flavor-name "
                      f"{cloud_name}",
                      f"zuul-launcher 14.3 picks flavors by name: replace the placeholder "
                      f"with the name of the smallest flavor of cloud {prov.cloud} with at "
                      f"least {label.min_ram} MiB of RAM"
                      + (f" whose name contains {label.flavor_name!r}"
                         if label.flavor_name else ""))
        else:
            name = cloud_name = str(label.flavor_name)
        self.flavors.setdefault(name, {"name": name})
        if all(f["name"] != name for f in section["flavors"]):
            section["flavors"].append({"name": name, "flavor-name": cloud_name})
        return name

    # -- providers ------------------------------------------------------------------

    def section_of(self, prov: Provider) -> dict:
        section: dict = {"name": prov.name, "connection": prov.cloud}
        region = prov.region_name or (prov.cloud_settings.region_name
                                      if prov.cloud_settings else None)
        if region:
            section["region"] = region
        section["launch-timeout"] = prov.launch_timeout
        section["launch-attempts"] = max(1, prov.launch_retries)
        section["floating-ip-cleanup"] = prov.clean_floating_ips
        section["port-cleanup-interval"] = prov.port_cleanup_interval
        section["label-defaults"] = {"boot-timeout": prov.boot_timeout}
        section["images"] = []
        section["flavors"] = []
        return section

    def connection_of(self, prov: Provider) -> None:
        settings = {"driver": "openstack", "cloud": prov.cloud}
        clouds_file = prov.cloud_settings.clouds_file if prov.cloud_settings else \
            self.config.clouds_file
        if clouds_file:
            settings["client_config_file"] = clouds_file
        self.connections.setdefault(prov.cloud, settings)
        if prov.rate:
            self.rates.setdefault(prov.cloud, []).append(1.0 / prov.rate)

    def provider_of(self, prov: Provider, pool: Pool, section: dict) -> dict | None:
        path = self.paths.pool(prov, pool)
        chosen = [n for n in pool.labels if n in self.wanted]
        for name in pool.labels:
            if name not in self.wanted:
                self.note(self.paths.label(prov, pool, name),
                          f"nothing yet: label {name} stays on this launcher",
                          "migrate it later with --labels")
        if not chosen:
            return None
        out: dict = {"name": f"{prov.name}-{pool.name}", "section": section["name"]}
        limits = {zuul: _limit(getattr(pool, ours)) for ours, _, zuul in _LIMITS}
        limits = {k: v for k, v in limits.items() if v is not None}
        if pool.max_servers <= 0:
            self.note(path + ["max-servers"], "provider.resource-limits.instances: 0",
                      "the pool is disabled here; Zuul's provider will launch nothing")
            limits["instances"] = 0
        if limits:
            out["resource-limits"] = limits
        defaults: dict = {"networks": list(pool.networks),
                          "security-groups": list(pool.security_groups),
                          "auto-floating-ip": pool.auto_floating_ip,
                          "host-key-checking": pool.host_key_checking}
        if len(pool.availability_zones) == 1:
            defaults["az"] = pool.availability_zones[0]
        elif pool.availability_zones:
            self.note(path + ["availability-zones"],
                      "nothing: zuul-launcher 14.3 takes one az per label",
                      f"this pool spreads servers over {len(pool.availability_zones)} "
                      "zones; Zuul without az lets nova choose any zone: set az on the "
                      "provider (one zone), or split the pool into one provider per zone")
        attrs = pool.node_attributes or {}
        if "executor-zone" in attrs:
            defaults["executor-zone"] = str(attrs["executor-zone"])
        others = sorted(str(k) for k in attrs if k != "executor-zone")
        if others:
            self.note(path + ["node-attributes"],
                      "executor-zone: provider.label-defaults.executor-zone" if
                      "executor-zone" in attrs else "nothing",
                      f"Zuul sets no free-form node attributes ({', '.join(others)}); "
                      "jobs that read them must change")
        out["label-defaults"] = defaults
        out["labels"] = [self.label_entry(prov, pool, pool.labels[n], section)
                         for n in chosen]
        return out

    def label_entry(self, prov: Provider, pool: Pool, label: PoolLabel,
                    section: dict) -> dict:
        image = self.image_of(prov, label, section)
        flavor = self.flavor_of(prov, pool, label, section)
        self.labels.setdefault(label.name, {"name": label.name, "image": image,
                                            "flavor": flavor})
        entry: dict = {"name": label.name, "image": image, "flavor": flavor}
        if label.key_name:
            entry["key-name"] = label.key_name
        entry["boot-from-volume"] = label.boot_from_volume
        if label.boot_from_volume:
            entry["volume-size"] = label.volume_size
        if label.userdata is not None:
            entry["userdata"] = label.userdata
        if label.networks != pool.networks:
            entry["networks"] = list(label.networks)
        if label.host_key_checking != pool.host_key_checking:
            entry["host-key-checking"] = label.host_key_checking
        if label.instance_properties:
            entry["tags"] = {str(k): _tag_value(v)
                             for k, v in label.instance_properties.items()}
            converted = sorted(str(k) for k, v in label.instance_properties.items()
                               if not isinstance(v, str))
            if converted:
                self.note(self.paths.label(prov, pool, label.name) + ["instance-properties"],
                          "provider.labels entry tags (server metadata)",
                          f"Zuul's tags are strings: {', '.join(converted)} written as "
                          "strings; check what reads them")
        return entry

    def run(self) -> None:
        for prov in self.config.providers.values():
            if not isinstance(prov, Provider):     # OpenStack's only
                continue
            section = self.section_of(prov)
            made = [p for p in (self.provider_of(prov, pool, section)
                                for pool in prov.pools.values()) if p is not None]
            if made:
                self.connection_of(prov)
                self.sections.append(section)
                self.providers.extend(made)
            else:
                self.note(self.paths.provider(prov),
                          "nothing yet: none of its labels is migrated")
        for cloud, rates in self.rates.items():
            # Several providers on one cloud share one connection: the slowest pace.
            self.connections[cloud]["rate"] = f"{min(rates):g}"
        for settings in self.connections.values():
            settings.setdefault("rate", f"{ZUUL_DEFAULT_RATE:g}")


def _copy_connection(entry: dict, username, python_path, shell_type, connection_type,
                     connection_port) -> None:
    if username:
        entry["username"] = username
    if python_path:
        entry["python-path"] = python_path
    if shell_type:
        entry["shell-type"] = shell_type
    entry["connection-type"] = connection_type
    entry["connection-port"] = connection_port


def _ancestors(diskimages: list[dict], names: set[str]) -> set[str]:
    """``names`` and every diskimage they inherit from (the loader has
    checked that the parents exist and form no loop)."""
    by_name = {d.get("name"): d for d in diskimages}
    out = set()
    for name in names:
        while name in by_name and name not in out:
            out.add(name)
            name = by_name[name].get("parent")
    return out


def served_labels(config: NodepoolConfig) -> list[str]:
    """Labels some OpenStack pool of this launcher offers, in file order."""
    out: list[str] = []
    for prov, pool in config.pools():
        if prov.driver == "openstack":
            out.extend(n for n in pool.labels if n not in out)
    return out


def translate(config: NodepoolConfig, raw: dict, labels: list[str] | None = None,
              tenant: str | None = None) -> Migration:
    """Zuul's objects, connections and the key report for ``labels`` (all
    labels OpenStack pools serve when None).  ``raw``: nodepool.yaml as read."""
    served = served_labels(config)
    if labels is None:
        labels = served
    unknown = [n for n in labels if n not in served]
    if unknown:
        raise MigrationError(
            f"--labels: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
            f"served by an OpenStack pool of {config.config_file} (served: "
            f"{', '.join(served) or 'none'})")
    t = _Translator(config, raw, labels)
    t.run()
    for j, lab in enumerate(raw.get("labels") or []):
        name = lab.get("name")
        if name in t.labels:
            for key in ("min-ready", "max-ready-age"):
                value = getattr(config.labels[name], key.replace("-", "_"))
                if value > 0:
                    t.labels[name][key] = value
        else:
            t.note(["labels", j], f"nothing: label {name} stays on this launcher"
                   if name in served else f"nothing: no OpenStack pool serves label {name}")
    lending = _ancestors(raw.get("diskimages") or [], set(t.images))
    for j, disk in enumerate(raw.get("diskimages") or []):
        if disk.get("name") not in lending:
            t.note(["diskimages", j], "nothing: no migrated label boots it or an image "
                                      "that inherits from it")
    scheduler = {}
    if config.max_hold_age:
        scheduler["max_hold_expiration"] = str(config.max_hold_age)
    objects: list[dict] = (
        [{"image": i} for i in t.images.values()]
        + [{"flavor": f} for f in t.flavors.values()]
        + [{"label": lab} for lab in t.labels.values()]
        + [{"section": s} for s in t.sections]
        + [{"provider": p} for p in t.providers])
    for i, prov in enumerate(raw.get("providers") or []):
        if prov.get("driver", "openstack") != "openstack":
            t.notes[f"providers[{i}]"] = Rule(
                f"nothing: driver {prov.get('driver')} providers are not translated",
                "define a Zuul provider of that driver by hand (Zuul 14.3 has static, "
                "aws, azure, gce, kubernetes ... drivers), or keep it on this launcher")
    outcomes = key_outcomes(raw, t.notes)
    kept = [n for n in served if n not in t.labels]
    built = [i["name"] for i in t.images.values() if i["type"] == "zuul"]
    return Migration(objects=objects, connections=t.connections, scheduler=scheduler,
                     outcomes=outcomes, migrated_labels=list(t.labels),
                     kept_labels=kept, tenant=tenant,
                     notes=_general_notes(config, tenant, kept, built))


def _general_notes(config: NodepoolConfig, tenant: str | None, kept: list[str],
                   built: list[str]) -> list[str]:
    who = f"tenant {tenant}" if tenant else "each tenant that gets these objects"
    notes = [
        f"Zuul serves a job from zuul-launcher only when the providers of {who} offer "
        "every label of the job's nodeset; a nodeset that mixes a migrated label with "
        "one that stays here goes to this launcher whole.",
        "Both launchers draw on the same cloud quota while they run side by side: lower "
        "this launcher's max-servers (and min-ready of migrated labels, to 0) by what "
        "the new providers' resource-limits take.",
    ]
    if kept:
        notes.append(f"Keep use-nodepool: true (the default) in {who}'s tenant "
                     "configuration while labels stay here.")
    else:
        notes.append(f"Every label is migrated: once the objects are merged and nodes "
                     f"flow, set use-nodepool: false in {who}'s tenant configuration and "
                     "stop this launcher.")
    if built:
        notes.append(f"Images of type zuul ({', '.join(built)}) are built by Zuul: each "
                     "needs an image-build job (a job with image-build-name) run in a "
                     "pipeline before zuul-launcher can boot its labels; nodepool-builder's "
                     "uploads are not reused.")
    if tenant and tenant in config.tenant_limits:
        limits = {k: v for k, v in config.tenant_limits[tenant].limits.items()
                  if v != math.inf}
        shown = ", ".join(f"{k} {int(v)}" for k, v in limits.items()) or "none"
        notes.append(f"Tenant {tenant} has tenant-resource-limits here ({shown}); "
                     "zuul-launcher 14.3 cannot limit a tenant's resources: decide before "
                     "moving its labels (see the key list).")
    return notes
