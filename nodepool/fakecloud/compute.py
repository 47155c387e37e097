"""Nova v2.1 (microversions 2.1 to 2.96): servers, flavors, limits, zones, keypairs."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from nodepool.fakecloud import quota
from nodepool.fakecloud.config import FlavorConfig
from nodepool.fakecloud.errors import api_error
from nodepool.fakecloud.model import (BadRequest, Conflict, Keypair, NotFound, Server,
                                      ServerRequest, iso)
from nodepool.fakecloud.web import ApiError, Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
PREFIX = "/compute/v2.1"
# Query parameters that are paging or sorting, not filters.
_NOT_FILTERS = {"limit", "marker", "sort_key", "sort_dir", "all_tenants", "changes-since",
                "changes-before", "deleted", "name", "status", "project_id", "tenant_id"}


def _err(status: int, message: str, q: tuple[str, ...] = ()) -> ApiError:
    return api_error("compute", status, message, quota=q)


def microversion(req: Request) -> tuple[int, int]:
    value = None
    header = req.headers.get("OpenStack-API-Version")
    if header:
        parts = header.split()
        if len(parts) == 2 and parts[0].lower() == "compute":
            value = parts[1]
    if value is None:
        value = req.headers.get("X-OpenStack-Nova-API-Version")
    if value is None:
        return MIN_VERSION
    if value == "latest":
        return MAX_VERSION
    m = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
    if m is None:
        raise _err(400, f"Invalid format for API version {value!r}: expected X.Y")
    v = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= v <= MAX_VERSION:
        raise _err(406, f"Version {value} is not supported by the API. Minimum is 2.1 and "
                        f"maximum is 2.96.")
    return v


def _version_headers(v: tuple[int, int]) -> dict[str, str]:
    s = f"{v[0]}.{v[1]}"
    return {"OpenStack-API-Version": f"compute {s}", "X-OpenStack-Nova-API-Version": s,
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}


def _reply(req: Request, status: int, body: Any = None, **headers: str) -> Response:
    h = _version_headers(microversion(req))
    h.update(headers)
    return Response(status, body, h)


def _links(req: Request, kind: str, ident: str) -> list[dict]:
    return [{"rel": "self", "href": f"{req.base_url}{PREFIX}/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{req.base_url}/compute/{kind}/{ident}"}]


def render_flavor(req: Request, f: FlavorConfig, v: tuple[int, int], detail: bool = True) -> dict:
    d: dict[str, Any] = {"id": f.id, "name": f.name, "links": _links(req, "flavors", f.id)}
    if v >= (2, 55):
        d["description"] = None
    if not detail:
        return d
    d.update({"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk,
              "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
              "swap": 0 if v >= (2, 75) else "", "rxtx_factor": 1.0,
              "os-flavor-access:is_public": True})
    if v >= (2, 61):
        d["extra_specs"] = {}
    return d


def render_server(cloud: "FakeCloud", req: Request, s: Server, v: tuple[int, int],
                  fips: dict | None = None) -> dict:
    """``fips``: the state's ``fips_by_port()``, when rendering many servers."""
    state = cloud.state
    if v >= (2, 47):
        flavor: dict = {"vcpus": s.flavor.vcpus, "ram": s.flavor.ram, "disk": s.flavor.disk,
                        "ephemeral": 0, "swap": 0, "original_name": s.flavor.name,
                        "extra_specs": {}}
    else:
        flavor = {"id": s.flavor.id, "links": [_links(req, "flavors", s.flavor.id)[1]]}
    image: Any = ""
    if s.image_id:
        image = {"id": s.image_id, "links": [_links(req, "images", s.image_id)[1]]}
    volumes = []
    for vid in s.volume_ids:
        vol = state.volumes.get(vid)
        item: dict[str, Any] = {"id": vid}
        if v >= (2, 3):
            item["delete_on_termination"] = bool(vol and vol.delete_on_termination)
        volumes.append(item)
    d: dict[str, Any] = {
        "id": s.id, "name": s.name, "status": s.status, "tenant_id": s.project_id,
        "user_id": s.user_id, "metadata": dict(s.metadata), "hostId": s.host_id,
        "image": image, "flavor": flavor, "created": iso(s.created), "updated": iso(s.updated),
        "addresses": state.server_addresses(s, fips), "accessIPv4": "", "accessIPv6": "",
        "links": _links(req, "servers", s.id), "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": s.availability_zone if s.status != "BUILD" else "",
        "config_drive": "True" if s.config_drive else "", "key_name": s.key_name,
        "OS-SRV-USG:launched_at": s.launched_at.strftime("%Y-%m-%dT%H:%M:%S.000000")
        if s.launched_at else None,
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-STS:task_state": s.task_state, "OS-EXT-STS:vm_state": s.vm_state,
        "OS-EXT-STS:power_state": s.power_state,
        "os-extended-volumes:volumes_attached": volumes,
    }
    if s.port_ids:
        d["security_groups"] = [{"name": "default"}]
    if s.status in ("BUILD", "ACTIVE"):
        d["progress"] = 0
    if s.fault is not None:
        d["fault"] = dict(s.fault)
    if v >= (2, 9):
        d["locked"] = False
    if v >= (2, 19):
        d["description"] = s.description
    if v >= (2, 26):
        d["tags"] = list(s.tags)
    if v >= (2, 63):
        d["trusted_image_certificates"] = None
    if v >= (2, 73):
        d["locked_reason"] = None
    if v >= (2, 96):
        d["pinned_availability_zone"] = None
    return d


# From this microversion nova lists the servers of a down cell as partial
# records; below it, it leaves them out (its default configuration).
DOWN_CELL_VERSION = (2, 69)


def render_down_cell_server(req: Request, s: Server) -> dict:
    """What nova can say of a server whose cell does not answer."""
    return {"id": s.id, "status": "UNKNOWN", "tenant_id": s.project_id,
            "created": iso(s.created), "links": _links(req, "servers", s.id)}


def _parse_count(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _err(400, f"Invalid input for field/attribute {name}.")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise _err(400, f"Invalid input for field/attribute {name}. Value: {value}.") from None
    if n < 1:
        raise _err(400, f"Invalid input for field/attribute {name}. Value: {value}.")
    return n


def _ref(value: Any) -> str | None:
    """Nova accepts an id or a URL ending in the id."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _err(400, f"Invalid input: {value!r} is not a valid reference.")
    return value.rstrip("/").rsplit("/", 1)[-1]


def parse_server_request(body: Any, v: tuple[int, int]) -> ServerRequest:
    if not isinstance(body, dict) or not isinstance(body.get("server"), dict):
        raise _err(400, "Invalid input: the body must be {\"server\": {...}}.")
    s = body["server"]
    name = s.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise _err(400, "Invalid input for field/attribute name.")
    if "flavorRef" not in s:
        raise _err(400, "Invalid input for field/attribute server. Value: 'flavorRef' is a "
                        "required property")
    metadata = s.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(val, str) and 0 < len(k) <= 255
            and len(val) <= 255 for k, val in metadata.items()):
        raise _err(400, "Invalid input for field/attribute metadata: keys and values must be "
                        "strings of at most 255 characters.")
    networks = s.get("networks")
    if networks is None:
        if v >= (2, 37):
            raise _err(400, "Invalid input for field/attribute server. Value: 'networks' is "
                            "a required property")
        networks = "auto"
    if isinstance(networks, str):
        if networks not in ("auto", "none"):
            raise _err(400, "Invalid input for field/attribute networks.")
    elif not isinstance(networks, list) or not all(isinstance(n, dict) for n in networks):
        raise _err(400, "Invalid input for field/attribute networks.")
    user_data = s.get("user_data")
    if user_data is not None:
        try:
            base64.b64decode(user_data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _err(400, "User data needs to be valid base 64.") from None
    config_drive = s.get("config_drive", False)
    if isinstance(config_drive, str):
        config_drive = config_drive.lower() in ("true", "1", "yes")
    bdms = s.get("block_device_mapping_v2") or []
    if not isinstance(bdms, list) or not all(isinstance(b, dict) for b in bdms):
        raise _err(400, "Invalid input for field/attribute block_device_mapping_v2.")
    if s.get("block_device_mapping"):
        raise _err(400, "fakecloud simulates block_device_mapping_v2 only.")
    for b in bdms:
        if "volume_size" in b and isinstance(b["volume_size"], str) and \
                b["volume_size"].isdigit():
            b["volume_size"] = int(b["volume_size"])
        dot = b.get("delete_on_termination")
        if isinstance(dot, str):
            b["delete_on_termination"] = dot.lower() in ("true", "1", "yes")
    min_count = _parse_count(s.get("min_count", 1), "min_count")
    max_count = _parse_count(s.get("max_count", min_count), "max_count")
    if max_count < min_count:
        raise _err(400, "min_count must be <= max_count")
    tags = s.get("tags") or []
    if not isinstance(tags, list):
        raise _err(400, "Invalid input for field/attribute tags.")
    key_name = s.get("key_name")
    return ServerRequest(
        name=name, flavor_ref=_ref(s.get("flavorRef")) or "",
        image_ref=_ref(s.get("imageRef")) or None, networks=networks, metadata=metadata,
        key_name=key_name if key_name else None, user_data=user_data,
        config_drive=bool(config_drive), availability_zone=s.get("availability_zone"),
        block_devices=bdms, min_count=min_count, max_count=max_count,
        description=s.get("description"), tags=[str(t) for t in tags])


def register(router: Router, cloud: "FakeCloud") -> None:
    state = cloud.state

    def project_id(req: Request) -> str:
        return req.project.id

    def versions(req: Request) -> Response:
        return Response(200, {"versions": [
            {"id": "v2.0", "status": "DEPRECATED", "version": "", "min_version": "",
             "updated": "2025-07-04T12:00:00Z",
             "links": [{"rel": "self", "href": f"{req.base_url}/compute/v2/"}]},
            _version_doc(req)]})

    def version(req: Request) -> Response:
        return Response(200, {"version": _version_doc(req)})

    def limits(req: Request) -> Response:
        v = microversion(req)
        with state.lock:
            state.advance()
            project = state.projects[project_id(req)]
            lim, used = project.limits, state.usage(project.id)
            absolute: dict[str, Any] = {
                "maxServerMeta": quota.METADATA_ITEMS_LIMIT, "maxImageMeta": 128,
                "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
                "maxTotalInstances": lim["instances"], "maxTotalCores": lim["cores"],
                "maxTotalRAMSize": lim["ram"], "totalInstancesUsed": used["instances"],
                "totalCoresUsed": used["cores"], "totalRAMUsed": used["ram"],
                "totalServerGroupsUsed": 0}
            if v < (2, 36):
                absolute.update({"maxTotalFloatingIps": lim["floating_ips"],
                                 "totalFloatingIpsUsed": used["floating_ips"],
                                 "maxSecurityGroups": 10, "maxSecurityGroupRules": 20,
                                 "totalSecurityGroupsUsed": 1})
            if v < (2, 57):
                absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
        return _reply(req, 200, {"limits": {"rate": [], "absolute": absolute}})

    def flavors(req: Request, detail: bool) -> Response:
        v = microversion(req)
        items = list(state.flavors.values())
        min_ram, min_disk = req.arg("minRam"), req.arg("minDisk")
        if min_ram and min_ram.isdigit():
            items = [f for f in items if f.ram >= int(min_ram)]
        if min_disk and min_disk.isdigit():
            items = [f for f in items if f.disk >= int(min_disk)]
        return _reply(req, 200, {"flavors": [render_flavor(req, f, v, detail) for f in items]})

    def flavor(req: Request) -> Response:
        f = state.flavors.get(req.params["flavor_id"])
        if f is None:
            raise _err(404, f"Flavor {req.params['flavor_id']} could not be found.")
        return _reply(req, 200, {"flavor": render_flavor(req, f, microversion(req))})

    def flavor_extra_specs(req: Request) -> Response:
        if req.params["flavor_id"] not in state.flavors:
            raise _err(404, f"Flavor {req.params['flavor_id']} could not be found.")
        return _reply(req, 200, {"extra_specs": {}})

    def list_servers(req: Request, detail: bool) -> Response:
        v = microversion(req)
        limit_arg = req.arg("limit")
        page_size = cloud.config.max_page_size
        if limit_arg is not None:
            if not limit_arg.isdigit():
                raise _err(400, f"Invalid input for query parameters limit. Value: {limit_arg}.")
            page_size = min(int(limit_arg), page_size)
        statuses = [s.upper() for s in req.args("status")]
        others = {k: vs[0] for k, vs in req.query.items() if k not in _NOT_FILTERS and vs}
        with state.lock:
            if (req.arg("deleted") or "").lower() in ("true", "1"):
                servers: list[Server] = []
            else:
                servers = state.list_servers(project_id(req), req.arg("name"), statuses,
                                             others)
            marker = req.arg("marker")
            if marker is not None:
                ids = [s.id for s in servers]
                if marker not in ids:
                    raise _err(400, f"marker [{marker}] not found")
                servers = servers[ids.index(marker) + 1:]
            page = servers[:page_size]
            down = cloud.faults.down_cell()
            if detail:
                fips = state.fips_by_port()
                items = [render_down_cell_server(req, s) if down(s.id)
                         else render_server(cloud, req, s, v, fips)
                         for s in page if v >= DOWN_CELL_VERSION or not down(s.id)]
            else:
                items = [render_down_cell_server(req, s) if down(s.id)
                         else {"id": s.id, "name": s.name, "links": _links(req, "servers", s.id)}
                         for s in page if v >= DOWN_CELL_VERSION or not down(s.id)]
        body: dict[str, Any] = {"servers": items}
        if page and len(page) >= page_size:
            body["servers_links"] = [{"rel": "next", "href": req.url_with(
                limit=page_size, marker=page[-1].id)}]
        return _reply(req, 200, body)

    def create_server(req: Request) -> Response:
        v = microversion(req)
        body = req.json(lambda m: _err(400, m))
        server_req = parse_server_request(body, v)
        try:
            created = state.create_servers(project_id(req), req.user.id, server_req)
        except quota.QuotaExceeded as e:
            raise _err(403, e.message, e.overs) from None
        except (BadRequest, NotFound) as e:
            raise _err(400, str(e)) from None
        except Conflict as e:
            raise _err(409, str(e)) from None
        first = created[0]
        delay = cloud.faults.slow_create_delay()
        if delay:
            # The server exists from here on; the client may give up before the answer.
            cloud.faults.sleep(delay)
        if isinstance(body["server"], dict) and body["server"].get("return_reservation_id"):
            return _reply(req, 202, {"reservation_id": f"r-{first.id[:8]}"})
        out = {"id": first.id, "links": _links(req, "servers", first.id),
               "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
               "adminPass": first.admin_pass}
        return _reply(req, 202, {"server": out},
                      Location=f"{req.base_url}{PREFIX}/servers/{first.id}")

    def get_server(req: Request) -> Response:
        v = microversion(req)
        with state.lock:
            try:
                s = state.get_server(project_id(req), req.params["server_id"])
            except NotFound as e:
                raise _err(404, str(e)) from None
            return _reply(req, 200, {"server": render_server(cloud, req, s, v)})

    def delete_server(req: Request) -> Response:
        try:
            state.delete_server(project_id(req), req.params["server_id"])
        except NotFound as e:
            raise _err(404, str(e)) from None
        return _reply(req, 204)

    def server_metadata(req: Request) -> Response:
        with state.lock:
            try:
                s = state.get_server(project_id(req), req.params["server_id"])
            except NotFound as e:
                raise _err(404, str(e)) from None
            return _reply(req, 200, {"metadata": dict(s.metadata)})

    def server_security_groups(req: Request) -> Response:
        try:
            state.get_server(project_id(req), req.params["server_id"])
        except NotFound as e:
            raise _err(404, str(e)) from None
        return _reply(req, 200, {"security_groups": [
            {"id": "fc000000-0000-4000-8000-000000000001", "name": "default",
             "description": "Default security group", "rules": [],
             "tenant_id": project_id(req)}]})

    def server_action(req: Request) -> Response:
        body = req.json(lambda m: _err(400, m))
        if not isinstance(body, dict) or len(body) != 1:
            raise _err(400, "Invalid action body: expected one action.")
        action = next(iter(body))
        with state.lock:
            try:
                s = state.get_server(project_id(req), req.params["server_id"])
            except NotFound as e:
                raise _err(404, str(e)) from None
            if action == "os-getConsoleOutput":
                if s.status != "ACTIVE":
                    raise _err(409, f"Cannot 'get_console_output' instance {s.id} while it "
                                    f"is in vm_state {s.vm_state}")
                return _reply(req, 200, {"output": f"fakecloud console of {s.name}\n"
                                                   f"login: \n"})
            if action == "forceDelete":
                state.delete_server(project_id(req), s.id)
                return _reply(req, 202)
        raise _err(400, f"fakecloud does not simulate the server action {action!r}.")

    def zones(req: Request) -> Response:
        return _reply(req, 200, {"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": None}
            for z in cloud.config.availability_zones]})

    def render_keypair(kp: Keypair, full: bool) -> dict:
        d: dict[str, Any] = {"name": kp.name, "public_key": kp.public_key,
                             "fingerprint": kp.fingerprint, "type": "ssh"}
        if full:
            d.update({"user_id": kp.user_id, "created_at": iso(kp.created),
                      "deleted": False, "deleted_at": None, "updated_at": None, "id": 1})
        return d

    def list_keypairs(req: Request) -> Response:
        kps = state.project_keypairs(project_id(req))
        return _reply(req, 200, {"keypairs": [{"keypair": render_keypair(k, False)}
                                              for k in kps]})

    def get_keypair(req: Request) -> Response:
        try:
            kp = state.get_keypair(project_id(req), req.params["keypair_name"])
        except NotFound as e:
            raise _err(404, str(e)) from None
        return _reply(req, 200, {"keypair": render_keypair(kp, True)})

    def create_keypair(req: Request) -> Response:
        v = microversion(req)
        body = req.json(lambda m: _err(400, m))
        kp_body = body.get("keypair") if isinstance(body, dict) else None
        if not isinstance(kp_body, dict) or not isinstance(kp_body.get("name"), str):
            raise _err(400, "Invalid input: expected {\"keypair\": {\"name\": ...}}.")
        if not kp_body.get("public_key") and v >= (2, 92):
            raise _err(400, "Invalid input for field/attribute keypair. Value: 'public_key' "
                            "is a required property")
        try:
            kp = state.create_keypair(project_id(req), req.user.id, kp_body["name"],
                                      kp_body.get("public_key"))
        except Conflict as e:
            raise _err(409, str(e)) from None
        out = render_keypair(kp, False)
        out["user_id"] = kp.user_id
        if not kp_body.get("public_key"):
            out["private_key"] = ("-----BEGIN OPENSSH PRIVATE KEY-----\nfakecloud\n"
                                  "-----END OPENSSH PRIVATE KEY-----\n")
        return _reply(req, 201 if v >= (2, 2) else 200, {"keypair": out})

    def delete_keypair(req: Request) -> Response:
        try:
            state.delete_keypair(project_id(req), req.params["keypair_name"])
        except NotFound as e:
            raise _err(404, str(e)) from None
        return _reply(req, 204 if microversion(req) >= (2, 2) else 202)

    add = router.add
    add("GET", "/compute", versions, "compute", auth=False)
    add("GET", PREFIX, version, "compute", auth=False)
    add("GET", f"{PREFIX}/limits", limits, "compute")
    add("GET", f"{PREFIX}/flavors", lambda r: flavors(r, False), "compute")
    add("GET", f"{PREFIX}/flavors/detail", lambda r: flavors(r, True), "compute")
    add("GET", f"{PREFIX}/flavors/{{flavor_id}}", flavor, "compute")
    add("GET", f"{PREFIX}/flavors/{{flavor_id}}/os-extra_specs", flavor_extra_specs, "compute")
    add("GET", f"{PREFIX}/servers", lambda r: list_servers(r, False), "compute")
    add("POST", f"{PREFIX}/servers", create_server, "compute")
    add("GET", f"{PREFIX}/servers/detail", lambda r: list_servers(r, True), "compute")
    add("GET", f"{PREFIX}/servers/{{server_id}}", get_server, "compute")
    add("DELETE", f"{PREFIX}/servers/{{server_id}}", delete_server, "compute")
    add("POST", f"{PREFIX}/servers/{{server_id}}/action", server_action, "compute")
    add("GET", f"{PREFIX}/servers/{{server_id}}/metadata", server_metadata, "compute")
    add("GET", f"{PREFIX}/servers/{{server_id}}/os-security-groups",
        server_security_groups, "compute")
    add("GET", f"{PREFIX}/os-availability-zone", zones, "compute")
    add("GET", f"{PREFIX}/os-availability-zone/detail", zones, "compute")
    add("GET", f"{PREFIX}/os-keypairs", list_keypairs, "compute")
    add("POST", f"{PREFIX}/os-keypairs", create_keypair, "compute")
    add("GET", f"{PREFIX}/os-keypairs/{{keypair_name}}", get_keypair, "compute")
    add("DELETE", f"{PREFIX}/os-keypairs/{{keypair_name}}", delete_keypair, "compute")


def _version_doc(req: Request) -> dict:
    return {"id": "v2.1", "status": "CURRENT", "version": "2.96", "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{req.base_url}{PREFIX}/"},
                      {"rel": "describedby", "type": "text/html",
                       "href": "http://docs.openstack.org/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}
