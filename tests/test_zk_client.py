"""The product's ZooKeeper connection code against the real server."""

from __future__ import annotations

import socket
import time

import pytest
from kazoo.protocol.states import KazooState

from nodepool.zk.client import (ZooKeeperServer, ZooKeeperSettings,
                                ZooKeeperTLS, ZooKeeperUnavailable, connect,
                                disconnect, parse_hosts)


def test_plain_connect_uses_chroot(zk_settings):
    client = connect(zk_settings)
    try:
        client.create("/hello", b"world")
        assert client.get("/hello")[0] == b"world"
    finally:
        disconnect(client)
    # The data landed under the chroot, not at the root.
    bare = connect(zk_settings.with_chroot(""), ensure_chroot=False)
    try:
        assert not bare.exists("/hello")
        assert bare.get(f"{zk_settings.chroot}/hello")[0] == b"world"
    finally:
        disconnect(bare)


def test_tls_connect_with_client_certificate(zk_tls_settings):
    client = connect(zk_tls_settings)
    try:
        client.create("/secure", b"yes", makepath=True)
        assert client.get("/secure")[0] == b"yes"
        assert client.client_state == KazooState.CONNECTED
    finally:
        disconnect(client)


def test_tls_port_rejects_plain_client(zk_tls_settings):
    plain = ZooKeeperSettings(zk_tls_settings.servers, tls=None, session_timeout=4)
    with pytest.raises(ZooKeeperUnavailable) as e:
        connect(plain, connect_timeout=2, ensure_chroot=False)
    assert "plain" in str(e.value)


def test_tls_without_client_certificate_is_rejected(zk_tls_settings, tmp_path):
    # A CA-only client: same trust, but no certificate of its own.  kazoo
    # needs a cert/key pair, so give it a self-signed one the server does not trust.
    import subprocess
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-subj", "/CN=stranger"],
                   check=True, capture_output=True)
    tls = ZooKeeperTLS(zk_tls_settings.tls.ca, str(tmp_path / "c.pem"),
                       str(tmp_path / "k.pem"))
    stranger = ZooKeeperSettings(zk_tls_settings.servers, tls=tls, session_timeout=4)
    with pytest.raises(ZooKeeperUnavailable):
        connect(stranger, connect_timeout=2, ensure_chroot=False)


def test_unreachable_server_fails_within_deadline():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    settings = ZooKeeperSettings((ZooKeeperServer("127.0.0.1", port),), session_timeout=5)
    start = time.monotonic()
    with pytest.raises(ZooKeeperUnavailable) as e:
        connect(settings, connect_timeout=1.5)
    assert time.monotonic() - start < 10  # a deadline, not a hang
    assert f"127.0.0.1:{port}" in str(e.value)


def test_session_timeout_is_negotiated(zk_settings):
    settings = ZooKeeperSettings(zk_settings.servers, session_timeout=4.0)
    client = connect(settings)
    try:
        # The server grants what we ask for within its [min, max] bounds.
        assert client._session_timeout == 4000
    finally:
        disconnect(client)


def test_parse_hosts_and_hosts_string():
    servers = parse_hosts("zk1:2181,[::1]:2282/nodepool")
    assert servers == (ZooKeeperServer("zk1", 2181, "/nodepool"),
                       ZooKeeperServer("::1", 2282, "/nodepool"))
    assert ZooKeeperSettings(servers).hosts == "zk1:2181,[::1]:2282/nodepool"
    mixed = ZooKeeperSettings((ZooKeeperServer("a", 1, "/x"), ZooKeeperServer("b", 1, "/y")))
    with pytest.raises(ValueError):
        _ = mixed.chroot


def test_tls_refuses_a_certificate_of_another_host(zk_tls_settings):
    """The server's certificate names 127.0.0.1 and localhost; reached as
    127.0.0.2 (a proxy on another loopback address) it must be refused, and
    through a proxy on 127.0.0.1 it is accepted."""
    from tests.fixtures.tcpproxy import TcpProxy
    server = zk_tls_settings.servers[0]
    for bind, accepted in (("127.0.0.2", False), ("127.0.0.1", True)):
        proxy = TcpProxy(server.host, server.port, bind=bind)
        try:
            settings = ZooKeeperSettings((ZooKeeperServer(bind, proxy.port, None),),
                                         tls=zk_tls_settings.tls, session_timeout=4)
            if accepted:
                disconnect(connect(settings, connect_timeout=10, ensure_chroot=False))
            else:
                with pytest.raises(ZooKeeperUnavailable):
                    connect(settings, connect_timeout=3, ensure_chroot=False)
        finally:
            proxy.close()
