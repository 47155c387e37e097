"""The launcher's read-only status API (stdlib HTTP, 127.0.0.1 by default).

Upstream-compatible: ``/node-list``, ``/request-list``, ``/label-list``
(tables; ``.json`` for data).  Probes: ``/ready`` (200 once serving) and
``/health`` (503 when ZooKeeper is lost or a loop is stuck past its
deadline).  Quota: ``/quota`` and ``/quota.json`` (``?provider=``), the figures
behind every create decision.  ``/providers.json`` has the API call counters,
calls in flight and cache ages.  Nothing here prints a secret: the records
served carry no credentials.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

if TYPE_CHECKING:
    from nodepool.launcher.launcher import Launcher

log = logging.getLogger("nodepool.webapp")

def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from nodepool.cmd.nodepoolcmd import table
    return table(headers, rows) + "\n"


def health(launcher: "Launcher") -> tuple[bool, list[str]]:
    problems = launcher.health_problems()
    return not problems, problems


def quota_view(launcher: "Launcher", provider: str | None = None) -> dict:
    out = {}
    for name, prov in sorted(launcher.providers.items()):
        if provider is not None and name != provider:
            continue
        described = launcher.ledger.describe(name)["providers"][name]
        pools = {}
        for worker in launcher.pool_workers.values():
            if worker.provider_name == name:
                pools[worker.pool_name] = {"paused": worker.handler.paused,
                                           "active_requests": len(
                                               worker.handler.active_request_ids)}
        described["pool_workers"] = pools
        described["waiting_builds"] = [b for b in prov.status()["builds"]
                                       if b["step"] == "wait-quota"]
        out[name] = described
    return out


class _Handler(BaseHTTPRequestHandler):
    launcher: "Launcher"
    server_version = "nodepool-launcher"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
                   "application/json")

    def _text(self, text: str, status: int = 200) -> None:
        self._send(status, text, "text/plain; charset=utf-8")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        as_json = path.endswith(".json")
        base = path[:-len(".json")] if as_json else path
        try:
            route = ROUTES.get(base)
            if route is None:
                self._json({"error": f"no such endpoint: {url.path}",
                            "endpoints": sorted(ROUTES)}, 404)
                return
            route(self, as_json, query)
        except Exception as e:  # noqa: BLE001 - an API error must not kill the server
            log.exception("status API %s failed", url.path)
            self._json({"error": str(e)}, 500)

    # -- endpoints ---------------------------------------------------------------

    def node_list(self, as_json: bool, query: dict) -> None:
        from nodepool.cmd.nodepoolcmd import NODE_COLUMNS, NODE_DETAIL, node_row
        store = self.launcher.store
        nodes = sorted(store.list_nodes(cached=True), key=lambda n: n.id or "")
        if "node_id" in query:
            nodes = [n for n in nodes if n.id == query["node_id"]]
        cache = store.nodes_cache
        rows = [node_row(n, bool(cache and cache.is_locked(n.id)), True) for n in nodes]
        if as_json:
            self._json(rows)
        else:
            cols = NODE_COLUMNS + NODE_DETAIL
            self._text(_table(cols, [[r[c] for c in cols] for r in rows]))

    def request_list(self, as_json: bool, query: dict) -> None:
        from nodepool.zk.cache import sorted_requests
        reqs = sorted_requests(self.launcher.store.list_requests(cached=True))
        rows = [{"id": r.id, "relative_priority": r.relative_priority, "state": r.state,
                 "requestor": r.requestor, "node_types": r.node_types, "nodes": r.nodes,
                 "declined_by": r.declined_by, "event_id": r.event_id} for r in reqs]
        if as_json:
            self._json(rows)
        else:
            cols = ["id", "relative_priority", "state", "requestor", "node_types", "nodes",
                    "declined_by", "event_id"]
            self._text(_table(cols, [[",".join(v) if isinstance(v, list) else v
                                      for v in (r[c] for c in cols)] for r in rows]))

    def label_list(self, as_json: bool, query: dict) -> None:
        labels = self.launcher.store.label_names(cached=True)
        if as_json:
            self._json([{"label": name} for name in labels])
        else:
            self._text(_table(["label"], [[name] for name in labels]))

    def ready(self, as_json: bool, query: dict) -> None:
        ok = self.launcher.started.is_set() and bool(
            self.launcher.client and self.launcher.client.connected)
        self._json({"ready": ok}, 200 if ok else 503)

    def health_check(self, as_json: bool, query: dict) -> None:
        ok, problems = health(self.launcher)
        self._json({"healthy": ok, "problems": problems,
                    "loops": self.launcher.health.ages()}, 200 if ok else 503)

    def quota(self, as_json: bool, query: dict) -> None:
        provider = query.get("provider")
        if provider is not None and provider not in self.launcher.providers:
            self._json({"error": f"no provider {provider!r}",
                        "providers": sorted(self.launcher.providers)}, 404)
            return
        view = quota_view(self.launcher, provider)
        if as_json:
            self._json(view)
        else:
            from nodepool.cmd.nodepoolcmd import format_quota
            self._text(format_quota(view))

    def providers(self, as_json: bool, query: dict) -> None:
        self._json({name: p.status() for name, p in self.launcher.providers.items()})


ROUTES = {
    "/node-list": _Handler.node_list,
    "/request-list": _Handler.request_list,
    "/label-list": _Handler.label_list,
    "/ready": _Handler.ready,
    "/health": _Handler.health_check,
    "/quota": _Handler.quota,
    "/providers": _Handler.providers,
}


class StatusServer:
    def __init__(self, launcher: "Launcher", host: str, port: int):
        handler = type("Handler", (_Handler,), {"launcher": launcher})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webapp",
                                        kwargs={"poll_interval": 0.5}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("status API on http://%s:%d/", *self.httpd.server_address[:2])

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to end: it would never return
        # for a server that was bound but never started.
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
