"""The REST calls the launcher makes, and nothing more.

Each method is one HTTP request (pagination aside) made through
openstacksdk's service proxies, so clouds.yaml's auth, ``api_timeout`` and
cache apply.  We do not use the SDK's high-level helpers for servers: they
re-GET each new server and look up ports and floating IPs per server (the N+1
of incident 1).  Every method is blocking and must be called through the
provider's ``ApiGate``.

Every GET bypasses openstacksdk's response cache (``skip_cache``).  The
launcher keeps its own caches (the shared server list, the catalog, the
quota ledger's limits readings), each of which decides when to ask the
cloud and relies on the answer describing the cloud *after* the request
started: a server missing from a list requested after its delete returned
is gone.  A cached response breaks that (clouds.yaml's recommended
``compute.servers.detail: 5`` would hand back a list fetched before a
create, so the new server looks gone), and it would also defeat the
catalog's early re-read when an image is missing.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

from openstack import exceptions as sdk_exc

if TYPE_CHECKING:
    from openstack.config.types import StatsdConfig

log = logging.getLogger("nodepool.openstack")


def statsd_settings(env: Mapping[str, str] | None = None) -> "StatsdConfig | None":
    """openstacksdk's statsd settings from ``STATSD_HOST``/``PORT``/``PREFIX``.

    Upstream Nodepool lets openstacksdk read these itself, so every API call
    is also reported as ``openstack.api.<service>.<method>.<path>.<status>``
    (``STATSD_PREFIX``, when set, replaces ``openstack.api``).  We read
    clouds.yaml without openstacksdk's environment variables (``OS_*`` must
    not change which cloud a provider uses), so we hand these three over.
    """
    env = os.environ if env is None else env
    host = env.get("STATSD_HOST")
    if not host:
        return None
    port = env.get("STATSD_PORT")
    return {"host": host, "port": int(port) if port else None,
            "prefix": env.get("STATSD_PREFIX") or None}


def connect(cloud: str, clouds_file: str, region_name: str | None = None):
    """An openstacksdk ``Connection`` for one cloud of one clouds.yaml."""
    from openstack import connection
    from openstack.config import OpenStackConfig

    statsd = statsd_settings()
    if statsd is None:
        config = OpenStackConfig(config_files=[clouds_file], load_envvars=False)
    else:
        try:
            config = OpenStackConfig(config_files=[clouds_file], load_envvars=False,
                                     statsd_config=statsd)
        except TypeError:  # openstacksdk before statsd_config (early 4.x)
            port = statsd.get("port")
            config = OpenStackConfig(config_files=[clouds_file], load_envvars=False,
                                     statsd_host=statsd.get("host"),
                                     statsd_port=None if port is None else int(port),
                                     statsd_prefix=statsd.get("prefix"))
    region = config.get_one(cloud=cloud, region_name=region_name)
    return connection.Connection(config=region)


def connect_to_project(cloud: str, clouds_file: str, region_name: str | None = None
                       ) -> tuple[Any, dict]:
    """``connect``, and the cloud project the connection works in, from its
    token: what identifies the project whatever clouds.yaml calls it (a
    project id or a name, a vendor profile).  The project is ``{}`` when the
    token names none (domain-scoped).  Fetches a token: every later call
    needs one anyway."""
    conn = connect(cloud, clouds_file, region_name)
    project_id = conn.current_project_id
    if not project_id:
        return conn, {}
    auth_url = (conn.config.get_auth_args() or {}).get("auth_url") or \
        conn.session.get_endpoint(service_type="identity", interface="public")
    return conn, {"auth_url": auth_url, "project_id": project_id,
                  "region": conn.config.region_name}


def _get(proxy, url: str, what: str, microversion: str | None = None) -> Any:
    """One GET, never answered from openstacksdk's cache (see the module doc)."""
    if microversion is None:
        return _check(proxy.get(url, skip_cache=True), what)
    return _check(proxy.get(url, skip_cache=True, microversion=microversion), what)


def _paged(proxy, url: str, key: str, what: str,
           next_url: Callable[[dict], str | None], microversion: str | None = None
           ) -> list[dict]:
    """Every item of a paginated listing; stops if a page points back."""
    items: list[dict] = []
    seen = set()
    while url and url not in seen:
        seen.add(url)
        body = _get(proxy, url, what, microversion)
        items.extend(body.get(key, []))
        url = next_url(body)
    return items


def _check(resp, what: str) -> Any:
    sdk_exc.raise_from_response(resp, error_message=what)
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


# Nova leaves the servers of a cell that does not answer out of a list
# (so they look deleted) unless asked for this microversion, which lists
# them as partial records with status UNKNOWN.
SERVER_LIST_MICROVERSION = "2.69"
# A nova older than that answers 406; its lists are then asked for plain.
_NOT_ACCEPTABLE = 406


class OpenStackCloud:
    def __init__(self, conn, project: dict | None = None):
        self.conn = conn
        self.server_list_microversion: str | None = SERVER_LIST_MICROVERSION
        # The project the connection works in (connect_to_project); None
        # when not asked.
        self.project = project

    # -- compute ----------------------------------------------------------

    def list_servers(self) -> list[dict]:
        """All servers of the project: ``GET /servers/detail``, following
        pages; servers of a down cell are partial records (see
        ``is_partial``)."""
        def next_url(body: dict) -> str | None:
            return next((link["href"] for link in body.get("servers_links", [])
                         if link.get("rel") == "next"), None)
        version = self.server_list_microversion
        try:
            return _paged(self.conn.compute, "/servers/detail", "servers", "listing servers",
                          next_url, version)
        except sdk_exc.HttpException as e:
            if version is None or e.status_code != _NOT_ACCEPTABLE:
                raise
        log.warning("nova refuses microversion %s: server lists cannot show servers of a "
                    "down cell (a server is taken as gone only when two lists miss it)",
                    version)
        self.server_list_microversion = None
        return _paged(self.conn.compute, "/servers/detail", "servers", "listing servers",
                      next_url)

    def create_server(self, request: dict) -> dict:
        """``POST /servers``; returns nova's short answer (id, links)."""
        body = _check(self.conn.compute.post("/servers", json={"server": request}),
                      "creating a server")
        return body["server"]

    def delete_server(self, server_id: str) -> bool:
        """``DELETE /servers/{id}``; False if nova no longer knows it."""
        try:
            _check(self.conn.compute.delete(f"/servers/{server_id}"), "deleting a server")
        except sdk_exc.NotFoundException:
            return False
        return True

    def get_console_output(self, server_id: str, length: int = 200) -> str:
        """The last ``length`` lines of the server's console."""
        body = _check(self.conn.compute.post(
            f"/servers/{server_id}/action",
            json={"os-getConsoleOutput": {"length": length}}), "reading a console log")
        return (body or {}).get("output") or ""

    def get_compute_limits(self) -> dict:
        """nova's ``absolute`` limits: maxima and ``total*Used`` counters."""
        body = _get(self.conn.compute, "/limits", "reading compute limits")
        return body["limits"]["absolute"]

    def get_volume_limits(self) -> dict | None:
        """cinder's ``absolute`` limits, or None when the cloud has no cinder."""
        try:
            proxy = self.conn.block_storage
            body = _get(proxy, "/limits", "reading volume limits")
        except (sdk_exc.ServiceDisabledException, sdk_exc.EndpointNotFound):
            return None
        return body["limits"]["absolute"]

    def list_flavors(self) -> list[dict]:
        body = _get(self.conn.compute, "/flavors/detail", "listing flavors")
        return body.get("flavors", [])

    def list_availability_zones(self) -> list[str]:
        """Names of the zones nova reports available (``GET /os-availability-zone``);
        empty when policy forbids the call (then nova places servers)."""
        try:
            body = _get(self.conn.compute, "/os-availability-zone",
                        "listing availability zones")
        except (sdk_exc.ForbiddenException, sdk_exc.NotFoundException):
            return []
        return [z.get("zoneName") for z in body.get("availabilityZoneInfo", [])
                if (z.get("zoneState") or {}).get("available") and z.get("zoneName")]

    # -- image ------------------------------------------------------------

    def list_images(self) -> list[dict]:
        def next_url(body: dict) -> str | None:
            # glance's "next" is "/v2/images?marker=..."; the endpoint has /v2.
            nxt = body.get("next")
            return nxt[len("/v2"):] if nxt and nxt.startswith("/v2/") else nxt
        return _paged(self.conn.image, "/images?limit=1000", "images", "listing images",
                      next_url)

    # -- network ----------------------------------------------------------

    def list_networks(self) -> list[dict]:
        body = _get(self.conn.network, "/networks", "listing networks")
        return body.get("networks", [])

    def list_floating_ips(self) -> list[dict]:
        body = _get(self.conn.network, "/floatingips", "listing floating IPs")
        return body.get("floatingips", [])

    def list_ports(self, **filters: str) -> list[dict]:
        query = "&".join(f"{k}={v}" for k, v in sorted(filters.items()))
        url = "/ports" + (f"?{query}" if query else "")
        body = _get(self.conn.network, url, "listing ports")
        return body.get("ports", [])

    def create_floating_ip(self, network_id: str, port_id: str) -> dict:
        body = _check(self.conn.network.post("/floatingips", json={"floatingip": {
            "floating_network_id": network_id, "port_id": port_id}}),
            "creating a floating IP")
        return body["floatingip"]

    def delete_floating_ip(self, fip_id: str) -> bool:
        try:
            _check(self.conn.network.delete(f"/floatingips/{fip_id}"),
                   "deleting a floating IP")
        except sdk_exc.NotFoundException:
            return False
        return True

    def delete_port(self, port_id: str) -> bool:
        try:
            _check(self.conn.network.delete(f"/ports/{port_id}"), "deleting a port")
        except sdk_exc.NotFoundException:
            return False
        return True

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing must never fail a shutdown
            log.debug("closing the connection failed", exc_info=True)
