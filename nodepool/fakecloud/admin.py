"""The admin API under ``/_fakecloud/``: inspect and reconfigure a running cloud.

No token; it is meant for 127.0.0.1.  Requests to it are neither counted nor
subject to injected faults.  Bodies are JSON; errors are
``{"error": {"code", "title", "message"}}``.

=========================  ======================================================
``GET  /_fakecloud/``      summary: urls, region, projects, servers by state
``GET  counters``          requests by route template and status, quota_403,
                           quota_refusals by resource, injected faults
``POST counters/reset``    zero the counters (peaks restart from current usage)
``GET  servers``           every server (``?project=``), deleting ones included
``GET  usage``             per project: limits, in_use, peak, servers by state
``GET  limits``            per project limits
``PATCH limits``           ``{"instances": 5, "project": "ci"}``; no project = all
``GET  settings``          ``{"servers": {...}, "faults": {...}}``
``PATCH settings``         same shape, partial; e.g. ``{"faults": {"hang": true}}``
``POST release``           let hung requests go on; ``{"released": n}``
``POST wipe``              remove every server, port, floating IP and volume
=========================  ======================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from nodepool.fakecloud.config import FakeCloudConfigError, check_faults, check_servers
from nodepool.fakecloud.errors import error_response
from nodepool.fakecloud.model import NotFound
from nodepool.fakecloud.web import ApiError, Request, Response

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud


def _bad(message: str) -> ApiError:
    return ApiError(error_response("admin", 400, message))


class AdminApi:
    def __init__(self, cloud: "FakeCloud"):
        self.cloud = cloud
        self.routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", ""): self.summary,
            ("GET", "counters"): lambda r: Response(200, cloud.counters()),
            ("POST", "counters/reset"): self.reset,
            ("GET", "servers"): lambda r: Response(200, {
                "servers": cloud.servers(r.arg("project"))}),
            ("GET", "usage"): lambda r: Response(200, cloud.usage(r.arg("project"))),
            ("GET", "limits"): lambda r: Response(200, {
                name: u["limits"] for name, u in cloud.usage(r.arg("project")).items()}),
            ("PATCH", "limits"): self.patch_limits,
            ("PUT", "limits"): self.patch_limits,
            ("GET", "settings"): lambda r: Response(200, cloud.settings()),
            ("PATCH", "settings"): self.patch_settings,
            ("PUT", "settings"): self.patch_settings,
            ("POST", "release"): lambda r: Response(200, {"released": cloud.release_hung()}),
            ("POST", "wipe"): self.wipe,
        }

    def handle(self, req: Request) -> Response:
        sub = req.path[len("/_fakecloud"):].strip("/")
        handler = self.routes.get((req.method, sub))
        if handler is None:
            known = sorted({f"{m} /_fakecloud/{p}" for m, p in self.routes})
            return error_response("admin", 404, f"no admin route {req.method} {req.path}; "
                                  f"routes: {', '.join(known)}")
        try:
            return handler(req)
        except ApiError as e:
            return e.response
        except (FakeCloudConfigError, ValueError, NotFound) as e:
            return error_response("admin", 400, str(e))

    def _body(self, req: Request) -> dict:
        data: Any = req.json(_bad) if req.body else {}
        if not isinstance(data, dict):
            raise _bad("expected a JSON object")
        return data

    def summary(self, req: Request) -> Response:
        c = self.cloud
        return Response(200, {
            "url": c.url, "auth_url": c.auth_url, "region": c.region,
            "projects": {name: {"id": u["id"], "users": [
                x.name for x in c.state.find_project(name).config.users]}
                for name, u in c.usage().items()},
            "servers": c.servers_by_state(), "totals": c.totals(),
            "hung_requests": c.hung_requests(), "settings": c.settings(),
            "admin_routes": sorted(f"{m} /_fakecloud/{p}" for m, p in self.routes)})

    def reset(self, req: Request) -> Response:
        self.cloud.reset_counters()
        return Response(200, self.cloud.counters())

    def patch_limits(self, req: Request) -> Response:
        data = self._body(req)
        project = data.pop("project", None)
        return Response(200, self.cloud.set_limits(project, **data))

    def patch_settings(self, req: Request) -> Response:
        data = self._body(req)
        unknown = set(data) - {"servers", "faults"}
        if unknown:
            raise _bad(f"unknown section(s) {sorted(unknown)}; expected servers, faults")
        for section in ("servers", "faults"):
            if section in data and not isinstance(data[section], dict):
                raise _bad(f"{section}: expected a JSON object")
        # Validate both before applying either, so a bad request changes nothing.
        check_servers(data.get("servers", {}), self.cloud.state.behaviour, "servers")
        check_faults(data.get("faults", {}), self.cloud.faults.faults, "faults")
        if "servers" in data:
            self.cloud.set_server_behaviour(**data["servers"])
        if "faults" in data:
            self.cloud.set_faults(**data["faults"])
        return Response(200, self.cloud.settings())

    def wipe(self, req: Request) -> Response:
        self.cloud.wipe()
        return Response(200, {"servers": self.cloud.servers_by_state()})
