"""Collect a node's SSH host keys without a thread per node.

Each scan is one ``ssh-keyscan`` child process, polled from the provider
loop; a scan that finds nothing is retried until the node's boot deadline.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Callable

KEYSCAN = "ssh-keyscan"
RETRY_INTERVAL = 2.0
PER_SCAN_TIMEOUT = 5


class HostKeyScan:
    """Poll ``result()``: None while scanning, else the keys (maybe empty on
    failure, with ``error`` set once the deadline passed)."""

    def __init__(self, host: str, port: int, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.port = port
        self.deadline = deadline
        self.clock = clock
        self.error: str | None = None
        self.keys: list[str] | None = None
        self.attempts = 0
        self._proc: subprocess.Popen | None = None
        self._next_try = 0.0
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
                [self._binary, "-T", str(PER_SCAN_TIMEOUT), "-p", str(self.port), self.host],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                text=True)
        return None

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
