"""Connecting to ZooKeeper: plain or TLS, session timeout, chroot.

The rest of the ZooKeeper layer takes a connected ``KazooClient`` from here;
nothing else builds one.  Connecting has a deadline: an unreachable ensemble
gives ``ZooKeeperUnavailable`` after ``connect_timeout`` seconds, never a hang.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from nodepool.zk.session import SessionTracker

log = logging.getLogger("nodepool.zk")

DEFAULT_SESSION_TIMEOUT = 10.0


class ZooKeeperUnavailable(Exception):
    """The ensemble could not be reached within the deadline."""


@dataclass(frozen=True)
class ZooKeeperServer:
    host: str
    port: int = 2181
    chroot: str | None = None


@dataclass(frozen=True)
class ZooKeeperTLS:
    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class ZooKeeperSettings:
    """What ``zookeeper-servers``, ``zookeeper-tls`` and ``zookeeper-timeout`` say."""

    servers: tuple[ZooKeeperServer, ...]
    tls: ZooKeeperTLS | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    # Per-server chroots must agree; upstream takes the chroot from the list
    # too, and a mixed list would silently split the data.
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def chroot(self) -> str | None:
        roots = {s.chroot for s in self.servers if s.chroot}
        if len(roots) > 1:
            raise ValueError(f"zookeeper-servers name different chroots: {sorted(roots)}")
        return roots.pop() if roots else None

    @property
    def hosts(self) -> str:
        """The kazoo hosts string, chroot included."""
        hosts = ",".join(f"{_bracket(s.host)}:{s.port}" for s in self.servers)
        root = self.chroot
        if root:
            hosts += "/" + root.strip("/")
        return hosts

    def with_chroot(self, chroot: str) -> "ZooKeeperSettings":
        servers = tuple(ZooKeeperServer(s.host, s.port, chroot) for s in self.servers)
        return ZooKeeperSettings(servers, self.tls, self.session_timeout)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_hosts(hosts: str) -> tuple[ZooKeeperServer, ...]:
    """``h1:2181,h2:2181/chroot`` as kazoo writes it, into servers."""
    chroot = None
    if "/" in hosts:
        hosts, chroot = hosts.split("/", 1)
        chroot = "/" + chroot
    servers = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":")
        if not host:
            host, port = port, "2181"
        servers.append(ZooKeeperServer(host.strip("[]"), int(port), chroot))
    return tuple(servers)


def make_client(settings: ZooKeeperSettings, read_only: bool = False) -> KazooClient:
    """An unstarted client; call ``connect`` to start it with a deadline."""
    kwargs: dict = dict(
        hosts=settings.hosts,
        timeout=settings.session_timeout,
        read_only=read_only,
        # Reconnect forever in the background: the launcher must survive an
        # ensemble restart.  Each individual command still has a deadline.
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=5),
        command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=2),
    )
    if settings.tls:
        # The server's certificate must name the host we connect to, as
        # for any TLS client; a certificate of another server is refused.
        kwargs.update(use_ssl=True, ca=settings.tls.ca, certfile=settings.tls.cert,
                      keyfile=settings.tls.key, verify_certs=True, check_hostname=True)
    return KazooClient(**kwargs)


def connect(settings: ZooKeeperSettings, connect_timeout: float | None = None,
            ensure_chroot: bool = True) -> KazooClient:
    """Start a client, waiting at most ``connect_timeout`` (default: the
    session timeout) for the first session."""
    timeout = connect_timeout if connect_timeout is not None else settings.session_timeout
    root = settings.chroot
    if root and ensure_chroot:
        # kazoo cannot create its own chroot; do it through a client without one.
        bare = connect(settings.with_chroot(""), timeout, ensure_chroot=False)
        try:
            bare.ensure_path(root)
        finally:
            bare.stop()
            bare.close()
    client = make_client(settings)
    # Track the session from the first state change on (see zk/session.py).
    SessionTracker.of(client)
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, OSError) as e:
        client.stop()
        client.close()
        mode = "TLS" if settings.tls else "plain"
        raise ZooKeeperUnavailable(
            f"could not connect to ZooKeeper at {settings.hosts} ({mode}) "
            f"within {timeout:g}s: {e or type(e).__name__}") from None
    return client


def disconnect(client: KazooClient) -> None:
    try:
        client.stop()
    finally:
        client.close()
