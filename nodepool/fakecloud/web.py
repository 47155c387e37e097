"""HTTP plumbing: requests, responses, route templates and the threaded server.

Routes are templates such as ``/compute/v2.1/servers/{server_id}``; the
template (not the concrete path) names the route in counters and logs, so
``GET /compute/v2.1/servers/{server_id}`` is one counter however many servers
are read.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlencode

log = logging.getLogger("nodepool.fakecloud")


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Resources whose quota refused this request, for the counters.
    quota: tuple[str, ...] = ()

    def encode(self) -> tuple[bytes, str | None]:
        if self.body is None:
            return b"", None
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=UTF-8"
        return json.dumps(self.body).encode(), "application/json"


class ApiError(Exception):
    """Raised by handlers; carries the response to send."""

    def __init__(self, response: Response):
        super().__init__(f"{response.status}: {response.body!r}")
        self.response = response


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    base_url: str
    params: dict[str, str] = field(default_factory=dict)
    project: Any = None
    user: Any = None
    route_key: str = ""
    service: str = ""

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def args(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def json(self, error: Callable[[str], ApiError]) -> Any:
        if not self.body:
            raise error("The request body is empty; expected JSON.")
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise error(f"Malformed request body: {e}") from None

    def url_with(self, **params: Any) -> str:
        """This request's URL with query parameters replaced."""
        query = {k: v for k, v in self.query.items()}
        for k, v in params.items():
            query[k] = [str(v)]
        flat = [(k, v) for k, vs in query.items() for v in vs]
        return f"{self.base_url}{self.path}?{urlencode(flat)}"


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    template: str
    handler: Handler
    service: str
    auth: bool = True
    regex: re.Pattern = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        self.regex = re.compile(f"^{pattern}$")

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, service: str,
            auth: bool = True) -> None:
        self.routes.append(Route(method, template, handler, service, auth))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route, its parameters, and the methods the path allows (for 405)."""
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        allowed = []
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groupdict(), []
            allowed.append(route.method)
        return None, {}, allowed


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "nodepool-fakecloud"
    sys_version = ""
    server: "HttpServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked()  # an image upload from a stream of unknown size
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        try:
            response = self.server.app(self.command, self.path, self.headers, body)
        except Exception:  # a bug in a handler must not kill the connection silently
            log.exception("fakecloud: unhandled error in %s %s", self.command, self.path)
            response = Response(500, {"computeFault": {"code": 500,
                                                       "message": "fakecloud internal error"}})
        data, ctype = response.encode()
        try:
            self.send_response(response.status)
            for k, v in response.headers.items():
                self.send_header(k, v)
            if response.status != 204 and response.status >= 200:
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            # The client gave up (e.g. its api_timeout fired during a hang).
            self.close_connection = True

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int],
                 app: Callable[[str, str, Message, bytes], Response]):
        self.app = app
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self.stopping = False
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        if not self.stopping:
            log.debug("fakecloud: connection error from %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Drop keep-alive connections so their threads end with the server."""
        with self._conn_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
