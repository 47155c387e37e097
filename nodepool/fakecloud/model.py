"""The simulated cloud's state: projects, servers, ports, floating IPs, volumes.

No HTTP here.  Time only moves when someone looks: every public method first
applies the boot and delete transitions that are due by the clock (a heap of
timed events), so there is no background thread and no sleeping, and a reader
always sees the state as of "now".

Callers that render records into JSON hold ``lock`` (re-entrant) while doing so.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, cast

from nodepool.fakecloud import quota
from nodepool.fakecloud.config import (LIMIT_KEYS, FakeCloudConfig, FlavorConfig,
                                       NetworkConfig, ProjectConfig, Range, ServerBehaviour,
                                       UserConfig, stable_id)
from nodepool.fakecloud.image_store import ImageStore

FAKE_PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeCloudFakeCloudFakeCloudFakeCloud0000 "
                   "fakecloud")
STATES = ("BUILD", "ACTIVE", "ERROR", "DELETING")


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


class Conflict(Exception):
    pass


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Port:
    id: str
    project_id: str
    network_id: str
    subnet_id: str
    ip: str
    mac: str
    device_id: str
    device_owner: str
    status: str
    created: datetime


@dataclass(eq=False)
class FloatingIP:
    id: str
    project_id: str
    network_id: str
    address: str
    port_id: str | None
    fixed_ip: str | None
    created: datetime

    @property
    def status(self) -> str:
        return "ACTIVE" if self.port_id else "DOWN"


@dataclass(eq=False)
class Volume:
    id: str
    project_id: str
    name: str
    size: int
    status: str
    server_id: str | None
    delete_on_termination: bool
    image_id: str | None
    created: datetime
    attachment_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(eq=False)
class Keypair:
    name: str
    public_key: str
    user_id: str
    created: datetime

    @property
    def fingerprint(self) -> str:
        h = stable_id("keypair", self.public_key)
        return ":".join(h[i:i + 2] for i in range(0, 32, 2))


@dataclass(eq=False)
class Server:
    id: str
    name: str
    project_id: str
    user_id: str
    flavor: FlavorConfig
    image_id: str | None
    metadata: dict[str, str]
    key_name: str | None
    user_data: str | None
    config_drive: bool
    availability_zone: str
    seq: int
    created: datetime
    updated: datetime
    ready_at: float
    will_fail: bool
    status: str = "BUILD"
    vm_state: str = "building"
    task_state: str | None = "spawning"
    power_state: int = 0
    delete_at: float | None = None
    fault: dict | None = None
    launched_at: datetime | None = None
    port_ids: list[str] = field(default_factory=list)
    volume_ids: list[str] = field(default_factory=list)
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    admin_pass: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def state(self) -> str:
        """BUILD, ACTIVE, ERROR, or DELETING while a delete is in progress."""
        return "DELETING" if self.task_state == "deleting" else self.status

    @property
    def host_id(self) -> str:
        if self.status == "BUILD":
            return ""
        return stable_id("host", self.project_id, "fakecloud-compute-1")[:28] + "fc01"


@dataclass
class NetworkState:
    config: NetworkConfig
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: str
    used: set[str] = field(default_factory=set)
    cursor: int = 9

    def allocate(self) -> str:
        hosts = self.net.num_addresses - 2
        for _ in range(hosts):
            self.cursor = self.cursor + 1 if self.cursor + 1 <= hosts else 2
            addr = str(self.net.network_address + self.cursor)
            if addr not in self.used:
                self.used.add(addr)
                return addr
        raise Conflict(f"No more IP addresses available on network {self.config.id}.")

    def release(self, addr: str | None) -> None:
        if addr:
            self.used.discard(addr)


@dataclass
class ProjectState:
    config: ProjectConfig
    limits: dict[str, int]
    peak: dict[str, int] = field(default_factory=lambda: {k: 0 for k in LIMIT_KEYS})

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class ServerRequest:
    """What a POST /servers asked for, already parsed by the compute API."""

    name: str
    flavor_ref: str
    image_ref: str | None
    networks: str | list[dict]
    metadata: dict[str, str]
    key_name: str | None
    user_data: str | None
    config_drive: bool
    availability_zone: str | None
    block_devices: list[dict]
    min_count: int = 1
    max_count: int = 1
    description: str | None = None
    tags: list[str] = field(default_factory=list)


class CloudState:
    def __init__(self, config: FakeCloudConfig, clock: Callable[[], float],
                 seed: int | None = None):
        self.lock = threading.RLock()
        self.config = config
        self.clock = clock
        self.rng = random.Random(seed)
        # Told (kind, server id, when on ``clock``) as a server becomes
        # ACTIVE or ERROR at the end of its boot, or leaves nova's count.
        self.on_transition: Callable[[str, str, float], None] | None = None
        self.behaviour: ServerBehaviour = config.servers
        self.projects = {p.id: ProjectState(p, dict(p.limits)) for p in config.projects}
        self.flavors = {f.id: f for f in config.flavors}
        self.images = ImageStore(config.images, clock, self.lock)
        self.networks: dict[str, NetworkState] = {}
        for n in config.networks:
            net = ipaddress.ip_network(n.cidr, strict=False)
            self.networks[n.id] = NetworkState(n, net, str(net.network_address + 1))
        self.servers: dict[str, Server] = {}
        # The same servers by project, so that a project's list, usage and
        # limits cost O(its servers), not O(every project's): the scale
        # benchmark runs ten projects of hundreds of servers each.
        self.project_servers: dict[str, dict[str, Server]] = {}
        self.ports: dict[str, Port] = {}
        self.floating_ips: dict[str, FloatingIP] = {}
        self.volumes: dict[str, Volume] = {}
        self.keypairs: dict[tuple[str, str], Keypair] = {}
        for p in self.projects.values():
            for name in config.keypairs:
                self.keypairs[(p.id, name)] = Keypair(name, FAKE_PUBLIC_KEY,
                                                      p.config.users[0].id, utcnow())
        self._events: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._mac = 0
        self.servers_created = 0
        self.servers_deleted = 0
        self.boot_errors = 0

    # ---- identity --------------------------------------------------------

    def find_project(self, ref: str | None) -> ProjectState:
        """By id or name; None means the only project (or the first)."""
        if ref is None:
            return next(iter(self.projects.values()))
        for p in self.projects.values():
            if ref in (p.id, p.name):
                return p
        raise NotFound(f"no project {ref!r}; projects: "
                       + ", ".join(p.name for p in self.projects.values()))

    def authenticate(self, user: str | None, user_id: str | None, password: str | None,
                     project: str | None, project_id: str | None
                     ) -> tuple[ProjectState, UserConfig] | None:
        for p in self.projects.values():
            if project is not None and p.name != project:
                continue
            if project_id is not None and p.id != project_id:
                continue
            for u in p.config.users:
                if (user is not None and u.name == user) or \
                        (user_id is not None and u.id == user_id):
                    if u.password == password:
                        return p, u
                    return None
        return None

    # ---- time ------------------------------------------------------------

    def _push(self, when: float, kind: str, server_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, server_id))

    def advance(self) -> None:
        """Apply every boot and delete transition that is due."""
        with self.lock:
            now = self.clock()
            while self._events and self._events[0][0] <= now:
                when, _, kind, server_id = heapq.heappop(self._events)
                server = self.servers.get(server_id)
                if server is None:
                    continue
                if kind == "boot" and server.status == "BUILD" and server.task_state != "deleting":
                    self._finish_boot(server)
                    self._tell(server.status.lower(), server_id, when)
                elif kind == "gone" and server.delete_at == when:
                    self._remove_server(server)
                    self._tell("gone", server_id, when)

    def _tell(self, kind: str, server_id: str, when: float) -> None:
        if self.on_transition is not None:
            self.on_transition(kind, server_id, when)

    def _sample(self, r: Range) -> float:
        return r.low if r.low == r.high else self.rng.uniform(r.low, r.high)

    # ---- usage -----------------------------------------------------------

    def usage(self, project_id: str) -> dict[str, int]:
        """What nova, cinder and neutron count for the project right now."""
        u = {k: 0 for k in LIMIT_KEYS}
        for s in self.project_servers.get(project_id, {}).values():
            u["instances"] += 1
            u["cores"] += s.flavor.vcpus
            u["ram"] += s.flavor.ram
        for v in self.volumes.values():
            if v.project_id == project_id:
                u["volumes"] += 1
                u["gigabytes"] += v.size
        u["ports"] = sum(1 for p in self.ports.values() if p.project_id == project_id)
        u["floating_ips"] = sum(1 for f in self.floating_ips.values()
                                if f.project_id == project_id)
        return u

    def _note_peak(self, project_id: str) -> None:
        project = self.projects[project_id]
        for k, v in self.usage(project_id).items():
            if v > project.peak[k]:
                project.peak[k] = v

    def reset_peaks(self) -> None:
        with self.lock:
            self.advance()
            for p in self.projects.values():
                p.peak = self.usage(p.id)

    def servers_by_state(self, project_id: str | None = None) -> dict[str, int]:
        with self.lock:
            self.advance()
            out = {s: 0 for s in STATES}
            servers = self.servers if project_id is None \
                else self.project_servers.get(project_id, {})
            for s in servers.values():
                out[s.state] += 1
            return out

    # ---- servers ---------------------------------------------------------

    def _default_network(self) -> NetworkState:
        for n in self.networks.values():
            if not n.config.external:
                return n
        raise BadRequest("No network is available to this project.")

    def _external_network(self) -> NetworkState | None:
        for n in self.networks.values():
            if n.config.external:
                return n
        return None

    def _requested_networks(self, req: ServerRequest) -> list[NetworkState]:
        if req.networks == "none":
            return []
        if req.networks == "auto" or not req.networks:
            ext = self._external_network()
            if self.behaviour.network_layout == "provider" and ext is not None:
                return [ext, self._default_network()]
            return [self._default_network()]
        out = []
        for item in cast(list, req.networks):  # not "none"/"auto": a list
            if "port" in item and item["port"]:
                raise BadRequest("Attaching pre-created ports is not simulated by fakecloud; "
                                 "pass a network uuid instead.")
            net_id = item.get("uuid")
            if net_id not in self.networks:
                raise BadRequest(f"Network {net_id} could not be found.")
            out.append(self.networks[net_id])
        return out

    def _new_mac(self) -> str:
        self._mac += 1
        n = self._mac
        return f"fa:16:3e:{(n >> 16) & 0xff:02x}:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"

    def create_servers(self, project_id: str, user_id: str, req: ServerRequest) -> list[Server]:
        """Accept a create the way nova's API does, or raise.

        Raises BadRequest for invalid references and quota.QuotaExceeded for
        the 403 cases (instances/cores/ram, ports, metadata items).
        """
        with self.lock:
            self.advance()
            project = self.projects[project_id]
            flavor = self.flavors.get(req.flavor_ref)
            if flavor is None:
                raise BadRequest(f"Flavor {req.flavor_ref} could not be found.")
            boot_volumes = [b for b in req.block_devices
                            if b.get("destination_type") == "volume"]
            image_id = req.image_ref or None
            if image_id is not None and image_id not in self.images:
                raise BadRequest(f"Image {image_id} could not be found.")
            if image_id is None and not any(str(b.get("boot_index")) == "0"
                                            for b in req.block_devices):
                raise BadRequest("Block Device Mapping is Invalid: Boot sequence for the "
                                 "instance and image/block device mapping combination is "
                                 "not valid.")
            for b in boot_volumes:
                src = b.get("source_type")
                if src in ("image", "blank", "snapshot"):
                    size = b.get("volume_size")
                    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                        raise BadRequest("Block Device Mapping is Invalid: volume_size "
                                         "must be a positive integer.")
                    if src == "image" and b.get("uuid") not in self.images:
                        raise BadRequest(f"Block Device Mapping is Invalid: failed to get "
                                         f"image {b.get('uuid')}.")
                elif src == "volume":
                    vol = self.volumes.get(b.get("uuid", ""))
                    if vol is None or vol.project_id != project_id:
                        raise BadRequest(f"Block Device Mapping is Invalid: failed to get "
                                         f"volume {b.get('uuid')}.")
                    if vol.status != "available":
                        raise BadRequest(f"Block Device Mapping is Invalid: volume "
                                         f"{vol.id} status must be 'available'.")
                else:
                    raise BadRequest(f"Block Device Mapping is Invalid: source_type "
                                     f"{src!r} is not simulated by fakecloud.")
            if req.key_name is not None and (project_id, req.key_name) not in self.keypairs:
                raise BadRequest("Invalid key_name provided.")
            zones = self.config.availability_zones
            zone = req.availability_zone or zones[0]
            if zone not in zones:
                raise BadRequest("The requested availability zone is not available")
            networks = self._requested_networks(req)
            quota.check_metadata(len(req.metadata))
            usage = self.usage(project_id)
            count = quota.check_instances(project.limits, usage, flavor.vcpus, flavor.ram,
                                          req.min_count, req.max_count)
            ports_each = 0 if not networks else max(len(networks),
                                                    self.behaviour.ports_per_server)
            quota.check_ports(project.limits["ports"], usage["ports"], ports_each * count)
            created = []
            for i in range(count):
                name = req.name if count == 1 else f"{req.name}-{i + 1}"
                created.append(self._create_one(project, user_id, req, flavor, image_id,
                                                name, zone, networks, ports_each,
                                                boot_volumes))
            self._note_peak(project_id)
            return created

    def _create_one(self, project: ProjectState, user_id: str, req: ServerRequest,
                    flavor: FlavorConfig, image_id: str | None, name: str, zone: str,
                    networks: list[NetworkState], ports_each: int,
                    boot_volumes: list[dict]) -> Server:
        now = utcnow()
        self._seq += 1
        b = self.behaviour
        server = Server(
            id=str(uuid.uuid4()), name=name, project_id=project.id, user_id=user_id,
            flavor=flavor, image_id=image_id, metadata=dict(req.metadata),
            key_name=req.key_name, user_data=req.user_data, config_drive=req.config_drive,
            availability_zone=zone, seq=self._seq, created=now, updated=now,
            ready_at=self.clock() + self._sample(b.boot_seconds),
            will_fail=b.error_boot_share > 0 and self.rng.random() < b.error_boot_share,
            description=req.description, tags=list(req.tags))
        self.servers[server.id] = server
        self.project_servers.setdefault(project.id, {})[server.id] = server
        self.servers_created += 1
        try:
            extra = networks[-1] if self.behaviour.network_layout == "provider" \
                else networks[0] if networks else None
            for i in range(ports_each):
                net = networks[i] if i < len(networks) else extra
                port = Port(str(uuid.uuid4()), project.id, net.config.id, net.config.subnet_id,
                            net.allocate(), self._new_mac(), server.id, f"compute:{zone}",
                            "DOWN", now)
                self.ports[port.id] = port
                server.port_ids.append(port.id)
        except Conflict:
            # Like nova: the create was accepted, the build fails on the network.
            self._fail_boot(server, f"Build of instance {server.id} aborted: Failed to "
                                    "allocate the network(s), not rescheduling.")
            return server
        volume_fault = None
        new_volumes = [v for v in boot_volumes if v.get("source_type") != "volume"]
        if new_volumes:
            usage = self.usage(project.id)
            volume_fault = quota.volume_fault(project.limits, usage, len(new_volumes),
                                              sum(v["volume_size"] for v in new_volumes))
        if volume_fault is None:
            for bdm in boot_volumes:
                if bdm.get("source_type") == "volume":
                    vol = self.volumes[bdm["uuid"]]
                    vol.status, vol.server_id = "in-use", server.id
                    vol.delete_on_termination = bool(bdm.get("delete_on_termination"))
                else:
                    vol = Volume(str(uuid.uuid4()), project.id, "", bdm["volume_size"],
                                 "creating", server.id,
                                 bool(bdm.get("delete_on_termination")),
                                 bdm.get("uuid") if bdm.get("source_type") == "image"
                                 else None, now)
                    self.volumes[vol.id] = vol
                server.volume_ids.append(vol.id)
            self._push(server.ready_at, "boot", server.id)
        else:
            self._fail_boot(server, f"Build of instance {server.id} aborted: {volume_fault}")
        return server

    def _finish_boot(self, server: Server) -> None:
        if server.will_fail:
            self._fail_boot(server, self.behaviour.error_boot_fault)
            return
        server.status, server.vm_state, server.task_state = "ACTIVE", "active", None
        server.power_state = 1
        server.updated = server.launched_at = utcnow()
        for pid in server.port_ids:
            self.ports[pid].status = "ACTIVE"
        for vid in server.volume_ids:
            self.volumes[vid].status = "in-use"
        if self.behaviour.floating_ip and server.port_ids:
            ext = self._external_network()
            limit = self.projects[server.project_id].limits["floating_ips"]
            used = sum(1 for f in self.floating_ips.values()
                       if f.project_id == server.project_id)
            port = self.ports[server.port_ids[0]]
            if ext is not None and port.network_id != ext.config.id \
                    and not quota.floating_ip_over(limit, used):
                try:
                    self._new_floating_ip(server.project_id, ext, port)
                except Conflict:
                    return  # external network full: the server stays without one
                self._note_peak(server.project_id)

    def _fail_boot(self, server: Server, message: str) -> None:
        """Scheduling or build failure: nova frees the network, keeps the record."""
        self.boot_errors += 1
        server.status, server.vm_state, server.task_state = "ERROR", "error", None
        server.updated = utcnow()
        server.fault = {"code": 500, "message": message, "created": iso(server.updated)}
        for pid in server.port_ids:
            self._delete_port(pid)
        server.port_ids = []

    def _delete_port(self, port_id: str) -> None:
        port = self.ports.pop(port_id, None)
        if port is None:
            return
        self.networks[port.network_id].release(port.ip)
        for fip in self.floating_ips.values():
            if fip.port_id == port_id:
                fip.port_id = fip.fixed_ip = None

    def _remove_server(self, server: Server) -> None:
        share = self.behaviour.leak_port_share
        if share > 0 and self.rng.random() < share:
            for pid in server.port_ids:
                self.ports[pid].status = "DOWN"   # left behind, still bound to the id
        else:
            for pid in server.port_ids:
                self._delete_port(pid)
        for vid in server.volume_ids:
            vol = self.volumes.get(vid)
            if vol is None:
                continue
            if vol.delete_on_termination:
                del self.volumes[vid]
            else:
                vol.status, vol.server_id = "available", None
        del self.servers[server.id]
        mine = self.project_servers.get(server.project_id)
        if mine is not None:
            mine.pop(server.id, None)
        self.servers_deleted += 1

    def get_server(self, project_id: str, server_id: str) -> Server:
        with self.lock:
            self.advance()
            s = self.servers.get(server_id)
            if s is None or s.project_id != project_id:
                raise NotFound(f"Instance {server_id} could not be found.")
            return s

    def list_servers(self, project_id: str, name: str | None = None,
                     statuses: list[str] | None = None,
                     other: dict[str, str] | None = None) -> list[Server]:
        """Newest first, like nova's default sort (created_at desc)."""
        with self.lock:
            self.advance()
            pattern = None
            if name is not None:
                try:
                    pattern = re.compile(name)
                except re.error:
                    pattern = re.compile(re.escape(name))
            out = []
            for s in self.project_servers.get(project_id, {}).values():
                if pattern is not None and not pattern.search(s.name):
                    continue
                if statuses and s.status not in statuses:
                    continue
                if other and not _matches_server(s, other):
                    continue
                out.append(s)
            out.sort(key=lambda s: s.seq, reverse=True)
            return out

    def delete_server(self, project_id: str, server_id: str) -> None:
        with self.lock:
            server = self.get_server(project_id, server_id)
            if server.task_state == "deleting":
                return
            server.task_state = "deleting"
            server.updated = utcnow()
            server.delete_at = self.clock() + self._sample(self.behaviour.delete_seconds)
            self._push(server.delete_at, "gone", server.id)

    def fips_by_port(self) -> dict[str, list[FloatingIP]]:
        """Floating IPs by the port they are bound to: built once for a list
        of servers, instead of a scan of every floating IP for each port."""
        out: dict[str, list[FloatingIP]] = {}
        for fip in self.floating_ips.values():
            if fip.port_id is not None:
                out.setdefault(fip.port_id, []).append(fip)
        return out

    def server_addresses(self, server: Server,
                         fips: dict[str, list[FloatingIP]] | None = None
                         ) -> dict[str, list[dict]]:
        """``fips``: ``fips_by_port()``, when rendering many servers."""
        if fips is None:
            fips = self.fips_by_port()
        out: dict[str, list[dict]] = {}
        for pid in server.port_ids:
            port = self.ports.get(pid)
            if port is None:
                continue
            net = self.networks[port.network_id].config.name
            out.setdefault(net, []).append({
                "version": 4, "addr": port.ip, "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": port.mac})
            for fip in fips.get(pid, ()):
                out[net].append({"version": 4, "addr": fip.address,
                                 "OS-EXT-IPS:type": "floating",
                                 "OS-EXT-IPS-MAC:mac_addr": port.mac})
        return out

    # ---- network ---------------------------------------------------------

    def _new_floating_ip(self, project_id: str, net: NetworkState,
                         port: Port | None) -> FloatingIP:
        fip = FloatingIP(str(uuid.uuid4()), project_id, net.config.id, net.allocate(),
                         port.id if port else None, port.ip if port else None, utcnow())
        self.floating_ips[fip.id] = fip
        return fip

    def create_floating_ip(self, project_id: str, network_id: str,
                           port_id: str | None) -> FloatingIP:
        with self.lock:
            self.advance()
            net = self.networks.get(network_id)
            if net is None:
                raise NotFound(f"Network {network_id} could not be found.")
            if not net.config.external:
                raise BadRequest(f"Bad floatingip request: Network {network_id} is not a "
                                 "valid external network.")
            port = self._port_for_fip(project_id, port_id)
            if port is not None and self.networks[port.network_id].config.external:
                # Like neutron: a port on an external network is reached
                # directly; there is no router to NAT for it.
                raise BadRequest(f"Bad floatingip request: port {port.id} is on external "
                                 f"network {port.network_id}; it needs no floating IP.")
            project = self.projects[project_id]
            used = self.usage(project_id)["floating_ips"]
            if quota.floating_ip_over(project.limits["floating_ips"], used):
                raise quota.QuotaExceeded("Quota exceeded for resources: ['floatingip'].",
                                          ("floating_ips",))
            fip = self._new_floating_ip(project_id, net, port)
            self._note_peak(project_id)
            return fip

    def _port_for_fip(self, project_id: str, port_id: str | None) -> Port | None:
        if port_id is None:
            return None
        port = self.ports.get(port_id)
        if port is None or port.project_id != project_id:
            raise NotFound(f"Port {port_id} could not be found.")
        return port

    def update_floating_ip(self, project_id: str, fip_id: str,
                           port_id: str | None) -> FloatingIP:
        with self.lock:
            fip = self.get_floating_ip(project_id, fip_id)
            port = self._port_for_fip(project_id, port_id)
            fip.port_id = port.id if port else None
            fip.fixed_ip = port.ip if port else None
            return fip

    def get_floating_ip(self, project_id: str, fip_id: str) -> FloatingIP:
        with self.lock:
            self.advance()
            fip = self.floating_ips.get(fip_id)
            if fip is None or fip.project_id != project_id:
                raise NotFound(f"Floating IP {fip_id} could not be found")
            return fip

    def delete_floating_ip(self, project_id: str, fip_id: str) -> None:
        with self.lock:
            fip = self.get_floating_ip(project_id, fip_id)
            self.networks[fip.network_id].release(fip.address)
            del self.floating_ips[fip.id]

    def get_port(self, project_id: str, port_id: str) -> Port:
        with self.lock:
            self.advance()
            port = self.ports.get(port_id)
            if port is None or port.project_id != project_id:
                raise NotFound(f"Port {port_id} could not be found.")
            return port

    def delete_port(self, project_id: str, port_id: str) -> None:
        with self.lock:
            port = self.get_port(project_id, port_id)
            server = self.servers.get(port.device_id)
            if server is not None:
                server.port_ids = [p for p in server.port_ids if p != port_id]
            self._delete_port(port_id)

    def project_ports(self, project_id: str) -> list[Port]:
        with self.lock:
            self.advance()
            return [p for p in self.ports.values() if p.project_id == project_id]

    def project_floating_ips(self, project_id: str) -> list[FloatingIP]:
        with self.lock:
            self.advance()
            return [f for f in self.floating_ips.values() if f.project_id == project_id]

    # ---- volumes ---------------------------------------------------------

    def project_volumes(self, project_id: str) -> list[Volume]:
        with self.lock:
            self.advance()
            return [v for v in self.volumes.values() if v.project_id == project_id]

    def get_volume(self, project_id: str, volume_id: str) -> Volume:
        with self.lock:
            self.advance()
            vol = self.volumes.get(volume_id)
            if vol is None or vol.project_id != project_id:
                raise NotFound(f"Volume {volume_id} could not be found.")
            return vol

    def delete_volume(self, project_id: str, volume_id: str) -> None:
        with self.lock:
            vol = self.get_volume(project_id, volume_id)
            if vol.server_id is not None:
                raise BadRequest("Invalid volume: Volume status must be available or error "
                                 "or error_restoring or error_extending or error_managing "
                                 "and must not be migrating, attached, belong to a group, "
                                 "have snapshots, awaiting a transfer, or be disassociated "
                                 "from snapshots after volume transfer.")
            del self.volumes[vol.id]

    # ---- keypairs --------------------------------------------------------

    def project_keypairs(self, project_id: str) -> list[Keypair]:
        with self.lock:
            return [k for (pid, _), k in self.keypairs.items() if pid == project_id]

    def get_keypair(self, project_id: str, name: str) -> Keypair:
        with self.lock:
            kp = self.keypairs.get((project_id, name))
            if kp is None:
                raise NotFound(f"Keypair {name} not found for user")
            return kp

    def create_keypair(self, project_id: str, user_id: str, name: str,
                       public_key: str | None) -> Keypair:
        with self.lock:
            if (project_id, name) in self.keypairs:
                raise Conflict(f"Key pair '{name}' already exists.")
            kp = Keypair(name, public_key or FAKE_PUBLIC_KEY, user_id, utcnow())
            self.keypairs[(project_id, name)] = kp
            return kp

    def delete_keypair(self, project_id: str, name: str) -> None:
        with self.lock:
            self.get_keypair(project_id, name)
            del self.keypairs[(project_id, name)]

    # ---- admin -----------------------------------------------------------

    def set_limits(self, project_id: str, limits: dict[str, int]) -> None:
        with self.lock:
            self.projects[project_id].limits = dict(limits)

    def set_behaviour(self, behaviour: ServerBehaviour) -> None:
        with self.lock:
            self.behaviour = behaviour

    def wipe(self) -> None:
        """Forget every server, port, floating IP and volume at once."""
        with self.lock:
            for s in list(self.servers.values()):
                self._remove_server(s)
            for fip in list(self.floating_ips.values()):
                self.networks[fip.network_id].release(fip.address)
            self.floating_ips.clear()
            self.volumes.clear()
            self._events.clear()

    def iter_servers(self, project_id: str | None = None) -> Iterator[Server]:
        for s in sorted(self.servers.values(), key=lambda s: s.seq):
            if project_id is None or s.project_id == project_id:
                yield s


def _matches_server(s: Server, filters: dict[str, str]) -> bool:
    """The few other nova list filters a launcher might send."""
    checks: dict[str, Any] = {
        "flavor": s.flavor.id, "image": s.image_id or "",
        "availability_zone": s.availability_zone, "key_name": s.key_name or "",
    }
    for key, value in filters.items():
        if key in checks and str(checks[key]) != value:
            return False
    return True
