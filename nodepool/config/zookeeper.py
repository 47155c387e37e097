"""The ZooKeeper connection settings, as plain data (no kazoo here).

What ``zookeeper-servers``, ``zookeeper-tls``, ``zookeeper-timeout`` and
``zookeeper-auth`` say; ``nodepool.zk.client`` connects with them and
``nodepool.zk.acls`` turns ``zookeeper-auth`` into ACLs.
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


# The ACL schemes an identity in ``zookeeper-auth`` may name: what a ZooKeeper
# server authenticates out of the box (x509 from the TLS client certificate,
# digest from a user and password), plus ip and sasl for servers set up so.
IDENTITY_SCHEMES = ("x509", "digest", "ip", "sasl")


@dataclass(frozen=True)
class ZooKeeperIdentity:
    """One ACL id, ``<scheme>:<id>`` as ZooKeeper writes it."""

    scheme: str
    id: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.id}"


def parse_identity(text: str) -> ZooKeeperIdentity:
    """``x509:CN=zuul,O=Example`` or ``digest:user:hash`` into an identity;
    ValueError with what is wrong and what to write otherwise."""
    scheme, sep, ident = text.partition(":")
    if not sep or not ident:
        raise ValueError(f"{text!r} is not <scheme>:<id>; write e.g. "
                         "'x509:CN=zuul.example.org' (the subject of Zuul's client certificate)")
    if scheme not in IDENTITY_SCHEMES:
        raise ValueError(f"{text!r} names the scheme {scheme!r}; use one of "
                         f"{', '.join(IDENTITY_SCHEMES)}")
    if scheme == "digest" and ":" not in ident:
        raise ValueError(f"{text!r}: a digest id is <user>:<base64 SHA-1 of user:password>, "
                         "not a bare user name")
    return ZooKeeperIdentity(scheme, ident)


@dataclass(frozen=True)
class ZooKeeperAuth:
    """What ``zookeeper-auth`` says: how this launcher authenticates and
    whom the znodes it creates let in (doc/operations.rst, "ZooKeeper ACLs")."""

    # Digest credentials the launcher connects with (both or neither); with
    # neither, its identity is its TLS client certificate.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Zuul's identities: what the protocol lets Zuul do, and nothing more.
    zuul: tuple[ZooKeeperIdentity, ...] = ()
    # Further identities with the launchers' full rights, besides the ones
    # this launcher's own session has.
    launchers: tuple[ZooKeeperIdentity, ...] = ()
    # Whether clients without any of these identities may read.
    world_readable: bool = True

    @property
    def digest(self) -> str | None:
        """kazoo's ``auth_data`` credential, ``user:password``."""
        if self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"


@dataclass(frozen=True)
class ZooKeeperSettings:
    """What ``zookeeper-servers``, ``zookeeper-tls`` and ``zookeeper-timeout`` say."""

    servers: tuple[ZooKeeperServer, ...]
    tls: ZooKeeperTLS | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    auth: ZooKeeperAuth | None = None
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
        return ZooKeeperSettings(servers, self.tls, self.session_timeout, self.auth)


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
