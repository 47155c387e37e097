"""clouds.yaml: where it is, and the policy every provider's cloud must meet.

The policy exists because of two failures seen in production with upstream
Nodepool and openstacksdk 4.x:

* Without ``api_timeout`` a request to an unresponsive API never returns, and
  the launcher hung for seven hours.  So every cloud a provider uses must set a
  positive ``api_timeout`` (``api-timeout`` is the same key to openstacksdk).
* openstacksdk 4.x caches a GET only when the top-level ``cache.expiration``
  names its resource in dotted form (``compute.servers.detail``,
  ``network.ports``, ...).  The shade-era keys (``server``, ``port``,
  ``floating-ip``) and ``expiration_time`` alone are accepted silently and
  cache nothing.  We reject them instead of letting an operator believe caching
  is on.

Only key names are ever printed: credentials never appear in a message.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import yaml

from nodepool.config.errors import Problems
from nodepool.config.model import AddressPolicy, CloudNetwork

# Shade-era resource names that openstacksdk 4.x no longer looks up.
LEGACY_CACHE_KEYS = {"server", "servers", "port", "ports", "floating-ip", "floating_ip",
                     "floating-ips", "floating_ips", "image", "images", "flavor",
                     "flavors", "network", "networks", "subnet", "subnets"}
DOTTED_KEY = re.compile(r"^[a-z][a-z-]*\.[a-z0-9_.-]+$")
RECOMMENDED_EXPIRATION = {
    "compute.servers.detail": 5,
    "compute.flavors.detail": 3600,
    "image.images": 3600,
    "network.ports": 10,
    "network.floatingips": 10,
    "network.networks": 3600,
    "network.subnets": 3600,
}
# The quota code decides itself when limits are read; a cached answer would
# hide the change it is waiting for (a delete completing, a limit raised).
NEVER_CACHE = {"compute.limits", "block-storage.limits", "volume.limits"}


def _example_expiration() -> str:
    return ", ".join(f"{k}: {v}" for k, v in RECOMMENDED_EXPIRATION.items())


def search_path() -> list[str]:
    """openstacksdk's own search order for clouds.yaml, evaluated now."""
    from openstack.config import loader  # heavy import; only when needed

    dirs = [os.getcwd(), loader.CONFIG_HOME, loader.UNIX_CONFIG_HOME,
            loader.SITE_CONFIG_HOME, loader.UNIX_SITE_CONFIG_HOME]
    files = [os.path.join(d, "clouds" + s) for d in dirs for s in (".yaml", ".yml", ".json")]
    override = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if override:
        files.insert(0, override)
    return files


def find_clouds_file(explicit: str | None = None) -> str | None:
    """``--clouds`` if given, else the first file openstacksdk would read."""
    if explicit:
        return explicit
    for path in search_path():
        if os.path.exists(path):
            return path
    return None


class CloudsFile:
    """A parsed clouds.yaml and the problems found in it."""

    def __init__(self, path: str, data: dict, problems: Problems):
        self.path = path
        self.data = data
        self.problems = problems

    @property
    def clouds(self) -> dict:
        clouds = self.data.get("clouds")
        return clouds if isinstance(clouds, dict) else {}


def load_clouds_file(path: str) -> CloudsFile:
    problems = Problems(path)
    data: Any = {}
    try:
        with open(path) as f:
            data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except OSError as e:
        problems.error("", f"cannot read the file: {e.strerror}; point --clouds at "
                           "your clouds.yaml or set OS_CLIENT_CONFIG_FILE")
        return CloudsFile(path, {}, problems)
    except (yaml.YAMLError, ValueError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problems.error(where, f"not valid YAML: {getattr(e, 'problem', None) or e}")
        return CloudsFile(path, {}, problems)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.error("", "expected a mapping with a 'clouds' key at the top")
        return CloudsFile(path, {}, problems)
    if not isinstance(data.get("clouds"), dict):
        problems.error("clouds", "missing or not a mapping of cloud names to settings")
    return CloudsFile(path, data, problems)


def api_timeout_of(cloud: dict) -> Any:
    for key in ("api_timeout", "api-timeout"):
        if key in cloud:
            return cloud[key]
    return None


def check_cloud(clouds: CloudsFile, name: str) -> None:
    """The per-cloud part of the policy: api_timeout."""
    p = clouds.problems
    cloud = clouds.clouds.get(name)
    if not isinstance(cloud, dict):
        return
    where = ["clouds", name, "api_timeout"]
    if "api_timeout" not in cloud and "api-timeout" not in cloud:
        p.error(where, f"is missing for cloud {name!r}; without it a hung API call never "
                       "returns. Add e.g. 'api_timeout: 60' (seconds) to this cloud")
        return
    value = api_timeout_of(cloud)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = "null" if value is None else repr(value)
        p.error(where, f"must be a positive number of seconds for cloud {name!r}, got "
                       f"{shown}. Set e.g. 'api_timeout: 60'")
    elif value <= 0:
        p.error(where, f"must be greater than 0 for cloud {name!r}, got {value}; 0 or "
                       "less means no timeout. Set e.g. 'api_timeout: 60'")
    if "cache" in cloud:
        p.error(["clouds", name, "cache"],
                "openstacksdk ignores 'cache' inside a cloud; move it to the top level "
                "of the file, next to 'clouds:'")


def check_cache(clouds: CloudsFile) -> None:
    """The file-wide part of the policy: a cache that really caches."""
    p = clouds.problems
    example = f"cache: {{class: dogpile.cache.memory, expiration: {{{_example_expiration()}}}}}"
    cache = clouds.data.get("cache")
    if cache is None:
        p.error("cache", "is missing; without it openstacksdk repeats every lookup. "
                         f"Add at the top level: {example}")
        return
    if not isinstance(cache, dict):
        p.error("cache", f"expected a mapping. Use: {example}")
        return
    cls = cache.get("class")
    # With expiration_time (or max_age) and no class, openstacksdk picks the
    # memory backend itself, so only an absent or null class with neither is off.
    if cls in (None, "", "dogpile.cache.null"):
        if cls == "dogpile.cache.null" or not ("expiration_time" in cache or "max_age" in cache):
            p.error("cache.class", "is missing or dogpile.cache.null, which caches nothing. "
                                   "Set 'class: dogpile.cache.memory'")
    elif not isinstance(cls, str):
        p.error("cache.class", "expected a dogpile backend name such as dogpile.cache.memory")
    expiration = cache.get("expiration")
    if expiration is None:
        extra = ""
        if "expiration_time" in cache or "max_age" in cache:
            extra = (" 'expiration_time' alone caches nothing in openstacksdk 4.x: every "
                     "request passes its own per-resource expiration, which defaults to 0.")
        p.error("cache.expiration", "is missing." + extra + " List the resources to cache "
                f"with their seconds, e.g. expiration: {{{_example_expiration()}}}")
        return
    if not isinstance(expiration, dict) or not expiration:
        p.error("cache.expiration", "expected a non-empty mapping of resource keys to "
                f"seconds, e.g. {{{_example_expiration()}}}")
        return
    legacy = []
    for key, seconds in expiration.items():
        path = ["cache", "expiration", str(key)]
        skey = str(key)
        if skey in LEGACY_CACHE_KEYS or skey.replace("_", "-") in LEGACY_CACHE_KEYS:
            legacy.append(skey)
            continue
        if not DOTTED_KEY.match(skey):
            p.error(path, "is not a resource key openstacksdk 4.x uses; keys are "
                          "'<service-type>.<resource>' such as compute.servers.detail")
            continue
        if skey in NEVER_CACHE:
            p.error(path, "must not be cached: the launcher reads quota limits when it "
                          "needs fresh figures, and a cached answer hides a delete that "
                          "completed or a limit that rose. Remove this key")
            continue
        try:
            number = int(str(seconds))
        except ValueError:
            number = None
        if number is None or isinstance(seconds, bool) or (number < 0 and number != -1):
            p.error(path, f"expected a number of seconds (or -1 for never expire), got "
                          f"{seconds!r}")
    if legacy:
        keys = ", ".join(repr(k) for k in legacy)
        p.error("cache.expiration",
                f"legacy keys {keys} are accepted by openstacksdk 4.x but cache nothing: it "
                "only looks up dotted per-resource keys. Use instead, e.g. "
                f"{_example_expiration()}")


def _flag(value: Any) -> bool:
    """A clouds.yaml boolean as openstacksdk reads it ("true" in any case)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def address_policy_of(clouds: CloudsFile, name: str) -> AddressPolicy:
    """The cloud's ``networks``, ``floating_ip_source`` and ``private``
    settings; entries openstacksdk would refuse are reported, not guessed."""
    p = clouds.problems
    cloud = clouds.clouds.get(name)
    if not isinstance(cloud, dict):
        return AddressPolicy()
    networks: list[CloudNetwork] = []
    entries = cloud.get("networks") or []
    if not isinstance(entries, list):
        p.error(["clouds", name, "networks"], "expected a list of {name: ..., "
                "routes_externally: true|false, ...} entries")
        entries = []
    for j, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            p.error(["clouds", name, "networks", j, "name"],
                    "every network entry needs a 'name' (the network's name or id)")
            continue
        external = _flag(entry.get("routes_externally"))
        networks.append(CloudNetwork(
            name=str(entry["name"]),
            routes_ipv4_externally=_flag(entry.get("routes_ipv4_externally", external)),
            routes_ipv6_externally=_flag(entry.get("routes_ipv6_externally", external)),
            nat_source=_flag(entry.get("nat_source")),
            nat_destination=_flag(entry.get("nat_destination")),
            default_interface=_flag(entry.get("default_interface"))))
    # The older single-network keys, as openstacksdk still maps them.
    for key, external in (("external_network", True), ("internal_network", False)):
        if key in cloud:
            networks.append(CloudNetwork(name=str(cloud[key]), routes_ipv4_externally=external,
                                         routes_ipv6_externally=external,
                                         nat_destination=not external,
                                         default_interface=external))
    for role in ("nat_source", "nat_destination", "default_interface"):
        marked = [n.name for n in networks if getattr(n, role)]
        if len(marked) > 1:
            p.error(["clouds", name, "networks"],
                    f"{role} is set on several networks ({', '.join(marked)}); "
                    "openstacksdk allows it on one only")
    source = cloud.get("floating_ip_source", cloud.get("floating-ip-source", "neutron"))
    floating_ips = not (source is None or str(source).strip().lower() == "none")
    return AddressPolicy(networks=tuple(networks), floating_ips=floating_ips,
                         private=_flag(cloud.get("private")))
