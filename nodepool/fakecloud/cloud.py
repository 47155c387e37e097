"""``FakeCloud``: the simulated cloud as an object a test or a benchmark starts.

::

    cloud = FakeCloud({"projects": [...], "servers": {"boot_seconds": 0.2}}).start()
    path = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    ...  # openstacksdk against cloud.auth_url
    cloud.counters()["requests"]["GET /compute/v2.1/servers/detail"]
    cloud.set_limits(instances=3)
    cloud.stop()

Everything the admin HTTP API (``/_fakecloud/``) offers is a method here too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from email.message import Message
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from nodepool.fakecloud import admin, compute, identity, image, network, volume
from nodepool.fakecloud.clouds_yaml import clouds_yaml_data, dump_clouds_yaml
from nodepool.fakecloud.config import (FakeCloudConfig, as_config, check_faults, check_limits,
                                       check_servers)
from nodepool.fakecloud.errors import error_response, unauthorized
from nodepool.fakecloud.faults import FaultInjector
from nodepool.fakecloud.model import STATES, CloudState, NotFound, iso
from nodepool.fakecloud.stats import Counters, TransitionLog
from nodepool.fakecloud.web import ApiError, HttpServer, Request, Response, Route, Router

log = logging.getLogger("nodepool.fakecloud")
ADMIN_PREFIX = "/_fakecloud"


class FakeCloud:
    """A simulated OpenStack cloud served over HTTP on 127.0.0.1.

    ``config`` is a ``FakeCloudConfig``, a dict in the YAML layout (see
    ``etc/fakecloud.yaml``), a path to such a file, or None for the defaults.
    ``host``/``port`` override the config; the port defaults to 0 (a free one).
    """

    def __init__(self, config: FakeCloudConfig | dict | str | None = None, *,
                 host: str | None = None, port: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = as_config(config)
        self._host = host or self.config.host
        self._requested_port = port if port is not None else (self.config.port or 0)
        self.clock = clock
        self._stop = threading.Event()
        self.state = CloudState(self.config, clock, self.config.seed)
        self.stats = Counters(self.config.request_log)
        self.transitions = TransitionLog(self.config.transition_log)
        self.state.on_transition = self._log_transition
        self.faults = FaultInjector(self.config.faults, self.config.seed, self._stop,
                                    self.stats.fault)
        self.tokens = identity.TokenStore()
        self.router = Router()
        for module in (identity, compute, image, network, volume):
            module.register(self.router, self)
        self._admin = admin.AdminApi(self)
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "FakeCloud":
        """Listen and serve.  After stop(), start() serves the same state on the same port."""
        if self._server is not None:
            return self
        self._stop.clear()
        port = self._port if self._port is not None else self._requested_port
        self._server = HttpServer((self._host, port), self._dispatch)
        self._port = self._server.server_address[1]
        self.stats.open()
        self.transitions.open()
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"fakecloud-{self.port}", daemon=True)
        self._thread.start()
        log.info("fakecloud listening on %s", self.url)
        return self

    def _log_transition(self, kind: str, server_id: str, when: float) -> None:
        # ``when`` is on the model's clock; the request log is in epoch seconds.
        self.transitions.write(kind, server_id, time.time() - (self.clock() - when))

    def stop(self) -> None:
        """Stop serving; hung or delayed requests are released at once."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        self.faults.release()
        server.stopping = True
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.stats.close()
        self.transitions.close()

    def __enter__(self) -> "FakeCloud":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (kept after stop())."""
        if self._port is None:
            raise RuntimeError("FakeCloud is not started; call start() first")
        return self._port

    @property
    def url(self) -> str:
        host = self._host if self._host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    @property
    def admin_url(self) -> str:
        return f"{self.url}{ADMIN_PREFIX}/"

    @property
    def region(self) -> str:
        return self.config.region

    # ---- clouds.yaml -----------------------------------------------------

    def clouds_yaml(self, cloud_name: str = "fakecloud", api_timeout: float = 30,
                    project: str | None = None, user: str | None = None,
                    extra: dict | None = None,
                    cache_expiration: dict[str, int] | None = None) -> dict:
        """A clouds.yaml mapping that meets the launcher's clouds.yaml policy."""
        p = self.state.find_project(project)
        u = next((x for x in p.config.users if user in (None, x.name)), None)
        if u is None:
            raise ValueError(f"project {p.name!r} has no user {user!r}")
        return clouds_yaml_data(self.auth_url, self.region, cloud_name, u.name, u.password,
                                p.name, api_timeout, extra, cache_expiration)

    def write_clouds_yaml(self, path: str | os.PathLike, cloud_name: str = "fakecloud",
                          api_timeout: float = 30, project: str | None = None,
                          user: str | None = None, extra: dict | None = None,
                          cache_expiration: dict[str, int] | None = None) -> str:
        """Write ``clouds_yaml(...)`` to ``path`` and return the path."""
        data = self.clouds_yaml(cloud_name, api_timeout, project, user, extra,
                                cache_expiration)
        return dump_clouds_yaml(data, path)

    # ---- inspection ------------------------------------------------------

    def counters(self) -> dict:
        """Requests by route template and status, quota refusals, injected faults."""
        return self.stats.snapshot()

    def request_count(self, route: str, status: int | None = None) -> int:
        """E.g. ``request_count("GET /compute/v2.1/servers/detail", 200)``."""
        return self.stats.count(route, status)

    def reset_counters(self) -> None:
        """Zero the counters and restart peak usage from the current usage."""
        self.stats.reset()
        self.state.reset_peaks()

    def servers(self, project: str | None = None) -> list[dict]:
        """Every server (oldest first) as a plain dict, including deleting ones."""
        with self.state.lock:
            self.state.advance()
            pid = self.state.find_project(project).id if project else None
            return [{"id": s.id, "name": s.name, "project": self.state.projects[s.project_id].name,
                     "state": s.state, "status": s.status, "task_state": s.task_state,
                     "flavor": s.flavor.name, "vcpus": s.flavor.vcpus, "ram": s.flavor.ram,
                     "metadata": dict(s.metadata), "fault": s.fault,
                     "ports": list(s.port_ids), "volumes": list(s.volume_ids),
                     "created": iso(s.created)}
                    for s in self.state.iter_servers(pid)]

    def servers_by_state(self, project: str | None = None) -> dict[str, int]:
        """Counts for BUILD, ACTIVE, ERROR and DELETING."""
        pid = self.state.find_project(project).id if project else None
        return self.state.servers_by_state(pid)

    def usage(self, project: str | None = None) -> dict:
        """Per project: limits, in_use (what nova counts), peak, servers by state."""
        with self.state.lock:
            self.state.advance()
            projects = [self.state.find_project(project)] if project \
                else list(self.state.projects.values())
            return {p.name: {"id": p.id, "limits": dict(p.limits),
                             "in_use": self.state.usage(p.id), "peak": dict(p.peak),
                             "servers": self.state.servers_by_state(p.id)}
                    for p in projects}

    def peak_usage(self, project: str | None = None) -> dict[str, int]:
        with self.state.lock:
            return dict(self.state.find_project(project).peak)

    def limits(self, project: str | None = None) -> dict[str, int]:
        with self.state.lock:
            return dict(self.state.find_project(project).limits)

    def totals(self) -> dict[str, int]:
        """Servers ever created and deleted, and boots that ended in ERROR."""
        with self.state.lock:
            self.state.advance()
            return {"created": self.state.servers_created,
                    "deleted": self.state.servers_deleted,
                    "boot_errors": self.state.boot_errors,
                    "existing": len(self.state.servers)}

    def settings(self) -> dict:
        """The runtime settings: ``{"servers": {...}, "faults": {...}}``."""
        with self.state.lock:
            return {"servers": self.state.behaviour.as_dict(),
                    "faults": self.faults.faults.as_dict()}

    def hung_requests(self) -> int:
        """Requests blocked by hang mode right now."""
        return self.faults.hung_now()

    # ---- reconfiguration -------------------------------------------------

    def set_limits(self, project: str | None = None, **limits: int) -> dict[str, dict]:
        """Change quota limits (-1 = unlimited) of one project, or of all if None.

        Keys: instances, cores, ram, volumes, gigabytes, ports, floating_ips.
        """
        with self.state.lock:
            projects = [self.state.find_project(project)] if project \
                else list(self.state.projects.values())
            new = {p.id: check_limits(limits, p.limits, "limits") for p in projects}
            for pid, lim in new.items():
                self.state.set_limits(pid, lim)
            return {self.state.projects[pid].name: lim for pid, lim in new.items()}

    def set_server_behaviour(self, **changes: Any) -> dict:
        """Change boot_seconds, delete_seconds (number or [low, high]),
        error_boot_share, error_boot_fault, ports_per_server, floating_ip,
        leak_port_share, network_layout.

        Applies to servers created (or deleted) from now on.
        """
        with self.state.lock:
            behaviour = check_servers(changes, self.state.behaviour, "servers")
            self.state.set_behaviour(behaviour)
            return behaviour.as_dict()

    def set_faults(self, **changes: Any) -> dict:
        """Change latency_seconds, error_500_rate, error_503_rate, hang, hang_seconds,
        slow_create_seconds, slow_create_share, match.

        Turning ``hang`` off releases the requests it holds.
        """
        faults = check_faults(changes, self.faults.faults, "faults")
        self.faults.set(faults)
        return faults.as_dict()

    def release_hung(self) -> int:
        """Let the requests held by hang mode go on (hang mode stays as set)."""
        return self.faults.release()

    def wipe(self) -> None:
        """Remove every server, port, floating IP and volume at once."""
        self.state.wipe()

    # ---- request handling ------------------------------------------------

    def _dispatch(self, method: str, raw_path: str, headers: Message, body: bytes) -> Response:
        started = time.monotonic()
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        base = f"http://{headers.get('Host')}" if headers.get("Host") else self.url
        req = Request(method, path, query, headers, body, base)
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            return self._admin.handle(req)
        route, params, allowed = self.router.match(method, path)
        if route is None:
            key = f"{method} <unmatched>"
            if allowed:
                response = error_response("compute", 405, f"Method {method} is not allowed "
                                          f"here; allowed: {', '.join(sorted(set(allowed)))}")
            else:
                response = error_response("compute", 404, f"fakecloud has no route for "
                                          f"{method} {path}")
            self.stats.record(key, raw_path, response.status, time.monotonic() - started, None)
            return response
        req.params, req.route_key, req.service = params, route.key, route.service
        self.faults.enter()
        try:
            decision = self.faults.before(route.key)
            fault = "hang" if decision.hung else None
            if decision.error_status is not None:
                fault = f"error_{decision.error_status}"
                response = error_response(route.service, decision.error_status,
                                          "fakecloud injected fault: "
                                          + _FAULT_TEXT.get(decision.error_status,
                                                            "the service is failing"))
                if decision.retry_after is not None:
                    response.headers["Retry-After"] = f"{decision.retry_after:g}"
            else:
                response = self._call(route, req)
        finally:
            self.faults.leave()
        project = req.project.name if req.project is not None else None
        self.stats.record(route.key, raw_path, response.status, time.monotonic() - started,
                          project, response.quota, fault)
        return response

    def _call(self, route: Route, req: Request) -> Response:
        if route.auth:
            token = self.tokens.get(req.headers.get("X-Auth-Token"), self.clock())
            if token is None:
                return unauthorized(req.base_url)
            req.project = self.state.projects[token.project_id]
            req.user = next((u for u in req.project.config.users if u.id == token.user_id),
                            None)
            if req.user is None:
                return unauthorized(req.base_url)
        try:
            return route.handler(req)
        except ApiError as e:
            return e.response
        except NotFound as e:
            return error_response(route.service, 404, str(e))


_FAULT_TEXT = {503: "the service is unavailable", 429: "rate limit exceeded, retry later"}

__all__ = ["FakeCloud", "STATES"]
