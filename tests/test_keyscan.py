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
