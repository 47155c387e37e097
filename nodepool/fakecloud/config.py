"""The simulated cloud's configuration: YAML file, defaults and validation.

Every section can also be changed while the cloud runs (admin API or the
``FakeCloud`` methods); the same validators check both, so a bad value gets
the same message naming the key whether it came from the file or from a test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

LIMIT_KEYS = ("instances", "cores", "ram", "volumes", "gigabytes", "ports", "floating_ips")
# Nova, cinder and neutron defaults, so an unconfigured project feels like devstack.
DEFAULT_LIMITS = {"instances": 10, "cores": 20, "ram": 51200, "volumes": 10,
                  "gigabytes": 1000, "ports": 500, "floating_ips": 50}
DEFAULT_FAULT_MESSAGE = "No valid host was found. There are not enough hosts available."


class FakeCloudConfigError(ValueError):
    """One or more configuration problems, each naming the file and the key."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def stable_id(*parts: str) -> str:
    """A keystone-looking id that stays the same across runs for the same name."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


def stable_uuid(*parts: str) -> str:
    h = stable_id(*parts)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass(frozen=True)
class Range:
    """Seconds, fixed or drawn uniformly from [low, high]."""

    low: float
    high: float

    def as_yaml(self) -> float | list[float]:
        return self.low if self.low == self.high else [self.low, self.high]


@dataclass(frozen=True)
class UserConfig:
    name: str
    password: str
    id: str


@dataclass(frozen=True)
class ProjectConfig:
    name: str
    id: str
    users: tuple[UserConfig, ...]
    limits: dict[str, int]


@dataclass(frozen=True)
class FlavorConfig:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int = 0


@dataclass(frozen=True)
class ImageConfig:
    id: str
    name: str
    status: str = "active"
    min_disk: int = 0
    min_ram: int = 0
    size: int = 16338944


@dataclass(frozen=True)
class NetworkConfig:
    id: str
    name: str
    cidr: str
    subnet_id: str
    external: bool = False


@dataclass(frozen=True)
class ServerBehaviour:
    """How servers live: boot and delete times, boot failures, addresses."""

    boot_seconds: Range = Range(1.0, 3.0)
    delete_seconds: Range = Range(1.0, 2.0)
    error_boot_share: float = 0.0
    error_boot_fault: str = DEFAULT_FAULT_MESSAGE
    ports_per_server: int = 1
    floating_ip: bool = False
    # Share of deleted servers whose ports neutron fails to remove: they stay
    # behind DOWN, as after a lost port-unbind in a real cloud.
    leak_port_share: float = 0.0
    # "private": servers without requested networks get ports on the first
    # non-external network (they need floating IPs to be reached).
    # "provider": their first port is on the external network (a provider
    # network: already public), further ports on the private one.
    network_layout: str = "private"

    def as_dict(self) -> dict:
        return {"boot_seconds": self.boot_seconds.as_yaml(),
                "delete_seconds": self.delete_seconds.as_yaml(),
                "error_boot_share": self.error_boot_share,
                "error_boot_fault": self.error_boot_fault,
                "ports_per_server": self.ports_per_server,
                "floating_ip": self.floating_ip,
                "leak_port_share": self.leak_port_share,
                "network_layout": self.network_layout}


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour of the API itself (not of the servers)."""

    latency_seconds: Range = Range(0.0, 0.0)
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    hang: bool = False
    hang_seconds: float | None = None
    slow_create_seconds: float = 0.0
    slow_create_share: float = 1.0
    match: str | None = None
    # Rate limiting: this share of requests is answered 429 with a
    # Retry-After header of retry_after_seconds.
    error_429_rate: float = 0.0
    retry_after_seconds: float = 1.0
    # API capacity: up to ``capacity`` concurrent requests are served at full
    # speed (0: unlimited); each request beyond it adds ``overload_seconds``
    # to every answer, and beyond capacity * overload_503_factor requests are
    # refused with 503.
    capacity: int = 0
    overload_seconds: float = 0.05
    overload_503_factor: float = 2.0
    # A nova cell that is down: this share of the servers (picked by id)
    # lives in it.  Server lists below microversion 2.69 leave them out;
    # from 2.69 they are partial records with status UNKNOWN.  With
    # down_cell_lists > 0 the cell is down for that many lists only.
    down_cell_share: float = 0.0
    down_cell_lists: int = 0

    def as_dict(self) -> dict:
        return {"latency_seconds": self.latency_seconds.as_yaml(),
                "error_500_rate": self.error_500_rate,
                "error_503_rate": self.error_503_rate,
                "hang": self.hang, "hang_seconds": self.hang_seconds,
                "slow_create_seconds": self.slow_create_seconds,
                "slow_create_share": self.slow_create_share,
                "match": self.match,
                "error_429_rate": self.error_429_rate,
                "retry_after_seconds": self.retry_after_seconds,
                "capacity": self.capacity, "overload_seconds": self.overload_seconds,
                "overload_503_factor": self.overload_503_factor,
                "down_cell_share": self.down_cell_share,
                "down_cell_lists": self.down_cell_lists}


@dataclass(frozen=True)
class FakeCloudConfig:
    host: str = "127.0.0.1"
    port: int | None = None
    region: str = "RegionOne"
    seed: int | None = None
    token_ttl_seconds: int = 86400
    max_page_size: int = 1000
    request_log: str | None = None
    transition_log: str | None = None
    projects: tuple[ProjectConfig, ...] = ()
    flavors: tuple[FlavorConfig, ...] = ()
    images: tuple[ImageConfig, ...] = ()
    networks: tuple[NetworkConfig, ...] = ()
    availability_zones: tuple[str, ...] = ("nova",)
    keypairs: tuple[str, ...] = ()
    servers: ServerBehaviour = ServerBehaviour()
    faults: Faults = Faults()
    source: str = "<defaults>"


# --------------------------------------------------------------------------
# Validation helpers.  Each returns the checked value or records a problem.


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}" if where
                             else f"{self.source}: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise FakeCloudConfigError(self.problems)

    def mapping(self, value: Any, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def known_keys(self, data: dict, allowed: Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in data:
            if key not in allowed:
                prefix = f"{where}." if where else ""
                self.error(f"{prefix}{key}", "unknown key; expected one of "
                           + ", ".join(allowed))

    def number(self, value: Any, where: str, *, minimum: float = 0.0,
               maximum: float = math.inf, default: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not minimum <= value <= maximum:
            bounds = f"between {minimum:g} and {maximum:g}" if maximum < math.inf \
                else f"at least {minimum:g}"
            self.error(where, f"must be a number {bounds}, got {value!r}")
            return default
        return float(value)

    def integer(self, value: Any, where: str, *, minimum: int = 0, default: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(where, f"must be an integer of at least {minimum}, got {value!r}")
            return default
        return value

    def string(self, value: Any, where: str, default: str = "") -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value:
            self.error(where, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def boolean(self, value: Any, where: str, default: bool = False) -> bool:
        if not isinstance(value, bool):
            self.error(where, f"must be true or false, got {value!r}")
            return default
        return value

    def seconds_range(self, value: Any, where: str, default: Range) -> Range:
        """A number, or [low, high] with 0 <= low <= high."""
        if isinstance(value, (list, tuple)) and len(value) == 2:
            low = self.number(value[0], f"{where}[0]", default=default.low)
            high = self.number(value[1], f"{where}[1]", default=default.high)
            if low > high:
                self.error(where, f"[low, high] needs low <= high, got {list(value)}")
                return default
            return Range(low, high)
        if isinstance(value, (list, tuple)):
            self.error(where, f"must be a number of seconds or [low, high], got {value!r}")
            return default
        n = self.number(value, where, default=default.low)
        return Range(n, n)

    def limit(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            self.error(where, f"must be an integer >= 0, or -1 for unlimited, got {value!r}")
            return -1
        return value


def _check_limits(c: _Checker, data: Any, where: str, base: dict[str, int]) -> dict[str, int]:
    data = c.mapping(data, where)
    c.known_keys(data, LIMIT_KEYS, where)
    out = dict(base)
    for key in LIMIT_KEYS:
        if key in data:
            out[key] = c.limit(data[key], f"{where}.{key}")
    return out


def check_limits(data: Any, base: dict[str, int], source: str = "limits") -> dict[str, int]:
    """Validate a partial limits mapping; returns ``base`` updated with it."""
    c = _Checker(source)
    out = _check_limits(c, data, "", base)
    c.raise_if_any()
    return out


NETWORK_LAYOUTS = ("private", "provider")
_SERVER_KEYS = [f.name for f in dataclasses.fields(ServerBehaviour)]
_FAULT_KEYS = [f.name for f in dataclasses.fields(Faults)]


def _check_servers(c: _Checker, data: Any, where: str, base: ServerBehaviour) -> ServerBehaviour:
    data = c.mapping(data, where)
    c.known_keys(data, _SERVER_KEYS, where)
    changes: dict[str, Any] = {}
    for key in ("boot_seconds", "delete_seconds"):
        if key in data:
            changes[key] = c.seconds_range(data[key], f"{where}.{key}", getattr(base, key))
    if "error_boot_share" in data:
        changes["error_boot_share"] = c.number(data["error_boot_share"],
                                               f"{where}.error_boot_share", maximum=1.0)
    if "error_boot_fault" in data:
        changes["error_boot_fault"] = c.string(data["error_boot_fault"],
                                               f"{where}.error_boot_fault", base.error_boot_fault)
    if "ports_per_server" in data:
        changes["ports_per_server"] = c.integer(data["ports_per_server"],
                                                f"{where}.ports_per_server", default=1)
    if "floating_ip" in data:
        changes["floating_ip"] = c.boolean(data["floating_ip"], f"{where}.floating_ip")
    if "leak_port_share" in data:
        changes["leak_port_share"] = c.number(data["leak_port_share"],
                                              f"{where}.leak_port_share", maximum=1.0)
    if "network_layout" in data:
        layout = data["network_layout"]
        if layout not in NETWORK_LAYOUTS:
            c.error(f"{where}.network_layout",
                    f"must be one of {', '.join(NETWORK_LAYOUTS)}, got {layout!r}")
        else:
            changes["network_layout"] = layout
    return dataclasses.replace(base, **changes)


def check_servers(data: Any, base: ServerBehaviour, source: str = "servers") -> ServerBehaviour:
    c = _Checker(source)
    out = _check_servers(c, data, "", base)
    c.raise_if_any()
    return out


def _check_faults(c: _Checker, data: Any, where: str, base: Faults) -> Faults:
    data = c.mapping(data, where)
    c.known_keys(data, _FAULT_KEYS, where)
    changes: dict[str, Any] = {}
    if "latency_seconds" in data:
        changes["latency_seconds"] = c.seconds_range(data["latency_seconds"],
                                                     f"{where}.latency_seconds",
                                                     base.latency_seconds)
    for key in ("error_500_rate", "error_503_rate", "error_429_rate", "slow_create_share",
                "down_cell_share"):
        if key in data:
            changes[key] = c.number(data[key], f"{where}.{key}", maximum=1.0)
    for key in ("retry_after_seconds", "overload_seconds"):
        if key in data:
            changes[key] = c.number(data[key], f"{where}.{key}")
    if "overload_503_factor" in data:
        changes["overload_503_factor"] = c.number(data["overload_503_factor"],
                                                  f"{where}.overload_503_factor", minimum=1.0)
    for key in ("capacity", "down_cell_lists"):
        if key in data:
            changes[key] = c.integer(data[key], f"{where}.{key}")
    if "hang" in data:
        changes["hang"] = c.boolean(data["hang"], f"{where}.hang")
    if "hang_seconds" in data:
        value = data["hang_seconds"]
        changes["hang_seconds"] = None if value is None else \
            c.number(value, f"{where}.hang_seconds")
    if "slow_create_seconds" in data:
        changes["slow_create_seconds"] = c.number(data["slow_create_seconds"],
                                                  f"{where}.slow_create_seconds")
    if "match" in data:
        value = data["match"]
        if value is None or value == "":
            changes["match"] = None
        elif not isinstance(value, str):
            c.error(f"{where}.match", f"must be a regular expression string, got {value!r}")
        else:
            try:
                re.compile(value)
                changes["match"] = value
            except re.error as e:
                c.error(f"{where}.match", f"is not a valid regular expression: {e}")
    out = dataclasses.replace(base, **changes)
    if out.error_500_rate + out.error_503_rate > 1.0:
        c.error(where or "faults", "error_500_rate + error_503_rate must not exceed 1")
    return out


def check_faults(data: Any, base: Faults, source: str = "faults") -> Faults:
    c = _Checker(source)
    out = _check_faults(c, data, "", base)
    c.raise_if_any()
    return out


def _named_list(c: _Checker, data: Any, where: str) -> list[tuple[str, dict]]:
    if data is None:
        return []
    if not isinstance(data, list):
        c.error(where, f"expected a list, got {type(data).__name__}")
        return []
    out = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        item_where = f"{where}[{i}]"
        if not isinstance(item, dict):
            c.error(item_where, f"expected a mapping, got {type(item).__name__}")
            continue
        name = c.string(item.get("name"), f"{item_where}.name")
        if name in seen:
            c.error(f"{item_where}.name", f"{name!r} appears twice in {where}")
        seen.add(name)
        out.append((item_where, item))
    return out


def _check_projects(c: _Checker, data: Any) -> tuple[ProjectConfig, ...]:
    if data is None:
        data = [{"name": "ci", "users": [{"name": "nodepool", "password": "nodepool-secret"}]}]
    projects = []
    passwords: dict[str, str] = {}
    for where, item in _named_list(c, data, "projects"):
        c.known_keys(item, ["name", "id", "users", "limits"], where)
        name = str(item.get("name"))
        pid = c.string(item.get("id", stable_id("project", name)), f"{where}.id")
        users = []
        user_items = item.get("users")
        if not isinstance(user_items, list) or not user_items:
            c.error(f"{where}.users", "needs at least one user: [{name: ..., password: ...}]")
            user_items = []
        for j, user in enumerate(user_items):
            uwhere = f"{where}.users[{j}]"
            if not isinstance(user, dict):
                c.error(uwhere, "expected a mapping with name and password")
                continue
            c.known_keys(user, ["name", "password"], uwhere)
            uname = c.string(user.get("name"), f"{uwhere}.name")
            password = c.string(user.get("password"), f"{uwhere}.password")
            if passwords.setdefault(uname, password) != password:
                c.error(f"{uwhere}.password", f"user {uname!r} is in several projects "
                                              "with different passwords; use one password")
            users.append(UserConfig(uname, password, stable_id("user", uname)))
        limits = _check_limits(c, item.get("limits"), f"{where}.limits", DEFAULT_LIMITS)
        projects.append(ProjectConfig(name, pid, tuple(users), limits))
    if not projects and not c.problems:
        c.error("projects", "needs at least one project")
    return tuple(projects)


def _check_flavors(c: _Checker, data: Any) -> tuple[FlavorConfig, ...]:
    if data is None:
        data = [{"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
                {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
                {"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
                {"id": "4", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80}]
    flavors = []
    ids: set[str] = set()
    for where, item in _named_list(c, data, "flavors"):
        c.known_keys(item, ["id", "name", "vcpus", "ram", "disk"], where)
        name = str(item.get("name"))
        fid = c.string(item.get("id", stable_uuid("flavor", name)), f"{where}.id")
        if fid in ids:
            c.error(f"{where}.id", f"{fid!r} is used by two flavors")
        ids.add(fid)
        flavors.append(FlavorConfig(
            fid, name,
            c.integer(item.get("vcpus"), f"{where}.vcpus", minimum=1, default=1),
            c.integer(item.get("ram"), f"{where}.ram", minimum=1, default=1),
            c.integer(item.get("disk", 0), f"{where}.disk")))
    return tuple(flavors)


def _check_images(c: _Checker, data: Any) -> tuple[ImageConfig, ...]:
    if data is None:
        data = [{"name": "cirros"}, {"name": "debian-bookworm", "min_disk": 4}]
    images = []
    for where, item in _named_list(c, data, "images"):
        c.known_keys(item, ["id", "name", "status", "min_disk", "min_ram", "size"], where)
        name = str(item.get("name"))
        status = c.string(item.get("status", "active"), f"{where}.status")
        images.append(ImageConfig(
            c.string(item.get("id", stable_uuid("image", name)), f"{where}.id"), name, status,
            c.integer(item.get("min_disk", 0), f"{where}.min_disk"),
            c.integer(item.get("min_ram", 0), f"{where}.min_ram"),
            c.integer(item.get("size", 16338944), f"{where}.size")))
    return tuple(images)


def _check_networks(c: _Checker, data: Any) -> tuple[NetworkConfig, ...]:
    if data is None:
        data = [{"name": "private", "cidr": "10.0.0.0/16"},
                {"name": "public", "cidr": "172.24.4.0/24", "external": True}]
    networks = []
    for where, item in _named_list(c, data, "networks"):
        c.known_keys(item, ["id", "name", "cidr", "external"], where)
        name = str(item.get("name"))
        cidr = c.string(item.get("cidr"), f"{where}.cidr", "10.0.0.0/24")
        try:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != 4 or net.num_addresses < 8:
                c.error(f"{where}.cidr", f"must be an IPv4 network of /29 or larger, got {cidr}")
        except ValueError:
            c.error(f"{where}.cidr", f"is not a network such as 10.0.0.0/24: {cidr!r}")
        networks.append(NetworkConfig(
            c.string(item.get("id", stable_uuid("network", name)), f"{where}.id"), name, cidr,
            stable_uuid("subnet", name),
            c.boolean(item.get("external", False), f"{where}.external")))
    if networks and all(n.external for n in networks):
        c.error("networks", "needs at least one network that is not external for servers")
    return tuple(networks)


def _string_list(c: _Checker, data: Any, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if data is None:
        return default
    if not isinstance(data, list) or not all(isinstance(x, str) and x for x in data):
        c.error(where, f"expected a list of names, got {data!r}")
        return default
    return tuple(data)


_TOP_KEYS = ["host", "port", "region", "seed", "token_ttl_seconds", "max_page_size",
             "request_log", "transition_log", "projects", "flavors", "images", "networks",
             "availability_zones", "keypairs", "servers", "faults"]


def config_from_dict(data: Any, source: str = "<config>") -> FakeCloudConfig:
    """Build and validate a configuration; missing sections get the defaults."""
    c = _Checker(source)
    data = c.mapping(data, "")
    c.known_keys(data, _TOP_KEYS, "")
    kwargs: dict[str, Any] = {"source": source}
    if "host" in data:
        kwargs["host"] = c.string(data["host"], "host", "127.0.0.1")
    if data.get("port") is not None:
        port = data["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            c.error("port", f"must be a TCP port 0-65535 (0 picks a free one), got {port!r}")
        else:
            kwargs["port"] = port
    if "region" in data:
        kwargs["region"] = c.string(data["region"], "region", "RegionOne")
    if data.get("seed") is not None:
        kwargs["seed"] = c.integer(data["seed"], "seed")
    if "token_ttl_seconds" in data:
        kwargs["token_ttl_seconds"] = c.integer(data["token_ttl_seconds"],
                                                "token_ttl_seconds", minimum=1, default=86400)
    if "max_page_size" in data:
        kwargs["max_page_size"] = c.integer(data["max_page_size"], "max_page_size",
                                            minimum=1, default=1000)
    if data.get("request_log") is not None:
        kwargs["request_log"] = c.string(data["request_log"], "request_log")
    if data.get("transition_log") is not None:
        kwargs["transition_log"] = c.string(data["transition_log"], "transition_log")
    kwargs["projects"] = _check_projects(c, data.get("projects"))
    kwargs["flavors"] = _check_flavors(c, data.get("flavors"))
    kwargs["images"] = _check_images(c, data.get("images"))
    kwargs["networks"] = _check_networks(c, data.get("networks"))
    kwargs["availability_zones"] = _string_list(c, data.get("availability_zones"),
                                                "availability_zones", ("nova",))
    kwargs["keypairs"] = _string_list(c, data.get("keypairs"), "keypairs", ())
    kwargs["servers"] = _check_servers(c, data.get("servers"), "servers", ServerBehaviour())
    kwargs["faults"] = _check_faults(c, data.get("faults"), "faults", Faults())
    c.raise_if_any()
    return FakeCloudConfig(**kwargs)


def load_config(path: str) -> FakeCloudConfig:
    """Read a YAML file; problems name the file and the key."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise FakeCloudConfigError([f"{path}: cannot read the file: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise FakeCloudConfigError(
            [f"{path}: {where}not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    return config_from_dict(data if data is not None else {}, source=path)


def as_config(config: FakeCloudConfig | dict | str | None) -> FakeCloudConfig:
    """Accept a config object, a dict in the YAML layout, a file path or None."""
    if config is None:
        return config_from_dict({}, "<defaults>")
    if isinstance(config, FakeCloudConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config, "<dict>")
    if isinstance(config, str):
        return load_config(config)
    raise TypeError(f"config must be a FakeCloudConfig, dict, path or None, not {type(config)}")


__all__ = ["FakeCloudConfig", "FakeCloudConfigError", "ProjectConfig", "UserConfig",
           "FlavorConfig", "ImageConfig", "NetworkConfig", "ServerBehaviour", "Faults",
           "Range", "LIMIT_KEYS", "DEFAULT_LIMITS", "config_from_dict", "load_config",
           "as_config", "check_limits", "check_servers", "check_faults", "stable_id",
           "stable_uuid"]
