"""The readiness check of non-SSH nodes: a TCP connect, never blocking."""

from __future__ import annotations

import socket
import time

from nodepool.driver.keyscan import PortCheck
from tests.fixtures.fakecloud import wait_for


def _poll_until_done(check: PortCheck, timeout: float = 10.0):
    return wait_for(lambda: check.poll() is not None, timeout, what="the port check") and \
        check.keys


def test_a_listening_port_passes_at_once():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        check = PortCheck("127.0.0.1", server.getsockname()[1], time.monotonic() + 5)
        assert _poll_until_done(check) == []
        assert check.ok and check.error is None and check.attempts == 1
    finally:
        server.close()


def test_a_closed_port_is_retried_until_the_deadline_and_says_why():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    check = PortCheck("127.0.0.1", port, time.monotonic() + 2.5)
    assert _poll_until_done(check) == []
    assert not check.ok
    assert check.attempts >= 2
    assert f"port {port} of 127.0.0.1 accepted no connection" in check.error
    assert "ECONNREFUSED" in check.error


def test_ssh_keyscan_never_reads_the_host_as_an_option(tmp_path, monkeypatch):
    from nodepool.driver import keyscan
    from nodepool.driver.keyscan import HostKeyScan

    argv_file = tmp_path / "argv"
    fake = tmp_path / "ssh-keyscan"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {argv_file}\n"
                    "echo 'host ssh-ed25519 AAAAC3Nza'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(keyscan, "KEYSCAN", str(fake))
    check = HostKeyScan("-f/etc/passwd", 22, time.monotonic() + 10)
    assert wait_for(lambda: check.poll() is not None, 10, what="the scan")
    argv = argv_file.read_text().splitlines()
    assert argv[-2:] == ["--", "-f/etc/passwd"]
    assert check.keys == ["ssh-ed25519 AAAAC3Nza"]
