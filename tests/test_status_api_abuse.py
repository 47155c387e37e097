"""The status API under abuse: slow clients, absurd headers, cache-busting
queries.  A real launcher (real ZooKeeper, the fakecloud over HTTP) serves
on loopback; clients are raw sockets and urllib."""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time

import pytest

from nodepool import tables
from nodepool.launcher.webapp import AnswerCache, byte_range, zookeeper_tag
from tests.fixtures.fakecloud import wait_for
from tests.test_operations import get, request, setup  # noqa: F401 - the fixture
from tests.test_upstream_compat import http, status_api, upstream_records  # noqa: F401

SLOW_CLIENTS = 300


def _half_requests(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /node-list HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # and no more
        socks.append(s)
    return socks


def _wait_closed(socks: list[socket.socket], deadline: float) -> int:
    """How many of ``socks`` the server closed before ``deadline``."""
    closed = 0
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while closed < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.0 408"):
                    sel.unregister(key.fileobj)
                    closed += 1
    return closed


def test_slow_clients_get_no_threads_and_nodes_are_still_built(setup):  # noqa: F811
    launcher, store, port = setup["launcher"], setup["store"], setup["port"]
    launcher.webapp.httpd.head_timeout = 2.0   # so the test sees them dropped soon
    wait_for(lambda: get(port, "/ready")[0] == 200, 30, what="the API")
    threads_before = threading.active_count()
    socks = _half_requests(port, SLOW_CLIENTS)
    try:
        # The flood holds no threads (a thread per connection would add 300).
        assert threading.active_count() <= threads_before + 20
        status, body = get(port, "/health")
        assert status == 200 and json.loads(body)["healthy"] is True
        req = request(store, ["small"])
        wait_for(lambda: store.get_request(req.id).state == "fulfilled", 30,
                 what="a node built during the flood")
        assert threading.active_count() <= threads_before + 20
        # Every stalled client is dropped at its deadline (or, past the
        # pending limit, earlier); none is kept open.
        assert _wait_closed(socks, time.monotonic() + 20) == SLOW_CLIENTS
    finally:
        for s in socks:
            s.close()
    status, _ = get(port, "/node-list.json")
    assert status == 200


def test_absurd_byte_ranges_are_answered_not_raised(status_api, caplog):  # noqa: F811
    port = status_api
    caplog.set_level(logging.ERROR, logger="nodepool.webapp")
    status, _, full = http(port, "/label-list.json")
    assert status == 200
    status, headers, body = http(port, "/label-list.json", Range="bytes=0-" + "9" * 5000)
    assert (status, body) == (206, full)
    status, _, _ = http(port, "/label-list.json", Range="bytes=" + "9" * 5000 + "-")
    assert status == 416
    status, _, body = http(port, "/label-list.json", Range="bytes=-" + "9" * 5000)
    assert (status, body) == (206, full)
    status, _, _ = http(port, "/label-list.json",
                        **{"If-Modified-Since": "Mon, 01 Jan 99999 00:00:00 GMT"})
    assert status == 200
    status, _, _ = http(port, "/label-list.json", Accept="application/json;q=1e999")
    assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-" + "9" * 5000, (0, 10)), ("bytes=" + "9" * 5000 + "-", False),
    ("bytes=-" + "9" * 5000, (0, 10)), ("bytes=" + "0" * 5000 + "1-2", (1, 3)),
])
def test_byte_range_positions_of_any_length(header, expected):
    assert byte_range(header, 10) == expected


def test_unknown_query_parameters_share_the_cached_answer(setup):  # noqa: F811
    launcher, port = setup["launcher"], setup["port"]
    calls = []
    describe = launcher.ledger.describe

    def counting(name):
        calls.append(name)
        return describe(name)

    launcher.ledger.describe = counting
    # Inside one second of the cache, whatever the clock: ask until two
    # answers came from one made answer, or the cache never served one.
    for attempt in range(5):
        calls.clear()
        started = time.monotonic()
        assert get(port, f"/quota.json?x={attempt}")[0] == 200
        one_answer = len(calls)
        for n in range(9):
            assert get(port, f"/quota.json?x={attempt}-{n}")[0] == 200
        if time.monotonic() - started < 0.9:
            assert one_answer >= 1 and len(calls) == one_answer
            return
    pytest.skip("the machine was too slow to ask ten times within a second")


def test_answer_cache_expires_on_the_monotonic_clock():
    now = [1000.0]
    cache = AnswerCache(1, clock=lambda: now[0])
    made = []

    def make():
        made.append(1)
        return 200, "x", "text/plain"

    cache.get("k", make)
    cache.get("k", make)
    assert len(made) == 1
    now[0] += 1.5
    cache.get("k", make)
    assert len(made) == 2


def test_errors_and_headers_name_no_internals(setup, monkeypatch):  # noqa: F811
    launcher, port = setup["launcher"], setup["port"]
    hosts = launcher.config.zookeeper.hosts

    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot read {hosts}/nodepool/requests")

    # Only the API makes this table in the launcher's process.
    monkeypatch.setattr(tables, "request_view", broken)
    status, headers, body = http(port, "/request-list.json")
    assert status == 500 and hosts not in body.decode() and "nodepool/requests" not in \
        body.decode()
    status, headers, body = http(port, "/label-list.json")
    assert status == 200 and headers["X-Nodepool-ZooKeeper"] == zookeeper_tag(hosts)
    assert hosts not in str(headers)
