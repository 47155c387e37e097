"""Neutron v2.0: networks, subnets, ports and floating IPs with query filters.

Filters work like neutron's: every query parameter except paging and
``fields`` must name an attribute of the resource (anything else is a 400,
as with neutron's filter validation), repeated parameters are ORed.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable

from nodepool.fakecloud import quota
from nodepool.fakecloud.config import NetworkConfig, stable_id, stable_uuid
from nodepool.fakecloud.errors import api_error
from nodepool.fakecloud.model import (BadRequest, Conflict, FloatingIP, NetworkState, NotFound,
                                      Port, iso, utcnow)
from nodepool.fakecloud.web import ApiError, Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

PREFIX = "/network/v2.0"
CREATED = "2025-01-01T00:00:00Z"
ADMIN_PROJECT = stable_id("project", "admin")
SECURITY_GROUP = stable_uuid("security-group", "default")
ROUTER = stable_uuid("router", "router1")
_PAGING = {"limit", "marker", "sort_key", "sort_dir", "page_reverse", "fields"}
EXTENSIONS = ["external-net", "router", "floatingip-pools", "quotas", "security-group",
              "port-security", "binding", "extra_dhcp_opt", "allowed-address-pairs",
              "standard-attr-description", "standard-attr-timestamp", "standard-attr-tag",
              "availability_zone", "network_availability_zone", "subnet_allocation",
              "fip-port-details", "filter-validation"]


def _err(status: int, message: str, kind: str | None = None,
         q: tuple[str, ...] = ()) -> ApiError:
    return api_error("network", status, message, kind, q)


def render_network(n: NetworkState, shared: bool | None = None) -> dict:
    c = n.config
    if shared is None:
        shared = not c.external
    return {"id": c.id, "name": c.name, "status": "ACTIVE", "admin_state_up": True,
            "subnets": [c.subnet_id], "shared": shared, "router:external": c.external,
            "provider:physical_network": None, "mtu": 1450, "project_id": ADMIN_PROJECT,
            "tenant_id": ADMIN_PROJECT, "port_security_enabled": True,
            "availability_zones": ["nova"], "availability_zone_hints": [],
            "ipv4_address_scope": None, "ipv6_address_scope": None, "description": "",
            "created_at": CREATED, "updated_at": CREATED, "revision_number": 1, "tags": []}


def render_subnet(n: NetworkState) -> dict:
    c = n.config
    hosts = n.net.num_addresses
    return {"id": c.subnet_id, "name": f"{c.name}-subnet", "network_id": c.id,
            "cidr": str(n.net), "gateway_ip": n.gateway, "ip_version": 4, "enable_dhcp": True,
            "allocation_pools": [{"start": str(n.net.network_address + 2),
                                  "end": str(n.net.network_address + hosts - 2)}],
            "dns_nameservers": [], "host_routes": [], "project_id": ADMIN_PROJECT,
            "tenant_id": ADMIN_PROJECT, "ipv6_address_mode": None, "ipv6_ra_mode": None,
            "subnetpool_id": None, "service_types": [], "description": "",
            "created_at": CREATED, "updated_at": CREATED, "revision_number": 0, "tags": []}


def render_port(p: Port) -> dict:
    return {"id": p.id, "name": "", "network_id": p.network_id, "project_id": p.project_id,
            "tenant_id": p.project_id, "mac_address": p.mac, "admin_state_up": True,
            "status": p.status, "device_id": p.device_id, "device_owner": p.device_owner,
            "fixed_ips": [{"subnet_id": p.subnet_id, "ip_address": p.ip}],
            "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "security_groups": [SECURITY_GROUP], "port_security_enabled": True,
            "binding:vnic_type": "normal", "description": "", "created_at": iso(p.created),
            "updated_at": iso(p.created), "revision_number": 1, "tags": []}


def render_fip(f: FloatingIP) -> dict:
    return {"id": f.id, "floating_ip_address": f.address, "floating_network_id": f.network_id,
            "fixed_ip_address": f.fixed_ip, "port_id": f.port_id,
            "router_id": ROUTER if f.port_id else None, "status": f.status,
            "project_id": f.project_id, "tenant_id": f.project_id, "description": "",
            "dns_domain": "", "dns_name": "", "qos_policy_id": None,
            "created_at": iso(f.created), "updated_at": iso(f.created),
            "revision_number": 0, "tags": []}


def _known_keys() -> tuple[set[str], ...]:
    """Attribute names per resource, from rendering a throwaway record."""
    net = NetworkState(NetworkConfig("n", "n", "10.0.0.0/24", "s"),
                       ipaddress.ip_network("10.0.0.0/24"), "10.0.0.1")
    port = Port("", "", "", "", "", "", "", "", "", utcnow())
    fip = FloatingIP("", "", "", "", None, None, utcnow())
    return (set(render_network(net)), set(render_subnet(net)), set(render_port(port)),
            set(render_fip(fip)))


NETWORK_KEYS, SUBNET_KEYS, PORT_KEYS, FIP_KEYS = _known_keys()


def _value_matches(actual: Any, wanted: str) -> bool:
    if actual is None:
        return wanted in ("", "None", "null")
    if isinstance(actual, bool):
        return wanted.lower() == str(actual).lower()
    return str(actual) == wanted


def _fixed_ips_match(port: dict, wanted: str) -> bool:
    key, _, value = wanted.partition("=")
    return any(str(ip.get(key)) == value for ip in port["fixed_ips"])


def filter_items(req: Request, items: list[dict], known: set[str]) -> list[dict]:
    for key, values in req.query.items():
        if key in _PAGING:
            continue
        if key == "fixed_ips" and "mac_address" in known:
            items = [i for i in items if any(_fixed_ips_match(i, v) for v in values)]
            continue
        if key not in known:
            raise _err(400, f"{key} is invalid attribute for filtering", "HTTPBadRequest")
        items = [i for i in items if any(_value_matches(i.get(key), v) for v in values)]
    return items


def page(req: Request, items: list[dict], plural: str) -> dict:
    limit_arg, marker = req.arg("limit"), req.arg("marker")
    body: dict[str, Any] = {}
    if marker is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(marker) + 1:] if marker in ids else []
    if limit_arg is not None and limit_arg.isdigit() and int(limit_arg) > 0:
        limit = int(limit_arg)
        more = len(items) > limit
        items = items[:limit]
        if more:
            body[f"{plural}_links"] = [{"rel": "next",
                                        "href": req.url_with(marker=items[-1]["id"])}]
    fields = req.args("fields")
    if fields:
        items = [{k: v for k, v in i.items() if k in fields} for i in items]
    body[plural] = items
    return body


def register(router: Router, cloud: "FakeCloud") -> None:
    state = cloud.state

    def listing(plural: str, known: set[str], source: Callable[[Request], list[dict]]):
        def handler(req: Request) -> Response:
            with state.lock:
                items = source(req)
            return Response(200, page(req, filter_items(req, items, known), plural))
        return handler

    def shared(n: NetworkState) -> bool:
        """Every network belongs to the admin project.  Projects boot on the
        internal ones, and on the external one in the provider layout: those
        are shared.  The external network of the private layout only gives
        floating IPs, as on most clouds: not shared."""
        return not n.config.external or state.behaviour.network_layout == "provider"

    def subnet_visible(n: NetworkState) -> bool:
        # Neutron's default policy: a project reads its own subnets and those
        # of shared networks.  Clients rely on it: openstacksdk takes a network
        # with a visible subnet that has a gateway for the NAT destination.
        return shared(n)

    def networks(req: Request) -> list[dict]:
        return [render_network(n, shared(n)) for n in state.networks.values()]

    def subnets(req: Request) -> list[dict]:
        return [render_subnet(n) for n in state.networks.values() if subnet_visible(n)]

    def ports(req: Request) -> list[dict]:
        return [render_port(p) for p in state.project_ports(req.project.id)]

    def fips(req: Request) -> list[dict]:
        return [render_fip(f) for f in state.project_floating_ips(req.project.id)]

    def get_network(req: Request) -> Response:
        n = state.networks.get(req.params["network_id"])
        if n is None:
            raise _err(404, f"Network {req.params['network_id']} could not be found.",
                       "NetworkNotFound")
        return Response(200, {"network": render_network(n, shared(n))})

    def get_subnet(req: Request) -> Response:
        for n in state.networks.values():
            if n.config.subnet_id == req.params["subnet_id"] and subnet_visible(n):
                return Response(200, {"subnet": render_subnet(n)})
        raise _err(404, f"Subnet {req.params['subnet_id']} could not be found.",
                   "SubnetNotFound")

    def get_port(req: Request) -> Response:
        try:
            with state.lock:
                return Response(200, {"port": render_port(
                    state.get_port(req.project.id, req.params["port_id"]))})
        except NotFound as e:
            raise _err(404, str(e), "PortNotFound") from None

    def delete_port(req: Request) -> Response:
        try:
            state.delete_port(req.project.id, req.params["port_id"])
        except NotFound as e:
            raise _err(404, str(e), "PortNotFound") from None
        return Response(204)

    def create_fip(req: Request) -> Response:
        body = req.json(lambda m: _err(400, m))
        f = body.get("floatingip") if isinstance(body, dict) else None
        if not isinstance(f, dict) or not f.get("floating_network_id"):
            raise _err(400, "Invalid input for operation: floating_network_id is required.")
        try:
            fip = state.create_floating_ip(req.project.id, f["floating_network_id"],
                                           f.get("port_id"))
        except quota.QuotaExceeded as e:
            raise _err(409, e.message, "OverQuota", e.overs) from None
        except NotFound as e:
            raise _err(404, str(e), "NotFound") from None
        except BadRequest as e:
            raise _err(400, str(e)) from None
        except Conflict as e:
            raise _err(409, str(e), "IpAddressGenerationFailure") from None
        with state.lock:
            return Response(201, {"floatingip": render_fip(fip)})

    def get_fip(req: Request) -> Response:
        try:
            with state.lock:
                return Response(200, {"floatingip": render_fip(
                    state.get_floating_ip(req.project.id, req.params["floatingip_id"]))})
        except NotFound as e:
            raise _err(404, str(e), "FloatingIPNotFound") from None

    def update_fip(req: Request) -> Response:
        body = req.json(lambda m: _err(400, m))
        f = body.get("floatingip") if isinstance(body, dict) else None
        if not isinstance(f, dict) or "port_id" not in f:
            raise _err(400, "Invalid input: expected {\"floatingip\": {\"port_id\": ...}}.")
        try:
            fip = state.update_floating_ip(req.project.id, req.params["floatingip_id"],
                                           f["port_id"])
        except NotFound as e:
            raise _err(404, str(e), "NotFound") from None
        with state.lock:
            return Response(200, {"floatingip": render_fip(fip)})

    def delete_fip(req: Request) -> Response:
        try:
            state.delete_floating_ip(req.project.id, req.params["floatingip_id"])
        except NotFound as e:
            raise _err(404, str(e), "FloatingIPNotFound") from None
        return Response(204)

    def versions(req: Request) -> Response:
        return Response(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{req.base_url}{PREFIX}/"}]}]})

    def resources(req: Request) -> Response:
        return Response(200, {"resources": [
            {"name": n, "collection": f"{n}s",
             "links": [{"rel": "self", "href": f"{req.base_url}{PREFIX}/{n}s"}]}
            for n in ("network", "subnet", "port", "floatingip")]})

    def extensions(req: Request) -> Response:
        return Response(200, {"extensions": [
            {"alias": a, "name": a, "description": a, "updated": CREATED, "links": []}
            for a in EXTENSIONS]})

    add = router.add
    add("GET", "/network", versions, "network", auth=False)
    add("GET", PREFIX, resources, "network")
    add("GET", f"{PREFIX}/extensions", extensions, "network")
    add("GET", f"{PREFIX}/networks", listing("networks", NETWORK_KEYS, networks), "network")
    add("GET", f"{PREFIX}/networks/{{network_id}}", get_network, "network")
    add("GET", f"{PREFIX}/subnets", listing("subnets", SUBNET_KEYS, subnets), "network")
    add("GET", f"{PREFIX}/subnets/{{subnet_id}}", get_subnet, "network")
    add("GET", f"{PREFIX}/ports", listing("ports", PORT_KEYS, ports), "network")
    add("GET", f"{PREFIX}/ports/{{port_id}}", get_port, "network")
    add("DELETE", f"{PREFIX}/ports/{{port_id}}", delete_port, "network")
    add("GET", f"{PREFIX}/floatingips", listing("floatingips", FIP_KEYS, fips), "network")
    add("POST", f"{PREFIX}/floatingips", create_fip, "network")
    add("GET", f"{PREFIX}/floatingips/{{floatingip_id}}", get_fip, "network")
    add("PUT", f"{PREFIX}/floatingips/{{floatingip_id}}", update_fip, "network")
    add("DELETE", f"{PREFIX}/floatingips/{{floatingip_id}}", delete_fip, "network")
    add("GET", f"{PREFIX}/routers", lambda r: Response(200, {"routers": []}), "network")
    add("GET", f"{PREFIX}/security-groups", lambda r: Response(200, {"security_groups": [
        {"id": SECURITY_GROUP, "name": "default", "description": "Default security group",
         "project_id": r.project.id, "tenant_id": r.project.id,
         "security_group_rules": [], "stateful": True, "tags": []}]}), "network")
