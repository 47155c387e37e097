"""Shared fixtures: one real ZooKeeper per test session, a chroot per test.

Set ``NODEPOOL_ZK_HOSTS`` (and, for the TLS tests, ``NODEPOOL_ZK_TLS_HOSTS``,
``NODEPOOL_ZK_TLS_CA``, ``NODEPOOL_ZK_TLS_CERT``, ``NODEPOOL_ZK_TLS_KEY``) to
use a server you started yourself; otherwise ``tools/zookeeper.py`` starts one
in a temporary directory and stops it at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import kazoo.client
import pytest

from nodepool.zk.client import (ZooKeeperSettings, ZooKeeperTLS, connect,
                                disconnect, parse_hosts)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZK_TOOL = os.path.join(ROOT, "tools", "zookeeper.py")
TEST_ROOT = "/nodepool-tests"

# Importing Zuul's model or ZooKeeper modules (the wire and migration tests
# do) swaps kazoo's connection handler for Zuul's, process wide; our clients
# made after that in the same process would get it and break on Zuul's
# persistent watches.  Zuul's side sets its handler only while it connects.
KAZOO_CONNECTION_HANDLER = kazoo.client.ConnectionHandler


@pytest.fixture(autouse=True)
def _kazoo_connection_handler():
    kazoo.client.ConnectionHandler = KAZOO_CONNECTION_HANDLER


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    """A dict of NODEPOOL_ZK_* values describing the running server."""
    if os.environ.get("NODEPOOL_ZK_HOSTS"):
        yield {k: v for k, v in os.environ.items() if k.startswith("NODEPOOL_ZK_")}
        return
    state = str(tmp_path_factory.mktemp("zookeeper"))
    out = subprocess.run([sys.executable, ZK_TOOL, "start", "--tls", "--dir", state],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"could not start ZooKeeper: {out.stderr}")
    env = dict(pair.split("=", 1) for pair in out.stdout.split())
    try:
        yield env
    finally:
        subprocess.run([sys.executable, ZK_TOOL, "stop", "--dir", state],
                       capture_output=True)


def _chroot(request) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    return f"{TEST_ROOT}/{name}-{uuid.uuid4().hex[:8]}"


def _cleanup(settings: ZooKeeperSettings, chroot: str) -> None:
    client = connect(settings.with_chroot(""), ensure_chroot=False)
    try:
        client.delete(chroot, recursive=True)
    finally:
        disconnect(client)


@pytest.fixture
def zk_settings(zk_server, request):
    """Plain-TCP settings whose chroot is private to this test."""
    chroot = _chroot(request)
    base = ZooKeeperSettings(parse_hosts(zk_server["NODEPOOL_ZK_HOSTS"]),
                             session_timeout=10.0)
    settings = base.with_chroot(chroot)
    yield settings
    _cleanup(base, chroot)


@pytest.fixture
def zk_tls_settings(zk_server, request):
    """TLS settings (client certificate) whose chroot is private to this test."""
    if "NODEPOOL_ZK_TLS_HOSTS" not in zk_server:
        pytest.skip("NODEPOOL_ZK_HOSTS is set without NODEPOOL_ZK_TLS_* values")
    chroot = _chroot(request)
    tls = ZooKeeperTLS(ca=zk_server["NODEPOOL_ZK_TLS_CA"],
                       cert=zk_server["NODEPOOL_ZK_TLS_CERT"],
                       key=zk_server["NODEPOOL_ZK_TLS_KEY"])
    base = ZooKeeperSettings(parse_hosts(zk_server["NODEPOOL_ZK_TLS_HOSTS"]),
                             tls=tls, session_timeout=10.0)
    settings = base.with_chroot(chroot)
    yield settings
    _cleanup(base, chroot)


@pytest.fixture
def zk(zk_settings):
    """A connected kazoo client inside this test's chroot."""
    client = connect(zk_settings)
    yield client
    disconnect(client)
from tests.fixtures.zk import *  # noqa: E402, F403
from tests.fixtures.fakecloud import *  # noqa: E402, F403
