"""An HTTP front end whose threads and sockets stay bounded whatever clients do.

``http.server.ThreadingHTTPServer`` gives every connection a thread that
blocks reading the request: a few thousand clients that send half a request
and wait exhaust the process's threads (or the unit's ``TasksMax``), and then
the launcher cannot start the threads and processes its builds need.

Here one thread accepts connections and reads request heads without
blocking, each with a deadline and a size limit; only a complete head is
handed to a fixed pool of workers, which answer with the stdlib's
``BaseHTTPRequestHandler`` (the head is already read, so a worker never
waits on a client's reading, and its writes have a total deadline).
A slow or silent client costs a socket until its deadline, never a thread;
past ``max_pending`` sockets the oldest waiting one is dropped.  Requests
carry no body (the status API answers GET and HEAD only); one request per
connection, as HTTP/1.0.
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("nodepool.webapp")

WORKERS = 4
MAX_PENDING = 256          # sockets waiting for their request head
HEAD_TIMEOUT = 10.0        # seconds for a client to send its whole head
WRITE_TIMEOUT = 10.0       # seconds for a client to take a whole answer
MAX_HEAD = 64 * 1024       # bytes of request line and headers
QUEUE_SIZE = 64            # complete heads waiting for a worker

_CLOSE = ("Connection: close\r\nContent-Length: 0\r\n\r\n")


def _canned(status: str) -> bytes:
    return f"HTTP/1.0 {status}\r\n{_CLOSE}".encode()


@dataclass
class Request:
    """An accepted connection and the request head read from it so far."""

    sock: socket.socket
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class PrefetchedRequestHandler(BaseHTTPRequestHandler):
    """``BaseHTTPRequestHandler`` reading a head the front end already read."""

    request: Request

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(bytes(self.request.head))
        self.wfile = _Writer(self.connection)

    def finish(self) -> None:
        self.rfile.close()


class _Writer(io.BufferedIOBase):
    """Whole writes with ``sendall`` (whose timeout bounds the total)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class BoundedHTTPServer:
    def __init__(self, address: tuple[str, int], handler: type[PrefetchedRequestHandler], *,
                 workers: int = WORKERS, max_pending: int = MAX_PENDING,
                 head_timeout: float = HEAD_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_head: int = MAX_HEAD):
        self.handler = handler
        self.workers = workers
        self.max_pending = max_pending
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._pending: collections.OrderedDict[int, Request] = collections.OrderedDict()
        self._ready: queue.Queue[Request | None] = queue.Queue(QUEUE_SIZE)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.dropped = 0     # connections closed before a complete head

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._accept_loop, name="webapp-accept",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"webapp-worker-{i}",
                                           daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def stop(self, wait: float = 5.0) -> None:
        self._stopping.set()
        end = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self._listener.close()

    # -- the accepting thread --------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    first = next(iter(self._pending.values()), None)
                    wait = 0.5 if first is None else min(0.5, max(0.0, first.deadline - now))
                    for key, _ in sel.select(wait):
                        if key.fileobj is self._listener:
                            self._accept(sel)
                        else:
                            self._read(sel, key.data)
                    self._expire(sel, time.monotonic())
            finally:
                for req in list(self._pending.values()):
                    self._drop(sel, req)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):   # a batch, so reads are not starved by a flood
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:   # out of file descriptors, say: try again later
                log.warning("status API: cannot accept a connection: %s", e)
                return
            sock.setblocking(False)
            if len(self._pending) >= self.max_pending:
                # The oldest waiting socket is the likeliest to be a stalled client.
                self._drop(sel, next(iter(self._pending.values())))
            req = Request(sock, address, time.monotonic() + self.head_timeout)
            self._pending[sock.fileno()] = req
            sel.register(sock, selectors.EVENT_READ, req)

    def _read(self, sel: selectors.BaseSelector, req: Request) -> None:
        try:
            data = req.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, req)
            return
        req.head += data
        complete = b"\r\n\r\n" in req.head or b"\n\n" in req.head
        if not complete and len(req.head) > self.max_head:
            self._drop(sel, req, "431 Request Header Fields Too Large")
            return
        if not complete:
            return
        self._forget(sel, req)
        try:
            self._ready.put_nowait(req)
        except queue.Full:
            self._close(req, "503 Service Unavailable")

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            req = next(iter(self._pending.values()))
            if req.deadline > now:
                return
            self._drop(sel, req, "408 Request Timeout")

    def _forget(self, sel: selectors.BaseSelector, req: Request) -> None:
        self._pending.pop(req.sock.fileno(), None)
        try:
            sel.unregister(req.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, sel: selectors.BaseSelector, req: Request, status: str | None = None
              ) -> None:
        self._forget(sel, req)
        self.dropped += 1
        self._close(req, status)

    @staticmethod
    def _close(req: Request, status: str | None = None) -> None:
        if status is not None:
            try:   # a courtesy; never waits for the client
                req.sock.send(_canned(status))
            except OSError:
                pass
        req.sock.close()

    # -- the workers -------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                req = self._ready.get(timeout=0.5)
            except queue.Empty:
                continue
            if req is None:
                return
            try:
                req.sock.setblocking(True)
                req.sock.settimeout(self.write_timeout)
                self.handler(req, req.address, self)  # type: ignore[arg-type]
            except OSError as e:    # the client went away or took too long to read
                log.debug("status API: %s: %s", req.address, e)
            except Exception:   # a handler's bug must not end the worker
                log.exception("status API: answering %s failed", req.address)
            finally:
                req.sock.close()
        while True:   # heads nobody will answer now
            try:
                left = self._ready.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                left.sock.close()
