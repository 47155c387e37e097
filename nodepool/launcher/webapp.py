"""The launcher's read-only status API (127.0.0.1 by default).

As upstream's: ``/node-list`` (``?node_id=``), ``/request-list`` and
``/label-list`` answer a table, or JSON with upstream's keys when the client
sends ``Accept: application/json``; ``?fields=a,b`` narrows the table's
columns (JSON keeps every key, as upstream's).  ``/image-list``,
``/dib-image-list`` and ``/image-status`` show what upstream's
nodepool-builder keeps in ZooKeeper (read afresh at most once a second, as
every answer).  ``/ready`` answers ``OK`` once the launcher serves (503 before).
Every answer is cached for one second (keyed by the query parameters its
endpoint knows; others are ignored) and carries upstream's headers
(``Access-Control-Allow-Origin: *``, ``Cache-Control: max-age=1, public``,
``Last-Modified``, ``Expires``); ``If-Modified-Since``, ``Range`` and
``HEAD`` are answered as upstream's web framework answers them.

This project's additions: the ``.json`` paths (JSON whatever the Accept
header), ``/health`` (503 when ZooKeeper is lost or a loop is stuck past
its deadline), ``/quota`` and ``/quota.json`` (``?provider=``), the figures
behind every create decision, and ``/providers.json`` with the API call
counters, calls in flight and cache ages.  Nothing here prints a secret:
the records served carry no credentials, and neither errors nor headers
name the ZooKeeper servers.  Connections are served by a bounded front end
(``bounded_http``): slow clients cost a socket until a deadline, never a
thread.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import parse_qs, urlparse

from nodepool import tables
from nodepool.launcher.bounded_http import BoundedHTTPServer, PrefetchedRequestHandler

if TYPE_CHECKING:
    # Types only: ``nodepool list`` imports this module for zookeeper_tag.
    from nodepool.config.model import NodepoolConfig
    from nodepool.driver.base import LaunchProvider
    from nodepool.launcher.loop_health import LoopHealth
    from nodepool.launcher.pool_worker import PoolWorker
    from nodepool.quota import QuotaLedger
    from nodepool.zk.store import ZooKeeperStore

log = logging.getLogger("nodepool.webapp")

# Seconds an answer is reused (and the max-age clients are told), as upstream.
CACHE_EXPIRY = 1


class StatusSource(Protocol):
    """What the status API reads of a launcher: the launcher passes itself
    in, and this module knows nothing more of it."""

    @property
    def config(self) -> NodepoolConfig: ...
    @property
    def store(self) -> ZooKeeperStore: ...
    # The ZooKeeper client (kazoo's), for the builder's image records.
    @property
    def client(self) -> Any: ...
    # Set once the launcher serves (``/ready``).
    @property
    def started(self) -> threading.Event: ...
    @property
    def health(self) -> LoopHealth: ...
    @property
    def providers(self) -> dict[str, LaunchProvider]: ...
    @property
    def pool_workers(self) -> dict[str, PoolWorker]: ...
    @property
    def ledger(self) -> QuotaLedger: ...

    def health_problems(self) -> list[str]:
        """What /health reports; empty when healthy."""
        ...


def health(launcher: StatusSource) -> tuple[bool, list[str]]:
    problems = launcher.health_problems()
    return not problems, problems


def quota_view(launcher: StatusSource, provider: str | None = None) -> dict:
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


def wants_json(accept: str | None) -> bool:
    """Upstream offers text/html, text/plain and application/json in that
    order and answers JSON only when the client prefers it: no Accept
    header, ``*/*`` or a tie answers the table."""
    offers = ["text/html", "text/plain", "application/json"]
    best, best_q = None, 0.0
    for offer in offers:
        q = _quality(accept, offer)
        if q > best_q:
            best, best_q = offer, q
    return best == "application/json"


def _quality(accept: str | None, offer: str) -> float:
    """The q of the most specific Accept range matching ``offer``."""
    if not accept:
        return 1.0
    kind = offer.split("/")[0]
    found, specificity = 0.0, -1
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        rank = {offer: 2, f"{kind}/*": 1, "*/*": 0}.get(media)
        if rank is not None and rank > specificity:
            found, specificity = q, rank
    return found


class AnswerCache:
    """Answers by path, query and format, reused for ``expiry`` seconds of
    the monotonic clock (a wall clock step must not keep or drop them); the
    wall time one was made is its ``Last-Modified``."""

    def __init__(self, expiry: float = CACHE_EXPIRY,
                 clock: Callable[[], float] = time.monotonic):
        self.expiry = expiry
        self.clock = clock
        # key -> (made on the clock, made at wall time, answer)
        self._items: dict[str, tuple[float, float, tuple[int, str, str]]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], tuple[int, str, str]]
            ) -> tuple[float, tuple[int, str, str]]:
        """(wall time it was made, answer)."""
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now <= hit[0] + self.expiry:
                return hit[1], hit[2]
        made_at = time.time()
        answer = make()
        with self._lock:
            self._items = {k: v for k, v in self._items.items()
                           if now <= v[0] + self.expiry}
            if answer[0] == 200:
                self._items[key] = (now, made_at, answer)
        return made_at, answer


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Positions past any answer's length: longer digit strings are not parsed
# (int() of thousands of digits is slow, and past 4,300 an error).
_MAX_DIGITS = 18
_HUGE = 10 ** _MAX_DIGITS


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def byte_range(header: str | None, length: int) -> tuple[int, int] | None | bool:
    """One ``bytes=`` range as (start, stop); None when there is none (or
    several, which upstream ignores too); False when it cannot be served."""
    m = _RANGE.match((header or "").strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        start, stop = max(0, length - _position(m.group(2))), length
    else:
        start = _position(m.group(1))
        last = _position(m.group(2)) if m.group(2) else None
        if last is not None and last < start:
            return None
        stop = length if last is None else min(length, last + 1)
    if start >= length or start >= stop:
        return False
    return start, stop


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def zookeeper_tag(hosts: str) -> str:
    """What the API says of its ZooKeeper: a digest of the hosts and chroot,
    enough for a client that knows them to compare, naming nothing."""
    return hashlib.sha256(f"nodepool-zookeeper:{hosts}".encode()).hexdigest()[:16]


class _Handler(PrefetchedRequestHandler):
    launcher: StatusSource
    cache: AnswerCache
    server_version = "nodepool-launcher"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    # -- answering ----------------------------------------------------------------

    def _answer(self, status: int, body: str, content_type: str,
                made_at: float | None = None) -> None:
        """Send with upstream's headers, honouring If-Modified-Since, Range
        and HEAD as upstream's framework does."""
        made_at = time.time() if made_at is None else made_at
        data = body.encode()
        last_modified = _http_date(made_at)
        headers = [("Access-Control-Allow-Origin", "*"),
                   ("Cache-Control", f"max-age={self.cache.expiry:g}, public"),
                   ("Last-Modified", last_modified),
                   ("Expires", _http_date(made_at + self.cache.expiry))]
        headers += self._source_headers()
        if status == 200:
            since = _parse_http_date(self.headers.get("If-Modified-Since"))
            # HTTP dates have whole seconds: compare what the client saw.
            if since is not None and int(made_at) <= since:
                self._start(304, headers)
                return
            wanted = byte_range(self.headers.get("Range"), len(data))
            if_range = self.headers.get("If-Range")
            if wanted is not None and if_range is not None:
                # Only a date can match: these answers carry no ETag.
                unchanged_since = _parse_http_date(if_range)
                if unchanged_since is None or int(made_at) > unchanged_since:
                    wanted = None
            if wanted is False:
                self._start(416, [("Content-Length", "0"),
                                  ("Content-Range", f"bytes */{len(data)}")] + headers)
                return
            if isinstance(wanted, tuple):
                start, stop = wanted
                self._start(206, [("Content-Type", content_type),
                                  ("Content-Length", str(stop - start)),
                                  ("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")]
                            + headers, data[start:stop])
                return
        self._start(status, [("Content-Type", content_type),
                             ("Content-Length", str(len(data)))] + headers, data)

    def _source_headers(self) -> list[tuple[str, str]]:
        """Which ZooKeeper (a digest of hosts and chroot) the answers come from
        and whether the launcher's cache is in step with it: ``nodepool
        list`` uses this API's node list only when both match its own
        configuration."""
        launcher = self.launcher
        config = getattr(launcher, "config", None)
        zk = getattr(config, "zookeeper", None)
        store = getattr(launcher, "store", None)
        if zk is None or store is None:
            return []
        return [("X-Nodepool-ZooKeeper", zookeeper_tag(zk.hosts)),
                ("X-Nodepool-Cache-Synced", "true" if store.synced else "false")]

    def _start(self, status: int, headers: list[tuple[str, str]], data: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, data: Any, status: int = 200) -> None:
        self._answer(*_json_body(data, status))

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        dot_json = path.endswith(".json")
        base = path[:-len(".json")] if dot_json else path
        as_json = dot_json or wants_json(self.headers.get("Accept"))
        try:
            route = ROUTES.get(base)
            if route is None:
                self._json({"error": f"no such endpoint: {url.path}",
                            "endpoints": sorted(ROUTES)}, 404)
                return
            if base in UNCACHED:
                self._answer(*route(self, as_json, query))
                return
            # Only what the endpoint reads: an unknown parameter must not
            # make a new answer (and take the locks the pool workers need).
            known = QUERY_PARAMS.get(base, TABLE_PARAMS)
            query = {k: v for k, v in query.items() if k in known}
            key = json.dumps([base, sorted(query.items()), as_json])
            made_at, answer = self.cache.get(key, lambda: route(self, as_json, query))
            self._answer(*answer, made_at=made_at)
        except (ConnectionError, TimeoutError):
            raise   # the client left or reads too slowly: not the API's failure
        except Exception:  # an API error must not kill the server
            # The log has the details; an unauthenticated client gets none.
            log.exception("status API %s failed", url.path)
            self._json({"error": "internal error; see the launcher's log"}, 500)

    # -- endpoints: each returns (status, body, content type) ---------------------------

    def _view(self, view: tables.View, as_json: bool, query: dict) -> tuple[int, str, str]:
        if as_json:
            return _json_body(tables.view_json(view), compact=True)
        fields = [f for f in query.get("fields", "").split(",") if f] or None
        return 200, tables.view_table(view, fields) + "\n", TEXT

    def node_list(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        store = self.launcher.store
        if "node_id" in query:
            node = store.get_node(query["node_id"], cached=True)
            nodes = [node] if node is not None else []
        else:
            nodes = store.list_nodes(cached=True)
        view = tables.node_view(nodes, lambda node_id: store.node_locked(node_id, cached=True))
        return self._view(view, as_json, query)

    def request_list(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        from nodepool.zk.cache import sorted_requests
        reqs = sorted_requests(self.launcher.store.list_requests(cached=True))
        return self._view(tables.request_view(reqs), as_json, query)

    def label_list(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        labels = self.launcher.store.label_names(cached=True)
        return self._view(tables.label_view(labels), as_json, query)

    def _images(self):
        from nodepool.zk.image_reader import read_images
        return read_images(self.launcher.client)

    def image_list(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        return self._view(tables.image_list_view(self._images().uploads), as_json, query)

    def dib_image_list(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        snap = self._images()
        return self._view(tables.dib_image_list_view(snap.builds, snap.paused), as_json, query)

    def image_status(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        snap = self._images()
        return self._view(tables.image_status_view(snap.images, snap.paused, snap.requests),
                          as_json, query)

    def ready(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        ok = self.launcher.started.is_set() and bool(
            self.launcher.client and self.launcher.client.connected)
        return (200, "OK", TEXT) if ok else (503, "Service Unavailable\n", TEXT)

    def health_check(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        ok, problems = health(self.launcher)
        _, body, ctype = _json_body({"healthy": ok, "problems": problems,
                                          "loops": self.launcher.health.ages()})
        return (200 if ok else 503), body, ctype

    def quota(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        provider = query.get("provider")
        if provider is not None and provider not in self.launcher.providers:
            return _json_body({"error": f"no provider {provider!r}",
                               "providers": sorted(self.launcher.providers)}, status=404)
        view = quota_view(self.launcher, provider)
        if as_json:
            return _json_body(view)
        return 200, tables.format_quota(view), TEXT

    def providers(self, as_json: bool, query: dict) -> tuple[int, str, str]:
        return _json_body({name: p.status() for name, p in self.launcher.providers.items()})


TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"


def _json_body(data: Any, status: int = 200, compact: bool = False) -> tuple[int, str, str]:
    # The upstream views are one line, as upstream's; our own are indented.
    body = json.dumps(data, default=str) if compact else tables.dumps(data) + "\n"
    return status, body, JSON


ROUTES = {
    "/node-list": _Handler.node_list,
    "/request-list": _Handler.request_list,
    "/label-list": _Handler.label_list,
    "/image-list": _Handler.image_list,
    "/dib-image-list": _Handler.dib_image_list,
    "/image-status": _Handler.image_status,
    "/ready": _Handler.ready,
    "/health": _Handler.health_check,
    "/quota": _Handler.quota,
    "/providers": _Handler.providers,
}
# Probes answer the current state, never a cached one.
UNCACHED = {"/ready", "/health"}
# The query parameters each endpoint reads (others are dropped before the
# answer and its cache key are made); the tables take ``fields``.
TABLE_PARAMS: tuple[str, ...] = ("fields",)
QUERY_PARAMS: dict[str, tuple[str, ...]] = {
    "/node-list": ("node_id", "fields"),
    "/ready": (),
    "/health": (),
    "/quota": ("provider",),
    "/providers": (),
}


class StatusServer:
    def __init__(self, launcher: StatusSource, host: str, port: int):
        handler = type("Handler", (_Handler,), {"launcher": launcher,
                                                "cache": AnswerCache()})
        self.httpd = BoundedHTTPServer((host, port), handler)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.httpd.start()
        log.info("status API on http://%s:%d/", *self.httpd.server_address[:2])

    def stop(self) -> None:
        self.httpd.stop()
