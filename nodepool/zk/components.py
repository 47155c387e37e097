"""Registering this launcher and its pools under ``/nodepool/components``.

A registration is an ephemeral sequential znode ``<kind>/<hostname><seq10>``
holding the component's JSON with sorted keys, as upstream writes it.  Zuul
reads the pool registrations for its label list; other launchers read them
to decide when a request has been declined by everyone.

Updates (e.g. ``paused``) are versioned writes of the whole content.  The
znode dies with the session; the registration notices the new session and
creates a new znode (from the kazoo listener, on a helper thread because no
ZooKeeper call may run inside a listener), and ``ensure_registered`` does the
same check synchronously so a level-triggered loop can call it every pass.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import uuid
from typing import Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NoNodeError
from kazoo.protocol.states import KazooState

from nodepool.zk import paths
from nodepool.zk.session import SessionTracker
from nodepool.zk.records import (LauncherComponent, MalformedRecord,
                                 PoolComponent, component_from_json)

log = logging.getLogger("nodepool.zk.components")

C = TypeVar("C", bound=LauncherComponent)


def make_pool_id(provider_name: str, pool_name: str, hostname: str | None = None) -> str:
    """Upstream's form: ``<fqdn>-PoolWorker.<provider>-<pool>-<uuid4hex>``.

    Unique per pool worker instance; it is what goes into ``declined_by``.
    """
    host = hostname or socket.getfqdn()
    return f"{host}-PoolWorker.{provider_name}-{pool_name}-{uuid.uuid4().hex}"


class ComponentRegistration(Generic[C]):
    """Keeps one component registered while the process runs."""

    def __init__(self, client: KazooClient, component: C):
        self.client = client
        self._component = dataclasses.replace(component)
        self._lock = threading.RLock()
        self._session = SessionTracker.of(client)
        self._generation: int | None = None   # the session generation registered in
        self._unwritten = False
        self._closed = False
        self.registrations = 0  # how many znodes we created (for operators and tests)
        client.add_listener(self._on_state)

    @property
    def component(self) -> C:
        with self._lock:
            return dataclasses.replace(self._component)

    @property
    def path(self) -> str | None:
        return self._component.path

    def register(self) -> str:
        """Create the znode (again); returns its path."""
        with self._lock:
            if self._closed:
                raise RuntimeError("registration was closed")
            root = paths.component_root(self._component.kind)
            generation = self._session.generation
            path, stat = self.client.create(
                f"{root}/{self._component.hostname}", self._component.to_json(),
                ephemeral=True, sequence=True, makepath=True, include_data=True)
            self._component.path = path
            self._component.zversion = stat.version
            self._generation = generation
            self._unwritten = False
            self.registrations += 1
            log.info("registered %s component at %s", self._component.kind, path)
            return path

    def ensure_registered(self) -> bool:
        """Register again if the session was lost or the znode is gone.

        Returns True when it created a new znode.  While disconnected it
        does nothing: the session, and the znode with it, may survive, and
        registering again then would leave two."""
        with self._lock:
            if self._closed or not self._session.connected:
                return False
            if self._generation == self._session.generation and self._component.path \
                    and self.client.exists(self._component.path):
                if self._unwritten:
                    self._write()
                    self._unwritten = False
                return False
            return bool(self.register())

    def update(self, **changes) -> None:
        """Change attributes and write them with a version check."""
        with self._lock:
            updated = dataclasses.replace(self._component, **changes)
            if updated.to_dict() == self._component.to_dict() and not self._unwritten:
                return
            self._component = updated
            # Kept until a write succeeds, so a change made while the
            # connection was down is written by the next update or check.
            self._unwritten = True
            self._write()
            self._unwritten = False

    def _write(self) -> None:
        comp = self._component
        if comp.path is None:
            return
        try:
            stat = self.client.set(comp.path, comp.to_json(), version=comp.zversion)
            comp.zversion = stat.version
        except BadVersionError:
            # Only we write our registration; a mismatch means our idea of
            # the version is stale.  Take the server's version and rewrite.
            _, stat = self.client.get(comp.path)
            comp.zversion = stat.version
            stat = self.client.set(comp.path, comp.to_json(), version=comp.zversion)
            comp.zversion = stat.version
        except NoNodeError:
            # The session (and the znode) went away; register anew.
            self.register()

    def unregister(self) -> None:
        with self._lock:
            self._closed = True
            self.client.remove_listener(self._on_state)
            path, self._component.path = self._component.path, None
            if path:
                try:
                    self.client.delete(path)
                except NoNodeError:
                    pass
                except KazooException as e:
                    log.warning("could not unregister %s: %s", path, e)

    def _on_state(self, state) -> None:
        # Runs on kazoo's connection thread: never call ZooKeeper here.
        if state == KazooState.CONNECTED and not self._closed and self.registrations:
            if self._session.generation != self._generation:
                threading.Thread(target=self._reregister, daemon=True,
                                 name="component-reregister").start()

    def _reregister(self) -> None:
        try:
            self.ensure_registered()
        except KazooException as e:
            # The loop's ensure_registered() call will try again.
            log.warning("could not re-register %s: %s", self._component.kind, e)


def register_pool(client: KazooClient, component: PoolComponent
                  ) -> ComponentRegistration[PoolComponent]:
    reg = ComponentRegistration(client, component)
    reg.register()
    return reg


def register_launcher(client: KazooClient, hostname: str | None = None,
                      version: str | None = None) -> ComponentRegistration[LauncherComponent]:
    reg = ComponentRegistration(
        client, LauncherComponent(hostname=hostname or socket.getfqdn(), version=version))
    reg.register()
    return reg


def read_components(client: KazooClient, kind: str) -> list[LauncherComponent]:
    """Fresh read of every registered component of ``kind``; malformed
    registrations are logged with their path and skipped."""
    root = paths.component_root(kind)
    try:
        names = client.get_children(root)
    except NoNodeError:
        return []
    found = []
    for name in sorted(names):
        path = f"{root}/{name}"
        try:
            data, stat = client.get(path)
        except NoNodeError:
            continue  # its session ended meanwhile
        try:
            found.append(component_from_json(kind, data, path, stat.version))
        except MalformedRecord as e:
            log.error("skipping malformed component %s: %s", path, e.reason)
    return found


def registered_pools(client: KazooClient) -> list[PoolComponent]:
    return read_components(client, "pool")  # type: ignore[return-value]
