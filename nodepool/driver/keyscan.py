"""Check that a new node answers, without a thread per node.

For SSH-based connection types (``ssh``, ``network_cli``) the check collects
the host keys: each scan is one ``ssh-keyscan`` child process, polled from
the provider loop; a scan that finds nothing is retried until the node's
boot deadline.  For any other connection type (``winrm``, ...) there are no
SSH host keys: as upstream Nodepool does, the check is that the port accepts
a TCP connection (``PortCheck``), retried until the same deadline.
"""

from __future__ import annotations

import errno
import select
import shutil
import socket
import subprocess
import time
from typing import Callable

KEYSCAN = "ssh-keyscan"
RETRY_INTERVAL = 2.0
PER_SCAN_TIMEOUT = 5
# Connection types whose hosts have SSH host keys (upstream's list).
SSH_CONNECTION_TYPES = ("ssh", "network_cli")
# One TCP connection attempt may take this long before it is retried.
PER_CONNECT_TIMEOUT = 10.0


class ReadinessCheck:
    """What both checks share: ``poll()`` returns None while trying, else the
    keys found (empty when there are none to collect, or on failure, with
    ``error`` set once the deadline passed); ``ok`` tells success."""

    def __init__(self, host: str, port: int, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.port = port
        self.deadline = deadline
        self.clock = clock
        self.error: str | None = None
        self.keys: list[str] | None = None
        self.attempts = 0
        self._next_try = 0.0


    @property
    def ok(self) -> bool:
        """The check succeeded."""
        return False

    def poll(self) -> list[str] | None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop a check in progress (a child process, a socket)."""


class HostKeyScan(ReadinessCheck):
    """SSH host keys by ``ssh-keyscan``; ok when it returned some."""

    def __init__(self, host: str, port: int, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(host, port, deadline, clock)
        self._proc: subprocess.Popen | None = None
        self._binary = shutil.which(KEYSCAN)

    def poll(self) -> list[str] | None:
        if self.keys is not None:
            return self.keys
        now = self.clock()
        if self._binary is None:
            self.error = f"{KEYSCAN} is not installed (Debian: openssh-client)"
            self.keys = []
            return self.keys
        if self._proc is not None:
            if self._proc.poll() is None:
                if now > self.deadline:
                    self._proc.kill()
                    self._proc.wait()
                    self._proc = None
                    return self._give_up()
                return None
            out = self._proc.stdout.read() if self._proc.stdout else ""
            self._proc = None
            keys = parse_keyscan(out)
            if keys:
                self.keys = keys
                return keys
            self._next_try = now + RETRY_INTERVAL
        if now > self.deadline:
            return self._give_up()
        if now >= self._next_try:
            self.attempts += 1
            self._proc = subprocess.Popen(
                # "--": a host is never read as an option (a name from the
                # cloud like "-f/etc/passwd" would make it read hosts from a file).
                [self._binary, "-T", str(PER_SCAN_TIMEOUT), "-p", str(self.port), "--",
                 self.host],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                text=True)
        return None

    @property
    def ok(self) -> bool:
        """The scan found host keys."""
        return bool(self.keys)

    def _give_up(self) -> list[str]:
        self.error = (f"no SSH host keys from {self.host}:{self.port} before the "
                      f"boot-timeout ({self.attempts} attempts)")
        self.keys = []
        return self.keys

    def cancel(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def parse_keyscan(output: str) -> list[str]:
    """``host keytype base64`` lines into ``keytype base64`` (Zuul adds the host)."""
    keys = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            keys.append(f"{parts[1]} {parts[2]}")
    return sorted(set(keys))


class PortCheck(ReadinessCheck):
    """The port accepts a TCP connection (no keys to collect); ok when it did
    before the deadline.  Each attempt is a non-blocking connect looked at on
    later polls, so the provider loop never waits on it."""

    def __init__(self, host: str, port: int, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(host, port, deadline, clock)
        self._ok = False
        self.last_error: str | None = None
        self._sock: socket.socket | None = None
        self._started = 0.0

    @property
    def ok(self) -> bool:
        """A connection was accepted before the deadline."""
        return self._ok

    def poll(self) -> list[str] | None:
        if self.keys is not None:
            return self.keys
        now = self.clock()
        if self._sock is not None:
            state = self._connect_state()
            if state == 0:
                self._close()
                self._ok = True
                self.keys = []
                return self.keys
            if state is not None:
                self.last_error = errno.errorcode.get(state, str(state))
                self._close()
                self._next_try = now + RETRY_INTERVAL
            elif now - self._started >= PER_CONNECT_TIMEOUT:
                self.last_error = "connect timed out"
                self._close()
        if now > self.deadline:
            return self._give_up()
        if self._sock is None and now >= self._next_try:
            self._start(now)
        return None

    def _start(self, now: float) -> None:
        self.attempts += 1
        self._started = now
        try:
            family, _, _, _, addr = socket.getaddrinfo(self.host, self.port,
                                                       type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            self.last_error = str(e)
            self._next_try = now + RETRY_INTERVAL
            return
        sock.setblocking(False)
        code = sock.connect_ex(addr)
        self._sock = sock
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self.last_error = errno.errorcode.get(code, str(code))
            self._close()
            self._next_try = now + RETRY_INTERVAL

    def _connect_state(self) -> int | None:
        """0 when connected, an errno when refused, None while pending."""
        # poll(), not select(): a busy launcher's descriptors exceed FD_SETSIZE.
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        if not poller.poll(0):
            return None
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _give_up(self) -> list[str]:
        self._close()
        self.error = (f"port {self.port} of {self.host} accepted no connection before the "
                      f"boot-timeout ({self.attempts} attempts"
                      + (f", last: {self.last_error})" if self.last_error else ")"))
        self.keys = []
        return self.keys

    def cancel(self) -> None:
        self._close()
