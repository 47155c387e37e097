"""The ZooKeeper connection settings, as plain data (no kazoo here).

What ``zookeeper-servers``, ``zookeeper-tls`` and ``zookeeper-timeout`` say;
``nodepool.zk.client`` connects with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SESSION_TIMEOUT = 10.0


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
