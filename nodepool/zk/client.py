"""Connecting to ZooKeeper: plain or TLS, session timeout, chroot, and
with ``zookeeper-auth`` the credentials and ACLs (``nodepool.zk.acls``).

The rest of the ZooKeeper layer takes a connected ``KazooClient`` from here;
nothing else builds one.  Connecting has a deadline: an unreachable ensemble
gives ``ZooKeeperUnavailable`` after ``connect_timeout`` seconds, never a hang.
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from nodepool.config.zookeeper import (DEFAULT_SESSION_TIMEOUT,  # noqa: F401 - re-exported
                                       ZooKeeperServer, ZooKeeperSettings, ZooKeeperTLS,
                                       parse_hosts)
from nodepool.zk.acls import AclKazooClient
from nodepool.zk.session import SessionTracker

log = logging.getLogger("nodepool.zk")

class ZooKeeperUnavailable(Exception):
    """The ensemble could not be reached within the deadline."""


def make_client(settings: ZooKeeperSettings, read_only: bool = False,
                outside: bool = False) -> KazooClient:
    """An unstarted client; call ``connect`` to start it with a deadline.
    ``outside``: the client creates only the chroot (its ACL, see acls.py)."""
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
    auth = settings.auth
    if auth is not None:
        if auth.digest:
            # kazoo sends it again on every reconnect.
            kwargs["auth_data"] = [("digest", auth.digest)]
        return AclKazooClient(acl_auth=auth, outside_only=outside, **kwargs)
    return KazooClient(**kwargs)


def connect(settings: ZooKeeperSettings, connect_timeout: float | None = None,
            ensure_chroot: bool = True, _outside: bool = False) -> KazooClient:
    """Start a client, waiting at most ``connect_timeout`` (default: the
    session timeout) for the first session."""
    timeout = connect_timeout if connect_timeout is not None else settings.session_timeout
    root = settings.chroot
    if root and ensure_chroot:
        # kazoo cannot create its own chroot; do it through a client without one.
        bare = connect(settings.with_chroot(""), timeout, ensure_chroot=False, _outside=True)
        try:
            bare.ensure_path(root)
        finally:
            bare.stop()
            bare.close()
    client = make_client(settings, outside=_outside)
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
